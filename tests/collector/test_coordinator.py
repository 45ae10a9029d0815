"""The coordinator alone (no gRPC): who takes part in a snapshot and what it does with the others' pieces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until

from cutwatch.collector import SqliteCutStore
from cutwatch.collector._coordinator import (
    REASON_ABSENT,
    REASON_EVENTS_LOST,
    REASON_UNREGISTERED,
    AgentSession,
    Coordinator,
)
from cutwatch.collector._records import cut_from_stored
from cutwatch.core import (
    REQUEST,
    Answering,
    ChannelRecord,
    CloseEpoch,
    Flush,
    Flushed,
    Goodbye,
    Heartbeat,
    LocalSnapshot,
    MsgKey,
    OpenCall,
    OutboundCall,
    Registered,
    Registration,
    SnapshotEvent,
    TakeSnapshot,
    TaskView,
    VectorClock,
)

ORDER_NAMES = {
    Registered: "registered",
    TakeSnapshot: "take_snapshot",
    Flush: "flush",
    CloseEpoch: "close_epoch",
}


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    store = SqliteCutStore(tmp_path / "cuts.db")
    coordinator = Coordinator(store, snapshot_timeout=30.0)
    try:
        yield coordinator
    finally:
        coordinator.close()
        store.close()


def register(coordinator: Coordinator, process: str, epoch: int = 0) -> AgentSession:
    return coordinator.register(Registration(process, "bank", epoch=epoch))


def send(coordinator: Coordinator, session: AgentSession, event: SnapshotEvent, seq: int) -> None:
    coordinator.on_message(session, seq, event)


def orders(session: AgentSession) -> list[str]:
    """The kinds of the orders queued for an agent, oldest first (consumed)."""
    kinds: list[str] = []
    while not session.outbox.empty():
        order = session.outbox.get_nowait()
        if order is not None:
            kinds.append(ORDER_NAMES[type(order)])
    return kinds


def local(epoch: int, process: str, clock: dict[str, int], **fields: object) -> LocalSnapshot:
    return LocalSnapshot(epoch, process, VectorClock(clock), {"balance": 5}, **fields)  # type: ignore[arg-type]


def test_a_local_snapshot_from_an_agent_that_registered_after_the_start_makes_the_cut_incomplete(
    coordinator: Coordinator,
) -> None:
    # b registers while snapshot 1 runs (a collector restart makes this common: agents come back
    # one by one) and a message stamped 1 forces its local snapshot 1 before it learns to join.
    # Its state is part of the system but not of the cut: INCOMPLETE, named, never a rejected cut.
    a = register(coordinator, "bank:a")
    epoch = coordinator.start_snapshot()
    b = register(coordinator, "bank:b")
    send(coordinator, b, local(epoch, "bank:b", {"bank:a": 1, "bank:b": 2}), 1)
    send(coordinator, a, local(epoch, "bank:a", {"bank:a": 1}), 1)
    cut = coordinator.wait(epoch, 10.0)
    assert cut is not None
    assert cut.status == "INCOMPLETE"
    assert any(REASON_UNREGISTERED in reason and "bank:b" in reason for reason in cut.reasons), cut.reasons
    stats = coordinator.stats()
    assert (stats.rejected, stats.events_foreign) == (0, 1)


def test_completion_waits_for_every_flush_marker_which_comes_behind_earlier_records(
    coordinator: Coordinator,
) -> None:
    a, b = register(coordinator, "bank:a"), register(coordinator, "bank:b")
    orders(a), orders(b)
    epoch = coordinator.start_snapshot()
    assert orders(a) == orders(b) == ["take_snapshot"]
    send(coordinator, a, local(epoch, "bank:a", {"bank:a": 3}), 1)
    assert orders(a) == []  # b's local snapshot is not in yet
    send(coordinator, b, local(epoch, "bank:b", {"bank:b": 2}), 1)
    assert orders(a) == orders(b) == ["flush"]
    assert coordinator.running() == (epoch,)
    # b had recorded a request delivered after its cut (a's call had failed long before a's cut,
    # so a no longer lists it): the record comes before b's marker, so the cut holds it.
    record = ChannelRecord(epoch, "bank:a", "bank:b", '{"amount": 4}', MsgKey("bank:a", 9, 0, REQUEST))
    send(coordinator, b, record, 2)
    send(coordinator, b, Flushed(epoch, "bank:b", 1), 3)
    assert coordinator.running() == (epoch,)
    send(coordinator, a, Flushed(epoch, "bank:a", 1), 2)
    cut = coordinator.wait(epoch, 10.0)
    assert cut is not None and cut.status == "COMPLETE", cut and cut.reasons
    assert [(c.sender, c.receiver, c.call_id) for c in cut.in_transit] == [("bank:a", "bank:b", 9)]
    assert orders(a) == orders(b) == ["close_epoch"]


def test_a_gap_in_an_agents_events_makes_its_snapshots_incomplete(coordinator: Coordinator) -> None:
    a = register(coordinator, "bank:a")
    epoch = coordinator.start_snapshot()
    send(coordinator, a, local(epoch, "bank:a", {"bank:a": 1}), 1)
    send(coordinator, a, Flushed(epoch, "bank:a", 1), 3)  # event 2 was dropped by the agent
    cut = coordinator.wait(epoch, 10.0)
    assert cut is not None and cut.status == "INCOMPLETE"
    assert any(REASON_EVENTS_LOST in reason for reason in cut.reasons), cut.reasons


def test_a_heartbeat_reporting_drops_makes_running_snapshots_incomplete(coordinator: Coordinator) -> None:
    a = register(coordinator, "bank:a")
    epoch = coordinator.start_snapshot()
    coordinator.on_message(a, 0, Heartbeat(dropped=2))
    cut = coordinator.wait(epoch, 10.0)
    assert cut is not None and cut.status == "INCOMPLETE"
    assert any(REASON_EVENTS_LOST in reason for reason in cut.reasons), cut.reasons


def test_a_snapshot_past_its_deadline_is_stored_incomplete_naming_the_silent(
    coordinator: Coordinator,
) -> None:
    a, b = register(coordinator, "bank:a"), register(coordinator, "bank:b")
    epoch = coordinator.start_snapshot(timeout=5.0)
    send(coordinator, a, local(epoch, "bank:a", {"bank:a": 1}), 1)
    coordinator.expire(now=1e18)
    cut = coordinator.wait(epoch, 10.0)
    assert cut is not None and cut.status == "INCOMPLETE"
    assert cut.missing == ("bank:b",)
    assert coordinator.store.get_cut(epoch) == cut
    assert b.process == "bank:b"


def test_a_restarted_coordinator_numbers_above_stored_and_reported_epochs(tmp_path: Path) -> None:
    store = SqliteCutStore(tmp_path / "cuts.db")
    try:
        first = Coordinator(store)
        a = register(first, "bank:a")
        epoch = first.start_snapshot()
        send(first, a, local(epoch, "bank:a", {"bank:a": 1}), 1)
        send(first, a, Flushed(epoch, "bank:a", 1), 2)
        assert first.wait(epoch, 10.0) is not None
        first.close()
        second = Coordinator(store)
        register(second, "bank:b", epoch=7)  # an agent that took part in epochs the store never saw
        assert second.start_snapshot() == 8
        second.close()
    finally:
        store.close()


def reasons_of(coordinator: Coordinator, epoch: int) -> tuple[str, ...]:
    cut = coordinator.wait(epoch, 5.0)
    assert cut is not None, f"snapshot {epoch} did not finish"
    return cut.reasons


def test_a_process_whose_stream_broke_is_expected_back_and_no_cut_completes_without_it(
    tmp_path: Path,
) -> None:
    store = SqliteCutStore(tmp_path / "cuts.db")
    coordinator = Coordinator(store, snapshot_timeout=30.0, rejoin_grace=3600.0)
    try:
        a, b = register(coordinator, "bank:a"), register(coordinator, "bank:b")
        coordinator.unregister(b)  # no goodbye: a reset, a partition, or a crash
        epoch = coordinator.start_snapshot()
        (reason,) = reasons_of(coordinator, epoch)
        assert reason == f"{REASON_ABSENT} at bank:b"
        assert orders(a)[-1] == "close_epoch"  # a was spared the local snapshot
        assert [process for process, _, _ in coordinator.absent()] == ["bank:b"]
        # It comes back: the next snapshot takes it in and may complete.
        b = register(coordinator, "bank:b")
        assert coordinator.absent() == []
        epoch = coordinator.start_snapshot()
        assert orders(b)[-1] == "take_snapshot"
    finally:
        coordinator.close()
        store.close()


def test_a_process_that_said_goodbye_or_outstayed_the_grace_is_not_waited_for(tmp_path: Path) -> None:
    store = SqliteCutStore(tmp_path / "cuts.db")
    coordinator = Coordinator(store, snapshot_timeout=30.0, rejoin_grace=0.2)
    try:
        a, b, c = (register(coordinator, f"bank:{name}") for name in "abc")
        coordinator.on_message(b, 0, Goodbye())
        coordinator.unregister(b)
        coordinator.unregister(c)
        assert [process for process, _, _ in coordinator.absent()] == ["bank:c"]
        wait_until(lambda: coordinator.absent() == [], "the rejoin grace to end", timeout=30.0)
        epoch = coordinator.start_snapshot()
        assert "take_snapshot" in orders(a)
        snap = local(epoch, "bank:a", {"bank:a": 1})
        send(coordinator, a, snap, 1)
        send(coordinator, a, Flushed(epoch, "bank:a", 1), 2)
        cut = coordinator.wait(epoch, 5.0)
        assert cut is not None and cut.status == "COMPLETE", cut
        # Complete for what it covers, and it says so: c left without a goodbye and did not come back,
        # so it is named; b said goodbye, so it is not.
        assert cut.covers == ("bank:a",)
        (gone,) = cut.left_out
        assert (gone.process, gone.service) == ("bank:c", "bank") and "without a goodbye" in gone.why
        assert store.get_cut(epoch) == cut  # kept as it was
        document = cut_from_stored(cut).to_json()
        assert document["covers"] == ["bank:a"]
        assert document["left_out"] == [{"process": "bank:c", "service": "bank", "why": gone.why}]
    finally:
        coordinator.close()
        store.close()


def test_a_process_that_registers_while_a_snapshot_runs_is_named_left_out(
    coordinator: Coordinator,
) -> None:
    a = register(coordinator, "bank:a")
    epoch = coordinator.start_snapshot()
    register(coordinator, "bank:late")
    send(coordinator, a, local(epoch, "bank:a", {"bank:a": 1}), 1)
    send(coordinator, a, Flushed(epoch, "bank:a", 1), 2)
    cut = coordinator.wait(epoch, 5.0)
    assert cut is not None and cut.status == "COMPLETE"
    assert cut.covers == ("bank:a",)
    assert [(o.process, o.why) for o in cut.left_out] == [
        ("bank:late", "registered after the snapshot started")
    ]


def test_a_restarted_coordinator_expects_the_processes_of_the_newest_cut(tmp_path: Path) -> None:
    store = SqliteCutStore(tmp_path / "cuts.db")
    first = Coordinator(store, snapshot_timeout=30.0)
    a, b = register(first, "bank:a"), register(first, "bank:b")
    epoch = first.start_snapshot()
    for session in (a, b):
        send(first, session, local(epoch, session.process, {session.process: 1}), 1)
    for session in (a, b):
        send(first, session, Flushed(epoch, session.process, 1), 2)
    stored = first.wait(epoch, 5.0)
    assert stored is not None and stored.status == "COMPLETE"
    first.close()
    second = Coordinator(store, snapshot_timeout=30.0, rejoin_grace=3600.0)
    try:
        register(second, "bank:a")  # b has not reconnected yet
        (reason,) = reasons_of(second, second.start_snapshot())
        assert reason == f"{REASON_ABSENT} at bank:b"
    finally:
        second.close()
        store.close()


def test_a_reconnecting_agent_continues_its_numbering_so_events_lost_with_the_stream_show(
    coordinator: Coordinator,
) -> None:
    a = register(coordinator, "bank:a")
    epoch = coordinator.start_snapshot()
    send(coordinator, a, local(epoch, "bank:a", {"bank:a": 1}), 1)
    coordinator.unregister(a)  # the stream broke after event 1; events 2 and 3 went down with it
    a = register(coordinator, "bank:a")
    assert a.last_seq == 1
    epoch = coordinator.start_snapshot()
    send(coordinator, a, local(epoch, "bank:a", {"bank:a": 2}), 4)
    assert f"{REASON_EVENTS_LOST} at bank:a" in reasons_of(coordinator, epoch)


def test_a_silent_stream_is_dropped_so_that_snapshots_do_not_wait_for_it(coordinator: Coordinator) -> None:
    a, b = register(coordinator, "bank:a"), register(coordinator, "bank:b")
    epoch = coordinator.start_snapshot()
    b.last_seen -= coordinator.silent_after + 1  # a half-open stream: nothing for too long
    coordinator.expire()
    assert [s.process for s in coordinator.sessions()] == ["bank:a"]
    assert b.closed and b.outbox.get_nowait() is not None  # its stream is ended (after the queued orders)
    assert any("bank:b" in reason for reason in reasons_of(coordinator, epoch))
    assert [process for process, _, _ in coordinator.absent()] == ["bank:b"]
    assert not a.closed


def test_drops_before_an_agent_met_this_collector_do_not_spoil_its_snapshots(
    coordinator: Coordinator,
) -> None:
    # An agent that dropped 7 events while its previous collector was away registers here.
    old_hand = coordinator.register(Registration("bank:a", "bank", dropped=7))
    epoch = coordinator.start_snapshot()
    coordinator.on_message(old_hand, 0, Heartbeat(dropped=7))
    assert coordinator.running() == (epoch,)  # no new drop: the snapshot goes on
    coordinator.on_message(old_hand, 0, Heartbeat(dropped=8))
    assert f"{REASON_EVENTS_LOST} at bank:a" in reasons_of(coordinator, epoch)


def _pool_deadlock_pieces(epoch: int, capacity: int) -> tuple[LocalSnapshot, LocalSnapshot]:
    """till's worker runs Pay, which calls fraud (call 5); fraud's Screen calls till back (call 7),
    which till has queued for a worker: a deadlock when till's pool has one worker."""
    pay = TaskView(
        1,
        "server",
        "/shop.Till/Pay",
        "",
        0,
        "",
        "",
        (),
        None,
        (OutboundCall(5, "/shop.Fraud/Screen", "shop:f"),),
        "server-1",
    )
    lookup = TaskView(
        2, "server", "/shop.Till/Lookup", "shop:f", 7, "", "", (), None, (), "server-1", queued=True
    )
    screen = TaskView(
        3,
        "server",
        "/shop.Fraud/Screen",
        "shop:t",
        5,
        "",
        "",
        (),
        None,
        (OutboundCall(7, "/shop.Till/Lookup", ""),),
        "server-1",
    )
    till = local(
        epoch,
        "shop:t",
        {"shop:t": 3},
        tasks=(pay, lookup),
        open_calls=(OpenCall(5, "/shop.Fraud/Screen", "shop:f"),),
        worker_pools={"server-1": capacity},
    )
    fraud = local(
        epoch,
        "shop:f",
        {"shop:f": 2, "shop:t": 2},
        tasks=(screen,),
        open_calls=(OpenCall(7, "/shop.Till/Lookup"),),
        answering=(Answering("shop:t", 5),),
        worker_pools={"server-1": 4},
    )
    return till, fraud


@pytest.mark.parametrize("capacity", [1, 2])
def test_a_snapshot_waiting_only_on_calls_queued_behind_deadlocked_workers_ends_at_once(
    coordinator: Coordinator, capacity: int
) -> None:
    """With one worker the queued call can never run: the cut ends before its timeout. With two it
    may, and the cut waits for its request's record, which makes it COMPLETE."""
    t, f = register(coordinator, "shop:t"), register(coordinator, "shop:f")
    epoch = coordinator.start_snapshot()
    till, fraud = _pool_deadlock_pieces(epoch, capacity)
    send(coordinator, t, till, 1)
    send(coordinator, f, fraud, 1)
    send(coordinator, t, Flushed(epoch, "shop:t", 1), 2)
    send(coordinator, f, Flushed(epoch, "shop:f", 1), 2)
    coordinator.expire()
    if capacity == 1:
        cut = coordinator.wait(epoch, 10.0)
        assert cut is not None and cut.status == "INCOMPLETE"
        assert any("queued for a worker at their server" in reason for reason in cut.reasons), cut.reasons
        assert coordinator.stats().finished_early == 1
        return
    assert coordinator.running() == (epoch,)
    record = ChannelRecord(epoch, "shop:f", "shop:t", "null", MsgKey("shop:f", 7, 0, REQUEST))
    send(coordinator, t, record, 3)
    cut = coordinator.wait(epoch, 10.0)
    assert cut is not None and cut.status == "COMPLETE", cut.reasons
    assert coordinator.stats().finished_early == 0
