"""Start-up: how long each `fedsim` command takes from launch to exit, as a user types it.

    python -m benchmarks.startup                 # 7 runs of each command
    python -m benchmarks.startup --repeats 1     # a smoke test

Each command runs in a fresh interpreter (`python -m fedsim.cli ...`, in a scratch folder, so the
fedsim imported is the installed one or PYTHONPATH's), round-robin over the commands so drift of
a busy machine spreads over all of them; the table gives the median, min and max wall seconds,
and the median CPU seconds (user + system), which other jobs on a shared machine disturb less.
`import torch` alone is the floor every run pays; for the quickstart, the run's own `wall_s`
(summary.json: backend start and the 30 rounds) is subtracted to give everything else (imports,
data, split, model, the run folder). Results go to `benchmarks/results/startup.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from benchmarks.concurrent_runs import cpu_name
from fedsim.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "experiments" / "quickstart.toml"
FEDSIM = [sys.executable, "-m", "fedsim.cli"]
QUICKSTART_RUN = "fedsim run experiments/quickstart.toml --quiet"
COMMANDS = {  # name -> (argv, expected exit code)
    "python -c 'import torch' (the floor of a run)": ([sys.executable, "-c", "import torch"], 0),
    "fedsim --help": ([*FEDSIM, "--help"], 0),
    "fedsim list": ([*FEDSIM, "list"], 0),
    "config error (--set data.alpah=1)": ([*FEDSIM, "run", str(QUICKSTART), "--set", "data.alpah=1"], 2),
    QUICKSTART_RUN: ([*FEDSIM, "run", str(QUICKSTART), "--quiet", "--out", "run"], 0),
}


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], code: int, scratch: Path) -> tuple[float, float, float | None]:
    """(wall seconds, CPU seconds) of `argv` run in `scratch`, and the run's own wall_s when it
    wrote a run folder."""
    cpu, start = cpu_seconds_of_children(), time.perf_counter()
    proc = subprocess.run(argv, cwd=scratch, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, cpu_seconds_of_children() - cpu
    if proc.returncode != code:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}, not {code}: {proc.stderr.strip()}")
    summary = scratch / "run" / "summary.json"
    return seconds, cpu, json.loads(summary.read_text())["wall_s"] if summary.exists() else None


def summarised(name: str, wall: list[float], cpu: list[float]) -> dict:
    """A table row: the runs' wall and CPU seconds and their median, min and max."""
    return {"command": name, "seconds": wall, "cpu_seconds": cpu, "median_s": statistics.median(wall),
            "min_s": min(wall), "max_s": max(wall), "median_cpu_s": statistics.median(cpu) if cpu else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (the median is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    wall: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    training: list[float] = []
    for repeat in range(args.repeats):
        for name, (command, code) in COMMANDS.items():
            with tempfile.TemporaryDirectory() as scratch:
                wall_s, cpu_s, run_s = timed(command, code, Path(scratch))
            wall[name].append(wall_s)
            cpu[name].append(cpu_s)
            training += [run_s] if run_s is not None else []
        print(f"repeat {repeat + 1}/{args.repeats}:", ", ".join(f"{w[-1]:.2f}" for w in wall.values()), flush=True)
    rows = [summarised(name, wall[name], cpu[name]) for name in COMMANDS]
    before_training = [total - run_s for total, run_s in zip(wall[QUICKSTART_RUN], training)]
    rows.append(summarised("quickstart minus its training (total - summary.json wall_s)", before_training, []))
    cores, load_after = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    lines = [
        "# Start-up of fedsim commands",
        "",
        f"`python -m benchmarks.startup --repeats {args.repeats}` on {cpu_name()}, {cores} cores, "
        f"1-minute load average {load_before:.1f} at start and {load_after:.1f} at the end, "
        f"Python {platform.python_version()}: seconds from launch to exit of a fresh interpreter, "
        f"{args.repeats} runs of each command, round-robin.",
        "",
        "| command | median s | min s | max s | median CPU s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu_cell = "-" if r["median_cpu_s"] is None else f"{r['median_cpu_s']:.2f}"
        cells = [r["command"], *(f"{r[k]:.2f}" for k in ("median_s", "min_s", "max_s")), cpu_cell]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    setup = {"cpu": cpu_name(), "cores": cores, "repeats": args.repeats, "python": platform.python_version(),
             "platform": platform.platform(), "torch": version("torch"),
             "fedsim_commit": provenance()["fedsim_commit"], "load_average_1m": [load_before, load_after]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
