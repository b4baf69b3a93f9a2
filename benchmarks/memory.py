"""Memory benchmark: a client's peak training memory under backprop, checkpointing and local learning.

    python -m benchmarks.memory                                  # ResNet-32, batch 64 and 128, K = 4, 8, 16
    python -m benchmarks.memory --batch 16 32 64 128 1024 --steps 5 --model resnet110_gn
    python -m benchmarks.memory --quick                          # batch 8, K = 4: a smoke test

One client's local step, as fedsim's serial backend runs it (`ClientTrainer.train` on a
`ClientJob`, FedAvg, SGD with momentum 0.9), on CIFAR-10-shaped random inputs, for:
- `backprop`: plain backpropagation;
- `checkpoint`: backprop with `torch.utils.checkpoint` over the same K blocks local learning
  uses (every block but the last keeps only its input and recomputes its activations during
  backward; reentrant checkpointing, so the meter also counts the recomputed activations);
- `dgl`, `auglocal`, `man`: local learning with K blocks (the `local_learning` trainer's defaults).

Measured per (method, K, batch), after one warm-up step, over `--steps` steps:
- peak activation bytes: tensors autograd keeps for backward, from saved-tensor hooks
  (fedsim/memory.py; parameters excluded; for `checkpoint` the input batch, which must require
  grad there, is not counted: 0.4% of backprop's peak at batch 64);
- static bytes: parameters + gradients + momentum, backbone and auxiliary nets apart;
- the saving of the activation peak and of static + activations against backprop;
- seconds per step (the hooks' cost is below run-to-run noise on a ResNet step);
- on a GPU also `torch.cuda.max_memory_allocated` (peak) and peak minus the memory allocated
  before the steps (dynamic), each config in a fresh process since the allocator's statistics
  are process-wide; cuDNN benchmarking off and deterministic algorithms on.

Results go to `benchmarks/results/memory.json` and `memory.md` (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from clients.local_learning import LocalLearning, block_module_ranges, split_layers
from fedsim.config import ModelConfig
from fedsim.local import ClientJob, LocalEnv
from fedsim.memory import MemoryMeter, model_state_bytes
from fedsim.models import build_model
from fedsim.schedule import LocalSchedule, cohort_batches
from fedsim.strategy import GradFn
from fedsim.trainer import ClientTrainer, SGDSettings
from fedsim.tree import Params
from strategies.fedavg import FedAvg

ROOT = Path(__file__).resolve().parents[1]
LOCAL_METHODS = ("dgl", "auglocal", "man")
NUM_CLASSES = 10
MB = 2**20


def checkpointed_grad_fn(model: torch.nn.Sequential, blocks: int) -> GradFn:
    """Backprop gradients with every block but the last under reentrant `checkpoint`."""
    ranges = block_module_ranges(split_layers(model), blocks, len(model))
    bodies = [model[start:stop] for start, stop in ranges]  # slices keep the model's parameter names
    names = [[n for n, _ in body.named_parameters()] for body in bodies]

    def grad_fn(params: Params, batch) -> tuple[torch.Tensor, Params]:
        x, y = batch
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        call = lambda k, h: functional_call(bodies[k], {n: leaves[n] for n in names[k]}, (h,))
        with torch.enable_grad():
            h = x.detach().requires_grad_(True)  # reentrant checkpointing needs an input that requires grad
            for k in range(len(bodies) - 1):
                h = checkpoint(call, k, h, use_reentrant=True)
            loss = F.cross_entropy(call(len(bodies) - 1, h), y)
            loss.backward()  # reentrant checkpointing accumulates into .grad
        return loss.detach(), {k: leaf.grad for k, leaf in leaves.items()}

    return grad_fn


def measure(method: str, blocks: int, batch: int, args: argparse.Namespace) -> dict:
    """One config: build, one warm-up step, then `args.steps` metered steps of one client."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    shape = tuple(args.input)
    trainer = LocalLearning(method=method, blocks=blocks) if method in LOCAL_METHODS else ClientTrainer()
    trainer.sgd = SGDSettings(momentum=0.9)
    backbone = build_model(ModelConfig(name=args.model), shape, NUM_CLASSES, seed=0)
    model = trainer.build_model(backbone, shape, NUM_CLASSES, seed=0).to(device)
    strategy = FedAvg()
    params = trainer.prepare(model, {k: v.detach() for k, v in model.named_parameters()})
    if method == "checkpoint":
        grad_fn = checkpointed_grad_fn(model, blocks)
    else:
        grad_fn = trainer.grad_fn(model, strategy.objective)
    gen = torch.Generator().manual_seed(0)
    data = (
        torch.randn(batch, *args.input, generator=gen).to(device),
        torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device),
    )

    def run(steps: int) -> None:
        schedule = LocalSchedule(epochs=1, steps=steps, batch_size=batch)
        job = ClientJob(
            client_id=0,
            round=1,
            lr=0.05,
            global_params=params,
            broadcast=strategy.broadcast(strategy.init_server_state(params)),
            strategy_state=strategy.init_client_state(params),
            trainer_state=trainer.init_state(params),
            data=data,
            batches=cohort_batches(schedule, 0, 1, [0], [batch], [1.0])[0],
            unlabelled=data[0][:0],
        )
        trainer.train(job, LocalEnv(strategy, model, grad_fn, schedule, seed=0))

    run(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    with MemoryMeter(device) as meter:
        run(args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    aux = getattr(model, "aux", None)
    row = {
        "method": method,
        "blocks": blocks if method != "backprop" else 1,
        "batch": batch,
        "activation_bytes": meter.activation_bytes,
        "static_backbone_bytes": model_state_bytes(getattr(model, "backbone", model), momentum=True),
        "static_aux_bytes": model_state_bytes(aux, momentum=True) if aux is not None else 0,
        "s_per_step": seconds,
    }
    if device.type == "cuda":
        row |= {
            "cuda_peak_bytes": meter.cuda_bytes,
            "cuda_dynamic_bytes": meter.cuda_bytes - base,
            "cuda_reserved_bytes": torch.cuda.max_memory_reserved(device),
        }
    return row


def add_savings(rows: list[dict]) -> None:
    """Savings against backprop at the same batch size, in percent."""
    for row in rows:
        bp = next(r for r in rows if r["method"] == "backprop" and r["batch"] == row["batch"])
        total = lambda r: r["activation_bytes"] + r["static_backbone_bytes"] + r["static_aux_bytes"]
        row["activation_saving_pct"] = 100 * (1 - row["activation_bytes"] / bp["activation_bytes"])
        row["total_saving_pct"] = 100 * (1 - total(row) / total(bp))
        if "cuda_peak_bytes" in row:
            row["cuda_peak_saving_pct"] = 100 * (1 - row["cuda_peak_bytes"] / bp["cuda_peak_bytes"])
            row["cuda_dynamic_saving_pct"] = 100 * (1 - row["cuda_dynamic_bytes"] / bp["cuda_dynamic_bytes"])


def markdown(rows: list[dict], header: str) -> str:
    cuda = "cuda_peak_bytes" in rows[0]
    cols = [
        "batch",
        "method",
        "K",
        "activations MB",
        "saving",
        "static MB (backbone + aux)",
        "total saving",
        "s/step",
    ]
    if cuda:
        cols += ["cuda peak MB", "cuda dynamic MB", "cuda peak saving"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            r["batch"],
            r["method"],
            r["blocks"],
            f"{r['activation_bytes'] / MB:.1f}",
            f"{r['activation_saving_pct']:.0f}%",
            f"{r['static_backbone_bytes'] / MB:.1f} + {r['static_aux_bytes'] / MB:.1f}",
            f"{r['total_saving_pct']:.0f}%",
            f"{r['s_per_step']:.2f}",
        ]
        if cuda:
            cells += [
                f"{r['cuda_peak_bytes'] / MB:.0f}",
                f"{r['cuda_dynamic_bytes'] / MB:.0f}",
                f"{r['cuda_peak_saving_pct']:.0f}%",
            ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def target(rows: list[dict]) -> str:
    """At K >= 8, AugLocal and MAN activation peaks at least 40% below backprop at the same batch."""
    checked = [
        r["activation_saving_pct"] >= 40
        for r in rows
        if r["method"] in ("auglocal", "man") and r["blocks"] >= 8
    ]
    return "not measured (no K >= 8)" if not checked else "met" if all(checked) else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet32_gn", choices=["resnet32_gn", "resnet110_gn"])
    parser.add_argument("--input", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"))
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--methods", nargs="+", default=["checkpoint", *LOCAL_METHODS])
    parser.add_argument("--steps", type=int, default=1, help="metered steps after one warm-up step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="batch 8, K = 4: a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.blocks = [8], [4]
    configs = [("backprop", 1, b) for b in args.batch]
    configs += [(m, k, b) for b in args.batch for m in args.methods for k in args.blocks]
    rows = []
    fresh = torch.device(args.device).type == "cuda"  # the allocator's peak statistics are process-wide
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1 if fresh else None) as pool:
        for method, blocks, batch in configs:
            row = pool.apply(measure, (method, blocks, batch, args))
            rows.append(row)
            print(
                f"batch {batch:4d}  {method:10s} K={row['blocks']:2d}"
                f"  activations {row['activation_bytes'] / MB:8.1f} MB"
                f"  {row['s_per_step']:.2f} s/step",
                flush=True,
            )
    add_savings(rows)
    card = (
        torch.cuda.get_device_name(args.device)
        if fresh
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    header = (
        f"{args.model}, inputs {tuple(args.input)}, {NUM_CLASSES} classes, float32, SGD momentum 0.9, "
        f"{args.steps} metered step(s) after 1 warm-up; device: {card}; torch {torch.__version__}"
    )
    table = markdown(rows, header)
    print(table)
    print(f"target (K >= 8: AugLocal/MAN activation peak >= 40% below backprop): {target(rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": args.model,
        "input": args.input,
        "device": card,
        "torch": torch.__version__,
        "steps": args.steps,
    }
    args.out.with_suffix(".json").write_text(json.dumps({"setup": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
