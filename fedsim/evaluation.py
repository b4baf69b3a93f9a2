"""Scoring a model: on one labelled set (central test, validation), and per client on the
clients' local test data (federated evaluation), with the spread of accuracy over clients.

The clients' test sets are concatenated once; one batched pass scores every sample and
per-client sums fall out of a bincount, so evaluating 1000 clients costs one forward pass over
their test samples, whatever the backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from fedsim import tree
from fedsim.gradients import autograd_grad_fn
from fedsim.loss import cross_entropy
from fedsim.loss import sample_scores
from fedsim.normalisation import evaluating
from fedsim.schedule import client_batches
from fedsim.tree import Params

Split = tuple[torch.Tensor, torch.Tensor]
STATISTICS = ("mean", "weighted", "std", "p10", "min")
DISTRIBUTION_COLUMNS = [f"client_accuracy_{s}" for s in STATISTICS]  # the global model on clients' test data
PERSONAL_COLUMNS = [f"personal_accuracy_{s}" for s in STATISTICS]  # each client's personal model


@torch.no_grad()
def per_sample(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """Each sample's loss and share of positions predicted right (`fedsim.loss.sample_scores`; in eval
    mode: BatchNorm uses the statistics in `params`)."""
    losses, correct = [], []
    with evaluating(model):
        for start in range(0, len(y), batch):
            logits = functional_call(model, params, (x[start : start + batch],))
            loss, right = sample_scores(logits, y[start : start + batch])
            losses.append(loss)
            correct.append(right)
    if not losses:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(losses), torch.cat(correct)


def score(model: nn.Module, params: Params, data: Split, batch: int) -> tuple[float, float]:
    """Mean loss and accuracy on `data`."""
    loss, correct = per_sample(model, params, *data, batch)
    return float(loss.double().sum()) / len(loss), float(correct.double().sum()) / len(correct)


@dataclass
class ClientScores:
    """One federated evaluation: per evaluated client, its test size, accuracy and loss."""

    client_ids: np.ndarray
    num_samples: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray

    def distribution(self, prefix: str = "client_accuracy_") -> dict[str, float]:
        """Mean over clients, sample-weighted mean, std, 10th percentile and worst client."""
        acc, n = self.accuracy, self.num_samples
        values = (acc.mean(), (acc * n).sum() / n.sum(), acc.std(), np.percentile(acc, 10), acc.min())
        return {prefix + s: float(v) for s, v in zip(STATISTICS, values)}


class ClientTestSets:
    """The local test data of the clients federated evaluation scores, concatenated on a device.

    Clients without test samples (too small to hold any out) are left out.
    """

    def __init__(self, client_ids: list[int], tests: list[Split], device: torch.device) -> None:
        """`tests[i]` is the local test (x, y) of client `client_ids[i]`."""
        kept = [(cid, test) for cid, test in zip(client_ids, tests) if len(test[1]) > 0]
        self.client_ids = np.array([cid for cid, _ in kept], dtype=np.int64)
        self.num_samples = np.array([len(y) for _, (_, y) in kept], dtype=np.int64)
        self.x = torch.cat([x for _, (x, _) in kept]).to(device)
        self.y = torch.cat([y for _, (_, y) in kept]).to(device)
        self.owner = torch.repeat_interleave(torch.arange(len(kept)), torch.from_numpy(self.num_samples)).to(device)
        self.offsets = np.concatenate([[0], np.cumsum(self.num_samples)])
        self.vectorizes: bool | None = None  # whether personal models are scored in vmapped chunks (found once)

    def score(self, model: nn.Module, params: Params, batch: int) -> ClientScores:
        loss, correct = per_sample(model, params, self.x, self.y, batch)
        count = len(self.client_ids)
        loss_sum = torch.bincount(self.owner, weights=loss.double(), minlength=count).cpu().numpy()
        right = torch.bincount(self.owner, weights=correct.double(), minlength=count).cpu().numpy()
        return ClientScores(self.client_ids, self.num_samples, right / self.num_samples, loss_sum / self.num_samples)

    def score_each(self, model: nn.Module, params_of: list[Params], batch: int) -> ClientScores:
        """Each client scored with params of its own (`params_of[i]` for `client_ids[i]`).

        Clients of similar test size are scored in chunks of about `batch` samples, one vmapped
        forward pass per chunk (each client's rows padded to the chunk's longest); a model that
        does not run under vmap is scored one client at a time.
        """
        accuracy, loss = np.zeros(len(self.client_ids)), np.zeros(len(self.client_ids))
        if self.vectorizes is None:
            self.vectorizes = forward_vectorizes(model, params_of[0], self.x[:1])
        chunks = self.chunks(batch) if self.vectorizes else [[i] for i in range(len(params_of))]
        for chunk in chunks:
            if not self.vectorizes:
                [i] = chunk
                rows = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
                loss[i], accuracy[i] = score(model, params_of[i], (self.x[rows], self.y[rows]), batch)
                continue
            loss[chunk], accuracy[chunk] = self.score_chunk(model, tree.stack([params_of[i] for i in chunk]), chunk)
        return ClientScores(self.client_ids, self.num_samples, accuracy, loss)

    def chunks(self, batch: int) -> list[list[int]]:
        """Client positions in chunks of similar test size, each of at most about `batch` padded samples."""
        chunks: list[list[int]] = []
        for i in np.argsort(self.num_samples, kind="stable").tolist():  # ascending: the last is the longest
            if chunks and (len(chunks[-1]) + 1) * int(self.num_samples[i]) <= batch:
                chunks[-1].append(i)
            else:
                chunks.append([i])
        return chunks

    @torch.no_grad()
    def score_chunk(self, model: nn.Module, stacked: Params, chunk: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(mean loss, accuracy) of each client of `chunk`, its params stacked in `stacked`."""
        sizes = torch.from_numpy(self.num_samples[chunk]).to(self.x.device)
        longest = int(sizes.max())
        real = torch.arange(longest, device=self.x.device) < sizes[:, None]
        starts = torch.from_numpy(self.offsets[chunk]).to(self.x.device)
        rows = torch.where(real, starts[:, None] + torch.arange(longest, device=self.x.device), starts[:, None])
        x, y = self.x[rows], self.y[rows]
        with evaluating(model):
            logits = vmap(lambda p, inputs: functional_call(model, p, (inputs,)))(stacked, x)
        losses, correct = (t.view(real.shape) for t in sample_scores(logits.flatten(0, 1), y.flatten(0, 1)))
        loss = torch.where(real, losses.double(), 0).sum(1) / sizes
        right = torch.where(real, correct.double(), 0).sum(1)
        return loss.cpu().numpy(), (right / sizes).cpu().numpy()


def forward_vectorizes(model: nn.Module, params: Params, x: torch.Tensor) -> bool:
    """Whether a forward pass of `model` runs under vmap over two stacked copies of `params`."""
    try:
        with torch.no_grad(), evaluating(model):
            vmap(lambda p, inputs: functional_call(model, p, (inputs,)))(tree.stack([params, params]), torch.stack([x, x]))
    except Exception:  # noqa: BLE001 -- any failure under vmap means: score one client at a time
        return False
    return True


def finetuned(
    model: nn.Module, params: Params, data: Split, steps: int, batch_size: int, lr: float, batch_seed: int
) -> Params:
    """`params` after `steps` plain SGD steps on cross-entropy over `data` (the local fine-tuning
    baseline of personalisation papers), batches drawn from `batch_seed` as in training."""
    grad_fn = autograd_grad_fn(model, cross_entropy)
    x, y = data
    for idx in client_batches(len(y), steps, batch_size, batch_seed):
        idx = idx.to(x.device)
        _, grads = grad_fn(params, (x[idx], y[idx]))
        params = tree.add(params, grads, -lr)
    return params
