"""Two threads of one agent that deadlock on two cutwatch locks, for tests of deadlock reports."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from polling import wait_until

import cutwatch

TIMEOUT = 30.0


@contextmanager
def lock_cycle(
    agent: cutwatch.Agent, first: str = "accounts:1", second: str = "accounts:2"
) -> Iterator[None]:
    """Inside: each thread holds one lock and waits for the other's. On exit the cycle is broken
    (any task may release a cutwatch lock) and both threads are joined."""
    mine, theirs = agent.lock(first), agent.lock(second)
    holding = threading.Barrier(3)

    def grab(held: Any, wanted: Any, releases_held: bool) -> None:
        held.acquire()
        holding.wait(TIMEOUT)
        if wanted.acquire(timeout=TIMEOUT):  # blocks until the cycle is broken
            wanted.release()
        if releases_held:
            held.release()

    threads = [
        threading.Thread(target=grab, args=(mine, theirs, False)),
        threading.Thread(target=grab, args=(theirs, mine, True)),
    ]
    for thread in threads:
        thread.start()
    try:
        holding.wait(TIMEOUT)
        wait_until(lambda: sum(1 for t in agent.tasks() if t.waiting_lock) == 2, "both threads to wait")
        yield
    finally:
        mine.release()
        for thread in threads:
            thread.join(TIMEOUT)
