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
"""Generous: ten Python processes starting on a loaded 2-core machine, two deadlocks to form, then
a dozen snapshots of the lease."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_nothing_left(doc: dict[str, Any], started: int = 10) -> None:
    pids = [p["pid"] for p in doc["processes"]]
    assert len(pids) == started, doc["processes"]  # 4 banks, orders, inventory, payments, 3 leases
    assert [pid for pid in pids if pid_alive(pid)] == []


def assert_the_lease_act(doc: dict[str, Any]) -> None:
    """Act three: the lattice check found two leaders between sampled cuts, with a consistent cut."""
    lease = doc["lease"]
    assert sorted(lease["processes"]) == ["l1", "l2", "l3"]
    assert lease["sampled"] >= 10 and lease["sampled"] == len(lease["snapshots"])
    assert all(s["status"] == "COMPLETE" and s["leases"] == 3 for s in lease["snapshots"])
    assert all(s["check"] in ("PASS", "FAIL") for s in lease["snapshots"]), lease["snapshots"]
    assert lease["windows_with_two_leaders"] >= 1 and lease["decided_by"], lease
    overlap = lease["first_overlap"]
    assert overlap["decided_by"] and overlap["between"][1] in [s["epoch"] for s in lease["snapshots"]]
    leaders = {leader["name"]: leader for leader in overlap["leaders"]}
    assert len(leaders) >= 2 and set(leaders) <= {"l1", "l2", "l3"}, overlap
    # Clocks of a consistent cut: one leader took the lease after seeing the other's change, and the
    # other had not seen that yet (clocks are keyed by lease name in the demo's report).
    assert any(
        new != old
        and leaders[new]["clock"].get(old, 0) >= leaders[old]["clock"][old]
        and leaders[old]["clock"].get(new, 0) < leaders[new]["clock"][new]
        for new in leaders
        for old in leaders
    ), leaders


@pytest.mark.timeout(DEMO_TIMEOUT + 60)
def test_demo_runs_end_to_end_reports_both_deadlocks_and_the_two_leaders(tmp_path: Path) -> None:
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
    # The calls back into orders wait in its queue: its server recorded them as they arrived.
    assert (
        "waits in the server's queue for a worker" in pool["chain"]
        and "/shop.Orders/Checkout" in pool["chain"]
    )
    assert pool["rests_on"] and all("INCOMPLETE" in item for item in pool["rests_on"]), pool["rests_on"]
    for deadlock in (lock, pool):
        first = deadlock["chain"].split(" [", 1)[0]
        assert deadlock["chain"].endswith(" -> " + first), deadlock["chain"]
    assert_the_lease_act(doc)
    assert "at a consistent cut no snapshot sampled" in result.stderr
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
    assert doc["lease"]["snapshots"] == [] and doc["lease"]["first_overlap"] is None
    assert_nothing_left(doc, started=7)
