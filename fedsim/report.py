"""Reports of a sweep folder (or of one run folder): a table over seeds, and plots.

Cells are grouped by every grid key of `sweep.json` except the seed; each group gets the
mean and sample standard deviation over its finished seeds of final accuracy, best
accuracy, rounds to reach a target accuracy and wall time per round, and, for runs with
evaluation sets, the final validation accuracy and the final client-accuracy distribution
(mean over clients, 10th percentile, worst client). Failed and unfinished
cells are counted, never averaged. Written into the folder: `report.csv` (the tidy table),
`runs.csv` (one row per cell), `report.md`, and PNG plots drawn with matplotlib's
object-oriented API (Agg canvas, no pyplot state).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from fedsim.errors import ConfigError
from fedsim.sweep import MANIFEST, cell_status, read_summary

ALPHA = "data.alpha"
STATS = ("final_accuracy", "best_accuracy", "rounds_to_target", "round_s")
# final values of metrics.csv columns that runs with evaluation sets have: (column, report header)
EVALUATION_STATS = {
    "val_accuracy": "val accuracy",
    "client_accuracy_mean": "client acc mean",
    "client_accuracy_p10": "client acc p10",
    "client_accuracy_min": "worst client",
    "personal_accuracy_mean": "personal acc mean",
    "personal_accuracy_p10": "personal acc p10",
    "personal_accuracy_min": "personal worst",
}
CLIENT_METRICS = "client_metrics.csv"


@dataclass
class Report:
    """A report's table, its Markdown text and the files written."""

    table: pd.DataFrame
    markdown: str
    files: list[Path]


@dataclass
class Runs:
    """What a folder holds: one row per cell, the finished cells' accuracy curves, the grouping keys."""

    cells: pd.DataFrame
    curves: pd.DataFrame
    keys: list[str]
    evaluation: list[str]  # the EVALUATION_STATS some finished cell has


def make_report(folder: str | Path, target: float) -> Report:
    """Summarise a sweep or run folder and write the report files into it."""
    folder = Path(folder)
    if not 0 < target <= 1:
        raise ConfigError(f"--target must be in (0, 1], got {target}")
    runs = load_runs(folder, target)
    table = summarise(runs, target)
    markdown = to_markdown(folder, runs, table, target)
    runs.cells.to_csv(folder / "runs.csv", index=False)
    table.to_csv(folder / "report.csv", index=False)
    (folder / "report.md").write_text(markdown)
    files = [folder / "report.csv", folder / "runs.csv", folder / "report.md", *plot(folder, runs)]
    return Report(table, markdown, files)


# --------------------------------------------------------------------------- reading


def load_runs(folder: Path, target: float) -> Runs:
    """Read a sweep (its manifest's cells) or a single run folder."""
    if (folder / MANIFEST).is_file():
        manifest = json.loads((folder / MANIFEST).read_text())
        keys = list(manifest["grid"])
        specs = [
            (folder / c["name"], {k: _hashable(v) for k, v in c["values"].items()}, c["seed"])
            for c in manifest["cells"]
        ]
    elif (folder / "metrics.csv").is_file():
        keys = ["run"]
        summary = read_summary(folder)
        specs = [(folder, {"run": folder.name}, summary.get("seed"))]
    else:
        raise ConfigError(f"'{folder}' is neither a sweep folder ({MANIFEST}) nor a run folder (metrics.csv)")
    rows, curves = [], []
    for run_dir, values, seed in specs:
        row, metrics = _read_cell(run_dir, target)
        rows.append({**values, "seed": seed, "cell": run_dir.name, **row})
        if metrics is not None:
            curves.append(metrics[["round", "test_accuracy"]].assign(**values, seed=seed))
    cells = pd.DataFrame(rows)
    columns = [*keys, "seed", "round", "test_accuracy"]
    curve_table = pd.concat(curves, ignore_index=True)[columns] if curves else pd.DataFrame(columns=columns)
    evaluation = [c for c in EVALUATION_STATS if c in cells and cells[c].notna().any()]
    return Runs(cells, curve_table, keys, evaluation)


def _read_cell(run_dir: Path, target: float) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """A cell's status and statistics, and its metrics when it finished."""
    status = cell_status(run_dir) or "unfinished"
    row = {"status": status, "error": read_summary(run_dir).get("error") if status == "failed" else None}
    row.update({stat: math.nan for stat in STATS})
    if status != "finished":
        return row, None
    metrics = pd.read_csv(run_dir / "metrics.csv")
    reached = metrics.loc[metrics["test_accuracy"] >= target, "round"]
    row.update(
        final_accuracy=float(metrics["test_accuracy"].iloc[-1]),
        best_accuracy=float(metrics["test_accuracy"].max()),
        rounds_to_target=float(reached.iloc[0]) if len(reached) else math.nan,
        round_s=float(metrics["round_s"].mean()),
        **{c: float(metrics[c].iloc[-1]) for c in EVALUATION_STATS if c in metrics},
    )
    return row, metrics


def _hashable(value: Any) -> Any:
    """Grid values as table keys: lists and tables become their JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


# --------------------------------------------------------------------------- the table


def summarise(runs: Runs, target: float) -> pd.DataFrame:
    """One row per grid point: counts of cells by status, mean and std over finished seeds."""
    rows = []
    for point, group in _grouped(runs.cells, runs.keys):
        done = group[group["status"] == "finished"]
        row = dict(zip(runs.keys, point))
        row.update(
            seeds=len(done),
            failed=int((group["status"] == "failed").sum()),
            unfinished=int((group["status"] == "unfinished").sum()),
            target=target,
            reached_target=int(done["rounds_to_target"].notna().sum()),
        )
        for stat in (*STATS, *runs.evaluation):
            row[f"{stat}_mean"] = done[stat].mean()
            row[f"{stat}_std"] = done[stat].std()
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(folder: Path, runs: Runs, table: pd.DataFrame, target: float) -> str:
    """The table for people: `mean ± std`, "not reached", failed cells listed with their errors."""
    headers = [
        *runs.keys,
        "seeds",
        "final accuracy",
        "best accuracy",
        f"rounds to {target:g}",
        "s / round",
        *(EVALUATION_STATS[c] for c in runs.evaluation),
        "failed",
    ]
    if table["unfinished"].any():
        headers.append("unfinished")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in table.to_dict("records"):
        cells = [_value(row[k]) for k in runs.keys] + [str(row["seeds"])]
        if row["seeds"] == 0:
            cells += ["failed" if row["failed"] else "unfinished"] * (4 + len(runs.evaluation))
        else:
            cells += [
                _mean_std(row, "final_accuracy", 3),
                _mean_std(row, "best_accuracy", 3),
                _rounds(row),
                _mean_std(row, "round_s", 3),
                *(_mean_std(row, c, 3) for c in runs.evaluation),
            ]
        cells.append(str(row["failed"]))
        if "unfinished" in headers:
            cells.append(str(row["unfinished"]))
        lines.append("| " + " | ".join(cells) + " |")
    text = [
        f"# Report: {folder}",
        "",
        f"Mean ± sample std over finished seeds. `rounds to {target:g}`: the first evaluated round "
        f"whose test accuracy reaches {target:g} (n/m: reached by n of m seeds). `s / round`: mean "
        "wall time per round."
        + (
            " Client accuracy: the final global model on each client's local test data; mean over "
            "clients, 10th percentile and worst client (each then averaged over seeds)."
            if set(runs.evaluation) - {"val_accuracy"} else ""
        ),
        "",
        *lines,
    ]
    failed = runs.cells[runs.cells["status"] == "failed"]
    if len(failed):
        text += ["", "Failed cells:", ""] + [f"- `{c.cell}`: {c.error}" for c in failed.itertuples()]
    unfinished = int((runs.cells["status"] == "unfinished").sum())
    if unfinished:
        text += ["", f"{unfinished} cell(s) unfinished: rerun the sweep to finish them."]
    return "\n".join(text) + "\n"


def _value(value: Any) -> str:
    """A grid value as written on the command line: 0.1, 100 (not 100.0), fedavg."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _mean_std(row: dict[str, Any], stat: str, digits: int) -> str:
    mean, std = row[f"{stat}_mean"], row[f"{stat}_std"]
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _rounds(row: dict[str, Any]) -> str:
    reached, seeds = row["reached_target"], row["seeds"]
    if reached == 0:
        return "not reached"
    text = _mean_std(row, "rounds_to_target", 1)
    return text if reached == seeds else f"{text} ({reached}/{seeds})"


# --------------------------------------------------------------------------- plots


def plot(folder: Path, runs: Runs) -> list[Path]:
    """Accuracy vs round (a panel per alpha when alpha is a grid key) and final accuracy vs alpha."""
    if runs.curves.empty:
        return []
    files = [_accuracy_vs_round(folder / "accuracy_vs_round.png", runs)]
    if ALPHA in runs.keys and runs.cells[ALPHA].nunique() > 1:
        files.append(_final_accuracy_vs_alpha(folder / "final_accuracy_vs_alpha.png", runs))
    clients = _final_client_accuracies(folder, runs)
    if not clients.empty:
        files.append(_client_accuracy_cdf(folder / "client_accuracy_cdf.png", runs, clients))
    return files


def _panels(runs: Runs, frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per alpha when alpha is a grid key, else one untitled panel."""
    if ALPHA not in runs.keys:
        return [("", frame)]
    finished = runs.cells[runs.cells["status"] == "finished"]
    return [(f"alpha = {_value(float(a))}", frame[frame[ALPHA] == a]) for a in sorted(finished[ALPHA].unique())]


def _final_client_accuracies(folder: Path, runs: Runs) -> pd.DataFrame:
    """Every finished cell's per-client accuracy in its last evaluated round, with the cell's keys."""
    frames = []
    for cell in runs.cells[runs.cells["status"] == "finished"].to_dict("records"):
        path = (folder if runs.keys == ["run"] else folder / cell["cell"]) / CLIENT_METRICS
        if path.is_file():
            rows = pd.read_csv(path)
            last = rows[rows["round"] == rows["round"].max()]
            frames.append(last[["accuracy"]].assign(**{k: cell[k] for k in runs.keys}, seed=cell["seed"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _client_accuracy_cdf(path: Path, runs: Runs, clients: pd.DataFrame) -> Path:
    """The distribution of the final global model's accuracy over clients: an empirical CDF per
    series (clients of every seed pooled), a panel per alpha. Further left = worse clients."""
    panels = _panels(runs, clients)
    fig = Figure(figsize=(4.2 * len(panels) + 2.2, 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True).ravel()
    series_keys = [k for k in runs.keys if k != ALPHA]
    styles = _styles(clients, series_keys)
    for ax, (title, rows) in zip(axes, panels):
        for label, series in _series(rows, series_keys):
            accuracy = series["accuracy"].sort_values().to_numpy()
            share = [(i + 1) / len(accuracy) for i in range(len(accuracy))]
            style = {k: v for k, v in styles[label].items() if k != "marker"}
            ax.step(accuracy, share, where="post", label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("client test accuracy (final global model)")
        ax.set_ylabel("share of clients at or below")
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy over clients (empirical CDF, clients of all seeds pooled)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title=" / ".join(series_keys) or None)
    fig.savefig(path, dpi=120)
    return path


def _accuracy_vs_round(path: Path, runs: Runs) -> Path:
    finished = runs.cells[runs.cells["status"] == "finished"]
    panels = _panels(runs, runs.curves)
    cols = len(panels) if len(panels) <= 3 else math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols + 2.2, 3.4 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    series_keys = [k for k in runs.keys if k != ALPHA]
    styles = _styles(runs.curves, series_keys)
    for ax, (title, curves) in zip(axes, panels):
        for label, rows_ in _series(curves, series_keys):
            stats = rows_.groupby("round")["test_accuracy"].agg(["mean", "std"]).fillna(0.0)
            ax.plot(
                stats.index, stats["mean"], label=label, markevery=max(len(stats) // 6, 1), **styles[label]
            )
            low, high = stats["mean"] - stats["std"], stats["mean"] + stats["std"]
            ax.fill_between(stats.index, low, high, color=styles[label]["color"], alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    seeds = max(len(rows_) for _, rows_ in _grouped(finished, runs.keys))
    fig.suptitle(f"Test accuracy vs round (mean ± std over {seeds} seed{'s' if seeds > 1 else ''})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title=" / ".join(series_keys) or None)
    fig.savefig(path, dpi=120)
    return path


def _final_accuracy_vs_alpha(path: Path, runs: Runs) -> Path:
    finished = runs.cells[runs.cells["status"] == "finished"]
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    series_keys = [k for k in runs.keys if k != ALPHA]
    styles = _styles(finished, series_keys)
    for label, rows_ in _series(finished, series_keys):
        stats = rows_.groupby(ALPHA)["final_accuracy"].agg(["mean", "std"]).fillna(0.0).sort_index()
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], label=label, capsize=3, **styles[label])
    alphas = sorted(finished[ALPHA].unique())
    ax.set_xscale("log")
    ax.set_xticks(alphas, [_value(float(a)) for a in alphas])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("Dirichlet alpha (log scale; smaller = stronger label skew)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("Final test accuracy vs label skew (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(title=" / ".join(series_keys) or None)
    fig.savefig(path, dpi=120)
    return path


def _grouped(frame: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key values, rows) per distinct combination of `keys`, in order of first appearance."""
    if not keys:
        return [((), frame)]
    return list(frame.groupby(keys, sort=False, dropna=False))


def _series(frame: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(legend label, rows) per plotted series: the value alone for one key, else key=value pairs."""
    if len(keys) == 1:
        return [(_value(values[0]), rows) for values, rows in _grouped(frame, keys)]
    return [
        (", ".join(f"{k}={_value(v)}" for k, v in zip(keys, values)) or "all runs", rows)
        for values, rows in _grouped(frame, keys)
    ]


def _styles(frame: pd.DataFrame, keys: list[str]) -> dict[str, dict[str, str]]:
    """A color, line style and marker per series, the same in every panel; the styles keep
    series that coincide (e.g. two strategies that act alike) distinguishable."""
    return {
        label: {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[i % 4], "marker": "osd^v<>"[i % 7]}
        for i, (label, _) in enumerate(_series(frame, keys))
    }
