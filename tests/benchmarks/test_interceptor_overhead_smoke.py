"""The overhead benchmark runs end to end and reports every figure (no speed assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from benchmark_scripts import BENCHMARKS, positive

SCRIPT = BENCHMARKS / "interceptor_overhead.py"
CONFIGS = ("bare", "cutwatch", "otel")


def test_quick_run_reports_all_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    assert result["config"]["clock_entries"] == 8
    assert result["machine"]["nproc"] >= 1 and result["machine"]["grpcio"]
    for mode in ("sync", "aio"):
        figures = result[mode]
        assert figures["calls_per_config"] == result["config"]["calls"] * result["config"]["rounds"]
        for config in CONFIGS:
            assert positive(figures[config]["median_us"]), (mode, config)
            assert figures[config]["p99_us"] >= figures[config]["median_us"], (mode, config)
        for config in ("cutwatch", "otel"):
            assert positive(figures[f"ratio_{config}"])
            assert math.isfinite(figures[f"added_{config}_us"])
            assert math.isfinite(figures[f"added_{config}_us_round_median"])
        goals = {"ratio_limit", "ratio_met", "share_of_otel_limit", "share_of_otel_met"}
        assert set(figures["goals"]) == goals
        check = figures["check"]
        # The claim in the output holds: 8-entry clocks, every call stamped and understood.
        assert check["client_clock_entries"] == 8 and check["server_clock_entries"] == 8
        assert check["requests_stamped"] > figures["calls_per_config"]
        assert check["untracked"] == 0 and check["internal_errors"] == 0 and check["stamps_degraded"] == 0
        assert check["otel_spans_exported"] > 0
        assert check["unpinned_threads"] == 0

    rows = {row["entries"]: row for row in result["stamp"]}
    assert sorted(rows) == [1, 8, 100, 1000]
    for row in rows.values():
        for key in ("cold_bytes", "cold_b64_bytes", "warm_bytes", "warm_b64_bytes", "warm_bytes_per_entry"):
            assert positive(row[key]), (row["entries"], key)
        assert row["warm_b64_bytes"] > row["warm_bytes"]
    # Names travel only until acknowledged: past a handful of entries the warm stamp is smaller.
    assert rows[100]["warm_bytes"] < rows[100]["cold_bytes"]
    assert rows[1000]["cold_default_limit_bytes"] <= 4096
    assert isinstance(result["stamp_goal"]["met_at_100"], bool)
