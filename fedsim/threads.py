"""How many torch threads a run uses: `engine.threads`, or 0 for the automatic choice.

torch's default is one thread per core. For the small models of most simulations that buys
nothing alone and collapses when another process shares the cores: OpenMP threads spin
waiting for each other on cores the other process needs. On 2 cores the quickstart at 100
clients ran a round in 0.096 s alone with two threads and in 5.2 s (54x slower) beside a
second such run, while with one thread each both ran at 0.09 s
(`benchmarks/results/concurrent_runs_serial.md`). So `auto` uses one thread when a local step is
small (`AUTO_ONE_THREAD_MAX_STEP_FLOPS`) and every available thread otherwise; a sweep's share
of the cores caps it (fedsim.sweep sets the thread count of each worker).
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.config import EngineConfig

# a local step (3x a sample's forward FLOPs, times the batch) below this gains nothing from more threads
AUTO_ONE_THREAD_MAX_STEP_FLOPS = 5e7


def run_threads(engine: EngineConfig, model: nn.Module, sample: torch.Tensor, batch_size: int) -> int:
    """`engine.threads`, or the automatic choice for `model` on inputs like `sample` (one sample)."""
    if engine.threads > 0:
        return engine.threads
    from fedsim.backends.vectorized import step_flops

    small = step_flops(model, sample, batch_size) <= AUTO_ONE_THREAD_MAX_STEP_FLOPS
    return 1 if small else torch.get_num_threads()
