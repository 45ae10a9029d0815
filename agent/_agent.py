"""``cutwatch.Agent``: one process of the model, living inside a service.

A facade: the protocol runs in :class:`cutwatch.core.ProcessCore`, which the
interceptors drive on every call; the agent adds what a service needs around
it: its name and settings, the interceptor factories, the control stream to
the collector, the event log, named locks, and its life cycle.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry.metrics import MeterProvider

from cutwatch.agent._control import ControlClient, ControlOptions
from cutwatch.agent._eventlog import EventLog
from cutwatch.agent._lock import LockRegistry
from cutwatch.agent._metrics import forget, observe
from cutwatch.agent._payload import DEFAULT_MAX_PAYLOAD_BYTES
from cutwatch.agent._settings import (
    FROM_ENVIRONMENT,
    UnsetType,
    check_service,
    collector_from_env,
    credentials_from_env,
    service_from_env,
)
from cutwatch.core import (
    DEFAULT_MAX_CLOCK_ENTRIES,
    DEFAULT_MAX_RECORDED_EVENTS,
    DEFAULT_MAX_STAMP_BYTES,
    DEFAULT_MAX_STATE_BYTES,
    MAX_PROCESS_ID_LENGTH,
    AgentStateError,
    Order,
    ProcessCore,
    ProcessStats,
    Registration,
    TaskView,
    VectorClock,
)
from cutwatch.integrations.opentelemetry import current_span_ids
from cutwatch.security import CollectorCredentials

if TYPE_CHECKING:
    from cutwatch.agent._aio_client import AioClientInterceptor
    from cutwatch.agent._aio_server import AioServerInterceptor
    from cutwatch.agent._client import ClientInterceptor
    from cutwatch.agent._lock import CutwatchLock
    from cutwatch.agent._server import ServerInterceptor

_MAX_REGISTERED_POOLS = 64
"""A collector refuses registrations naming more pools; servers past these stay unsized."""


@dataclass(frozen=True, slots=True)
class AgentStats(ProcessStats):
    """Counters of one agent; ``agent.stats()`` returns a consistent copy."""

    event_log_dropped: int = 0
    collector_events_sent: int = 0
    collector_events_dropped: int = 0
    """Snapshot events dropped because the queue to the collector was full."""
    collector_events_queued: int = 0
    """Snapshot events waiting for the collector now."""
    collector_queue_bytes: int = 0
    """Approximate bytes those queued events hold; at most ``event_queue_bytes``."""
    collector_queue_bytes_peak: int = 0
    collector_connected: bool = False


class Agent:
    """The cutwatch agent of one service process.

    What it is not given it reads from the environment (docs/zero-code.md):
    ``service`` from ``CUTWATCH_SERVICE``, else ``OTEL_SERVICE_NAME`` (made
    to fit cutwatch's rule for names); ``collector`` from ``CUTWATCH_COLLECTOR``,
    and with the collector from there but no ``collector_credentials``, the
    token from ``CUTWATCH_AGENT_TOKEN`` and TLS files from ``CUTWATCH_CA_CERT``,
    ``CUTWATCH_CLIENT_CERT`` and ``CUTWATCH_CLIENT_KEY``. An explicit
    ``collector=None`` means no collector; an explicit address without
    ``collector_credentials`` means plaintext and no token.
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
    ``abandoned_grace`` how long at most a call that failed without an answer
    is remembered until a snapshot fences it (snapshots fence failed calls
    in their flush round; see docs/snapshot-design.md).
    ``collector_credentials`` are the token and certificates the collector
    demands, if it demands any. ``stream_stamp_field`` names the ``bytes``
    field of stream messages that carries a stamp of its own (the opt-in
    envelope; message types without it go as they are; docs/snapshots.md).
    ``max_recorded_events`` bounds the state changes recorded for lattice
    predicates between two local snapshots (see :meth:`register_state`).
    ``meter_provider`` receives the agent's metrics from ``start()`` to
    ``close()`` (default: OpenTelemetry's global one; docs/operations.md).
    """

    def __init__(
        self,
        service: str | None = None,
        collector: str | UnsetType | None = FROM_ENVIRONMENT,
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
        abandoned_grace: float = 600.0,
        control_options: ControlOptions | None = None,
        collector_credentials: CollectorCredentials | None = None,
        stream_stamp_field: str = "cutwatch_stamp",
        max_recorded_events: int = DEFAULT_MAX_RECORDED_EVENTS,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        service = service_from_env() if service is None else check_service(service)
        if collector is FROM_ENVIRONMENT:
            # All or nothing: credentials come from the environment only with the address, so a
            # stray variable never turns a connection the code configured into TLS, or fails it.
            collector = collector_from_env()
            if collector is not None and collector_credentials is None:
                collector_credentials = credentials_from_env()
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
        self.max_payload_bytes = max_payload_bytes
        self._life = threading.Lock()
        self._control: ControlClient | None = None
        if collector is not None:
            options = control_options or ControlOptions(queue_size=event_queue, queue_bytes=event_queue_bytes)
            self._control = ControlClient(
                collector, self._registration, self._on_order, options, collector_credentials
            )
        self._core = ProcessCore(
            process_id,
            max_stamp_bytes=max_stamp_bytes,
            max_clock_entries=max_clock_entries,
            max_records=max_records,
            max_state_bytes=max_state_bytes,
            max_seen_messages=max_seen_messages,
            atomic_timeout=atomic_timeout,
            abandoned_grace=abandoned_grace,
            emit=self._control.submit if self._control is not None else None,
            span_ids=current_span_ids,
            stream_stamp_field=stream_stamp_field,
            max_recorded_events=max_recorded_events,
        )
        self._locks = LockRegistry(self._core.tasks)
        self._event_log_path = Path(event_log) if event_log is not None else None
        self._event_log: EventLog | None = None
        self._closed_log_dropped = 0
        self._meter_provider = meter_provider
        self._started = False
        self._closed = False

    # Life cycle -------------------------------------------------------------
    def start(self) -> Agent:
        """Open the event log (if any) and connect to the collector (if any). Idempotent."""
        with self._life:
            if self._closed:
                raise AgentStateError("a closed agent cannot be started again")
            if self._started:
                return self
            if self._event_log_path is not None:
                self._event_log = EventLog(self._event_log_path)
                self._core.observer = self._event_log.write
                self._core.local_event("Initialization Complete")
            self._started = True
            observe(self, self._meter_provider)
        if self._control is not None:
            self._control.start()
        return self

    def wait_registered(self, timeout: float = 10.0) -> bool:
        """Wait until the collector has acknowledged this agent; False on timeout (or no collector)."""
        return self._control is not None and self._control.wait_connected(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and stop background work, waiting at most ``timeout`` seconds."""
        with self._life:
            if self._closed:
                return
            self._closed = True
            log, self._event_log = self._event_log, None
            self._core.observer = None
        if self._control is not None:
            self._control.close(timeout)
        if log is not None:
            log.close(timeout)
            self._closed_log_dropped = log.dropped
        forget(self, self._meter_provider)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Views ------------------------------------------------------------------------
    @property
    def clock(self) -> VectorClock:
        """The current vector clock (a read-only copy)."""
        return self._core.clock

    @property
    def epoch(self) -> int:
        """The newest snapshot epoch this process has taken part in (or joined at)."""
        return self._core.epoch

    def stats(self) -> AgentStats:
        core = self._core.stats()
        log = self._event_log
        control = self._control.stats() if self._control is not None else None
        return AgentStats(
            **{f.name: getattr(core, f.name) for f in fields(ProcessStats)},
            event_log_dropped=log.dropped if log is not None else self._closed_log_dropped,
            collector_events_sent=control.events_sent if control else 0,
            collector_events_dropped=control.events_dropped if control else 0,
            collector_events_queued=control.events_queued if control else 0,
            collector_queue_bytes=control.queue_bytes if control else 0,
            collector_queue_bytes_peak=control.queue_bytes_peak if control else 0,
            collector_connected=control.connected if control else False,
        )

    def tasks(self) -> list[TaskView]:
        """The live tasks: handler executions, calls queued for a worker, and application tasks that
        wait or hold."""
        return self._core.task_views()

    @property
    def worker_pools(self) -> dict[str, int]:
        """Worker capacity by server interceptor name (0: not known)."""
        return self._core.worker_pools

    # The application's side -------------------------------------------------------------
    def register_state(self, name: str, provider: Callable[[], object], *, record: bool = False) -> None:
        """Include ``provider()`` (JSON-serialisable) under ``name`` in every local snapshot.

        It is called under the snapshot lock, so it sees no ``atomic()`` block
        half done; keep it quick and never make an RPC from it.

        ``record=True``: also record every new value of it, at the end of each
        ``atomic()`` block that changed it, with the vector clock of that
        change, for the lattice predicates that read it (``@invariant(...,
        lattice=True)``): they then see the consistent cuts *between*
        snapshots too. Change the value only inside ``atomic()``. The changes
        travel with the next local snapshot; at most ``max_recorded_events``
        wait between two snapshots, more are dropped and counted
        (``stats().changes_dropped``) and make that window's answer unknown.
        """
        self._core.register_state(name, provider, record=record)

    def atomic(self) -> AbstractContextManager[None]:
        """A state change that no snapshot splits, and that consumes the current request.

        Everything inside (state changes, calls started, e.g. with
        ``.future()``) is wholly before or wholly after every cut. When a
        handler leaves its first ``atomic()`` block, its request is consumed:
        its effect is in the state, not in the channel. Keep blocks short and
        synchronous: never wait for a response inside one (a snapshot due
        meanwhile is given up, and a call that needs a block of this process
        hangs until its deadline: cuts then show the deadlock), never
        ``await`` inside one.
        """
        return self._core.atomic()

    def lock(self, name: str) -> CutwatchLock:
        """The cutwatch lock called ``name`` (the same object for the same name).

        Names starting with ``cutwatch:`` are reserved (``ValueError``).
        """
        return self._locks.get(name)

    # Interceptor factories ---------------------------------------------------
    def server_interceptor(self, max_workers: int | None = None, *, edge: bool = False) -> ServerInterceptor:
        """A ``grpc.ServerInterceptor`` for ``grpc.server(..., interceptors=[...])``.

        ``max_workers`` is the size of the server's thread pool; without it the
        agent reads it from the executor of the first handler thread it sees.
        ``edge=True`` says that this server faces clients without an agent (the
        system's front door): what their requests change is input from outside,
        not a message that lost its stamp, and does not flag cuts as untracked.
        """
        from cutwatch.agent._server import ServerInterceptor

        pool = self._core.register_pool(max_workers, edge=edge)
        return ServerInterceptor(self._core, pool, self.max_payload_bytes)

    def client_interceptor(self, *, uninstrumented: bool = False) -> ClientInterceptor:
        """An interceptor for ``grpc.intercept_channel``; use one per channel.

        ``uninstrumented=True`` says that no agent runs behind the channel (a
        third-party API, a database proxy): its answers come without a stamp,
        as expected. On other channels an answer without a stamp may have lost
        it on the way (a proxy that drops headers), which flags the cuts it
        falls in as untracked.
        """
        from cutwatch.agent._client import ClientInterceptor

        return ClientInterceptor(self._core, self.max_payload_bytes, uninstrumented=uninstrumented)

    def aio_server_interceptor(
        self, max_concurrency: int | None = None, *, edge: bool = False
    ) -> AioServerInterceptor:
        """A ``grpc.aio.ServerInterceptor``; ``max_concurrency`` as given to the server, ``edge`` as in
        :meth:`server_interceptor`."""
        from cutwatch.agent._aio_server import AioServerInterceptor

        pool = self._core.register_pool(max_concurrency, edge=edge)
        return AioServerInterceptor(self._core, pool, self.max_payload_bytes)

    def aio_client_interceptors(self, *, uninstrumented: bool = False) -> list[AioClientInterceptor]:
        """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``; ``uninstrumented`` as
        in :meth:`client_interceptor`."""
        from cutwatch.agent._aio_client import aio_client_interceptors

        return aio_client_interceptors(self._core, self.max_payload_bytes, uninstrumented=uninstrumented)

    # The collector's side ---------------------------------------------------------------
    def _registration(self) -> Registration:
        pools = self._core.worker_pools
        return Registration(
            process_id=self.process_id,
            service=self.service,
            worker_pools=dict(list(pools.items())[:_MAX_REGISTERED_POOLS]),
            epoch=self._core.epoch,
            untracked_changes=self._core.stats().untracked_changes,
        )

    def _on_order(self, order: Order) -> None:
        """Carry out what the collector says (on the control thread)."""
        self._core.carry_out(order)

    def __repr__(self) -> str:
        return f"<cutwatch.Agent {self.process_id}>"


__all__ = ["Agent", "AgentStats"]
