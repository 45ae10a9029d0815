"""Bounded waiting for tests: poll a condition until it holds, fail clearly when it never does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT = 30.0
"""Generous: tests run on loaded 2-core machines; a wait that holds returns as soon as it does."""


def wait_until(condition: Callable[[], T], what: str, timeout: float = TIMEOUT, interval: float = 0.01) -> T:
    """``condition()``'s first truthy value; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
