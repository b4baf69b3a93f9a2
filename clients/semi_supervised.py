"""Semi-supervised local training: learn from a client's labelled samples and pseudo-label the rest.

`SemiSupervisedTrainer` is the client trainer a pseudo-labelling method (FedLabel,
clients/fedlabel.py) subclasses: it implements the pure tensor rule
`pseudo_targets(local_probs, global_probs)`, which turns two experts' predictions on unlabelled
samples into training targets; the trainer's `train` runs the round. It reuses the plain loop's
pieces (the scheduled labelled batches, `fedsim.trainer.LocalRun`: the strategy's `local_step` and
the optimiser's `update`), so a client without unlabelled samples trains exactly as a backprop
client would, and any server strategy aggregates the result.

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
them against the hidden labels with the trainer's `round_metrics` (`pseudo_label_metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedsim import seeding
from fedsim.config import option
from fedsim.local import ClientJob, ClientUpdate, LocalEnv
from fedsim.schedule import batch_seeds, client_batches
from fedsim.strategy import Batch
from fedsim.trainer import ClientTrainer, LocalRun
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
class SemiSupervisedTrainer(ClientTrainer):
    """A client trainer that also learns from unlabelled samples, with any server strategy.

    `unlabelled_steps` is tau' of the sequential schedule; unlabelled batches hold
    `unlabelled_batch_ratio` times train.batch_size samples (mu of FixMatch). `augment`: `none`,
    `shift` (weak/strong views: shifts plus, for the strong view, noise; crops for images) or
    `shift_flip` (adds horizontal flips of images). `sample_count`: the n_k that weighs a
    client in the server average, all its samples or only its labelled ones.
    """

    vectorizes: ClassVar[bool] = False  # pseudo-labels between phases: one client at a time
    metric_columns: ClassVar[tuple[str, ...]] = tuple(PSEUDO_LABEL_COLUMNS)

    schedule: str = option("sequential", choices=SCHEDULES)
    unlabelled_steps: int = option(5, ge=1)
    unlabelled_batch_ratio: int = option(1, ge=1)
    augment: str = option("none", choices=AUGMENTATIONS)
    sample_count: str = option("all", choices=SAMPLE_COUNTS)

    def pseudo_targets(self, local_probs: torch.Tensor, global_probs: torch.Tensor) -> PseudoLabels:
        """The unlabelled loss from the local and global experts' class probabilities [N, C]."""
        raise NotImplementedError

    def train(self, job: ClientJob, env: LocalEnv) -> ClientUpdate:
        return train_semi_supervised(self, job, env)

    def round_metrics(self, reports: list, hidden_labels: list[torch.Tensor]) -> dict[str, float]:
        return pseudo_label_metrics(reports, hidden_labels)


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


@torch.no_grad()
def _probabilities(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    chunks = range(0, len(x), PREDICT_CHUNK)
    return torch.cat([functional_call(model, params, (x[i : i + PREDICT_CHUNK],)) for i in chunks]).softmax(1)


def _pseudo_label(
    trainer: SemiSupervisedTrainer,
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
    pseudo = trainer.pseudo_targets(local_probs, global_probs)
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


def train_semi_supervised(trainer: SemiSupervisedTrainer, job: ClientJob, env: LocalEnv) -> ClientUpdate:
    """Train one client for one round on its labelled data and its unlabelled inputs.

    `env.model` only evaluates the experts (`functional_call` with their params). Labelled
    batches are the round's schedule (`job.batches`), as for a backprop client; unlabelled
    batches and augmented views have streams of their own (seed, "unlabelled" / "augment",
    round, client). Returns the client's update with its pseudo-labelling events as diagnostics
    (empty without unlabelled samples).
    """
    (x, y), unlabelled, cid = job.data, job.unlabelled, job.client_id
    run = LocalRun(trainer, job, env)
    unlabelled_seed = int(batch_seeds(env.seed, "unlabelled", job.round, [cid])[0])
    view = partial(
        augment, mode=trainer.augment,
        generator=seeding.torch_generator(env.seed, "augment", job.round, cid),
    )
    unlabelled_batch = trainer.unlabelled_batch_ratio * env.schedule.batch_size
    events = []

    if trainer.schedule == "joint" and len(unlabelled):
        unlabelled_batches = client_batches(len(unlabelled), len(job.batches), unlabelled_batch, unlabelled_seed)
        for idx, idx_u in zip(job.batches, unlabelled_batches):
            idx, idx_u = idx.to(x.device), idx_u.to(x.device)
            u = unlabelled[idx_u]
            weak = view(u, strong=False)
            pseudo, report = _pseudo_label(trainer, env.model, run.params, job.global_params, weak, idx_u)
            run.step(_joint_batch((x[idx], y[idx]), (view(u, strong=True), pseudo.targets)))
            events.append(report)
    else:
        for idx in job.batches:
            idx = idx.to(x.device)
            run.step((x[idx], y[idx]))
        if len(unlabelled):
            weak, everything = view(unlabelled, strong=False), torch.arange(len(unlabelled), device=x.device)
            pseudo, report = _pseudo_label(trainer, env.model, run.params, job.global_params, weak, everything)
            tau_prime = replace(env.schedule, steps=trainer.unlabelled_steps).num_steps(len(unlabelled), job.work)
            for idx_u in client_batches(len(unlabelled), tau_prime, unlabelled_batch, unlabelled_seed):
                idx_u = idx_u.to(x.device)
                run.step((view(unlabelled[idx_u], strong=True), pseudo.targets[idx_u]))
            events.append(report)

    num_samples = len(y) + (len(unlabelled) if trainer.sample_count == "all" else 0)
    diagnostics = {k: torch.cat([e[k] for e in events]) for k in events[0]} if events else {}
    return run.finish(job, num_samples, diagnostics)


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
