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
