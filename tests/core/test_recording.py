"""Recording state changes for lattice predicates: what the process core keeps, numbers and sends."""

from __future__ import annotations

import threading

import pytest

from cutwatch.core import LocalSnapshot, ProcessCore, VectorClock
from cutwatch.core._counters import Counters
from cutwatch.core._recording import Recorder
from cutwatch.core.errors import EventFormatError
from cutwatch.proto import event_from_message, event_to_message


def _core(**kwargs: object) -> tuple[ProcessCore, dict[str, object]]:
    core = ProcessCore("svc:1", **kwargs)  # type: ignore[arg-type]
    state: dict[str, object] = {"leader": False, "balance": 10}
    core.register_state("leader", lambda: state["leader"], record=True)
    core.register_state("balance", lambda: state["balance"], record=True)
    core.register_state("note", lambda: state.get("note", "unrecorded"))
    return core, state


def test_registration_records_the_first_value_and_each_block_that_changes_one():
    core, state = _core()
    with core.atomic():
        state["leader"] = True
    with core.atomic():
        pass  # nothing changed: no event
    with core.atomic():
        state["balance"] = 7
        state["note"] = "not recorded"
    capture = core._capture()
    values = [dict(e.values) for e in capture.recorded]
    assert values == [{"leader": False}, {"balance": 10}, {"leader": True}, {"balance": 7}]
    assert [e.seq for e in capture.recorded] == [0, 1, 2, 3]
    assert capture.recorded_through == 4
    assert core.stats().changes_recorded == 4


def test_each_recorded_event_ticks_the_clock_and_the_capture_comes_after_them():
    core, state = _core()
    before = core.clock["svc:1"]
    with core.atomic():
        state["leader"] = True
    capture = core._capture()
    owns = [e.clock["svc:1"] for e in capture.recorded]
    assert owns == sorted(set(owns)), "every event has its own counter, increasing"
    assert owns[-1] > before
    assert capture.clock["svc:1"] > owns[-1], "the snapshot is an event after the changes it carries"


def test_events_after_a_capture_go_with_the_next_one():
    core, state = _core()
    first = core._capture()
    with core.atomic():
        state["balance"] = 3
    second = core._capture()
    assert [e.seq for e in first.recorded] == [0, 1]
    assert [dict(e.values) for e in second.recorded] == [{"balance": 3}]
    assert second.recorded_through == 3
    assert second.recorded[0].clock["svc:1"] > first.clock["svc:1"]


def test_a_process_that_records_nothing_says_zero():
    core = ProcessCore("svc:2")
    core.register_state("x", lambda: 1)
    with core.atomic():
        pass
    capture = core._capture()
    assert capture.recorded == () and capture.recorded_through == 0


def test_a_full_buffer_drops_and_counts_but_keeps_numbering():
    core, state = _core(max_recorded_events=3)
    for value in range(5):
        with core.atomic():
            state["balance"] = 100 + value
    capture = core._capture()
    assert [e.seq for e in capture.recorded] == [0, 1, 2]
    assert capture.recorded_through == 7, "dropped changes keep their numbers: the collector sees the gap"
    assert core.stats().changes_dropped == 4


def test_a_failing_provider_is_counted_and_records_nothing():
    core = ProcessCore("svc:3")
    calls = {"n": 0}

    def flaky() -> int:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")
        return 1

    core.register_state("x", flaky, record=True)
    with core.atomic():
        pass
    capture = core._capture()
    assert [dict(e.values) for e in capture.recorded] == [{"x": 1}]
    assert core.stats().state_errors >= 1


def test_values_are_frozen_as_json_and_changes_compare_by_value_and_type():
    recorder = Recorder(Counters())
    box: dict[str, object] = {"v": [1, 2]}
    assert recorder.add("v", lambda: box["v"]) == {"v": [1, 2]}
    box["v"] = [1, 2]
    assert recorder.changes() == {}
    box["v"] = 1
    assert recorder.changes() == {"v": 1}
    box["v"] = True  # == 1, but a different value for a predicate
    assert recorder.changes() == {"v": True}


def test_concurrent_blocks_record_every_change_in_clock_order():
    core = ProcessCore("svc:4")
    counter = {"n": 0}
    core.register_state("n", lambda: counter["n"], record=True)

    def work() -> None:
        for _ in range(200):
            with core.atomic():
                counter["n"] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = core._capture().recorded
    assert [dict(e.values)["n"] for e in events] == list(range(801))
    owns = [e.clock["svc:4"] for e in events]
    assert owns == sorted(owns) and len(set(owns)) == len(owns)


def test_recorded_events_cross_the_wire_and_malformed_ones_are_refused():
    core, state = _core()
    with core.atomic():
        state["leader"] = True
    capture = core._capture()
    snap = LocalSnapshot(
        1,
        "svc:1",
        VectorClock(capture.clock),
        {},
        recorded=capture.recorded,
        recorded_through=capture.recorded_through,
    )
    back = event_from_message(event_to_message(snap, 1), "svc:1")
    assert isinstance(back, LocalSnapshot)
    assert [(e.seq, dict(e.clock), dict(e.values)) for e in back.recorded] == [
        (e.seq, dict(e.clock), dict(e.values)) for e in capture.recorded
    ]
    assert back.recorded_through == capture.recorded_through

    message = event_to_message(snap, 1)
    message.local_snapshot.recorded_through = 1  # events numbered past what the snapshot says
    with pytest.raises(EventFormatError, match="out of order"):
        event_from_message(message, "svc:1")
    message = event_to_message(snap, 1)
    message.local_snapshot.recorded[0].values_json = "[1]"
    with pytest.raises(EventFormatError, match="JSON object"):
        event_from_message(message, "svc:1")


def test_the_event_log_shows_each_change_with_the_number_a_witness_gives():
    core, state = _core()
    seen: list[tuple[dict[str, int], str]] = []
    core.observer = lambda process, clock, text: seen.append((dict(clock), text))
    with core.atomic():
        state["leader"] = True
    (clock, text), *_ = seen
    recorded = core._capture().recorded
    assert text == "state change #2 leader=true"
    assert clock == dict(recorded[-1].clock), "the log line carries the clock the witness shows"
