"""The window between two cuts: recorded events, their partial order, and the consistent cuts in between.

Agents record, for the state names that lattice predicates read, each new
value at the end of an ``atomic()`` block, with the vector clock of that
event. Between a bottom cut (the previous complete cut, or the start of
recording) and a top cut, each process then has a short history: its values
at the bottom and the events after it. A *frontier* picks, for every
process, how many of its window events are in: ``frontier[i] = k`` means the
first ``k`` events of process ``i`` (0: none, its state at the bottom). A
frontier is a consistent cut when it is closed under happened-before: no
included event depends on an event left out. The vector clocks say exactly
that, transitively, so only the recorded events are needed (the lattice of
the recorded events is the lattice of the whole computation projected onto
what predicates read).

A process holds no value for a name before its first recorded one; sums and
counts read such a value as 0 and False.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Event",
    "Frontier",
    "History",
    "InconsistentWitness",
    "Value",
    "Window",
]

Value = int | bool
"""What a lattice predicate reads: integer and boolean state values."""

Frontier = tuple[int, ...]
"""How many window events of each process (in :attr:`Window.histories` order) a cut includes."""

MAX_WINDOW_EVENTS = 2_000_000
"""A window with more events than this is refused when read from JSON (the collector's bound)."""


class InconsistentWitness(AssertionError):
    """A decision procedure produced a cut its clocks call inconsistent: a bug, never reported."""


@dataclass(frozen=True)
class Event:
    """One recorded event: the vector clock of the event and the recorded names it changed."""

    clock: Mapping[str, int]
    values: Mapping[str, Value]
    seq: int = 0
    """The event's number at its process (for the witness and the space-time diagram)."""

    def to_json(self) -> dict[str, Any]:
        return {"clock": dict(self.clock), "values": dict(self.values), "seq": self.seq}


@dataclass(frozen=True)
class History:
    """One process in a window: its values at the bottom (absent names: not started) and its events."""

    process: str
    service: str
    start: Mapping[str, Value]
    events: tuple[Event, ...] = ()
    start_clock: Mapping[str, int] = field(default_factory=dict)
    """The process's vector clock at the bottom cut (empty when the window starts with recording)."""
    missing: str = ""
    """Why this history is not whole ("" when it is): changes lost, or a process that records none. A
    predicate that reads this process cannot be decided on the window."""

    def names(self) -> set[str]:
        found = set(self.start)
        for event in self.events:
            found.update(event.values)
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "service": self.service,
            "start": dict(self.start),
            "start_clock": dict(self.start_clock),
            "events": [e.to_json() for e in self.events],
            "missing": self.missing,
        }


class Window:
    """The recorded events between two cuts and the partial order their clocks give; immutable.

    ``unknown`` says why the window cannot be decided (events dropped, a
    process that did not record, a gap in its events); "" when it is whole.
    """

    def __init__(
        self,
        histories: Sequence[History],
        *,
        bottom_epoch: int | None = None,
        top_epoch: int = 0,
        unknown: str = "",
        invalid: Mapping[str, str] | None = None,
    ) -> None:
        self.histories = tuple(histories)
        self.invalid = dict(invalid or {})
        """Names whose recorded values are not integers or booleans, with why: a predicate that
        reads one cannot be decided on this window."""
        self.bottom_epoch = bottom_epoch
        self.top_epoch = top_epoch
        self.unknown = unknown
        self.processes = tuple(h.process for h in self.histories)
        if len(set(self.processes)) != len(self.processes):
            raise ValueError("a process appears twice in the window")
        self._index = {p: i for i, p in enumerate(self.processes)}
        # The own counter of each event, per process: what other processes' clocks are compared with.
        self._own: list[list[int]] = []
        for h in self.histories:
            own = [int(e.clock.get(h.process, 0)) for e in h.events]
            if any(b <= a for a, b in itertools.pairwise(own)):
                raise ValueError(f"the events of {h.process} are not in clock order")
            self._own.append(own)
        # Each name's changes per process: (event index, value), for values at a frontier.
        self._changes: list[dict[str, tuple[list[int], list[Value]]]] = []
        for h in self.histories:
            changes: dict[str, tuple[list[int], list[Value]]] = {}
            for m, event in enumerate(h.events, start=1):
                for name, value in event.values.items():
                    at, values = changes.setdefault(name, ([], []))
                    at.append(m)
                    values.append(value)
            self._changes.append(changes)

    # Shape -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.histories)

    def index(self, process: str) -> int:
        return self._index[process]

    def sizes(self) -> tuple[int, ...]:
        """The number of window events of each process."""
        return tuple(len(h.events) for h in self.histories)

    @property
    def bottom(self) -> Frontier:
        return (0,) * len(self.histories)

    @property
    def top(self) -> Frontier:
        return self.sizes()

    def event_count(self) -> int:
        return sum(self.sizes())

    # The partial order -----------------------------------------------------------------------
    def required(self, i: int, m: int, j: int) -> int:
        """How many of process ``j``'s window events event ``m`` (1-based) of process ``i`` depends on."""
        if m <= 0:
            return 0
        if i == j:
            return m - 1
        seen = int(self.histories[i].events[m - 1].clock.get(self.processes[j], 0))
        return bisect.bisect_right(self._own[j], seen)

    def requirement_steps(self, i: int) -> Iterator[tuple[int, int, int]]:
        """``(m, j, r)`` each time event ``m`` of process ``i`` needs more of process ``j`` (``r``
        events) than event ``m - 1`` did: the covering edges of the order, as the clocks give them."""
        previous: Mapping[str, int] = {}
        events = self.histories[i].events
        me = self.processes[i]
        for m, event in enumerate(events, start=1):
            clock = event.clock
            for pid, seen in clock.items():
                j = self._index.get(pid)
                if j is None or pid == me or seen <= previous.get(pid, 0):
                    continue
                before = bisect.bisect_right(self._own[j], previous.get(pid, 0))
                now = bisect.bisect_right(self._own[j], seen)
                if now > before:
                    yield m, j, now
            previous = clock

    def is_consistent(self, frontier: Frontier) -> bool:
        """Whether ``frontier`` is a consistent cut of this window (closed under happened-before)."""
        if len(frontier) != len(self.histories):
            return False
        for i, k in enumerate(frontier):
            if k < 0 or k > len(self.histories[i].events):
                return False
        for i, k in enumerate(frontier):
            if k == 0:
                continue
            clock = self.histories[i].events[k - 1].clock
            for pid, seen in clock.items():
                j = self._index.get(pid)
                if j is None or j == i:
                    continue
                if bisect.bisect_right(self._own[j], seen) > frontier[j]:
                    return False
        return True

    def check_witness(self, frontier: Frontier) -> None:
        """Raise :class:`InconsistentWitness` unless ``frontier`` is a consistent cut."""
        if not self.is_consistent(frontier):
            raise InconsistentWitness(f"frontier {frontier} is not a consistent cut of the window")

    # Values ----------------------------------------------------------------------------------
    def value(self, i: int, name: str, k: int) -> Value | None:
        """Process ``i``'s value of ``name`` with its first ``k`` events in (None: none yet)."""
        change = self._changes[i].get(name)
        if change is not None:
            at, values = change
            pos = bisect.bisect_right(at, k)
            if pos:
                return values[pos - 1]
        return self.histories[i].start.get(name)

    def values_at(self, frontier: Frontier) -> dict[tuple[str, str], Value]:
        """Every present ``(process, name)`` value at ``frontier``."""
        found: dict[tuple[str, str], Value] = {}
        for i, h in enumerate(self.histories):
            for name in h.names():
                value = self.value(i, name, frontier[i])
                if value is not None:
                    found[(h.process, name)] = value
        return found

    def changes(self, i: int, name: str) -> list[tuple[int, Value]]:
        """``(m, value)`` for each event of process ``i`` that set ``name``, in order."""
        change = self._changes[i].get(name)
        return list(zip(*change, strict=True)) if change is not None else []

    # Enumeration (the reference every decision procedure is tested against) ------------------
    def consistent_cuts(self) -> Iterator[Frontier]:
        """Every consistent cut, by brute force over all frontiers: exponential, for small windows."""
        ranges = [range(len(h.events) + 1) for h in self.histories]
        for frontier in itertools.product(*ranges):
            if self.is_consistent(frontier):
                yield frontier

    def successors(self, frontier: Frontier) -> Iterator[Frontier]:
        """The consistent cuts one event above ``frontier`` (a consistent cut)."""
        for i, k in enumerate(frontier):
            if k >= len(self.histories[i].events):
                continue
            m = k + 1
            clock = self.histories[i].events[m - 1].clock
            ok = True
            for pid, seen in clock.items():
                j = self._index.get(pid)
                if j is None or j == i:
                    continue
                if bisect.bisect_right(self._own[j], seen) > frontier[j]:
                    ok = False
                    break
            if ok:
                yield (*frontier[:i], m, *frontier[i + 1 :])

    # A witness, readable ---------------------------------------------------------------------
    def describe(self, frontier: Frontier) -> dict[str, Any]:
        """The cut at ``frontier`` as JSON: per process its last event (seq), clock and values."""
        processes: dict[str, Any] = {}
        for i, h in enumerate(self.histories):
            k = frontier[i]
            event = h.events[k - 1] if k else None
            processes[h.process] = {
                "service": h.service,
                "events_in": k,
                "seq": event.seq if event is not None else None,
                "clock": dict(event.clock) if event is not None else dict(h.start_clock),
                "values": {n: v for n in sorted(h.names()) if (v := self.value(i, n, k)) is not None},
            }
        return {"frontier": processes}

    # JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "bottom_epoch": self.bottom_epoch,
            "top_epoch": self.top_epoch,
            "unknown": self.unknown,
            "invalid": dict(self.invalid),
            "histories": [h.to_json() for h in self.histories],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Window:
        """Read a window the collector built; ``ValueError`` for anything malformed."""
        try:
            histories = []
            total = 0
            for h in doc["histories"]:
                events = tuple(
                    Event(_clock(e["clock"]), _values(e["values"]), int(e.get("seq", 0))) for e in h["events"]
                )
                total += len(events)
                if total > MAX_WINDOW_EVENTS:
                    raise ValueError(f"more than {MAX_WINDOW_EVENTS} events in one window")
                histories.append(
                    History(
                        str(h["process"]),
                        str(h.get("service", "")),
                        _values(h.get("start", {})),
                        events,
                        _clock(h.get("start_clock", {})),
                        str(h.get("missing", "")),
                    )
                )
            bottom = doc.get("bottom_epoch")
            return cls(
                histories,
                bottom_epoch=None if bottom is None else int(bottom),
                top_epoch=int(doc.get("top_epoch", 0)),
                unknown=str(doc.get("unknown", "")),
                invalid={str(k): str(v) for k, v in dict(doc.get("invalid") or {}).items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a lattice window: {exc!r}") from exc


def _clock(doc: Any) -> dict[str, int]:
    if not isinstance(doc, Mapping):
        raise ValueError("a clock is an object of counters")
    clock = {}
    for pid, value in doc.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"clock entry {pid!r} is not a counter: {value!r}")
        clock[str(pid)] = value
    return clock


def _values(doc: Any) -> dict[str, Value]:
    if not isinstance(doc, Mapping):
        raise ValueError("recorded values are an object")
    values: dict[str, Value] = {}
    for name, value in doc.items():
        if not isinstance(value, int):
            raise ValueError(f"recorded value of {name!r} is not an integer or a boolean: {value!r}")
        values[str(name)] = value
    return values
