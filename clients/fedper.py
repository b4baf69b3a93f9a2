"""FedPer: a shared body, a private head per client.

Arivazhagan et al., "Federated Learning with Personalization Layers", arXiv:1912.00818 (2019).
Each client trains the whole network from the global body and its own head; only the body's
update is uploaded (the head is reset to the global values before the strategy computes the
upload, so its delta is zero and the global head never moves), and the trained head stays in the
client's state. A client's personal model is the global body with its head; a client that has
never trained starts its head from the global (initial) one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fedsim import tree
from fedsim.config import option
from fedsim.errors import ConfigError
from fedsim.strategy import LocalSummary, State
from fedsim.trainer import ClientTrainer
from fedsim.tree import Params


def head_names(model: nn.Module, layers: int) -> list[str]:
    """Names of the parameters of the model's last `layers` parameterised modules (its head)."""
    owners: list[str] = []
    for name, _ in model.named_parameters():
        if not owners or owners[-1] != tree.module_of(name):
            owners.append(tree.module_of(name))
    if layers >= len(owners):
        raise ConfigError(
            f"trainer.head_layers={layers} leaves no shared body: the model has {len(owners)} parameterised layers"
        )
    private = set(owners[-layers:])
    return [name for name, _ in model.named_parameters() if tree.module_of(name) in private]


@dataclass
class FedPer(ClientTrainer):
    """FedPer: the last `head_layers` parameterised layers are private to each client."""

    name: ClassVar[str] = "fedper"

    head_layers: int = option(1, ge=1)

    def prepare(self, model: nn.Module, params: Params) -> Params:
        self.head = head_names(model, self.head_layers)
        return params

    def init_state(self, params: Params) -> State:
        return {"head": tree.clone({k: params[k] for k in self.head})}

    def start_params(self, params: Params, state: State) -> Params:
        return {**params, **state["head"]}

    def shared_params(self, params: Params, global_params: Params) -> Params:
        return {**params, **{k: global_params[k] for k in self.head}}

    def end(self, params: Params, opt: State, state: State, summary: LocalSummary) -> State:
        return {"head": {k: params[k] for k in self.head}}

    def personal_params(self, global_params: Params, state: State) -> Params:
        return {**global_params, **state["head"]}
