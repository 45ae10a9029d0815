"""The SQLite cut store on real files: exact round trips, restarts, atomic saves, hostile text, threads."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cutwatch.collector import (
    SqliteCutStore,
    StoredChannelState,
    StoredCut,
    StoredLocalState,
    StoredResult,
    _sqlite,
)
from cutwatch.collector._records import cut_from_stored, stored_from_assembled
from cutwatch.collector._sqlite import _MIGRATIONS, SCHEMA_VERSION
from cutwatch.core import (
    OUTCOME_FAILED,
    Answering,
    CallOutcome,
    ChannelRecord,
    CutAssembler,
    DuplicateDelivery,
    DuplicateEpochError,
    Flushed,
    LocalSnapshot,
    MsgKey,
    OpenCall,
    RecordingStopped,
    StorageError,
    TaskView,
    UnsettledCall,
    VectorClock,
)

TABLES = {"schema_version", "cuts", "local_states", "channel_states", "meta", "results"}
OpenStore = Callable[[Path], SqliteCutStore]


@pytest.fixture
def open_store() -> Iterator[OpenStore]:
    """``open_store(path)``: a store on that file, closed at teardown."""
    stores: list[SqliteCutStore] = []

    def open_(path: Path) -> SqliteCutStore:
        store = SqliteCutStore(path)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def raw_rows(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """What another connection sees in the file: only committed data."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def row_counts(path: Path, epoch: int | None = None) -> dict[str, int]:
    """Rows per cut table, all of them or of one epoch."""
    where = "" if epoch is None else " WHERE epoch = ?"
    params = () if epoch is None else (epoch,)
    return {
        table: int(raw_rows(path, f"SELECT COUNT(*) FROM {table}{where}", *params)[0][0])  # type: ignore[call-overload]
        for table in ("cuts", "local_states", "channel_states")
    }


def table_names(path: Path) -> set[str]:
    return {str(name) for (name,) in raw_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def make_cut(epoch: int, *, finished: float = 1_700_000_010.5, status: str = "INCOMPLETE") -> StoredCut:
    """A cut using every field: two states, two channel messages, an unsettled call, a duplicate."""
    return StoredCut(
        epoch=epoch,
        status="COMPLETE" if status == "COMPLETE" else "INCOMPLETE",
        started=finished - 2.25,
        finished=finished,
        reasons=("no local snapshot from c", "recording truncated at b"),
        missing=("c",),
        unsettled=(UnsettledCall("a", 2**64 - 1, "/bank.Bank/Credit", "b", "DEADLINE_EXCEEDED"),),
        states=(
            StoredLocalState(
                process="a",
                service="bank",
                clock={"a": 4, "b": 2},
                state_json=json.dumps({"balances": {"x": 10, "y": -3.5}}, sort_keys=True),
                tasks_json=json.dumps([{"kind": "server", "waits_for": ["lock:1"]}], sort_keys=True),
                sent={"b": 3},
                consumed={"b": 1},
            ),
            StoredLocalState(
                process="b",
                service="ledger",
                clock={"a": 1, "b": 7},
                state_json="null",
                tasks_json="[]",
                sent={"a": 1},
                consumed={"a": 1},
                truncated=True,
            ),
        ),
        in_transit=(
            StoredChannelState("a", "b", "/bank.Bank/Credit", "request", 2**64 - 1, 0, '{"amount": 5}'),
            StoredChannelState("a", "b", "/bank.Bank/Credit", "request", 12, 3, '"second"'),
        ),
        duplicates=(DuplicateDelivery("a", 12, ("handler at b", "request in transit to b")),),
    )


# Round trips and restarts ------------------------------------------------------------------


def test_full_cut_and_metadata_survive_a_restart(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "cuts.db"
    cut = make_cut(1)
    store = open_store(path)
    store.save_cut(cut)
    store.put_meta("collector.id", "c-1")
    store.put_meta("collector.id", "c-2")
    store.close()

    reopened = open_store(path)
    assert reopened.get_cut(1) == cut
    assert reopened.latest() == cut
    assert reopened.latest("COMPLETE") is None
    assert reopened.get_cut(2) is None
    assert reopened.get_meta("collector.id") == "c-2"
    assert reopened.get_meta("absent") is None
    got = reopened.get_cut(1)
    assert got is not None
    assert got.states[0].state == {"balances": {"x": 10, "y": -3.5}}
    assert got.in_transit[0].call_id == 2**64 - 1
    assert got.in_transit[0].payload == {"amount": 5}
    assert row_counts(path) == {"cuts": 1, "local_states": 2, "channel_states": 2}


def test_assembled_cut_is_stored_with_counters_services_calls_and_truncation(
    tmp_path: Path, open_store: OpenStore
) -> None:
    a, b = "bank:a1", "ledger:b1"
    clock_a, clock_b = VectorClock({a: 3}), VectorClock({a: 1, b: 2})
    task = TaskView.from_json({"task_id": 7, "kind": "app", "held_locks": ["t"]})
    snap_a = LocalSnapshot(
        4,
        a,
        clock_a,
        {"x": 1},
        (task,),
        open_calls=(OpenCall(1, "/m/Credit", b), OpenCall(2, "/m/Credit", b)),
        requests_sent=2,
        responses_consumed={b: 1},
    )
    snap_b = LocalSnapshot(
        4, b, clock_b, [1, 2], answering=(Answering(a, 1),), requests_consumed={a: 1}, responses_sent={a: 1}
    )
    # Call 1's first attempt is being answered at b while its retry is in transit to b: a duplicate.
    record = ChannelRecord(4, a, b, '{"z": 1, "a": [1, 2]}', MsgKey(a, 1, 2, "request"), "/m/Credit")
    assembler = CutAssembler(4, [a, b])
    assembler.add(snap_a)
    assembler.add(snap_b)
    assert assembler.next_flush() == (1, ())  # the collector asks for a flush round
    for event in (
        record,
        CallOutcome(4, a, 2, OUTCOME_FAILED, "UNAVAILABLE"),  # failed after it: not fenced yet
        RecordingStopped(4, b, "recording truncated", 3),
        Flushed(4, a, 1),
        Flushed(4, b, 1),
    ):
        assembler.add(event)
    assembled = assembler.finish()
    stored = stored_from_assembled(assembled, 10.0, 12.5, services={b: "ledger-eu"})

    first, second = stored.states
    assert (first.process, first.service, first.state, first.tasks, first.sent, first.consumed) == (
        a, "bank", {"x": 1}, [task.to_json()], {"*": 2}, {b: 1},
    )  # fmt: skip
    assert first.truncated is False
    assert (second.service, second.state, second.tasks, second.clock, second.sent, second.consumed) == (
        "ledger-eu", [1, 2], [], {a: 1, b: 2}, {a: 1}, {a: 1},
    )  # fmt: skip
    assert second.truncated is True
    (channel,) = stored.in_transit
    assert channel == StoredChannelState(a, b, "/m/Credit", "request", 1, 2, '{"a": [1, 2], "z": 1}')
    assert stored.unsettled == (UnsettledCall(a, 2, "/m/Credit", b, "UNAVAILABLE"),)
    assert stored.duplicates == (DuplicateDelivery(a, 1, (f"handler at {b}", f"request in transit to {b}")),)
    assert stored.status == "INCOMPLETE"
    assert stored.reasons == (
        f"calls in flight at the cut not accounted for: /m/Credit #2 from {a} to {b} (failed: UNAVAILABLE)",
        f"recording truncated at {b}",
    )

    path = tmp_path / "cuts.db"
    open_store(path).save_cut(stored)
    assert open_store(path).get_cut(4) == stored

    # A state that JSON cannot hold is refused before anything is written.
    odd = CutAssembler(5, [a])
    odd.add_local(LocalSnapshot(5, a, clock_a, {"odd": {1, 2}}))
    with pytest.raises(TypeError):
        stored_from_assembled(odd.finish(), 10.0, 12.5)


@pytest.mark.parametrize(
    ("column", "text"),
    [
        ("unsettled_json", '[["a", "1", "", "", ""]]'),
        ("unsettled_json", '[["a", 1, "", ""]]'),
        ("unsettled_json", '[["a", true, "", "", ""]]'),
        ("unsettled_json", "{}"),
        ("duplicates_json", '[["a", 1, "where"]]'),
        ("duplicates_json", '[["a", 1, [2]]]'),
        ("duplicates_json", "not json"),
    ],
)
def test_corrupt_call_lists_are_reported_not_misread(
    tmp_path: Path, open_store: OpenStore, column: str, text: str
) -> None:
    path = tmp_path / "cuts.db"
    store = open_store(path)
    store.save_cut(make_cut(1))
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"UPDATE cuts SET {column} = ? WHERE epoch = 1", (text,))
    conn.close()
    with pytest.raises(StorageError, match="corrupt"):
        store.get_cut(1)


def test_wal_foreign_keys_and_schema_version(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "cuts.db"
    store = open_store(path)
    store.save_cut(make_cut(1))
    assert raw_rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert Path(f"{path}-wal").exists()
    assert raw_rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert table_names(path) == TABLES
    assert store._require().execute("PRAGMA foreign_keys").fetchone() == (1,)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO channel_states VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (42, 0, "a", "b", "m", "request", 1, 0, "null", 0),
            )
    finally:
        conn.close()


def test_reopening_keeps_schema_and_refuses_a_newer_one(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "cuts.db"
    open_store(path).close()
    open_store(path).close()
    assert raw_rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    with pytest.raises(StorageError, match="schema version 99"):
        SqliteCutStore(path)


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SqliteCutStore(tmp_path / "cuts.db")
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.next_epoch()
    with pytest.raises(StorageError, match="closed"):
        store.save_cut(make_cut(1))


# All or nothing -----------------------------------------------------------------------------


def _duplicate_process(cut: StoredCut) -> StoredCut:
    return dataclasses.replace(cut, states=(*cut.states, dataclasses.replace(cut.states[0], service="twin")))


def _bad_second_payload(cut: StoredCut) -> StoredCut:
    second = dataclasses.replace(cut.in_transit[1], payload_json="{not json")
    return dataclasses.replace(cut, in_transit=(cut.in_transit[0], second))


def _call_id_too_large(cut: StoredCut) -> StoredCut:
    second = dataclasses.replace(cut.in_transit[1], call_id=2**64)
    return dataclasses.replace(cut, in_transit=(cut.in_transit[0], second))


@pytest.mark.parametrize(
    ("breaker", "error"),
    [(_duplicate_process, StorageError), (_bad_second_payload, ValueError), (_call_id_too_large, ValueError)],
)
def test_a_save_failing_midway_leaves_nothing(
    tmp_path: Path,
    open_store: OpenStore,
    breaker: Callable[[StoredCut], StoredCut],
    error: type[Exception],
) -> None:
    path = tmp_path / "cuts.db"
    store = open_store(path)
    store.save_cut(make_cut(1))
    with pytest.raises(error):
        store.save_cut(breaker(make_cut(2)))
    assert row_counts(path, 2) == {"cuts": 0, "local_states": 0, "channel_states": 0}
    assert row_counts(path) == {"cuts": 1, "local_states": 2, "channel_states": 2}
    assert store.get_cut(2) is None
    assert store.next_epoch() == 2
    store.save_cut(make_cut(2))
    assert store.get_cut(2) == make_cut(2)


def test_an_exception_between_inserts_rolls_the_cut_back(
    tmp_path: Path, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cuts.db"
    store = open_store(path)
    real_row = _sqlite.channel_row
    calls: list[int] = []

    def failing_row(epoch: int, seq: int, channel: StoredChannelState) -> tuple[object, ...]:
        calls.append(seq)
        if seq == 1:
            # The cut row, both local states and the first channel state are written by now.
            assert row_counts(path) == {"cuts": 0, "local_states": 0, "channel_states": 0}
            assert store._require().execute("SELECT COUNT(*) FROM local_states").fetchone() == (2,)
            raise RuntimeError("disk on fire")
        return real_row(epoch, seq, channel)

    monkeypatch.setattr(_sqlite, "channel_row", failing_row)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.save_cut(make_cut(1))
    assert calls == [0, 1]
    assert row_counts(path) == {"cuts": 0, "local_states": 0, "channel_states": 0}
    assert store.latest() is None
    assert store.next_epoch() == 1


def test_a_stored_epoch_is_never_overwritten(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "cuts.db"
    first = make_cut(5)
    other = dataclasses.replace(
        make_cut(5, status="COMPLETE"), reasons=(), missing=(), unsettled=(), duplicates=()
    )
    store = open_store(path)
    store.save_cut(first)
    with pytest.raises(DuplicateEpochError, match="epoch 5"):
        store.save_cut(other)
    assert store.get_cut(5) == first
    store.close()
    reopened = open_store(path)
    with pytest.raises(DuplicateEpochError):
        reopened.save_cut(other)
    assert reopened.get_cut(5) == first
    assert row_counts(path) == {"cuts": 1, "local_states": 2, "channel_states": 2}


@pytest.mark.parametrize(
    "change",
    [
        {"epoch": 0},
        {"epoch": 2**63},
        {"started": float("nan")},
        {"finished": float("inf")},
        {"started": 20.0, "finished": 10.0},
        {"status": "PENDING"},
    ],
)
def test_unstorable_cuts_are_refused_before_writing(
    tmp_path: Path, open_store: OpenStore, change: dict[str, object]
) -> None:
    path = tmp_path / "cuts.db"
    store = open_store(path)
    with pytest.raises(ValueError):
        store.save_cut(dataclasses.replace(make_cut(1), **change))  # type: ignore[arg-type]
    bad_counter = dataclasses.replace(make_cut(1).states[0], sent={"b": -1})
    with pytest.raises(ValueError):
        store.save_cut(dataclasses.replace(make_cut(1), states=(bad_counter,)))
    assert row_counts(path) == {"cuts": 0, "local_states": 0, "channel_states": 0}


# Queries ---------------------------------------------------------------------------------------


def test_list_cuts_filters_and_orders_newest_first(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store(tmp_path / "cuts.db")
    for epoch in range(1, 7):
        status = "COMPLETE" if epoch % 2 == 0 else "INCOMPLETE"
        store.save_cut(make_cut(epoch, finished=100.0 + 10 * epoch, status=status))
    store.save_cut(StoredCut(7, "COMPLETE", 170.0, 170.0, (), (), (), (), ()))

    assert [s.epoch for s in store.list_cuts()] == [7, 6, 5, 4, 3, 2, 1]
    assert [s.epoch for s in store.list_cuts(status="COMPLETE")] == [7, 6, 4, 2]
    assert [s.epoch for s in store.list_cuts(status="INCOMPLETE")] == [5, 3, 1]
    assert [s.epoch for s in store.list_cuts(since=130.0)] == [7, 6, 5, 4, 3]
    assert [s.epoch for s in store.list_cuts(since=130.0, until=160.0)] == [5, 4, 3]
    assert [s.epoch for s in store.list_cuts(status="COMPLETE", since=130.0, until=160.0)] == [4]
    assert [s.epoch for s in store.list_cuts(limit=2)] == [7, 6]
    assert store.list_cuts(since=500.0) == []

    newest, sixth = store.list_cuts(limit=2)
    assert (newest.processes, newest.in_transit, newest.missing, newest.reasons) == (0, 0, (), ())
    assert (sixth.status, sixth.started, sixth.finished) == ("COMPLETE", 157.75, 160.0)
    assert (sixth.processes, sixth.in_transit, sixth.missing) == (2, 2, ("c",))
    assert sixth.reasons == make_cut(6).reasons

    assert store.latest("INCOMPLETE") == make_cut(5, finished=150.0)
    assert store.latest() == StoredCut(7, "COMPLETE", 170.0, 170.0, (), (), (), (), ())
    for limit in (0, -1, 1001):
        with pytest.raises(ValueError, match="limit"):
            store.list_cuts(limit=limit)


def test_next_epoch_keeps_increasing_across_restarts(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "cuts.db"
    store = open_store(path)
    assert store.next_epoch() == 1
    for _ in range(2):
        store.save_cut(make_cut(store.next_epoch()))
    store.save_cut(make_cut(7))
    assert store.next_epoch() == 8
    store.close()
    reopened = open_store(path)
    assert reopened.next_epoch() == 8
    reopened.save_cut(make_cut(reopened.next_epoch()))
    reopened.close()
    assert open_store(path).next_epoch() == 9


# Hostile input ---------------------------------------------------------------------------------

HOSTILE = [
    "'); DROP TABLE cuts; --",
    '" OR 1=1; DELETE FROM local_states; --',
    "a\x00b\x00",
    "\x00",
    "",
    "名前 ☃ 🎉 e\u0301 \u202etxt.exe \uffff \U0010ffff",
    "%s ? :epoch $1 \\ \n\r\t",
]
HUGE = "p" * (1 << 20)


def test_hostile_strings_are_stored_exactly(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "cuts.db"
    names = [*HOSTILE, HUGE, HUGE + "\x00"]
    cut = StoredCut(
        epoch=1,
        status="INCOMPLETE",
        started=0.0,
        finished=1.0,
        reasons=tuple(names),
        missing=tuple(names),
        unsettled=tuple(UnsettledCall(n, 2**64 - 1, n, n, n) for n in names),
        duplicates=tuple(DuplicateDelivery(n, 7, (n, n)) for n in names),
        states=tuple(
            StoredLocalState(
                process=n,
                service=n,
                clock={n: 1},
                state_json=json.dumps({n: n}, sort_keys=True),
                tasks_json=json.dumps([n]),
                sent={n: 2},
                consumed={n: 1},
            )
            for n in names
        ),
        in_transit=tuple(StoredChannelState(n, n, n, n, 1, 0, json.dumps(n)) for n in names),
    )
    store = open_store(path)
    store.save_cut(cut)
    for i, name in enumerate(HOSTILE):
        store.put_meta(name, name * 10)
        store.put_meta(f"k{i}", name)
    store.save_cut(make_cut(2))
    store.close()

    reopened = open_store(path)
    assert reopened.get_cut(1) == cut
    assert reopened.get_cut(2) == make_cut(2)
    for i, name in enumerate(HOSTILE):
        assert reopened.get_meta(name) == name * 10
        assert reopened.get_meta(f"k{i}") == name
    assert table_names(path) == TABLES
    assert row_counts(path) == {"cuts": 2, "local_states": len(names) + 2, "channel_states": len(names) + 2}
    assert raw_rows(path, "SELECT COUNT(*) FROM meta") == [(2 * len(HOSTILE),)]
    assert [s.epoch for s in reopened.list_cuts()] == [2, 1]
    with pytest.raises(ValueError, match="small"):
        reopened.put_meta(HUGE, "x")


# Properties and threads ---------------------------------------------------------------------------

names_st = st.text(max_size=12)
json_st = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
).map(lambda value: json.dumps(value, sort_keys=True))
counters_st = st.dictionaries(names_st, st.integers(0, 2**64), max_size=3)
local_st = st.builds(
    StoredLocalState,
    process=names_st,
    service=names_st,
    clock=counters_st,
    state_json=json_st,
    tasks_json=json_st,
    sent=counters_st,
    consumed=counters_st,
    truncated=st.booleans(),
)
channel_st = st.builds(
    StoredChannelState,
    sender=names_st,
    receiver=names_st,
    method=names_st,
    kind=st.sampled_from(["request", "response"]) | names_st,
    call_id=st.integers(0, 2**64 - 1),
    attempt=st.integers(0, 2**64 - 1),
    payload_json=json_st,
)


@st.composite
def cuts_st(draw: st.DrawFn) -> StoredCut:
    started = draw(st.floats(0, 4e9))
    return StoredCut(
        epoch=1,
        status=draw(st.sampled_from(["COMPLETE", "INCOMPLETE"])),
        started=started,
        finished=started + draw(st.floats(0, 1e6)),
        reasons=tuple(draw(st.lists(names_st, max_size=3))),
        missing=tuple(draw(st.lists(names_st, max_size=3))),
        unsettled=tuple(
            draw(
                st.lists(
                    st.builds(
                        UnsettledCall, names_st, st.integers(0, 2**64 - 1), names_st, names_st, names_st
                    ),
                    max_size=3,
                )
            )
        ),
        duplicates=tuple(
            draw(
                st.lists(
                    st.builds(
                        DuplicateDelivery,
                        names_st,
                        st.integers(0, 2**64 - 1),
                        st.lists(names_st, max_size=3).map(tuple),
                    ),
                    max_size=3,
                )
            )
        ),
        states=tuple(draw(st.lists(local_st, max_size=4, unique_by=lambda state: state.process))),
        in_transit=tuple(draw(st.lists(channel_st, max_size=5))),
    )


@pytest.fixture(scope="module")
def writer_and_reader(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SqliteCutStore, SqliteCutStore]]:
    path = tmp_path_factory.mktemp("prop") / "cuts.db"
    writer = SqliteCutStore(path)
    reader = SqliteCutStore(path)
    try:
        yield writer, reader
    finally:
        writer.close()
        reader.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=cuts_st())
def test_random_cuts_round_trip_exactly(
    writer_and_reader: tuple[SqliteCutStore, SqliteCutStore], cut: StoredCut
) -> None:
    writer, reader = writer_and_reader
    cut = dataclasses.replace(cut, epoch=writer.next_epoch())
    writer.save_cut(cut)
    assert reader.get_cut(cut.epoch) == cut
    assert reader.latest() == cut
    (summary,) = reader.list_cuts(limit=1)
    assert (summary.epoch, summary.processes, summary.in_transit) == (
        cut.epoch, len(cut.states), len(cut.in_transit),
    )  # fmt: skip


def test_concurrent_saves_from_eight_threads_all_land(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "cuts.db"
    store = open_store(path)
    threads_n, per_thread = 8, 12
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(per_thread):
                epoch = 1 + index * per_thread + i
                store.save_cut(make_cut(epoch, finished=float(epoch)))
                assert store.get_cut(epoch) == make_cut(epoch, finished=float(epoch))
                store.list_cuts(limit=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    total = threads_n * per_thread
    assert [s.epoch for s in store.list_cuts(limit=1000)] == list(range(total, 0, -1))
    assert row_counts(path) == {"cuts": total, "local_states": 2 * total, "channel_states": 2 * total}
    assert store.next_epoch() == total + 1


def test_predicate_results_attach_to_a_stored_cut_and_are_replaced_by_name(
    tmp_path: Path, open_store: OpenStore
) -> None:
    store = open_store(tmp_path / "cuts.db")
    with pytest.raises(StorageError, match="no cut with epoch 3"):
        store.save_results(3, [StoredResult(3, "bank.conservation", "PASS")])
    store.save_cut(make_cut(3))
    assert store.latest_results_epoch() is None
    failing = StoredResult(3, "bank.conservation", "FAIL", "lost 5", '{"missing": 5}', 0.25)
    store.save_results(3, [failing, StoredResult(3, "cutwatch.deadlock", "PASS")])
    assert store.results(3) == [failing, StoredResult(3, "cutwatch.deadlock", "PASS")]
    assert store.results(3)[0].witness == {"missing": 5}
    fixed = StoredResult(3, "bank.conservation", "PASS")
    store.save_results(3, [fixed])
    assert [r.status for r in store.results(3)] == ["PASS", "PASS"]
    assert store.latest_results_epoch() == 3
    with pytest.raises(ValueError, match="not JSON"):
        store.save_results(3, [StoredResult(3, "x", "FAIL", "", "{nope")])
    with pytest.raises(ValueError, match="not a valid result"):
        store.save_results(3, [StoredResult(4, "x", "PASS")])
    assert len(store.results(3)) == 2


def test_a_version_1_file_is_migrated_keeping_its_cuts(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the version 1 schema, as the first release wrote it
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        for statement in _MIGRATIONS[0][1]:
            conn.execute(statement)
    conn.close()
    store = SqliteCutStore(path)
    try:
        store.save_cut(make_cut(1))
        store.save_results(1, [StoredResult(1, "p", "PASS")])
        assert store.results(1) == [StoredResult(1, "p", "PASS")]
    finally:
        store.close()
    assert raw_rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_a_version_2_file_is_migrated_and_its_cuts_cover_their_states_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the version 2 schema, before cuts said what they cover
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        for _, statements in _MIGRATIONS[:2]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO cuts VALUES (1, 'INCOMPLETE', 1.0, 2.0, ?, ?, '[]', '[]')",
            (json.dumps(["no local snapshot from b:1"]), json.dumps(["b:1"])),
        )
        conn.execute("INSERT INTO local_states VALUES (1, 'a:1', 'a', '{}', '{}', '[]', '{}', '{}', 0, '{}')")
    conn.close()
    store = SqliteCutStore(path)
    try:
        old = store.get_cut(1)
        assert old is not None and (old.covers, old.left_out) == ((), ())
        assert cut_from_stored(old).covers == ("a:1", "b:1")  # what it has states for, and what it missed
        store.save_cut(make_cut(2))
        assert store.get_cut(2) == make_cut(2)
    finally:
        store.close()
    assert raw_rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_a_stream_message_keeps_its_number_in_its_stream(tmp_path: Path, open_store: OpenStore) -> None:
    path = tmp_path / "cuts.db"
    message = StoredChannelState(
        "b", "a", "/bank.Bank/Payout", "response", 13, 0, '{"amount": 7}', index=2**64 - 1
    )
    cut = dataclasses.replace(make_cut(1), in_transit=(message,))
    open_store(path).save_cut(cut)
    reopened = open_store(path)
    stored = reopened.get_cut(1)
    assert stored is not None and stored.in_transit == (message,)
    assert cut_from_stored(stored).in_transit[0].index == 2**64 - 1
