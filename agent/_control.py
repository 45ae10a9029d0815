"""The agent's control stream to the collector, on a background thread.

Nothing here runs on an application's request path. The request path hands
snapshot events to :meth:`ControlClient.submit`, which never blocks: events
go into a bounded queue, and when it is full they are dropped and counted.
Every event gets a sequence number when it is submitted, dropped or not, so
the collector sees the gap and knows which snapshots cannot be complete.

The thread keeps one bidirectional ``Control`` stream open: it registers,
sends queued events and heartbeats, and executes what the collector orders
(take a snapshot, close an epoch). When the collector is away or the stream
breaks it reconnects with capped, jittered exponential backoff; the agent
needs no listening port of its own.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from cutwatch.agent._events import event_to_message
from cutwatch.agent._snapshot import SnapshotEvent
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc

__all__ = ["PROTOCOL_VERSION", "ControlClient", "ControlOptions", "ControlStats"]

_LOG = logging.getLogger("cutwatch.agent.control")
PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class ControlOptions:
    """Tunables of the control stream; the defaults suit a collector on the same network."""

    queue_size: int = 10_000
    heartbeat_seconds: float = 1.0
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    channel_options: Sequence[tuple[str, Any]] = (
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    )


@dataclass(frozen=True)
class ControlStats:
    connected: bool
    connects: int
    events_sent: int
    events_dropped: int
    orders_received: int


class _EventQueue:
    """A bounded FIFO that a stream's reader can hand an item back to when its stream is over.

    gRPC consumes a request iterator from a thread of its own, which may be
    waiting for the next event when its call dies; the event it then takes
    belongs to the next stream, so it is put back at the front.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.deque[tuple[int, SnapshotEvent]] = collections.deque()
        self._ready = threading.Condition()

    def put(self, item: tuple[int, SnapshotEvent]) -> bool:
        with self._ready:
            if len(self._items) >= self.size:
                return False
            self._items.append(item)
            self._ready.notify()
            return True

    def get(self, timeout: float, over: Callable[[], bool]) -> tuple[int, SnapshotEvent] | None:
        """The next item, or None after ``timeout`` or once ``over()`` is true."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._items or over(), timeout) or over():
                return None
            return self._items.popleft()

    def put_back(self, item: tuple[int, SnapshotEvent]) -> None:
        with self._ready:
            self._items.appendleft(item)

    def wake(self) -> None:
        with self._ready:
            self._ready.notify_all()


class ControlClient:
    """Keeps the agent registered with the collector at ``address``.

    ``registration`` builds the registration message (it is called on every
    connect, so that it carries the agent's current epoch); ``on_order`` runs
    each message the collector sends.
    """

    def __init__(
        self,
        address: str,
        registration: Callable[[], pb.Registration],
        on_order: Callable[[pb.ControlMessage], None],
        options: ControlOptions | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.address = address
        self.options = options or ControlOptions()
        self._registration = registration
        self._on_order = on_order
        self._credentials = credentials
        self._metadata = tuple(metadata)
        self._queue = _EventQueue(self.options.queue_size)
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._call: Any = None
        self._call_lock = threading.Lock()
        self._dropped = 0
        self._sent = 0
        self._connects = 0
        self._orders = 0
        self._thread = threading.Thread(target=self._run, name=f"cutwatch-control-{address}", daemon=True)

    # Called by the agent ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, events: Sequence[SnapshotEvent]) -> None:
        """Queue events for the collector; never blocks, drops (and counts) when full."""
        for event in events:
            with self._seq_lock:
                if not self._queue.put((next(self._seq), event)):
                    self._dropped += 1

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stats(self) -> ControlStats:
        return ControlStats(
            connected=self._connected.is_set(),
            connects=self._connects,
            events_sent=self._sent,
            events_dropped=self._dropped,
            orders_received=self._orders,
        )

    def close(self, timeout: float) -> None:
        """Stop within ``timeout`` seconds, whatever the collector is doing; queued events are dropped."""
        self._stopping.set()
        with self._call_lock:
            call = self._call
        if call is not None:
            call.cancel()
        self._queue.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # The thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self.options.backoff_initial
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._session()
            except grpc.RpcError as exc:
                if not self._stopping.is_set():
                    _LOG.info("cutwatch collector %s unreachable: %s", self.address, _describe(exc))
            except Exception:
                _LOG.exception("cutwatch control stream failed; reconnecting")
            finally:
                self._connected.clear()
                with self._call_lock:
                    self._call = None
            if self._stopping.is_set():
                break
            if time.monotonic() - started > 10 * self.options.backoff_max:
                backoff = self.options.backoff_initial  # it was up for a while: start over
            self._stopping.wait(backoff * (0.5 + random.random()))  # noqa: S311 - jitter, not security
            backoff = min(backoff * 2, self.options.backoff_max)

    def _session(self) -> None:
        if self._credentials is not None:
            channel = grpc.secure_channel(
                self.address, self._credentials, options=self.options.channel_options
            )
        else:
            channel = grpc.insecure_channel(self.address, options=self.options.channel_options)
        over = threading.Event()
        with channel:
            stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Control(self._outgoing(over), metadata=self._metadata or None)
            with self._call_lock:
                self._call = call
            if self._stopping.is_set():
                call.cancel()
                return
            try:
                for order in call:
                    if order.WhichOneof("body") == "registered":
                        self._connects += 1
                        self._connected.set()
                    self._orders += 1
                    try:
                        self._on_order(order)
                    except Exception:
                        _LOG.exception("cutwatch: failed to carry out a collector order")
            finally:
                over.set()
                self._queue.wake()

    def _outgoing(self, over: threading.Event) -> Iterator[pb.AgentMessage]:
        """The request stream: registration, then events and heartbeats until the call ends."""
        yield pb.AgentMessage(register=self._registration())
        heartbeat = self.options.heartbeat_seconds

        def done() -> bool:
            return over.is_set() or self._stopping.is_set()

        while not done():
            item = self._queue.get(heartbeat, done)
            if done():
                if item is not None:
                    self._queue.put_back(item)  # the next stream sends it
                return
            if item is None:
                yield pb.AgentMessage(
                    heartbeat=pb.Heartbeat(unix_nanos=time.time_ns(), dropped=self._dropped)
                )
                continue
            seq, event = item
            try:
                message = event_to_message(event, seq)
            except (TypeError, ValueError):
                _LOG.exception("cutwatch: an event could not be encoded; dropped")
                self._dropped += 1
                continue
            self._sent += 1
            yield message


def _describe(exc: grpc.RpcError) -> str:
    """``CODE: details`` of a failed call (gRPC's errors are also calls, the stubs do not say so)."""
    code: Any = getattr(exc, "code", lambda: None)()
    details: Any = getattr(exc, "details", lambda: str(exc))()
    return f"{code.name if isinstance(code, grpc.StatusCode) else 'error'}: {details}"
