"""cutwatch's own counters as OpenTelemetry metrics, read when a reader collects.

Agents and collectors already count in plain integers (``stats()``); this
module turns those counts into observable instruments through the
OpenTelemetry API, so nothing on a request path does metrics work. With no
SDK configured the API is a no-op and all of this costs nothing.

The instruments of a table are created once per meter provider (an SDK
keeps the first instrument of a name and ignores the callbacks of a second)
and read every source registered with them: several agents (or collectors)
in one process add up by attribute set. Sources are held weakly, so a
metrics reader never keeps one alive; one that is removed is no longer
read, and its final counts stay in the totals of its attribute set while
another source of that set lives, so that counters never run backwards.
A collection reads each source once, for all of its instruments.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.util.types import AttributeValue

from cutwatch import __version__

__all__ = ["METER_NAME", "Attributes", "Metric", "Observed", "Values", "per_provider"]

_LOG = logging.getLogger("cutwatch.metrics")
METER_NAME = "cutwatch"

Attributes = Mapping[str, AttributeValue]
Values = Iterable[tuple[float, Attributes]]
"""What a metric reads from one source: values, each with its own attributes."""

R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")
_Key = tuple[tuple[str, AttributeValue], ...]


@dataclass(frozen=True)
class Metric(Generic[R]):
    """One observable instrument: ``values`` picks its values out of a source's reading."""

    name: str
    kind: Literal["counter", "updowncounter"]
    unit: str
    description: str
    values: Callable[[R], Values]


class Observed(Generic[S, R]):
    """The instruments of ``table`` on ``meter``, reading every source added.

    ``read`` takes one consistent reading of a source (its stats);
    ``attributes`` gives the attributes every value of that source carries.
    A collection reads each source once, for all instruments: an SDK calls
    the instruments' callbacks one after the other, and the first of them
    takes a pass over the sources that the others are then served from, so
    an export is of one moment and an agent's lock is taken once, not once
    per instrument.
    """

    def __init__(
        self,
        meter: Meter,
        table: Sequence[Metric[R]],
        read: Callable[[S], R],
        attributes: Callable[[S], Attributes] = lambda _: {},
    ) -> None:
        self._table = tuple(table)
        self._read = read
        self._attributes = attributes
        self._lock = threading.Lock()
        """Guards the sources and the retired totals; never held while a collection reads a source."""
        self._sources: weakref.WeakSet[S] = weakref.WeakSet()
        self._retired: dict[str, dict[_Key, float]] = {m.name: {} for m in table if m.kind == "counter"}
        self._passing = threading.Lock()
        """One pass at a time, so that passes, and what each instrument reports, come in order."""
        self._pass: dict[str, dict[_Key, float]] = {}
        self._unserved: set[str] = set()
        """The instruments the current pass has not reported to yet."""
        self._failed = False
        for metric in table:
            create = (
                meter.create_observable_counter
                if metric.kind == "counter"
                else meter.create_observable_up_down_counter
            )
            create(metric.name, [self._callback(metric)], metric.unit, metric.description)

    def add(self, source: S) -> None:
        with self._lock:
            self._sources.add(source)

    def remove(self, source: S) -> None:
        """Stop reading ``source``; its counters' final values stay in the totals of their attributes."""
        with self._lock:  # dropped and folded in one step: a pass sees it either live or retired
            if source not in self._sources:
                return
            self._sources.discard(source)
            final = self._values(source, [m for m in self._table if m.name in self._retired])
            for name, by_key in final.items():
                retired = self._retired[name]
                for key, value in by_key.items():
                    retired[key] = retired.get(key, 0.0) + value

    def _callback(self, metric: Metric[R]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._passing:
                if metric.name not in self._unserved:  # it had this pass: a new collection began
                    self._pass = self._take_pass()
                    self._unserved = {m.name for m in self._table}
                self._unserved.discard(metric.name)
                totals = self._pass[metric.name]
            return [Observation(_number(value), dict(key)) for key, value in totals.items()]

        return observe

    def _take_pass(self) -> dict[str, dict[_Key, float]]:
        """Every instrument's totals from one reading of each source, each source counted once.

        Sources are read outside the lock (a read takes the source's own
        locks). One removed meanwhile is left out, its final values being
        among the retired ones by then, so no pass counts it both live and
        retired; one kept is removed, if ever, after this pass, so its final
        values are no less than this reading and a counter never runs
        backwards.
        """
        with self._lock:
            sources = list(self._sources)
        readings = [(source, self._values(source, self._table)) for source in sources]
        totals: dict[str, dict[_Key, float]] = {m.name: {} for m in self._table}
        with self._lock:
            for source, values in readings:
                if source not in self._sources:
                    continue
                for name, by_key in values.items():
                    into = totals[name]
                    for key, value in by_key.items():
                        into[key] = into.get(key, 0.0) + value
            for name, retired in self._retired.items():
                live = totals[name]
                for key in list(retired):
                    if key in live:  # while a live source of the same attributes reports
                        live[key] += retired[key]
                    else:
                        del retired[key]
        return totals

    def _values(self, source: S, table: Sequence[Metric[R]]) -> dict[str, dict[_Key, float]]:
        """The values of ``table`` in one reading of ``source``; nothing if reading it fails."""
        out: dict[str, dict[_Key, float]] = {}
        try:
            reading = self._read(source)
            common = self._attributes(source)
            for metric in table:
                by_key = out.setdefault(metric.name, {})
                for value, attributes in metric.values(reading):
                    key = tuple(sorted({**common, **attributes}.items()))
                    by_key[key] = by_key.get(key, 0.0) + value
        except Exception:
            # A metrics reader must never break the host; say so once, then quietly.
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            _LOG.log(level, "reading %r for metrics failed", source, exc_info=True)
            return {}
        return out


def _number(value: float) -> float:
    """Counts as ints (an exporter then shows ``3``, not ``3.0``)."""
    return int(value) if float(value).is_integer() else value


_LOCK = threading.Lock()
_BY_PROVIDER: weakref.WeakKeyDictionary[MeterProvider, dict[str, object]] = weakref.WeakKeyDictionary()
_GLOBAL: dict[str, object] = {}


def per_provider(provider: MeterProvider | None, key: str, make: Callable[[Meter], T]) -> T:
    """``make(meter)`` once per meter provider and ``key`` (``None``: the global provider).

    The global provider's are made once, on whatever the API has then: its
    stand-in forwards to the SDK's provider once one is set, so instruments
    made before that report too (made again on the SDK's provider, they
    would clash with the forwarded ones).
    """
    with _LOCK:
        made = _GLOBAL if provider is None else _BY_PROVIDER.setdefault(provider, {})
        if key not in made:
            source = provider if provider is not None else metrics.get_meter_provider()
            made[key] = make(source.get_meter(METER_NAME, __version__))
        return made[key]  # type: ignore[return-value]
