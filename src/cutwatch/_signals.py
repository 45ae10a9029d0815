"""Stopping a process's main loop on a signal, without the lock a signal handler must not take.

A Python signal handler runs in the main thread between two bytecodes,
possibly while that thread is inside ``Event.wait`` holding the event's
(non-reentrant) lock: calling ``event.set()`` from the handler can then wait
for itself forever. The handler hands the ``set`` to a new thread instead.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["set_on_signals"]


def set_on_signals(event: threading.Event, *signums: int) -> None:
    """Set ``event`` when one of ``signums`` arrives (default: SIGTERM and SIGINT)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=event.set, name="cutwatch-signal", daemon=True).start()

    for signum in signums or (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)
