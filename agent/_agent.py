"""``cutwatch.Agent``: one process of the model, living inside a service.

The agent owns the process's vector clock, its stamp codec, its tasks and
its cutwatch locks. The interceptors are thin adapters that call four event
methods here (``_begin_outbound``/``_end_outbound`` on the client side,
``_begin_inbound``/``_end_inbound`` on the server side); everything between
the wire and the clock happens in those, under one lock, and nothing in them
can raise into the application: failures are counted and the call proceeds
untracked.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cutwatch.agent._clock import VectorClock, _LocalClock
from cutwatch.agent._control import PROTOCOL_VERSION, ControlClient, ControlOptions
from cutwatch.agent._eventlog import EventLog
from cutwatch.agent._lock import CutwatchLock
from cutwatch.agent._metadata import find_attempt, find_stamp
from cutwatch.agent._payload import DEFAULT_MAX_PAYLOAD_BYTES, lazy_message_json, message_json
from cutwatch.agent._snapshot import (
    OUTCOME_FAILED,
    OUTCOME_UNSTAMPED,
    REQUEST,
    Capture,
    Delivery,
    MsgKey,
    RecordingStopped,
    SnapshotParticipant,
)
from cutwatch.agent._stamp import (
    DEFAULT_MAX_CLOCK_ENTRIES,
    DEFAULT_MAX_STAMP_BYTES,
    MAX_PROCESS_ID_LENGTH,
    DecodedStamp,
    StampCodec,
)
from cutwatch.agent._tasks import (
    OutboundCall,
    Task,
    TaskRegistry,
    TaskView,
)
from cutwatch.agent.exceptions import AgentStateError, StampError
from cutwatch.integrations.opentelemetry import current_span_ids
from cutwatch.proto import collector_pb2 as pb
from cutwatch.security import CollectorCredentials

if TYPE_CHECKING:
    import contextvars

    from cutwatch.agent._aio_client import AioClientInterceptor
    from cutwatch.agent._aio_server import AioServerInterceptor
    from cutwatch.agent._client import ClientInterceptor
    from cutwatch.agent._server import ServerInterceptor

_LOG = logging.getLogger("cutwatch.agent")
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_STATE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
DEFAULT_MAX_STATE_BYTES = 1024 * 1024
_MAX_REGISTERED_POOLS = 64
"""A collector refuses registrations naming more pools; servers past these stay unsized."""
REASON_ATOMIC_WAIT = "a snapshot was due while an atomic() block waited for a response"
REASON_ATOMIC_TIMEOUT = "an atomic() block held the snapshot lock too long"


@dataclass(frozen=True, slots=True)
class AgentStats:
    """Counters of one agent; ``agent.stats()`` returns a consistent copy."""

    requests_sent: int = 0
    requests_received: int = 0
    responses_sent: int = 0
    responses_received: int = 0
    untracked_missing: int = 0
    """Messages that arrived without a stamp (uninstrumented peers)."""
    untracked_malformed: int = 0
    """Messages whose stamp failed to decode or broke a limit."""
    unresolved_entries: int = 0
    """Clock entries skipped because their process id was not known yet."""
    stamps_degraded: int = 0
    """Stamps cut short to fit the size limit."""
    clock_entries_refused: int = 0
    """New process ids not added because the clock is at ``max_clock_entries``."""
    internal_errors: int = 0
    """Failures inside cutwatch itself, caught before the application saw them."""
    event_log_dropped: int = 0
    snapshots_taken: int = 0
    snapshots_skipped: int = 0
    """Snapshots given up because an ``atomic()`` block held the snapshot lock."""
    state_errors: int = 0
    """State providers that raised, returned non-JSON or too much; their value is an error marker."""
    collector_events_sent: int = 0
    collector_events_dropped: int = 0
    """Snapshot events dropped because the queue to the collector was full."""
    collector_events_queued: int = 0
    """Snapshot events waiting for the collector now."""
    collector_queue_bytes: int = 0
    """Approximate bytes those queued events hold; at most ``event_queue_bytes``."""
    collector_queue_bytes_peak: int = 0
    collector_connected: bool = False

    @property
    def untracked(self) -> int:
        return self.untracked_missing + self.untracked_malformed


class _Counters:
    """Mutable twin of ``AgentStats``; updated under the agent lock."""

    requests_sent: int
    requests_received: int
    responses_sent: int
    responses_received: int
    untracked_missing: int
    untracked_malformed: int
    unresolved_entries: int
    stamps_degraded: int
    clock_entries_refused: int
    internal_errors: int
    snapshots_taken: int
    snapshots_skipped: int
    state_errors: int

    def __init__(self) -> None:
        for f in fields(AgentStats):
            setattr(self, f.name, 0)

    def freeze(self, **extra: int) -> AgentStats:
        values = {f.name: getattr(self, f.name) for f in fields(AgentStats)}
        values.update(extra)
        return AgentStats(**values)


class ChannelPeer:
    """What a client interceptor knows of the process behind its channel."""

    __slots__ = ("server",)

    def __init__(self) -> None:
        self.server: str | None = None


class Outbound:
    """One outbound call in flight, from stamp to response."""

    __slots__ = ("call", "channel", "finished", "finishing", "task")

    def __init__(self, call: OutboundCall, task: Task, channel: ChannelPeer) -> None:
        self.call = call
        self.task = task
        self.channel = channel
        self.finished = False
        # Held while the response is delivered: a second finisher (the
        # done-callback racing the caller) waits until the clock is merged.
        self.finishing = threading.Lock()


class Inbound:
    """One inbound call being handled: its task and context binding."""

    __slots__ = ("caller", "finished", "task", "token")

    def __init__(self, task: Task, caller: str | None) -> None:
        self.task = task
        self.caller = caller
        self.finished = False
        self.token: contextvars.Token[Task | None] | None = None


class _AtomicState(threading.local):
    """Per thread: how deep in ``atomic()`` blocks it is, and the call finishes waiting for the block."""

    def __init__(self) -> None:
        self.depth = 0
        self.deferred: list[Callable[[], None]] = []


class Agent:
    """The cutwatch agent of one service process.

    ``collector`` is the collector's address; ``None`` runs with clocks only
    (stamps, tasks and the event log, no snapshots). ``instance_id`` (a pod
    or host name, say) is kept in the process id, followed by a few random
    characters that make every start a new process of the model.

    Snapshot limits: ``max_records`` channel records per snapshot,
    ``max_payload_bytes`` per recorded message, ``max_state_bytes`` per state
    provider, ``max_seen_messages`` messages remembered to tell a retried or
    hedged delivery from a new one (about 230 bytes each, so some 23 MB at
    the default once that many have arrived), ``event_queue`` events (and
    ``event_queue_bytes``) waiting for the collector, past which events are
    dropped and counted;
    ``atomic_timeout`` is how long a snapshot waits for an ``atomic()`` block
    before it gives up on that snapshot (which then ends INCOMPLETE);
    ``abandoned_grace`` how long a call that failed without an answer keeps
    snapshots from completing unless its request is accounted for.
    ``collector_credentials`` are the token and certificates the collector
    demands, if it demands any.
    """

    def __init__(
        self,
        service: str,
        collector: str | None = None,
        *,
        instance_id: str | None = None,
        event_log: str | Path | None = None,
        max_stamp_bytes: int = DEFAULT_MAX_STAMP_BYTES,
        max_clock_entries: int = DEFAULT_MAX_CLOCK_ENTRIES,
        max_records: int = 10_000,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        max_seen_messages: int = 100_000,
        event_queue: int = 10_000,
        event_queue_bytes: int = 64 * 1024 * 1024,
        atomic_timeout: float = 5.0,
        abandoned_grace: float = 2.0,
        control_options: ControlOptions | None = None,
        collector_credentials: CollectorCredentials | None = None,
    ) -> None:
        if not _SERVICE_NAME.match(service):
            raise ValueError(f"service name {service!r} must be 1-100 letters, digits, '.', '_' or '-'")
        # Every start gets fresh random bits: peers cache each process's name
        # table by process id, so a restarted process must never reuse one.
        nonce = secrets.token_hex(4)
        instance = nonce if instance_id is None else f"{instance_id}.{nonce[:4]}"
        process_id = f"{service}:{instance}"
        if len(process_id) > MAX_PROCESS_ID_LENGTH or any(c.isspace() for c in process_id):
            raise ValueError(f"process id {process_id!r} is too long or contains spaces")
        if atomic_timeout <= 0 or max_payload_bytes < 64 or max_state_bytes < 64:
            raise ValueError("atomic_timeout must be positive, max_payload_bytes and max_state_bytes >= 64")
        self.service = service
        self.process_id = process_id
        self.collector = collector
        self._lock = threading.RLock()
        self._clock = _LocalClock(process_id)
        self._codec = StampCodec(
            process_id, max_stamp_bytes=max_stamp_bytes, max_clock_entries=max_clock_entries
        )
        self._tasks = TaskRegistry()
        self._named_locks: dict[str, CutwatchLock] = {}
        self._call_ids = itertools.count(1)
        self._counters = _Counters()
        self._event_log_path = Path(event_log) if event_log is not None else None
        self._event_log: EventLog | None = None
        self._closed_log_dropped = 0
        self._worker_pools: dict[str, int] = {}
        self._pools_probed: set[str] = set()
        self._part = SnapshotParticipant(
            process_id,
            max_records=max_records,
            max_seen_keys=max_seen_messages,
            abandoned_grace=abandoned_grace,
        )
        # atomic() blocks and local snapshots exclude each other through this
        # lock; the event lock ``_lock`` is always taken after it, never before.
        self._snapshot_lock = threading.RLock()
        self._atomic = _AtomicState()
        self._atomic_timeout = atomic_timeout
        self._max_payload = max_payload_bytes
        self._max_state = max_state_bytes
        self._states: dict[str, Callable[[], object]] = {}
        self._control: ControlClient | None = None
        if collector is not None:
            options = control_options or ControlOptions(queue_size=event_queue, queue_bytes=event_queue_bytes)
            self._control = ControlClient(
                collector, self._registration, self._on_order, options, collector_credentials
            )
        self._started = False
        self._closed = False

    # Life cycle -------------------------------------------------------------
    def start(self) -> Agent:
        """Open the event log (if any). Idempotent."""
        with self._lock:
            if self._closed:
                raise AgentStateError("a closed agent cannot be started again")
            if self._started:
                return self
            if self._event_log_path is not None:
                self._event_log = EventLog(self._event_log_path)
                self._event_log.write(
                    self.process_id, self._clock.snapshot().tick(self.process_id), "Initialization Complete"
                )
                self._clock.tick()
            self._started = True
        if self._control is not None:
            self._control.start()
        return self

    def wait_registered(self, timeout: float = 10.0) -> bool:
        """Wait until the collector has acknowledged this agent; False on timeout (or no collector)."""
        return self._control is not None and self._control.wait_connected(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and stop background work, waiting at most ``timeout`` seconds."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            log, self._event_log = self._event_log, None
        if self._control is not None:
            self._control.close(timeout)
        if log is not None:
            log.close(timeout)
            with self._lock:
                self._closed_log_dropped = log.dropped

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Public views -------------------------------------------------------------
    @property
    def clock(self) -> VectorClock:
        """The current vector clock (a read-only copy)."""
        with self._lock:
            return self._clock.snapshot()

    def stats(self) -> AgentStats:
        with self._lock:
            dropped = self._event_log.dropped if self._event_log else self._closed_log_dropped
            control = self._control.stats() if self._control is not None else None
            return self._counters.freeze(
                event_log_dropped=dropped,
                collector_events_sent=control.events_sent if control else 0,
                collector_events_dropped=control.events_dropped if control else 0,
                collector_events_queued=control.events_queued if control else 0,
                collector_queue_bytes=control.queue_bytes if control else 0,
                collector_queue_bytes_peak=control.queue_bytes_peak if control else 0,
                collector_connected=control.connected if control else False,
            )

    @property
    def epoch(self) -> int:
        """The newest snapshot epoch this process has taken part in (or joined at)."""
        with self._lock:
            return self._part.epoch

    # Application state and atomic blocks -----------------------------------------
    def register_state(self, name: str, provider: Callable[[], object]) -> None:
        """Include ``provider()`` (JSON-serialisable) under ``name`` in every local snapshot.

        It is called under the snapshot lock, so it sees no ``atomic()`` block
        half done; keep it quick and never make an RPC from it.
        """
        if not _STATE_NAME.match(name):
            raise ValueError(f"state name {name!r} must be 1-100 letters, digits, '.', ':', '_' or '-'")
        if not callable(provider):
            raise TypeError("provider must be callable")
        with self._snapshot_lock:
            self._states[name] = provider

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """A state change that no snapshot splits, and that consumes the current request.

        Everything inside (state changes, calls started, e.g. with
        ``.future()``) is wholly before or wholly after every cut. When a
        handler leaves its first ``atomic()`` block, its request is consumed:
        its effect is in the state, not in the channel. Keep blocks short and
        synchronous: never wait for a response inside one (a snapshot due
        meanwhile is given up), never ``await`` inside one.
        """
        self._snapshot_lock.acquire()
        atomic = self._atomic
        depth = atomic.depth
        atomic.depth = depth + 1
        try:
            yield
        finally:
            atomic.depth = depth
            try:
                if depth == 0:
                    self._consume_current()
            finally:
                self._snapshot_lock.release()
            if depth == 0:
                self._run_deferred()

    def _in_atomic(self) -> bool:
        """Whether this thread is inside an ``atomic()`` block of this agent."""
        return self._atomic.depth > 0

    def _run_deferred(self) -> None:
        """Finish the calls whose responses came while this thread's atomic() block ran."""
        deferred = self._atomic.deferred
        while deferred:
            deferred.pop(0)()

    def _consume_current(self) -> None:
        task = self._tasks.current()
        delivery = task.delivery if task is not None else None
        if isinstance(delivery, Delivery) and not delivery.consumed:
            try:
                with self._lock:
                    self._part.on_consume(delivery)
            except Exception:
                self._internal_error("consuming a request")

    def tasks(self) -> list[TaskView]:
        """The live tasks: handler executions and application tasks that wait or hold."""
        return self._tasks.views()

    @property
    def worker_pools(self) -> dict[str, int]:
        """Worker capacity by server interceptor name (0: not known)."""
        with self._lock:
            return dict(self._worker_pools)

    def lock(self, name: str) -> CutwatchLock:
        """The cutwatch lock called ``name`` (the same object for the same name)."""
        with self._lock:
            lock = self._named_locks.get(name)
            if lock is None:
                lock = CutwatchLock(name, self._tasks)
                self._named_locks[name] = lock
            return lock

    # Interceptor factories ---------------------------------------------------
    def server_interceptor(self, max_workers: int | None = None) -> ServerInterceptor:
        """A ``grpc.ServerInterceptor`` for ``grpc.server(..., interceptors=[...])``.

        ``max_workers`` is the size of the server's thread pool; without it the
        agent reads it from the executor of the first handler thread it sees.
        """
        from cutwatch.agent._server import ServerInterceptor

        return ServerInterceptor(self, self._register_pool(max_workers))

    def client_interceptor(self) -> ClientInterceptor:
        """An interceptor for ``grpc.intercept_channel``; use one per channel."""
        from cutwatch.agent._client import ClientInterceptor

        return ClientInterceptor(self)

    def aio_server_interceptor(self, max_concurrency: int | None = None) -> AioServerInterceptor:
        """A ``grpc.aio.ServerInterceptor``; ``max_concurrency`` as given to the server."""
        from cutwatch.agent._aio_server import AioServerInterceptor

        return AioServerInterceptor(self, self._register_pool(max_concurrency))

    def aio_client_interceptors(self) -> list[AioClientInterceptor]:
        """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``."""
        from cutwatch.agent._aio_client import aio_client_interceptors

        return aio_client_interceptors(self)

    def _register_pool(self, capacity: int | None) -> str:
        if capacity is not None and capacity < 1:
            raise ValueError("max_workers must be at least 1")
        with self._lock:
            name = f"server-{len(self._worker_pools) + 1}"
            self._worker_pools[name] = capacity or 0
            return name

    def _learn_pool_capacity(self, pool: str, capacity: int) -> None:
        with self._lock:
            if not self._worker_pools.get(pool):
                self._worker_pools[pool] = capacity

    # Event core: client side ---------------------------------------------------
    def _begin_outbound(self, method: str, channel: ChannelPeer) -> tuple[Outbound, bytes] | None:
        """Send event of a request; returns the call record and its stamp."""
        try:
            trace_id, span_id = current_span_ids()
            task = self._tasks.current_or_app_task()
            with self._lock:
                call_id = next(self._call_ids)
                self._clock.tick()
                epoch = self._part.on_call(call_id, method, channel.server or "")
                encoded = self._codec.encode(
                    self._clock.names,
                    self._clock.values,
                    peer=channel.server,
                    epoch=epoch,
                    call_id=call_id,
                    trace_id=trace_id,
                    span_id=span_id,
                )
                self._counters.requests_sent += 1
                if encoded.degraded:
                    self._counters.stamps_degraded += 1
                if self._event_log is not None:
                    self._log_event(f"send request {method} call={call_id}")
            call = OutboundCall(call_id=call_id, method=method, target=channel.server or "")
            # The span the task now waits in (e.g. the handler's own server span).
            self._tasks.add_outbound(task, call, trace_id, span_id)
            return Outbound(call, task, channel), encoded.data
        except Exception:
            self._internal_error("preparing an outbound call")
            return None

    def _end_outbound(
        self,
        outbound: Outbound,
        metadata: Iterable[Any] | None,
        failure: str | None = None,
        response: Callable[[], object] | None = None,
        *,
        deferrable: bool = False,
    ) -> None:
        """Receive event of a response (idempotent; metadata may be None).

        ``failure`` names the status of a call that did not succeed;
        ``response`` returns the response message, for the record of a
        response that is in transit at a cut. ``deferrable`` marks a finish
        that cutwatch starts on its own (a done-callback), not one the
        application asked for by reading the result: inside an ``atomic()``
        block it waits until the block ends, so that a call started with
        ``.future()`` in the block never forces a snapshot in its middle.
        """
        if deferrable and self._in_atomic():
            self._atomic.deferred.append(lambda: self._end_outbound(outbound, metadata, failure, response))
            return
        try:
            with outbound.finishing, self._lock:
                if outbound.finished:  # set last: the call is wholly finished
                    return
                decoded = self._decode(find_stamp(metadata))
                if decoded is not None and decoded.call_id != outbound.call.call_id:
                    decoded = None  # not the answer to this call (a proxy replayed trailers)
                    self._counters.untracked_malformed += 1
                if decoded is not None and decoded.epoch > self._part.epoch:
                    self._snapshot_unlocked(decoded.epoch)
                call_id = outbound.call.call_id
                if decoded is not None:
                    self._part.on_response(
                        decoded.sender,
                        decoded.epoch,
                        self._render_response(response),
                        call_id,
                        self._capture,
                        method=outbound.call.method,
                        now=time.monotonic(),
                    )
                    outbound.channel.server = decoded.sender
                else:
                    outcome = OUTCOME_FAILED if failure else OUTCOME_UNSTAMPED
                    self._part.on_call_ended(call_id, outcome, failure or "", now=time.monotonic())
                self._merge(decoded)
                self._counters.responses_received += 1
                if self._event_log is not None:
                    sender = decoded.sender if decoded is not None else "untracked peer"
                    self._log_event(f"receive response {outbound.call.method} call={call_id} from {sender}")
                self._emit()
                # Under the lock: a caller finishing the same call waits here
                # until the call has left its task.
                self._tasks.remove_outbound(outbound.task, call_id)
                outbound.finished = True
        except Exception:
            self._internal_error("finishing an outbound call")

    def _render_response(self, response: Callable[[], object] | None) -> Callable[[], str] | str:
        if response is None:
            return "null"
        return functools.partial(_render, response, self._max_payload)

    # Event core: server side ---------------------------------------------------
    def _begin_inbound(
        self, method: str, metadata: Iterable[Any] | None, pool: str, request: object = None
    ) -> Inbound | None:
        """Receive event of a request: merge its clock, start and bind its task."""
        try:
            delivery: Delivery | None = None
            with self._lock:
                decoded = self._decode(find_stamp(metadata))
                if decoded is not None and decoded.epoch > self._part.epoch:
                    self._snapshot_unlocked(decoded.epoch)
                caller = decoded.sender if decoded else None
                call_id = decoded.call_id if decoded else 0
                if decoded is not None:
                    key = MsgKey(decoded.sender, call_id, find_attempt(metadata), REQUEST)
                    delivery = self._part.on_deliver(
                        decoded.sender,
                        decoded.epoch,
                        lazy_message_json(request, self._max_payload),
                        key,
                        self._capture,
                        method=method,
                        now=time.monotonic(),
                    )
                self._merge(decoded)
                self._counters.requests_received += 1
                if self._event_log is not None:
                    self._log_event(
                        f"receive request {method} call={call_id} from {caller or 'untracked peer'}"
                    )
                self._emit()
            task = self._tasks.start("server", method=method, caller=caller or "", call_id=call_id, pool=pool)
            task.delivery = delivery
            trace_id, span_id = current_span_ids()
            if trace_id:
                task.trace_id, task.span_id = trace_id, span_id
            elif decoded is not None and decoded.trace_id:
                task.trace_id, task.span_id = decoded.trace_id, decoded.span_id
            if pool not in self._pools_probed:
                self._pools_probed.add(pool)
                capacity = _executor_capacity()
                if capacity:
                    self._learn_pool_capacity(pool, capacity)
            inbound = Inbound(task, caller)
            inbound.token = self._tasks.bind(task)
            return inbound
        except Exception:
            self._internal_error("starting an inbound call")
            return None

    def _end_inbound(self, inbound: Inbound) -> bytes | None:
        """Send event of the response; ends the task. Returns the stamp, once."""
        try:
            if inbound.finished:
                return None
            inbound.finished = True
            self._tasks.end(inbound.task)
            if inbound.token is not None:
                self._tasks.unbind(inbound.token, inbound.task)
                inbound.token = None
            trace_id, span_id = current_span_ids()
            delivery = inbound.task.delivery
            with self._lock:
                self._clock.tick()
                epoch = self._part.on_reply(delivery) if isinstance(delivery, Delivery) else self._part.epoch
                encoded = self._codec.encode(
                    self._clock.names,
                    self._clock.values,
                    peer=inbound.caller,
                    epoch=epoch,
                    call_id=inbound.task.call_id,
                    trace_id=trace_id or inbound.task.trace_id,
                    span_id=span_id or inbound.task.span_id,
                )
                self._counters.responses_sent += 1
                if encoded.degraded:
                    self._counters.stamps_degraded += 1
                if self._event_log is not None:
                    self._log_event(f"send response {inbound.task.method} call={inbound.task.call_id}")
            return encoded.data
        except Exception:
            self._internal_error("finishing an inbound call")
            return None

    # Snapshots -------------------------------------------------------------------
    def _ensure_snapshot(self, epoch: int) -> None:
        """Take local snapshots up to ``epoch`` now, or give them up; never waits past the timeout.

        Called without the event lock. Inside an ``atomic()`` block of this
        very thread (a response awaited in the block) the block is half done,
        so the snapshots are given up rather than taken mid-change.
        """
        if self._in_atomic():
            self._skip_snapshots(epoch, REASON_ATOMIC_WAIT)
            return
        if not self._snapshot_lock.acquire(timeout=self._atomic_timeout):
            self._skip_snapshots(epoch, REASON_ATOMIC_TIMEOUT)
            return
        try:
            with self._lock:
                if epoch > self._part.epoch:
                    taken = self._part.take_snapshot(epoch, self._capture(), now=time.monotonic())
                    self._counters.snapshots_taken += len(taken)
                    self._emit()
        finally:
            self._snapshot_lock.release()

    def _snapshot_unlocked(self, epoch: int) -> None:
        """:meth:`_ensure_snapshot` from a thread that holds the event lock once: let it go meanwhile.

        The snapshot lock is always taken before the event lock, never after.
        """
        self._lock.release()
        try:
            self._ensure_snapshot(epoch)
        finally:
            self._lock.acquire()

    def _skip_snapshots(self, epoch: int, reason: str) -> None:
        with self._lock:
            first = self._part.epoch + 1
            if epoch < first:
                return
            self._part.join(epoch)
            self._counters.snapshots_skipped += epoch - first + 1
            if self._control is not None:
                self._control.submit(
                    [RecordingStopped(k, self.process_id, reason, 0) for k in range(first, epoch + 1)]
                )
        _LOG.warning("cutwatch: snapshots %d..%d given up: %s", first, epoch, reason)

    def _capture(self) -> Capture:
        """The local snapshot's contents; caller holds both locks. The snapshot is an event: it ticks."""
        self._clock.tick()
        state: dict[str, object] = {}
        state_bytes = 0
        for name, provider in self._states.items():
            state[name], size = self._state_value(name, provider)
            state_bytes += len(name) + size
        tasks = [view.to_json() for view in self._tasks.views()]
        clock = dict(zip(self._clock.names, self._clock.values, strict=True))
        return Capture(clock, state, tasks, dict(self._worker_pools), state_bytes)

    def _state_value(self, name: str, provider: Callable[[], object]) -> tuple[object, int]:
        """``provider()`` frozen as JSON, and its size; a failure becomes a marker, never an exception."""
        try:
            text = json.dumps(provider(), sort_keys=True, allow_nan=False)
        except Exception as exc:
            self._counters.state_errors += 1
            _LOG.warning("cutwatch: state provider %r failed: %s", name, exc)
            return {"cutwatch_error": f"{type(exc).__name__}: {exc}"[:500]}, 0
        if len(text) > self._max_state:
            self._counters.state_errors += 1
            return {"cutwatch_error": f"state larger than {self._max_state} bytes ({len(text)})"}, 0
        return json.loads(text), len(text)

    def _emit(self) -> None:
        """Hand what the participant emitted to the collector's queue; caller holds the lock."""
        if self._part.has_events:
            events = self._part.drain()
            if self._control is not None:
                self._control.submit(events)

    def _registration(self) -> pb.Registration:
        with self._lock:
            return pb.Registration(
                process_id=self.process_id,
                service=self.service,
                protocol_version=PROTOCOL_VERSION,
                worker_pools=dict(list(self._worker_pools.items())[:_MAX_REGISTERED_POOLS]),
                epoch=self._part.epoch,
            )

    def _on_order(self, order: pb.ControlMessage) -> None:
        """Carry out what the collector says (on the control thread)."""
        body = order.WhichOneof("body")
        if body == "take_snapshot":
            self._ensure_snapshot(order.take_snapshot.epoch)
        elif body == "flush":
            with self._lock:
                self._part.flush(order.flush.epoch)
                self._emit()
        elif body == "close_epoch":
            with self._lock:
                self._part.close_epoch(order.close_epoch.epoch)
        elif body == "registered":
            with self._lock:
                self._part.join(order.registered.epoch)

    # Shared pieces -------------------------------------------------------------
    def _decode(self, raw: bytes | str | None) -> DecodedStamp | None:
        """Decode a stamp, counting what cannot be tracked; caller holds the lock."""
        if raw is None:
            self._counters.untracked_missing += 1
            return None
        if not isinstance(raw, bytes):
            self._counters.untracked_malformed += 1
            return None
        try:
            return self._codec.decode(raw)
        except StampError as exc:
            self._counters.untracked_malformed += 1
            _LOG.debug("untracked message: %s", exc)
            return None

    def _merge(self, decoded: DecodedStamp | None) -> None:
        """The receive event: merge the sender's clock (if any) and tick; caller holds the lock."""
        if decoded is not None:
            # A peer cannot know more of us than we do: merge_peer ignores our own entry.
            self._counters.clock_entries_refused += self._clock.merge_peer(
                decoded.entries, self._codec.max_clock_entries
            )
            self._counters.unresolved_entries += decoded.unresolved
        self._clock.tick()

    def _log_event(self, description: str) -> None:
        if self._event_log is not None:
            self._event_log.write(
                self.process_id, dict(zip(self._clock.names, self._clock.values, strict=True)), description
            )

    def _internal_error(self, what: str) -> None:
        with self._lock:
            self._counters.internal_errors += 1
        _LOG.exception("cutwatch internal error while %s; the call proceeds untracked", what)

    def __repr__(self) -> str:
        return f"<cutwatch.Agent {self.process_id}>"


def _render(response: Callable[[], object], limit: int) -> str:
    return message_json(response(), limit)


def _executor_capacity() -> int:
    """``max_workers`` of the ThreadPoolExecutor running this thread, or 0.

    CPython's pool threads carry a weak reference to their executor as their
    first argument; this is how the capacity of ``grpc.server(pool)`` is
    inferred when ``server_interceptor(max_workers=...)`` was not given.
    """
    args = getattr(threading.current_thread(), "_args", ())
    if args and callable(args[0]):
        try:
            executor = args[0]()
        except TypeError:
            return 0
        capacity = getattr(executor, "_max_workers", 0)
        if isinstance(capacity, int):
            return capacity
    return 0


__all__ = ["Agent", "AgentStats", "ChannelPeer", "Inbound", "Outbound"]
