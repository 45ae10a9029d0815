"""The cut soundness benchmark runs end to end and reports every figure (no rate assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmark_scripts import BENCHMARKS

SCRIPT = BENCHMARKS / "cut_soundness.py"


def test_a_short_run_reports_every_scenario_and_no_wrong_cut() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--snapshots",
            "4",
            "--scenarios",
            "unary,envelope-3ms,stripping-proxy,retries",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert set(result["scenarios"]) == {"unary", "envelope-3ms", "stripping-proxy", "retries"}
    for figures in result["scenarios"].values():
        assert figures["cuts"] == 4
        assert figures["complete_but_wrong"] == 0 and figures["wrong_epochs"] == []
        assert figures["complete"] == figures["complete_exact"] + figures["flagged"]
        assert sum(figures["incomplete_reasons"].values()) == figures["cuts"] - figures["complete"]
    assert result["scenarios"]["stripping-proxy"]["complete_exact"] < 4  # the proxy's credits flag cuts
