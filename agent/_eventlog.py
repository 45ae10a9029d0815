"""An optional event log in the ShiViz format (the one GoVector writes).

Each event is two lines: the process id followed by its vector clock as a
JSON object, then a description. Load the file into ShiViz with the parser
regular expression ``SHIVIZ_REGEX`` to see the run as a space-time diagram.

Writing happens on a background thread behind a bounded queue: the RPC path
only formats and enqueues; when the queue is full the event is dropped and
counted, never waited for. The thread owns the file and writes whole batches
of events unbuffered, so a failed write (disk full, file gone) loses only the
events it carried, which are counted too, and never reaches the application.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

_LOG = logging.getLogger("cutwatch.agent")

SHIVIZ_REGEX = r"(?<host>\S*) (?<clock>{.*})\n(?<event>.*)"
_MAX_BATCH = 1024


def format_event(process_id: str, clock: Mapping[str, int], description: str) -> str:
    """The two ShiViz lines of one event (newlines in the text are flattened)."""
    text = " ".join(description.split())
    return f"{process_id} {json.dumps(dict(clock), separators=(',', ':'))}\n{text}\n"


class EventLog:
    """Appends events to a file from a background thread."""

    def __init__(self, path: str | Path, *, max_queue: int = 65536) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.path = Path(path)
        self._dropped = 0
        self._count_lock = threading.Lock()
        self._closing = False
        self._abandon = False
        # None is the stop marker.
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=max_queue)
        self._file: IO[bytes] = self.path.open("ab", buffering=0)
        self._thread = threading.Thread(target=self._run, name="cutwatch-eventlog", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Events not written: queue full, log closed, or a failed write."""
        return self._dropped

    def _drop(self, count: int = 1) -> None:
        with self._count_lock:
            self._dropped += count

    def write(self, process_id: str, clock: Mapping[str, int], description: str) -> None:
        if self._closing:
            self._drop()
            return
        try:
            self._queue.put_nowait(format_event(process_id, clock, description))
        except queue.Full:
            self._drop()

    def _run(self) -> None:
        try:
            stop = False
            while not stop and not self._abandon:
                batch: list[str] = []
                item = self._queue.get()
                while True:
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                    if len(batch) >= _MAX_BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._write_batch(batch)
        finally:
            self._drop(sum(1 for item in _drain(self._queue) if item is not None))
            with contextlib.suppress(OSError):
                self._file.close()

    def _write_batch(self, batch: list[str]) -> None:
        data = memoryview("".join(batch).encode("utf-8", "replace"))
        try:
            while data:
                written = self._file.write(data)
                if not written:
                    raise OSError("the event log accepted no bytes")
                data = data[written:]
        except Exception as exc:  # disk full, file gone: count and go on
            self._drop(len(batch))
            _LOG.warning("cutwatch event log write failed: %s", exc)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, waiting at most ``timeout`` seconds in all.

        A writer still stuck when the time is up stops after its current
        write, dropping (and counting) the rest; events written after close
        are dropped too.
        """
        deadline = time.monotonic() + timeout
        if not self._closing:
            self._closing = True
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                _LOG.warning("cutwatch event log did not drain in %.1fs", timeout)
                self._abandon = True
                with contextlib.suppress(queue.Full):
                    self._queue.put_nowait(None)
        self._thread.join(max(0.0, deadline - time.monotonic()))


def _drain(q: queue.Queue[str | None]) -> list[str | None]:
    items: list[str | None] = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
