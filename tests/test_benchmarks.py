"""The speed benchmark's quick mode runs fedsim's runners and the plain loop and writes its table."""

from __future__ import annotations

import json

from benchmarks import speed


def test_quick_speed_benchmark_writes_the_table(tmp_path):
    runners = ["vectorized", "serial", "plain"]
    speed.main(["--quick", "--workloads", "digits10", "--runners", ",".join(runners), "--out", str(tmp_path)])
    results = json.loads((tmp_path / "speed.json").read_text())
    workload = results["workloads"]["digits10"]
    assert workload["rounds"] == speed.QUICK_ROUNDS and workload["floor_s"] > 0
    assert list(workload["runners"]) == runners
    for run in workload["runners"].values():
        assert "error" not in run, run
        assert len(run["round_s"]) == speed.QUICK_ROUNDS
        assert run["steady_s"] > 0 and run["peak_rss_mb"] > 0 and 0 <= run["final_accuracy"] <= 1
    table = (tmp_path / "speed.md").read_text()
    assert "| runner | s/round (steady) |" in table
    assert all(f"| {runner} |" in table for runner in runners)
    assert "vectorized is" in table
