"""The agent's counters (``agent.stats()``) as OpenTelemetry metrics.

Every instrument is observable: a metrics reader reads ``stats()`` when it
collects, once per agent for all instruments (one take of the lock calls
use), so interceptors do no metrics work on a call. An agent is read
from ``start()`` to ``close()``. Values carry ``cutwatch.service``, the
agent's service name, and nothing per process or per call, so that the
number of series stays that of services (several agents of one service in
one process add up). The table is in docs/operations.md.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry.metrics import Meter, MeterProvider

from cutwatch.integrations._metrics import Metric, Observed, Values, per_provider

if TYPE_CHECKING:
    from cutwatch.agent._agent import Agent, AgentStats

__all__ = ["AGENT_METRICS", "agent_metrics", "forget", "observe"]

_LOG = logging.getLogger("cutwatch.agent")


def _counter(name: str, unit: str, description: str, field: str) -> Metric[AgentStats]:
    def values(stats: AgentStats) -> Values:
        return [(getattr(stats, field), {})]

    return Metric(name, "counter", unit, description, values)


def _messages(stats: AgentStats) -> Values:
    return [
        (stats.requests_sent, {"cutwatch.message.type": "request", "cutwatch.message.direction": "sent"}),
        (
            stats.requests_received,
            {"cutwatch.message.type": "request", "cutwatch.message.direction": "received"},
        ),
        (stats.responses_sent, {"cutwatch.message.type": "response", "cutwatch.message.direction": "sent"}),
        (
            stats.responses_received,
            {"cutwatch.message.type": "response", "cutwatch.message.direction": "received"},
        ),
    ]


def _untracked(stats: AgentStats) -> Values:
    return [
        (stats.untracked_missing, {"cutwatch.untracked.reason": "missing"}),
        (stats.untracked_malformed, {"cutwatch.untracked.reason": "malformed"}),
    ]


def _snapshots(stats: AgentStats) -> Values:
    return [
        (stats.snapshots_taken - stats.snapshots_without_state, {"cutwatch.snapshot.outcome": "with_state"}),
        (stats.snapshots_without_state, {"cutwatch.snapshot.outcome": "without_state"}),
        (stats.snapshots_skipped, {"cutwatch.snapshot.outcome": "skipped"}),
    ]


def _collector_events(stats: AgentStats) -> Values:
    return [
        (stats.collector_events_sent, {"cutwatch.event.outcome": "sent"}),
        (stats.collector_events_dropped, {"cutwatch.event.outcome": "dropped"}),
    ]


AGENT_METRICS: tuple[Metric[AgentStats], ...] = (
    Metric(
        "cutwatch.agent.messages",
        "counter",
        "{message}",
        "Requests and responses this agent stamped (sent) or read the stamp of (received).",
        _messages,
    ),
    Metric(
        "cutwatch.agent.untracked_messages",
        "counter",
        "{message}",
        "Messages delivered without a usable stamp: none (missing) or one that failed to decode or broke "
        "a limit (malformed).",
        _untracked,
    ),
    _counter(
        "cutwatch.agent.stamps.degraded",
        "{stamp}",
        "Stamps cut short to fit the size limit.",
        "stamps_degraded",
    ),
    _counter(
        "cutwatch.agent.clock_entries.unresolved",
        "{entry}",
        "Clock entries of received stamps skipped because their process was not known yet.",
        "unresolved_entries",
    ),
    _counter(
        "cutwatch.agent.clock_entries.refused",
        "{entry}",
        "Processes not added to the vector clock because it holds max_clock_entries.",
        "clock_entries_refused",
    ),
    _counter(
        "cutwatch.agent.internal_errors",
        "{error}",
        "Failures inside cutwatch, caught before the application saw them.",
        "internal_errors",
    ),
    Metric(
        "cutwatch.agent.snapshots",
        "counter",
        "{snapshot}",
        "Local snapshots: taken with the application state, taken without it (an atomic() block held "
        "the snapshot lock too long), or skipped.",
        _snapshots,
    ),
    _counter(
        "cutwatch.agent.state_errors",
        "{error}",
        "State providers that raised, returned non-JSON or too much.",
        "state_errors",
    ),
    _counter(
        "cutwatch.agent.requests.refused",
        "{request}",
        "Requests not run because their caller gave them up and a snapshot fenced them.",
        "requests_refused",
    ),
    _counter(
        "cutwatch.agent.changes.untracked",
        "{change}",
        "State changes no cut can place (made by messages without a usable stamp).",
        "untracked_changes",
    ),
    _counter(
        "cutwatch.agent.changes.recorded",
        "{change}",
        "State changes recorded for lattice predicates.",
        "changes_recorded",
    ),
    _counter(
        "cutwatch.agent.changes.dropped",
        "{change}",
        "Recorded state changes dropped because the buffer was full between two local snapshots.",
        "changes_dropped",
    ),
    _counter(
        "cutwatch.agent.calls.queued",
        "{call}",
        "Calls that reached a server whose workers were all busy.",
        "calls_queued",
    ),
    _counter(
        "cutwatch.agent.calls.dropped",
        "{call}",
        "Queued calls no longer listed before a worker took them (cancelled, or past the bound).",
        "queued_calls_dropped",
    ),
    _counter(
        "cutwatch.agent.streams.closed", "{stream}", "Ends of streaming calls closed.", "stream_ends_closed"
    ),
    _counter(
        "cutwatch.agent.event_log.dropped",
        "{event}",
        "Events the event log dropped because its queue was full.",
        "event_log_dropped",
    ),
    Metric(
        "cutwatch.agent.collector.events",
        "counter",
        "{event}",
        "Snapshot events sent to the collector, or dropped because the queue to it was full.",
        _collector_events,
    ),
    Metric(
        "cutwatch.agent.collector.queue.events",
        "updowncounter",
        "{event}",
        "Snapshot events waiting for the collector.",
        lambda stats: [(stats.collector_events_queued, {})],
    ),
    Metric(
        "cutwatch.agent.collector.queue.size",
        "updowncounter",
        "By",
        "Approximate bytes the events waiting for the collector hold.",
        lambda stats: [(stats.collector_queue_bytes, {})],
    ),
    Metric(
        "cutwatch.agent.collector.connections",
        "updowncounter",
        "{connection}",
        "Control streams to the collector that are up (1 per connected agent).",
        lambda stats: [(int(stats.collector_connected), {})],
    ),
)


def _make(meter: Meter) -> Observed[Agent, AgentStats]:
    return Observed(
        meter, AGENT_METRICS, lambda agent: agent.stats(), lambda agent: {"cutwatch.service": agent.service}
    )


def agent_metrics(provider: MeterProvider | None) -> Observed[Agent, AgentStats]:
    """The agents' instruments on ``provider`` (``None``: the global one)."""
    return per_provider(provider, "agent", _make)


def observe(agent: Agent, provider: MeterProvider | None) -> None:
    """Read ``agent`` from now on; a metrics problem never stops an agent from starting."""
    try:
        agent_metrics(provider).add(agent)
    except Exception:
        _LOG.warning("cutwatch metrics are off for %s", agent.process_id, exc_info=True)


def forget(agent: Agent, provider: MeterProvider | None) -> None:
    """Read ``agent`` no more (it closed); its final counts stay in its service's totals."""
    try:
        agent_metrics(provider).remove(agent)
    except Exception:
        _LOG.debug("removing %s from the metrics failed", agent.process_id, exc_info=True)
