"""How many torch threads a run uses: `engine.threads`, or 0 for the automatic choice.

torch's default is one thread per core. For the small models of most simulations that buys
little alone and collapses when another process shares the cores: OpenMP threads spin waiting
for each other on cores the other process needs. On 2 cores, the quickstart at 100 clients with
two threads ran a round 6.5x slower (serial backend) and 18.8x slower (vectorized) beside a
second such run than alone; with one thread each, two runs were as fast as one
(`benchmarks/results/concurrent_runs_serial.md`, `concurrent_runs_vectorized.md`). So `auto`
uses one thread when a local step is small (`AUTO_ONE_THREAD_MAX_STEP_FLOPS`) and every
available thread otherwise; a sweep's share of the cores caps it (fedsim.sweep sets the thread
count of each worker). A vectorized run alone on an idle machine is about 1.3x faster with
`engine.threads` = the cores, at the risk above.
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
