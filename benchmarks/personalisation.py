"""Personalisation under label skew: the global model against each client's own model.

    python -m benchmarks.personalisation                    # digits and mnist1d, alpha 0.1 and 0.5, 3 seeds
    python -m benchmarks.personalisation --seeds 1 --datasets digits   # a quick look

Runs `experiments/personalisation.toml` as three sweeps per dataset (resumable: rerun to finish):
FedPer, FedRep and Ditto (their personal models), FedBN on the CNN with BatchNorm, and FedAvg
with `eval.finetune_steps=5` (its global model and the global model fine-tuned per client). Every model is scored on each client's local
test data (a stratified 20% of its partition). The table gives, per dataset and alpha, mean ±
std over seeds of the central test accuracy of the global model and of the mean and 10th
percentile of accuracy over clients. Written to `benchmarks/results/personalisation.md`/`.json`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.tables import cells, mean_std, publish

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "personalisation.toml"
DATASETS = {
    "digits": [],
    "mnist1d": ["--set", "data.dataset=mnist1d", "--set", "model.name=cnn", "--set", "train.lr=0.5"],
}
ALPHAS = "0.1,0.5"


def sweep(out: Path, dataset: str, args: argparse.Namespace, *extra: str) -> None:
    command = [sys.executable, "-m", "fedsim.cli", "sweep", str(CONFIG), "--grid", f"data.alpha={ALPHAS}",
               "--seeds", str(args.seeds), "--out", str(out), "-j", str(args.jobs), *DATASETS[dataset], *extra]
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "sweeps" / "personalisation", help="sweep folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "personalisation")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        personal, finetune = args.work / f"{dataset}-personal", args.work / f"{dataset}-finetune"
        fedbn = args.work / f"{dataset}-fedbn"
        sweep(personal, dataset, args, "--grid", "trainer.name=fedper,fedrep,ditto")
        sweep(finetune, dataset, args, "--set", "eval.finetune_steps=5")
        sweep(fedbn, dataset, args, "--set", "trainer.name=fedbn", "--set", "model.name=cnn",
              "--set", "model.cnn.norm=batch")
        methods: dict[tuple[float, str], list[dict]] = {}
        for values, s in cells(finetune):
            a = values["data.alpha"]
            methods.setdefault((a, "FedAvg (global model)"), []).append(
                {"test": s["final_accuracy"], **s["final_client_accuracy"]})
            methods.setdefault((a, "FedAvg + fine-tuning (5 steps)"), []).append(
                {"test": s["final_accuracy"], **s["final_personal_accuracy"]})
        for values, s in [*cells(personal), *(({**v, "trainer.name": "fedbn"}, s) for v, s in cells(fedbn))]:
            name = {"fedper": "FedPer (personal)", "fedrep": "FedRep (personal)", "ditto": "Ditto (personal, lam 0.1)",
                    "fedbn": "FedBN (personal, BatchNorm CNN)"}[values["trainer.name"]]
            methods.setdefault((values["data.alpha"], name), []).append(
                {"test": s["final_accuracy"], **s["final_personal_accuracy"]})
        if "model.name=cnn" not in DATASETS[dataset]:  # FedAvg on FedBN's CNN (without BatchNorm) too
            cnn = args.work / f"{dataset}-cnn"
            sweep(cnn, dataset, args, "--set", "model.name=cnn")
            for values, s in cells(cnn):
                methods.setdefault((values["data.alpha"], "FedAvg (global model, the CNN)"), []).append(
                    {"test": s["final_accuracy"], **s["final_client_accuracy"]})
        for (alpha, method), runs in sorted(methods.items(), key=lambda kv: kv[0][0]):
            rows.append({
                "dataset": dataset, "alpha": alpha, "method": method, "seeds": len(runs),
                **{key: [r[key] for r in runs] for key in ("test", "mean", "p10", "min")},
            })
    lines = [
        "# Personalisation under label skew",
        "",
        f"`python -m benchmarks.personalisation --seeds {args.seeds}` ({CONFIG.relative_to(ROOT)}: 20 clients, "
        "half per round, 30 rounds of 2 local epochs; each client's local test data is a stratified 20% of "
        "its partition). Mean ± std over seeds. `central test`: the global model on the central test set "
        "(FedPer's and FedRep's global models keep their initial head, FedBN's its initial BatchNorm layers). `local mean` / `local p10` / `worst`: accuracy of "
        "the model each client uses, on its own local test data, averaged over clients / 10th percentile / "
        "worst client.",
        "",
        "| dataset | alpha | method | seeds | central test | local mean | local p10 | worst |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['alpha']:g} | {r['method']} | {r['seeds']} | {mean_std(r['test'])} | "
            f"{mean_std(r['mean'])} | {mean_std(r['p10'])} | {mean_std(r['min'])} |"
        )
    publish(lines, rows, args.out)


if __name__ == "__main__":
    main()
