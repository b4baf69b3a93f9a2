"""Arithmetic on parameter trees: `dict[str, Tensor]` keyed by parameter name.

Strategies write their client and server rules with these pure functions, so the same
rule runs one client at a time or, under `torch.func.vmap`, a whole cohort at once.
"""

from __future__ import annotations

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
