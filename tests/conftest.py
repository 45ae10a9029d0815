"""Shared fixtures: agents, real echo servers and channels, all closed on teardown.

The tests folder goes on ``sys.path`` so ``import echo_service`` works under
pytest's importlib import mode.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings

# Property tests check behaviour, never speed: on a loaded 2-core machine an
# example may take longer than hypothesis's default deadline.
settings.register_profile(
    "cutwatch", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("cutwatch")

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import echo_service  # noqa: E402
from otel_metrics import Metrics  # noqa: E402

import cutwatch  # noqa: E402
from cutwatch._environment import VARIABLES  # noqa: E402

AgentFactory = Callable[..., cutwatch.Agent]
ServerFactory = Callable[..., str]
ChannelFactory = Callable[..., grpc.Channel]


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the variables cutwatch reads is set: a test sees only what it sets itself."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """An OpenTelemetry SDK meter provider of the test's own (never the global one) and its reader."""
    m = Metrics()
    try:
        yield m
    finally:
        m.shutdown()


@pytest.fixture
def make_agent() -> Iterator[AgentFactory]:
    """``make_agent(service)``: a started agent, closed at teardown."""
    agents: list[cutwatch.Agent] = []

    def make(service: str, **kwargs: Any) -> cutwatch.Agent:
        agent = cutwatch.Agent(service, **kwargs).start()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close()


@pytest.fixture
def serve() -> Iterator[ServerFactory]:
    """``serve(servicer, agent=None)``: a sync echo server, instrumented when given an agent."""
    servers: list[grpc.Server] = []

    def start(servicer: Any, agent: cutwatch.Agent | None = None, workers: int = 8) -> str:
        interceptors = [agent.server_interceptor()] if agent is not None else []
        server, address = echo_service.start_server(servicer, interceptors, workers=workers)
        servers.append(server)
        return address

    yield start
    for server in servers:
        server.stop(grace=None).wait(10)


@pytest.fixture
def open_channel() -> Iterator[ChannelFactory]:
    """``open_channel(address, agent=None)``: a sync channel, intercepted when given an agent."""
    channels: list[grpc.Channel] = []

    def open_(address: str, agent: cutwatch.Agent | None = None) -> grpc.Channel:
        raw = grpc.insecure_channel(address)
        channels.append(raw)
        if agent is None:
            return raw
        return grpc.intercept_channel(raw, agent.client_interceptor())

    yield open_
    for channel in channels:
        channel.close()
