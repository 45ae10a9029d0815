"""The fault-injection benchmark runs end to end and reports every figure (no speed assertions)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

from benchmark_scripts import BENCHMARKS, load_script, positive

SCRIPT = BENCHMARKS / "fault_injection.py"
SCENARIOS = ["none", "latency", "throttle", "reset", "clog"]


def test_short_run_reports_all_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "1.5", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["config"]["seconds"] == 1.5 and result["rounds"] == 1
    assert result["machine"]["nproc"] >= 1 and result["machine"]["grpcio"]
    rows = {row["scenario"]: row for row in result["scenarios"]}
    assert list(rows) == SCENARIOS
    for name, row in rows.items():
        assert row["calls"] > 0 and row["failures"] == 0, name
        assert 0 < row["p50_ms"] <= row["p99_ms"], name
        assert positive(row["p50_ratio"]) and positive(row["p99_ratio"]), name
        assert row["snapshots"] == row["complete"] + row["incomplete"] > 0, name
        assert row["max_terminal_s"] > 0, name
        assert isinstance(row["partial"], int) and isinstance(row["inconsistent"], int), name
        assert isinstance(row["goal_met"], bool)
    assert rows["none"]["p50_ratio"] == 1.0 and rows["none"]["chunks_held"] == 0
    # Each fault did something to the links.
    assert rows["latency"]["chunks_held"] > 0 and rows["throttle"]["chunks_held"] > 0
    assert rows["clog"]["chunks_held"] > 0 and rows["reset"]["resets"] > 0
    assert len(result["reconnects"]) == result["config"]["agents"]
    assert result["collector"]["store_errors"] == 0 and result["failure_examples"] == []

    # The table prints from the same document.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        load_script(SCRIPT).print_report(result)
    text = out.getvalue()
    for name in SCENARIOS:
        assert f"  {name} " in text
    assert text.count("MISSED") + text.count(" met") == len(SCENARIOS) - 1
