"""Backends: where local training runs. `make_backend` picks one by name."""

from __future__ import annotations

from fedsim.backends.base import Backend, Task
from fedsim.errors import ConfigError

BACKENDS: dict[str, str] = {
    "serial": "one process, clients one after another (the reference)",
}


def make_backend(name: str, task: Task) -> Backend:
    if name == "serial":
        from fedsim.backends.serial import SerialBackend

        return SerialBackend(task)
    raise ConfigError(f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")
