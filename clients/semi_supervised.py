"""Semi-supervised local training: learn from a client's labelled samples and pseudo-label the rest.

`SemiSupervisedStrategy` is what a pseudo-labelling strategy (FedLabel) implements: the pure
tensor rule `pseudo_targets(local_probs, global_probs)`, which turns two experts' predictions on
unlabelled samples into training targets, plus the schedule settings below.
`train_semi_supervised_client` is the loop backends run for such a strategy. It reuses the plain
loop's pieces (seeded labelled batches, the strategy's `local_step`, `apply_step`), so a client
without unlabelled samples trains exactly as `train_client` would.

Targets are soft: row i weights each class in sample i's loss, and the objective is
cross-entropy against it (`F.cross_entropy` with probability targets, -sum_c t_c log q_c per
sample, averaged over the batch). A kept pseudo-label adds a one-hot row, a consistency term
lambda * KL(p || q) adds lambda * p (KL minus p's entropy, so the same gradient), an ignored
sample is a zero row.

Schedules (`schedule`):
- `sequential`: the train schedule's labelled steps (tau) from the global model; the result is
  frozen as the local expert, the experts label every unlabelled sample once (weak view), then
  `unlabelled_steps` (tau') steps on pseudo-labelled batches (strong view) continue training.
- `joint`: each of the train schedule's steps takes a labelled and an unlabelled batch, with
  loss L_l + L_u; the model being trained is the local expert.

Every client reports the pseudo-labelling events of its round (`diagnostics`); the engine scores
them against the hidden labels with `pseudo_label_metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from clients.trainer import ClientResult, LocalSchedule, apply_step, batch_indices
from fedsim import seeding
from fedsim.errors import ConfigError, TrainingDiverged
from fedsim.strategy import Batch, GradFn, LocalContext, LocalSummary, Strategy
from fedsim.tree import Params

SCHEDULES = ("sequential", "joint")
AUGMENTATIONS = ("none", "shift", "shift_flip")
SAMPLE_COUNTS = ("all", "labelled")
PSEUDO_LABEL_COLUMNS = [
    "pseudo_coverage",
    "pseudo_accuracy",
    "pseudo_accuracy_local",
    "pseudo_accuracy_global",
    "local_expert_share",
    "expert_agreement",
]
PREDICT_CHUNK = 1024


@dataclass(frozen=True)
class PseudoLabels:
    """Pseudo-labels of a batch of unlabelled samples: their loss targets and where they came from."""

    targets: torch.Tensor  # [N, C] soft targets (zero rows contribute nothing)
    labels: torch.Tensor  # [N] the selected expert's prediction
    kept: torch.Tensor  # [N] bool: the pseudo-label passed the confidence threshold
    from_local: torch.Tensor  # [N] bool: the local expert was selected


@dataclass
class SemiSupervisedStrategy(Strategy):
    """A strategy whose clients also learn from unlabelled samples (server side: FedAvg).

    `unlabelled_steps` is tau' of the sequential schedule; unlabelled batches hold
    `unlabelled_batch_ratio` times train.batch_size samples (mu of FixMatch). `augment`: `none`,
    `shift` (weak/strong views: shifts plus, for the strong view, noise; crops for images) or
    `shift_flip` (adds horizontal flips of images). `sample_count`: the n_k that weighs a
    client in the server average, all its samples or only its labelled ones.
    """

    schedule: str = "sequential"
    unlabelled_steps: int = 5
    unlabelled_batch_ratio: int = 1
    augment: str = "none"
    sample_count: str = "all"

    def validate(self) -> None:
        require_choice("schedule", self.schedule, SCHEDULES)
        require_choice("augment", self.augment, AUGMENTATIONS)
        require_choice("sample_count", self.sample_count, SAMPLE_COUNTS)
        if self.unlabelled_steps < 1:
            raise ConfigError(f"strategy.unlabelled_steps must be >= 1, got {self.unlabelled_steps}")
        if self.unlabelled_batch_ratio < 1:
            raise ConfigError(
                f"strategy.unlabelled_batch_ratio must be >= 1, got {self.unlabelled_batch_ratio}"
            )

    def pseudo_targets(self, local_probs: torch.Tensor, global_probs: torch.Tensor) -> PseudoLabels:
        """The unlabelled loss from the local and global experts' class probabilities [N, C]."""
        raise NotImplementedError


def require_choice(key: str, value: str, options: tuple[str, ...]) -> None:
    """Raise a one-line ConfigError unless strategy option `key` is one of `options`."""
    if value not in options:
        raise ConfigError(f"strategy.{key} must be one of {', '.join(options)}; got {value!r}")


# ----------------------------------------------------------------------------- augmentation


def augment(x: torch.Tensor, mode: str, strong: bool, generator: torch.Generator) -> torch.Tensor:
    """A random weak or strong view of a batch; `mode="none"` returns x.

    Signals (C, L) and images (C, H, W) are shifted along each spatial axis by up to 1/16 (weak)
    or 1/4 (strong) of its length, zero-filled (a random crop of the padded sample); the strong
    view adds Gaussian noise of 10% of each sample's std, flat features get only that noise.
    `shift_flip` also flips half the images horizontally. Random draws come from `generator`.
    """
    if mode == "none":
        return x
    spatial = x.shape[2:] if x.dim() in (3, 4) else ()
    for axis, size in enumerate(spatial, start=2):
        x = _shift(x, axis, max(1, size // (4 if strong else 16)), generator)
    if mode == "shift_flip" and len(spatial) == 2:
        flip = torch.rand(len(x), generator=generator).to(x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if strong:
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        x = x + 0.1 * x.flatten(1).std(1).view(-1, *[1] * (x.dim() - 1)) * noise
    return x


def _shift(x: torch.Tensor, axis: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each sample by a random integer in [-max_shift, max_shift] along `axis`, zero-filled."""
    size = x.shape[axis]
    pad = [0, 0] * (x.dim() - axis - 1) + [max_shift, max_shift]
    padded = F.pad(x, pad)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x),), generator=generator).to(x.device)
    index = torch.arange(size, device=x.device) + offsets[:, None]
    view = [len(x)] + [size if d == axis else 1 for d in range(1, x.dim())]
    return padded.gather(axis, index.view(view).expand(x.shape))


# ----------------------------------------------------------------------------- the client loop


class _LocalRun:
    """The evolving local model of one client-round: params, momentum, carry, loss sum, step count."""

    def __init__(self, strategy: Strategy, grad_fn: GradFn, ctx: LocalContext, schedule: LocalSchedule):
        self.strategy, self.grad_fn, self.ctx, self.schedule = strategy, grad_fn, ctx, schedule
        self.params: Params = ctx.global_params
        self.velocity: Params | None = None
        self.carry = strategy.client_begin(ctx)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=next(iter(self.params.values())).device)
        self.steps = 0

    def step(self, batch: Batch) -> None:
        loss, direction, self.carry = self.strategy.local_step(
            self.params, batch, self.grad_fn, self.carry, self.ctx
        )
        self.params, self.velocity = apply_step(
            self.params, direction, self.velocity, self.ctx.lr, self.schedule
        )
        self.loss_sum += loss.detach()
        self.steps += 1


@torch.no_grad()
def _probabilities(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    chunks = range(0, len(x), PREDICT_CHUNK)
    return torch.cat([functional_call(model, params, (x[i : i + PREDICT_CHUNK],)) for i in chunks]).softmax(1)


def _pseudo_label(
    strategy: SemiSupervisedStrategy,
    model: nn.Module,
    local_params: Params,
    global_params: Params,
    weak: torch.Tensor,
    index: torch.Tensor,
) -> tuple[PseudoLabels, dict[str, torch.Tensor]]:
    """The experts' pseudo-labels for weak views of the unlabelled samples `index`, and the
    pseudo-labelling events to report (CPU tensors)."""
    local_probs, global_probs = (
        _probabilities(model, local_params, weak),
        _probabilities(model, global_params, weak),
    )
    pseudo = strategy.pseudo_targets(local_probs, global_probs)
    events = {
        "index": index,
        "label": pseudo.labels,
        "kept": pseudo.kept,
        "from_local": pseudo.from_local,
        "agree": local_probs.argmax(1) == global_probs.argmax(1),
    }
    return pseudo, {k: v.cpu() for k, v in events.items()}


def _joint_batch(labelled: Batch, unlabelled: Batch) -> Batch:
    """One batch whose mean soft cross-entropy is L_l + L_u: each part's targets scaled by
    (batch size / part size)."""
    (x, y), (u, targets) = labelled, unlabelled
    total = len(x) + len(u)
    one_hot = F.one_hot(y, targets.shape[1]).to(targets.dtype)
    return torch.cat([x, u]), torch.cat([one_hot * (total / len(x)), targets * (total / len(u))])


def train_semi_supervised_client(
    *,
    client_id: int,
    data: tuple[torch.Tensor, torch.Tensor],
    unlabelled: torch.Tensor,
    strategy: SemiSupervisedStrategy,
    model: nn.Module,
    grad_fn: GradFn,
    ctx: LocalContext,
    schedule: LocalSchedule,
    seed: int,
    round_: int,
    work: float = 1.0,
) -> tuple[ClientResult, dict[str, torch.Tensor]]:
    """Train one client for one round on its labelled `data` and `unlabelled` inputs.

    `model` only evaluates the experts (`functional_call` with their params). Labelled batches
    use the plain loop's stream (seed, "shuffle", round, client); unlabelled batches and views
    have their own, so the labelled part is the same as under `train_client`. Returns the
    client's result and its pseudo-labelling events (empty without unlabelled samples).
    """
    x, y = data
    run = _LocalRun(strategy, grad_fn, ctx, schedule)
    num_steps = schedule.num_steps(len(y), work)
    shuffle = seeding.torch_generator(seed, "shuffle", round_, client_id)
    labelled_batches = batch_indices(len(y), num_steps, schedule.batch_size, shuffle)
    picks = seeding.torch_generator(seed, "unlabelled", round_, client_id)
    view = partial(
        augment, mode=strategy.augment, generator=seeding.torch_generator(seed, "augment", round_, client_id)
    )
    unlabelled_batch = strategy.unlabelled_batch_ratio * schedule.batch_size
    events = []

    if strategy.schedule == "joint" and len(unlabelled):
        unlabelled_batches = batch_indices(len(unlabelled), num_steps, unlabelled_batch, picks)
        for idx, idx_u in zip(labelled_batches, unlabelled_batches):
            idx, idx_u = idx.to(x.device), idx_u.to(x.device)
            u = unlabelled[idx_u]
            weak = view(u, strong=False)
            pseudo, report = _pseudo_label(strategy, model, run.params, ctx.global_params, weak, idx_u)
            run.step(_joint_batch((x[idx], y[idx]), (view(u, strong=True), pseudo.targets)))
            events.append(report)
    else:
        for idx in labelled_batches:
            idx = idx.to(x.device)
            run.step((x[idx], y[idx]))
        if len(unlabelled):
            weak, everything = view(unlabelled, strong=False), torch.arange(len(unlabelled), device=x.device)
            pseudo, report = _pseudo_label(strategy, model, run.params, ctx.global_params, weak, everything)
            tau_prime = replace(schedule, steps=strategy.unlabelled_steps).num_steps(len(unlabelled), work)
            for idx_u in batch_indices(len(unlabelled), tau_prime, unlabelled_batch, picks):
                idx_u = idx_u.to(x.device)
                run.step((view(unlabelled[idx_u], strong=True), pseudo.targets[idx_u]))
            events.append(report)

    mean_loss = float(run.loss_sum) / max(run.steps, 1)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(round_, client_id, mean_loss)
    num_samples = len(y) + (len(unlabelled) if strategy.sample_count == "all" else 0)
    summary = LocalSummary(num_steps=run.steps, num_samples=num_samples, lr=ctx.lr)
    upload, client_state = strategy.client_end(run.params, run.carry, ctx, summary)
    result = ClientResult(client_id, upload, client_state, num_samples, run.steps, mean_loss)
    diagnostics = {k: torch.cat([e[k] for e in events]) for k in events[0]} if events else {}
    return result, diagnostics


# ----------------------------------------------------------------------------- diagnostics


def pseudo_label_metrics(reports, hidden_labels: list[torch.Tensor]) -> dict[str, float]:
    """A round's pseudo-label diagnostics over the cohort, scored against the hidden labels.

    Coverage is the share of pseudo-labelling events whose label was kept; accuracy is over kept
    labels (overall and per expert); the local expert's share and the experts' agreement (same
    argmax) are over all events. NaN where a share has nothing to count.
    """
    reports = [r for r in reports if r.diagnostics]
    if not reports:
        return dict.fromkeys(PSEUDO_LABEL_COLUMNS, math.nan)
    event = {k: torch.cat([r.diagnostics[k] for r in reports]) for k in reports[0].diagnostics}
    truth = torch.cat([hidden_labels[r.client_id][r.diagnostics["index"]] for r in reports])
    correct, kept, local = event["label"] == truth, event["kept"], event["from_local"]
    shares = [kept, correct[kept], correct[kept & local], correct[kept & ~local], local, event["agree"]]
    return {column: _share(flags) for column, flags in zip(PSEUDO_LABEL_COLUMNS, shares)}


def _share(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if flags.numel() else math.nan
