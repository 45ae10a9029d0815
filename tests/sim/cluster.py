"""A cluster of processes with agents under the collector's own coordinator, step by step.

:class:`Cluster` puts processes (the real event core, :mod:`sim.process`)
under the real :class:`~cutwatch.collector.Coordinator` with a SQLite store
in memory, their events crossing the real protobuf conversion as on an
agent's stream, and adds what happens to a running system: processes crash
or shut down, streams to the collector break or fall silent, the collector
restarts (cleanly or not) and agents reconnect, each agent's stream is in
order both ways, and requests are repeated by the transport. The
coordinator's clock is the step counter (:class:`StepClock`). It has no
scheduler: each step is a method that a hypothesis state machine (or a
seeded walk) calls; its ground truth (:meth:`Cluster.truth`) covers
processes outside a cut, requests applied twice and lost messages.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from queue import Empty

from sim.process import Handler, SimProcess, without_epoch

from cutwatch.collector import Coordinator, SqliteCutStore, StoredCut
from cutwatch.collector._sessions import EXPECTED_KEY, AgentSession
from cutwatch.core import (
    REQUEST,
    RESPONSE,
    Flush,
    Flushed,
    Goodbye,
    Heartbeat,
    Outbound,
    Registration,
)
from cutwatch.proto import agent_message_from_pb, event_to_message

__all__ = ["MAX_RUNNING", "Cluster", "CutTruth", "Finished", "Run"]

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


@dataclass(eq=False)
class Message:
    """One application message, as the ground truth knows it.

    ``epoch`` is the sender's epoch at the send (the debit is in the same
    atomic step), ``tick`` the sender's own clock entry then, ``applied`` the
    receiver's epoch when its application applied it (the credit), ``lost``
    whether the network lost it or it went to a process that was dead by then.
    """

    sender: str
    receiver: str
    amount: int
    epoch: int
    tick: int
    kind: str
    call_id: int
    stamp: bytes
    applied: int | None = None
    lost: bool = False
    delivered: bool = False

    @property
    def caller(self) -> str:
        return self.sender if self.kind == REQUEST else self.receiver


@dataclass(eq=False)
class Packet:
    """One copy of a message on the network.

    ``copy`` marks a transport repeat of a request that was delivered
    already (same call id and attempt, so the same message to the agent);
    ``applies`` says whether the handler it reaches applies it again (a
    handler that is not idempotent) or recognises the call and does nothing.
    """

    msg: Message
    copy: bool = False
    applies: bool = False


@dataclass(eq=False)
class Serving:
    """A handler from delivery until it answers; a copy's handler ends when it has run."""

    handler: Handler
    packet: Packet
    consumed: bool = False


@dataclass(eq=False)
class Node:
    """An instrumented process with its stream to the collector.

    ``reports`` is the agent's queue of numbered events, sent in order while
    it has a ``session``; the collector's orders for it wait in the
    session's outbox, also in order.
    """

    process: SimProcess
    handlers: list[Serving] = field(default_factory=list)
    calls: dict[int, tuple[Outbound, str]] = field(default_factory=dict)  # open call id -> (call, target)
    alive: bool = True
    session: AgentSession | None = None
    registered: int = 0  # the epoch it registered with, last time
    heard: int = 0  # the step the collector last heard from it
    left: int = 0  # the step its last stream ended
    reports: deque[tuple[int, object]] = field(default_factory=deque)
    seq: int = 0

    @property
    def pid(self) -> str:
        return self.process.pid

    @property
    def connected(self) -> bool:
        return self.alive and self.session is not None and not self.session.closed


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
    hands the collector every participant's flush marker as soon as it asks
    for a round, without waiting for the agents;
    ``honour_stamp_epoch=False`` delivers messages as an agent that ignores
    the epoch in their stamps would (no local snapshot first). Every process
    registers and reads the collector's first order before anything else
    happens.
    """

    def __init__(
        self,
        n: int,
        initial: int,
        *,
        deadline: int = 30,
        rejoin: int = 10,
        silent: int = 15,
        consumption_rule: bool = True,
        flush_barrier: bool = True,
        honour_stamp_epoch: bool = True,
    ) -> None:
        self.clock = StepClock()
        self.initial = initial
        self.honour_stamp_epoch = honour_stamp_epoch
        self.deadline = deadline
        self.rejoin = rejoin
        self.silent = silent
        self.consumption_rule = consumption_rule
        self.flush_barrier = flush_barrier
        self.now = 0
        self.store = SqliteCutStore(":memory:")
        self.nodes = {f"p{i}": Node(SimProcess(f"p{i}", initial, now=self._now)) for i in range(n)}
        self.pids = list(self.nodes)
        self.network: list[Packet] = []
        self.messages: list[Message] = []
        self.minted: list[tuple[str, int, int]] = []  # (process, epoch, amount) of requests applied again
        self.held: list[tuple[int, Packet]] = []  # (step it comes back, packet) of requests a proxy holds
        self.refused = 0
        self.late_delivered = 0
        self._faked: set[tuple[int, int, str]] = set()
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

    def _now(self) -> float:
        return float(self.now)

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
            clock=self.clock,
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
        known |= set(json.loads(self.store.get_meta(EXPECTED_KEY) or "{}"))
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
        core = node.process.core
        registration = Registration(pid, SERVICE, worker_pools=core.worker_pools, epoch=core.epoch)
        node.session = self.coordinator.register(registration)
        node.registered = core.epoch
        node.heard = self.now
        self.expected.pop(pid, None)
        return node.session

    def report(self, pid: str) -> bool:
        """The collector receives the next event on ``pid``'s stream, through the protobuf conversion."""
        node = self.nodes[pid]
        if not node.connected or not node.reports:
            return False
        assert node.session is not None
        seq, event = node.reports.popleft()
        assert not isinstance(event, (Heartbeat, Goodbye))
        self.coordinator.on_message(node.session, *agent_message_from_pb(event_to_message(event, seq), pid))
        node.heard = self.now
        if not self.flush_barrier:
            self._fake_markers()
        return True

    def _fake_markers(self) -> None:
        """Markers for every flush round the collector just asked for, as if every agent had flushed."""
        for node in self.nodes.values():
            if not node.connected:
                continue
            assert node.session is not None
            for order in list(node.session.outbox.queue):
                if isinstance(order, Flush) and (order.epoch, order.round, node.pid) not in self._faked:
                    self._faked.add((order.epoch, order.round, node.pid))
                    self.coordinator.on_message(node.session, 0, Flushed(order.epoch, node.pid, order.round))

    def order(self, pid: str) -> bool:
        """The agent carries out the collector's next order, as ``Agent`` does."""
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
        node.process.core.carry_out(order)
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
        self.clock.now = float(self.now)
        due = sorted(n for n in self.notices if n[0] <= self.now)
        self.notices = [n for n in self.notices if n[0] > self.now]
        back = [packet for when, packet in self.held if when <= self.now]
        self.held = [(when, packet) for when, packet in self.held if when > self.now]
        for packet in back:
            if self.nodes[packet.msg.receiver].alive:
                self.network.append(packet)
        for _, caller, call_id in due:
            node = self.nodes[caller]
            if node.alive and call_id in node.calls:
                outbound, _ = node.calls.pop(call_id)  # the caller got its error: the waiting task goes on
                node.process.fail(outbound, UNAVAILABLE)
                self._emit(node)
        # An agent with nothing queued sends heartbeats; a backed-up stream says nothing, and the
        # collector drops a stream silent for longer than ``silent`` (the agent then reconnects).
        for node in self.nodes.values():
            if node.connected and not node.reports:
                assert node.session is not None
                self.coordinator.on_message(node.session, 0, Heartbeat(0))
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
        process = node.process
        if not node.alive or src == dst or process.balance <= 0:
            return None
        amount = min(1 + amount, process.balance)
        outbound, stamp = process.send((dst,), amount)
        call_id = outbound.call.call_id
        node.calls[call_id] = (outbound, dst)
        msg = Message(src, dst, amount, process.epoch, process.tick, REQUEST, call_id, stamp)
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
        process = node.process
        assert node.alive, "messages to a dead process leave the network when it dies"
        stamp = msg.stamp if self.honour_stamp_epoch else without_epoch(msg.stamp)
        if msg.kind == RESPONSE:
            if msg.call_id not in node.calls:
                # The call failed already (its request came back late): gRPC hands the application no
                # late answer, and its tokens are gone.
                msg.lost = True
                return packet
            outbound, _ = node.calls.pop(msg.call_id)
            process.receive(outbound, stamp, msg.amount)  # received and applied at once
            msg.applied = process.epoch
        else:
            handler = process.deliver(stamp, json.dumps(msg.amount))
            if handler.refused:
                # Its caller gave the call up and a snapshot fenced it: never run, the tokens are gone.
                self.refused += 1
                self._emit(node)
                return packet
            assert handler.duplicate == packet.copy, "a repeat is recognised by its key, and only a repeat"
            if not self.consumption_rule and not packet.copy:
                process.apply(handler, 0)  # enters atomic() before applying anything: consumed now
            node.handlers.append(Serving(handler, packet))
            if msg.lost and not packet.copy:  # a held request came back before any fence
                msg.lost = False
                self.late_delivered += 1
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
            self.notices.append((self.now + notice, msg.caller, msg.call_id))
        return packet

    def hold(self, index: int, notice: int, delay: int) -> Packet | None:
        """A proxy holds a request: its caller's call fails ``notice`` steps later, and the request comes
        back ``delay`` steps after that (refused if a snapshot fenced the call meanwhile)."""
        requests = [i for i, p in enumerate(self.network) if p.msg.kind == REQUEST and not p.copy]
        if not requests:
            return None
        packet = self.network.pop(requests[index % len(requests)])
        msg = packet.msg
        msg.lost = True
        self.notices.append((self.now + notice, msg.caller, msg.call_id))
        self.held.append((self.now + notice + delay, packet))
        return packet

    def duplicate(self, index: int, applies: bool) -> Message | None:
        """The transport repeats a delivered request (same call id and attempt) to the same process."""
        candidates = [
            m for m in self.messages if m.kind == REQUEST and m.delivered and self.nodes[m.receiver].alive
        ]
        if not candidates:
            return None
        msg = candidates[index % len(candidates)]
        self.network.append(Packet(msg, copy=True, applies=applies))
        self.duplicates_injected += 1
        return msg

    def consume(self, pid: str, index: int) -> Serving | None:
        """A handler reaches atomic(): it applies the request, which then counts as consumed."""
        node = self.nodes[pid]
        waiting = [h for h in node.handlers if not h.consumed] if node.alive else []
        if not waiting:
            return None
        serving = waiting[index % len(waiting)]
        msg, process = serving.packet.msg, node.process
        if serving.packet.copy:
            # Not idempotent: the tokens are applied a second time; idempotent: nothing is.
            process.apply(serving.handler, msg.amount if serving.packet.applies else 0)
            if serving.packet.applies:
                self.minted.append((pid, process.epoch, msg.amount))
            process.answer(serving.handler, 0)  # its answer goes nowhere: the transport made the copy
            node.handlers.remove(serving)
        else:
            process.apply(serving.handler, msg.amount)
            msg.applied = process.epoch
            serving.consumed = True
        self._emit(node)
        return serving

    def respond(self, pid: str, index: int, refund: int) -> Message | None:
        """A handler answers: it refunds part of its balance, debit and answer in one atomic step."""
        node = self.nodes[pid]
        done = [h for h in node.handlers if h.consumed] if node.alive else []
        if not done:
            return None
        serving = done[index % len(done)]
        node.handlers.remove(serving)
        request, process = serving.packet.msg, node.process
        refund = min(refund, max(process.balance, 0))
        stamp = process.answer(serving.handler, refund)
        assert stamp is not None
        msg = Message(
            pid, request.sender, refund, process.epoch, process.tick, RESPONSE, request.call_id, stamp
        )
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
                self.coordinator.on_message(session, 0, Goodbye())
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
        answered = {(p.msg.receiver, p.msg.call_id) for p in self.network if p.msg.kind == RESPONSE}
        for caller in self.nodes.values():
            if not caller.alive:
                continue
            for call_id, (_, target) in caller.calls.items():
                if target == pid and (caller.pid, call_id) not in answered:
                    self.notices.append((self.now + notice, caller.pid, call_id))

    def _emit(self, node: Node) -> None:
        """Number the core's events and queue them for the collector (``ControlClient.submit``)."""
        for event in node.process.drain():
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
                    receipts.append((m.sender, m.receiver, m.epoch, m.tick))
            elif sent and m.receiver in members and not m.lost:
                tokens += m.amount
                in_transit[(m.kind, m.caller, m.call_id, m.sender, m.receiver, m.amount)] += 1
        minted = [amount for pid, epoch, amount in self.minted if pid in members and epoch < k]
        return CutTruth(tokens + sum(minted), in_transit, tuple(receipts), crossed, len(minted))
