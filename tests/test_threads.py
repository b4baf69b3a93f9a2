"""engine.threads: explicit counts are used and recorded, auto picks one thread for small steps,
and a run gives the caller's process its thread count back."""

import torch
from torch import nn

from fedsim.config import EngineConfig
from fedsim.engine import Simulation
from fedsim.threads import AUTO_ONE_THREAD_MAX_STEP_FLOPS, run_threads
from tests.conftest import small_config


def test_auto_uses_one_thread_for_small_steps_and_all_for_large_ones():
    sample = torch.zeros(1, 256)
    small, large = nn.Linear(256, 10), nn.Sequential(nn.Linear(256, 4096), nn.Linear(4096, 4096))
    assert 3 * 2 * 256 * 10 * 32 < AUTO_ONE_THREAD_MAX_STEP_FLOPS < 3 * 2 * 4096 * 4096 * 32
    assert run_threads(EngineConfig(threads=0), small, sample, batch_size=32) == 1
    assert run_threads(EngineConfig(threads=0), large, sample, batch_size=32) == torch.get_num_threads()
    assert run_threads(EngineConfig(threads=3), small, sample, batch_size=32) == 3


class ThreadsDuringTraining:
    def on_run_start(self, sim):
        self.seen = torch.get_num_threads()

    def __getattr__(self, name):  # the other callback hooks: nothing to do
        return lambda *args: None


def test_a_run_trains_at_its_thread_count_and_restores_the_callers():
    before = torch.get_num_threads()
    probe = ThreadsDuringTraining()
    sim = Simulation(small_config("engine.threads=1", "train.rounds=1"), [probe])
    summary = sim.run()
    assert probe.seen == 1 and summary["threads"] == 1
    assert torch.get_num_threads() == before
