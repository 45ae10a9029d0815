"""A seeded, deterministic simulation of processes, a non-FIFO network and a snapshot collector.

Every choice comes from one ``random.Random``: a seeded one for fixed runs,
or hypothesis' ``st.randoms(use_true_random=False)`` so that hypothesis
explores schedules and shrinks failures. The network is a multiset: any
message (application, control or report to the collector) may be delivered
next. Delivery and consumption are separate steps, like a handler that has
not reached ``atomic()`` yet. The workload passes tokens over calls: a
transfer debits and sends a request in one atomic step; consuming the
request credits the amount; the server later answers with a response that
refunds part of it (debit and send in one step), credited when consumed.

With ``balanced`` on, a request is addressed to a channel that reaches
several servers, and the network picks the server when it delivers the
request, as a load balancer would: the caller never learns it (responses
go back to the caller, who only counts them).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from cutwatch.agent._clock import VectorClock
from cutwatch.agent._snapshot import (
    REQUEST,
    RESPONSE,
    Capture,
    ChannelRecord,
    Delivery,
    MsgKey,
    SnapshotEvent,
    SnapshotParticipant,
)
from cutwatch.collector._assembly import AssembledCut, CutAssembler

CallMsg = tuple[str, str, int]
"""A message's identity in the ground truth: (kind, calling process, call id)."""


@dataclass(frozen=True)
class SimConfig:
    """One simulated world. ``stalled`` channels never deliver; ``lazy`` processes never consume.

    ``balanced`` addresses each request to a random group of servers, one of
    which the network picks at delivery.

    ``consumption_rule=False`` models the bug the rule prevents: a message
    counts as consumed at delivery while its credit is applied later.
    ``honour_stamp_epoch=False`` models an agent that ignores the epoch in
    stamps (no snapshot before delivering a post-cut message).
    """

    n: int = 3
    steps: int = 100
    initial: int = 100
    max_epochs: int = 4
    snapshot_percent: int = 5
    duplicate_percent: int = 0
    consumption_rule: bool = True
    honour_stamp_epoch: bool = True
    stalled: frozenset[tuple[int, int]] = frozenset()
    lazy: frozenset[int] = frozenset()
    max_records: int = 10_000
    max_open_epochs: int = 8
    balanced: bool = False


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

    @property
    def truth(self) -> CallMsg:
        caller = self.sender if self.key.kind == REQUEST else self.receiver
        return (self.key.kind, caller, self.key.call_id)


@dataclass(eq=False)
class Control:
    receiver: str
    epoch: int
    close: bool = False


@dataclass(eq=False)
class Report:
    event: SnapshotEvent


Item = AppMsg | Control | Report


@dataclass(eq=False)
class Proc:
    pid: str
    part: SnapshotParticipant
    balance: int
    clock: VectorClock = field(default_factory=VectorClock)
    waiting: list[tuple[Delivery, AppMsg]] = field(default_factory=list)
    replies: list[tuple[str, int]] = field(default_factory=list)
    calls: int = 0

    def capture(self) -> Capture:
        """The snapshot event ticks the clock; state is the balance."""
        self.clock = self.clock.tick(self.pid)
        return Capture(self.clock, self.balance)


@dataclass
class SimResult:
    config: SimConfig
    total: int
    cuts: dict[int, AssembledCut]
    started: int
    duplicates_injected: int
    duplicates_reported: int
    expected_in_transit: dict[int, set[CallMsg]]
    stuck: list[AppMsg]
    balanced_deliveries: int


def record_truth(record: ChannelRecord) -> CallMsg:
    """The ground-truth identity of a recorded message."""
    caller = record.sender if record.kind == REQUEST else record.receiver
    return (record.kind, caller, record.msg_key.call_id)


def token_sum(cut: AssembledCut) -> int:
    """Balances in the cut's states plus the amounts recorded in transit."""
    total = 0
    for state in cut.states.values():
        assert isinstance(state, int), state
        total += state
    return total + sum(int(json.loads(record.payload_json)) for record in cut.in_transit)


def conserved(cut: AssembledCut, total: int) -> bool:
    """Sum of balances plus tokens in transit equals the total minted."""
    return token_sum(cut) == total


class Simulation:
    """Runs one world to the end; :meth:`run` returns what the collector assembled."""

    def __init__(self, config: SimConfig, rng: random.Random) -> None:
        self.cfg = config
        self.rng = rng
        self.procs = [
            Proc(
                f"p{i}",
                SnapshotParticipant(
                    f"p{i}", max_records=config.max_records, max_open_epochs=config.max_open_epochs
                ),
                config.initial,
            )
            for i in range(config.n)
        ]
        self.by_pid = {proc.pid: proc for proc in self.procs}
        self.network: list[Item] = []
        self.stuck: list[AppMsg] = []
        self.assemblers: dict[int, CutAssembler] = {}
        self.cuts: dict[int, AssembledCut] = {}
        self.next_epoch = 1
        self.duplicates_injected = 0
        self.balanced_deliveries = 0
        # Ground truth: every message's stamp epoch and the receiver's epoch when it was counted consumed.
        self.sent_epoch: dict[CallMsg, int] = {}
        self.consumed_epoch: dict[CallMsg, int] = {}
        self.stalled = {(f"p{a}", f"p{b}") for a, b in config.stalled}
        self.lazy = {f"p{i}" for i in config.lazy}

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
            total=self.cfg.initial * self.cfg.n,
            cuts=dict(sorted(self.cuts.items())),
            started=self.next_epoch - 1,
            duplicates_injected=self.duplicates_injected,
            duplicates_reported=sum(proc.part.stats().duplicates for proc in self.procs),
            expected_in_transit={k: self._expected(k) for k in self.cuts},
            stuck=self.stuck,
            balanced_deliveries=self.balanced_deliveries,
        )

    def _step(self, *, workload: bool) -> bool:
        """One scheduler step; False when nothing at all can happen (only when draining)."""
        starting = workload and self.next_epoch <= self.cfg.max_epochs
        if starting and self.rng.randrange(100) < self.cfg.snapshot_percent:
            self._start_snapshot()
            return True
        consumers = [p for p in self.procs if p.waiting and p.pid not in self.lazy]
        responders = [p for p in self.procs if p.replies]
        options: list[str] = []
        if self.network:
            options += ["deliver"] * 4
        if consumers:
            options += ["consume"] * 2
        if responders:
            options += ["respond"] * 2
        if workload:
            options += ["transfer"] * 3
        if not options:
            return False
        action = self.rng.choice(options)
        if action == "deliver":
            self._deliver(self.network.pop(self.rng.randrange(len(self.network))))
        elif action == "consume":
            proc = self.rng.choice(consumers)
            self._consume(proc, proc.waiting.pop(self.rng.randrange(len(proc.waiting))))
        elif action == "respond":
            proc = self.rng.choice(responders)
            self._respond(proc, *proc.replies.pop(self.rng.randrange(len(proc.replies))))
        else:
            self._transfer()
        return True

    # Application --------------------------------------------------------------------------
    def _transfer(self) -> None:
        proc = self.rng.choice(self.procs)
        if proc.balance <= 0 or self.cfg.n < 2:
            return
        others = [p.pid for p in self.procs if p is not proc]
        if self.cfg.balanced:
            targets = tuple(self.rng.sample(others, self.rng.randint(1, len(others))))
        else:
            targets = (self.rng.choice(others),)
        amount = self.rng.randint(1, proc.balance)
        # Debit and send form one atomic step (agent.atomic()); the server is not known.
        proc.balance -= amount
        proc.clock = proc.clock.tick(proc.pid)
        proc.calls += 1
        key = MsgKey(proc.pid, proc.calls, 1, REQUEST)
        epoch = proc.part.on_send(REQUEST)
        msg = AppMsg(proc.pid, targets, amount, epoch, proc.clock, key)
        self.sent_epoch[msg.truth] = epoch
        self.network.append(msg)
        self._flush(proc)

    def _respond(self, proc: Proc, caller: str, call_id: int) -> None:
        """The handler's answer: refund part of the balance to the caller, debit and send at once."""
        refund = self.rng.randint(0, proc.balance)
        proc.balance -= refund
        proc.clock = proc.clock.tick(proc.pid)
        epoch = proc.part.on_send(RESPONSE, caller)
        key = MsgKey(proc.pid, call_id, 1, RESPONSE)
        msg = AppMsg(proc.pid, (caller,), refund, epoch, proc.clock, key, receiver=caller)
        self.sent_epoch[msg.truth] = epoch
        self.network.append(msg)
        self._flush(proc)

    def _deliver_app(self, msg: AppMsg) -> None:
        if not msg.receiver:
            msg.receiver = self.rng.choice(msg.targets)  # the load balancer's pick
            self.balanced_deliveries += len(msg.targets) > 1
        if (msg.sender, msg.receiver) in self.stalled:
            self.stuck.append(msg)
            return
        proc = self.by_pid[msg.receiver]
        stamp_epoch = msg.epoch if self.cfg.honour_stamp_epoch else 0
        payload = json.dumps(msg.amount)
        delivery = proc.part.on_deliver(msg.sender, stamp_epoch, payload, msg.key, proc.capture)
        proc.clock = proc.clock.merge(msg.clock).tick(proc.pid)
        if not self.cfg.consumption_rule:
            self._count_consumed(proc, delivery)
        proc.waiting.append((delivery, msg))
        if self.rng.randrange(100) < self.cfg.duplicate_percent:
            # The transport repeats the message to the same process (a retry elsewhere is not modelled).
            self.duplicates_injected += 1
            self.network.append(msg)
        self._flush(proc)

    def _consume(self, proc: Proc, waiting: tuple[Delivery, AppMsg]) -> None:
        delivery, msg = waiting
        if self.cfg.consumption_rule:
            self._count_consumed(proc, delivery)
        if not delivery.duplicate:  # the handler is idempotent per call id
            proc.balance += msg.amount
            if msg.key.kind == REQUEST:
                proc.replies.append((msg.sender, msg.key.call_id))
        proc.clock = proc.clock.tick(proc.pid)
        self._flush(proc)

    def _count_consumed(self, proc: Proc, delivery: Delivery) -> None:
        proc.part.on_consume(delivery)
        if not delivery.duplicate:
            kind = delivery.msg_key.kind
            caller = delivery.sender if kind == REQUEST else proc.pid
            self.consumed_epoch[(kind, caller, delivery.msg_key.call_id)] = proc.part.epoch

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
            elif item.epoch > proc.part.epoch:
                proc.part.take_snapshot(item.epoch, proc.capture())
            self._flush(proc)
        else:
            self._collect(item.event)

    def _flush(self, proc: Proc) -> None:
        self.network.extend(Report(event) for event in proc.part.drain())

    def _collect(self, event: SnapshotEvent) -> None:
        if event.epoch in self.cuts:
            return  # finished already: late pieces are ignored
        assembler = self.assemblers[event.epoch]
        assembler.add(event)
        if assembler.status() != "PENDING":
            self.cuts[event.epoch] = assembler.finish()
            self.network.extend(Control(proc.pid, event.epoch, close=True) for proc in self.procs)

    def _expected(self, k: int) -> set[CallMsg]:
        """Messages sent before the sender's cut k and not consumed before the receiver's cut k."""
        return {
            key
            for key, epoch in self.sent_epoch.items()
            if epoch < k and self.consumed_epoch.get(key, k) >= k
        }


def simulate(config: SimConfig, rng: random.Random) -> SimResult:
    return Simulation(config, rng).run()
