"""Two runs sharing the cores: does a second process make each run collapse?

    python -m benchmarks.concurrent_runs                 # quickstart at 100 clients, serial, 12 rounds
    python -m benchmarks.concurrent_runs --backend vectorized
    python -m benchmarks.concurrent_runs --rounds 4 --repeats 1   # a smoke test

For each thread setting, the quickstart (digits, MLP, serial backend) at 100 clients runs
alone, then twice at once as two `fedsim run` processes. The table gives the median seconds
a round (rounds after the first, from each run's metrics.csv) and the slowdown of a run that
shares the cores against the same setting alone. Settings:
- `threads=N`: `--set engine.threads=N` (N = the cores: torch's own default);
- `auto`: `engine.threads = 0`, fedsim's choice (fedsim/threads.py);
- `passive`: torch's default threads with `OMP_WAIT_POLICY=PASSIVE`, so idle OpenMP threads
  sleep instead of spinning on a core the other run needs.

Results go to `benchmarks/results/concurrent_runs.json` and `.md` (`--out` to change).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "experiments" / "quickstart.toml"


def settings(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (--set overrides, environment additions)"""
    return {
        f"threads={cores} (torch default)": ([f"engine.threads={cores}"], {}),
        "threads=1": (["engine.threads=1"], {}),
        f"threads={cores}, OMP_WAIT_POLICY=PASSIVE": ([f"engine.threads={cores}"], {"OMP_WAIT_POLICY": "PASSIVE"}),
        "auto (engine.threads=0)": (["engine.threads=0"], {}),
    }


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def launch(out: Path, overrides: list[str], env: dict[str, str], args: argparse.Namespace) -> subprocess.Popen:
    sets = [f"data.num_clients={args.clients}", f"train.rounds={args.rounds}", f"engine.backend={args.backend}",
            "engine.device=cpu", *overrides]
    command = [sys.executable, "-m", "fedsim.cli", "run", str(QUICKSTART), "-q", "--out", str(out)]
    command += [flag for s in sets for flag in ("--set", s)]
    return subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def round_seconds(run: Path) -> float:
    with open(run / "metrics.csv") as f:
        times = [float(row["round_s"]) for row in csv.DictReader(f)]
    return statistics.median(times[1:])


def measure(overrides: list[str], env: dict[str, str], copies: int, args: argparse.Namespace) -> float:
    """Median seconds a round over `copies` runs started at once (the mean of their medians)."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / f"run{i}" for i in range(copies)]
        procs = [launch(run, overrides, env, args) for run in runs]
        for proc in procs:
            _, stderr = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"a run failed: {stderr.decode().strip()}")
        return statistics.mean(round_seconds(run) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--backend", default="serial", choices=("serial", "vectorized"))
    parser.add_argument("--repeats", type=int, default=2, help="alternating repetitions of every setting")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/concurrent_runs_BACKEND")
    args = parser.parse_args()
    args.out = args.out or ROOT / "benchmarks" / "results" / f"concurrent_runs_{args.backend}"
    cores = len(os.sched_getaffinity(0))
    rows = {name: {"alone": [], "shared": []} for name in settings(cores)}
    for _ in range(args.repeats):  # alternate, so drift of the machine shows in every setting alike
        for name, (overrides, env) in settings(cores).items():
            rows[name]["alone"].append(measure(overrides, env, 1, args))
            rows[name]["shared"].append(measure(overrides, env, 2, args))
            print(f"{name}: alone {rows[name]['alone'][-1]:.4f} s, shared {rows[name]['shared'][-1]:.4f} s", flush=True)
    lines = [
        f"# Two concurrent runs on {cores} cores ({args.backend} backend)",
        "",
        f"`python -m benchmarks.concurrent_runs --backend {args.backend} --clients {args.clients} --rounds "
        f"{args.rounds} --repeats {args.repeats}` on {cpu_name()}, {cores} cores: "
        f"the quickstart (digits MLP, {args.backend} backend) at {args.clients} clients; median seconds a round, mean over "
        f"{args.repeats} alternating repetitions.",
        "",
        "| setting | alone (s/round) | two at once (s/round each) | slowdown |",
        "|---|---:|---:|---:|",
    ]
    table = []
    for name, row in rows.items():
        alone, shared = statistics.mean(row["alone"]), statistics.mean(row["shared"])
        table.append({"setting": name, "alone_s": alone, "shared_s": shared, "slowdown": shared / alone, **row})
        lines.append(f"| {name} | {alone:.4f} | {shared:.4f} | {shared / alone:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    meta = {"cores": cores, "backend": args.backend, "clients": args.clients, "rounds": args.rounds,
            "repeats": args.repeats,
            "platform": platform.platform()}
    args.out.with_suffix(".json").write_text(json.dumps({"setup": meta, "rows": table}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
