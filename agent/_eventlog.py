"""An optional event log in the ShiViz format (the one GoVector writes).

Each event is two lines: the process id followed by its vector clock as a
JSON object, then a description. Load the file into ShiViz with the parser
regular expression ``SHIVIZ_REGEX`` to see the run as a space-time diagram.

Writing happens on a background thread behind a bounded queue: the RPC path
only formats and enqueues; when the queue is full the event is dropped and
counted, never waited for.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO

_LOG = logging.getLogger("cutwatch.agent")

SHIVIZ_REGEX = r"(?<host>\S*) (?<clock>{.*})\n(?<event>.*)"
_STOP = object()


def format_event(process_id: str, clock: Mapping[str, int], description: str) -> str:
    """The two ShiViz lines of one event (newlines in the text are flattened)."""
    text = " ".join(description.split())
    return f"{process_id} {json.dumps(dict(clock), separators=(',', ':'))}\n{text}\n"


class EventLog:
    """Appends events to a file from a background thread."""

    def __init__(self, path: str | Path, *, max_queue: int = 65536) -> None:
        self.path = Path(path)
        self.dropped = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._run, name="cutwatch-eventlog", daemon=True)
        self._thread.start()

    def write(self, process_id: str, clock: Mapping[str, int], description: str) -> None:
        try:
            self._queue.put_nowait(format_event(process_id, clock, description))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            try:
                self._file.write(str(item))
                if self._queue.empty():
                    self._file.flush()
            except OSError as exc:  # disk full, file gone: count and go on
                self.dropped += 1
                _LOG.warning("cutwatch event log write failed: %s", exc)
        self._file.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued (waiting at most ``timeout``) and close."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            _LOG.warning("cutwatch event log did not drain in %.1fs", timeout)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._file.close()
