"""Sweeps: one experiment config run over a cartesian grid of overrides and seeds.

Each cell (one grid point, one seed) is an ordinary run folder under the sweep folder, named
after its values (`data.alpha=0.1__strategy.name=scaffold__seed=0`), next to a `sweep.json`
manifest that `fedsim report` reads. Cells run in a pool of worker processes, so a cell
that raises is recorded as failed and the others go on; a worker that dies outright (out of
memory, a crash) fails the cells it was running and the pool is replaced.

Rerunning the same sweep skips finished cells and redoes the others, from their newest
checkpoint when `train.checkpoint_every` > 0. Every cell's config is resolved and validated
before any cell starts, and a cell folder left by a different config is refused.

A sweep prints nothing: it reports its progress to a `SweepListener`, which the CLI draws.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
import tomllib
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedsim.checkpoint import config_differences, prepare_run
from fedsim.config import Config, config_from_dict, load_config, parse_override
from fedsim.errors import ConfigError, FedsimError
from fedsim.plugins import build_strategy
from fedsim.results import ERROR_FILE, error_details
from fedsim.validate import validate

MANIFEST = "sweep.json"
_DIED = "a worker process died while this cell ran (out of memory, a crash or killed); rerun to retry"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


@dataclass
class Cell:
    """One run of a sweep: a grid point and a seed, with its resolved config."""

    name: str
    values: dict[str, Any]  # grid key -> value
    seed: int
    config: Config


@dataclass
class SweepResult:
    """What one invocation of a sweep did."""

    total: int
    skipped: int  # already finished before this invocation
    finished: int  # finished by this invocation
    failed: list[str]  # names of the cells that failed


class SweepListener:
    """Progress events of a sweep; override what you need.

    In order: `planned` once, then for every cell that runs `cell_started` and one of
    `cell_finished` / `cell_failed`. Cells finished by an earlier invocation are skipped and
    only counted in `planned`. Events come from the process that called `run_sweep`.
    """

    def planned(self, total: int, skipped: int) -> None:
        """Every cell is validated: `total` cells, of which `skipped` already finished."""

    def cell_started(self, name: str) -> None: ...

    def cell_finished(self, name: str) -> None: ...

    def cell_failed(self, name: str, error: str) -> None:
        """The cell raised or its worker died; `error` is the text kept in its error.txt."""


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_values(text: str) -> list[str]:
    """Split `v1,v2,...` at the commas outside brackets and quotes: `[64,64],[128]` is two values."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return items


def parse_grid(axes: list[str]) -> dict[str, list[str]]:
    """`--grid key=v1,v2` options -> {key: [raw values]}, checked for duplicates and empty values."""
    grid: dict[str, list[str]] = {}
    for axis in axes:
        if "=" not in axis:
            raise ConfigError(f"--grid '{axis}' must look like key=v1,v2,..., e.g. data.alpha=0.1,1")
        key, raw = (part.strip() for part in axis.split("=", 1))
        values = split_values(raw)
        if not key or not all(values):
            raise ConfigError(f"--grid '{axis}' has an empty key or value")
        if key == "seed":
            raise ConfigError("give seeds with --seeds N or --seed-list, not --grid seed=...")
        if key in grid:
            raise ConfigError(f"--grid '{key}' is given twice; list all its values in one --grid")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid '{key}' repeats a value")
        grid[key] = values
    return grid


def plan_cells(
    config_path: Path, grid: dict[str, list[str]], seeds: list[int], overrides: list[str]
) -> list[Cell]:
    """Every cell's resolved, validated config, grid points in command-line order, seeds innermost."""
    set_keys = {text.split("=", 1)[0].strip() for text in overrides}
    clash = sorted(set_keys & (set(grid) | {"seed"}))
    if clash:
        raise ConfigError(f"'{clash[0]}' is both a --set and a --grid/--seeds key; keep one")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("the seed list repeats a seed")
    cells = []
    for point in itertools.product(*grid.values()):
        raw = dict(zip(grid, point))
        values = {key: parse_override(f"{key}={text}")[1] for key, text in raw.items()}
        point_overrides = [f"{key}={text}" for key, text in raw.items()]
        for seed in seeds:
            config = load_config(config_path, [*overrides, *point_overrides, f"seed={seed}"])
            validate(config)
            build_strategy(config.strategy)
            name = "__".join(
                [*(f"{key}={_UNSAFE.sub('_', text)}" for key, text in raw.items()), f"seed={seed}"]
            )
            cells.append(Cell(name, values, seed, config))
    if len({c.name for c in cells}) != len(cells):
        raise ConfigError("two grid values give the same cell folder name; make the values distinct")
    return cells


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run folder's summary.json; {} when the run never ended (no summary, or one torn by a kill)."""
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def cell_status(run_dir: Path) -> str | None:
    """`finished` or `failed`; None when the run never ended."""
    return read_summary(run_dir).get("status")


def check_existing(cells: list[Cell], out: Path) -> None:
    """Refuse to mix cells made by another config into this sweep's folder."""
    for cell in cells:
        saved = out / cell.name / "config.toml"
        if saved.is_file():
            changed = config_differences(saved.read_text(), cell.config)
            if changed:
                raise ConfigError(
                    f"{out / cell.name} was run with a different config ({', '.join(changed)} differ); "
                    "use another --out for a different sweep"
                )


def write_manifest(
    out: Path,
    config_path: Path,
    overrides: list[str],
    grid: dict[str, list[str]],
    seeds: list[int],
    cells: list[Cell],
) -> None:
    """The sweep's definition and its cells, for `fedsim report` (rewritten by every invocation)."""
    manifest = {
        "config": str(config_path),
        "overrides": overrides,
        "grid": {key: [parse_override(f"{key}={v}")[1] for v in values] for key, values in grid.items()},
        "seeds": seeds,
        "cells": [{"name": c.name, "values": c.values, "seed": c.seed} for c in cells],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def run_cell(config_toml: str, run_dir: str, threads: int) -> str | None:
    """Worker: run (or resume) one cell; None when it finished, else its error text.

    Errors come back as text because fedsim's exceptions do not survive pickling.
    """
    torch.set_num_threads(threads)
    try:
        prepare_run(config_from_dict(tomllib.loads(config_toml)), run_dir, resume=True).run()
    except FedsimError as err:
        details = error_details(err)
        return f"{err}\n\n{details}" if details else str(err)
    except Exception:
        return traceback.format_exc()
    return None


def record_failure(run_dir: Path, text: str) -> None:
    """Keep the error in the cell folder; a summary.json says `failed` even if the run never started."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).write_text(text.rstrip() + "\n")
    if cell_status(run_dir) != "failed":
        last_line = text.strip().splitlines()[-1]
        (run_dir / "summary.json").write_text(
            json.dumps({"status": "failed", "error": last_line}, indent=2) + "\n"
        )


def run_sweep(
    config_path: Path,
    grid_axes: list[str],
    seeds: list[int],
    overrides: list[str],
    out: Path,
    jobs: int,
    listener: SweepListener | None = None,
) -> SweepResult:
    """Run every unfinished cell of the sweep, `jobs` at a time, telling `listener` as it goes."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    listener = listener or SweepListener()
    grid = parse_grid(grid_axes)
    cells = plan_cells(config_path, grid, seeds, overrides)
    check_existing(cells, out)
    write_manifest(out, config_path, overrides, grid, seeds, cells)
    todo = [c for c in cells if cell_status(out / c.name) != "finished"]
    result = SweepResult(total=len(cells), skipped=len(cells) - len(todo), finished=0, failed=[])
    listener.planned(result.total, result.skipped)
    if not todo:
        return result
    jobs = min(jobs, len(todo))
    threads = max(1, available_cores() // jobs)
    queue = list(reversed(todo))
    running: dict[Future, Cell] = {}
    pool = _new_pool(jobs)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                cell = queue.pop()
                for stale in ("summary.json", ERROR_FILE):  # of an earlier, failed attempt
                    (out / cell.name / stale).unlink(missing_ok=True)
                future = pool.submit(run_cell, cell.config.to_toml(), str(out / cell.name), threads)
                running[future] = cell
                listener.cell_started(cell.name)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
            for future in list(running) if broken else done:
                cell = running.pop(future)
                error = _outcome(future)
                if error is None:
                    result.finished += 1
                    listener.cell_finished(cell.name)
                else:
                    record_failure(out / cell.name, error)
                    result.failed.append(cell.name)
                    listener.cell_failed(cell.name, error)
            if broken:  # every cell of a broken pool is lost; later cells get a fresh pool
                pool.shutdown(cancel_futures=True)
                pool = _new_pool(jobs)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return result


def _outcome(future: Future) -> str | None:
    """A cell's error text (None: finished); a cell of a broken pool died with its worker."""
    if future.done() and not isinstance(future.exception(), BrokenProcessPool):
        return future.result()
    return _DIED


def _new_pool(jobs: int) -> ProcessPoolExecutor:
    """Workers that inherit nothing of this process's state (threads, CUDA).

    They are forked from a clean server process that has imported fedsim once, so each
    worker starts without the seconds-long imports of torch and the data stack; where the
    platform has no forkserver, they are spawned.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context)
