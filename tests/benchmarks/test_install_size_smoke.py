"""The install-size script measures an environment's distributions (here: the one running the tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmark_scripts import BENCHMARKS, positive

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


def test_the_floor_it_installs_is_the_one_ci_tests() -> None:
    module_text = SCRIPT.read_text()
    assert 'FLOOR = ROOT / ".ci" / "floor-constraints.txt"' in module_text
    pins = dict(
        line.split("==")
        for line in (Path(BENCHMARKS).parent / ".ci" / "floor-constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["grpcio"].startswith("1.62") and pins["protobuf"].startswith("4.25")
