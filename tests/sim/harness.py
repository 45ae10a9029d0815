"""A seeded, deterministic simulation of processes, a non-FIFO network and a snapshot collector.

Every choice comes from one ``random.Random``: a seeded one for fixed runs,
or hypothesis' ``st.randoms(use_true_random=False)`` so that hypothesis
explores schedules and shrinks failures. The network is a multiset: any
application or control message may be delivered next. Reports to the
collector travel in order per process, as on an agent's one gRPC stream,
but the streams of different processes interleave arbitrarily. Delivery
and consumption are separate steps, like a handler that has not reached
``atomic()`` yet. The workload passes tokens over calls: a
transfer debits and sends a request in one atomic step; consuming the
request credits the amount; the server later answers with a response that
refunds part of its balance (debit and send in one step), credited when
consumed. Time is the step counter.

The network may also lose a message for good (``lose_percent``): the caller
notices some steps later and reports the call failed. Servers in
``uninstrumented`` are not participants: they apply requests without any
bookkeeping, never call anyone, and answer without a stamp, so the caller
reports the call unstamped when the answer arrives. Tokens they receive
leave the system and their refunds enter it when consumed.

Besides running the world, the simulation keeps the ground truth the tests
compare every cut with: the tokens a cut must hold, the messages in transit
and the calls no participant can settle (:meth:`Simulation.expected_unsettled`).

:class:`Cluster` puts the same participants under the collector's own
``Coordinator`` and a SQLite store, and adds what happens to a running system:
processes crash or shut down, streams to the collector break or fall silent,
the collector restarts (cleanly or not) and agents reconnect, each agent's
stream is in order both ways, and the coordinator's clock is the step counter
(:func:`stepped_time`). It has no scheduler: each step is a method that a
hypothesis state machine calls, and its ground truth (:meth:`Cluster.truth`)
covers processes outside a cut, requests applied twice and lost messages.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from queue import Empty
from unittest import mock

from cutwatch.collector import SqliteCutStore, StoredCut
from cutwatch.collector import _coordinator as _coordinator_module
from cutwatch.collector._coordinator import AgentSession, Coordinator
from cutwatch.core import (
    OUTCOME_FAILED,
    OUTCOME_UNSTAMPED,
    REQUEST,
    RESPONSE,
    AssembledCut,
    Capture,
    ChannelRecord,
    CutAssembler,
    Delivery,
    Flushed,
    LocalSnapshot,
    MsgKey,
    SnapshotEvent,
    SnapshotParticipant,
    VectorClock,
)
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import event_to_message

CallMsg = tuple[str, str, int]
"""A message's identity in the ground truth: (kind, calling process, call id)."""
CallRef = tuple[str, int]
"""A call's identity: (calling process, call id)."""

METHOD = "/bank.Bank/Transfer"
FAILURE = "DEADLINE_EXCEEDED"
UNSTAMPED = -1
"""The epoch of a message without a stamp (an uninstrumented server's answer)."""


@dataclass(frozen=True)
class SimConfig:
    """One simulated world. ``stalled`` channels never deliver; ``lazy`` processes never consume.

    ``balanced`` addresses each request to a random group of servers, one of
    which the network picks at delivery. ``lose_percent`` of first deliveries
    are lost instead; the caller notices 1..``notice_delay`` steps later, and
    its participant keeps the failed call open for ``abandoned_grace`` steps.
    ``uninstrumented`` processes serve without a participant; ``lazy`` applies
    to instrumented processes only. ``report_deadline`` bounds how many steps
    a report takes to reach the collector (unbounded when None); correctness
    must not depend on it.

    ``consumption_rule=False`` models the bug the rule prevents: a message
    counts as consumed at delivery while its credit is applied later.
    ``honour_stamp_epoch=False`` models an agent that ignores the epoch in
    stamps (no snapshot before delivering a post-cut message).
    ``flush_barrier=False`` models a collector that completes a cut without
    waiting for the participants' flush markers.
    """

    n: int = 3
    steps: int = 100
    initial: int = 100
    max_epochs: int = 4
    snapshot_percent: int = 5
    duplicate_percent: int = 0
    lose_percent: int = 0
    notice_delay: int = 20
    abandoned_grace: int = 30
    consumption_rule: bool = True
    honour_stamp_epoch: bool = True
    stalled: frozenset[tuple[int, int]] = frozenset()
    lazy: frozenset[int] = frozenset()
    uninstrumented: frozenset[int] = frozenset()
    max_records: int = 10_000
    max_open_epochs: int = 8
    balanced: bool = False
    report_deadline: int | None = None
    flush_barrier: bool = True


@dataclass(eq=False)
class AppMsg:
    """A request (``receiver`` empty until the network picks one of ``targets``) or a response."""

    sender: str
    targets: tuple[str, ...]
    amount: int
    epoch: int
    clock: VectorClock
    key: MsgKey
    receiver: str = ""
    delivered: bool = False
    lost: bool = False

    @property
    def stamped(self) -> bool:
        return self.epoch != UNSTAMPED

    @property
    def caller(self) -> str:
        return self.sender if self.key.kind == REQUEST else self.receiver

    @property
    def truth(self) -> CallMsg:
        return (self.key.kind, self.caller, self.key.call_id)


@dataclass
class CallTruth:
    """What really happened to one call.

    ``ended_epoch`` is the caller's epoch when the call ended for its
    participant (stamped answer consumed, unstamped answer received, or
    failure noticed at step ``failed_at``); ``blocked`` lists (kind, epoch) of
    its messages that were lost or stuck.
    """

    caller: str
    call_id: int
    sent_epoch: int
    ended_epoch: int | None = None
    failed_at: int | None = None
    blocked: list[tuple[str, int]] = field(default_factory=list)


@dataclass(eq=False)
class Control:
    receiver: str
    epoch: int
    close: bool = False
    flush: bool = False


@dataclass(eq=False)
class Report:
    event: SnapshotEvent
    sent_at: int


Item = AppMsg | Control


@dataclass(eq=False)
class Proc:
    """An instrumented process. ``waiting`` holds deliveries (None for an unstamped answer)."""

    pid: str
    part: SnapshotParticipant
    balance: int
    clock: VectorClock = field(default_factory=VectorClock)
    waiting: list[tuple[Delivery | None, AppMsg]] = field(default_factory=list)
    replies: list[tuple[Delivery | None, AppMsg]] = field(default_factory=list)
    calls: int = 0

    def capture(self) -> Capture:
        """The snapshot event ticks the clock; state is the balance."""
        self.clock = self.clock.tick(self.pid)
        return Capture(self.clock, self.balance)


@dataclass(eq=False)
class External:
    """An uninstrumented server: applies requests at once, answers later without a stamp."""

    pid: str
    balance: int
    replies: list[tuple[Delivery | None, AppMsg]] = field(default_factory=list)


@dataclass
class SimResult:
    config: SimConfig
    participants: tuple[str, ...]
    total: int
    cuts: dict[int, AssembledCut]
    started: int
    duplicates_injected: int
    duplicates_reported: int
    expected_in_transit: dict[int, set[CallMsg]]
    expected_tokens: dict[int, int]
    expected_unsettled: dict[int, set[CallRef]]
    failed_calls: set[CallRef]
    stuck: list[AppMsg]
    lost: list[AppMsg]
    balanced_deliveries: int
    unstamped_calls: int


def record_truth(record: ChannelRecord) -> CallMsg:
    """The ground-truth identity of a recorded message."""
    return (record.kind, record.caller, record.msg_key.call_id)


def token_sum(cut: AssembledCut) -> int:
    """Balances in the cut's states plus the amounts recorded in transit."""
    total = 0
    for state in cut.states.values():
        assert isinstance(state, int), state
        total += state
    return total + sum(int(json.loads(record.payload_json)) for record in cut.in_transit)


def conserved(cut: AssembledCut, result: SimResult) -> bool:
    """Balances plus tokens in transit equal what the participants hold by the ground truth."""
    return token_sum(cut) == result.expected_tokens[cut.epoch]


class Simulation:
    """Runs one world to the end; :meth:`run` returns what the collector assembled."""

    def __init__(self, config: SimConfig, rng: random.Random) -> None:
        if len(config.uninstrumented) >= config.n:
            raise ValueError("at least one process must be instrumented")
        self.cfg = config
        self.rng = rng
        self.procs = [
            Proc(
                f"p{i}",
                SnapshotParticipant(
                    f"p{i}",
                    max_records=config.max_records,
                    max_open_epochs=config.max_open_epochs,
                    abandoned_grace=config.abandoned_grace,
                ),
                config.initial,
            )
            for i in range(config.n)
            if i not in config.uninstrumented
        ]
        self.externals = {f"p{i}": External(f"p{i}", config.initial) for i in sorted(config.uninstrumented)}
        self.by_pid = {proc.pid: proc for proc in self.procs}
        self.all_pids = [f"p{i}" for i in range(config.n)]
        self.network: list[Item] = []
        # Each process's stream to the collector: in order, at a pace of its own.
        self.reports: dict[str, deque[Report]] = {proc.pid: deque() for proc in self.procs}
        self.stuck: list[AppMsg] = []
        self.lost: list[AppMsg] = []
        self.assemblers: dict[int, CutAssembler] = {}
        self.cuts: dict[int, AssembledCut] = {}
        self.next_epoch = 1
        self.now = 0
        self.notices: list[tuple[int, str, int]] = []
        self.duplicates_injected = 0
        self.balanced_deliveries = 0
        self.unstamped_calls = 0
        self.stalled = {(f"p{a}", f"p{b}") for a, b in config.stalled}
        self.lazy = {f"p{i}" for i in config.lazy}
        # Ground truth: every stamped message, the receiver's epoch when it was counted consumed,
        # every call, when each process took each cut, and tokens crossing the system's border.
        self.messages: dict[CallMsg, AppMsg] = {}
        self.consumed_epoch: dict[CallMsg, int] = {}
        self.calls: dict[CallRef, CallTruth] = {}
        self.cut_at: dict[str, dict[int, int]] = {proc.pid: {} for proc in self.procs}
        self.outflow: list[tuple[int, int]] = []  # (request epoch, amount) of requests applied outside
        self.inflow: list[tuple[int, int]] = []  # (caller's epoch, amount) of unstamped refunds consumed

    # Driving ---------------------------------------------------------------------------
    def run(self) -> SimResult:
        for _ in range(self.cfg.steps):
            self._step(workload=True)
        while self._step(workload=False):
            pass
        for epoch, assembler in self.assemblers.items():
            if epoch not in self.cuts:
                self.cuts[epoch] = assembler.finish()
        return SimResult(
            config=self.cfg,
            participants=tuple(self.by_pid),
            total=self.cfg.initial * len(self.procs),
            cuts=dict(sorted(self.cuts.items())),
            started=self.next_epoch - 1,
            duplicates_injected=self.duplicates_injected,
            duplicates_reported=sum(proc.part.stats().duplicates for proc in self.procs),
            expected_in_transit={k: self.expected_in_transit(k) for k in self.cuts},
            expected_tokens={k: self.expected_tokens(k) for k in self.cuts},
            expected_unsettled={k: self.expected_unsettled(k) for k in self.cuts},
            failed_calls={ref for ref, call in self.calls.items() if call.failed_at is not None},
            stuck=self.stuck,
            lost=self.lost,
            balanced_deliveries=self.balanced_deliveries,
            unstamped_calls=self.unstamped_calls,
        )

    def _step(self, *, workload: bool) -> bool:
        """One scheduler step; False when nothing at all can happen (only when draining)."""
        self.now += 1
        self._deliver_overdue_reports()
        self._notice_failures()
        starting = workload and self.next_epoch <= self.cfg.max_epochs
        if starting and self.rng.randrange(100) < self.cfg.snapshot_percent:
            self._start_snapshot()
            return True
        consumers = [p for p in self.procs if p.waiting and p.pid not in self.lazy]
        responders: list[Proc | External] = [p for p in self.procs if p.replies]
        responders += [e for e in self.externals.values() if e.replies]
        options: list[str] = []
        if self.network:
            options += ["deliver"] * 4
        streams = [pid for pid, queue in self.reports.items() if queue]
        if streams:
            options += ["report"] * 2
        if consumers:
            options += ["consume"] * 2
        if responders:
            options += ["respond"] * 2
        if workload:
            options += ["transfer"] * 3
        if not options:
            if not self.notices:
                return False
            self.now = min(due for due, _, _ in self.notices)  # nothing else happens until then
            self._notice_failures()
            return True
        action = self.rng.choice(options)
        if action == "deliver":
            self._deliver(self.network.pop(self.rng.randrange(len(self.network))))
        elif action == "report":
            self._collect(self.reports[self.rng.choice(streams)].popleft().event)
        elif action == "consume":
            proc = self.rng.choice(consumers)
            self._consume(proc, proc.waiting.pop(self.rng.randrange(len(proc.waiting))))
        elif action == "respond":
            server = self.rng.choice(responders)
            self._respond(server, *server.replies.pop(self.rng.randrange(len(server.replies))))
        else:
            self._transfer()
        return True

    # Application --------------------------------------------------------------------------
    def _transfer(self) -> None:
        proc = self.rng.choice(self.procs)
        if proc.balance <= 0 or self.cfg.n < 2:
            return
        others = [pid for pid in self.all_pids if pid != proc.pid]
        if self.cfg.balanced:
            targets = tuple(self.rng.sample(others, self.rng.randint(1, len(others))))
        else:
            targets = (self.rng.choice(others),)
        amount = self.rng.randint(1, proc.balance)
        # Debit and send form one atomic step (agent.atomic()); the server is not known.
        proc.balance -= amount
        proc.clock = proc.clock.tick(proc.pid)
        proc.calls += 1
        epoch = proc.part.on_call(proc.calls, METHOD, "|".join(targets))
        msg = AppMsg(proc.pid, targets, amount, epoch, proc.clock, MsgKey(proc.pid, proc.calls, 1, REQUEST))
        self.calls[(proc.pid, proc.calls)] = CallTruth(proc.pid, proc.calls, epoch)
        self.messages[msg.truth] = msg
        self.network.append(msg)
        self._flush(proc)

    def _respond(self, server: Proc | External, delivery: Delivery | None, request: AppMsg) -> None:
        """The handler's answer: refund part of the balance to the caller, debit and send at once."""
        refund = self.rng.randint(0, max(server.balance, 0))
        server.balance -= refund
        key = MsgKey(server.pid, request.key.call_id, 1, RESPONSE)
        caller = request.sender
        if isinstance(server, External):
            self.network.append(AppMsg(server.pid, (caller,), refund, UNSTAMPED, VectorClock(), key, caller))
            return
        assert delivery is not None
        server.clock = server.clock.tick(server.pid)
        epoch = server.part.on_reply(delivery)
        msg = AppMsg(server.pid, (caller,), refund, epoch, server.clock, key, receiver=caller)
        self.messages[msg.truth] = msg
        self.network.append(msg)
        self._flush(server)

    def _deliver_app(self, msg: AppMsg) -> None:
        if not msg.delivered and self.rng.randrange(100) < self.cfg.lose_percent:
            self._lose(msg)
            return
        if not msg.receiver:
            msg.receiver = self.rng.choice(msg.targets)  # the load balancer's pick
            self.balanced_deliveries += len(msg.targets) > 1
        if (msg.sender, msg.receiver) in self.stalled:
            self.stuck.append(msg)
            self._call(msg).blocked.append((msg.key.kind, msg.epoch))
            return
        first = not msg.delivered
        msg.delivered = True
        external = self.externals.get(msg.receiver)
        if external is not None:
            # Applied at once, no bookkeeping: the tokens leave the participants.
            external.balance += msg.amount
            self.outflow.append((msg.epoch, msg.amount))
            external.replies.append((None, msg))
            return
        proc = self.by_pid[msg.receiver]
        if not msg.stamped:
            # The caller's interceptor sees an answer without a stamp: nothing of the call is recordable.
            self.unstamped_calls += 1
            proc.part.on_call_ended(msg.key.call_id, OUTCOME_UNSTAMPED, now=self.now)
            self._call(msg).ended_epoch = proc.part.epoch
            proc.clock = proc.clock.tick(proc.pid)
            proc.waiting.append((None, msg))
            self._flush(proc)
            return
        stamp_epoch = msg.epoch if self.cfg.honour_stamp_epoch else 0
        payload = json.dumps(msg.amount)
        before = proc.part.epoch
        delivery = proc.part.on_deliver(
            msg.sender, stamp_epoch, payload, msg.key, proc.capture, method=METHOD, now=self.now
        )
        self._note_cuts(proc, before)
        proc.clock = proc.clock.merge(msg.clock).tick(proc.pid)
        if not self.cfg.consumption_rule:
            self._count_consumed(proc, delivery)
        proc.waiting.append((delivery, msg))
        if first and self.rng.randrange(100) < self.cfg.duplicate_percent:
            # The transport repeats the message to the same process (a retry elsewhere is not modelled).
            self.duplicates_injected += 1
            self.network.append(msg)
        self._flush(proc)

    def _lose(self, msg: AppMsg) -> None:
        """Gone for good; the caller notices later, as a deadline would."""
        msg.lost = True
        self.lost.append(msg)
        self._call(msg).blocked.append((msg.key.kind, msg.epoch))
        due = self.now + self.rng.randint(1, self.cfg.notice_delay)
        self.notices.append((due, msg.caller, msg.key.call_id))

    def _notice_failures(self) -> None:
        due = [notice for notice in self.notices if notice[0] <= self.now]
        if not due:
            return
        self.notices = [notice for notice in self.notices if notice[0] > self.now]
        for _, caller, call_id in due:
            proc = self.by_pid[caller]
            proc.part.on_call_ended(call_id, OUTCOME_FAILED, FAILURE, now=self.now)
            call = self.calls[(caller, call_id)]
            call.ended_epoch, call.failed_at = proc.part.epoch, self.now
            self._flush(proc)

    def _consume(self, proc: Proc, waiting: tuple[Delivery | None, AppMsg]) -> None:
        delivery, msg = waiting
        if delivery is None:  # an unstamped refund: the tokens enter the participants now
            proc.balance += msg.amount
            self.inflow.append((proc.part.epoch, msg.amount))
        else:
            if self.cfg.consumption_rule:
                self._count_consumed(proc, delivery)
            if not delivery.duplicate:  # the handler is idempotent per call id
                proc.balance += msg.amount
                if msg.key.kind == REQUEST:
                    proc.replies.append((delivery, msg))
        proc.clock = proc.clock.tick(proc.pid)
        self._flush(proc)

    def _count_consumed(self, proc: Proc, delivery: Delivery) -> None:
        proc.part.on_consume(delivery)
        if not delivery.duplicate:
            kind = delivery.msg_key.kind
            caller = delivery.sender if kind == REQUEST else proc.pid
            self.consumed_epoch[(kind, caller, delivery.msg_key.call_id)] = proc.part.epoch
            if kind == RESPONSE:
                self.calls[(caller, delivery.msg_key.call_id)].ended_epoch = proc.part.epoch

    def _call(self, msg: AppMsg) -> CallTruth:
        return self.calls[(msg.caller, msg.key.call_id)]

    # Snapshot protocol ------------------------------------------------------------------------
    def _start_snapshot(self) -> None:
        epoch = self.next_epoch
        self.next_epoch += 1
        self.assemblers[epoch] = CutAssembler(epoch, self.by_pid)
        self.network.extend(Control(proc.pid, epoch) for proc in self.procs)

    def _deliver(self, item: Item) -> None:
        if isinstance(item, AppMsg):
            self._deliver_app(item)
        elif isinstance(item, Control):
            proc = self.by_pid[item.receiver]
            if item.close:
                proc.part.close_epoch(item.epoch)
            elif item.flush:
                proc.part.flush(item.epoch)
            elif item.epoch > proc.part.epoch:
                before = proc.part.epoch
                proc.part.take_snapshot(item.epoch, proc.capture(), now=self.now)
                self._note_cuts(proc, before)
            self._flush(proc)

    def _note_cuts(self, proc: Proc, before: int) -> None:
        for epoch in range(before + 1, proc.part.epoch + 1):
            self.cut_at[proc.pid][epoch] = self.now

    def _flush(self, proc: Proc) -> None:
        self.reports[proc.pid].extend(Report(event, self.now) for event in proc.part.drain())

    def _deliver_overdue_reports(self) -> None:
        """With ``report_deadline``, every report reaches the collector that many steps after it was sent."""
        deadline = self.cfg.report_deadline
        if deadline is None:
            return
        for queue in self.reports.values():
            while queue and self.now - queue[0].sent_at >= deadline:
                self._collect(queue.popleft().event)

    def _collect(self, event: SnapshotEvent) -> None:
        if event.epoch in self.cuts:
            return  # finished already: late pieces are ignored
        assembler = self.assemblers[event.epoch]
        assembler.add(event)
        if not self.cfg.flush_barrier and isinstance(event, LocalSnapshot):
            assembler.add(Flushed(event.epoch, event.process))
        if assembler.flush_due():
            self.network.extend(Control(pid, event.epoch, flush=True) for pid in assembler.participants)
        if assembler.status() != "PENDING":
            self.cuts[event.epoch] = assembler.finish()
            self.network.extend(Control(proc.pid, event.epoch, close=True) for proc in self.procs)

    # Ground truth -------------------------------------------------------------------------------
    def expected_in_transit(self, k: int) -> set[CallMsg]:
        """Stamped messages between participants, sent before the sender's cut k, not lost, and not
        consumed before the receiver's cut k."""
        return {
            key
            for key, msg in self.messages.items()
            if msg.epoch < k
            and not msg.lost
            and msg.receiver not in self.externals
            and self.consumed_epoch.get(key, k) >= k
        }

    def expected_tokens(self, k: int) -> int:
        """What cut k must hold: the tokens minted, less those lost or paid outside before the
        senders' cuts, plus the refunds from outside consumed before the callers' cuts."""
        lost = sum(msg.amount for msg in self.lost if msg.stamped and msg.epoch < k)
        out = sum(amount for epoch, amount in self.outflow if epoch < k)
        into = sum(amount for epoch, amount in self.inflow if epoch < k)
        return self.cfg.initial * len(self.procs) - lost - out + into

    def open_at_cut(self, call: CallTruth, k: int) -> bool:
        """Whether the call is among its caller's open calls at the caller's cut k.

        Sent before the cut and not ended before it, or failed before it less
        than the grace earlier.
        """
        if call.sent_epoch >= k:
            return False
        if call.ended_epoch is None or call.ended_epoch >= k:
            return True
        if call.failed_at is None:
            return False
        cut_at = self.cut_at[call.caller].get(k)
        return cut_at is not None and cut_at - call.failed_at < self.cfg.abandoned_grace

    def expected_unsettled(self, k: int) -> set[CallRef]:
        """Calls open at their caller's cut k that no participant can settle.

        A call is settled by a record of its request, of its response, the
        server still answering it, or an unstamped answer; none of these
        exists when its request never arrived, or when its answer, sent before
        the server's cut k (or unstamped), never arrived.
        """
        return {
            (call.caller, call.call_id)
            for call in self.calls.values()
            if call.blocked
            and self.open_at_cut(call, k)
            and any(kind == REQUEST or epoch < k for kind, epoch in call.blocked)
        }


def simulate(config: SimConfig, rng: random.Random) -> SimResult:
    return Simulation(config, rng).run()


# A cluster under the real collector ------------------------------------------------------------
# The world above drives CutAssembler directly. The cluster below runs the collector's own
# Coordinator (and a SQLite store in memory) and adds what a running system does to it: processes
# crash, streams break or fall silent, the collector restarts, agents reconnect, and requests are
# repeated by the transport. It has no scheduler of its own: every step is a method that a
# hypothesis state machine (or a seeded walk) calls.

POOL = "server-1"
POOL_SIZE = 2
SERVICE = "bank"
UNAVAILABLE = "UNAVAILABLE"
MAX_RUNNING = 3


class StepClock:
    """The collector's clock in a cluster: ``monotonic()`` is the step counter, so that deadlines and
    the rejoin grace are counted in steps; ``time()`` (timestamps of stored cuts) is the real one."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    def time_ns(self) -> int:
        return time.time_ns()


CLOCK = StepClock()


@contextmanager
def stepped_time() -> Iterator[StepClock]:
    """Run the collector's coordinator on :data:`CLOCK` (a :class:`Cluster` requires it)."""
    with mock.patch.object(_coordinator_module, "time", CLOCK):
        yield CLOCK


@dataclass(eq=False)
class Message:
    """One application message, as the ground truth knows it.

    ``epoch`` is the sender's epoch at the send (the debit is in the same
    atomic step), ``applied`` the receiver's epoch when its application
    applied it (the credit), ``lost`` whether the network lost it or it went
    to a process that was dead by then.
    """

    sender: str
    receiver: str
    amount: int
    epoch: int
    clock: VectorClock
    key: MsgKey
    applied: int | None = None
    lost: bool = False
    delivered: bool = False

    @property
    def caller(self) -> str:
        return self.sender if self.key.kind == REQUEST else self.receiver


@dataclass(eq=False)
class Packet:
    """One copy of a message on the network.

    ``copy`` marks a transport repeat of a request that was delivered
    already (same call id and attempt, so the same :class:`MsgKey`);
    ``applies`` says whether the handler it reaches applies it again (a
    handler that is not idempotent) or recognises the call and does nothing.
    """

    msg: Message
    copy: bool = False
    applies: bool = False


@dataclass(eq=False)
class Handler:
    """A server task from delivery until it answers; a copy's handler ends when it has run."""

    task_id: int
    delivery: Delivery
    packet: Packet
    consumed: bool = False


@dataclass(eq=False)
class Node:
    """An instrumented process: its participant, balance and tasks, and its stream to the collector.

    ``reports`` is the agent's queue of numbered events, sent in order while
    it has a ``session``; the collector's orders for it wait in the
    session's outbox, also in order.
    """

    pid: str
    part: SnapshotParticipant
    balance: int
    clock: VectorClock = field(default_factory=VectorClock)
    handlers: list[Handler] = field(default_factory=list)
    calls: dict[int, tuple[int, str]] = field(default_factory=dict)  # open call id -> (task id, target)
    next_call: int = 0
    next_task: int = 0
    alive: bool = True
    session: AgentSession | None = None
    registered: int = 0  # the epoch it registered with, last time
    heard: int = 0  # the step the collector last heard from it
    left: int = 0  # the step its last stream ended
    reports: deque[tuple[int, SnapshotEvent]] = field(default_factory=deque)
    seq: int = 0

    @property
    def connected(self) -> bool:
        return self.alive and self.session is not None and not self.session.closed

    def task_id(self) -> int:
        self.next_task += 1
        return self.next_task

    def tasks(self) -> list[dict[str, object]]:
        """What the agent would list at a cut: one app task per open call, one server task per handler."""
        tasks: list[dict[str, object]] = []
        for call_id, (task_id, target) in sorted(self.calls.items()):
            outbound = [{"call_id": call_id, "method": METHOD, "target": target, "blocking": True}]
            tasks.append(_task(task_id, "app", outbound=outbound))
        for handler in self.handlers:
            key = handler.delivery.msg_key
            tasks.append(_task(handler.task_id, "server", caller=key.sender, call_id=key.call_id))
        return tasks

    def capture(self) -> Capture:
        """The snapshot event ticks the clock; the state is the balance, as a state provider gives it."""
        self.clock = self.clock.tick(self.pid)
        return Capture(self.clock, {"balance": self.balance}, self.tasks(), {POOL: POOL_SIZE})


def _task(
    task_id: int,
    kind: str,
    *,
    caller: str = "",
    call_id: int = 0,
    outbound: list[dict[str, object]] | None = None,
) -> dict[str, object]:
    return {
        "task_id": task_id,
        "kind": kind,
        "method": METHOD if kind == "server" else "",
        "caller": caller,
        "call_id": call_id,
        "pool": POOL if kind == "server" else "",
        "trace_id": "",
        "span_id": "",
        "held_locks": [],
        "waiting_lock": None,
        "outbound": outbound or [],
    }


@dataclass(frozen=True)
class Run:
    """A snapshot as started: by which collector (``generation``), when, and who takes part.

    ``members`` are the agents registered at the start; ``absent`` the
    processes the collector still expected back then (their stream broke
    less than the rejoin grace before, or they were in the newest stored
    cut when the collector started); ``away`` the live processes that were
    not registered, with how many steps before their stream had ended.
    """

    epoch: int
    generation: int
    started: int
    members: frozenset[str]
    absent: frozenset[str] = frozenset()
    away: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class CutTruth:
    """What a COMPLETE cut must hold, computed when the collector finished it.

    ``in_transit`` counts (kind, caller, call id, sender, receiver, amount);
    ``receipts`` lists (sender, receiver, send epoch, sender's clock entry at the send) of every
    message between members that a member applied before its cut.
    """

    tokens: int
    in_transit: Counter[tuple[str, str, int, str, str, int]]
    receipts: tuple[tuple[str, str, int, int], ...]
    crossed: int
    """Messages that crossed the cut's border (from or to a process outside it) before the cut."""
    minted: int
    """Requests applied a second time before the cut."""


@dataclass(frozen=True)
class Finished:
    """A cut the collector stored, with the run it belongs to and the ground truth at that moment."""

    cut: StoredCut
    run: Run
    truth: CutTruth
    crashed: frozenset[str]
    """Members that had crashed when the cut was finished."""


class Cluster:
    """Processes with agents, a non-FIFO network and the real collector coordinator.

    ``consumption_rule=False`` counts a request consumed at delivery while its
    credit comes later (the bug the rule prevents); ``flush_barrier=False``
    hands the collector a flush marker right behind each local snapshot;
    ``honour_stamp_epoch=False`` delivers messages without looking at the
    epoch in their stamps (no local snapshot first). Every process registers
    and reads the collector's first order before anything else happens.
    """

    def __init__(
        self,
        n: int,
        initial: int,
        *,
        deadline: int = 30,
        grace: int = 10,
        rejoin: int = 10,
        silent: int = 15,
        consumption_rule: bool = True,
        flush_barrier: bool = True,
        honour_stamp_epoch: bool = True,
    ) -> None:
        assert _coordinator_module.time is CLOCK, "a cluster runs under stepped_time()"
        CLOCK.now = 0.0
        self.initial = initial
        self.honour_stamp_epoch = honour_stamp_epoch
        self.deadline = deadline
        self.rejoin = rejoin
        self.silent = silent
        self.consumption_rule = consumption_rule
        self.flush_barrier = flush_barrier
        self.now = 0
        self.store = SqliteCutStore(":memory:")
        self.nodes = {
            f"p{i}": Node(f"p{i}", SnapshotParticipant(f"p{i}", abandoned_grace=float(grace)), initial)
            for i in range(n)
        }
        self.pids = list(self.nodes)
        self.network: list[Packet] = []
        self.messages: list[Message] = []
        self.minted: list[tuple[str, int, int]] = []  # (process, epoch, amount) of requests applied again
        self.notices: list[tuple[int, str, int]] = []  # (due step, caller, call id) of failing calls
        self.finished: list[Finished] = []
        self._unclaimed: list[StoredCut] = []
        self.expected: dict[str, int] = {}
        """Processes the collector must expect back, since when: their stream ended without a goodbye
        under this collector, or they were in the newest stored cut when it started."""
        self.runs: dict[tuple[int, int], Run] = {}
        self.lost_runs: list[Run] = []  # running when the collector crashed: never stored
        self.stored_epochs: set[int] = set()
        self.generation = 0
        self.coordinator = self._coordinator()
        self.duplicates_injected = 0
        for pid in self.pids:
            self.reconnect(pid)
        self.sync()

    def close(self) -> None:
        self.store.close()

    # Collector ---------------------------------------------------------------------------
    def _coordinator(self) -> Coordinator:
        generation = self.generation

        def on_finished(cut: StoredCut) -> None:
            # Called by the coordinator, which swallows exceptions: only record here, check later.
            # A snapshot that cannot complete ends inside start_snapshot(), before its run is known.
            self.stored_epochs.add(cut.epoch)
            run = self.runs.get((generation, cut.epoch))
            if run is None:
                self._unclaimed.append(cut)
            else:
                self._finish(cut, run)

        return Coordinator(
            self.store,
            on_finished=on_finished,
            max_running=MAX_RUNNING,
            rejoin_grace=float(self.rejoin),
            silent_after=float(self.silent),
        )

    def _finish(self, cut: StoredCut, run: Run) -> None:
        crashed = frozenset(p for p in run.members if not self.nodes[p].alive)
        self.finished.append(Finished(cut, run, self.truth(cut.epoch, run.members), crashed))

    def expire(self) -> None:
        self.coordinator.expire()

    def start_snapshot(self) -> Run | None:
        members = frozenset(pid for pid, node in self.nodes.items() if node.connected)
        if not members:
            return None
        absent = (
            frozenset(p for p, since in self.expected.items() if self.now - since < self.rejoin) - members
        )
        away = tuple((p, self.now - n.left) for p, n in self.nodes.items() if n.alive and p not in members)
        epoch = self.coordinator.start_snapshot(timeout=float(self.deadline))
        run = Run(epoch, self.generation, self.now, members, absent, away)
        self.runs[(self.generation, epoch)] = run
        for cut in self._unclaimed:
            assert cut.epoch == epoch, "only the snapshot being started ends before it is known"
            self._finish(cut, run)
        self._unclaimed.clear()
        return run

    def restart_collector(self, clean: bool, in_flight: list[int]) -> list[Run]:
        """A new coordinator over the same store; returns the runs a crash lost.

        A clean stop stores the running snapshots INCOMPLETE. Either way every
        stream ends: orders not yet read are gone, and of each agent's queued
        events the first ``in_flight[i]`` were on the wire and are lost too.
        """
        lost: list[Run] = []
        if clean:
            self.coordinator.close()
        else:
            lost = [self.runs[(self.generation, epoch)] for epoch in self.coordinator.running()]
            self.lost_runs += lost
        # The new collector expects back the processes of the newest stored cut and those the old
        # one had written down as registered or expected (at its last registration or departure).
        newest = self.store.latest()
        known = {s.process for s in newest.states} | set(newest.missing) if newest else set()
        known |= set(json.loads(self.store.get_meta("expected_processes") or "{}"))
        self.expected = dict.fromkeys(known, self.now)
        for i, node in enumerate(self.nodes.values()):
            if node.session is not None:
                node.left = self.now
            node.session = None
            drop = in_flight[i % len(in_flight)] if in_flight else 0
            for _ in range(min(drop, len(node.reports))):
                node.reports.popleft()
        self.generation += 1
        self.coordinator = self._coordinator()
        return lost

    def reconnect(self, pid: str) -> AgentSession | None:
        """The agent's control stream (re)connects: it registers with its current epoch."""
        node = self.nodes[pid]
        if not node.alive or node.connected:
            return None
        registration = pb.Registration(
            process_id=pid,
            service=SERVICE,
            protocol_version=1,
            worker_pools={POOL: POOL_SIZE},
            epoch=node.part.epoch,
        )
        node.session = self.coordinator.register(registration)
        # The session's ``last_seen`` defaults to the real clock (bound when the class was made).
        node.session.last_seen = CLOCK.now
        node.registered = node.part.epoch
        node.heard = self.now
        self.expected.pop(pid, None)
        return node.session

    def report(self, pid: str) -> bool:
        """The collector receives the next event on ``pid``'s stream."""
        node = self.nodes[pid]
        if not node.connected or not node.reports:
            return False
        assert node.session is not None
        seq, event = node.reports.popleft()
        self.coordinator.on_message(node.session, event_to_message(event, seq))
        node.heard = self.now
        if not self.flush_barrier and isinstance(event, LocalSnapshot):
            marker = pb.AgentMessage(seq=seq, flushed=pb.Flushed(epoch=event.epoch))
            self.coordinator.on_message(node.session, marker)
        return True

    def order(self, pid: str) -> bool:
        """The agent carries out the collector's next order, as ``Agent._on_order`` does."""
        node = self.nodes[pid]
        if not node.connected:
            return False
        assert node.session is not None
        try:
            order = node.session.outbox.get_nowait()
        except Empty:
            return False
        if order is None:  # the collector ended the stream
            node.session = None
            return True
        body = order.WhichOneof("body")
        part = node.part
        if body == "take_snapshot" and order.take_snapshot.epoch > part.epoch:
            part.take_snapshot(order.take_snapshot.epoch, node.capture(), now=self.now)
        elif body == "flush":
            part.flush(order.flush.epoch)
        elif body == "close_epoch":
            part.close_epoch(order.close_epoch.epoch)
        elif body == "registered":
            part.join(order.registered.epoch)
        self._emit(node)
        return True

    def has_orders(self, pid: str) -> bool:
        node = self.nodes[pid]
        return node.connected and node.session is not None and not node.session.outbox.empty()

    def sync(self, limit: int = 10_000) -> None:
        """Every connected agent and the collector exchange all they have queued, until both are quiet."""
        for _ in range(limit):
            moved = False
            for pid in self.pids:
                while self.order(pid):
                    moved = True
                while self.report(pid):
                    moved = True
            if not moved:
                return
        raise AssertionError("the collector and the agents never fell quiet")

    def traffic(self, rng: random.Random, actions: int) -> None:
        """``actions`` application steps in an order ``rng`` picks: transfers, deliveries, handlers."""
        for _ in range(actions):
            alive = [pid for pid in self.pids if self.nodes[pid].alive]
            action = rng.choice(("transfer", "transfer", "deliver", "consume", "respond"))
            index = rng.randrange(1 << 16)
            if action == "transfer":
                src = rng.choice(alive)
                self.transfer(src, rng.choice([p for p in self.pids if p != src]), rng.randrange(5))
            elif action == "deliver":
                self.deliver(index)
            elif action == "consume":
                self.consume(rng.choice(alive), index)
            else:
                self.respond(rng.choice(alive), index, rng.randrange(5))

    def settle(self, rng: random.Random, limit: int = 2_000) -> None:
        """Everything runs, in an order ``rng`` picks, until nothing is left to deliver, apply,
        answer, report or order (within one step of time)."""
        for _ in range(limit):
            actions: list[str] = []
            if self.network:
                actions.append("deliver")
            if any(h for n in self.nodes.values() if n.alive for h in n.handlers if not h.consumed):
                actions.append("consume")
            if any(h for n in self.nodes.values() if n.alive for h in n.handlers if h.consumed):
                actions.append("respond")
            streams = [p for p in self.pids if self.nodes[p].connected and self.nodes[p].reports]
            if streams:
                actions.append("report")
            ordered = [p for p in self.pids if self.has_orders(p)]
            if ordered:
                actions.append("order")
            if not actions:
                return
            action = rng.choice(actions)
            index = rng.randrange(1 << 16)
            if action == "deliver":
                self.deliver(index)
            elif action == "consume":
                self.consume(rng.choice([p for p in self.pids if self.nodes[p].alive]), index)
            elif action == "respond":
                self.respond(rng.choice([p for p in self.pids if self.nodes[p].alive]), index, index % 5)
            elif action == "report":
                self.report(rng.choice(streams))
            else:
                self.order(rng.choice(ordered))
        raise AssertionError("the cluster never settled")

    # Time ------------------------------------------------------------------------------------
    def tick(self, steps: int = 1) -> None:
        """Time passes: failures come due, then deadlines."""
        self.now += steps
        CLOCK.now = float(self.now)
        due = sorted(n for n in self.notices if n[0] <= self.now)
        self.notices = [n for n in self.notices if n[0] > self.now]
        for _, caller, call_id in due:
            node = self.nodes[caller]
            if node.alive and call_id in node.calls:
                node.part.on_call_ended(call_id, OUTCOME_FAILED, UNAVAILABLE, now=self.now)
                del node.calls[call_id]  # the caller got its error: the waiting task goes on
                self._emit(node)
        # An agent with nothing queued sends heartbeats; a backed-up stream says nothing, and the
        # collector drops a stream silent for longer than ``silent`` (the agent then reconnects).
        for node in self.nodes.values():
            if node.connected and not node.reports:
                assert node.session is not None
                self.coordinator.on_message(node.session, pb.AgentMessage(heartbeat=pb.Heartbeat(dropped=0)))
                node.heard = self.now
        connected = [n for n in self.nodes.values() if n.connected]
        silent = [n for n in connected if self.now - n.heard > self.silent]
        self.expire()
        assert [n for n in connected if not n.connected] == silent, "the collector drops silent streams only"
        for node in silent:
            node.session = None
            node.left = self.now
            self.expected[node.pid] = self.now

    # Application ----------------------------------------------------------------------------
    def transfer(self, src: str, dst: str, amount: int, notice: int = 1) -> Message | None:
        """Debit and send a request in one atomic step; a call to a dead process fails ``notice`` steps on."""
        node = self.nodes[src]
        if not node.alive or src == dst or node.balance <= 0:
            return None
        amount = min(1 + amount, node.balance)
        node.balance -= amount
        node.clock = node.clock.tick(src)
        node.next_call += 1
        call_id = node.next_call
        epoch = node.part.on_call(call_id, METHOD, dst)
        node.calls[call_id] = (node.task_id(), dst)
        msg = Message(src, dst, amount, epoch, node.clock, MsgKey(src, call_id, 0, REQUEST))
        self.messages.append(msg)
        if self.nodes[dst].alive:
            self.network.append(Packet(msg))
        else:
            msg.lost = True
            self.notices.append((self.now + notice, src, call_id))
        self._emit(node)
        return msg

    def deliver(self, index: int) -> Packet | None:
        """The network hands any message on it (not the oldest) to its receiver's agent."""
        if not self.network:
            return None
        packet = self.network.pop(index % len(self.network))
        msg = packet.msg
        node = self.nodes[msg.receiver]
        assert node.alive, "messages to a dead process leave the network when it dies"
        payload = json.dumps(msg.amount)
        stamp_epoch = msg.epoch if self.honour_stamp_epoch else 0
        if msg.key.kind == RESPONSE:
            assert msg.key.call_id in node.calls, "an answer only comes to a call that is waiting for it"
            node.part.on_response(
                msg.sender, stamp_epoch, payload, msg.key.call_id, node.capture, method=METHOD, now=self.now
            )
            node.clock = node.clock.merge(msg.clock).tick(node.pid)
            node.balance += msg.amount  # received and applied at once
            msg.applied = node.part.epoch
            del node.calls[msg.key.call_id]
        else:
            delivery = node.part.on_deliver(
                msg.sender, stamp_epoch, payload, msg.key, node.capture, method=METHOD, now=self.now
            )
            assert delivery.duplicate == packet.copy, "a repeat is recognised by its key, and only a repeat"
            node.clock = node.clock.merge(msg.clock).tick(node.pid)
            if not self.consumption_rule and not packet.copy:
                node.part.on_consume(delivery)
            node.handlers.append(Handler(node.task_id(), delivery, packet))
            msg.delivered = True
        self._emit(node)
        return packet

    def lose(self, index: int, notice: int) -> Packet | None:
        """The network loses a message for good; its caller's call fails ``notice`` steps later."""
        if not self.network:
            return None
        packet = self.network.pop(index % len(self.network))
        if not packet.copy:
            msg = packet.msg
            msg.lost = True
            self.notices.append((self.now + notice, msg.caller, msg.key.call_id))
        return packet

    def duplicate(self, index: int, applies: bool) -> Message | None:
        """The transport repeats a delivered request (same call id and attempt) to the same process."""
        candidates = [
            m for m in self.messages if m.key.kind == REQUEST and m.delivered and self.nodes[m.receiver].alive
        ]
        if not candidates:
            return None
        msg = candidates[index % len(candidates)]
        self.network.append(Packet(msg, copy=True, applies=applies))
        self.duplicates_injected += 1
        return msg

    def consume(self, pid: str, index: int) -> Handler | None:
        """A handler reaches atomic(): it applies the request, which then counts as consumed."""
        node = self.nodes[pid]
        waiting = [h for h in node.handlers if not h.consumed] if node.alive else []
        if not waiting:
            return None
        handler = waiting[index % len(waiting)]
        msg = handler.packet.msg
        if handler.packet.copy:
            if handler.packet.applies:  # not idempotent: the tokens are applied a second time
                node.balance += msg.amount
                self.minted.append((pid, node.part.epoch, msg.amount))
            node.part.on_consume(handler.delivery)
            node.handlers.remove(handler)  # its answer goes nowhere: the transport made the copy
        else:
            node.balance += msg.amount
            if self.consumption_rule:
                node.part.on_consume(handler.delivery)
            msg.applied = node.part.epoch
            handler.consumed = True
        node.clock = node.clock.tick(pid)
        self._emit(node)
        return handler

    def respond(self, pid: str, index: int, refund: int) -> Message | None:
        """A handler answers: it refunds part of its balance, debit and answer in one atomic step."""
        node = self.nodes[pid]
        done = [h for h in node.handlers if h.consumed] if node.alive else []
        if not done:
            return None
        handler = done[index % len(done)]
        node.handlers.remove(handler)
        request = handler.packet.msg
        refund = min(refund, max(node.balance, 0))
        node.balance -= refund
        node.clock = node.clock.tick(pid)
        epoch = node.part.on_reply(handler.delivery)
        key = MsgKey(pid, request.key.call_id, 0, RESPONSE)
        msg = Message(pid, request.sender, refund, epoch, node.clock, key)
        self.messages.append(msg)
        if self.nodes[request.sender].alive:
            self.network.append(Packet(msg))
        else:
            msg.lost = True
        self._emit(node)
        return msg

    def disconnect(self, pid: str, in_flight: int) -> bool:
        """``pid``'s stream to the collector breaks; the first ``in_flight`` of its queued events are lost."""
        node = self.nodes[pid]
        if not node.connected:
            return False
        assert node.session is not None
        self.coordinator.unregister(node.session)
        node.session = None
        node.left = self.now
        self.expected[pid] = self.now
        for _ in range(min(in_flight, len(node.reports))):
            node.reports.popleft()
        return True

    def crash(self, pid: str, notice: int, goodbye: bool = False) -> None:
        """``pid`` dies with all it holds; its stream ends, and callers waiting on it fail later.

        With ``goodbye`` it shuts down on purpose and says so on its stream
        first (its queued events are dropped, as ``ControlClient.close`` does).
        A caller whose answer is already on the network still gets it; every
        other call to ``pid`` fails ``notice`` steps from now.
        """
        node = self.nodes[pid]
        if not node.alive:
            return
        node.reports.clear()
        session, node.session = (node.session if node.connected else None), None
        node.alive = False
        if session is not None:
            if goodbye:
                self.coordinator.on_message(session, pb.AgentMessage(goodbye=pb.Goodbye()))
            else:
                self.expected[pid] = self.now
            self.coordinator.unregister(session)
        kept: list[Packet] = []
        for packet in self.network:
            if packet.msg.receiver == pid:
                packet.msg.lost = packet.msg.lost or not packet.copy
            else:
                kept.append(packet)
        self.network = kept
        answered = {(p.msg.receiver, p.msg.key.call_id) for p in self.network if p.msg.key.kind == RESPONSE}
        for caller in self.nodes.values():
            if not caller.alive:
                continue
            for call_id, (_, target) in caller.calls.items():
                if target == pid and (caller.pid, call_id) not in answered:
                    self.notices.append((self.now + notice, caller.pid, call_id))

    def _emit(self, node: Node) -> None:
        """Number the participant's events and queue them for the collector (``ControlClient.submit``)."""
        for event in node.part.drain():
            node.seq += 1
            node.reports.append((node.seq, event))

    # Ground truth ----------------------------------------------------------------------------
    def truth(self, k: int, members: frozenset[str]) -> CutTruth:
        """What cut ``k`` of ``members`` must hold, from what really happened.

        The members' initial tokens, less what each sent before its cut, plus
        what each applied before its cut (including requests a handler
        applied twice), plus the messages between members sent before the
        sender's cut and not applied before the receiver's. A message from or
        to a process outside the cut (dead, or not registered when the
        snapshot started) crosses its border: its tokens leave with the send
        or enter with the credit.
        """
        tokens = self.initial * len(members)
        in_transit: Counter[tuple[str, str, int, str, str, int]] = Counter()
        receipts: list[tuple[str, str, int, int]] = []
        crossed = 0
        for m in self.messages:
            sent = m.sender in members and m.epoch < k
            applied = m.receiver in members and m.applied is not None and m.applied < k
            crossed += (sent and m.receiver not in members) or (applied and m.sender not in members)
            if sent:
                tokens -= m.amount
            if applied:
                tokens += m.amount
                if m.sender in members:
                    receipts.append((m.sender, m.receiver, m.epoch, m.clock.get(m.sender)))
            elif sent and m.receiver in members and not m.lost:
                tokens += m.amount
                in_transit[(m.key.kind, m.caller, m.key.call_id, m.sender, m.receiver, m.amount)] += 1
        minted = [amount for pid, epoch, amount in self.minted if pid in members and epoch < k]
        return CutTruth(tokens + sum(minted), in_transit, tuple(receipts), crossed, len(minted))
