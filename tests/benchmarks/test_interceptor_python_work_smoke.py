"""The fake-transport benchmark runs end to end, its stamps travel, and it reports every figure
(no speed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmark_scripts import BENCHMARKS, positive

SCRIPT = BENCHMARKS / "interceptor_python_work.py"
CONFIGS = ("passthrough", "minimal", "cutwatch", "minimal_core", "cutwatch_core")


def test_quick_run_reports_all_figures_and_the_stamps_travel() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    config, figures, check = result["config"], result["figures"], result["check"]

    assert config["clock_entries"] == 8
    assert result["machine"]["nproc"] >= 1 and result["machine"]["grpcio"]
    assert figures["calls_per_config"] == config["calls"] * config["rounds"]
    for name in CONFIGS:
        assert positive(figures[name]["median_us"]), name
        assert figures[name]["p99_us"] >= figures[name]["median_us"], name
    for name in ("minimal", "cutwatch"):
        # What a pair adds to the pass-through pair may be measured as anything in a short run.
        assert isinstance(figures[name]["added_us"], float | int), name
        assert isinstance(figures[name]["added_us_round_median"], float | int), name
    assert positive(figures["ratios"]["cutwatch_to_minimal"])
    assert positive(figures["ratios"]["cutwatch_core_to_minimal_core"])

    # The stamps really travel: each side's clock has the other's entry, 8 entries each, and the
    # agents counted every measured call (plus the extra clients' first calls on the server).
    assert check["stamp_travelled"] is True
    calls_each = figures["calls_per_config"] + 20 * config["rounds"]  # with the warm-up calls
    for name in ("cutwatch", "cutwatch_core"):
        part = check[name]
        assert part["travelled"] is True, name
        assert part["calls"] == calls_each, name
        assert part["client_knows_server"] and part["server_knows_client"], name
        assert part["client_clock_entries"] == part["server_clock_entries"] == 8, name
        assert part["client_requests_sent"] == part["client_responses_received"] == calls_each, name
        assert part["server_requests_received"] == part["server_responses_sent"] == calls_each + 6, name
        assert part["untracked"] == part["stamps_degraded"] == part["internal_errors"] == 0, name
    for name in ("minimal", "minimal_core"):
        part = check[name]
        assert part["travelled"] is True and part["mismatched_answers"] == 0, name
        assert part["client_clock_entries"] == part["server_clock_entries"] == 8, name
    sizes = check["stamp_bytes"]
    assert all(positive(sizes[key]) for key in sizes), sizes
    assert sizes["minimal_request"] == 8 + 16 * 8  # call id, then id and counter per entry
    assert check["unpinned_threads"] == 0
