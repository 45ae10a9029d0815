"""The deadlock detection benchmark runs end to end and reports every figure (no speed assertions)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys

from benchmark_scripts import BENCHMARKS, load_script, positive

SCRIPT = BENCHMARKS / "deadlock_detection.py"
PHASES = ("build", "reduce", "report")


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
    assert cfg["quick"] and cfg["sizes"] == [1000, 10000] and cfg["repeat"] == 1
    assert result["machine"]["nproc"] >= 1 and result["machine"]["python"]
    assert set(result["shapes"]) == {"random", "cycle"}
    for shape, rows in result["shapes"].items():
        assert [row["tasks"] for row in rows] == cfg["sizes"], shape
        for row in rows:
            for phase in PHASES:
                assert positive(row[f"{phase}_s"]) or (phase == "report" and row["deadlocked_tasks"] == 0)
            assert math.isclose(row["total_s"], sum(row[f"{p}_s"] for p in PHASES))
            assert math.isclose(row["per_task_us"], row["total_s"] / row["tasks"] * 1e6)
            assert row["graph_size"] > row["tasks"] and row["processes"] >= 2
        assert positive(rows[1]["growth"]) and rows[1]["size_ratio"] == 10
        goals = result["goals"][shape]
        assert goals["under_1s_at_1e5"] is None  # 10^5 is not part of a quick run
        assert isinstance(goals["linear"], bool) and positive(goals["per_task_growth"])
    for row in result["shapes"]["cycle"]:  # one deadlock of every task, with a cycle through all of them
        assert row["deadlocks"] == 1 and row["deadlocked_tasks"] == row["longest_cycle"] == row["tasks"]
    # The random cuts have some deadlocks, but far from everything is stuck.
    assert (
        0 < result["shapes"]["random"][1]["deadlocked_tasks"] < result["shapes"]["random"][1]["tasks"] // 10
    )

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        load_script(SCRIPT).print_report(result)
    text = out.getvalue()
    assert "random" in text and "cycle" in text and text.count("goal under 1 s at 10^5 tasks") == 2
