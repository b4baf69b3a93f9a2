"""Backends: where local training runs. `make_backend` picks one by name (`fedsim.config.BACKENDS`)."""

from __future__ import annotations

from fedsim.backends.base import Backend, Task
from fedsim.config import BACKENDS, EngineConfig
from fedsim.errors import ConfigError

def make_backend(name: str, task: Task, engine: EngineConfig | None = None) -> Backend:
    """The backend `name`, with the options of the `[engine]` table (defaults when None)."""
    engine = engine or EngineConfig()
    if name == "serial":
        from fedsim.backends.serial import SerialBackend

        return SerialBackend(task)
    if name == "flower":
        from fedsim.flower import FlowerBackend

        return FlowerBackend(task)
    if name == "vectorized":
        from fedsim.backends.vectorized import VectorizedBackend

        return VectorizedBackend(task, engine.max_clients_per_batch)
    if name == "auto":
        from fedsim.backends.vectorized import auto_backend

        return auto_backend(task, engine.max_clients_per_batch)
    if name == "ray":
        from fedsim.backends.ray_pool import RayBackend

        return RayBackend(task, engine)
    raise ConfigError(f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")
