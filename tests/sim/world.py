"""A seeded, deterministic world of processes, a non-FIFO network and a snapshot collector.

Every choice comes from one ``random.Random``: a seeded one for fixed runs,
or hypothesis' ``st.randoms(use_true_random=False)`` so that hypothesis
explores schedules and shrinks failures. The network is a multiset: any
application or control message may be delivered next. Reports to the
collector travel in order per process, as on an agent's one gRPC stream,
but the streams of different processes interleave arbitrarily. Delivery and
consumption are separate steps, like a handler that has not reached
``atomic()`` yet. The processes are the real event core
(:class:`sim.process.SimProcess`); the collector is the real cut assembler.

The workload passes tokens over calls: a transfer debits and sends a
request in one atomic step; applying the request credits the amount; the
server later answers with a response that refunds part of its balance
(debit and send in one step), credited when the caller receives it. Time is
the step counter.

The network may also lose a message (``lose_percent``): the caller notices
some steps later and its call fails; snapshots then fence the call. Of the
lost requests, ``late_percent`` are only held (by a proxy, say) and come back
some steps after the caller gave up: the receiver delivers one that no
snapshot fenced yet, and refuses one that was fenced. Servers in ``uninstrumented``
are not participants: they apply requests without any bookkeeping, never
call anyone, and answer without a stamp, so the caller's call ends
unstamped. Tokens they receive leave the system and their refunds enter it
when received. Routes in ``strip`` pass through a hop that drops stamps (a
proxy that drops headers it does not know), both ways: the receiver sees a
message without a stamp, as from an uninstrumented peer, and no cut can
place it; the agents count the state changes it causes and the collector
leaves the cuts they fall in INCOMPLETE.

Besides running the world, the simulation keeps the ground truth the tests
compare every cut with: the tokens a cut must hold, the messages in transit
and the calls no participant can settle (:meth:`Simulation.expected_unsettled`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sim.process import METHOD, Handler, SimProcess, without_epoch

from cutwatch.core import (
    REQUEST,
    RESPONSE,
    AssembledCut,
    Bounced,
    ChannelRecord,
    CutAssembler,
    Flushed,
    LocalSnapshot,
    Outbound,
    ProcessCore,
    SnapshotEvent,
)

__all__ = [
    "FAILURE",
    "METHOD",
    "SimConfig",
    "SimResult",
    "bounced_late",
    "conserved",
    "lost_later",
    "record_truth",
    "simulate",
    "token_sum",
]

CallMsg = tuple[str, str, int]
"""A message's identity in the ground truth: (kind, calling process, call id)."""
CallRef = tuple[str, int]
"""A call's identity: (calling process, call id)."""

FAILURE = "DEADLINE_EXCEEDED"
UNSTAMPED = -1
"""The epoch of a message without a stamp (an uninstrumented server's answer)."""


@dataclass(frozen=True)
class SimConfig:
    """One simulated world. ``stalled`` channels never deliver; ``lazy`` processes never apply requests.

    ``balanced`` addresses each request to a random group of servers, one of
    which the network picks at delivery. ``lose_percent`` of first deliveries
    are lost instead; the caller notices 1..``notice_delay`` steps later, and
    its participant keeps the failed call open until a snapshot fences it (at
    most ``abandoned_grace`` steps). ``late_percent`` of the lost requests come
    back 1..``late_delay`` steps after the caller noticed.
    ``uninstrumented`` processes serve without an agent; ``lazy`` applies
    to instrumented processes only. ``report_deadline`` bounds how many steps
    a report takes to reach the collector (unbounded when None); correctness
    must not depend on it.

    ``consumption_rule=False`` models the bug the rule prevents: a request
    counts as consumed at delivery (the handler enters ``atomic()`` before it
    applies anything) while its credit comes later. ``honour_stamp_epoch=False``
    models an agent that ignores the epoch in stamps (no snapshot before
    delivering a post-cut message). ``flush_barrier=False`` models a
    collector that completes a cut without waiting for the flush markers;
    ``fences=False`` one that settles failed calls without fencing them (the
    receivers are never told to refuse them). ``strip`` lists (caller,
    server) routes whose hop strips stamps; ``untracked_check=False`` models
    a collector that ignores the agents' counts of untracked changes. A lost
    request on such a route is held (``late_percent``) only with
    ``late_stripped``: nothing identifies it to refuse it, which is the one
    case a cut can still miss (docs/snapshot-design.md).
    """

    n: int = 3
    steps: int = 100
    initial: int = 100
    max_epochs: int = 4
    snapshot_percent: int = 5
    duplicate_percent: int = 0
    lose_percent: int = 0
    late_percent: int = 0
    late_delay: int = 30
    notice_delay: int = 20
    abandoned_grace: int = 1_000_000
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
    fences: bool = True
    strip: frozenset[tuple[int, int]] = frozenset()
    untracked_check: bool = True
    late_stripped: bool = False
    retry_percent: int = 0
    max_attempts: int = 3
    bounces: bool = True
    silent: frozenset[int] = frozenset()
    """Processes whose agent falls silent at step ``silent_at``: no report reaches the collector and
    no order reaches them from then on (a hung agent, a half-open stream)."""
    silent_at: int = 0
    silent_dies: bool = False
    """The silent processes die instead: they also stop running, and what reaches them is lost."""
    drop_silent_after: int | None = None
    """Steps after ``silent_at`` from which the collector leaves the silent processes out of new
    snapshots (the coordinator drops a silent agent and, past its rejoin grace, no longer waits for
    it); None: never."""


@dataclass(eq=False)
class AppMsg:
    """A request (``receiver`` empty until the network picks one of ``targets``) or a response.

    ``stamp`` is what travels in the message's metadata (None: no stamp);
    ``epoch`` and ``tick`` are the sender's epoch and own clock entry at the
    send, for the ground truth.
    """

    sender: str
    targets: tuple[str, ...]
    amount: int
    epoch: int
    tick: int
    kind: str
    call_id: int
    stamp: bytes | None
    receiver: str = ""
    delivered: bool = False
    lost: bool = False
    held: bool = False
    """Lost, but held somewhere: it comes back once its caller gave up."""
    stripped: bool = False
    """A hop dropped its stamp on the way: no participant can place it."""
    attempt: int = 0
    """Which attempt of its call this request is (gRPC's ``grpc-previous-rpc-attempts``)."""
    failure: str = ""
    """An answer with an error status (the last attempt of a call bounced)."""

    @property
    def stamped(self) -> bool:
        return self.stamp is not None

    @property
    def caller(self) -> str:
        return self.sender if self.kind == REQUEST else self.receiver

    @property
    def truth(self) -> CallMsg:
        return (self.kind, self.caller, self.call_id)


@dataclass
class CallTruth:
    """What really happened to one call.

    ``ended_epoch`` is the caller's epoch when the call ended for its
    participant (stamped answer received, unstamped answer received, or
    failure noticed at step ``failed_at``); ``blocked`` lists (kind, epoch) of
    its messages that are stuck (never delivered, and the caller never notices).
    """

    caller: str
    call_id: int
    sent_epoch: int
    outbound: Outbound
    ended_epoch: int | None = None
    failed_at: int | None = None
    blocked: list[tuple[str, int]] = field(default_factory=list)
    stripped: bool = False
    """Its request lost its stamp: its server never says it is answering it."""
    failure_stuck: bool = False
    """Its last attempt bounced and the error answer is stuck: with the bounced record taken back,
    nothing settles it (its caller never learns it failed)."""


@dataclass(eq=False)
class Control:
    """An order of the collector to one process: take a snapshot, flush a round (fencing calls), or
    close an epoch (forgetting fenced calls)."""

    receiver: str
    epoch: int
    close: bool = False
    flush: bool = False
    round: int = 0
    fence: tuple[tuple[str, int], ...] = ()
    forget: tuple[int, ...] = ()

    def carry_out(self, core: ProcessCore) -> None:
        """What the receiver's agent does with the order."""
        if self.close:
            core.close_epoch(self.epoch, self.forget)
        elif self.flush:
            core.flush(self.epoch, self.round, self.fence)
        else:
            core.take_snapshot(self.epoch)


def run_to_the_end(
    steps: int,
    step: Callable[..., bool],
    assemblers: Mapping[int, CutAssembler],
    cuts: dict[int, AssembledCut],
) -> None:
    """``steps`` steps of work, then steps until nothing can happen; the cuts still open are finished
    as they stand."""
    for _ in range(steps):
        step(workload=True)
    while step(workload=False):
        pass
    for epoch, assembler in assemblers.items():
        if epoch not in cuts:
            cuts[epoch] = assembler.finish()


@dataclass(eq=False)
class Report:
    event: SnapshotEvent
    sent_at: int


Item = AppMsg | Control


@dataclass(eq=False)
class Proc:
    """An instrumented process and what its handlers are doing: delivered, not yet applied (``waiting``)
    and applied, not yet answered (``replies``)."""

    process: SimProcess
    waiting: list[tuple[Handler, AppMsg]] = field(default_factory=list)
    replies: list[tuple[Handler, AppMsg]] = field(default_factory=list)

    @property
    def pid(self) -> str:
        return self.process.pid


@dataclass(eq=False)
class External:
    """An uninstrumented server: applies requests at once, answers later without a stamp."""

    pid: str
    balance: int
    replies: list[AppMsg] = field(default_factory=list)


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
    refused: int
    """Late requests refused because a snapshot had fenced their calls."""
    late_delivered: int
    """Late requests delivered because no snapshot had fenced their calls yet."""
    stripped: int
    """Messages whose stamp a hop dropped."""
    bounced: int = 0
    """Requests whose handler failed before applying them (each retried or failed at its caller)."""
    late_bounced: frozenset[tuple[int, str, int]] = frozenset()
    """(epoch, caller, call id) of requests whose bounce reached the collector after cut ``epoch``
    had completed with their record: in transit at the cut, their fate came later."""
    lost_after_bounce: frozenset[CallRef] = frozenset()
    """Calls whose tokens left the participants after one of their attempts bounced: a retry lost,
    no attempt left, or a retry that reached a server without an agent."""
    members: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Each snapshot's participants (all instrumented processes unless the collector dropped some)."""
    started_at: dict[int, int] = field(default_factory=dict)
    subsystem_tokens: dict[int, int] = field(default_factory=dict)
    """What cut k of its members must hold (see :meth:`Simulation.expected_subsystem_tokens`)."""
    subsystem_in_transit: dict[int, set[CallMsg]] = field(default_factory=dict)


def record_truth(record: ChannelRecord) -> CallMsg:
    """The ground-truth identity of a recorded message."""
    return (record.kind, record.caller, record.msg_key.call_id)


def token_sum(cut: AssembledCut) -> int:
    """Balances in the cut's states plus the amounts recorded in transit, each call's message once:
    two attempts of one call recorded in transit carry its tokens once (the cut lists such calls in
    ``duplicates``)."""
    total = 0
    for state in cut.states.values():
        assert isinstance(state, dict) and isinstance(state.get("balance"), int), state
        total += state["balance"]
    amounts = {record_truth(record): tokens(record) for record in cut.in_transit}
    return total + sum(amounts.values())


def tokens(record: ChannelRecord) -> int:
    """The tokens a recorded message carries (an error answer carries none: its payload is null)."""
    return int(json.loads(record.payload_json) or 0)


def bounced_late(cut: AssembledCut, result: SimResult) -> set[CallRef]:
    """Calls whose request the cut holds although that attempt bounced.

    The request really was in transit at the cut (delivered to a handler after its server's cut, or
    waiting for one at it); what became of the call came later, so the ground truth of the call's
    latest attempt does not describe this cut. The cut keeps such a record when the bounce reached
    the collector after the cut had completed, or when no attempt followed (the call failed, or its
    next attempt was lost or went to a server without an agent: its tokens left later).
    """
    return {
        (record.caller, record.msg_key.call_id)
        for record in cut.in_transit
        if record.kind == REQUEST
        and (
            (cut.epoch, record.caller, record.msg_key.call_id) in result.late_bounced
            or (record.caller, record.msg_key.call_id) in result.lost_after_bounce
        )
    }


def lost_later(cut: AssembledCut, result: SimResult) -> dict[CallMsg, int]:
    """Of :func:`bounced_late`, the requests whose tokens left the participants afterwards (the ground
    truth counts lost tokens from their send), with their tokens."""
    late = bounced_late(cut, result) & result.lost_after_bounce
    return {
        record_truth(record): tokens(record)
        for record in cut.in_transit
        if record.kind == REQUEST and (record.caller, record.msg_key.call_id) in late
    }


def conserved(cut: AssembledCut, result: SimResult) -> bool:
    """Balances plus tokens in transit equal what the participants hold by the ground truth."""
    return token_sum(cut) == result.expected_tokens[cut.epoch] + sum(lost_later(cut, result).values())


class Simulation:
    """Runs one world to the end; :meth:`run` returns what the collector assembled."""

    def __init__(self, config: SimConfig, rng: random.Random) -> None:
        if len(config.uninstrumented) >= config.n:
            raise ValueError("at least one process must be instrumented")
        self.cfg = config
        self.rng = rng
        self.now = 0
        self.procs = [
            Proc(
                SimProcess(
                    f"p{i}",
                    config.initial,
                    now=lambda: float(self.now),
                    max_records=config.max_records,
                    max_open_epochs=config.max_open_epochs,
                    abandoned_grace=config.abandoned_grace,
                )
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
        self.notices: list[tuple[int, str, int]] = []
        self.held: list[tuple[int, AppMsg]] = []  # (step it comes back, message) of held requests
        self.refused = 0
        self.late_delivered = 0
        self.duplicates_injected = 0
        self.balanced_deliveries = 0
        self.unstamped_calls = 0
        self.stalled = {(f"p{a}", f"p{b}") for a, b in config.stalled}
        self.strip = {(f"p{a}", f"p{b}") for a, b in config.strip}
        self.stripped = 0
        self.bounced = 0
        self.lost_after_bounce: set[CallRef] = set()
        self.late_bounced: set[tuple[int, str, int]] = set()
        self.untracked_seen: dict[str, int] = {}  # the collector's latest count of each agent
        self.lazy = {f"p{i}" for i in config.lazy}
        # Ground truth: every stamped message, the receiver's epoch when it was counted consumed,
        # every call, when each process took each cut, and tokens crossing the system's border.
        self.messages: dict[CallMsg, AppMsg] = {}
        self.consumed_epoch: dict[CallMsg, int] = {}
        self.calls: dict[CallRef, CallTruth] = {}
        self.cut_at: dict[str, dict[int, int]] = {proc.pid: {} for proc in self.procs}
        self.outflow: list[tuple[int, int]] = []  # (request epoch, amount) of requests applied outside
        self.inflow: list[tuple[int, int]] = []  # (caller's epoch, amount) of unstamped refunds received
        self.silent = {f"p{i}" for i in config.silent}
        self.members: dict[int, tuple[str, ...]] = {}
        self.started_at: dict[int, int] = {}

    # Driving ---------------------------------------------------------------------------
    def run(self) -> SimResult:
        run_to_the_end(self.cfg.steps, self._step, self.assemblers, self.cuts)
        for msg in self.stuck:
            if msg.kind == RESPONSE and not msg.lost and self._call(msg).failed_at is not None:
                # Its caller gave the call up: gRPC would hand it no late answer (see _deliver_app).
                self._lose_for_good(msg)
        return SimResult(
            config=self.cfg,
            participants=tuple(self.by_pid),
            total=self.cfg.initial * len(self.procs),
            cuts=dict(sorted(self.cuts.items())),
            started=self.next_epoch - 1,
            duplicates_injected=self.duplicates_injected,
            duplicates_reported=sum(proc.process.core.snapshot_stats().duplicates for proc in self.procs),
            expected_in_transit={k: self.expected_in_transit(k) for k in self.cuts},
            expected_tokens={k: self.expected_tokens(k) for k in self.cuts},
            expected_unsettled={k: self.expected_unsettled(k) for k in self.cuts},
            failed_calls={ref for ref, call in self.calls.items() if call.failed_at is not None},
            stuck=self.stuck,
            lost=self.lost,
            balanced_deliveries=self.balanced_deliveries,
            unstamped_calls=self.unstamped_calls,
            refused=self.refused,
            late_delivered=self.late_delivered,
            stripped=self.stripped,
            bounced=self.bounced,
            lost_after_bounce=frozenset(self.lost_after_bounce),
            late_bounced=frozenset(self.late_bounced),
            members=dict(self.members),
            started_at=dict(self.started_at),
            subsystem_tokens={k: self.expected_subsystem_tokens(k) for k in self.cuts},
            subsystem_in_transit={k: self.expected_subsystem_in_transit(k) for k in self.cuts},
        )

    def _step(self, *, workload: bool) -> bool:
        """One scheduler step; False when nothing at all can happen (only when draining)."""
        self.now += 1
        if self.cfg.silent_dies and self.now == self.cfg.silent_at:
            self._die()
        self._deliver_overdue_reports()
        self._notice_failures()
        self._release_held()
        starting = workload and self.next_epoch <= self.cfg.max_epochs
        if starting and self.rng.randrange(100) < self.cfg.snapshot_percent:
            self._start_snapshot()
            return True
        consumers = [p for p in self.procs if p.waiting and p.pid not in self.lazy and not self._dead(p.pid)]
        responders: list[Proc | External] = [p for p in self.procs if p.replies and not self._dead(p.pid)]
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
            waits = [due for due, _, _ in self.notices] + [due for due, _ in self.held]
            if not waits:
                return False
            self.now = max(self.now, min(waits))  # nothing else happens until then
            self._notice_failures()
            self._release_held()
            return True
        action = self.rng.choice(options)
        if action == "deliver":
            self._deliver(self.network.pop(self.rng.randrange(len(self.network))))
        elif action == "report":
            self._collect(self.reports[self.rng.choice(streams)].popleft().event)
        elif action == "consume":
            proc = self.rng.choice(consumers)
            self._consume(proc, *proc.waiting.pop(self.rng.randrange(len(proc.waiting))))
        elif action == "respond":
            server = self.rng.choice(responders)
            if isinstance(server, External):
                self._respond_unstamped(server, server.replies.pop(self.rng.randrange(len(server.replies))))
            else:
                self._respond(server, *server.replies.pop(self.rng.randrange(len(server.replies))))
        else:
            self._transfer()
        return True

    # Application --------------------------------------------------------------------------
    def _transfer(self) -> None:
        proc = self.rng.choice(self.procs)
        if proc.process.balance <= 0 or self.cfg.n < 2 or self._dead(proc.pid):
            return
        others = [pid for pid in self.all_pids if pid != proc.pid]
        if self.cfg.balanced:
            targets = tuple(self.rng.sample(others, self.rng.randint(1, len(others))))
        else:
            targets = (self.rng.choice(others),)
        amount = self.rng.randint(1, proc.process.balance)
        # The application knows which services run without an agent (its calls to them expect answers
        # without a stamp), but not which hops strip stamps.
        outbound, stamp = proc.process.send(
            targets, amount, uninstrumented=set(targets) <= set(self.externals)
        )
        call_id = outbound.call.call_id
        epoch = proc.process.epoch
        msg = AppMsg(proc.pid, targets, amount, epoch, proc.process.tick, REQUEST, call_id, stamp)
        self.calls[(proc.pid, call_id)] = CallTruth(proc.pid, call_id, epoch, outbound)
        self.messages[msg.truth] = msg
        self.network.append(msg)
        self._flush(proc)

    def _respond(self, server: Proc, handler: Handler, request: AppMsg) -> None:
        """The handler's answer: refund part of the balance to the caller, debit and send at once."""
        refund = self.rng.randint(0, max(server.process.balance, 0))
        stamp = server.process.answer(handler, refund)
        assert stamp is not None
        msg = AppMsg(
            server.pid,
            (request.sender,),
            refund,
            server.process.epoch,
            server.process.tick,
            RESPONSE,
            request.call_id,
            stamp,
            receiver=request.sender,
        )
        self.messages[msg.truth] = msg
        self.network.append(msg)
        self._flush(server)

    def _respond_unstamped(self, server: External, request: AppMsg) -> None:
        refund = self.rng.randint(0, max(server.balance, 0))
        server.balance -= refund
        caller = request.sender
        self.network.append(
            AppMsg(server.pid, (caller,), refund, UNSTAMPED, 0, RESPONSE, request.call_id, None, caller)
        )

    def _deliver_app(self, msg: AppMsg) -> None:
        if not msg.delivered and not msg.held and self.rng.randrange(100) < self.cfg.lose_percent:
            self._lose(msg)
            return
        if not msg.receiver:
            msg.receiver = self.rng.choice(msg.targets)  # the load balancer's pick
            self.balanced_deliveries += len(msg.targets) > 1
        if (msg.sender, msg.receiver) in self.stalled:
            if msg.held:
                return  # it stays lost
            self.stuck.append(msg)
            self._call(msg).blocked.append((msg.kind, msg.epoch))
            self._call(msg).failure_stuck = self._call(msg).failure_stuck or bool(msg.failure)
            return
        if self._dead(msg.receiver):
            # Nobody there: gone; a caller still alive notices, as a deadline would.
            self._lose_for_good(msg)
            if msg.kind == REQUEST:
                self.notices.append(
                    (self.now + self.rng.randint(1, self.cfg.notice_delay), msg.caller, msg.call_id)
                )
            return
        if msg.kind == RESPONSE and self._call(msg).failed_at is not None:
            # The caller's call failed already: gRPC hands the application no late answer.
            self._lose_for_good(msg)
            return
        first = not msg.delivered
        msg.delivered = True
        if msg.stamped and (msg.caller, msg.receiver if msg.kind == REQUEST else msg.sender) in self.strip:
            self._strip(msg)
        external = self.externals.get(msg.receiver)
        if external is not None:
            # Applied at once, no bookkeeping (and no fence): the tokens leave the participants.
            self._came_back(msg)
            if msg.attempt > 0:
                self.lost_after_bounce.add((msg.caller, msg.call_id))
            external.balance += msg.amount
            self.outflow.append((msg.epoch, msg.amount))
            external.replies.append(msg)
            return
        proc = self.by_pid[msg.receiver]
        stamp = msg.stamp
        if stamp is not None and not self.cfg.honour_stamp_epoch:
            stamp = without_epoch(stamp)
        before = proc.process.epoch
        if msg.kind == RESPONSE:
            call = self._call(msg)
            # The agent says that a stamped error is one of a bounced request only with bounces on.
            failure = msg.failure if self.cfg.bounces or not msg.stamped else ""
            proc.process.receive(call.outbound, stamp, msg.amount, failure=failure)
            call.ended_epoch = proc.process.epoch
            if msg.failure:
                call.failed_at = self.now  # the error of its last attempt: its tokens are lost
                if msg.stamped:
                    self.consumed_epoch[msg.truth] = proc.process.epoch
            elif msg.stamped:
                self.consumed_epoch[msg.truth] = proc.process.epoch
            elif msg.stripped:
                pass  # tokens between participants, that no cut can place
            else:
                # The caller's interceptor sees an answer without a stamp: the tokens enter now.
                self.unstamped_calls += 1
                self.inflow.append((proc.process.epoch, msg.amount))
            self._note_cuts(proc, before)
            self._flush(proc)
            return
        handler = proc.process.deliver(stamp, json.dumps(msg.amount), attempt=msg.attempt)
        self._note_cuts(proc, before)
        if handler.refused:
            # A late request whose call a snapshot fenced: never run, its tokens are gone.
            self.refused += 1
            self._flush(proc)
            return
        self._came_back(msg)
        if not self.cfg.consumption_rule:
            proc.process.apply(handler, 0)  # enters atomic() at once: consumed before it is applied
            self._count_consumed(proc, handler, msg)
        proc.waiting.append((handler, msg))
        if first and not msg.stripped and self.rng.randrange(100) < self.cfg.duplicate_percent:
            # The transport repeats the message to the same process (a retry elsewhere is not modelled).
            self.duplicates_injected += 1
            self.network.append(msg)
        self._flush(proc)

    def _strip(self, msg: AppMsg) -> None:
        """The hop drops the stamp; the message goes on as one from an uninstrumented peer."""
        msg.stamp, msg.stripped = None, True
        self.stripped += 1
        if msg.kind == REQUEST:
            self._call(msg).stripped = True

    def _lose(self, msg: AppMsg) -> None:
        """Gone, or held somewhere until after its caller gave it up; the caller notices later, as a
        deadline would."""
        if msg.attempt > 0:
            self.lost_after_bounce.add((msg.caller, msg.call_id))
        self._lose_for_good(msg)
        due = self.now + self.rng.randint(1, self.cfg.notice_delay)
        self.notices.append((due, msg.caller, msg.call_id))
        if msg.kind == REQUEST and self.rng.randrange(100) < self.cfg.late_percent and self._fenceable(msg):
            msg.held = True
            self.held.append((due + self.rng.randint(1, self.cfg.late_delay), msg))

    def _fenceable(self, msg: AppMsg) -> bool:
        """Whether a late delivery of this request could be refused: not when a hop on a route it may
        take strips its stamp (a known gap, modelled only with ``late_stripped``)."""
        return self.cfg.late_stripped or not any((msg.sender, target) in self.strip for target in msg.targets)

    def _came_back(self, msg: AppMsg) -> None:
        """A held request is delivered after all: an ordinary (late) delivery, not a loss."""
        if msg.lost and msg.held:
            self.lost_after_bounce.discard((msg.caller, msg.call_id))  # its tokens did not leave
            msg.lost = False
            self.lost.remove(msg)
            self.late_delivered += 1

    def _lose_for_good(self, msg: AppMsg) -> None:
        msg.lost = True
        self.lost.append(msg)

    def _release_held(self) -> None:
        """Held requests whose time has come go back on the network."""
        if self.held:
            due = [msg for when, msg in self.held if when <= self.now]
            self.held = [(when, msg) for when, msg in self.held if when > self.now]
            self.network.extend(due)

    def _notice_failures(self) -> None:
        due = [notice for notice in self.notices if notice[0] <= self.now]
        if not due:
            return
        self.notices = [notice for notice in self.notices if notice[0] > self.now]
        for _, caller, call_id in due:
            proc = self.by_pid[caller]
            call = self.calls[(caller, call_id)]
            proc.process.fail(call.outbound, FAILURE)
            call.ended_epoch, call.failed_at = proc.process.epoch, self.now
            self._flush(proc)

    def _consume(self, proc: Proc, handler: Handler, msg: AppMsg) -> None:
        if not handler.duplicate and msg.stamped and self.rng.randrange(100) < self.cfg.retry_percent:
            self._bounce(proc, handler, msg)
            return
        if handler.duplicate:
            # The handler is idempotent per call id: it applies nothing, and its answer goes nowhere.
            proc.process.apply(handler, 0)
            proc.process.answer(handler, 0)
        else:
            proc.process.apply(handler, msg.amount)
            if self.cfg.consumption_rule:
                self._count_consumed(proc, handler, msg)
            proc.replies.append((handler, msg))
        self._flush(proc)

    def _bounce(self, proc: Proc, handler: Handler, msg: AppMsg) -> None:
        """The handler fails before applying anything; gRPC's retry policy sends the call again, as the
        next attempt with the same stamp, to any of its servers (this one or another), until its
        attempts run out and the call fails at its caller."""
        delivery = handler.delivery
        if self.cfg.bounces and delivery is not None:
            # Cuts that completed with its record before it bounced keep it (closed ones say nothing).
            late = [k for k in delivery.recorded_in if k in self.cuts]
            self.late_bounced.update((k, msg.caller, msg.call_id) for k in late)
        answer = proc.process.bounce(handler, taken_back=self.cfg.bounces)
        self.bounced += 1
        self._flush(proc)
        gave_up = self._call(msg).failed_at is not None  # a late delivery: nobody retries it
        if gave_up or msg.attempt + 1 >= self.cfg.max_attempts:
            self.lost_after_bounce.add((msg.caller, msg.call_id))
            self._lose_for_good(msg)
            msg.held = False  # its repeats are duplicates now, not the held request coming back
            if not gave_up:
                # No attempt left: the caller gets this attempt's error, stamped as bounced.
                failed = AppMsg(
                    proc.pid,
                    (msg.caller,),
                    0,
                    proc.process.epoch,
                    proc.process.tick,
                    RESPONSE,
                    msg.call_id,
                    answer,
                    receiver=msg.caller,
                    failure="UNAVAILABLE",
                )
                self.messages[failed.truth] = failed
                self.network.append(failed)
            return
        retry = dataclasses.replace(msg, receiver="", delivered=False, attempt=msg.attempt + 1)
        self.messages[retry.truth] = retry
        self.network.append(retry)

    def _count_consumed(self, proc: Proc, handler: Handler, msg: AppMsg) -> None:
        if not handler.duplicate:
            self.consumed_epoch[msg.truth] = proc.process.epoch

    def _call(self, msg: AppMsg) -> CallTruth:
        return self.calls[(msg.caller, msg.call_id)]

    # Snapshot protocol ------------------------------------------------------------------------
    def _start_snapshot(self) -> None:
        epoch = self.next_epoch
        self.next_epoch += 1
        members = [pid for pid in self.by_pid if not self._dropped(pid)]
        self.members[epoch], self.started_at[epoch] = tuple(members), self.now
        self.assemblers[epoch] = CutAssembler(epoch, members, dict(self.untracked_seen))
        self.network.extend(Control(pid, epoch) for pid in members)

    def _die(self) -> None:
        """The silent processes die: the calls they were serving break, and their callers notice."""
        for pid in sorted(self.silent):
            proc = self.by_pid[pid]
            for _, msg in [*proc.waiting, *proc.replies]:
                due = self.now + self.rng.randint(1, self.cfg.notice_delay)
                self.notices.append((due, msg.caller, msg.call_id))
            proc.waiting, proc.replies = [], []

    def _silent(self, pid: str) -> bool:
        """Whether ``pid``'s agent has fallen silent: its reports and the collector's orders are lost."""
        return pid in self.silent and self.now >= self.cfg.silent_at

    def _dead(self, pid: str) -> bool:
        return self.cfg.silent_dies and self._silent(pid)

    def _dropped(self, pid: str) -> bool:
        """Whether the collector no longer waits for ``pid`` in new snapshots."""
        after = self.cfg.drop_silent_after
        return after is not None and pid in self.silent and self.now >= self.cfg.silent_at + after

    def _deliver(self, item: Item) -> None:
        if isinstance(item, AppMsg):
            self._deliver_app(item)
            return
        proc = self.by_pid[item.receiver]
        core = proc.process.core
        if self._silent(proc.pid):
            return  # the collector's stream to it is dead
        before = core.epoch
        item.carry_out(core)
        self._note_cuts(proc, before)
        self._flush(proc)

    def _note_cuts(self, proc: Proc, before: int) -> None:
        for epoch in range(before + 1, proc.process.epoch + 1):
            self.cut_at[proc.pid][epoch] = self.now

    def _flush(self, proc: Proc) -> None:
        if self._silent(proc.pid):
            proc.process.drain()  # nothing reaches the collector any more
            return
        self.reports[proc.pid].extend(Report(event, self.now) for event in proc.process.drain())

    def _deliver_overdue_reports(self) -> None:
        """With ``report_deadline``, every report reaches the collector that many steps after it was sent."""
        deadline = self.cfg.report_deadline
        if deadline is None:
            return
        for queue in self.reports.values():
            while queue and self.now - queue[0].sent_at >= deadline:
                self._collect(queue.popleft().event)

    def _collect(self, event: SnapshotEvent) -> None:
        if isinstance(event, LocalSnapshot | Flushed):
            if not self.cfg.untracked_check:
                event = dataclasses.replace(event, untracked_changes=0)
            seen = self.untracked_seen.get(event.process, 0)
            self.untracked_seen[event.process] = max(seen, event.untracked_changes)
        if event.epoch in self.cuts:
            if isinstance(event, Bounced):
                self.late_bounced.add((event.epoch, event.msg_key.sender, event.msg_key.call_id))
            return  # finished already: late pieces are ignored
        assembler = self.assemblers[event.epoch]
        assembler.add(event)
        due = assembler.next_flush()
        if due is not None:
            round_, fence = due
            fence = fence if self.cfg.fences else ()
            self.network.extend(
                Control(pid, event.epoch, flush=True, round=round_, fence=fence)
                for pid in assembler.participants
            )
            if not self.cfg.flush_barrier:  # a collector that does not wait for the markers
                for pid in assembler.participants:
                    assembler.add(Flushed(event.epoch, pid, round_))
        if assembler.status() != "PENDING":
            self.cuts[event.epoch] = assembler.finish()
            fenced = assembler.fenced()
            self.network.extend(
                Control(proc.pid, event.epoch, close=True, forget=fenced.get(proc.pid, ()))
                for proc in self.procs
            )

    # Ground truth -------------------------------------------------------------------------------
    def expected_in_transit(self, k: int) -> set[CallMsg]:
        """Stamped messages between participants, sent before the sender's cut k, not lost, and not
        consumed before the receiver's cut k."""
        return {
            key
            for key, msg in self.messages.items()
            if msg.epoch < k
            and not msg.lost
            and not msg.stripped
            and msg.receiver not in self.externals
            and self.consumed_epoch.get(key, k) >= k
        }

    def expected_tokens(self, k: int) -> int:
        """What cut k must hold: the tokens minted, less those lost or paid outside before the
        senders' cuts, plus the refunds from outside received before the callers' cuts."""
        lost = sum(msg.amount for msg in self.lost if msg.stamped and msg.epoch < k)
        out = sum(amount for epoch, amount in self.outflow if epoch < k)
        into = sum(amount for epoch, amount in self.inflow if epoch < k)
        return self.cfg.initial * len(self.procs) - lost - out + into

    def expected_unsettled(self, k: int) -> set[CallRef]:
        """Calls open at their caller's cut k that no participant can settle.

        A call is settled by a record of its request, of its response, the
        server still answering it, an unstamped answer, or, once its caller
        saw it fail, a fence; none of these exists for a call stuck for good
        (its caller never notices) when its request never arrived, or when its
        answer, sent before the server's cut k, never arrived. A call whose
        request lost its stamp is settled only by its answer, which may never
        come (the server never applies it, or the answer is stuck).
        """
        return {
            (call.caller, call.call_id)
            for call in self.calls.values()
            if call.sent_epoch < k
            and call.ended_epoch is None
            and (
                call.stripped
                or call.failure_stuck
                or any(kind == REQUEST or epoch < k for kind, epoch in call.blocked)
            )
        }

    def expected_subsystem_tokens(self, k: int) -> int:
        """What cut k of its members must hold: their tokens, less what they sent outside (or lost)
        before their cuts, plus what they consumed from outside before their cuts. (No uninstrumented
        servers in worlds with silent processes.)"""
        members = set(self.members.get(k, self.by_pid))
        total = self.cfg.initial * len(members)
        for key, msg in self.messages.items():
            if not msg.stamped and not msg.stripped:
                continue
            inside_from, inside_to = msg.sender in members, msg.receiver in members
            if inside_from and msg.epoch < k and (msg.lost or not inside_to):
                total -= msg.amount
            elif not inside_from and inside_to and self.consumed_epoch.get(key, k) < k:
                total += msg.amount
        return total

    def expected_subsystem_in_transit(self, k: int) -> set[CallMsg]:
        members = set(self.members.get(k, self.by_pid))
        return {
            key
            for key in self.expected_in_transit(k)
            if self.messages[key].sender in members and self.messages[key].receiver in members
        }


def simulate(config: SimConfig, rng: random.Random) -> SimResult:
    return Simulation(config, rng).run()
