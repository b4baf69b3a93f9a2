"""Weighted sums of uploads, accumulated in float64.

Each term w * u is exact in float64 for float32 uploads and integer weights, so sums taken
in different groupings (one serial loop, or partial sums from several workers merged in a
fixed order) agree to far below float32 resolution and round to the same float32 result.
"""

from __future__ import annotations

import torch

from fedsim.strategy import State


class WeightedSum:
    """Running sum of w * upload and of w, per upload field."""

    def __init__(self) -> None:
        self.sums: State = {}
        self.weights: dict[str, float] = {}
        self.count = 0

    def add(self, upload: State, weights: dict[str, float]) -> None:
        for field, values in upload.items():
            w = weights[field]
            acc = self.sums.setdefault(field, {})
            for name, value in values.items():
                term = value.detach().to(torch.float64) * w
                acc[name] = acc[name] + term if name in acc else term
            self.weights[field] = self.weights.get(field, 0.0) + w
        self.count += 1

    def merge(self, other: "WeightedSum") -> None:
        """Add another partial sum (e.g. a worker's); merge partials in a fixed order."""
        for field, values in other.sums.items():
            acc = self.sums.setdefault(field, {})
            for name, value in values.items():
                value = value.to(self._device(acc, value))
                acc[name] = acc[name] + value if name in acc else value
            self.weights[field] = self.weights.get(field, 0.0) + other.weights[field]
        self.count += other.count

    @staticmethod
    def _device(acc: dict, value: torch.Tensor) -> torch.device:
        return next(iter(acc.values())).device if acc else value.device

    def means(self, dtype: torch.dtype = torch.float32) -> State:
        """Weighted mean of each field (a field whose weights sum to 0 is left out)."""
        return {
            field: {name: (v / self.weights[field]).to(dtype) for name, v in values.items()}
            for field, values in self.sums.items()
            if self.weights[field] != 0
        }
