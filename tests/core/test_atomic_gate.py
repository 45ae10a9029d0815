"""The snapshot lock behind ``atomic()`` as a lock of the wait-for graph.

The gate knows which task holds the outermost block and which wait to enter
one; a snapshot that cannot enter within ``atomic_timeout`` is taken without
the application state but with those tasks, so that a handler waiting inside
``atomic()`` on a call back into its own process is a deadlock of the cut,
not a silent hang.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType

import pytest
from polling import TIMEOUT, wait_until

from cutwatch.collector._records import cut_from_stored, stored_from_assembled
from cutwatch.core import (
    ATOMIC_LOCK,
    REQUEST,
    AssembledCut,
    ChannelPeer,
    ChannelRecord,
    Cut,
    CutAssembler,
    Flushed,
    Inbound,
    LocalSnapshot,
    ProcessCore,
    SnapshotEvent,
    TaskRegistry,
    TaskView,
)
from cutwatch.core._gate import SnapshotGate
from cutwatch.predicates import find_deadlocks, format_deadlocks
from cutwatch.proto import event_from_message, event_to_message

OUTER = "/svc.S/Outer"
INNER = "/svc.S/Inner"


class CountingLock:
    """A mutex that counts how often it is taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> bool:
        self.taken += 1
        return self._lock.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.__exit__(kind, exc, tb)


def nothing() -> None:
    pass


@contextmanager
def running(target: Callable[[], None]) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(TIMEOUT)


# The gate alone -----------------------------------------------------------------------------------


def test_an_uncontended_block_records_its_holder_without_the_waiters_mutex() -> None:
    tasks = TaskRegistry()
    gate = SnapshotGate(1.0, tasks)
    counting = CountingLock()
    gate._mutex = counting  # type: ignore[assignment]
    task = tasks.start("server", method=OUTER)
    token = tasks.bind(task)
    try:
        with gate.atomic(nothing), gate.atomic(nothing):
            assert gate._holder is task
        assert counting.taken == 0
        assert gate._holder is None
        with gate.atomic(nothing):
            occupants = gate.occupants()
    finally:
        tasks.unbind(token, task)
    assert occupants.holder is not None and occupants.holder.task_id == task.task_id
    assert occupants.holder.held_locks == (ATOMIC_LOCK,)
    assert occupants.waiters == ()
    assert gate.occupants().holder is None  # the block is over


def test_a_thread_waiting_to_enter_is_listed_with_its_task_until_it_holds_the_gate() -> None:
    tasks = TaskRegistry()
    gate = SnapshotGate(1.0, tasks)
    inside, leave, entered = threading.Event(), threading.Event(), threading.Event()
    holder = tasks.start("server", method=OUTER)
    waiter = tasks.start("server", method=INNER)

    def hold() -> None:
        tasks.bind(holder)
        with gate.atomic(nothing):
            inside.set()
            leave.wait(TIMEOUT)

    def wait_to_enter() -> None:
        tasks.bind(waiter)
        with gate.atomic(nothing):
            entered.set()
            leave.wait(TIMEOUT)

    try:
        with running(hold):
            assert inside.wait(TIMEOUT)
            with running(wait_to_enter):
                occupants = wait_until(lambda: (o := gate.occupants()).waiters and o, "a waiter")
                assert occupants.holder is not None and occupants.holder.task_id == holder.task_id
                assert [w.task_id for w in occupants.waiters] == [waiter.task_id]
                assert occupants.waiters[0].waiting_lock == ATOMIC_LOCK
                marked = {t.task_id: t for t in occupants.tasks}
                assert marked[holder.task_id].held_locks == (ATOMIC_LOCK,)
                assert marked[waiter.task_id].waiting_lock == ATOMIC_LOCK
                assert {t.task_id: t for t in tasks.views()}[
                    waiter.task_id
                ].waiting_lock is None  # only a view
                leave.set()
                assert entered.wait(TIMEOUT)
    finally:
        leave.set()
    assert gate._waiters == {}
    assert gate.occupants().holder is None


def test_an_application_thread_waiting_to_enter_gets_a_task_that_goes_once_it_is_idle() -> None:
    tasks = TaskRegistry()
    gate = SnapshotGate(1.0, tasks)
    inside, leave, entered = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with gate.atomic(nothing):
            inside.set()
            leave.wait(TIMEOUT)

    def wait_to_enter() -> None:
        with gate.atomic(nothing):
            entered.set()

    try:
        with running(hold):
            assert inside.wait(TIMEOUT)
            assert gate.occupants().holder is None  # a thread without a task: nobody known
            with running(wait_to_enter):
                occupants = wait_until(lambda: (o := gate.occupants()).waiters and o, "a waiter")
                assert occupants.waiters[0].kind == "app"
                leave.set()
                assert entered.wait(TIMEOUT)
    finally:
        leave.set()
    assert len(tasks) == 0


# A handler inside atomic() that calls its own process ----------------------------------------------


@dataclass
class SelfCall:
    """Process p's handler of ``OUTER`` waits, inside ``atomic()``, on its call ``INNER`` to p itself,
    whose handler waits to enter ``atomic()``; c made the outer call. ``release`` ends the wait as a
    deadline would."""

    client: ProcessCore
    server: ProcessCore
    events: dict[str, list[SnapshotEvent]]
    release: threading.Event = field(default_factory=threading.Event)
    calling: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    inner_stamp: bytes = b""

    def start(self) -> None:
        pool = self.server.register_pool(4)
        started = self.client.begin_call(OUTER, ChannelPeer())
        assert started is not None
        stamp = started[1]

        def outer() -> None:
            inbound = self.server.begin_handler(OUTER, stamp, 0, pool, '"outer"')
            assert isinstance(inbound, Inbound)
            with self.server.atomic():
                peer = ChannelPeer()
                peer.server = self.server.process_id
                started = self.server.begin_call(INNER, peer)
                assert started is not None
                call, self.inner_stamp = started
                self.calling.set()
                self.release.wait(TIMEOUT)  # blocked on the call, until its deadline
            self.server.end_call(call, None, failure="DEADLINE_EXCEEDED")
            self.server.end_handler(inbound, failed=True)

        def inner() -> None:
            assert self.calling.wait(TIMEOUT)
            inbound = self.server.begin_handler(INNER, self.inner_stamp, 0, pool, '"inner"')
            assert isinstance(inbound, Inbound)
            with self.server.atomic():
                pass
            self.server.end_handler(inbound)

        for target in (outer, inner):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        wait_until(lambda: self.server._gate.occupants().waiters, "the inner handler to wait for atomic()")

    def stop(self) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(TIMEOUT)

    def assemble(self, epoch: int) -> AssembledCut:
        """Cut ``epoch`` of both processes, with the flush rounds it asks for answered."""
        procs = {"c": self.client, "p": self.server}
        assembler = CutAssembler(epoch, ["c", "p"])
        pending = self.drain()
        while pending:
            for event in pending:
                assembler.add(event)
            due = assembler.next_flush()
            if due is not None:
                for proc in procs.values():
                    proc.flush(epoch, due[0], due[1])
            pending = self.drain()
        return assembler.finish()

    def drain(self) -> list[SnapshotEvent]:
        out = [*self.events["c"], *self.events["p"]]
        for events in self.events.values():
            events.clear()
        return out


@pytest.fixture
def self_call() -> Iterator[SelfCall]:
    events: dict[str, list[SnapshotEvent]] = {"c": [], "p": []}
    client = ProcessCore("c", emit=events["c"].extend)
    server = ProcessCore("p", emit=events["p"].extend, atomic_timeout=0.2)
    server.register_state("balance", lambda: 100)  # under the gate: before any block holds it
    scenario = SelfCall(client, server, events)
    try:
        scenario.start()
        yield scenario
    finally:
        scenario.stop()


def test_a_snapshot_past_a_stuck_block_has_the_tasks_and_no_state(self_call: SelfCall) -> None:
    self_call.server.take_snapshot(1)
    snap = next(e for e in self_call.events["p"] if isinstance(e, LocalSnapshot))
    assert snap.state == {}
    assert snap.state_missing == "an atomic() block held the snapshot lock for more than 0.2 s"
    tasks = {t.method: t for t in snap.tasks}
    assert tasks[OUTER].held_locks == (ATOMIC_LOCK,)
    assert [c.method for c in tasks[OUTER].outbound] == [INNER]
    assert tasks[INNER].waiting_lock == ATOMIC_LOCK and tasks[INNER].held_locks == ()
    # Neither request is consumed at the cut (the outer one is, at its block's end): both in transit.
    records = [e for e in self_call.events["p"] if isinstance(e, ChannelRecord)]
    assert sorted((r.sender, r.method, r.kind) for r in records) == [
        ("c", OUTER, REQUEST),
        ("p", INNER, REQUEST),
    ]
    stats = self_call.server.stats()
    assert (stats.snapshots_taken, stats.snapshots_without_state, stats.snapshots_skipped) == (1, 1, 0)
    back = event_from_message(event_to_message(snap, 1), "p")
    assert isinstance(back, LocalSnapshot) and back.state_missing == snap.state_missing
    assert {t.method: t for t in back.tasks}[INNER].waiting_lock == ATOMIC_LOCK


def test_the_cut_is_incomplete_and_names_the_deadlock_through_the_snapshot_lock(self_call: SelfCall) -> None:
    self_call.client.take_snapshot(1)
    self_call.server.take_snapshot(1)
    assembled = self_call.assemble(1)
    assert assembled.status == "INCOMPLETE"
    assert assembled.reasons == (
        "state of p not captured: an atomic() block held the snapshot lock for more than 0.2 s",
    )
    assert assembled.unsettled == () and assembled.missing == ()
    cut = cut_from_stored(stored_from_assembled(assembled, 10.0, 11.0))
    assert cut.state_of("p") == {}
    assert {t.method for t in cut.tasks["p"]} == {OUTER, INNER}
    deadlocks = find_deadlocks(cut)
    assert len(deadlocks) == 1
    deadlock = deadlocks[0]
    assert {(t.process, t.method, t.on_cycle) for t in deadlock.tasks} == {
        ("c", "", False),  # the caller of OUTER, stuck behind the cycle
        ("p", OUTER, True),
        ("p", INNER, True),
    }
    chain = deadlock.chain()
    assert "waits for the atomic() snapshot lock held by" in chain and f"calls {INNER}" in chain
    waits = {t.method: t.waits_for[0] for t in deadlock.tasks}
    assert waits[INNER].kind == "lock" and waits[INNER].lock == ATOMIC_LOCK
    assert waits[INNER].text.startswith("the atomic() snapshot lock at p, held by p#")
    text = format_deadlocks(deadlocks)
    assert "holds: the atomic() snapshot lock" in text


def test_the_stuck_block_is_logged_once_per_holder(
    self_call: SelfCall, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cutwatch.agent"):
        self_call.server.take_snapshot(1)
        self_call.server.take_snapshot(2)
    stuck = [r.getMessage() for r in caplog.records if "has held atomic()" in r.getMessage()]
    assert len(stuck) == 1
    assert OUTER in stuck[0] and f"{INNER} (call 1 to p)" in stuck[0]
    assert f"1 task of this process waits to enter atomic(): {INNER}" in stuck[0]


def test_once_the_block_ends_the_next_snapshot_has_the_state_again(self_call: SelfCall) -> None:
    self_call.server.take_snapshot(1)
    self_call.stop()
    self_call.server.take_snapshot(2)
    snaps = [e for e in self_call.events["p"] if isinstance(e, LocalSnapshot)]
    assert [(s.epoch, s.state, bool(s.state_missing)) for s in snaps] == [
        (1, {}, True),
        (2, {"balance": 100}, False),
    ]
    assert all(ATOMIC_LOCK not in t.held_locks and t.waiting_lock is None for t in snaps[1].tasks)


def test_an_application_thread_that_calls_inside_atomic_holds_the_gate_as_its_task() -> None:
    core = ProcessCore("p", atomic_timeout=0.2)
    inside, leave = threading.Event(), threading.Event()

    def block() -> None:
        with core.atomic():
            assert core.begin_call(INNER, ChannelPeer()) is not None
            inside.set()
            leave.wait(TIMEOUT)

    try:
        with running(block):
            assert inside.wait(TIMEOUT)
            holder = core._gate.occupants().holder
            assert holder is not None and holder.kind == "app"
            assert [c.method for c in holder.outbound] == [INNER]
            leave.set()
    finally:
        leave.set()


def test_predicates_on_a_cut_without_a_state_do_not_fail() -> None:
    """What the collector stores for a process whose state was not captured reads as an empty state."""
    assembler = CutAssembler(1, ["p"])
    snap = LocalSnapshot(1, "p", ProcessCore("p").clock, {}, (), state_missing="why")
    assembler.add(snap)
    assert assembler.status() == "PENDING"  # the flush round is still due
    assert assembler.next_flush() == (1, ())
    assembler.add(Flushed(1, "p", 1))
    assert assembler.status() == "INCOMPLETE"
    cut: Cut = cut_from_stored(stored_from_assembled(assembler.finish(), 1.0, 2.0))
    assert cut.reasons == ("state of p not captured: why",)
    assert cut.state_of("p") == {} and cut.services() == {"p": ["p"]}
    assert find_deadlocks(cut) == []
    assert isinstance(cut.tasks["p"], tuple) and all(isinstance(t, TaskView) for t in cut.tasks["p"])
