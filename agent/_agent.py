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

import itertools
import logging
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cutwatch.agent._clock import VectorClock, _LocalClock
from cutwatch.agent._eventlog import EventLog
from cutwatch.agent._lock import CutwatchLock
from cutwatch.agent._metadata import find_stamp
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

if TYPE_CHECKING:
    import contextvars

    from cutwatch.agent._aio_client import AioClientInterceptor
    from cutwatch.agent._aio_server import AioServerInterceptor
    from cutwatch.agent._client import ClientInterceptor
    from cutwatch.agent._server import ServerInterceptor

_LOG = logging.getLogger("cutwatch.agent")
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


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

    __slots__ = ("call", "channel", "finished", "task")

    def __init__(self, call: OutboundCall, task: Task, channel: ChannelPeer) -> None:
        self.call = call
        self.task = task
        self.channel = channel
        self.finished = False


class Inbound:
    """One inbound call being handled: its task and context binding."""

    __slots__ = ("caller", "finished", "task", "token")

    def __init__(self, task: Task, caller: str | None) -> None:
        self.task = task
        self.caller = caller
        self.finished = False
        self.token: contextvars.Token[Task | None] | None = None


class Agent:
    """The cutwatch agent of one service process.

    ``collector`` is the collector's address; ``None`` runs with clocks only
    (stamps, tasks and the event log, no snapshots). ``instance_id`` (a pod
    or host name, say) is kept in the process id, followed by a few random
    characters that make every start a new process of the model.
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
        if collector is not None:
            raise AgentStateError(
                "connecting to a collector is not available in this version of cutwatch; "
                "use collector=None for clocks only"
            )
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
        self._epoch = 0
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
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Flush and stop background work, waiting at most ``timeout`` seconds."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            log, self._event_log = self._event_log, None
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
            return self._counters.freeze(event_log_dropped=dropped)

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
                encoded = self._codec.encode(
                    self._clock.names,
                    self._clock.values,
                    peer=channel.server,
                    epoch=self._epoch,
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

    def _end_outbound(self, outbound: Outbound, metadata: Iterable[Any] | None) -> None:
        """Receive event of a response (idempotent; metadata may be None)."""
        try:
            with self._lock:
                if outbound.finished:
                    return
                outbound.finished = True
                decoded = self._receive(find_stamp(metadata))
                self._counters.responses_received += 1
                if decoded is not None:
                    outbound.channel.server = decoded.sender
                if self._event_log is not None:
                    sender = decoded.sender if decoded is not None else "untracked peer"
                    self._log_event(
                        f"receive response {outbound.call.method} call={outbound.call.call_id} from {sender}"
                    )
                # Under the lock: a caller finishing the same call waits here
                # until the call has left its task.
                self._tasks.remove_outbound(outbound.task, outbound.call.call_id)
        except Exception:
            self._internal_error("finishing an outbound call")

    # Event core: server side ---------------------------------------------------
    def _begin_inbound(self, method: str, metadata: Iterable[Any] | None, pool: str) -> Inbound | None:
        """Receive event of a request: merge its clock, start and bind its task."""
        try:
            with self._lock:
                decoded = self._receive(find_stamp(metadata))
                self._counters.requests_received += 1
                caller = decoded.sender if decoded else None
                call_id = decoded.call_id if decoded else 0
                if self._event_log is not None:
                    self._log_event(
                        f"receive request {method} call={call_id} from {caller or 'untracked peer'}"
                    )
            task = self._tasks.start("server", method=method, caller=caller or "", call_id=call_id)
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
            with self._lock:
                self._clock.tick()
                encoded = self._codec.encode(
                    self._clock.names,
                    self._clock.values,
                    peer=inbound.caller,
                    epoch=self._epoch,
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

    # Shared pieces -------------------------------------------------------------
    def _receive(self, raw: bytes | str | None) -> DecodedStamp | None:
        """Decode and merge a stamp, tick; caller holds the lock."""
        decoded: DecodedStamp | None = None
        if raw is None:
            self._counters.untracked_missing += 1
        elif not isinstance(raw, bytes):
            self._counters.untracked_malformed += 1
        else:
            try:
                decoded = self._codec.decode(raw)
            except StampError as exc:
                self._counters.untracked_malformed += 1
                _LOG.debug("untracked message: %s", exc)
        if decoded is not None:
            # A peer cannot know more of us than we do: merge_peer ignores our own entry.
            self._counters.clock_entries_refused += self._clock.merge_peer(
                decoded.entries, self._codec.max_clock_entries
            )
            self._counters.unresolved_entries += decoded.unresolved
        self._clock.tick()
        return decoded

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
