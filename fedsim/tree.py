"""Arithmetic on parameter trees (`dict[str, Tensor]` keyed by parameter name), and on nests of them.

Strategies write their client and server rules with these pure functions, so the same
rule runs one client at a time or, under `torch.func.vmap`, a whole cohort at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Params = dict[str, torch.Tensor]


def add(a: Params, b: Params, scale: float | torch.Tensor = 1.0) -> Params:
    """a + scale * b; one fused pass (`torch.add(alpha=)`, as torch.optim.SGD steps) for a number scale."""
    if isinstance(scale, torch.Tensor):
        return {k: a[k] + scale * b[k] for k in a}
    return {k: torch.add(a[k], b[k], alpha=scale) for k in a}


def sub(a: Params, b: Params) -> Params:
    """a - b."""
    return {k: a[k] - b[k] for k in a}


def scale(a: Params, factor: float | torch.Tensor) -> Params:
    return {k: factor * v for k, v in a.items()}


def lerp(a: Params, b: Params, weight: float) -> Params:
    """(1 - weight) * a + weight * b."""
    return {k: a[k] + weight * (b[k] - a[k]) for k in a}


def zeros_like(a: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def clone(a: Params) -> Params:
    return {k: v.detach().clone() for k, v in a.items()}


def dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def norm(a: Params) -> torch.Tensor:
    return torch.sqrt(dot(a, a))


def to(a: Params, device: torch.device | str, dtype: torch.dtype | None = None) -> Params:
    return {k: v.to(device=device, dtype=dtype) for k, v in a.items()}


# ---- nests: dicts and tuples of trees, e.g. (params, State) of a stacked chunk of clients


def module_of(name: str) -> str:
    """The name of the module a parameter or buffer belongs to ("" for the root): "0.weight" -> "0"."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def map_tensors(fn: Callable, *trees):
    """`fn` over the tensors of equally shaped nests of dicts and tuples (params, States, tuples of them)."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: map_tensors(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, tuple):
        return tuple(map_tensors(fn, *parts) for parts in zip(*trees))
    return fn(*trees)


def take(stacked, index):
    """Row(s) `index` (an int, a slice or an index tensor) of every tensor in a nest of stacked tensors."""
    return map_tensors(lambda t: t[index], stacked)


def stack(nests: list):
    """One nest of stacked tensors from per-client nests of the same shape (the inverse of `unstack`)."""
    return map_tensors(lambda *ts: torch.stack(ts), *nests)


def unstack(stacked, count: int) -> list:
    """The `count` per-client nests of row views of a nest of stacked tensors."""
    if isinstance(stacked, dict):
        columns = {k: unstack(v, count) for k, v in stacked.items()}
        return [{k: column[i] for k, column in columns.items()} for i in range(count)]
    if isinstance(stacked, tuple):
        columns = [unstack(v, count) for v in stacked]
        return [tuple(column[i] for column in columns) for i in range(count)]
    return list(stacked.unbind(0))
