"""Divergence warnings: a run whose loss explodes, or whose accuracy stays at chance, is flagged
in the progress display and in summary.json; it is not stopped (a NaN loss is, with
`TrainingDiverged`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DivergenceWatch:
    """Reads each evaluated round's record; warns once per kind of divergence.

    `initial_loss` is the initial model's central test loss; `chance_accuracy` the accuracy of
    always predicting the test set's most frequent class. `loss_factor` or `chance_rounds` of 0
    turns its check off (`train.diverge_loss_factor`, `train.diverge_chance_rounds`).
    """

    initial_loss: float
    chance_accuracy: float
    loss_factor: float
    chance_rounds: int
    rounds_at_chance: int = 0
    warned: set[str] = field(default_factory=set)

    def check(self, record: dict[str, Any]) -> str | None:
        """The warning `record` raises, the first time its kind of divergence shows; else None."""
        round_, loss, accuracy = record["round"], record["test_loss"], record["test_accuracy"]
        # a margin of 10% over the majority share: a model this close to chance has learnt nothing
        self.rounds_at_chance = self.rounds_at_chance + 1 if accuracy <= 1.1 * self.chance_accuracy else 0
        if self.loss_factor > 0 and not loss <= self.loss_factor * self.initial_loss and self._first("loss"):
            return (
                f"diverging: round {round_} test loss {loss:.3g} is over {self.loss_factor:g}x the initial "
                f"model's {self.initial_loss:.3g}; lower train.lr or set train.clip_norm"
            )
        if 0 < self.chance_rounds <= self.rounds_at_chance and self._first("chance"):
            return (
                f"diverging: test accuracy at chance ({accuracy:.3f}) for {self.rounds_at_chance} evaluated "
                f"rounds up to round {round_}; lower train.lr"
            )
        return None

    def _first(self, kind: str) -> bool:
        first = kind not in self.warned
        self.warned.add(kind)
        return first
