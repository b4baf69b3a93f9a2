"""Backends: where local training runs. `make_backend` picks one by name."""

from __future__ import annotations

from fedsim.backends.base import Backend, Task
from fedsim.config import EngineConfig
from fedsim.errors import ConfigError

BACKENDS: dict[str, str] = {
    "serial": "one process, clients one after another (the reference)",
    "flower": "Flower's simulation engine: ClientApps on Ray actors (docs/flower.md)",
    "vectorized": "one process, a chunk of clients trained at once with torch.func.vmap (small models)",
    "auto": "vectorized when the model is small and vectorizes, else serial (docs/backends.md)",
    "ray": "a persistent pool of Ray actors on this machine or a cluster (docs/ray.md)",
}

WORKER_BACKENDS = ("serial", "vectorized", "auto")  # how a Ray actor trains its share (engine.worker_backend)


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
