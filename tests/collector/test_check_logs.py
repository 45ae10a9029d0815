"""Failed and erroring checks are logged at WARNING, one line each; ``--log-format json``: JSON lines."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ledger_service import Ledger
from lock_cycle import lock_cycle
from polling import wait_until
from processes import Proc, cutwatch_command, listening_address, spawn, stop_all

from cutwatch._logformat import JsonFormatter
from cutwatch.collector import CollectorClient, CollectorServer, StoredResult
from cutwatch.collector._checklog import summary

TIMEOUT = 30.0
PREDICATES = textwrap.dedent(
    """
    from cutwatch.predicates import invariant, violation

    @invariant("ledger.poor")
    def poor(cut):
        return violation("someone is poor\\nsecond line", balances={p: 1 for p in cut.states})

    @invariant("ledger.broken")
    def broken(cut):
        raise RuntimeError("a bug in a predicate")

    @invariant("ledger.fine")
    def fine(cut):
        return True
    """
)


@pytest.fixture
def checked(tmp_path: Path) -> Iterator[tuple[CollectorServer, Ledger]]:
    path = tmp_path / "ledger_checks.py"
    path.write_text(PREDICATES)
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", predicates=[str(path)]).start()
    ledger = None
    try:
        ledger = Ledger("a", server.address)
        assert ledger.agent.wait_registered(TIMEOUT)
        yield server, ledger
    finally:
        if ledger is not None:
            ledger.close()
        server.stop()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "cutwatch.collector.checks" and r.levelno == logging.WARNING
    ]


def test_failed_and_erroring_predicates_are_warned_about_once_each(
    checked: tuple[CollectorServer, Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    server, ledger = checked
    caplog.set_level(logging.INFO, logger="cutwatch")
    with CollectorClient(server.address) as client:
        cut = client.snapshot(timeout=TIMEOUT)  # returns once its checks are stored
    assert cut.status == "COMPLETE"
    warnings = {r.check: r for r in _warnings(caplog)}  # type: ignore[attr-defined]
    assert set(warnings) == {"ledger.poor", "ledger.broken"}  # neither PASS is logged
    poor, broken = warnings["ledger.poor"], warnings["ledger.broken"]
    assert poor.getMessage().startswith(
        f"ledger.poor FAIL on cut {cut.epoch} (COMPLETE): someone is poor (witness: "
    )
    assert "\n" not in poor.getMessage() and "second line" not in poor.getMessage()
    witness = json.dumps({"balances": {ledger.agent.process_id: 1}}, sort_keys=True)
    assert poor.witness_bytes == len(witness)  # type: ignore[attr-defined]
    assert (poor.epoch, poor.status, poor.cut_status) == (cut.epoch, "FAIL", "COMPLETE")  # type: ignore[attr-defined]
    assert broken.getMessage().startswith(f"ledger.broken ERROR on cut {cut.epoch} (COMPLETE): ")
    assert broken.getMessage().endswith("): RuntimeError: a bug in a predicate (witness: 2 bytes)")


def test_a_deadlock_is_warned_about_with_the_processes_of_its_chain(
    checked: tuple[CollectorServer, Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    server, ledger = checked
    caplog.set_level(logging.INFO, logger="cutwatch")
    with lock_cycle(ledger.agent), CollectorClient(server.address) as client:
        cut = client.snapshot(timeout=TIMEOUT)
    (record,) = [r for r in _warnings(caplog) if r.check == "cutwatch.deadlock"]  # type: ignore[attr-defined]
    me = ledger.agent.process_id
    assert record.getMessage() == (
        f"cutwatch.deadlock FAIL on cut {cut.epoch} (COMPLETE): 1 deadlock: {me} -> {me}"
    )
    assert record.processes == [me]  # type: ignore[attr-defined]
    # The INFO line about the snapshot is still there, and no longer the only word on it.
    assert f"snapshot {cut.epoch} COMPLETE" in caplog.text


def _deadlock_result(*cycles: list[str]) -> StoredResult:
    witness = [{"cycle": [{"process": p, "task_id": i} for i, p in enumerate(cycle)]} for cycle in cycles]
    return StoredResult(7, "cutwatch.deadlock", "FAIL", "long text", json.dumps(witness))


def test_the_summary_of_deadlocks_across_processes_is_one_short_line() -> None:
    text, extra = summary(_deadlock_result(["shop:1", "shop:1", "stock:2"], ["x:1", "y:2"]))
    assert text == "2 deadlocks: shop:1 -> stock:2 -> shop:1; x:1 -> y:2 -> x:1"
    assert extra["processes"] == ["shop:1", "stock:2", "x:1", "y:2"]
    long = [f"p:{i}" for i in range(20)]
    text, _ = summary(_deadlock_result(long, ["a:1"], ["b:1"], ["c:1"]))
    assert text.startswith(
        "4 deadlocks: p:0 -> p:1 -> p:2 -> p:3 -> p:4 -> p:5 -> ... 13 more ... -> p:19 -> p:0;"
    )
    assert text.endswith("; and 1 more") and "c:1" not in text
    text, extra = summary(StoredResult(7, "cutwatch.deadlock", "ERROR", "ValueError: bad\nmore"))
    assert (text, extra["witness_bytes"]) == ("ValueError: bad (witness: 4 bytes)", 4)


def test_a_capped_cycle_is_summarised_with_its_end_and_every_process_it_names() -> None:
    """A cycle of more than 500 steps is stored as its first steps and its last two, with the
    processes of the whole deadlock beside them."""
    witness = [
        {
            "cycle": [{"process": "a:1"}, {"process": "b:1"}],
            "cycle_end": [{"process": "y:1"}, {"process": "z:1"}],
            "processes": ["a:1", "b:1", "m:1", "y:1", "z:1"],
        }
    ]
    text, extra = summary(StoredResult(7, "cutwatch.deadlock", "FAIL", "long text", json.dumps(witness)))
    assert text == "1 deadlock: a:1 -> b:1 -> y:1 -> z:1 -> a:1"
    assert extra["processes"] == ["a:1", "b:1", "m:1", "y:1", "z:1"]


def test_the_json_formatter_writes_stable_keys_and_the_extras() -> None:
    record = logging.LogRecord("cutwatch.collector.checks", logging.WARNING, "x.py", 1, "cut %d", (3,), None)
    record.__dict__.update({"epoch": 3, "processes": ["a:1"], "odd": object()})
    doc = json.loads(JsonFormatter().format(record))
    assert list(doc)[:4] == ["time", "level", "logger", "message"]
    assert (doc["level"], doc["logger"], doc["message"]) == ("WARNING", "cutwatch.collector.checks", "cut 3")
    assert doc["time"].endswith("+00:00") and doc["epoch"] == 3 and doc["processes"] == ["a:1"]
    assert doc["odd"].startswith("<object object")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]


def _complete_lines(log: Path) -> list[str]:
    """The lines a process has finished writing (a half-written last one waits for the next look)."""
    text = log.read_text(errors="replace")
    return [line for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def _json(line: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _run_collector(tmp_path: Path, procs: list[Proc], *options: str) -> Proc:
    predicates = tmp_path / "ledger_checks.py"
    predicates.write_text(PREDICATES)
    command = [*cutwatch_command(), "collector", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "cuts.db")]
    return spawn(tmp_path, procs, "collector", [*command, "--predicates", str(predicates), *options])


def _snapshot_and_wait(collector: Proc, warned: Callable[[str], bool]) -> int:
    """Take a snapshot through a collector process; its epoch, once a complete log line is ``warned``."""
    address = listening_address(collector)
    ledger = Ledger("a", address)
    try:
        assert ledger.agent.wait_registered(TIMEOUT)
        with CollectorClient(address) as client:
            epoch = client.snapshot(timeout=TIMEOUT).epoch
        wait_until(lambda: any(map(warned, _complete_lines(collector.log))), "the failed check's line")
    finally:
        ledger.close()
    return epoch


def test_the_collector_command_logs_json_lines_with_the_failed_checks(tmp_path: Path) -> None:
    procs: list[Proc] = []

    def poor(doc: dict[str, Any] | None) -> bool:
        return doc is not None and doc.get("level") == "WARNING" and doc.get("check") == "ledger.poor"

    try:
        collector = _run_collector(tmp_path, procs, "--log-format", "json")
        address = listening_address(collector)
        # Until the end, a line may be anything (then every line must be JSON).
        epoch = _snapshot_and_wait(collector, lambda line: poor(_json(line)))
    finally:
        stop_all(procs)
    lines = _complete_lines(collector.log)
    assert [line for line in lines if _json(line) is None] == []  # every line is one JSON object...
    every = [json.loads(line) for line in lines]
    (warned,) = [doc for doc in every if poor(doc)]
    assert (
        warned["epoch"] == epoch
        and warned["status"] == "FAIL"
        and warned["logger"] == "cutwatch.collector.checks"
    )
    assert warned["message"].startswith(f"ledger.poor FAIL on cut {epoch}")
    assert all({"time", "level", "logger", "message"} <= set(doc) for doc in every)  # ...the notes too
    assert every[0]["address"] == address and "listening on" in every[0]["message"]
    assert any(d["message"] == "cutwatch collector stopping" for d in every)
    assert any("registered" in d["message"] and d["level"] == "INFO" for d in every)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_quiet_keeps_the_warnings_and_where_the_collector_listens(tmp_path: Path, log_format: str) -> None:
    procs: list[Proc] = []
    try:
        collector = _run_collector(tmp_path, procs, "-q", "--log-format", log_format)
        _snapshot_and_wait(collector, lambda line: "WARNING" in line and "ledger.poor FAIL" in line)
    finally:
        stop_all(procs)
    lines = _complete_lines(collector.log)
    assert [line for line in lines if "listening on" in line] == lines[:1], lines
    assert not any("security:" in line or "stopping" in line or "INFO" in line for line in lines[1:]), lines
    if log_format == "json":
        assert [line for line in lines if _json(line) is None] == []
