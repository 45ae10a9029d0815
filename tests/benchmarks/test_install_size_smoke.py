"""The install-size script measures an environment's distributions (here: the one running the tests)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from benchmark_scripts import BENCHMARKS, load_script, positive

toml: types.ModuleType | None
if sys.version_info >= (3, 11):
    import tomllib as toml
else:  # pragma: no cover - Python 3.10 reads pyproject only when tomli is installed
    try:
        import tomli as toml
    except ModuleNotFoundError:
        toml = None

SCRIPT = BENCHMARKS / "install_size.py"


def test_measures_the_agents_dependencies_of_an_existing_environment() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--venv", sys.prefix, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (result,) = json.loads(done.stdout).values()
    deps = result["dependencies"]
    for name in ("grpcio", "protobuf", "opentelemetry-api", "wrapt", "click"):
        assert positive(deps[name]["bytes"]), name
    assert "pip" not in deps and "cutwatch" not in deps
    assert result["dependencies_bytes"] == sum(row["bytes"] for row in deps.values())


def _release(version: str) -> tuple[int, ...]:
    """``1.62`` and ``1.62.0`` are the same release."""
    parts = [int(part) for part in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_the_floor_it_installs_pins_every_base_dependency_at_its_lowest_version() -> None:
    """The script's floor measurement is the oldest supported install only when its constraints file
    pins each of the agent's dependencies at the lowest version the package accepts."""
    if toml is None:  # pragma: no cover
        pytest.skip("reading pyproject.toml on Python 3.10 needs tomli")
    floor: Path = load_script(SCRIPT).FLOOR
    pins: dict[str, str] = {}
    for line in floor.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, _, version = requirement.partition("==")
            assert version, f"{floor.name}: {line!r} is not a pin"
            pins[name.strip().lower()] = version.strip()
    with (BENCHMARKS.parent / "pyproject.toml").open("rb") as f:
        dependencies: list[str] = toml.load(f)["project"]["dependencies"]
    assert dependencies
    for dependency in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([\d.]+)\s*(,.*)?", dependency)
        assert match, f"{dependency!r}: every base dependency states its lowest version"
        name, lowest = match[1].lower(), match[2]
        assert name in pins, f"{floor.name} does not pin {name}"
        assert _release(pins[name]) == _release(lowest), (name, pins[name], lowest)
