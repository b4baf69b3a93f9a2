"""The docs cite only what the repository holds: every file path and relative link in them exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# A repository path as prose or code names it: a top-level folder (or a folder outside the
# repository that docs have cited, such as specs/), then a file with an extension.
ROOTS = "benchmarks|docs|specs|shared|experiments|examples|fedsim|clients|strategies|scripts|tests"
PATH = re.compile(rf"(?<![\w./~-])((?:{ROOTS})/[\w./-]*\.(?:md|json|csv|py|toml|png|sh|txt))(?![\w*{{])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def cited_paths(doc: Path) -> list[tuple[str, Path]]:
    """(as written, resolved) for every repository path and relative link in a markdown file."""
    text = doc.read_text()
    cited = [(path, ROOT / path) for path in PATH.findall(text)]
    cited += [(link, doc.parent / link) for link in LINK.findall(text) if "://" not in link]
    return cited


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_path_a_doc_cites_exists(doc):
    missing = [written for written, path in cited_paths(doc) if not path.exists()]
    assert not missing, f"{doc.relative_to(ROOT)} cites paths the repository does not hold: {missing}"


def test_the_path_pattern_finds_what_docs_cite():
    found = PATH.findall(
        "see `benchmarks/results/speed.md`, (specs/flower_and_peers.md), shared/specs/x.md and "
        "benchmarks/results/*.json but not ~/.flwr/log.txt or benchmarks/results/flower_parity.{json,md}"
    )
    assert found == ["benchmarks/results/speed.md", "specs/flower_and_peers.md", "shared/specs/x.md"]
