"""The collector's counters as OpenTelemetry metrics.

Counts the collector keeps anyway (the coordinator's stats, the checker's
results, the agents registered) are observable instruments, read together
once per collection; each finished snapshot adds to a counter and a
histogram of how long it took. Attributes stay few: a cut's status, a
check's name (one per loaded predicate) and result, an agent's service;
never a process id or an epoch, which grow without bound. The table is in
docs/operations.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import Meter, MeterProvider

from cutwatch.collector._records import StoredCut
from cutwatch.collector._sessions import CoordinatorStats
from cutwatch.integrations._metrics import METER_NAME, Metric, Observed, Values, per_provider

if TYPE_CHECKING:
    from cutwatch.collector._service import CollectorServer

__all__ = ["COLLECTOR_METRICS", "DURATION_BUCKETS", "CollectorMetrics", "collector_metrics"]

_LOG = logging.getLogger("cutwatch.collector")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a snapshot of a healthy system takes milliseconds; one that times out, its timeout."""


@dataclass(frozen=True)
class CollectorReading:
    """One collector's counts, read together."""

    stats: CoordinatorStats
    running: int
    agents: Mapping[str, int]
    """Registered agents by service."""
    checks: Mapping[tuple[str, str], int]
    """Check results by (check name, status)."""
    unchecked: int
    changes_dropped: int


def read(server: CollectorServer) -> CollectorReading:
    checker, recordings = server.checker, server.recordings
    return CollectorReading(
        stats=server.coordinator.stats(),
        running=len(server.coordinator.running()),
        agents=Counter(session.service for session in server.coordinator.sessions()),
        checks=checker.outcomes(),
        unchecked=checker.skipped,
        changes_dropped=recordings.dropped if recordings is not None else 0,
    )


def _events(reading: CollectorReading) -> Values:
    stats = reading.stats
    accepted = stats.events - stats.events_invalid - stats.events_late - stats.events_foreign
    return [
        (accepted, {"cutwatch.event.outcome": "accepted"}),
        (stats.events_invalid, {"cutwatch.event.outcome": "invalid"}),
        (stats.events_late, {"cutwatch.event.outcome": "late"}),
        (stats.events_foreign, {"cutwatch.event.outcome": "foreign"}),
    ]


COLLECTOR_METRICS: tuple[Metric[CollectorReading], ...] = (
    Metric(
        "cutwatch.collector.running_snapshots",
        "updowncounter",
        "{snapshot}",
        "Snapshots started and not finished yet.",
        lambda r: [(r.running, {})],
    ),
    Metric(
        "cutwatch.collector.agents",
        "updowncounter",
        "{agent}",
        "Agents registered now, by service.",
        lambda r: [(count, {"cutwatch.service": service}) for service, count in r.agents.items()],
    ),
    Metric(
        "cutwatch.collector.checks",
        "counter",
        "{check}",
        "Check results (deadlock detection and each predicate) by name and status.",
        lambda r: [
            (count, {"cutwatch.check.name": name, "cutwatch.check.status": status})
            for (name, status), count in r.checks.items()
        ],
    ),
    Metric(
        "cutwatch.collector.cuts.unchecked",
        "counter",
        "{cut}",
        "Cuts not checked because the checks fell behind.",
        lambda r: [(r.unchecked, {})],
    ),
    Metric(
        "cutwatch.collector.cuts.rejected",
        "counter",
        "{cut}",
        "Cuts that contradicted themselves and were stored INCOMPLETE (a cutwatch bug).",
        lambda r: [(r.stats.rejected, {})],
    ),
    Metric(
        "cutwatch.collector.events",
        "counter",
        "{event}",
        "Snapshot events from agents: used, or dropped as invalid, late (their snapshot had ended) or "
        "foreign (from an agent that was not one of the snapshot's participants).",
        _events,
    ),
    Metric(
        "cutwatch.collector.store.errors",
        "counter",
        "{error}",
        "Cuts that could not be stored.",
        lambda r: [(r.stats.store_errors, {})],
    ),
    Metric(
        "cutwatch.collector.changes.dropped",
        "counter",
        "{change}",
        "State changes recorded for lattice predicates that the collector shed past its bound.",
        lambda r: [(r.changes_dropped, {})],
    ),
)


class CollectorMetrics:
    """The collectors' instruments on one meter provider: observed ones, and those of finished cuts."""

    def __init__(self, meter: Meter) -> None:
        self.observed: Observed[CollectorServer, CollectorReading] = Observed(meter, COLLECTOR_METRICS, read)
        self._snapshots = meter.create_counter(
            "cutwatch.collector.snapshots", "{snapshot}", "Finished snapshots by status."
        )
        self._duration = meter.create_histogram(
            "cutwatch.collector.snapshot.duration",
            "s",
            "How long snapshots took, from start to their cut's status.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def cut_finished(self, cut: StoredCut) -> None:
        """Count a finished cut; never raises (the cut must still reach its checks)."""
        try:
            status = {"cutwatch.snapshot.status": cut.status}
            self._snapshots.add(1, {**status, "cutwatch.snapshot.untracked": bool(cut.untracked)})
            self._duration.record(max(0.0, cut.finished - cut.started), status)
        except Exception:
            _LOG.debug("counting cut %d for metrics failed", cut.epoch, exc_info=True)


def collector_metrics(provider: MeterProvider | None) -> CollectorMetrics:
    """The instruments on ``provider`` (``None``: the global one); the API's no-op ones if that fails."""
    try:
        return per_provider(provider, "collector", CollectorMetrics)
    except Exception:
        _LOG.warning("cutwatch metrics are off: the meter provider failed", exc_info=True)
        return CollectorMetrics(metrics.NoOpMeter(METER_NAME))
