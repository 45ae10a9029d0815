"""The snapshot benchmarks run end to end and report every figure (no speed assertions)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys

from benchmark_scripts import BENCHMARKS, load_script, positive

SCRIPT = BENCHMARKS / "snapshot_benchmarks.py"
MODES = ("idle", "traffic")
PHASES = ("none", "every 100 ms")


def test_quick_run_reports_all_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    cfg = result["config"]
    assert cfg["quick"] and tuple(cfg["parts"]) == ("latency", "ingest", "app")
    assert result["machine"]["nproc"] >= 1 and result["machine"]["grpcio"]

    # 1. Latency: every snapshot taken, COMPLETE, and the money adds up in each cut.
    assert [row["agents"] for row in result["latency"]] == cfg["sizes"]
    for row in result["latency"]:
        agents, check = row["agents"], row["check"]
        assert check["agents"] == agents
        for mode in MODES:
            figures = row[mode]
            taken = cfg["snapshots"] * cfg["rounds"]
            assert figures["snapshots"] == figures["complete"] == figures["conserved"] == taken, mode
            for key in ("round_trip_ms", "unit_getcut_ms", "unit_status_ms", "internal_ms", "write_ms"):
                assert positive(figures[key]), (agents, mode, key)
            assert figures["round_trip_p90_ms"] >= figures["round_trip_ms"]
            assert 0 <= figures["first_local_ms"] <= figures["last_local_ms"]
            assert figures["budget_ms"] > figures["write_ms"]
            assert math.isclose(
                figures["round_trips"], figures["round_trip_ms"] / figures["unit_getcut_ms"], rel_tol=0.01
            )
            assert isinstance(figures["goal_met"], bool)
        assert math.isfinite(row["idle"]["cpu_agents_ms"]) and math.isfinite(row["idle"]["cpu_collector_ms"])
        assert row["idle"]["in_transit_max"] == 0  # nothing moves while idle
        assert check["calls"] > 0 and check["errors"] == 0
        assert check["internal_errors"] == 0 and check["untracked"] == 0
        assert check["events_dropped"] == 0 and check["snapshots_skipped"] == 0
        assert 2 <= check["max_clock_entries"] <= agents
        assert check["collector"]["rejected"] == 0 and check["collector"]["store_errors"] == 0

    # 2. Ingest: rates for each size; a cut's total time contains its last message, which contains the write.
    assert [row["agents"] for row in result["ingest"]] == cfg["ingest_sizes"]
    for row in result["ingest"]:
        assert row["records_per_cut"] == row["agents"] * cfg["open_calls"]
        for key in ("local_us", "locals_per_s", "record_us", "records_per_s"):
            assert positive(row[key]), (row["agents"], key)
        for kind in ("idle", "records"):
            cut = row[kind]
            assert cut["cuts"] == cfg["ingest_cuts"]
            assert cut["cut_ms"] >= cut["final_ms"] >= cut["write_ms"] > 0
            assert isinstance(cut["goal_met"], bool)

    # 3. Application cost: both phases measured, snapshots ran and completed, no transfer failed.
    app = result["app"]
    assert app["agents"] == app["check"]["agents"] == cfg["app_agents"]
    for phase in PHASES:
        figures = app[phase]
        assert figures["calls"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert figures["agents_cores"] > 0
    assert app["snapshots"] > 0 and app["snapshots_complete"] > 0
    assert app["check"]["errors"] == 0 and app["check"]["internal_errors"] == 0
    assert positive(app["p50_ratio"]) and positive(app["p99_ratio"])
    assert isinstance(app["goal_met"], bool)

    # The tables print from the same document.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        load_script(SCRIPT).print_report(result)
    text = out.getvalue()
    for heading in ("1. snapshot latency", "2. collector ingest", "3. application RPCs"):
        assert heading in text
    assert text.count("MISSED") + text.count(" met") >= 2 * len(cfg["sizes"]) + 1
