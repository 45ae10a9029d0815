"""The soak benchmark runs end to end for a few seconds and reports every figure (no speed assertions)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

from benchmark_scripts import BENCHMARKS, load_script, positive

SCRIPT = BENCHMARKS / "soak.py"


def test_short_run_reports_all_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", "0.15", "--sample", "1", "--agents", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    cfg = result["config"]
    assert cfg["agents"] == 3 and cfg["every"] == "1s" and cfg["window_s"] == 3.0
    assert cfg["elapsed_s"] >= 9.0
    assert result["machine"]["nproc"] >= 1 and result["machine"]["grpcio"]

    rows = {row["process"]: row for row in result["rss"]}
    assert set(rows) == {"collector", "bank1", "bank2", "bank3"}
    for row in rows.values():
        for key in ("rss_first_mb", "rss_last_mb", "ratio", "rss_peak_mb"):
            assert positive(row[key]), (row["process"], key)
        assert row["rss_peak_mb"] >= max(row["rss_first_mb"], row["rss_last_mb"])
        assert row["samples"] >= 9

    snaps = result["snapshots"]
    assert snaps["started"] >= 3 and snaps["complete"] >= 1
    assert snaps["complete"] + snaps["incomplete"] <= snaps["started"]
    assert snaps["rejected"] == 0 and snaps["store_errors"] == 0
    assert snaps["latest_complete_conserves_money"] is True

    app = result["app"]
    assert app["transfers_ok"] > 0 and app["transfers_failed"] == 0
    for key in ("p50_first_ms", "p50_last_ms"):
        assert positive(app[key]), key
    assert app["p99_first_ms"] >= app["p50_first_ms"] and app["p99_last_ms"] >= app["p50_last_ms"]
    assert [bank["bank"] for bank in app["banks"]] == ["bank1", "bank2", "bank3"]
    for bank in app["banks"]:
        assert bank["calls_first"] > 0 and bank["calls_last"] > 0
        assert bank["internal_errors"] == 0 and bank["events_dropped"] == 0
    assert result["collector"]["agents"] == 3 and result["collector"]["events_dropped"] == 0
    assert positive(result["collector"]["db_mb"])

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        load_script(SCRIPT).print_report(result)
    text = out.getvalue()
    assert "RSS first MB" in text and "p50" in text and text.count("bank") >= 6
