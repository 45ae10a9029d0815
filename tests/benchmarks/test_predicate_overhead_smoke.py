"""The predicate overhead benchmark runs end to end and reports every figure (no speed assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from benchmark_scripts import BENCHMARKS, positive

SCRIPT = BENCHMARKS / "predicate_overhead.py"
FIGURES = ("predicate", "encode", "decode", "evaluate", "evaluate_true", "worker_predicate")


def test_quick_run_reports_all_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    cfg = result["config"]
    assert cfg["quick"] and cfg["processes"] == 1000 and cfg["cuts"] == 5 and cfg["clock_entries"] == [8]
    assert result["machine"]["nproc"] >= 1

    (row,) = result["rows"]
    assert row["clock_entries"] == 8 and row["cut_json_bytes"] > 1000 * 100
    for key in FIGURES:
        figure = row["figures"][key]
        assert positive(figure["median_ms"]), key
        assert figure["p90_ms"] >= figure["median_ms"], key
    assert math.isfinite(row["figures"]["overhead_ms"])
    # Every cut keeps the money, so every result (in process and in both engines) is PASS.
    assert row["check"] == {"results": 5 * 3, "all_pass": True, "restarts": 0}
