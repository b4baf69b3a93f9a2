"""What the result-table benchmarks share: a sweep's finished cells, mean ± std over seeds, and
writing a table to `benchmarks/results/` as Markdown and its rows as JSON."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def cells(folder: Path) -> list[tuple[dict, dict]]:
    """(grid values, summary) of every finished cell of a sweep folder."""
    manifest = json.loads((folder / "sweep.json").read_text())
    found = []
    for cell in manifest["cells"]:
        summary = json.loads((folder / cell["name"] / "summary.json").read_text())
        if summary["status"] == "finished":
            found.append((cell["values"], summary))
    return found


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def publish(lines: list[str], rows: list, out: Path) -> None:
    """Print the table `lines`, and write it to `out`.md and `rows` to `out`.json."""
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
