"""The collector's log of recorded state changes and the windows it builds between complete cuts."""

from __future__ import annotations

from typing import Any

from cutwatch.collector._recordings import NOT_RECORDING, RecordingLog
from cutwatch.core import Cut, LocalSnapshot, RecordedEvent, VectorClock


def _cut(
    epoch: int, states: dict[str, dict[str, Any]], clocks: dict[str, dict[str, int]] | None = None
) -> Cut:
    return Cut(
        epoch=epoch,
        status="COMPLETE",
        started=0.0,
        finished=0.0,
        states={p: {"service": p.split(":")[0], "state": s} for p, s in states.items()},
        in_transit=(),
        clocks=clocks or {p: {p: epoch * 100} for p in states},
    )


def _snap(
    epoch: int, process: str, through: int, events: list[tuple[int, int, dict[str, Any]]]
) -> LocalSnapshot:
    recorded = tuple(RecordedEvent(seq, VectorClock({process: own}), values) for seq, own, values in events)
    return LocalSnapshot(
        epoch, process, VectorClock({process: epoch * 100}), {}, recorded=recorded, recorded_through=through
    )


def test_the_first_window_starts_with_recording_and_the_next_at_the_previous_cut():
    log = RecordingLog()
    log.add(
        [_snap(1, "a:1", 2, [(0, 1, {"x": 0}), (1, 5, {"x": 1})]), _snap(1, "b:1", 1, [(0, 1, {"x": 0})])]
    )
    first = _cut(1, {"a:1": {"x": 1}, "b:1": {"x": 0}})
    window = log.window(first, None, {"x"})
    assert window.bottom_epoch is None and window.top_epoch == 1
    a, b = window.histories
    assert a.start == {} and [e.values["x"] for e in a.events] == [0, 1]
    assert b.start == {} and [e.seq for e in b.events] == [0]
    assert not a.missing and not b.missing
    log.checked(first)

    log.add([_snap(2, "a:1", 3, [(2, 150, {"x": 2})]), _snap(2, "b:1", 1, [])])
    second = _cut(2, {"a:1": {"x": 2}, "b:1": {"x": 0}})
    window = log.window(second, first, {"x"})
    a, b = window.histories
    assert window.bottom_epoch == 1
    assert a.start == {"x": 1} and [e.seq for e in a.events] == [2]
    assert a.start_clock == {"a:1": 100}
    assert b.start == {"x": 0} and b.events == ()
    assert log.size == 1
    log.checked(second)
    assert log.size == 0


def test_a_gap_in_the_numbers_marks_the_process_missing():
    log = RecordingLog()
    log.add([_snap(1, "a:1", 4, [(0, 1, {"x": 0}), (3, 9, {"x": 3})])])  # 1 and 2 were dropped
    window = log.window(_cut(1, {"a:1": {"x": 3}}), None, {"x"})
    (a,) = window.histories
    assert "2 of its recorded state changes (numbers 1..2)" in a.missing


def test_a_collector_that_started_late_does_not_pretend_to_know_the_past():
    log = RecordingLog()
    log.add([_snap(7, "a:1", 10, [(9, 50, {"x": 1})])])  # numbers 0..8 went to an earlier collector
    (a,) = log.window(_cut(7, {"a:1": {"x": 1}}), None, {"x"}).histories
    assert a.missing


def test_a_process_that_holds_a_read_name_but_records_nothing_is_missing():
    log = RecordingLog()
    log.add([_snap(1, "a:1", 0, []), _snap(1, "b:1", 0, [])])
    window = log.window(_cut(1, {"a:1": {"x": 5}, "b:1": {"other": 1}}), None, {"x"})
    (a,) = window.histories  # b holds nothing the predicates read: left out
    assert a.missing == NOT_RECORDING and a.start == {"x": 5}


def test_values_that_are_not_integers_make_their_name_invalid():
    log = RecordingLog()
    log.add([_snap(1, "a:1", 2, [(0, 1, {"x": 0, "y": 1}), (1, 2, {"x": "high"})])])
    window = log.window(_cut(1, {"a:1": {"x": "high"}}), None, {"x", "y"})
    assert "x" in window.invalid and "str" in window.invalid["x"]
    assert "y" not in window.invalid


def test_names_no_predicate_reads_are_left_out_and_events_without_them_too():
    log = RecordingLog()
    log.add([_snap(1, "a:1", 3, [(0, 1, {"x": 0, "z": 0}), (1, 2, {"z": 1}), (2, 3, {"x": 1})])])
    (a,) = log.window(_cut(1, {"a:1": {"x": 1, "z": 1}}), None, {"x"}).histories
    assert [dict(e.values) for e in a.events] == [{"x": 0}, {"x": 1}]


def test_duplicates_are_kept_once_and_the_bound_sheds_the_oldest():
    log = RecordingLog(max_changes=3)
    events = [(seq, seq + 1, {"x": seq}) for seq in range(5)]
    log.add([_snap(1, "a:1", 5, events), _snap(2, "a:1", 5, events)])
    assert log.size == 3 and log.dropped == 2
    (a,) = log.window(_cut(1, {"a:1": {"x": 4}}), None, {"x"}).histories
    assert a.missing and [e.seq for e in a.events] == [2, 3, 4]
