"""Recording state changes for lattice predicates: each new value, with the vector clock of its event.

A snapshot samples one consistent cut; a transient violation between two
samples needs the events in between. For the state names registered with
``record=True``, the end of every ``atomic()`` block reads their providers
and, when a value changed, records one event: the new values, a sequence
number and the vector clock of that event (the process's clock ticks for
it). The events wait in a bounded buffer and travel with the next local
snapshot (:attr:`Capture.recorded`). An event that does not fit is dropped
and counted, and still takes its sequence number: the collector sees the gap
and calls that window's answer unknown, never "no violation".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cutwatch.core._counters import Counters

__all__ = ["DEFAULT_MAX_RECORDED_EVENTS", "RecordedEvent", "Recorder"]

_LOG = logging.getLogger("cutwatch.agent")
DEFAULT_MAX_RECORDED_EVENTS = 10_000
"""Events a process keeps between two local snapshots; more are dropped and counted."""
_SCALARS = (int, str, type(None))  # bool is an int; a float goes through JSON (no NaN)


@dataclass(frozen=True)
class RecordedEvent:
    """One recorded state change: number ``seq`` at its process, its vector clock, the new values."""

    seq: int
    clock: Mapping[str, int]
    values: Mapping[str, object]

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "clock": dict(self.clock), "values": dict(self.values)}


class Recorder:
    """The recorded names, their last values and the buffer of events; not thread-safe.

    The process calls :meth:`changes` at the end of each ``atomic()`` block
    (under its snapshot lock, so blocks never interleave) and :meth:`append`
    under its event lock, where it also :meth:`drain` s the buffer into a
    local snapshot: an event is in the snapshot exactly when it happened
    before the snapshot.
    """

    def __init__(self, counters: Counters, max_events: int = DEFAULT_MAX_RECORDED_EVENTS) -> None:
        if max_events < 1:
            raise ValueError("max_recorded_events must be at least 1")
        self.max_events = max_events
        self._counters = counters
        self._providers: dict[str, Callable[[], object]] = {}
        self._last: dict[str, object] = {}
        self._buffer: list[RecordedEvent] = []
        self.next_seq = 0
        """The sequence number of the next event: how many were recorded (or dropped) so far."""

    def __bool__(self) -> bool:
        return bool(self._providers)

    def add(self, name: str, provider: Callable[[], object]) -> dict[str, object]:
        """Record ``name`` from now on; returns its value now (the process records it as a first event)."""
        self._providers[name] = provider
        self._last.pop(name, None)
        return self.changes(only=name)

    def changes(self, only: str | None = None) -> dict[str, object]:
        """The recorded names whose value changed since they were last recorded, with the new values."""
        changed: dict[str, object] = {}
        last = self._last
        for name, provider in self._providers.items():
            if only is not None and name != only:
                continue
            try:
                value = provider()
                if not isinstance(value, _SCALARS):
                    value = json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
            except Exception as exc:
                self._counters.state_errors += 1
                _LOG.warning("cutwatch: recorded state %r failed: %s", name, exc)
                continue
            if name not in last or last[name] != value or type(last[name]) is not type(value):
                last[name] = value
                changed[name] = value
        return changed

    def append(self, clock: Mapping[str, int], values: Mapping[str, object]) -> int:
        """Keep one event (the caller ticked the clock for it), and return its number; dropped, and
        counted, when the buffer is full."""
        seq = self.next_seq
        self.next_seq = seq + 1
        if len(self._buffer) >= self.max_events:
            self._counters.changes_dropped += 1
            return seq
        self._counters.changes_recorded += 1
        self._buffer.append(RecordedEvent(seq, clock, values))
        return seq

    def drain(self) -> tuple[RecordedEvent, ...]:
        """The events kept since the last drain, oldest first."""
        events, self._buffer = tuple(self._buffer), []
        return events
