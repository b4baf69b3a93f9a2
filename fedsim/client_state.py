"""Engine-owned store of per-client strategy state (SCAFFOLD's c_i, FedSpeed's correction...).

Only clients that have participated take memory. With `directory` set, each client's state
is a safetensors file there instead of tensors in RAM, for models too big to keep N copies.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedsim.strategy import State

_SEP = "/"


def flatten(state: State) -> dict[str, torch.Tensor]:
    return {f"{group}{_SEP}{name}": t for group, params in state.items() for name, t in params.items()}


def unflatten(flat: dict[str, torch.Tensor]) -> State:
    state: State = {}
    for key, t in flat.items():
        group, name = key.split(_SEP, 1)
        state.setdefault(group, {})[name] = t
    return state


class ClientStateStore:
    """Mapping client id -> State, in memory or spilled to one safetensors file per client."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[int, State] = {}

    def _path(self, client_id: int) -> Path:
        return self.directory / f"client_{client_id}.safetensors"

    def get(self, client_id: int) -> State | None:
        if self.directory is None:
            return self._memory.get(client_id)
        path = self._path(client_id)
        return unflatten(load_file(path)) if path.exists() else None

    def set(self, client_id: int, state: State) -> None:
        if not state:
            return
        state = {g: {k: t.detach().cpu().contiguous() for k, t in p.items()} for g, p in state.items()}
        if self.directory is None:
            self._memory[client_id] = state
        else:
            save_file(flatten(state), self._path(client_id))

    def client_ids(self) -> list[int]:
        if self.directory is None:
            return sorted(self._memory)
        return sorted(int(p.stem.split("_")[1]) for p in self.directory.glob("client_*.safetensors"))

    def __len__(self) -> int:
        return len(self.client_ids())
