"""The process's event core: every event of one process of the model, in the order the protocol needs.

:class:`ProcessCore` owns what makes a process a process of the model: its
vector clock, its stamp codec, its snapshot participant, its tasks, its
state providers and worker pools. The agent's interceptors drive it through
four events (:meth:`~ProcessCore.begin_call` / :meth:`~ProcessCore.end_call`
on the client side, :meth:`~ProcessCore.begin_handler` /
:meth:`~ProcessCore.end_handler` on the server side) and the collector's
orders through plain method calls (:meth:`~ProcessCore.take_snapshot`,
:meth:`~ProcessCore.flush`, :meth:`~ProcessCore.close_epoch`,
:meth:`~ProcessCore.join`). The simulation tests drive this very object.

Stamps come in and go out as bytes; gRPC metadata, protobuf messages and the
collector's stream stay at the edges. What the participant emits goes to
``emit`` (the agent's queue to the collector), what happens to ``observer``
(the agent's event log), and time comes from ``monotonic``.

Two locks order everything. The *snapshot lock* is held by ``atomic()``
blocks and by local snapshots, so that every state change is wholly before
or wholly after a cut; the *event lock* guards the clock, the codec, the
participant and the counters. The snapshot lock is always taken first.
Nothing here raises into the application: a failure is counted, logged, and
the call goes on untracked.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Final

from cutwatch.core._arrivals import Arrival, ArrivalQueues
from cutwatch.core._calls import REFUSED, ChannelPeer, Inbound, Outbound, Refused
from cutwatch.core._clock import VectorClock
from cutwatch.core._control import CloseEpoch, Flush, Order, TakeSnapshot
from cutwatch.core._counters import Counters, ProcessStats
from cutwatch.core._events import (
    OUTCOME_FAILED,
    OUTCOME_UNSTAMPED,
    REQUEST,
    Capture,
    MsgKey,
    Payload,
    RecordingStopped,
    SnapshotEvent,
    StreamCount,
)
from cutwatch.core._gate import GateOccupants, SnapshotGate
from cutwatch.core._participant import DEFAULT_MAX_OPEN_EPOCHS, Delivery, SnapshotParticipant, SnapshotStats
from cutwatch.core._recording import DEFAULT_MAX_RECORDED_EVENTS, Recorder
from cutwatch.core._stamp import DEFAULT_MAX_CLOCK_ENTRIES, DEFAULT_MAX_STAMP_BYTES
from cutwatch.core._stamped_clock import StampedClock
from cutwatch.core._states import DEFAULT_MAX_STATE_BYTES, StateProviders
from cutwatch.core._streams import CLIENT, PULLS, SENDING, SERVER, StreamEnd
from cutwatch.core._tasks import OutboundCall, TaskRegistry, TaskView

__all__ = [
    "REASON_ATOMIC_TIMEOUT",
    "REASON_ATOMIC_WAIT",
    "ChannelPeer",
    "Inbound",
    "Outbound",
    "ProcessCore",
]

_LOG = logging.getLogger("cutwatch.agent")
REASON_ATOMIC_WAIT = "a snapshot was due while an atomic() block waited for a response"
REASON_ATOMIC_TIMEOUT = "an atomic() block held the snapshot lock"
"""How a local snapshot taken without the state says why (with how long it waited)."""
_SHOWN_WAITERS: Final = 5
CLOSED_STREAM_SNAPSHOTS: Final = 2
"""How many local snapshots still list a stream end after it closed."""
MAX_CLOSED_STREAMS: Final = 10_000
"""Closed stream ends kept for those snapshots at most (the oldest go first)."""

Emit = Callable[[Sequence[SnapshotEvent]], None]
Observer = Callable[[str, Mapping[str, int], str], None]
"""Told of every send and receive: (process id, clock after the event, what happened)."""


def no_span() -> tuple[bytes, bytes]:
    return b"", b""


class ProcessCore:
    """The events of process ``process_id``; thread-safe.

    ``max_records``, ``max_seen_messages``, ``max_open_epochs`` and
    ``abandoned_grace`` go to the snapshot participant, ``max_stamp_bytes``
    and ``max_clock_entries`` to the stamp codec, ``max_state_bytes`` bounds
    each state provider's value;
    ``atomic_timeout`` is how long a snapshot waits for an ``atomic()`` block
    before it takes that snapshot without the application state. ``span_ids``
    returns the active span's (trace id, span id), carried in stamps and tasks.
    """

    def __init__(
        self,
        process_id: str,
        *,
        max_stamp_bytes: int = DEFAULT_MAX_STAMP_BYTES,
        max_clock_entries: int = DEFAULT_MAX_CLOCK_ENTRIES,
        max_records: int = 10_000,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        max_seen_messages: int = 100_000,
        max_open_epochs: int = DEFAULT_MAX_OPEN_EPOCHS,
        atomic_timeout: float = 5.0,
        abandoned_grace: float = 600.0,
        emit: Emit | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        stream_stamp_field: str = "cutwatch_stamp",
        span_ids: Callable[[], tuple[bytes, bytes]] = no_span,
        max_recorded_events: int = DEFAULT_MAX_RECORDED_EVENTS,
    ) -> None:
        self.process_id = process_id
        self.stream_stamp_field = stream_stamp_field
        """The field of stream messages that carries a stamp, when their type has it (``bytes``):
        the opt-in envelope that makes stream cuts exact (see ``core._streams``)."""
        self.observer: Observer | None = None
        self._emit_to = emit
        self._now = monotonic
        self._span_ids = span_ids
        self._lock = threading.RLock()
        self.tasks = TaskRegistry(monotonic)
        self._gate = SnapshotGate(atomic_timeout, self.tasks)
        self._warned_holder = 0
        """The last holder of a stuck ``atomic()`` block logged (a task id), so that it is logged once."""
        self.in_atomic = self._gate.inside
        """Whether this thread is inside an ``atomic()`` block of this process."""
        self._counters = Counters()
        self._clock = StampedClock(
            process_id, self._counters, max_stamp_bytes=max_stamp_bytes, max_clock_entries=max_clock_entries
        )
        self._part = SnapshotParticipant(
            process_id,
            max_records=max_records,
            max_open_epochs=max_open_epochs,
            max_seen_keys=max_seen_messages,
            abandoned_grace=abandoned_grace,
        )
        self._call_ids = itertools.count(1)
        self._states = StateProviders(max_state_bytes)
        self._worker_pools: dict[str, int] = {}
        self._edge_pools: set[str] = set()
        self._streams: dict[int, StreamEnd] = {}
        """This process's ends of the streaming calls in flight, by ``id``."""
        self._closed: OrderedDict[int, tuple[StreamEnd, int]] = OrderedDict()
        """Ends closed lately, with how many more local snapshots list them (see :meth:`close_stream`)."""
        self._arrivals = ArrivalQueues(self._counters, self.tasks.new_id)
        """Calls that arrived and wait for a worker (see :meth:`arrive`)."""
        self._recorder = Recorder(self._counters, max_recorded_events)
        """The state names recorded for lattice predicates, and their events (see ``core._recording``)."""

    # Views ------------------------------------------------------------------------------------
    @property
    def clock(self) -> VectorClock:
        """The current vector clock (a read-only copy)."""
        with self._lock:
            return self._clock.snapshot()

    @property
    def epoch(self) -> int:
        """The newest snapshot epoch this process has taken part in (or joined at)."""
        with self._lock:
            return self._part.epoch

    def stats(self) -> ProcessStats:
        with self._lock:
            return self._counters.freeze()

    def snapshot_stats(self) -> SnapshotStats:
        with self._lock:
            return self._part.stats()

    @property
    def worker_pools(self) -> dict[str, int]:
        """Worker capacity by server name (0: not known)."""
        with self._lock:
            return dict(self._worker_pools)

    # What a local snapshot captures -------------------------------------------------------------
    def register_state(self, name: str, provider: Callable[[], object], *, record: bool = False) -> None:
        """Capture ``provider()`` under ``name`` in every local snapshot (see :class:`StateProviders`).

        ``record``: also record each new value at the end of an ``atomic()`` block, with the clock of
        that event, for lattice predicates (see ``core._recording``); its value now is the first.
        """
        with self._gate.held():
            self._states.register(name, provider)
            if record:
                first = self._recorder.add(name, provider)
                if first:
                    self._record(first)

    def register_pool(self, capacity: int | None, *, edge: bool = False) -> str:
        """A new server's worker pool of ``capacity`` workers (None: not known yet); returns its name.

        ``edge``: the server faces clients without an agent; what requests without a stamp change
        there is input, not untracked (see ``ProcessStats.untracked_changes``).
        """
        if capacity is not None and capacity < 1:
            raise ValueError("max_workers must be at least 1")
        with self._lock:
            name = f"server-{len(self._worker_pools) + 1}"
            self._worker_pools[name] = capacity or 0
            if edge:
                self._edge_pools.add(name)
            return name

    def learn_pool_capacity(self, pool: str, capacity: int) -> None:
        """The capacity of a pool registered without one, once it is known."""
        with self._lock:
            if not self._worker_pools.get(pool):
                self._worker_pools[pool] = capacity

    def local_event(self, description: str) -> None:
        """An event of the process's own (the event log's first line): ticks the clock."""
        with self._lock:
            self._clock.tick()
            self._observe(description)

    # atomic() -----------------------------------------------------------------------------------
    def atomic(self) -> AbstractContextManager[None]:
        """A state change no snapshot splits, which consumes the current request (``Agent.atomic``)."""
        return self._gate.atomic(self._consume_current)

    def _consume_current(self) -> None:
        if self._recorder:
            changed = self._recorder.changes()
            if changed:
                self._record(changed)
        sending = SENDING.get()
        if sending is not None and not sending.counted:
            # The code producing a stream message ran this block: the message goes with it.
            sending.counted = True
            self.stream_sent(sending.end)
        if PULLS.get():
            self._consume_pulls()
        task = self.tasks.current()
        if task is None:
            return
        delivery = task.delivery
        if isinstance(delivery, Delivery) and not delivery.consumed:
            try:
                with self._lock:
                    self._part.on_consume(delivery)
            except Exception:
                self.internal_error("consuming a request")
        elif task.untracked:
            # A request without a stamp changed state: no cut can tell on which side of it its sender
            # sent it (nor, for an answer, on which side its caller receives it). Every block counts,
            # so that the cuts around any of them are not called COMPLETE.
            with self._lock:
                self._counters.untracked_changes += 1

    def _record(self, values: dict[str, object]) -> None:
        """One recorded event of new ``values``: an event of this process, so the clock ticks.

        The event log shows it as ``state change #N name=value``: the number a lattice invariant's
        witness gives for each process, so the witness cut can be found in ShiViz."""
        try:
            with self._lock:
                self._clock.tick()
                seq = self._recorder.append(self._clock.as_dict(), values)
                if self.observer is not None:
                    shown = " ".join(f"{name}={json.dumps(value)}" for name, value in values.items())
                    self._observe(f"state change #{seq} {shown}")
        except Exception:
            self.internal_error("recording a state change")

    # Client side --------------------------------------------------------------------------------
    def begin_call(
        self, method: str, channel: ChannelPeer, timeout: float | None = None
    ) -> tuple[Outbound, bytes] | None:
        """Send event of a request; returns the call in flight and its stamp (None: send it untracked).

        ``timeout``: the call's deadline, in seconds from now (None: none); deadlock reports say when
        it would end a wait."""
        try:
            trace_id, span_id = self._span_ids()
            task = self.tasks.current_or_app_task()
            self._gate.claim(task)  # inside a block, the task that waits on this call holds the gate
            with self._lock:
                call_id = next(self._call_ids)
                self._clock.tick()
                epoch = self._part.on_call(call_id, method, channel.server or "")
                stamp = self._clock.encode(channel.server, epoch, call_id, trace_id, span_id)
                self._counters.requests_sent += 1
                if self.observer is not None:
                    self._observe(f"send request {method} call={call_id}")
            call = OutboundCall(call_id=call_id, method=method, target=channel.server or "")
            if timeout is not None:
                call.deadline = self._now() + timeout
            # The span the task now waits in (e.g. the handler's own server span).
            self.tasks.add_outbound(task, call, trace_id, span_id)
            return Outbound(call, task, channel), stamp
        except Exception:
            self.internal_error("preparing an outbound call")
            return None

    def end_call(
        self,
        outbound: Outbound,
        stamp: bytes | str | None,
        failure: str | None = None,
        response: Payload | None = None,
        *,
        deferrable: bool = False,
    ) -> None:
        """Receive event of a response (idempotent); ``stamp`` is the answer's, None when it had none.

        ``failure`` names the status of a call that did not succeed (with a
        stamp: one whose last attempt bounced, see :meth:`end_handler`);
        ``response`` renders the response, for the record of a response that
        is in transit at a cut. ``deferrable`` marks a finish that cutwatch
        starts on its own (a done-callback), not one the application asked
        for by reading the result: inside an ``atomic()`` block it waits
        until the block ends, so that a call started with ``.future()`` in
        the block never forces a snapshot in its middle.
        """
        if deferrable and self.in_atomic():
            self._gate.defer(lambda: self.end_call(outbound, stamp, failure, response))
            return
        try:
            with outbound.finishing, self._lock:
                if outbound.finished:  # set last: the call is wholly finished
                    return
                decoded = self._clock.decode(stamp)
                call_id = outbound.call.call_id
                # An answer without a stamp is untracked unless the application said that no agent
                # runs behind this channel, and that channel never answered with a stamp.
                channel = outbound.channel
                expected = channel.uninstrumented and channel.server is None
                if decoded is not None and decoded.call_id != call_id:
                    # Not the answer to this call (a proxy replayed trailers, or stripped the request's
                    # stamp): an agent answered, though.
                    decoded, expected = None, False
                    self._counters.untracked_malformed += 1
                if decoded is not None and decoded.epoch > self._part.epoch:
                    self._snapshot_unlocked(decoded.epoch)
                if decoded is not None:
                    self._part.on_response(
                        decoded.sender,
                        decoded.epoch,
                        "null" if response is None else response,
                        call_id,
                        self._capture,
                        method=outbound.call.method,
                        now=self._now(),
                        failure=failure or "",
                    )
                    outbound.channel.server = decoded.sender
                else:
                    outcome = OUTCOME_FAILED if failure else OUTCOME_UNSTAMPED
                    self._part.on_call_ended(call_id, outcome, failure or "", now=self._now())
                    if not failure and not expected:
                        # Maybe an agent's answer whose stamp a hop dropped: a message no cut can place.
                        self._counters.untracked_changes += 1
                self._clock.receive(decoded)
                self._counters.responses_received += 1
                if self.observer is not None:
                    sender = decoded.sender if decoded is not None else "untracked peer"
                    self._observe(f"receive response {outbound.call.method} call={call_id} from {sender}")
                self._emit()
                # Under the lock: a caller finishing the same call waits here
                # until the call has left its task.
                self.tasks.remove_outbound(outbound.task, call_id)
                outbound.finished = True
        except Exception:
            self.internal_error("finishing an outbound call")

    # Server side --------------------------------------------------------------------------------
    def arrive(self, method: str, stamp: bytes | str | None, attempt: int, pool: str) -> Arrival | None:
        """A call reached this process's server ``pool`` and waits for a worker to run its handler.

        Not a receive event (the clock and the snapshot protocol move when
        the handler starts, :meth:`begin_handler`) but a fact for deadlock
        detection: until a worker takes the call, local snapshots list it as
        a *queued* server task of ``pool``, which holds no worker and waits
        for one, so that a call queued behind busy workers has a known callee
        and pool in the cut (see ``core._arrivals``: filing takes no event
        lock and decodes nothing). Calls without a stamp are not recorded (no
        cut can tell who waits on them).
        """
        try:
            return self._arrivals.file(method, stamp, attempt, pool)
        except Exception:
            self.internal_error("recording a call that arrived")
            return None

    def task_views(self) -> list[TaskView]:
        """Every task: the registry's, and the calls queued for a worker (``agent.tasks()``)."""
        with self._lock:
            queued = self._arrivals.views(self._clock.peek) if self._arrivals else ()
        return [*self.tasks.views(), *(view for _, view in queued)]

    def begin_handler(
        self,
        method: str,
        stamp: bytes | str | None,
        attempt: int,
        pool: str,
        request: Payload,
        arrival: Arrival | None = None,
    ) -> Inbound | Refused | None:
        """Receive event of a request: merge its clock, start its task and bind it to this context.

        ``attempt`` tells a retried or hedged attempt from the first (gRPC's
        ``grpc-previous-rpc-attempts``); ``request`` renders the request, for
        its record when it is in transit at a cut. Returns None when the
        request goes untracked, and :data:`REFUSED` when its caller gave the
        call up and a snapshot fenced it: the handler must not run (the
        caller has its failure already; running it could change state that
        a stored cut says never changed). ``arrival`` is what :meth:`arrive`
        returned for this call, if the server recorded it then: the handler's
        task keeps the id it had while queued.
        """
        try:
            delivery: Delivery | None = None
            queued: Arrival | None = None
            with self._lock:
                decoded = self._clock.decode(stamp)
                if self._arrivals and isinstance(stamp, bytes):
                    queued = self._arrivals.take(pool, (stamp, attempt))
                if queued is None and arrival is not None and arrival.stamp == stamp:
                    queued = arrival  # given up meanwhile, or another pool's: it keeps its id
                if decoded is not None and decoded.epoch > self._part.epoch:
                    self._snapshot_unlocked(decoded.epoch)
                caller = decoded.sender if decoded else None
                call_id = decoded.call_id if decoded else 0
                if decoded is not None:
                    delivery = self._part.on_deliver(
                        decoded.sender,
                        decoded.epoch,
                        request,
                        MsgKey(decoded.sender, call_id, attempt, REQUEST),
                        self._capture,
                        method=method,
                        now=self._now(),
                    )
                    if delivery.refused:
                        self._counters.requests_refused += 1
                        return REFUSED
                self._clock.receive(decoded)
                self._counters.requests_received += 1
                if self.observer is not None:
                    self._observe(
                        f"receive request {method} call={call_id} from {caller or 'untracked peer'}"
                    )
                self._emit()
            task = self.tasks.start(
                "server",
                method=method,
                caller=caller or "",
                call_id=call_id,
                pool=pool,
                task_id=queued.task_id if queued is not None else None,
            )
            task.delivery = delivery
            task.untracked = decoded is None and pool not in self._edge_pools
            trace_id, span_id = self._span_ids()
            if trace_id:
                task.trace_id, task.span_id = trace_id, span_id
            elif decoded is not None and decoded.trace_id:
                task.trace_id, task.span_id = decoded.trace_id, decoded.span_id
            inbound = Inbound(task, caller)
            inbound.token = self.tasks.bind(task)
            return inbound
        except Exception:
            self.internal_error("starting an inbound call")
            return None

    def end_handler(self, inbound: Inbound, *, failed: bool = False) -> bytes | None:
        """Send event of the response; ends the task. Returns the response's stamp, once.

        ``failed``: the handler ends with an error status. If it had not
        consumed its request (no ``atomic()`` block finished), the request
        *bounced*: it changed nothing here, and a retry may carry it elsewhere
        (see :meth:`SnapshotParticipant.on_bounce`). ``inbound.bounced`` then
        says so: the answer's stamp travels under
        ``BOUNCED_STAMP_METADATA_KEY``, so that, if no attempt follows, its
        caller reports the call failed and the collector keeps the record
        the bounce took back.
        """
        try:
            if inbound.finished:
                return None
            inbound.finished = True
            if PULLS.get():
                self._consume_pulls()  # a handler that returns has applied what it took
            self.tasks.end(inbound.task)
            if inbound.token is not None:
                self.tasks.unbind(inbound.token, inbound.task)
                inbound.token = None
            trace_id, span_id = self._span_ids()
            task = inbound.task
            with self._lock:
                self._clock.tick()
                delivery = task.delivery
                bounced = False
                if isinstance(delivery, Delivery):
                    if failed and self._part.on_bounce(delivery):
                        bounced = True
                        self._emit()
                    epoch = self._part.on_reply(delivery)
                else:
                    epoch = self._part.epoch
                self._counters.responses_sent += 1
                if self.observer is not None:
                    self._observe(f"send response {task.method} call={task.call_id}")
                inbound.bounced = bounced
                return self._clock.encode(
                    inbound.caller, epoch, task.call_id, trace_id or task.trace_id, span_id or task.span_id
                )
        except Exception:
            self.internal_error("finishing an inbound call")
            return None

    # Streams ----------------------------------------------------------------------------------
    def open_client_stream(self, outbound: Outbound) -> StreamEnd:
        """This process's end of its streaming call ``outbound``; :meth:`close_stream` it when the call
        is over and the application took its last message."""
        call = outbound.call
        with self._lock:
            since = self._part.epoch
        end = StreamEnd(
            self.process_id,
            call.call_id,
            CLIENT,
            call.method,
            peer=outbound.channel.server or "",
            since=since,
        )
        return self._open_stream(end)

    def open_server_stream(self, inbound: Inbound) -> StreamEnd | None:
        """The handler's end of a streaming call; None when its request came without a stamp (its
        changes are counted as untracked instead)."""
        task = inbound.task
        delivery = task.delivery
        if not inbound.caller or not isinstance(delivery, Delivery):
            return None
        end = StreamEnd(inbound.caller, task.call_id, SERVER, task.method, since=delivery.msg_epoch)
        end.peer = self.process_id
        return self._open_stream(end)

    def _open_stream(self, end: StreamEnd) -> StreamEnd:
        with self._lock:
            self._streams[id(end)] = end
        return end

    def stream_sent(self, end: StreamEnd) -> None:
        """The application handed a message of ``end`` to gRPC (an ``atomic()`` block that produced it
        has counted it already: see :class:`cutwatch.core._streams.Sending`)."""
        with self._lock:
            end.sent += 1

    def stream_stamp(self, end: StreamEnd) -> bytes | None:
        """The send event of a stream message that carries a stamp of its own (the envelope): its
        receiver then cuts before taking a message sent after this process's cut, as for calls."""
        try:
            with self._lock:
                self._clock.tick()
                return self._clock.encode(end.peer or None, self._part.epoch, end.call_id, b"", b"")
        except Exception:
            self.internal_error("stamping a stream message")
            return None

    def stream_pulled(self, end: StreamEnd, payload: Payload = "null", stamp: bytes | None = None) -> None:
        """The application took a message from ``end`` (``payload`` renders it): consumed when the
        context that took it leaves its next ``atomic()`` block (or, for a handler, returns); until
        then, and for every cut it is taken after, it is recorded in transit.

        ``stamp`` is the message's own (the envelope): a stamp of a later epoch takes this
        process's local snapshots first, and its clock is merged.
        """
        pulls = PULLS.get()
        if pulls is None:
            pulls = {}
            PULLS.set(pulls)
        try:
            with self._lock:
                if stamp is not None:
                    decoded = self._clock.decode(stamp)
                    if decoded is not None and decoded.epoch > self._part.epoch:
                        self._snapshot_unlocked(decoded.epoch)
                    self._clock.receive(decoded)
                end.pulled += 1
                end.pending.append((end.pulled, payload))
                pulls[end] = pulls.get(end, 0) + 1
                self._part.on_stream_message(end.message(end.pulled, payload, self.process_id))
                self._emit()
        except Exception:
            self.internal_error("recording a stream message")

    def close_stream(self, end: StreamEnd) -> None:
        """The stream is over at this end (idempotent).

        The end is still listed, with its final counts, in the next
        :data:`CLOSED_STREAM_SNAPSHOTS` local snapshots: the other end is
        usually still open at its cut (a client takes the last responses
        after its server returned), and without this end's counts the
        collector could not say how far this end got.
        """
        with self._lock:
            if self._streams.pop(id(end), None) is not None:
                self._counters.stream_ends_closed += 1
                self._closed[id(end)] = (end, CLOSED_STREAM_SNAPSHOTS)
                while len(self._closed) > MAX_CLOSED_STREAMS:
                    self._closed.popitem(last=False)  # its other end, if still open, makes the cut INCOMPLETE

    def _consume_pulls(self) -> None:
        """Every stream message this context took is applied (its ``atomic()`` block ended)."""
        pulls = PULLS.get()
        if not pulls:
            return
        with self._lock:
            for end, count in pulls.items():
                end.consumed += count
                for _ in range(min(count, len(end.pending))):
                    end.pending.popleft()
            pulls.clear()

    # The collector's orders -------------------------------------------------------------------
    def take_snapshot(self, epoch: int) -> None:
        """Take local snapshots up to ``epoch`` now, or give them up; never waits past the timeout.

        Called without the event lock. Inside an ``atomic()`` block of this
        very thread (a response awaited in the block) the block is half done,
        so the snapshots are given up rather than taken mid-change. When
        another thread's block holds the snapshot lock past the timeout, they
        are taken without the application state but with everything else,
        the gate's holder and waiters among the tasks (see :meth:`_capture`):
        a block that never ends is then an edge of the wait-for graph.
        """
        if self.in_atomic():
            self._skip_snapshots(epoch, REASON_ATOMIC_WAIT)
            return
        entered = self._gate.enter()
        gate: GateOccupants | None = None
        try:
            with self._lock:
                if epoch <= self._part.epoch:
                    return
                # The block may have ended since the wait timed out; a try never waits, so taking the
                # snapshot lock after the event lock here cannot deadlock.
                entered = entered or self._gate.enter(blocking=False)
                gate = None if entered else self._gate.occupants()
                taken = self._part.take_snapshot(epoch, self._capture(gate), now=self._now())
                self._counters.snapshots_taken += len(taken)
                if gate is not None:
                    self._counters.snapshots_without_state += len(taken)
                self._emit()
        finally:
            if entered:
                self._gate.leave()
        if gate is not None:
            _LOG.warning(
                "cutwatch: snapshot %d taken without the application state: %s", epoch, self._state_missing
            )
            self._report_stuck_block(gate)

    @property
    def _state_missing(self) -> str:
        return f"{REASON_ATOMIC_TIMEOUT} for more than {self._gate.timeout} s"

    def _report_stuck_block(self, gate: GateOccupants) -> None:
        """Log, once per holder, an ``atomic()`` block that waits on a call while tasks of this process
        wait to enter ``atomic()``: most likely a call back into this process, which hangs until its
        deadline (the cut shows it as a deadlock)."""
        holder = gate.holder
        calls = [call for call in holder.outbound if call.blocking] if holder is not None else []
        if holder is None or not calls or not gate.waiters or holder.task_id == self._warned_holder:
            return
        self._warned_holder = holder.task_id
        waiters = ", ".join(
            f"{w.method or w.kind + ' task'} (task {w.task_id})" for w in gate.waiters[:_SHOWN_WAITERS]
        )
        if len(gate.waiters) > _SHOWN_WAITERS:
            waiters += f" and {len(gate.waiters) - _SHOWN_WAITERS} more"
        waits = ", ".join(
            f"{c.method} (call {c.call_id}{' to ' + c.target if c.target else ''})" for c in calls
        )
        _LOG.warning(
            "cutwatch: %s (task %d) of %s has held atomic() for more than %s s while it waits on %s; "
            "%s to enter atomic(): %s. Never wait for a response inside atomic(): a call that "
            "needs an atomic() block of this process hangs until its deadline.",
            holder.method or "an application thread",
            holder.task_id,
            self.process_id,
            self._gate.timeout,
            waits,
            "1 task of this process waits" if len(gate.waiters) == 1 else f"{len(gate.waiters)} tasks wait",
            waiters,
        )

    def flush(self, epoch: int, round_: int = 0, fence: Iterable[tuple[str, int]] = ()) -> None:
        """Refuse the calls in ``fence`` from now on, then emit the flush marker of round ``round_``
        of ``epoch`` behind everything emitted so far."""
        with self._lock:
            self._part.flush(epoch, round_, fence, self._counters.untracked_changes)
            self._emit()

    def close_epoch(self, epoch: int, forget: Iterable[int] = ()) -> None:
        """The collector is done with ``epoch``: stop recording it, forget our fenced failed calls."""
        with self._lock:
            self._part.close_epoch(epoch, forget)

    def join(self, epoch: int) -> None:
        """Number snapshots from ``epoch`` on without taking part in it (the collector's newest)."""
        with self._lock:
            self._part.join(epoch)

    def carry_out(self, order: Order) -> None:
        """Do what the collector orders (on the agent's control thread)."""
        if isinstance(order, TakeSnapshot):
            self.take_snapshot(order.epoch)
        elif isinstance(order, Flush):
            self.flush(order.epoch, order.round, order.fence)
        elif isinstance(order, CloseEpoch):
            self.close_epoch(order.epoch, order.forget)
        else:
            self.join(order.epoch)

    # Internals ----------------------------------------------------------------------------------
    def _snapshot_unlocked(self, epoch: int) -> None:
        """:meth:`take_snapshot` from a thread that holds the event lock once: let it go meanwhile.

        The snapshot lock is always taken before the event lock, never after.
        """
        self._lock.release()
        try:
            self.take_snapshot(epoch)
        finally:
            self._lock.acquire()

    def _skip_snapshots(self, epoch: int, reason: str) -> None:
        with self._lock:
            first = self._part.epoch + 1
            if epoch < first:
                return
            self._part.join(epoch)
            self._counters.snapshots_skipped += epoch - first + 1
            if self._emit_to is not None:
                self._emit_to(
                    [RecordingStopped(k, self.process_id, reason, 0) for k in range(first, epoch + 1)]
                )
        _LOG.warning("cutwatch: snapshots %d..%d given up: %s", first, epoch, reason)

    def _capture(self, gate: GateOccupants | None = None) -> Capture:
        """The local snapshot's contents; caller holds both locks. The snapshot is an event: it ticks.

        ``gate``: the caller holds only the event lock, because an ``atomic()``
        block held the snapshot lock past the timeout. Every event is still
        serialised by the event lock, so all but the state is as consistent
        as ever (the block's request counts as not consumed yet, as it is);
        the state, half changed, is left out and the snapshot says why. The
        tasks come from ``gate``, with its holder and waiters marked.
        """
        self._clock.tick()
        missing = ""
        queued = self._arrivals.views(self._clock.peek) if self._arrivals else ()
        if gate is None:
            state, state_bytes, errors = self._states.capture()
            self._counters.state_errors += errors
            tasks = tuple(self.tasks.views())
        else:
            state, state_bytes, tasks, missing = {}, 0, gate.tasks, self._state_missing
        clock = self._clock.as_dict()
        return Capture(
            clock,
            state,
            tasks,
            dict(self._worker_pools),
            state_bytes,
            self._counters.untracked_changes,
            self._stream_counts(),
            tuple(
                end.message(index, payload, self.process_id)
                for end in self._streams.values()
                for index, payload in end.pending
            ),
            queued,
            state_missing=missing,
            recorded=self._recorder.drain(),
            recorded_through=self._recorder.next_seq,
        )

    def _stream_counts(self) -> tuple[StreamCount, ...]:
        """The open stream ends' counts and the final counts of the ends closed lately; caller holds the
        event lock."""
        counts = [end.count() for end in self._streams.values()]
        for key, (end, left) in list(self._closed.items()):
            counts.append(end.count())
            if left > 1:
                self._closed[key] = (end, left - 1)
            else:
                del self._closed[key]
        return tuple(counts)

    def _emit(self) -> None:
        """Hand what the participant emitted to ``emit``; caller holds the event lock."""
        if self._part.has_events:
            events = self._part.drain()
            if self._emit_to is not None:
                self._emit_to(events)

    def _observe(self, description: str) -> None:
        observer = self.observer
        if observer is not None:
            observer(self.process_id, self._clock.as_dict(), description)

    def internal_error(self, what: str) -> None:
        """A failure inside cutwatch: counted and logged, never raised into the application."""
        with self._lock:
            self._counters.internal_errors += 1
        _LOG.exception("cutwatch internal error while %s; the call proceeds untracked", what)
