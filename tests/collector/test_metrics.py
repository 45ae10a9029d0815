"""The collector's counters as OpenTelemetry metrics, through a real collector and real agents."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_service import Ledger
from otel_metrics import Metrics
from polling import wait_until

from cutwatch.agent._metrics import AGENT_METRICS
from cutwatch.collector import CollectorClient, CollectorServer
from cutwatch.collector._metrics import COLLECTOR_METRICS

TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parents[2]
PREDICATES = textwrap.dedent(
    """
    from cutwatch.predicates import invariant, violation

    @invariant("ledger.never")
    def never(cut):
        return violation("never holds", seen=len(cut.states))
    """
)
SYNC = {"cutwatch.collector.snapshots": "{snapshot}", "cutwatch.collector.snapshot.duration": "s"}
"""The instruments a finished snapshot adds to, beside the observed ones."""


@pytest.fixture
def watched(tmp_path: Path, metrics: Metrics) -> Iterator[tuple[CollectorServer, Ledger, Ledger]]:
    path = tmp_path / "never.py"
    path.write_text(PREDICATES)
    server = CollectorServer(
        tmp_path / "cuts.db", listen="127.0.0.1:0", predicates=[str(path)], meter_provider=metrics.provider
    ).start()
    ledgers: list[Ledger] = []
    try:
        for name in ("a", "b"):
            ledgers.append(Ledger(name, server.address, meter_provider=metrics.provider))
        assert all(ledger.agent.wait_registered(TIMEOUT) for ledger in ledgers)
        yield server, ledgers[0], ledgers[1]
    finally:
        for ledger in ledgers:
            ledger.close()
        server.stop()


def test_a_snapshot_shows_in_snapshots_duration_checks_agents_and_events(
    watched: tuple[CollectorServer, Ledger, Ledger], metrics: Metrics
) -> None:
    server, a, b = watched
    a.transfer(a.stub(b), 10).result(TIMEOUT)
    with CollectorClient(server.address) as client:
        cut = client.snapshot(timeout=TIMEOUT)  # returns once the cut's checks are stored
    assert cut.status == "COMPLETE"

    got = metrics.collect()
    complete = {"cutwatch.snapshot.status": "COMPLETE"}
    assert got.value("cutwatch.collector.snapshots", {**complete, "cutwatch.snapshot.untracked": False}) == 1
    count, seconds = got.value("cutwatch.collector.snapshot.duration", complete)
    assert count == 1 and seconds >= 0
    assert got.value("cutwatch.collector.agents", {"cutwatch.service": "ledger"}) == 2
    deadlock = {"cutwatch.check.name": "cutwatch.deadlock", "cutwatch.check.status": "PASS"}
    assert got.value("cutwatch.collector.checks", deadlock) == 1
    never = {"cutwatch.check.name": "ledger.never", "cutwatch.check.status": "FAIL"}
    assert got.value("cutwatch.collector.checks", never) == 1
    assert got.value("cutwatch.collector.events", {"cutwatch.event.outcome": "accepted"}) > 0
    assert got.value("cutwatch.collector.events", {"cutwatch.event.outcome": "invalid"}) == 0
    assert got.value("cutwatch.collector.running_snapshots", {}) == 0
    assert {name: got.units[name] for name in SYNC} == SYNC
    assert {m.name for m in COLLECTOR_METRICS} | set(SYNC) <= set(got.points)
    # No process id or epoch among the collector's attributes: its series stay few.
    collector_attrs = {
        key
        for name, points in got.points.items()
        if name.startswith("cutwatch.collector.")
        for p in points
        for key, _ in p
    }
    assert collector_attrs <= {
        "cutwatch.snapshot.status",
        "cutwatch.snapshot.untracked",
        "cutwatch.service",
        "cutwatch.check.name",
        "cutwatch.check.status",
        "cutwatch.event.outcome",
    }
    # The agents' link to the collector, from the same provider.
    ledger = {"cutwatch.service": "ledger"}
    assert got.value("cutwatch.agent.collector.connections", ledger) == 2
    sent = {**ledger, "cutwatch.event.outcome": "sent"}
    wait_until(lambda: metrics.collect().value("cutwatch.agent.collector.events", sent) > 0, "events sent")


def test_a_stopped_collector_is_no_longer_read(tmp_path: Path, metrics: Metrics) -> None:
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", meter_provider=metrics.provider)
    try:
        server.start()
        assert metrics.collect().value("cutwatch.collector.running_snapshots", {}) == 0
        assert "cutwatch.collector.running_snapshots" in metrics.collect().points
    finally:
        server.stop()
    got = metrics.collect()
    assert [name for name in got.points if name in {m.name for m in COLLECTOR_METRICS}] == []


def test_collector_names_and_units_follow_opentelemetry_conventions() -> None:
    names = [m.name for m in COLLECTOR_METRICS] + list(SYNC)
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"cutwatch\.collector(\.[a-z][a-z0-9_]*)+", name), name
        assert not any(other.startswith(name + ".") for other in names), name
    assert all(re.fullmatch(r"\{[a-z]+\}", m.unit) for m in COLLECTOR_METRICS)


def test_the_operations_page_lists_every_metric() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(cutwatch\.[a-z0-9_.]+)` \|", text, re.MULTILINE))
    assert documented == {m.name for m in (*AGENT_METRICS, *COLLECTOR_METRICS)} | set(SYNC)
