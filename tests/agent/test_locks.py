"""Named locks live only while held, waited on or referenced: per-item names must not grow memory."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
import weakref
from concurrent import futures
from typing import Any

from polling import TIMEOUT, wait_until

from cutwatch.agent._lock import CutwatchLock, LockRegistry

NAMES = 100_000
MEMORY_BOUND = 2 * 1024 * 1024
"""Bytes; keeping every one of ``NAMES`` locks would take tens of megabytes."""


def registry(agent: Any) -> LockRegistry:
    locks: LockRegistry = agent._locks
    return locks


def test_distinct_names_taken_and_released_leave_nothing_behind(make_agent: Any) -> None:
    agent = make_agent("locks")
    locks = registry(agent)
    with agent.lock("warm-up"):  # first-use allocations are not growth
        pass
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(NAMES):
            with agent.lock(f"inventory:{i}"):
                pass
            if i % 2:  # the unreferenced form: taken and released through fresh lookups
                agent.lock(f"order:{i}").acquire()
                agent.lock(f"order:{i}").release()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(locks) == 0
    assert agent.tasks() == []
    assert after - before < MEMORY_BOUND, f"{after - before} bytes kept after {NAMES} names"


def test_referenced_locks_are_counted_until_dropped(make_agent: Any) -> None:
    agent = make_agent("locks")
    locks = registry(agent)
    first, second = agent.lock("a"), agent.lock("b")
    assert agent.lock("a") is first and len(locks) == 2
    del first
    gc.collect()
    assert len(locks) == 1 and agent.lock("b") is second


def test_held_lock_survives_losing_every_reference(make_agent: Any) -> None:
    agent = make_agent("locks")
    locks = registry(agent)
    assert agent.lock("row").acquire(blocking=False)
    ref = weakref.ref(agent.lock("row"))
    gc.collect()
    assert ref() is not None and agent.lock("row") is ref()
    assert len(locks) == 1
    with futures.ThreadPoolExecutor(1) as pool:  # another task sees it held
        assert pool.submit(lambda: agent.lock("row").acquire(blocking=False)).result(TIMEOUT) is False
    (holder,) = agent.tasks()
    assert holder.held_locks == ("row",)
    agent.lock("row").release()
    gc.collect()
    assert ref() is None and len(locks) == 0
    assert agent.tasks() == []


def test_lock_with_a_thread_waiter_survives_and_is_handed_over(make_agent: Any) -> None:
    agent = make_agent("locks")
    locks = registry(agent)
    agent.lock("row").acquire()
    waited_on: list[weakref.ref[CutwatchLock]] = []
    got_it, done = threading.Event(), threading.Event()

    def waiter() -> bool:
        lock = agent.lock("row")
        waited_on.append(weakref.ref(lock))
        if not lock.acquire(timeout=TIMEOUT):
            return False
        got_it.set()
        assert done.wait(TIMEOUT)
        lock.release()
        return True

    with futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(waiter)
        wait_until(lambda: any(t.waiting_lock == "row" for t in agent.tasks()), "the waiter")
        gc.collect()
        assert len(locks) == 1 and agent.lock("row") is waited_on[0]()
        agent.lock("row").release()  # hands over to the waiter
        assert got_it.wait(TIMEOUT)
        gc.collect()
        assert agent.lock("row").locked() and agent.lock("row") is waited_on[0]()
        (holder,) = agent.tasks()
        assert holder.held_locks == ("row",) and holder.waiting_lock is None
        done.set()
        assert result.result(TIMEOUT)
    gc.collect()
    assert waited_on[0]() is None and len(locks) == 0
    assert agent.tasks() == []


def test_concurrent_gets_return_one_lock(make_agent: Any) -> None:
    agent = make_agent("locks")
    threads, names = 16, 200
    start = threading.Barrier(threads)

    def get_all() -> list[CutwatchLock]:
        start.wait(TIMEOUT)
        return [agent.lock(f"n{i}") for i in range(names)]

    with futures.ThreadPoolExecutor(threads) as pool:
        seen = [f.result(TIMEOUT) for f in [pool.submit(get_all) for _ in range(threads)]]
    for i in range(names):
        assert len({id(locks[i]) for locks in seen}) == 1
    assert len(registry(agent)) == names


def test_unreferenced_lock_still_excludes_across_threads(make_agent: Any) -> None:
    """Threads that keep no reference between taking and releasing must share one lock."""
    agent = make_agent("locks")
    threads, rounds = 8, 2_000
    start = threading.Barrier(threads)
    inside: list[int] = []
    overlaps: list[int] = []

    def contend() -> None:
        start.wait(TIMEOUT)
        for i in range(rounds):
            assert agent.lock("hot").acquire(timeout=TIMEOUT)
            inside.append(i)
            if len(inside) != 1:
                overlaps.append(len(inside))
            inside.pop()
            agent.lock("hot").release()

    with futures.ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(contend) for _ in range(threads)]:
            f.result(TIMEOUT)
    assert overlaps == []
    gc.collect()
    assert len(registry(agent)) == 0
    assert agent.tasks() == []


def test_asyncio_acquire_and_cancel_then_forgotten(make_agent: Any) -> None:
    agent = make_agent("locks")
    locks = registry(agent)

    async def waiter() -> None:
        async with agent.lock("row"):
            raise AssertionError("a cancelled waiter must not keep the lock")

    async def scenario() -> None:
        await agent.lock("row").acquire_async()
        # Cancelled while queued: it leaves the queue.
        queued = asyncio.create_task(waiter())
        await asyncio.to_thread(wait_until, lambda: any(t.waiting_lock for t in agent.tasks()), "the waiter")
        gc.collect()
        assert len(locks) == 1
        queued.cancel()
        await asyncio.wait([queued], timeout=TIMEOUT)
        assert queued.cancelled()
        del queued
        (holder,) = agent.tasks()
        assert holder.held_locks == ("row",) and holder.waiting_lock is None
        # Cancelled after the grant, before delivery: the lock is passed on.
        granted = asyncio.create_task(waiter())
        await asyncio.to_thread(wait_until, lambda: any(t.waiting_lock for t in agent.tasks()), "the waiter")
        agent.lock("row").release()
        granted.cancel()
        await asyncio.wait([granted], timeout=TIMEOUT)
        assert granted.cancelled()
        del granted
        gc.collect()
        assert len(locks) == 0
        assert agent.tasks() == []
        async with agent.lock("row"):
            assert agent.lock("row").locked()
        gc.collect()
        assert len(locks) == 0

    asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))
    assert agent.tasks() == []
