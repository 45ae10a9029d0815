"""A seeded world of services that call each other and wait: worker pools, queues, snapshots, deadlocks.

Each process is the real event core (:class:`cutwatch.core.ProcessCore`)
with one worker pool of one or two workers, driven as the sync interceptors
drive it: a request that reaches a server is recorded as it arrives
(:meth:`ProcessCore.arrive`, gRPC's polling thread) and waits in the
server's FIFO queue; a worker takes the oldest queued call when one is free
(:meth:`ProcessCore.begin_handler`). A handler follows its plan: blocking
calls, one after the other, each to a group of servers (a channel behind a
load balancer: the network picks the server when it delivers the request),
then it answers. Application threads make calls the same way. Calls may
queue behind busy workers, and the pools deadlock, as thread pools do.

Everything is decided by one ``random.Random``: which message the
(non-FIFO) network delivers next, when a worker takes a call, when a handler
moves on, when the collector starts a snapshot. Reports reach the real cut
assembler in order per process, interleaved across processes.

The ground truth is plain: once no step can happen, the tasks that never
finished are deadlocked, and nothing else ever was. Whenever a snapshot waits
only for calls queued at their servers, the world also asks the collector's
early finish (:func:`cutwatch.collector._queued.queued_calls_stuck`) whether
they are stuck behind deadlocked workers, and remembers what it said.
"""

from __future__ import annotations

import contextvars
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.world import Control

from cutwatch.collector._queued import queued_calls_stuck
from cutwatch.collector._records import cut_from_stored, stored_from_assembled
from cutwatch.core import (
    AssembledCut,
    ChannelPeer,
    Cut,
    CutAssembler,
    Inbound,
    Outbound,
    ProcessCore,
    Refused,
    SnapshotEvent,
)

METHOD = "/shop.Shop/Do"

Plan = tuple[tuple[tuple[str, ...], "Plan"], ...]
"""The calls a handler makes, in order: (the servers its channel leads to, the callee's own plan)."""


@dataclass(frozen=True)
class WaitConfig:
    processes: int = 3
    pool_sizes: tuple[int, ...] = (1, 2)
    """Each process's pool size is drawn from these."""
    calls: int = 6
    """Calls the application threads start."""
    depth: int = 2
    fanout: int = 2
    balanced: bool = True
    """Channels may lead to two servers (a round_robin balancer): the network picks one per call."""
    snapshots: int = 4
    steps: int = 300
    record_arrivals: bool = True
    """Servers record calls as they arrive; off, a queued call is invisible until a worker takes it."""


@dataclass(eq=False)
class Request:
    caller: str
    call_id: int
    targets: tuple[str, ...]
    stamp: bytes
    plan: Plan
    waiter: Waiter


@dataclass(eq=False)
class Response:
    receiver: str
    stamp: bytes | None
    waiter: Waiter


@dataclass(eq=False)
class Waiter:
    """A task that makes its calls one by one: a handler (``request`` set) or an application thread."""

    process: str
    context: contextvars.Context
    plan: Plan
    request: Request | None = None
    inbound: Inbound | None = None
    step: int = 0
    calling: Outbound | None = None
    done: bool = False

    @property
    def task_id(self) -> int:
        if self.inbound is not None:
            return self.inbound.task.task_id
        assert self.calling is not None, "an application thread is a task only while it calls"
        return self.calling.task.task_id


@dataclass(eq=False)
class Queued:
    request: Request
    arrival: object
    task_id: int | None


@dataclass(eq=False)
class Server:
    core: ProcessCore
    pool: str
    size: int
    queue: deque[Queued] = field(default_factory=deque)
    running: list[Waiter] = field(default_factory=list)
    channels: dict[tuple[str, ...], ChannelPeer] = field(default_factory=dict)
    emitted: list[SnapshotEvent] = field(default_factory=list)


Message = Request | Response | Control


class WaitWorld:
    def __init__(self, config: WaitConfig, rng: random.Random) -> None:
        self.cfg, self.rng = config, rng
        self.pids = [f"svc{k}:{k}" for k in range(config.processes)]
        self.servers: dict[str, Server] = {}
        for pid in self.pids:
            emitted: list[SnapshotEvent] = []
            core = ProcessCore(pid, emit=emitted.extend, monotonic=self._now)
            size = rng.choice(config.pool_sizes)
            self.servers[pid] = Server(core, core.register_pool(size), size, emitted=emitted)
        self.network: list[Message] = []
        self.reports: dict[str, deque[SnapshotEvent]] = {pid: deque() for pid in self.pids}
        self.waiters: list[Waiter] = []
        self.started_calls = 0
        self.time = 0
        self.next_epoch = 1
        self.assemblers: dict[int, CutAssembler] = {}
        self.cuts: dict[int, AssembledCut] = {}
        self.said_stuck: dict[int, set[tuple[str, int]]] = {}
        """Calls the early finish called stuck behind deadlocked workers, by epoch."""

    def _now(self) -> float:
        return float(self.time)

    # Workload ----------------------------------------------------------------------------------
    def _plan(self, depth: int) -> Plan:
        if depth == 0:
            return ()
        calls = []
        for _ in range(self.rng.randint(0, self.cfg.fanout)):
            group = 2 if self.cfg.balanced and self.cfg.processes > 1 and self.rng.random() < 0.3 else 1
            targets = tuple(sorted(self.rng.sample(self.pids, group)))
            calls.append((targets, self._plan(depth - 1)))
        return tuple(calls)

    def _start_call(self) -> None:
        pid = self.rng.choice(self.pids)
        targets = (self.rng.choice(self.pids),)
        waiter = Waiter(pid, contextvars.Context(), ((targets, self._plan(self.cfg.depth - 1)),))
        self.waiters.append(waiter)
        self.started_calls += 1
        self._advance(waiter)

    def _advance(self, waiter: Waiter) -> None:
        """The task's next step: its next call, or (a handler) its answer, or (a thread) its end."""
        server = self.servers[waiter.process]
        core = server.core
        if waiter.step < len(waiter.plan):
            targets, plan = waiter.plan[waiter.step]
            waiter.step += 1
            channel = server.channels.setdefault(targets, ChannelPeer())
            started = waiter.context.run(core.begin_call, METHOD, channel)
            assert started is not None, "the core failed to send"
            waiter.calling, stamp = started
            self.network.append(
                Request(waiter.process, waiter.calling.call.call_id, targets, stamp, plan, waiter)
            )
            return
        waiter.done = True
        if waiter.request is not None:
            assert waiter.inbound is not None
            server.running.remove(waiter)
            stamp = waiter.context.run(core.end_handler, waiter.inbound)
            self.network.append(Response(waiter.request.caller, stamp, waiter.request.waiter))
        self._report(waiter.process)

    # Steps -------------------------------------------------------------------------------------
    def step(self, *, workload: bool) -> bool:
        """One step; False when none can happen (the network is empty, no worker can take a call)."""
        self.time += 1
        choices: list[Callable[[], None]] = []
        if workload and self.started_calls < self.cfg.calls:
            choices.append(self._start_call)
        if workload and self.next_epoch <= self.cfg.snapshots and self.rng.random() < 0.1:
            choices.append(self.start_snapshot)
        if self.network:
            choices += [self._deliver] * 3
        if any(s.queue and len(s.running) < s.size for s in self.servers.values()):
            choices += [self._take_call] * 2
        if any(self.reports.values()):
            choices += [self._collect_one] * 2
        if not choices:
            return False
        self.rng.choice(choices)()
        return True

    def _deliver(self) -> None:
        message = self.network.pop(self.rng.randrange(len(self.network)))
        if isinstance(message, Control):
            server = self.servers[message.receiver]
            message.carry_out(server.core)
            self._report(message.receiver)
        elif isinstance(message, Request):
            target = self.rng.choice(message.targets)
            server = self.servers[target]
            arrival = None
            if self.cfg.record_arrivals:
                arrival = server.core.arrive(METHOD, message.stamp, 0, server.pool)
            task_id = arrival.task_id if arrival is not None else None
            server.queue.append(Queued(message, arrival, task_id))
        else:
            waiter = message.waiter
            server = self.servers[waiter.process]
            assert waiter.calling is not None
            waiter.context.run(server.core.end_call, waiter.calling, message.stamp)
            self._advance(waiter)
            self._report(waiter.process)

    def _take_call(self) -> None:
        ready = [pid for pid, s in self.servers.items() if s.queue and len(s.running) < s.size]
        pid = self.rng.choice(ready)
        server = self.servers[pid]
        queued = server.queue.popleft()  # a thread pool's queue is FIFO
        context = contextvars.Context()
        inbound = context.run(
            server.core.begin_handler,
            METHOD,
            queued.request.stamp,
            0,
            server.pool,
            "null",
            queued.arrival,  # type: ignore[arg-type]
        )
        assert isinstance(inbound, Inbound) and not isinstance(inbound, Refused), "no fence in this world"
        waiter = Waiter(pid, context, queued.request.plan, queued.request, inbound)
        self.waiters.append(waiter)
        server.running.append(waiter)
        self._advance(waiter)
        self._report(pid)

    # The collector -----------------------------------------------------------------------------
    def start_snapshot(self) -> None:
        epoch = self.next_epoch
        self.next_epoch += 1
        self.assemblers[epoch] = CutAssembler(epoch, self.pids)
        self.network.extend(Control(pid, epoch) for pid in self.pids)

    def _report(self, pid: str) -> None:
        server = self.servers[pid]
        self.reports[pid].extend(server.emitted)
        server.emitted.clear()

    def _collect_one(self) -> None:
        pid = self.rng.choice([p for p, queue in self.reports.items() if queue])
        event = self.reports[pid].popleft()
        if event.epoch in self.cuts:
            return
        assembler = self.assemblers[event.epoch]
        assembler.add(event)
        due = assembler.next_flush()
        if due is not None:
            round_, fence = due
            self.network.extend(
                Control(p, event.epoch, flush=True, round=round_, fence=fence) for p in self.pids
            )
        if assembler.status() != "PENDING":
            self.cuts[event.epoch] = assembler.finish()
        elif assembler.waits_only_on_queued_calls():
            cut = assembler.finish()
            if queued_calls_stuck(cut, 0.0):
                self.said_stuck.setdefault(event.epoch, set()).update(
                    (u.caller, u.call_id) for u in cut.unsettled
                )

    def finish_cuts(self) -> None:
        """Every snapshot still open ends as it stands (the collector's timeout)."""
        for epoch, assembler in self.assemblers.items():
            if epoch not in self.cuts:
                self.cuts[epoch] = assembler.finish()

    # Ground truth ------------------------------------------------------------------------------
    def still_queued(self) -> set[tuple[str, int]]:
        """The calls (caller, call id) that no worker ever took."""
        return {(q.request.caller, q.request.call_id) for s in self.servers.values() for q in s.queue}

    def stuck(self) -> set[tuple[str, int]]:
        """The tasks that will never finish: unfinished threads and handlers, and calls still queued."""
        out = {(w.process, w.task_id) for w in self.waiters if not w.done}
        for pid, server in self.servers.items():
            out.update((pid, q.task_id) for q in server.queue if q.task_id is not None)
        return out


def run_world(config: WaitConfig, rng: random.Random) -> tuple[WaitWorld, dict[int, Cut], Cut]:
    """Run the workload, then every step that can still happen; then one more snapshot, of the final
    state. Returns the world, its cuts as the collector stores them, and the final cut."""
    world = WaitWorld(config, rng)
    for _ in range(config.steps):
        world.step(workload=True)
    while world.step(workload=False):
        pass
    final = world.next_epoch
    world.start_snapshot()
    while world.step(workload=False):
        pass
    world.finish_cuts()
    cuts = {epoch: cut_from_stored(stored_from_assembled(cut, 0.0, 0.0)) for epoch, cut in world.cuts.items()}
    return world, cuts, cuts[final]
