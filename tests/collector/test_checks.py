"""Checks on every cut through a real collector: the operator's predicates and deadlock detection."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_runner import cli_runner
from ledger_service import Ledger
from lock_cycle import lock_cycle
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from polling import wait_until

from cutwatch.cli import main as cli_main
from cutwatch.collector import CollectorClient, CollectorServer
from cutwatch.core import PredicateLoadError

TIMEOUT = 30.0

PREDICATES = textwrap.dedent(
    """
    from cutwatch.predicates import conservation, invariant, violation

    @invariant("ledger.conservation")
    def conserved(cut):
        return conservation(cut, state="balance", payload="amount", services="ledger", total=200)

    @invariant("ledger.rich")
    def everyone_is_rich(cut):
        poor = {p: v["state"]["balance"] for p, v in cut.states.items() if v["state"]["balance"] < 150}
        return violation("some are poor", poor=poor) if poor else True

    @invariant("ledger.broken")
    def broken(cut):
        raise RuntimeError("a bug in a predicate")
    """
)


@pytest.fixture
def checked(tmp_path: Path) -> Iterator[tuple[CollectorServer, Ledger, Ledger]]:
    path = tmp_path / "ledger_checks.py"
    path.write_text(PREDICATES)
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", predicates=[str(path)]).start()
    a = b = None
    try:
        a, b = Ledger("a", server.address), Ledger("b", server.address)
        assert a.agent.wait_registered(TIMEOUT) and b.agent.wait_registered(TIMEOUT)
        yield server, a, b
    finally:
        for ledger in (a, b):
            if ledger is not None:
                ledger.close()
        server.stop()


def test_every_complete_cut_gets_a_result_per_predicate_and_failures_are_watched(
    checked: tuple[CollectorServer, Ledger, Ledger],
) -> None:
    server, a, b = checked
    a.transfer(a.stub(b), 30).result(TIMEOUT)
    events: list[dict[str, Any]] = []
    with CollectorClient(server.address) as watcher, CollectorClient(server.address) as client:
        listening = threading.Thread(target=lambda: events.extend(_take(watcher.watch(), 2)), daemon=True)
        listening.start()
        wait_until(lambda: server.checker._subscribers, "the watcher to subscribe")
        cut = client.snapshot(timeout=TIMEOUT)
        results = client.results()
        assert results is not None and results.epoch == cut.epoch and results.cut_status == "COMPLETE"
        by_name = {r.name: r for r in results.results}
        assert {name: r.status for name, r in by_name.items()} == {
            "cutwatch.deadlock": "PASS",
            "ledger.broken": "ERROR",
            "ledger.conservation": "PASS",
            "ledger.rich": "FAIL",
        }
        assert by_name["ledger.rich"].witness == {"poor": {a.agent.process_id: 70, b.agent.process_id: 130}}
        assert "a bug in a predicate" in by_name["ledger.broken"].message
        assert client.deadlocks() == []
        listening.join(TIMEOUT)
    assert sorted((e["name"], e["status"], e["epoch"]) for e in events) == [
        ("ledger.broken", "ERROR", cut.epoch),
        ("ledger.rich", "FAIL", cut.epoch),
    ]
    runner = cli_runner()
    text = runner.invoke(cli_main, ["check", "--collector", server.address])
    assert text.exit_code == 1, text.output
    assert "FAIL   ledger.rich" in text.output and "some are poor" in text.output
    doc = json.loads(runner.invoke(cli_main, ["check", "--collector", server.address, "--json"]).output)
    assert doc["epoch"] == cut.epoch and len(doc["results"]) == 4
    none = runner.invoke(cli_main, ["deadlocks", "--collector", server.address])
    assert none.exit_code == 0 and "no deadlock" in none.output


def _take(events: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    taken = []
    for event in events:
        taken.append(event)
        if len(taken) == count:
            break
    return taken


def test_a_lock_cycle_is_reported_exported_and_gives_exit_code_1(
    checked: tuple[CollectorServer, Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, a, _ = checked
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr("cutwatch.collector._checks.trace.get_tracer", provider.get_tracer)
    with lock_cycle(a.agent):
        result = cli_runner().invoke(
            cli_main, ["deadlocks", "--collector", server.address, "--now", "--json"]
        )
        assert result.exit_code == 1, result.output
        doc = json.loads(result.output)
        (deadlock,) = doc["deadlocks"]
        assert doc["cut_status"] == "COMPLETE"
        locks = sorted(lock for task in deadlock["tasks"] for lock in task["held_locks"])
        assert locks == ["accounts:1", "accounts:2"]
        assert {task["process"] for task in deadlock["tasks"]} == {a.agent.process_id}
        with CollectorClient(server.address) as client:
            assert client.deadlocks() == doc["deadlocks"]
        spans = [s for s in exporter.get_finished_spans() if s.name == "cutwatch cutwatch.deadlock"]
        assert spans and spans[0].attributes is not None
        assert spans[0].attributes["cutwatch.epoch"] == doc["epoch"]
        assert spans[0].events[0].name == "cutwatch.violation"


def test_a_predicate_file_that_does_not_load_stops_the_collector_from_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from cutwatch.predicates import invariant\n\n@invariant('x')\ndef f(cut):\n    return (\n"
    )
    with pytest.raises(PredicateLoadError, match=r"bad\.py"):
        CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", predicates=[str(bad)])
    result = cli_runner().invoke(
        cli_main,
        ["collector", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.db"), "--predicates", str(bad)],
    )
    assert result.exit_code == 6  # the collector could not start
    assert "bad.py" in result.output


def test_a_huge_deadlock_report_is_stored_capped() -> None:
    from cutwatch.collector._checks import MAX_REPORTED_TASKS, _capped

    tasks = [{"task_id": i, "on_cycle": i % 2 == 0} for i in range(MAX_REPORTED_TASKS * 3)]
    capped = _capped({"chain": "a -> b", "tasks": tasks})
    assert capped["tasks_total"] == MAX_REPORTED_TASKS * 3
    assert len(capped["tasks"]) == MAX_REPORTED_TASKS
    assert all(task["on_cycle"] for task in capped["tasks"])  # the cycle's tasks come first
    small = {"chain": "a -> b", "tasks": tasks[:3]}
    assert _capped(small) is small


def test_deadlocks_now_on_an_incomplete_cut_that_proves_none_says_so_and_exits_5(
    checked: tuple[CollectorServer, Ledger, Ledger],
) -> None:
    server, _, b = checked
    assert cli_runner().invoke(cli_main, ["snapshot", "--collector", server.address]).exit_code == 0
    in_provider = threading.Event()

    def slow() -> int:
        in_provider.set()
        time.sleep(1.0)
        return 0

    b.agent.register_state("slow", slow)
    control = b.agent._control
    assert control is not None

    def lose_the_link() -> None:
        if in_provider.wait(TIMEOUT):
            control.close(timeout=0.1)

    breaker = threading.Thread(target=lose_the_link)
    breaker.start()
    try:
        result = cli_runner().invoke(
            cli_main, ["deadlocks", "--collector", server.address, "--now", "--json"]
        )
    finally:
        breaker.join(TIMEOUT)
    assert result.exit_code == 5, result.output
    doc = json.loads(result.output)
    assert doc["cut_status"] == "INCOMPLETE" and doc["deadlocks"] == []
    assert any(b.agent.process_id in reason for reason in doc["reasons"])
