"""The snapshot coordinator: who is registered, which snapshots run, when each one ends.

Pure of gRPC and protobuf: the service (the gRPC edge) feeds it
registrations and the messages of agents' streams as core records, and
forwards the orders it queues for each agent; time comes from ``clock``.
All state is guarded by one lock; storing a finished cut happens outside
it, so a slow disk never stalls the agents' streams.

Life of snapshot ``k``: :meth:`Coordinator.start_snapshot` picks ``k``
above every epoch any agent has reported, fixes the participants (the
agents registered at that moment) and orders each to take its local
snapshot. Pieces arrive in any order; the cut is finished as soon as its
assembler says COMPLETE or can never complete (a participant stopped
recording, lost events or disconnected), or at its deadline, INCOMPLETE.
A cut that contradicts itself (an inconsistent cut) is rejected: it is
logged as a bug and stored as INCOMPLETE with the reason, never COMPLETE.
Once every local snapshot of ``k`` is in, each participant is asked to
flush: its marker comes behind every event it sent before, and ``k`` is not
complete until all markers are in (see :mod:`cutwatch.core._participant`).

Agents that register while ``k`` runs join at ``k`` without taking part.
One that a message stamped ``k`` reached before it learnt that takes its
local snapshot anyway: its pieces are dropped and ``k`` is INCOMPLETE
("took part without being registered"), since its state is part of the
system but not of the cut. Agents that leave make ``k`` INCOMPLETE at once,
naming them.

A process whose stream broke may be reconnecting, and its state is still
part of the system: for ``rejoin_grace`` seconds after it left (or after the
collector started, for the processes registered before and those of the
newest stored cut) every new snapshot is INCOMPLETE, naming it, rather than
a COMPLETE cut of the rest; past the grace it is named on every cut as left
out (for ``forget_after`` seconds), as are agents that registered after a
snapshot started. An epoch any agent reports is never numbered again, even
one started by a collector that crashed.
An agent that shuts down on purpose says goodbye and is forgotten at once.
A process that comes back continues its event numbering where its last
stream ended, so events lost with a broken stream show as a gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cutwatch.collector._queued import queued_calls_stuck
from cutwatch.collector._recordings import RecordingLog
from cutwatch.collector._records import StoredCut, stored_from_assembled
from cutwatch.collector._sessions import (
    AgentSession,
    Clock,
    CoordinatorStats,
    Departed,
    Roster,
    check_registration,
    expected_after_restart,
    left_out,
)
from cutwatch.collector._store import CutStore
from cutwatch.core import (
    AgentEvent,
    AssembledCut,
    AssemblyError,
    CloseEpoch,
    CutAssembler,
    Flush,
    Flushed,
    Goodbye,
    Heartbeat,
    Invalid,
    LocalSnapshot,
    NoAgentsError,
    RecordingStopped,
    Registered,
    Registration,
    SnapshotEvent,
    StorageError,
    TakeSnapshot,
    shown,
    snapshot_waves,
    stream_edges,
)

__all__ = ["AgentSession", "Clock", "Coordinator", "CoordinatorStats", "NoAgentsError"]

_LOG = logging.getLogger("cutwatch.collector")
MAX_EPOCH = 1 << 62
"""Epochs stay far below protobuf's uint64 bound, whatever an agent reports."""
QUEUED_PROBE_INTERVAL = 0.25
"""Seconds before the first look at a snapshot that waits only on queued calls; each look that finds
them able to run doubles the wait before the next (each look builds the cut's wait-for graph)."""
REASON_DISCONNECTED = "disconnected from the collector"
REASON_EVENTS_LOST = "events lost on the way to the collector"
REASON_REJECTED = "REJECTED (a cutwatch bug, please report it): "
REASON_UNREGISTERED = "took part without being registered when the snapshot started"
REASON_ABSENT = "not connected (its stream ended less than the rejoin grace ago; it may be reconnecting)"


@dataclass
class _Run:
    epoch: int
    assembler: CutAssembler
    started: float
    deadline: float
    services: dict[str, str]
    waves: list[list[str]] = field(default_factory=list)
    """Processes still to ask for their local snapshot, wave by wave (receivers of streams first)."""
    asked: set[str] = field(default_factory=set)
    """The wave asked last: the next one is asked once all of these have sent their local snapshot."""
    done: threading.Event = field(default_factory=threading.Event)
    result: StoredCut | None = None
    next_probe: float = 0.0
    """When to look again whether the calls it waits for are stuck behind deadlocked workers."""
    probe_interval: float = QUEUED_PROBE_INTERVAL


class Coordinator:
    """Starts snapshots, assembles their pieces and stores the cuts in ``store``.

    ``on_finished`` is called (outside the lock) with every stored cut.
    """

    def __init__(
        self,
        store: CutStore,
        *,
        snapshot_timeout: float = 10.0,
        on_finished: Callable[[StoredCut], None] | None = None,
        max_running: int = 8,
        rejoin_grace: float = 10.0,
        silent_after: float = 15.0,
        forget_after: float = 3600.0,
        clock: Clock = time,
        recordings: RecordingLog | None = None,
    ) -> None:
        self.store = store
        self.recordings = recordings
        """Where the state changes recorded for lattice predicates go (None: no lattice predicate)."""
        self.clock = clock
        self.snapshot_timeout = snapshot_timeout
        self.rejoin_grace = rejoin_grace
        self.silent_after = silent_after
        self.forget_after = forget_after
        self._on_finished = on_finished
        self._max_running = max_running
        self._lock = threading.Lock()
        self._sessions: dict[str, AgentSession] = {}
        self._runs: dict[int, _Run] = {}
        self._finished: dict[int, StoredCut] = {}
        self._last_epoch = max(0, store.next_epoch() - 1)
        self._departed: dict[str, Departed] = expected_after_restart(store, clock.monotonic())
        self._gone: dict[str, Departed] = {}
        self._stream_edges: dict[str, set[tuple[str, str]]] = {}
        """Who streams to whom, from each process's latest local snapshot (for the snapshot waves)."""
        """Processes that left without a goodbye and did not come back within the rejoin grace."""
        self._roster = Roster(store)
        self._stats: Counter[str] = Counter()

    def _remember_expected(self) -> None:
        """Write down who is registered or expected back, for the next start (outside the lock)."""

        def expected() -> dict[str, str]:
            with self._lock:
                out = {p: d.service for p, d in self._departed.items()}
                out.update((p, s.service) for p, s in self._sessions.items())
                return out

        self._roster.write(expected)

    # Agents -------------------------------------------------------------------------------------
    def register(self, registration: Registration) -> AgentSession:
        """A new control stream; a second stream of the same process replaces the first."""
        check_registration(registration, MAX_EPOCH)
        process = registration.process_id
        session = AgentSession(
            process=process,
            service=registration.service,
            worker_pools=dict(registration.worker_pools),
            epoch=registration.epoch,
            untracked_seen=registration.untracked_changes,
            connected_at=self.clock.time(),
            last_seen=self.clock.monotonic(),
        )
        with self._lock:
            old = self._sessions.get(process)
            if old is not None:
                self._leave(old)
                session.last_seq, session.dropped = old.last_seq, old.dropped
            departed = self._departed.pop(process, None)
            if departed is not None:
                session.last_seq, session.dropped = departed.last_seq, departed.dropped
            elif old is None:  # new to this collector (or it restarted): earlier drops are history
                session.dropped = registration.dropped
            self._sessions[process] = session
            self._last_epoch = max(self._last_epoch, registration.epoch)
            session.send(Registered(self._last_epoch))
        _LOG.info("agent %s (%s) registered", shown(process), shown(session.service))
        self._remember_expected()
        return session

    def unregister(self, session: AgentSession) -> None:
        with self._lock:
            finished = self._drop(session)
        self._store_all(finished)
        self._remember_expected()

    def _drop(self, session: AgentSession) -> list[_Run]:
        """Forget ``session`` (if current); expect its process back unless it said goodbye. Holds the lock."""
        if self._sessions.get(session.process) is not session:
            return []
        del self._sessions[session.process]
        finished = self._leave(session)
        if not session.said_goodbye:
            self._departed[session.process] = Departed(
                session.service, self.clock.monotonic(), session.last_seq, session.dropped
            )
        _LOG.info("agent %s %s", shown(session.process), "left" if session.said_goodbye else "disconnected")
        return finished

    def _leave(self, session: AgentSession) -> list[_Run]:
        """The session is gone: every snapshot it takes part in loses it; holds the lock."""
        session.close()
        ended: list[_Run] = []
        for run in list(self._runs.values()):
            if session.process in run.assembler.participants:
                run.assembler.add_stopped(
                    RecordingStopped(run.epoch, session.process, REASON_DISCONNECTED, 0)
                )
                ended += self._settle(run)
        return ended

    def on_message(self, session: AgentSession, seq: int, body: AgentEvent | None) -> None:
        """Message ``seq`` of an agent's stream (``body`` None: nothing to act on, but a sign of life).

        Invalid messages are counted and dropped; a gap in the numbering
        means events were lost on the way.
        """
        finished: list[_Run] = []
        with self._lock:
            session.last_seen = self.clock.monotonic()
            if isinstance(body, Goodbye):
                session.said_goodbye = True
            elif isinstance(body, Heartbeat):
                if body.dropped > session.dropped:
                    session.dropped = body.dropped
                    finished += self._lost_events(session)
            elif body is not None:
                self._stats["events"] += 1
                if session.last_seq and seq > session.last_seq + 1:
                    finished += self._lost_events(session)
                session.last_seq = max(session.last_seq, seq)
                if isinstance(body, Invalid):
                    self._stats["invalid"] += 1
                    session.invalid += 1
                    _LOG.warning(
                        "dropped an invalid message from %s: %s", shown(session.process), shown(body.reason)
                    )
                else:
                    finished += self._on_event(session, body)
        self._store_all(finished)

    def _on_event(self, session: AgentSession, event: SnapshotEvent) -> list[_Run]:
        """One snapshot event of a participant; holds the lock."""
        # An epoch an agent took part in is never numbered again, even one this
        # collector never started (it was started before a crash).
        self._last_epoch = max(self._last_epoch, min(event.epoch, MAX_EPOCH))
        if isinstance(event, LocalSnapshot | Flushed):
            session.untracked_seen = max(session.untracked_seen, event.untracked_changes)
        if isinstance(event, LocalSnapshot):
            self._stream_edges[session.process] = stream_edges(event.streams, session.process)
        run = self._runs.get(event.epoch)
        if run is None:
            self._stats["late"] += 1
            return []
        if session.process not in run.services:
            # Registered after k started (or again, after a collector restart) and forced into k by a
            # message stamped k before it learnt to join at k: its pieces are not part of k, whose
            # participants were fixed at the start, but its state is part of the system, so k cannot
            # be complete.
            self._stats["foreign"] += 1
            if not isinstance(event, LocalSnapshot):
                return []
            run.assembler.add_stopped(RecordingStopped(run.epoch, session.process, REASON_UNREGISTERED, 0))
            return self._settle(run)
        try:
            run.assembler.add(event)
        except AssemblyError as exc:
            return self._reject(run, exc)
        if isinstance(event, LocalSnapshot):
            self._ask_next_wave(run)
        flush = run.assembler.next_flush()
        if flush is not None:
            order = Flush(run.epoch, *flush)
            for process in run.services:
                target = self._sessions.get(process)
                if target is not None:
                    target.send(order)
        return self._settle(run)

    def _lost_events(self, session: AgentSession) -> list[_Run]:
        ended: list[_Run] = []
        for run in list(self._runs.values()):
            if session.process in run.assembler.participants:
                run.assembler.add_stopped(RecordingStopped(run.epoch, session.process, REASON_EVENTS_LOST, 0))
                ended += self._settle(run)
        return ended

    # Snapshots ----------------------------------------------------------------------------------
    def start_snapshot(self, timeout: float | None = None) -> int:
        """Start a snapshot of every registered agent; returns its epoch."""
        timeout = self.snapshot_timeout if timeout is None else timeout
        evicted: list[_Run] = []
        try:
            with self._lock:
                return self._start(timeout, evicted)
        finally:
            self._store_all(evicted)

    def _start(self, timeout: float, evicted: list[_Run]) -> int:
        """Holds the lock."""
        sessions = [s for s in self._sessions.values() if not s.closed]
        now = self.clock.monotonic()
        if not sessions and not any(now - d.at < self.rejoin_grace for d in self._departed.values()):
            # With processes expected back the snapshot goes ahead and is INCOMPLETE, naming them, as
            # `cutwatch status` announces; with nobody at all there is nothing to take.
            raise NoAgentsError("no agent is registered with this collector")
        if len(self._runs) >= self._max_running:
            oldest = min(self._runs)
            evicted += self._finish(self._runs[oldest], "too many snapshots running at once")
        epoch = max([self._last_epoch, *(s.epoch for s in sessions)]) + 1
        self._last_epoch = epoch
        for process, departed in list(self._departed.items()):
            if now - departed.at >= self.rejoin_grace:
                # Gone for good, it seems (a crash, a partition, or a shutdown without goodbye): no longer
                # waited for, but named on every cut as left out until it comes back or is forgotten.
                del self._departed[process]
                self._gone[process] = departed
        for process, departed in list(self._gone.items()):
            if now - departed.at >= self.forget_after or process in self._sessions:
                del self._gone[process]
        absent = {p: d.service for p, d in self._departed.items() if p not in self._sessions}
        run = _Run(
            epoch=epoch,
            assembler=CutAssembler(
                epoch,
                [*(s.process for s in sessions), *absent],
                untracked_before={s.process: s.untracked_seen for s in sessions},
            ),
            started=self.clock.time(),
            deadline=now + timeout,
            services={**absent, **{s.process: s.service for s in sessions}},
        )
        self._runs[epoch] = run
        self._stats["started"] += 1
        if absent:  # it cannot be complete: end it now, and spare the agents the work
            reasons = [f"{REASON_ABSENT} at {process}" for process in sorted(absent)]
            evicted += self._complete(
                run, AssembledCut.incomplete(epoch, run.assembler.participants, reasons)
            )
            return epoch
        for process in [p for p in self._stream_edges if p not in run.services]:
            del self._stream_edges[process]  # gone: its streams went with it
        edges = [edge for process in run.services for edge in self._stream_edges.get(process, ())]
        run.waves = snapshot_waves(run.services, edges)
        self._ask_next_wave(run)
        return epoch

    def _ask_next_wave(self, run: _Run) -> None:
        """Ask the next wave for its local snapshot once every process asked so far has sent its own;
        holds the lock. Receivers of streams cut first (see ``snapshot_waves``)."""
        reported = set(run.assembler.reported)
        if not run.asked <= reported:
            return
        while run.waves:
            run.asked = set(run.waves.pop(0))
            for process in sorted(run.asked - reported):
                session = self._sessions.get(process)
                if session is not None:
                    session.send(TakeSnapshot(run.epoch))
            if not run.asked <= reported:
                return

    def wait(self, epoch: int, timeout: float | None = None) -> StoredCut | None:
        """The finished cut of ``epoch`` (None if it is not finished within ``timeout``)."""
        with self._lock:
            if epoch in self._finished:
                return self._finished[epoch]
            run = self._runs.get(epoch)
        if run is None:
            return self.store.get_cut(epoch)
        run.done.wait(timeout)
        return run.result

    def expire(self, now: float | None = None) -> None:
        """Finish every snapshot past its deadline (called periodically)."""
        now = self.clock.monotonic() if now is None else now
        finished: list[_Run] = []
        with self._lock:
            for session in list(self._sessions.values()):
                if now - session.last_seen > self.silent_after:
                    # Heartbeats come every second: a stream this quiet is half-open (a partition,
                    # a hung agent). Drop it, so that snapshots do not wait on it to their deadline.
                    _LOG.warning(
                        "agent %s silent for %.0f s: dropped", shown(session.process), now - session.last_seen
                    )
                    finished += self._drop(session)
            probes: list[tuple[_Run, AssembledCut]] = []
            for run in list(self._runs.values()):
                if now >= run.deadline:
                    finished += self._finish(run, "")
                elif now >= run.next_probe and run.assembler.waits_only_on_queued_calls():
                    run.next_probe = now + run.probe_interval
                    run.probe_interval *= 2
                    try:
                        probes.append((run, run.assembler.finish()))
                    except AssemblyError as exc:
                        finished += self._reject(run, exc)
        # Building a big cut's wait-for graph takes a while: not under the lock agents' events need.
        for run, cut in probes:
            try:
                stuck = queued_calls_stuck(cut, run.started)
            except Exception:  # the run ends at its deadline as before
                _LOG.exception("looking for deadlocked queued calls in snapshot %d failed", run.epoch)
                continue
            if stuck:
                with self._lock:
                    finished += self._finish_stuck(run, cut)
        self._store_all(finished)

    def _finish_stuck(self, run: _Run, probed: AssembledCut) -> list[_Run]:
        """Finish ``run`` now: ``probed``, its cut as it stood, proves that every call it waits for is
        queued behind deadlocked workers; holds the lock. Unless the run ended meanwhile, or pieces
        that came since settled one of those calls (a deadlock is stable: they cannot have run)."""
        if self._runs.get(run.epoch) is not run or not run.assembler.waits_only_on_queued_calls():
            return []
        try:
            cut = run.assembler.finish()
        except AssemblyError as exc:
            return self._reject(run, exc)
        if cut.unsettled != probed.unsettled:
            return []
        self._stats["finished_early"] += 1
        return self._complete(run, cut)

    def running(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._runs))

    def absent(self) -> list[tuple[str, str, float]]:
        """Processes expected back: (process, service, seconds since they left), oldest first."""
        now = self.clock.monotonic()
        with self._lock:
            return sorted(
                (
                    (p, d.service, now - d.at)
                    for p, d in self._departed.items()
                    if now - d.at < self.rejoin_grace
                ),
                key=lambda item: -item[2],
            )

    def sessions(self) -> list[AgentSession]:
        with self._lock:
            return list(self._sessions.values())

    def stats(self) -> CoordinatorStats:
        with self._lock:
            return CoordinatorStats.of(len(self._sessions), self._stats)

    def close(self) -> None:
        """End every session and give up on running snapshots (they are stored INCOMPLETE)."""
        finished: list[_Run] = []
        with self._lock:
            for run in list(self._runs.values()):
                finished += self._finish(run, "the collector stopped")
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()
        self._store_all(finished)

    # Finishing ----------------------------------------------------------------------------------
    def _settle(self, run: _Run) -> list[_Run]:
        """Finish ``run`` if it is COMPLETE or can never be; holds the lock."""
        try:
            status = run.assembler.status()
        except AssemblyError as exc:
            return self._reject(run, exc)
        if status == "PENDING":
            return []
        return self._finish(run, "")

    def _reject(self, run: _Run, exc: AssemblyError) -> list[_Run]:
        _LOG.error("cutwatch bug: snapshot %d rejected: %s", run.epoch, shown(exc, 2000))
        self._stats["rejected"] += 1
        cut = AssembledCut.incomplete(run.epoch, run.assembler.participants, [REASON_REJECTED + str(exc)])
        return self._complete(run, cut)

    def _finish(self, run: _Run, extra_reason: str) -> list[_Run]:
        try:
            cut = run.assembler.finish()
        except AssemblyError as exc:
            return self._reject(run, exc)
        return self._complete(run, cut.with_reason(extra_reason) if extra_reason else cut)

    def _complete(self, run: _Run, cut: AssembledCut) -> list[_Run]:
        """Take ``run`` out of the running set with its result; holds the lock."""
        self._runs.pop(run.epoch, None)
        self._stats["complete" if cut.status == "COMPLETE" else "incomplete"] += 1
        if self.recordings is not None and cut.locals:
            self.recordings.add(cut.locals.values())
        run.result = stored_from_assembled(
            cut,
            run.started,
            max(run.started, self.clock.time()),
            services=run.services,
            left_out=left_out(run.services, self._sessions, self._gone, self.clock.monotonic()),
        )
        self._finished[run.epoch] = run.result
        while len(self._finished) > 64:
            del self._finished[min(self._finished)]
        fenced = run.assembler.fenced()
        for process, session in self._sessions.items():
            session.send(CloseEpoch(run.epoch, fenced.get(process, ())))
        return [run]

    def _store_all(self, runs: list[_Run]) -> None:
        """Write finished cuts (outside the lock), then wake whoever waits for them."""
        for run in runs:
            assert run.result is not None
            try:
                self.store.save_cut(run.result)
            except (StorageError, ValueError) as exc:
                with self._lock:
                    self._stats["store_errors"] += 1
                _LOG.error("cut %d could not be stored: %s", run.epoch, exc)
            if run.result.status == "COMPLETE":
                _LOG.info("snapshot %d COMPLETE", run.epoch)
            else:
                _LOG.warning(
                    "snapshot %d INCOMPLETE: %s", run.epoch, shown("; ".join(run.result.reasons), 2000)
                )
            run.done.set()
            if self._on_finished is not None:
                try:
                    self._on_finished(run.result)
                except Exception:
                    _LOG.exception("a cut listener failed")
