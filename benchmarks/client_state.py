"""What bounding client state in RAM costs: peak RSS, seconds per round and checkpoint seconds.

    python -m benchmarks.client_state                 # 10^4 clients, 15 rounds, budgets unbounded / 10 MB / 1 MB
    python -m benchmarks.client_state --rounds 3 --clients 2000   # a smoke test

SCAFFOLD (one control variate c_i per client, the size of the model) on LEAF synthetic(1, 1),
natural split over `--clients` clients, the quickstart MLP, a cohort of 10% a round, 1 local
epoch, vectorized backend, 1 torch thread, a checkpoint every 5 rounds, run through a run folder
as `fedsim run` does. Each budget (`engine.client_state_memory`) runs in a fresh process, so its
peak RSS is its own. Per budget: set-up seconds, median seconds a round (rounds after the first;
the store's reads and spills are inside the round), peak RSS, the client-state bytes held in
RAM and on disk at the end, the median checkpoint seconds and states it wrote, and whether the
final weights equal the unbounded run's bit for bit; and, for scale, what the checkpoint did
before: every participant's state copied into one file.

A second table times the layout choice on a round's worth of the same states: one safetensors
file per client, one file with a tensor per client's tensor, and the store's segment.

Results go to `benchmarks/results/client_state.md` and `.json` (`--out` to change).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.concurrent_runs import cpu_name
from benchmarks.tables import publish

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "experiments" / "quickstart.toml"
MB = 1e6
BUDGETS = {"unbounded": 0, "10 MB": 10_000_000, "1 MB": 1_000_000}
CHECKPOINT_EVERY = 5


def overrides(clients: int, rounds: int, budget: int) -> list[str]:
    return [
        "data.dataset=synthetic", "data.partitioner=natural", f"data.num_clients={clients}",
        f"data.samples={20 * clients}", "train.fraction=0.1", "train.local_epochs=1", f"train.rounds={rounds}",
        "strategy.name=scaffold", "engine.backend=vectorized", "engine.device=cpu", "engine.threads=1",
        f"train.checkpoint_every={min(CHECKPOINT_EVERY, rounds)}", f"engine.client_state_memory={budget}",
    ]


def measure(clients: int, rounds: int, budget: int) -> dict:
    """One run in this (fresh) process: its timings, peak RSS and store sizes."""
    from safetensors.torch import save

    from fedsim.checkpoint import Checkpointer, prepare_run
    from fedsim.client_state import flatten, state_bytes, write_durably
    from fedsim.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sim = prepare_run(load_config(QUICKSTART, overrides(clients, rounds, budget)), Path(tmp) / "run")
        setup_s = time.perf_counter() - start
        checkpoints, written = [], []
        [checkpointer] = [cb for cb in sim.callbacks if isinstance(cb, Checkpointer)]
        store_dir = Path(tmp) / "run" / "client_states"

        def timed(sim_) -> None:
            before = set(store_dir.glob("seg_*")) if store_dir.exists() else set()
            begin = time.perf_counter()
            Checkpointer.on_round_done(checkpointer, sim_)
            if sim_.round % min(CHECKPOINT_EVERY, rounds) == 0:
                checkpoints.append(time.perf_counter() - begin)
                new = set(store_dir.glob("seg_*")) - before
                written.append(sum(p.stat().st_size for p in new) / MB)

        checkpointer.on_round_done = timed
        sim.run()
        store = sim.client_states
        disk = sum(p.stat().st_size for p in store_dir.glob("seg_*")) if store_dir.exists() else 0
        weights = hashlib.sha256(b"".join(sim.params[k].numpy().tobytes() for k in sorted(sim.params))).hexdigest()
        row = {
            "budget_bytes": budget,
            "setup_s": setup_s,
            "round_s": statistics.median(r["round_s"] for r in sim.history.records[1:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
            "participants": len(store),
            "state_bytes": state_bytes(sim.new_client_state()),
            "ram_state_mb": store.resident_bytes / MB,
            "disk_state_mb": disk / MB,
            "checkpoint_s": statistics.median(checkpoints),
            "checkpoint_written_mb": statistics.median(written),
            "final_accuracy": sim.history.records[-1]["test_accuracy"],
            "weights_sha256": weights,
        }
        if budget == 0:  # the old checkpoint: every state copied into one file, fsynced
            states = store.get_many(store.client_ids())
            begin = time.perf_counter()
            flat = {f"client/{cid}/{k}": t for cid, s in states.items() for k, t in flatten(s).items()}
            write_durably(Path(tmp) / "all.safetensors", save(flat))
            row["copy_all_s"] = time.perf_counter() - begin
            row["copy_all_mb"] = (Path(tmp) / "all.safetensors").stat().st_size / MB
            row["layout"] = layout({cid: states[cid] for cid in list(states)[: clients // 10]}, Path(tmp))
        return row


def layout(states: dict, folder: Path) -> dict:
    """Seconds to write, fsync and read back a cohort's states: one file per client, one file with
    a tensor per client's tensor, and the store's segment (one file, the states stacked)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from fedsim.client_state import ClientStateStore, flatten, fsync_path

    def timed(work) -> float:
        begin = time.perf_counter()
        work()
        return time.perf_counter() - begin

    per_client, per_tensor = folder / "per_client", folder / "per_tensor.safetensors"
    per_client.mkdir()
    paths = {cid: per_client / f"{cid}.safetensors" for cid in states}
    flat = {f"{cid}/{k}": t for cid, s in states.items() for k, t in flatten(s).items()}
    store = ClientStateStore(1, folder / "store")  # a 1-byte budget: the whole cohort goes to one segment

    def read_per_tensor() -> None:
        with safe_open(per_tensor, "pt") as f:
            [f.get_tensor(k).clone() for k in f.keys()]

    rows = {
        "one file per client": (
            timed(lambda: [save_file(flatten(s), paths[cid]) for cid, s in states.items()]),
            timed(lambda: [fsync_path(p) for p in [*paths.values(), per_client]]),
            timed(lambda: [load_file(p) for p in paths.values()]),
        ),
        "one file, a tensor per client's tensor": (
            timed(lambda: save_file(flat, per_tensor)),
            timed(lambda: (fsync_path(per_tensor), fsync_path(folder))),
            timed(read_per_tensor),
        ),
        "one segment, states stacked (the store)": (
            timed(lambda: store.update(states)),
            timed(store.flush),
            timed(lambda: store.get_many(list(states))),
        ),
    }
    return {"states": len(states), "rows": {name: dict(zip(("write_s", "fsync_s", "read_s"), t)) for name, t in rows.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "client_state")
    args = parser.parse_args(argv)
    rows = []
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for name, budget in BUDGETS.items():
            rows.append({"budget": name, **pool.apply(measure, (args.clients, args.rounds, budget))})
            print({k: v for k, v in rows[-1].items() if k != "layout"}, flush=True)
    reference = rows[0]["weights_sha256"]
    lines = [
        "# Bounded client state",
        "",
        f"`python -m benchmarks.client_state --clients {args.clients} --rounds {args.rounds}` on {cpu_name()} "
        f"({platform.machine()}), 1 torch thread: SCAFFOLD, LEAF synthetic(1, 1) natural split over "
        f"{args.clients} clients, quickstart MLP (one c_i = {rows[0]['state_bytes'] / 1e3:.1f} KB), cohort 10%, 1 local epoch, vectorized, a "
        f"checkpoint every {min(CHECKPOINT_EVERY, args.rounds)} rounds into the run folder. Each budget in a fresh process. "
        "Round: median over rounds after the first, the store's reads and spills included. Checkpoint: median, "
        "including the fsync of the segments spilled since the previous one; 'wrote' is the segment it added.",
        "",
        "| `engine.client_state_memory` | set-up (s) | s / round | peak RSS (MB) | participants | states in RAM (MB) "
        "| states on disk (MB) | checkpoint (s) | checkpoint wrote (MB) | same weights as unbounded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['budget']} | {r['setup_s']:.1f} | {r['round_s']:.3f} | {r['peak_rss_mb']:.0f} | {r['participants']} "
        f"| {r['ram_state_mb']:.1f} | {r['disk_state_mb']:.1f} | {r['checkpoint_s']:.3f} | {r['checkpoint_written_mb']:.1f} "
        f"| {'yes' if r['weights_sha256'] == reference else 'NO'} |"
        for r in rows
    ]
    first = rows[0]
    lines += [
        "",
        f"The checkpoint before this store copied every participant's state into one file each time: "
        f"{first['copy_all_mb']:.0f} MB in {first['copy_all_s']:.2f} s at the end of the unbounded run.",
    ]
    lay = first["layout"]
    lines += [
        "",
        f"Layout, {lay['states']} states (one round's cohort), seconds:",
        "",
        "| layout | write | fsync | read back |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {t['write_s']:.3f} | {t['fsync_s']:.3f} | {t['read_s']:.3f} |" for name, t in lay["rows"].items()]
    publish(lines, rows, args.out)


if __name__ == "__main__":
    main()
