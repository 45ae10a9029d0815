"""The state changes agents recorded for lattice predicates, kept until the window they fall in is checked.

Every local snapshot carries the changes its process recorded since its
previous one (numbered per process) and how many it recorded in all before
that snapshot. The log keeps the changes by number, and each snapshot's
count by epoch; the window that ends at a complete cut ``B`` is, for each
process, the changes numbered from its count at the previous complete cut
``A`` (or from 0, the start of its recording) up to its count at ``B``. A
change that never arrived (dropped at a full agent buffer, in a local
snapshot that was lost, or before this collector started) leaves a gap: that
process's history is marked missing, and every lattice predicate that reads
it answers "unknown" for the window, never "no violation".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cutwatch.core import Cut, LocalSnapshot, RecordedEvent
from cutwatch.predicates._window import Event, History, Value, Window

__all__ = ["DEFAULT_MAX_LOGGED_CHANGES", "RecordingLog"]

_LOG = logging.getLogger("cutwatch.collector")
DEFAULT_MAX_LOGGED_CHANGES = 2_000_000
"""Recorded changes the collector keeps waiting for their window; past it the oldest are dropped."""
_KEPT_EPOCHS = 256
_WARN_EVERY = 60.0
NOT_RECORDING = "records no state changes (register_state(name, provider, record=True) in its agent)"


class RecordingLog:
    """Recorded state changes by process and number, and each local snapshot's count; thread-safe."""

    def __init__(self, max_changes: int = DEFAULT_MAX_LOGGED_CHANGES) -> None:
        if max_changes < 1:
            raise ValueError("max_changes must be at least 1")
        self.max_changes = max_changes
        self._lock = threading.Lock()
        self._events: dict[str, dict[int, RecordedEvent]] = {}
        self._floor: dict[str, int] = {}
        """Per process, the number below which changes are no longer kept (checked, or dropped)."""
        self._through: dict[int, dict[str, int]] = {}
        self._size = 0
        self.dropped = 0
        """Changes dropped because the log was full."""
        self._warned = -_WARN_EVERY

    # Input -------------------------------------------------------------------------------------
    def add(self, snapshots: Iterable[LocalSnapshot]) -> None:
        """Keep the changes of a finished snapshot's local pieces, and each piece's count."""
        with self._lock:
            for snap in snapshots:
                counts = self._through.setdefault(snap.epoch, {})
                counts[snap.process] = snap.recorded_through
                if not snap.recorded:
                    continue
                events = self._events.setdefault(snap.process, {})
                floor = self._floor.get(snap.process, 0)
                for event in snap.recorded:
                    if event.seq >= floor and event.seq not in events:
                        events[event.seq] = event
                        self._size += 1
            while len(self._through) > _KEPT_EPOCHS:
                del self._through[min(self._through)]
            if self._size > self.max_changes:
                self._shed()

    def _shed(self) -> None:
        """Drop the oldest changes of the processes holding the most until under the bound."""
        excess = self._size - self.max_changes
        for process in sorted(self._events, key=lambda p: -len(self._events[p])):
            events = self._events[process]
            doomed = sorted(events)[: max(0, min(len(events), excess))]
            for seq in doomed:
                del events[seq]
            if doomed:
                self._floor[process] = max(self._floor.get(process, 0), doomed[-1] + 1)
                self._size -= len(doomed)
                self.dropped += len(doomed)
                excess -= len(doomed)
            if excess <= 0:
                break
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:  # a log line a minute, however long it lasts
            self._warned = now
            _LOG.warning(
                "recorded state changes dropped (%d so far): more than %d wait for their window; the windows "
                "they fall in are unknown",
                self.dropped,
                self.max_changes,
            )

    @property
    def size(self) -> int:
        with self._lock:
            return self._size

    # Windows -----------------------------------------------------------------------------------
    def window(self, top: Cut, bottom: Cut | None, names: Iterable[str]) -> Window:
        """The window of complete cuts ``bottom`` (None: from the start of recording) to ``top``,
        holding the processes of ``top`` and the recorded values of ``names``."""
        wanted = set(names)
        with self._lock:
            top_counts = dict(self._through.get(top.epoch, {}))
            bottom_counts = dict(self._through.get(bottom.epoch, {})) if bottom is not None else {}
            histories: list[History] = []
            invalid: dict[str, str] = {}
            for process in sorted(top.states):
                entry = top.states[process]
                service = str(entry.get("service", ""))
                state_now = _state(entry)
                through = top_counts.get(process)
                if not through:
                    readable = _read(process, state_now, wanted, invalid)
                    if readable:
                        missing = (
                            "its recording at this cut is not known" if through is None else NOT_RECORDING
                        )
                        histories.append(History(process, service, readable, (), {}, missing))
                    continue
                start: dict[str, Value] = {}
                start_clock: dict[str, int] = {}
                low = 0
                missing = ""
                if bottom is not None and process in bottom.states:
                    below = bottom_counts.get(process)
                    if below is None:
                        missing = f"its recording at cut {bottom.epoch} is not known"
                    else:
                        low = below
                        start = _read(process, _state(bottom.states[process]), wanted, invalid)
                        start_clock = dict(bottom.clocks.get(process, {}))
                kept = self._events.get(process, {})
                events: list[Event] = []
                absent: list[int] = []
                for seq in range(low, through):
                    recorded = kept.get(seq)
                    if recorded is None:
                        absent.append(seq)
                        continue
                    values = _read(process, recorded.values, wanted, invalid)
                    if values:
                        events.append(Event(dict(recorded.clock), values, seq))
                if absent and not missing:
                    missing = (
                        f"{len(absent)} of its recorded state changes (numbers {absent[0]}..{absent[-1]}) "
                        "never reached the collector: dropped by a full agent buffer "
                        "(stats().changes_dropped), in a local snapshot that was lost, or before this "
                        "collector started"
                    )
                histories.append(History(process, service, start, tuple(events), start_clock, missing))
            return Window(
                histories,
                bottom_epoch=bottom.epoch if bottom is not None else None,
                top_epoch=top.epoch,
                invalid=invalid,
            )

    def checked(self, top: Cut) -> None:
        """The window ending at ``top`` was checked: forget the changes before ``top``."""
        with self._lock:
            for process, through in self._through.get(top.epoch, {}).items():
                events = self._events.get(process)
                if events:
                    for seq in [s for s in events if s < through]:
                        del events[seq]
                        self._size -= 1
                self._floor[process] = max(self._floor.get(process, 0), through)
            for epoch in [e for e in self._through if e < top.epoch]:
                del self._through[epoch]


def _state(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    state = entry.get("state")
    return state if isinstance(state, Mapping) else {}


def _read(
    process: str, values: Mapping[str, Any], wanted: set[str], invalid: dict[str, str]
) -> dict[str, Value]:
    """The values of ``wanted`` names in ``values`` that a lattice predicate can read (int or bool);
    another kind of value makes its name invalid for the window, with why."""
    found: dict[str, Value] = {}
    for name in wanted.intersection(values):
        value = values[name]
        if isinstance(value, int):
            found[name] = value
        else:
            invalid.setdefault(
                name,
                f"{process} holds {type(value).__name__} {str(value)[:80]!r}, not an integer or a boolean",
            )
    return found
