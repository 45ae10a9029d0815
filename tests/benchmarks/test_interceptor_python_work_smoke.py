"""The fake-transport benchmark runs end to end, sync and aio, its stamps travel, and it reports
every figure (no speed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from benchmark_scripts import BENCHMARKS, positive

SCRIPT = BENCHMARKS / "interceptor_python_work.py"
INTERCEPTED = ("passthrough", "minimal", "cutwatch")
CORES = ("minimal_core", "cutwatch_core")
CONFIGS = {"sync": INTERCEPTED + CORES, "aio": INTERCEPTED}


def _run(*options: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", *options],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _assert_part(result: dict[str, Any], part: str) -> None:
    config = result["config"]
    figures, check = result[part]["figures"], result[part]["check"]
    assert figures["calls_per_config"] == config["calls"] * config["rounds"]
    for name in CONFIGS[part]:
        assert positive(figures[name]["median_us"]), (part, name)
        assert figures[name]["p99_us"] >= figures[name]["median_us"], (part, name)
    for name in ("minimal", "cutwatch"):
        # What a pair adds to the pass-through pair may be measured as anything in a short run.
        assert isinstance(figures[name]["added_us"], float | int), (part, name)
        assert isinstance(figures[name]["added_us_round_median"], float | int), (part, name)
    assert positive(figures["ratios"]["cutwatch_to_minimal"]), part
    if part == "sync":
        assert positive(figures["ratios"]["cutwatch_core_to_minimal_core"])
    else:
        assert not any(name in figures for name in CORES)

    # The stamps really travel: each side's clock has the other's entry, 8 entries each, and the
    # agents counted every measured call (plus the extra clients' first calls on the server).
    assert check["stamp_travelled"] is True, part
    calls_each = figures["calls_per_config"] + 20 * config["rounds"]  # with the warm-up calls
    for name in ("cutwatch", "cutwatch_core") if part == "sync" else ("cutwatch",):
        cw = check[name]
        assert cw["travelled"] is True, (part, name)
        assert cw["calls"] == calls_each, (part, name)
        assert cw["client_knows_server"] and cw["server_knows_client"], (part, name)
        assert cw["client_clock_entries"] == cw["server_clock_entries"] == 8, (part, name)
        assert cw["client_requests_sent"] == cw["client_responses_received"] == calls_each, (part, name)
        assert cw["server_requests_received"] == cw["server_responses_sent"] == calls_each + 6, (part, name)
        assert cw["untracked"] == cw["stamps_degraded"] == cw["internal_errors"] == 0, (part, name)
    for name in ("minimal", "minimal_core") if part == "sync" else ("minimal",):
        minimal = check[name]
        assert minimal["travelled"] is True and minimal["mismatched_answers"] == 0, (part, name)
        assert minimal["client_clock_entries"] == minimal["server_clock_entries"] == 8, (part, name)
    sizes = check["stamp_bytes"]
    assert all(positive(sizes[key]) for key in sizes), (part, sizes)
    assert sizes["minimal_request"] == 8 + 16 * 8  # call id, then id and counter per entry
    assert check["unpinned_threads"] == 0, part


def test_quick_run_reports_both_parts_and_the_stamps_travel() -> None:
    result = _run()
    assert result["config"]["clock_entries"] == 8
    assert result["config"]["parts"] == ["sync", "aio"]
    assert result["machine"]["nproc"] >= 1 and result["machine"]["grpcio"]
    for part in ("sync", "aio"):
        _assert_part(result, part)


@pytest.mark.parametrize("part", ["sync", "aio"])
def test_one_part_alone(part: str) -> None:
    result = _run("--part", part)
    assert result["config"]["parts"] == [part]
    assert ("sync" in result, "aio" in result) == (part == "sync", part == "aio")
    _assert_part(result, part)
