"""FedLD (Zeng et al., MICCAI 2024): margin-limited local loss, principal-gradient aggregation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from fedsim.config import option
from fedsim.strategy import Aggregate, RoundInfo, State, Strategy
from fedsim.tree import Params


def revise_updates(updates: torch.Tensor, k_proportion: float) -> torch.Tensor:
    """Mean of the clients' sign-projected updates, from rows u_i of `updates` (m x d).

    Principal directions v_j = U^T e_j come from the Gram matrix H = U U^T / m (eigenvalues
    s_j, descending). Each client keeps the sign of its projection on the top k = int(m *
    k_proportion) directions (at least 1) with magnitude ||u_i|| * s_j / sum(s):
    u~_i = sum_j sign(<u_i, v_j>) (s_j / sum s) ||u_i|| v_j / ||v_j||. A zero projection or a
    zero direction contributes nothing, so all-zero updates give a zero mean, never NaN.
    The reference's majority sign flip of v_j is omitted: sign(<u, v>) v is unchanged by it.
    """
    m = updates.shape[0]
    u = updates.to(torch.float64)
    s, e = torch.linalg.eigh(u @ u.T / m)
    s, e = s.flip(0).clamp(min=0), e.flip(1)  # descending, PSD up to rounding
    k = max(int(m * k_proportion), 1)
    v = (u.T @ e[:, :k]).T  # k x d
    v_norm = v.norm(dim=1, keepdim=True)
    v_unit = torch.where(v_norm > 0, v / v_norm.clamp(min=torch.finfo(u.dtype).tiny), torch.zeros_like(v))
    weights = s[:k] / s.sum().clamp(min=torch.finfo(u.dtype).tiny)  # normalised over all m values
    signs = torch.sign(u @ v_unit.T)  # m x k
    revised = (signs * weights) @ v_unit * u.norm(dim=1, keepdim=True)
    return revised.mean(0).to(updates.dtype)


@dataclass
class FedLD(Strategy):
    """FedLD: CE + lam * log(1 + ||softmax(z)||^2) locally; SVD-revised client updates on the server.

    Aggregation, per parameter tensor, over the round's cohort (any size, not all N clients):
    u_i = theta_i - theta; the first time a tensor is aggregated, and for single-element tensors,
    the plain mean; afterwards `revise_updates`. Then theta += the unweighted mean. Fixed where
    the reference code breaks: partial participation, NaN from zero projections or all-zero
    updates, and k = 0 for tiny cohorts (k is at least 1). fedsim models have no buffers
    (GroupNorm); buffers would be averaged, not projected as the reference does with BN stats.

    - `margin_penalty` (lam >= 0): default 0.03 (the code's default; its README runs 0.1).
    - `margin_norm="batch"` (default, the reference code): the squared Frobenius norm of the
      whole B x C probability matrix, which depends on the batch size; `"sample"`: the mean over
      samples of log(1 + ||p_b||^2).
    - `k_proportion` in (0, 1]: default 0.8, as in the reference.
    """

    name: ClassVar[str] = "fedld"
    needs_all_uploads: ClassVar[bool] = True

    margin_penalty: float = option(0.03, ge=0)
    margin_norm: str = option("batch", choices=("batch", "sample"))
    k_proportion: float = option(0.8, gt=0, le=1)

    def objective(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits, dim=1)
        if self.margin_norm == "batch":
            margin = torch.log1p(probs.pow(2).sum())
        else:
            margin = torch.log1p(probs.pow(2).sum(dim=1)).mean()
        return F.cross_entropy(logits, targets) + self.margin_penalty * margin

    def init_server_state(self, params: Params) -> State:
        """`active[name]` is 1 once a non-zero update of that tensor has been applied."""
        return {"active": {name: torch.zeros(()) for name in params}}

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        plain_mean = aggregate.means["delta"]
        new_params, active = {}, {}
        for name, value in params.items():
            if value.numel() == 1 or not bool(server_state["active"][name]):
                step = -plain_mean[name]
            else:
                updates = torch.stack([-up["delta"][name].reshape(-1) for up in aggregate.uploads])
                step = revise_updates(updates, self.k_proportion).reshape(value.shape)
            new_params[name] = value + step.to(value.dtype)
            active[name] = torch.tensor(float(bool(server_state["active"][name]) or bool(step.any())))
        return new_params, {"active": active}

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return {"delta": 1.0}
