"""The agent's control stream to the collector, on a background thread.

Nothing here runs on an application's request path. The request path hands
snapshot events to :meth:`ControlClient.submit`, which never blocks: events
go into a bounded queue, and when it is full they are dropped and counted.
Every event gets a sequence number when it is submitted, dropped or not, so
the collector sees the gap and knows which snapshots cannot be complete.

The thread keeps one bidirectional ``Control`` stream open: it registers,
sends queued events and heartbeats, and executes what the collector orders
(take a snapshot, flush, close an epoch). When the collector is away or the stream
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
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass, replace
from typing import Any

import grpc

from cutwatch.core import (
    ChannelRecord,
    Heartbeat,
    LocalSnapshot,
    Order,
    Registered,
    Registration,
    SnapshotEvent,
)
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc
from cutwatch.proto import (
    event_to_message,
    heartbeat_to_pb,
    order_from_pb,
    registration_to_pb,
    rpc_error_parts,
)
from cutwatch.security import CollectorCredentials

__all__ = ["ControlClient", "ControlOptions", "ControlStats"]

_LOG = logging.getLogger("cutwatch.agent.control")
_REFUSALS = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
)
"""What the collector answers when the operator has something to fix: logged as warnings."""
_GOODBYE_SECONDS = 1.0
_EVENT_OVERHEAD = 128
_ENTRY_BYTES = 48


@dataclass(frozen=True)
class ControlOptions:
    """Tunables of the control stream; the defaults suit a collector on the same network."""

    queue_size: int = 10_000
    queue_bytes: int = 64 * 1024 * 1024
    """Approximate bytes of queued events; with ``queue_size`` it bounds the agent's memory
    while the collector is away."""
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
    events_queued: int
    queue_bytes: int
    queue_bytes_peak: int
    orders_received: int


_Item = tuple[int, SnapshotEvent, int]
"""A queued event: its sequence number, the event and its approximate size in bytes."""


class _EventQueue:
    """A FIFO bounded in items and bytes that a stream's reader can hand an item back to.

    gRPC consumes a request iterator from a thread of its own, which may be
    waiting for the next event when its call dies; the event it then takes
    belongs to the next stream, so it is put back at the front.
    """

    def __init__(self, size: int, max_bytes: int) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self.bytes_peak = 0
        self._items: collections.deque[_Item] = collections.deque()
        self._ready = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: _Item) -> bool:
        with self._ready:
            if len(self._items) >= self.size or self.bytes + item[2] > self.max_bytes:
                return False
            self._add(item, self._items.append)
            self._ready.notify()
            return True

    def get(self, timeout: float, over: Callable[[], bool]) -> _Item | None:
        """The next item, or None after ``timeout`` or once ``over()`` is true."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._items or over(), timeout) or over():
                return None
            item = self._items.popleft()
            self.bytes -= item[2]
            return item

    def put_back(self, item: _Item) -> None:
        with self._ready:
            self._add(item, self._items.appendleft)

    def _add(self, item: _Item, where: Callable[[_Item], None]) -> None:
        where(item)
        self.bytes += item[2]
        self.bytes_peak = max(self.bytes_peak, self.bytes)

    def wake(self) -> None:
        with self._ready:
            self._ready.notify_all()


class ControlClient:
    """Keeps the agent registered with the collector at ``address``.

    ``registration`` builds the registration (it is called on every connect,
    so that it carries the agent's current epoch); ``on_order`` carries out
    each order the collector sends.
    """

    def __init__(
        self,
        address: str,
        registration: Callable[[], Registration],
        on_order: Callable[[Order], None],
        options: ControlOptions | None = None,
        credentials: CollectorCredentials | None = None,
    ) -> None:
        self.address = address
        self.options = options or ControlOptions()
        self._registration = registration
        self._on_order = on_order
        self._credentials = credentials or CollectorCredentials()
        self._queue = _EventQueue(self.options.queue_size, self.options.queue_bytes)
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()
        self._stopping = threading.Event()
        self._leaving = threading.Event()
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
            size = approximate_size(event)
            with self._seq_lock:
                if not self._queue.put((next(self._seq), event, size)):
                    self._dropped += 1

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stats(self) -> ControlStats:
        return ControlStats(
            connected=self._connected.is_set(),
            connects=self._connects,
            events_sent=self._sent,
            events_dropped=self._dropped,
            events_queued=len(self._queue),
            queue_bytes=self._queue.bytes,
            queue_bytes_peak=self._queue.bytes_peak,
            orders_received=self._orders,
        )

    def close(self, timeout: float) -> None:
        """Stop within ``timeout`` seconds, whatever the collector is doing; queued events are dropped.

        A connected stream first says goodbye, so that the collector forgets
        this process at once rather than wait for it to come back; a
        collector that does not take the goodbye within a second is cut off.
        """
        deadline = time.monotonic() + timeout
        if self._connected.is_set() and self._thread.is_alive():
            self._leaving.set()
            self._queue.wake()
            self._thread.join(min(timeout / 2, _GOODBYE_SECONDS))
        self._stopping.set()
        with self._call_lock:
            call = self._call
        if call is not None:
            call.cancel()
        self._queue.wake()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))

    # The thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self.options.backoff_initial
        while not self._over():
            connects = self._connects
            try:
                self._session()
            except grpc.RpcError as exc:
                if not self._stopping.is_set():
                    code, _ = rpc_error_parts(exc)
                    level = logging.WARNING if code in _REFUSALS else logging.INFO
                    _LOG.log(level, "cutwatch collector %s: %s", self.address, _describe(exc))
            except Exception:
                _LOG.exception("cutwatch control stream failed; reconnecting")
            finally:
                self._connected.clear()
                with self._call_lock:
                    self._call = None
            if self._over():
                break
            if self._connects > connects:
                backoff = self.options.backoff_initial  # it was registered: a new fault starts over
            self._stopping.wait(backoff * (0.5 + random.random()))  # noqa: S311 - jitter, not security
            backoff = min(backoff * 2, self.options.backoff_max)

    def _over(self) -> bool:
        return self._stopping.is_set() or self._leaving.is_set()

    def _session(self) -> None:
        channel = self._credentials.channel(self.address, self.options.channel_options)
        over = threading.Event()
        with channel:
            stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Control(self._outgoing(over), metadata=self._credentials.metadata() or None)
            with self._call_lock:
                self._call = call
            if self._over():
                call.cancel()
                return
            try:
                for message in call:
                    order = order_from_pb(message)
                    if isinstance(order, Registered):
                        self._connects += 1
                        self._connected.set()
                    self._orders += 1
                    if order is None:
                        continue  # an order of a newer collector: nothing this agent can do
                    try:
                        self._on_order(order)
                    except Exception:
                        _LOG.exception("cutwatch: failed to carry out a collector order")
            finally:
                over.set()
                self._queue.wake()

    def _outgoing(self, over: threading.Event) -> Iterator[pb.AgentMessage]:
        """The request stream: registration, then events and heartbeats until the call ends."""
        yield registration_to_pb(replace(self._registration(), dropped=self._dropped))
        heartbeat = self.options.heartbeat_seconds

        def done() -> bool:
            return over.is_set() or self._over()

        while not done():
            item = self._queue.get(heartbeat, done)
            if self._leaving.is_set() and not over.is_set() and not self._stopping.is_set():
                yield pb.AgentMessage(goodbye=pb.Goodbye())
                return
            if done():
                if item is not None:
                    self._queue.put_back(item)  # the next stream sends it
                return
            if item is None:
                yield heartbeat_to_pb(Heartbeat(self._dropped), time.time_ns())
                continue
            seq, event, _ = item
            try:
                message = event_to_message(event, seq)
            except (TypeError, ValueError):
                _LOG.exception("cutwatch: an event could not be encoded; dropped")
                self._dropped += 1
                continue
            self._sent += 1
            yield message


def approximate_size(event: SnapshotEvent) -> int:
    """Roughly the bytes ``event`` holds; what the queue's byte bound counts."""
    if isinstance(event, ChannelRecord):
        return _EVENT_OVERHEAD + len(event.payload_json) + len(event.method) + len(event.receiver)
    if isinstance(event, LocalSnapshot):
        # The state was measured when it was serialised; it is not serialised again here, on what
        # may be an application's request path.
        tasks = len(event.tasks) if isinstance(event.tasks, Sized) else 0
        entries = len(event.clock) + len(event.open_calls) + len(event.answering)
        entries += sum(len(e.clock) + len(e.values) for e in event.recorded)
        return (
            _EVENT_OVERHEAD * (1 + tasks + len(event.recorded)) + _ENTRY_BYTES * entries + event.state_bytes
        )
    return _EVENT_OVERHEAD


def _describe(exc: grpc.RpcError) -> str:
    code, details = rpc_error_parts(exc)
    return f"{code.name if code else 'error'}: {details}"
