"""The loss and accuracy fedsim trains and scores every model with: cross-entropy over target
positions.

A target is one class index per sample (`[n]`, logits `[n, C]`: classification) or one per
position (`[n, L]`, logits `[n, L, C]`: next-token prediction, as LEAF's Shakespeare). Loss and
accuracy average over positions, so one rule serves both tasks, and on a classification batch it
computes exactly what `F.cross_entropy` does. A sample's accuracy is the share of its positions
predicted right (0 or 1 for a classification sample): with equal-length sequences the mean over
samples is the per-token accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every target position of the batch; float targets are class
    probabilities shaped as the logits (pseudo-labels, `clients/semi_supervised.py`)."""
    if targets.is_floating_point():
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(0, -2))
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


def sample_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's mean loss over its positions and its share of positions predicted right (float)."""
    losses = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)
    right = (logits.argmax(-1) == targets).to(losses.dtype)
    if targets.ndim > 1:
        return losses.flatten(1).mean(1), right.flatten(1).mean(1)
    return losses, right


def sample_labels(targets: torch.Tensor) -> torch.Tensor:
    """One class per sample for label statistics: the target itself, or a sequence's final
    position (the character LEAF's Shakespeare labels a sample with)."""
    return targets if targets.ndim == 1 else targets[:, -1]
