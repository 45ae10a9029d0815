"""``cutwatch demo`` end to end: real processes, its exit code, its JSON, and nothing left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from processes import cutwatch_command

DEMO_TIMEOUT = 240.0
"""Generous: seven Python processes starting on a loaded 2-core machine, then two deadlocks to form."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_nothing_left(doc: dict[str, Any]) -> None:
    pids = [p["pid"] for p in doc["processes"]]
    assert len(pids) == 7, doc["processes"]  # 4 banks, orders, inventory, payments
    assert [pid for pid in pids if pid_alive(pid)] == []


@pytest.mark.timeout(DEMO_TIMEOUT + 60)
def test_demo_runs_end_to_end_and_reports_both_deadlocks(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = subprocess.run(
        [*cutwatch_command(), "demo", "--seconds", "4", "--json", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["problems"] == []
    assert db.exists() and doc["collector"]["db"] == str(db)
    assert_nothing_left(doc)

    snapshots = doc["snapshots"]
    assert snapshots, doc
    for snapshot in snapshots:
        assert snapshot["status"] == "COMPLETE" and snapshot["conserved"], snapshot
        assert snapshot["money_total"] == 4 * 1000 and snapshot["banks"] == 4
    assert any(s["in_transit"] > 0 for s in snapshots), "no cut caught money in flight"
    assert [s["epoch"] for s in snapshots] == sorted({s["epoch"] for s in snapshots})

    by_scenario = {d["scenario"]: d for d in doc["deadlocks"]}
    assert sorted(by_scenario) == ["lock", "pool"]
    lock, pool = by_scenario["lock"], by_scenario["pool"]
    assert lock["cut_status"] == "COMPLETE"
    assert "waits for lock stock" in lock["chain"] and "waits for lock ledger" in lock["chain"]
    assert {t["method"] for t in lock["tasks"]} == {
        "/shop.Inventory/Hold",
        "/shop.Inventory/Recount",
        "/shop.Payments/Want",
        "/shop.Payments/Settle",
    }
    assert pool["cut_status"] == "INCOMPLETE"
    assert "waits in the server's queue for a worker" in pool["chain"] and "/shop.Orders/Checkout" in pool["chain"]
    for deadlock in (lock, pool):
        first = deadlock["chain"].split(" [", 1)[0]
        assert deadlock["chain"].endswith(" -> " + first), deadlock["chain"]
    assert "snapshot" in result.stderr and "stopping every process" in result.stderr


@pytest.mark.timeout(DEMO_TIMEOUT + 180)
def test_demo_interrupted_stops_every_process(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [*cutwatch_command(), "demo", "--seconds", "600", "--deadlock", "lock", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert demo.stderr is not None
        deadline = time.monotonic() + DEMO_TIMEOUT
        for line in demo.stderr:  # bounded by the process: it runs for 600 s at most
            if ": COMPLETE, money" in line or time.monotonic() > deadline:
                break
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    assert demo.returncode == 130
    doc = json.loads(out)
    assert doc["ok"] is False and doc["problems"] == ["interrupted"]
    assert doc["snapshots"] and doc["deadlocks"] == []
    assert_nothing_left(doc)
