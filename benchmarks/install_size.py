"""What installing the agent costs a service: the size of cutwatch's base dependencies on disk.

Builds two throwaway virtual environments side by side in one run, one with
the oldest supported versions (``.ci/floor-constraints.txt``) and one with the
newest the package index offers, installs the project's base distribution
(what an agent needs, no extras) into each, and prints every installed
distribution with its size, cutwatch's own files apart.

    python benchmarks/install_size.py            # both ends, from the package index
    python benchmarks/install_size.py --json
    python benchmarks/install_size.py --venv PATH  # measure an existing environment only

Needs pip and access to the package index (or a configured mirror).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / ".ci" / "floor-constraints.txt"
TOOLING = {"pip", "setuptools", "wheel", "_distutils_hack"}

_MEASURE = r"""
import json, os, sys
from importlib import metadata
sizes = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    total = 0
    for item in dist.files or ():
        path = item.locate()
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    sizes[name] = {"version": dist.version, "bytes": total}
print(json.dumps(sizes))
"""


def measure(python: Path) -> dict[str, dict[str, Any]]:
    """Every distribution installed for ``python``: version and bytes on disk (from its RECORD)."""
    done = subprocess.run(
        [str(python), "-I", "-c", _MEASURE], capture_output=True, text=True, check=True, timeout=300
    )
    found: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return {name: row for name, row in found.items() if name.lower() not in TOOLING}


def install(where: Path, source: Path, constraints: Path | None) -> Path:
    """A fresh virtual environment at ``where`` with the project's base install; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    python = where / "bin" / "python"
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)]
    if constraints is not None:
        command += ["-c", str(constraints)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(command, check=True, timeout=1200, env=env)
    return python


def source_copy(where: Path) -> Path:
    """The project's files copied to ``where``: setuptools builds in the source folder."""
    ignored = shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".*cache", "*.db")
    shutil.copytree(ROOT, where, ignore=ignored)
    return where


def summary(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    deps = {name: row for name, row in sizes.items() if name != "cutwatch"}
    return {
        "cutwatch_bytes": sizes.get("cutwatch", {}).get("bytes", 0),
        "dependencies_bytes": sum(row["bytes"] for row in deps.values()),
        "dependencies": dict(sorted(deps.items(), key=lambda item: -item[1]["bytes"])),
    }


def _mb(value: int) -> str:
    return f"{value / 1e6:8.1f} MB"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    ends = list(results)
    names = sorted(
        {name for end in ends for name in results[end]["dependencies"]},
        key=lambda n: -max(results[e]["dependencies"].get(n, {"bytes": 0})["bytes"] for e in ends),
    )
    print(f"{'distribution':<28}" + "".join(f"{end:>26}" for end in ends))
    for name in names:
        cells = []
        for end in ends:
            row = results[end]["dependencies"].get(name)
            cells.append(f"{row['version']:>14} {_mb(row['bytes'])}" if row else f"{'-':>26}")
        print(f"{name:<28}" + "".join(f"{cell:>26}" for cell in cells))
    print(
        f"{'dependencies in all':<28}" + "".join(f"{_mb(results[e]['dependencies_bytes']):>26}" for e in ends)
    )
    print(f"{'cutwatch itself':<28}" + "".join(f"{_mb(results[e]['cutwatch_bytes']):>26}" for e in ends))
    if len(ends) == 2:
        floor, newest = (results[e]["dependencies_bytes"] for e in ends)
        print(f"newest / floor: {newest / floor:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--venv", type=Path, help="measure this existing environment, install nothing")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    if args.venv is not None:
        python = args.venv / "bin" / "python"
        results[str(args.venv)] = summary(measure(python if python.exists() else Path(sys.executable)))
    else:
        with tempfile.TemporaryDirectory(prefix="cutwatch-size-") as tmp:
            source = source_copy(Path(tmp) / "source")
            for end, constraints in (("floor", FLOOR), ("newest", None)):
                print(f"installing the {end} set...", file=sys.stderr)
                results[end] = summary(measure(install(Path(tmp) / end, source, constraints)))
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
