"""BatchNorm in a federation: batch statistics while training, running statistics as explicit state.

A `torch.nn` BatchNorm layer updates its running mean and variance in place on every training
forward pass. In a simulation that is wrong twice: one module serves every client (their
statistics would mix), and `torch.func.vmap` cannot write one buffer from a stacked cohort. So
every federation's model is built with `untrack_statistics`: its BatchNorm layers normalise by
the batch's own statistics when training, as torch does, and hold no running statistics. The
running statistics become a tree of tensors, named like the buffers they replace
(`"1.running_mean"`), that a trainer keeps as client state and updates with torch's rule
(`updated_statistics` of `batch_statistics`); a model is evaluated (`evaluating`) with the
statistics passed next to its params, e.g. `{**params, **statistics}`.

Which trainer keeps them: `ClientTrainer.keeps_statistics` (FedBN, `clients.fedbn`, keeps them
per client). A model with BatchNorm and a trainer that keeps none is refused, since its
evaluation would have no statistics to use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from fedsim.errors import ConfigError
from fedsim.tree import Params

STATISTICS = ("running_mean", "running_var")


def statistic_name(layer: str, statistic: str) -> str:
    """The name of a layer's statistic, as its buffer is named in the model's state dict."""
    return f"{layer}.{statistic}" if layer else statistic


def batch_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def untrack_statistics(model: nn.Module) -> Params:
    """Make the model's BatchNorm layers keep no running statistics; returns the ones they held
    (the initial statistics, e.g. mean 0 and variance 1), named as their buffers."""
    initial = {}
    for name, layer in batch_norms(model).items():
        if layer.momentum is None:
            raise ConfigError(f"BatchNorm layer '{name}' has momentum=None (a cumulative average); give it a momentum")
        if layer.track_running_stats:
            initial.update({statistic_name(name, s): getattr(layer, s).detach().clone() for s in STATISTICS})
        layer.track_running_stats = False
        layer.running_mean = layer.running_var = layer.num_batches_tracked = None
    return initial


def batch_statistics(model: nn.Module, params: Params, x: torch.Tensor) -> Params:
    """Per BatchNorm layer, the mean and unbiased variance over the batch (and spatial dims) of its
    input, in a forward pass of `model` with `params` on `x`: what torch folds into the running
    statistics at this step. Runs under vmap."""
    seen: Params = {}

    def record(name: str):
        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            dims = [0, *range(2, inputs[0].dim())]
            seen[statistic_name(name, "running_mean")] = inputs[0].mean(dims)
            seen[statistic_name(name, "running_var")] = inputs[0].var(dims, correction=1)

        return hook

    hooks = [layer.register_forward_pre_hook(record(name)) for name, layer in batch_norms(model).items()]
    try:
        with torch.no_grad():
            functional_call(model, params, (x,))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def updated_statistics(model: nn.Module, running: Params, batch: Params) -> Params:
    """torch's update of running statistics: (1 - momentum) * running + momentum * batch, per layer."""
    momentum = {statistic_name(n, s): layer.momentum for n, layer in batch_norms(model).items() for s in STATISTICS}
    return {k: torch.lerp(running[k], batch[k].to(running[k].dtype), momentum[k]) for k in running}


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (BatchNorm then normalises by the statistics passed with its params)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
