"""The agent's counters as OpenTelemetry metrics, over real gRPC, read with the SDK's in-memory reader."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable

import grpc
import pytest
from echo_service import EchoServicer, EchoStub
from otel_metrics import Metrics

import cutwatch
from cutwatch.agent._metrics import AGENT_METRICS
from cutwatch.integrations._metrics import Metric, Observed

TIMEOUT = 30.0
FRONT = {"cutwatch.service": "front"}
REQUEST, RESPONSE = {"cutwatch.message.type": "request"}, {"cutwatch.message.type": "response"}
SENT, RECEIVED = {"cutwatch.message.direction": "sent"}, {"cutwatch.message.direction": "received"}


def test_calls_show_as_messages_by_type_and_direction_with_units(
    metrics: Metrics,
    make_agent: Callable[..., cutwatch.Agent],
    serve: Callable[..., str],
    open_channel: Callable[..., grpc.Channel],
) -> None:
    front = make_agent("front", meter_provider=metrics.provider)
    back = make_agent("back", meter_provider=metrics.provider)
    stub = EchoStub(open_channel(serve(EchoServicer(), back), front))
    for _ in range(3):
        assert stub.unary_unary(b"ping", timeout=TIMEOUT) == b"ping"
    EchoStub(open_channel(serve(EchoServicer(), back))).unary_unary(b"bare", timeout=TIMEOUT)  # no stamp

    got = metrics.collect()
    messages = "cutwatch.agent.messages"
    at_back = {"cutwatch.service": "back"}
    assert got.value(messages, {**FRONT, **REQUEST, **SENT}) == 3
    assert got.value(messages, {**FRONT, **RESPONSE, **RECEIVED}) == 3
    assert got.value(messages, {**FRONT, **REQUEST, **RECEIVED}) == 0
    assert got.value(messages, {**at_back, **REQUEST, **RECEIVED}) == 4
    assert got.value(messages, {**at_back, **RESPONSE, **SENT}) == 4
    untracked = {**at_back, "cutwatch.untracked.reason": "missing"}
    assert got.value("cutwatch.agent.untracked_messages", untracked) == 1
    assert got.units[messages] == "{message}"
    assert got.units["cutwatch.agent.collector.queue.size"] == "By"
    # Every instrument reports, and only ours: the service is the one attribute they all carry.
    assert set(got.points) == {metric.name for metric in AGENT_METRICS}
    assert all(
        dict(attrs)["cutwatch.service"] in ("front", "back") for p in got.points.values() for attrs in p
    )


def test_names_and_units_follow_opentelemetry_conventions() -> None:
    names = [metric.name for metric in AGENT_METRICS]
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"cutwatch\.agent(\.[a-z][a-z0-9_]*)+", name), name
        assert len(name) <= 63 and not name.endswith((".total", ".count", "_total"))
        # A name is a metric or a namespace, never both.
        assert not any(other.startswith(name + ".") for other in names), name
    for metric in AGENT_METRICS:
        assert metric.unit in ("By", "s") or re.fullmatch(r"\{[a-z]+\}", metric.unit), metric


def test_several_agents_of_a_service_add_up_and_a_closed_one_is_not_read_nor_kept_alive(
    metrics: Metrics, serve: Callable[..., str], open_channel: Callable[..., grpc.Channel]
) -> None:
    back = cutwatch.Agent("back", meter_provider=metrics.provider).start()
    first = cutwatch.Agent("front", meter_provider=metrics.provider).start()
    second = cutwatch.Agent("front", meter_provider=metrics.provider).start()
    try:
        address = serve(EchoServicer(), back)
        EchoStub(open_channel(address, first)).unary_unary(b"1", timeout=TIMEOUT)
        EchoStub(open_channel(address, second)).unary_unary(b"2", timeout=TIMEOUT)
        sent = {**FRONT, **REQUEST, **SENT}
        assert metrics.collect().value("cutwatch.agent.messages", sent) == 2

        second.close()
        # The counter never runs backwards while the service has an agent left...
        assert metrics.collect().value("cutwatch.agent.messages", sent) == 2
        EchoStub(open_channel(address, first)).unary_unary(b"3", timeout=TIMEOUT)
        assert metrics.collect().value("cutwatch.agent.messages", sent) == 3

        first.close()
        # ...and once it has none, its series are no longer reported.
        got = metrics.collect()
        assert got.find("cutwatch.agent.messages", sent) is None
        assert not any(
            dict(attrs).get("cutwatch.service") == "front" for p in got.points.values() for attrs in p
        )
        back_sent = {"cutwatch.service": "back", **REQUEST, **SENT}
        assert got.value("cutwatch.agent.messages", back_sent) == 0  # back only received
    finally:
        for agent in (first, second, back):
            agent.close()
    # The instruments hold no closed agent, nor one dropped without close().
    dropped = cutwatch.Agent("front", meter_provider=metrics.provider).start()
    refs = [weakref.ref(a) for a in (first, second, dropped)]
    del first, second, dropped
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    metrics.collect()  # and collecting after they are gone is fine


def test_a_collection_reads_each_agent_once_for_all_its_instruments(
    metrics: Metrics, make_agent: Callable[..., cutwatch.Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = [make_agent(name, meter_provider=metrics.provider) for name in ("front", "front", "back")]
    reads = {id(agent): 0 for agent in agents}
    for agent in agents:

        def counted(
            agent: cutwatch.Agent = agent, stats: Callable[[], cutwatch.AgentStats] = agent.stats
        ) -> cutwatch.AgentStats:
            reads[id(agent)] += 1
            return stats()

        monkeypatch.setattr(agent, "stats", counted)
    got = metrics.collect()
    assert set(got.points) == {metric.name for metric in AGENT_METRICS}
    assert list(reads.values()) == [1, 1, 1]  # not once per instrument
    metrics.collect()
    assert list(reads.values()) == [2, 2, 2]


class Source:
    """A stand-in for an agent: a count that grows on every read, and a hook run by the next read."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.reads = 0
        self.on_read: Callable[[], object] = lambda: None

    def read(self) -> int:
        self.reads += 1
        hook, self.on_read = self.on_read, lambda: None
        hook()
        self.count += 1
        return self.count


SOURCE_METRICS: tuple[Metric[int], ...] = (
    Metric("test.count", "counter", "{thing}", "The count.", lambda n: [(n, {})]),
    Metric("test.double", "counter", "{thing}", "Twice the count.", lambda n: [(2 * n, {})]),
)


def _observed(metrics: Metrics) -> Observed[Source, int]:
    return Observed(metrics.provider.get_meter("test"), SOURCE_METRICS, Source.read, lambda _: FRONT)


def test_one_collection_shows_every_instrument_at_the_same_reading(metrics: Metrics) -> None:
    observed = _observed(metrics)
    source = Source(0)
    observed.add(source)
    for reads in (1, 2, 3):
        got = metrics.collect()
        assert source.reads == reads
        assert got.value("test.count", FRONT) == reads
        assert got.value("test.double", FRONT) == 2 * reads  # the same reading, not the next one


def test_a_source_removed_while_a_collection_reads_it_is_counted_once(metrics: Metrics) -> None:
    observed = _observed(metrics)
    closing, staying = Source(10), Source(100)
    observed.add(closing)
    observed.add(staying)
    # It is removed while the collection reads it: after the collection took the list of sources, before
    # it added the removed sources' final counts. Removing reads it once more, for those (11).
    closing.on_read = lambda: observed.remove(closing)
    first = metrics.collect()
    assert closing.reads == 2
    assert first.value("test.count", FRONT) == 11 + 101  # counted once: retired, not live as well
    second = metrics.collect()
    assert second.value("test.count", FRONT) == 11 + 102  # never backwards
    assert second.value("test.double", FRONT) == 2 * (11 + 102)
    assert closing.reads == 2  # and no longer read
    observed.remove(staying)
    assert metrics.collect().find("test.count", FRONT) is None  # no source of FRONT left


def test_a_failing_read_never_reaches_the_application(
    metrics: Metrics,
    make_agent: Callable[..., cutwatch.Agent],
    serve: Callable[..., str],
    open_channel: Callable[..., grpc.Channel],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    front = make_agent("front", meter_provider=metrics.provider)
    healthy = make_agent("back", meter_provider=metrics.provider)

    def broken() -> cutwatch.AgentStats:
        raise RuntimeError("stats are broken")

    monkeypatch.setattr(front, "stats", broken)
    stub = EchoStub(open_channel(serve(EchoServicer(), healthy), front))
    assert stub.unary_unary(b"ping", timeout=TIMEOUT) == b"ping"
    got = metrics.collect()  # the reader goes on, with what it can read
    back_received = {"cutwatch.service": "back", **REQUEST, **RECEIVED}
    assert got.value("cutwatch.agent.messages", back_received) == 1
    assert "reading" in caplog.text and "stats are broken" in caplog.text
    assert stub.unary_unary(b"again", timeout=TIMEOUT) == b"again"


def test_an_agent_without_a_meter_provider_uses_the_global_one_and_starts() -> None:
    with cutwatch.Agent("plain") as agent:  # the API's global provider: a no-op until an SDK is set
        assert agent.stats().internal_errors == 0


GLOBAL_PROVIDER = textwrap.dedent(
    """
    import json
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    import cutwatch

    early = cutwatch.Agent("early").start()
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    late = cutwatch.Agent("late").start()
    data = reader.get_metrics_data()
    print(json.dumps(sorted({
        point.attributes["cutwatch.service"]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    })))
    early.close()
    late.close()
    """
)


def test_agents_report_to_the_global_provider_whether_started_before_or_after_it_was_set() -> None:
    # In a fresh interpreter: the global provider can be set only once per process.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["early", "late"]
    assert "created already" not in result.stderr  # no clash of instruments on the SDK's provider
