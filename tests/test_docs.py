"""Every Python sample in README.md and docs/*.md is real code.

A ```python block is either part of a file in examples/ or src/cutwatch/demo/
(its lines appear there, in order; ``...`` lines stand for what it leaves
out, and a first line ``# from PATH`` names the file), or it runs as it is,
in a fresh interpreter from the repository root. Console, sh and text blocks
are not checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [
    *sorted((ROOT / "examples").rglob("*.py")),
    *sorted((ROOT / "src" / "cutwatch" / "demo").glob("*.py")),
]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"^#\s*(?:from\s+)?(?P<path>[\w./-]+\.py)\s*$")


def _blocks() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{document.relative_to(ROOT)}:{line}", match.group(1)))
    return found


BLOCKS = _blocks()


def _code_lines(text: str) -> list[str]:
    """The lines that must match: stripped, without blanks and ``...`` elisions."""
    return [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "..."]


def _appears_in(block: str, source: Path) -> bool:
    """Whether every line of ``block`` is a line of ``source``, in the same order."""
    lines = iter(_code_lines(source.read_text(encoding="utf-8")))
    return all(any(wanted == line for line in lines) for wanted in _code_lines(block))


def _marked_file(block: str) -> Path | None:
    first = block.splitlines()[0] if block.strip() else ""
    match = MARKER.match(first)
    return ROOT / match["path"] if match else None


def _run(block: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "sample.py"
    script.write_text(block, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_docs_have_python_samples_and_the_getting_started_page_has_several() -> None:
    documents = {where.split(":")[0] for where, _ in BLOCKS}
    assert {"README.md", "docs/getting-started.md", "docs/snapshots.md"} <= documents
    assert sum(where.startswith("docs/getting-started.md:") for where, _ in BLOCKS) >= 5


@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_python_sample_is_part_of_an_example_or_runs(where: str, block: str, tmp_path: Path) -> None:
    marked = _marked_file(block)
    if marked is not None:
        assert marked in SOURCES, f"{where} names {marked}, not a file in examples/ or src/cutwatch/demo/"
        body = block.split("\n", 1)[1]
        assert _code_lines(body), f"{where} is empty"
        assert _appears_in(body, marked), f"{where} is not verbatim part of {marked.relative_to(ROOT)}"
        return
    if any(_appears_in(block, source) for source in SOURCES):
        return
    result = _run(block, tmp_path)
    assert result.returncode == 0, f"{where} is in no example and does not run:\n{result.stderr}"


def test_a_fragment_that_differs_from_its_file_is_caught() -> None:
    example = ROOT / "examples" / "getting_started.py"
    assert _appears_in("def struct(**values: Any) -> Struct:\n    ...\n    return message\n", example)
    assert not _appears_in("def struct(**values: Any) -> Struct:\n    return None\n", example)
    # Order matters: a fragment is a piece of the file, not a bag of its lines.
    assert not _appears_in("    return message\ndef struct(**values: Any) -> Struct:\n", example)
