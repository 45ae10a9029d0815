"""The snapshot gate: ``atomic()`` blocks and local snapshots exclude each other.

Every state change the application makes inside ``atomic()`` is wholly
before or wholly after each cut, because a local snapshot is taken only
while no thread is inside a block. A snapshot waits for a block at most
``timeout`` seconds and is then given up, never taken mid-change; a block
never waits on the network, so a snapshot never waits forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["SnapshotGate"]


class _Depth(threading.local):
    """Per thread: how deep in ``atomic()`` blocks it is, and the call finishes waiting for the block."""

    def __init__(self) -> None:
        self.depth = 0
        self.deferred: list[Callable[[], None]] = []


class SnapshotGate:
    """One process's snapshot lock (re-entrant), with per-thread block depth."""

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("atomic_timeout must be positive")
        self.timeout = timeout
        self._lock = threading.RLock()
        self._depth = _Depth()

    @contextmanager
    def atomic(self, on_first_exit: Callable[[], None]) -> Iterator[None]:
        """A block; ``on_first_exit`` runs as the outermost block ends, still under the lock.

        Work deferred meanwhile (:meth:`defer`) runs once the lock is released.
        """
        self._lock.acquire()
        state = self._depth
        depth = state.depth
        state.depth = depth + 1
        try:
            yield
        finally:
            state.depth = depth
            try:
                if depth == 0:
                    on_first_exit()
            finally:
                self._lock.release()
            if depth == 0:
                deferred = state.deferred
                while deferred:
                    deferred.pop(0)()

    def inside(self) -> bool:
        """Whether this thread is inside a block."""
        return self._depth.depth > 0

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` when this thread's outermost block ends (call only inside one)."""
        self._depth.deferred.append(work)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock without a time limit (to change what a snapshot reads)."""
        with self._lock:
            yield

    def enter(self) -> bool:
        """Take the lock for a snapshot, waiting at most :attr:`timeout`; False when a block held it."""
        return self._lock.acquire(timeout=self.timeout)

    def leave(self) -> None:
        self._lock.release()
