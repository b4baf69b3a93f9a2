"""Cross-entropy and accuracy over target positions: exactly torch's on a classification batch,
the mean over positions for next-token targets, class probabilities for pseudo-labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedsim.loss import cross_entropy, sample_labels, sample_scores


def test_a_class_per_sample_is_torchs_cross_entropy_bit_for_bit():
    logits, targets = torch.randn(7, 5), torch.randint(0, 5, (7,))
    assert torch.equal(cross_entropy(logits, targets), F.cross_entropy(logits, targets))
    loss, right = sample_scores(logits, targets)
    assert torch.equal(loss, F.cross_entropy(logits, targets, reduction="none"))
    assert torch.equal(right, (logits.argmax(1) == targets).float())


def test_a_class_per_position_averages_over_positions():
    logits, targets = torch.randn(3, 4, 6), torch.randint(0, 6, (3, 4))
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [3, 4]
    assert torch.allclose(cross_entropy(logits, targets), per_token.mean())
    loss, right = sample_scores(logits, targets)
    assert torch.allclose(loss, per_token.mean(1))
    assert torch.equal(right, (logits.argmax(-1) == targets).float().mean(1))
    assert torch.equal(sample_labels(targets), targets[:, -1])


def test_float_targets_are_class_probabilities():
    logits, probs = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), 1)
    assert torch.equal(cross_entropy(logits, probs), F.cross_entropy(logits, probs))
