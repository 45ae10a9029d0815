"""Reading OpenTelemetry metrics in tests: the SDK's in-memory reader, flattened into plain dicts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)

Attributes = frozenset[tuple[str, Any]]


@dataclass
class Collected:
    """One collection: each metric's points by attribute set, and its unit."""

    points: dict[str, dict[Attributes, Any]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def find(self, name: str, attributes: Mapping[str, Any]) -> Any | None:
        """The value of the point of ``name`` whose attributes include ``attributes``; None if none has."""
        wanted = set(attributes.items())
        found = [v for attrs, v in self.points.get(name, {}).items() if wanted <= set(attrs)]
        assert len(found) <= 1, f"{name} {attributes}: more than one point: {found}"
        return found[0] if found else None

    def value(self, name: str, attributes: Mapping[str, Any]) -> Any:
        """Like :meth:`find`, but a point that is not there fails: a 0 is a 0, not a wrong name."""
        found = self.find(name, attributes)
        if found is None:
            there = [dict(attrs) for attrs in self.points.get(name, {})]
            raise AssertionError(f"{name} {dict(attributes)}: no such point among {there}")
        return found


class Metrics:
    """A meter provider of its own (never the global one) and its in-memory reader."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def collect(self) -> Collected:
        out = Collected()
        for metric in self._metrics():
            out.units[metric.name] = metric.unit or ""
            points = out.points.setdefault(metric.name, {})
            for point in metric.data.data_points:
                attributes = frozenset((point.attributes or {}).items())
                if isinstance(point, HistogramDataPoint):
                    points[attributes] = (point.count, point.sum)
                elif isinstance(point, NumberDataPoint):
                    points[attributes] = point.value
                else:
                    raise AssertionError(f"{metric.name}: a point of a kind not read here: {point!r}")
        return out

    def _metrics(self) -> Iterator[Metric]:
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                yield from scope.metrics

    def shutdown(self) -> None:
        self.provider.shutdown()
