"""Calls that reached a server and wait for a worker: filed as they arrive, read by local snapshots.

A sync gRPC server files each call that finds every worker busy, on its
polling thread, in the path of every call (``ProcessCore.arrive``). Filing
therefore takes no lock of the event core and decodes nothing: a call is
kept by (stamp, attempt) in its pool's queue, in arrival order, and its
stamp is read only if a local snapshot lists it while it still waits. A
worker that takes a call removes it (and, the pool's queue being first in,
first out, every call filed before it: gRPC dropped those unrun). Only the
polling threads take the filing lock; the workers use the queue's single,
atomic methods, so the two never wait for each other.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from cutwatch.core._counters import Counters
from cutwatch.core._stamp import STAMP_VERSION, StampHeader
from cutwatch.core._tasks import TaskView

__all__ = ["MAX_QUEUED_CALLS", "Arrival", "ArrivalQueues"]

_STAMP_START: Final = bytes((0x08, STAMP_VERSION))
"""How every stamp of this version begins (its version field comes first, as protobuf writes it)."""
MAX_QUEUED_CALLS: Final = 10_000
"""Calls kept as waiting for a worker at most, per process (the oldest are given up first)."""


class Arrival:
    """A call that reached this process's server and waits for a worker (``ProcessCore.arrive``).

    Recorded as it is, undecoded: its stamp is read when a local snapshot lists it (``decoded``) or
    when its handler starts.
    """

    __slots__ = ("attempt", "decoded", "method", "pool", "readable", "stamp", "task_id")

    def __init__(self, method: str, stamp: bytes, attempt: int, pool: str, task_id: int) -> None:
        self.method = method
        self.stamp = stamp
        self.attempt = attempt
        self.pool = pool
        self.task_id = task_id
        """The id its task has while queued, and keeps when a worker runs it."""
        self.decoded: StampHeader | None = None
        """The stamp, once read."""
        self.readable = True
        """False once its stamp failed to decode (its handler counts it)."""


class ArrivalQueues:
    """The calls waiting for a worker, by pool; ``new_id`` gives each its task id."""

    def __init__(self, counters: Counters, new_id: Callable[[], int]) -> None:
        self._counters = counters
        self._new_id = new_id
        self._queues: dict[str, OrderedDict[tuple[bytes, int], Arrival]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._queues)

    def file(self, method: str, stamp: bytes | str | None, attempt: int, pool: str) -> Arrival | None:
        """File a call that waits for a worker of ``pool``; None for a value that is not a stamp (its
        handler, if gRPC runs one, counts it)."""
        if not isinstance(stamp, bytes) or not stamp.startswith(_STAMP_START):
            return None
        queue = self._queues.get(pool)
        if queue is None:
            with self._lock:
                queue = self._queues.setdefault(pool, OrderedDict())
        arrival = Arrival(method, stamp, attempt, pool, self._new_id())
        with self._lock:
            queue[(stamp, attempt)] = arrival
            self._counters.calls_queued += 1
            while len(queue) > MAX_QUEUED_CALLS:
                queue.popitem(last=False)
                self._counters.queued_calls_dropped += 1
        return arrival

    def take(self, pool: str, key: tuple[bytes, int]) -> Arrival | None:
        """The call a worker now runs, if still filed; caller holds the event lock.

        Workers take calls in arrival order (a thread pool's queue is FIFO),
        so calls of the same pool filed before this one and still there were
        dropped by gRPC without running a handler (cancelled while queued) or
        are being taken by another worker right now; both stop being listed.
        (A call given up here by mistake only loses its queued record, for a
        moment: its handler starts as usual.)
        """
        queue = self._queues.get(pool)
        if not queue or key not in queue:
            return None
        while True:
            try:
                first_key, first = queue.popitem(last=False)
            except KeyError:  # pragma: no cover - another worker took the rest
                return None
            if first_key == key:
                return first
            self._counters.queued_calls_dropped += 1

    def views(self, peek: Callable[[bytes], StampHeader | None]) -> tuple[tuple[int, TaskView], ...]:
        """The calls waiting now, as tasks, each with the epoch its request was sent in (a local
        snapshot of epoch ``e`` lists those sent before ``e``: a request sent after its caller's cut
        is not in the cut). ``peek`` reads a stamp; the caller holds the event lock it needs."""
        out: list[tuple[int, TaskView]] = []
        for queue in list(self._queues.values()):
            for arrival in list(queue.values()):
                decoded = arrival.decoded
                if decoded is None:
                    if not arrival.readable:
                        continue
                    decoded = arrival.decoded = peek(arrival.stamp)
                    if decoded is None:
                        arrival.readable = False  # its handler counts the malformed stamp
                        continue
                view = TaskView(
                    task_id=arrival.task_id,
                    kind="server",
                    method=arrival.method,
                    caller=decoded.sender,
                    call_id=decoded.call_id,
                    trace_id=decoded.trace_id.hex(),
                    span_id=decoded.span_id.hex(),
                    held_locks=(),
                    waiting_lock=None,
                    outbound=(),
                    pool=arrival.pool,
                    queued=True,
                )
                out.append((decoded.epoch, view))
        return tuple(out)
