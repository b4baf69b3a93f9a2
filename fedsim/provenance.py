"""Which fedsim made a run: its version and, for a git checkout, the commit (and whether the
working tree had uncommitted changes), recorded in summary.json so a result can be traced."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent.parent


@functools.cache
def provenance() -> dict[str, str | None]:
    """`{"fedsim_version": ..., "fedsim_commit": ...}`; the commit is None outside a git checkout
    and ends in "-dirty" when the checkout had uncommitted changes."""
    try:
        fedsim_version = version("fedsim")
    except PackageNotFoundError:
        fedsim_version = None
    return {"fedsim_version": fedsim_version, "fedsim_commit": _git_commit()}


def _git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=_SOURCE, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != _SOURCE:  # e.g. installed in a venv inside a repo
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
