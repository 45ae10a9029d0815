"""The snapshot gate: ``atomic()`` blocks and local snapshots exclude each other.

Every state change the application makes inside ``atomic()`` is wholly
before or wholly after each cut, because a local snapshot takes the state
only while no thread is inside a block. A snapshot waits for a block at most
``timeout`` seconds; past it, it is taken without the state (see
``ProcessCore.take_snapshot``), so a snapshot never waits forever.

The gate is a lock of cutwatch's own that the application waits on, so it
must never hang a process unseen: it knows which task holds the outermost
block and which tasks wait to enter one, and a snapshot taken past the
timeout lists them as the holder and the waiters of :data:`ATOMIC_LOCK`, a
lock of the wait-for graph. A handler that waits, inside ``atomic()``, on a
call that needs a block of its own process is then a deadlock of the cut.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from cutwatch.core._tasks import Task, TaskRegistry, TaskView

__all__ = ["ATOMIC_LOCK", "RESERVED_LOCK_PREFIX", "GateOccupants", "SnapshotGate"]

RESERVED_LOCK_PREFIX: Final = "cutwatch:"
"""Lock names of cutwatch's own; ``agent.lock()`` refuses them."""
ATOMIC_LOCK: Final = RESERVED_LOCK_PREFIX + "atomic()"
"""The snapshot lock behind ``atomic()``, as tasks hold and wait for it in a local snapshot."""


class _Depth(threading.local):
    """Per thread: how deep in ``atomic()`` blocks it is, and the call finishes waiting for the block."""

    def __init__(self) -> None:
        self.depth = 0
        self.deferred: list[Callable[[], None]] = []


@dataclasses.dataclass(frozen=True)
class GateOccupants:
    """The tasks of the gate at one instant: who holds the outermost block, who waits to enter one."""

    holder: TaskView | None
    waiters: tuple[TaskView, ...]
    tasks: tuple[TaskView, ...]
    """Every live task, the holder listing :data:`ATOMIC_LOCK` as held and the waiters as awaited."""


class SnapshotGate:
    """One process's snapshot lock (re-entrant), with per-thread block depth, its holder and waiters.

    Entering a free gate costs a non-blocking acquire and one store (the
    holder); only a block that has to wait registers itself, under a mutex
    of its own, so the uncontended path takes no other lock.
    """

    def __init__(self, timeout: float, tasks: TaskRegistry | None = None) -> None:
        if timeout <= 0:
            raise ValueError("atomic_timeout must be positive")
        self.timeout = timeout
        self._tasks = tasks if tasks is not None else TaskRegistry()
        self._current = self._tasks._current.get  # TaskRegistry.current without its frame: every block
        self._lock = threading.RLock()
        self._depth = _Depth()
        self._holder: Task | None = None
        """The task in the outermost block (None: none, or a thread without a task yet)."""
        self._mutex = threading.Lock()
        self._waiters: dict[int, Task] = {}
        """Tasks blocked entering a block, by thread ident; changed and read under ``_mutex``."""

    @contextmanager
    def atomic(self, on_first_exit: Callable[[], None]) -> Iterator[None]:
        """A block; ``on_first_exit`` runs as the outermost block ends, still under the lock.

        Work deferred meanwhile (:meth:`defer`) runs once the lock is released.
        """
        state = self._depth
        depth = state.depth
        if not self._lock.acquire(False):
            self._wait_to_enter()  # never at depth > 0: this thread would own the lock
        elif depth == 0:
            self._holder = self._current()
        state.depth = depth + 1
        try:
            yield
        finally:
            state.depth = depth
            try:
                if depth == 0:
                    on_first_exit()
            finally:
                if depth == 0:
                    self._holder = None  # before the release: a reader never sees a holder that left
                self._lock.release()
            if depth == 0:
                deferred = state.deferred
                while deferred:
                    deferred.pop(0)()

    def _wait_to_enter(self) -> None:
        """The slow path: wait for the lock as a listed waiter, and enter as the holder."""
        tasks = self._tasks
        task = tasks.current_or_app_task()
        me = threading.get_ident()
        with self._mutex:
            self._waiters[me] = task
        entered = False
        try:
            self._lock.acquire()
            entered = True
        finally:
            with self._mutex:
                del self._waiters[me]
                if entered:
                    self._holder = task  # with the waiter gone, at one instant for a reader
        tasks.release_if_idle(task)

    def claim(self, task: Task) -> None:
        """``task`` runs this thread's block (an application thread got its task inside it)."""
        if self._depth.depth and self._holder is not task:
            self._holder = task

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

    def enter(self, blocking: bool = True) -> bool:
        """Take the lock for a snapshot, waiting at most :attr:`timeout` (not at all unless
        ``blocking``); False when a block held it."""
        if not blocking:
            return self._lock.acquire(blocking=False)
        return self._lock.acquire(timeout=self.timeout)

    def leave(self) -> None:
        self._lock.release()

    def occupants(self) -> GateOccupants:
        """The live tasks, with the gate's holder and waiters marked, as at one instant.

        Waiters cannot change while the mutex is held, and a holder is
        stored after its lock is taken and cleared before it is released;
        a holder that changed while the tasks were read is left out (no
        edge rather than a wrong one).
        """
        with self._mutex:
            holder = self._holder
            views = self._tasks.views()
            if self._holder is not holder:
                holder = None
            waiting = {task.task_id for task in self._waiters.values()}
        held = holder.task_id if holder is not None else None
        return _marked(views, held, waiting)


def _marked(views: Iterable[TaskView], holder: int | None, waiting: set[int]) -> GateOccupants:
    tasks: list[TaskView] = []
    held: TaskView | None = None
    waiters: list[TaskView] = []
    for view in views:
        if view.task_id == holder:
            view = dataclasses.replace(view, held_locks=(*view.held_locks, ATOMIC_LOCK))
            held = view
        elif view.task_id in waiting:
            view = dataclasses.replace(view, waiting_lock=ATOMIC_LOCK)
            waiters.append(view)
        tasks.append(view)
    return GateOccupants(held, tuple(waiters), tuple(tasks))
