"""``agent.lock(name)``: a mutex whose holder and waiters feed wait-for edges.

Usable from threads (``with lock:``) and from asyncio (``async with lock:``),
even both at once. Ownership is handed straight to the next waiter in FIFO
order on release, so the recorded holder is always the task that will run
next, never a thread that has not woken up yet.

The registry keeps locks weakly, so per-item names (``"inventory:42"``) cost
memory only while a lock is held, waited on, or referenced by the application.
A busy lock pins itself in the registry: ``agent.lock("x").acquire()`` and a
later ``agent.lock("x").release()`` find the same lock with no reference kept
in between.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from types import TracebackType

from cutwatch.core import RESERVED_LOCK_PREFIX, Task, TaskRegistry


class _ThreadWaiter:
    __slots__ = ("event", "task")

    def __init__(self, task: Task) -> None:
        self.task = task
        self.event = threading.Event()


class _AsyncWaiter:
    __slots__ = ("future", "loop", "task")

    def __init__(self, task: Task, loop: asyncio.AbstractEventLoop) -> None:
        self.task = task
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()


class CutwatchLock:
    """A non-reentrant named lock known to cutwatch."""

    __slots__ = ("__weakref__", "_holder", "_mutex", "_pinned", "_registry", "_waiters", "name")

    def __init__(self, name: str, registry: TaskRegistry, pinned: set[CutwatchLock] | None = None) -> None:
        self.name = name
        self._registry = registry
        self._mutex = threading.Lock()
        self._holder: Task | None = None
        self._waiters: deque[_ThreadWaiter | _AsyncWaiter] = deque()
        # Where the lock keeps itself alive while busy (see LockRegistry).
        self._pinned = pinned

    @property
    def holder(self) -> Task | None:
        return self._holder

    def locked(self) -> bool:
        return self._holder is not None

    # Bookkeeping ------------------------------------------------------------
    def _pin(self) -> None:
        """Keep the lock alive while held or waited on; caller holds ``_mutex``.

        Only this lock's own ``_mutex`` orders its pin changes; the shared set
        is safe for concurrent ``add``/``discard`` of different locks.
        """
        if self._pinned is not None:
            self._pinned.add(self)

    def _unpin_if_idle(self) -> None:
        """Let an idle lock go once nobody references it; caller holds ``_mutex``."""
        if self._pinned is not None and self._holder is None and not self._waiters:
            self._pinned.discard(self)

    def _grant(self, task: Task) -> None:
        """Make ``task`` the holder; caller holds ``_mutex``."""
        self._holder = task
        self._pin()
        with self._registry.mutate(task):
            if task.waiting_lock == self.name:
                task.waiting_lock = None
            task.held_locks.append(self.name)

    def _ungrant(self, task: Task) -> None:
        """Take back a grant that cannot be delivered; caller holds ``_mutex``."""
        self._holder = None
        with self._registry.mutate():
            if self.name in task.held_locks:
                task.held_locks.remove(self.name)
        self._unpin_if_idle()

    def _enqueue(self, waiter: _ThreadWaiter | _AsyncWaiter, timeout: float = -1) -> None:
        self._waiters.append(waiter)
        self._pin()
        with self._registry.mutate(waiter.task):
            waiter.task.waiting_lock = self.name
            # Deadlock reports say when a wait with a timeout gives up.
            waiter.task.lock_deadline = self._registry.now() + timeout if timeout >= 0 else None

    def _abandon(self, waiter: _ThreadWaiter | _AsyncWaiter) -> bool:
        """Withdraw a waiter that gave up; False if it was granted meanwhile."""
        with self._mutex:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                with self._registry.mutate():
                    waiter.task.waiting_lock = None
                self._unpin_if_idle()
                return True
            return False

    # Threads ------------------------------------------------------------------
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        task = self._registry.current_or_app_task()
        with self._mutex:
            if self._holder is None and not self._waiters:
                self._grant(task)
                return True
            if not blocking:
                self._registry.release_if_idle(task)
                return False
            waiter = _ThreadWaiter(task)
            self._enqueue(waiter, timeout)
        if waiter.event.wait(None if timeout < 0 else timeout):
            return True
        if self._abandon(waiter):
            self._registry.release_if_idle(task)
            return False
        return True  # granted just as the wait timed out

    def release(self) -> None:
        with self._mutex:
            task = self._holder
            if task is None:
                raise RuntimeError(f"cutwatch lock {self.name!r} released while not held")
            with self._registry.mutate():
                if self.name in task.held_locks:
                    task.held_locks.remove(self.name)
            self._holder = None
            self._hand_over()
            self._unpin_if_idle()
        self._registry.release_if_idle(task)

    def _hand_over(self) -> None:
        """Give the lock to the first waiter still interested; holds ``_mutex``."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if isinstance(waiter, _AsyncWaiter):
                if waiter.future.done():
                    continue
                self._grant(waiter.task)
                try:
                    waiter.loop.call_soon_threadsafe(self._deliver, waiter)
                except RuntimeError:  # its event loop is closed: it will never run
                    self._ungrant(waiter.task)
                    continue
                return
            self._grant(waiter.task)
            waiter.event.set()
            return

    def _deliver(self, waiter: _AsyncWaiter) -> None:
        if waiter.future.done():  # cancelled after the grant: pass it on
            self.release()
        else:
            waiter.future.set_result(None)

    def __enter__(self) -> CutwatchLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # asyncio ------------------------------------------------------------------
    async def acquire_async(self) -> None:
        task = self._registry.current_or_app_task()
        with self._mutex:
            if self._holder is None and not self._waiters:
                self._grant(task)
                return
            waiter = _AsyncWaiter(task, asyncio.get_running_loop())
            self._enqueue(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if self._abandon(waiter):
                self._registry.release_if_idle(task)
            elif waiter.future.done() and not waiter.future.cancelled():
                # Delivered just before the cancellation landed: give it back.
                # (Granted but not yet delivered: _deliver sees the cancelled
                # future and releases.)
                self.release()
            raise

    async def __aenter__(self) -> CutwatchLock:
        await self.acquire_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        holder = self._holder.task_id if self._holder else None
        return f"<CutwatchLock {self.name!r} holder={holder} waiters={len(self._waiters)}>"


class LockRegistry:
    """The named cutwatch locks of one agent: the same object for the same name.

    A name is remembered only while its lock is alive: held or waited on (the
    lock is then in ``_pinned``) or referenced by the application. An idle,
    unreferenced lock is dropped, and the next ``get`` makes a fresh one: the
    old one was free and nobody could reach it any more.
    """

    def __init__(self, tasks: TaskRegistry) -> None:
        self._tasks = tasks
        self._mutex = threading.Lock()
        self._locks: weakref.WeakValueDictionary[str, CutwatchLock] = weakref.WeakValueDictionary()
        self._pinned: set[CutwatchLock] = set()

    def get(self, name: str) -> CutwatchLock:
        """The lock ``name``; names that start with ``cutwatch:`` are cutwatch's own (the snapshot lock
        behind ``atomic()`` shows in cuts as ``cutwatch:atomic()``) and are refused."""
        if name.startswith(RESERVED_LOCK_PREFIX):
            raise ValueError(f"lock names starting with {RESERVED_LOCK_PREFIX!r} are cutwatch's own")
        with self._mutex:
            lock = self._locks.get(name)
            if lock is None:
                lock = CutwatchLock(name, self._tasks, self._pinned)
                self._locks[name] = lock
            return lock

    def __len__(self) -> int:
        """How many named locks are alive now."""
        return len(self._locks)
