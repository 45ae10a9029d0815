"""``cutwatch.agent.instrument()``: every gRPC server and channel under cutwatch, and nothing twice.

These tests patch the ``grpc`` module of this very process; the fixture puts
every factory back (and checks it did) whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from echo_service import UNARY_UNARY, EchoServicer, generic_handler
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, GrpcInstrumentorServer

import cutwatch
from cutwatch._own import own_grpc
from cutwatch.agent import _instrument, instrument, uninstrument
from cutwatch.agent._instrument import _UnlessStamped, instrumented_agent
from cutwatch.agent.instrumentation import CutwatchInstrumentor
from cutwatch.collector import CollectorClient, CollectorServer

TIMEOUT = 30.0
FACTORIES = (
    (grpc, "server"),
    (grpc, "insecure_channel"),
    (grpc, "secure_channel"),
    (grpc.aio, "server"),
    (grpc.aio, "insecure_channel"),
    (grpc.aio, "secure_channel"),
)


def originals() -> list[Any]:
    return [getattr(module, name) for module, name in FACTORIES]


@pytest.fixture(autouse=True)
def restored(clean_environment: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only ``CUTWATCH_SERVICE`` set (tests/conftest.py clears the rest); every factory restored."""
    monkeypatch.setenv("CUTWATCH_SERVICE", "zero-code")
    before = originals()
    try:
        yield
    finally:
        uninstrument()
        assert originals() == before, "uninstrument() left a factory patched"


class Rig:
    """Servers and channels made through the (patched) factories, closed at the end."""

    def __init__(self) -> None:
        self.servers: list[grpc.Server] = []
        self.channels: list[grpc.Channel] = []

    def serve(self, *, interceptors: Iterable[Any] | None = None, positional: bool = False) -> str:
        pool = futures.ThreadPoolExecutor(max_workers=4)
        if positional:
            server = grpc.server(pool, None, interceptors)
        else:
            server = grpc.server(pool, interceptors=interceptors)
        server.add_generic_rpc_handlers((generic_handler(EchoServicer()),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.servers.append(server)
        return f"127.0.0.1:{port}"

    def channel(self, address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        self.channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in self.servers:
            server.stop(None).wait(10)


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    try:
        yield made
    finally:
        made.close()


def echo(channel: grpc.Channel, payload: bytes = b"hi") -> bytes:
    answer: bytes = channel.unary_unary(UNARY_UNARY)(payload, timeout=TIMEOUT)
    return answer


def test_instrument_patches_every_factory_once_and_uninstrument_restores_them() -> None:
    before = originals()
    instrument()
    patched = originals()
    assert all(a is not b for a, b in zip(before, patched, strict=True))
    instrument()
    assert originals() == patched, "a second instrument() patched again"
    assert instrumented_agent() is None, "the agent is built with the first server or channel"
    uninstrument()
    assert originals() == before
    uninstrument()  # harmless when not instrumented


def test_sync_servers_and_channels_carry_stamps(rig: Rig) -> None:
    instrument()
    address = rig.serve()
    agent = instrumented_agent()
    assert agent is not None and agent.service == "zero-code"
    assert echo(rig.channel(address)) == b"hi"
    stats = agent.stats()
    assert (stats.requests_sent, stats.requests_received) == (1, 1)
    assert (stats.responses_sent, stats.responses_received) == (1, 1)
    assert stats.untracked_missing == 0
    assert agent.clock[agent.process_id] == 4


def test_interceptors_passed_by_position_are_kept(rig: Rig) -> None:
    explicit = cutwatch.Agent("explicit").start()
    try:
        instrument()
        address = rig.serve(interceptors=[explicit.server_interceptor()], positional=True)
        assert echo(rig.channel(address)) == b"hi"
        assert explicit.stats().requests_received == 1
    finally:
        explicit.close()


def test_what_the_application_instruments_itself_is_not_stamped_twice(rig: Rig) -> None:
    explicit = cutwatch.Agent("explicit").start()
    try:
        instrument()
        address = rig.serve(interceptors=[explicit.server_interceptor()])
        assert instrumented_agent() is None, "a server with cutwatch's interceptor needs no agent"
        channel = grpc.intercept_channel(rig.channel(address), explicit.client_interceptor())
        assert echo(channel) == b"hi"
        ours = instrumented_agent()
        assert ours is not None
        assert ours.stats().requests_sent == 0, "the instrumented channel let the stamped call through"
        stats = explicit.stats()
        assert (stats.requests_sent, stats.requests_received, stats.responses_received) == (1, 1, 1)
        assert stats.untracked_missing == 0
    finally:
        explicit.close()


def test_aio_servers_and_channels_carry_stamps_and_explicit_ones_are_left_alone() -> None:
    instrument()

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((generic_handler(EchoServicer()),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            agent = instrumented_agent()
            assert agent is not None
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await channel.unary_unary(UNARY_UNARY)(b"hi", timeout=TIMEOUT) == b"hi"
            stats = agent.stats()
            assert (stats.requests_sent, stats.requests_received, stats.responses_received) == (1, 1, 1)
            explicit = cutwatch.Agent("explicit").start()
            try:
                interceptors = explicit.aio_client_interceptors()
                async with grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}", interceptors=interceptors
                ) as channel:
                    assert await channel.unary_unary(UNARY_UNARY)(b"hi", timeout=TIMEOUT) == b"hi"
                assert agent.stats().requests_sent == 1, "the explicit channel got a second stamp"
                assert explicit.stats().requests_sent == 1
            finally:
                explicit.close()
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_an_agent_that_cannot_be_built_is_reported_once_and_grpc_works(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("CUTWATCH_SERVICE")
    instrument()
    with caplog.at_level(logging.WARNING, logger="cutwatch.agent.instrument"):
        address = rig.serve()
        assert echo(rig.channel(address)) == b"hi"
        assert echo(rig.channel(address)) == b"hi"
    warnings = [r.getMessage() for r in caplog.records if r.name == "cutwatch.agent.instrument"]
    assert len(warnings) == 1 and "CUTWATCH_SERVICE" in warnings[0], warnings
    assert instrumented_agent() is None


def test_a_given_agent_is_used_and_not_closed() -> None:
    given = cutwatch.Agent("given").start()
    try:
        with pytest.raises(TypeError):
            instrument(given, service="other")
        with pytest.raises(TypeError, match="no_such"):
            instrument(no_such=1)
        instrument(given)
        channel = grpc.insecure_channel("127.0.0.1:1")
        channel.close()
        assert instrumented_agent() is given
        uninstrument()
        given.register_state("still", lambda: 1)  # not closed: works as before
        assert not given._closed
    finally:
        given.close()


def test_uninstrument_closes_the_agent_it_built(rig: Rig) -> None:
    instrument()
    rig.serve()
    built = instrumented_agent()
    assert built is not None
    uninstrument()
    assert built._closed
    assert instrumented_agent() is None


def test_cutwatchs_own_connections_are_not_instrumented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instrument()
    with own_grpc():
        grpc.insecure_channel("127.0.0.1:1").close()
    assert instrumented_agent() is None
    collector = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0").start()
    try:
        with CollectorClient(collector.address) as client:
            assert client.status()["agents"] == []
        assert instrumented_agent() is None, "the collector's server or the reader built an agent"
        # An agent built by the instrumentor registers over a control channel it does not stamp.
        monkeypatch.setenv("CUTWATCH_COLLECTOR", collector.address)
        grpc.insecure_channel("127.0.0.1:1").close()
        agent = instrumented_agent()
        assert agent is not None and agent.wait_registered(TIMEOUT)
        assert agent.stats().requests_sent == 0
    finally:
        uninstrument()
        collector.stop()


def test_cutwatch_goes_beneath_opentelemetry_on_sync_channels_in_either_order(rig: Rig) -> None:
    """OpenTelemetry's client interceptor stays outside cutwatch's (integrations/opentelemetry.py)."""
    address = rig.serve()
    for cutwatch_first in (True, False):
        otel = GrpcInstrumentorClient()
        if cutwatch_first:
            instrument()
            otel.instrument()
        else:
            otel.instrument()
            instrument()
        try:
            channel = rig.channel(address)
            assert type(channel._interceptor).__module__.startswith("opentelemetry")  # type: ignore[attr-defined]
            assert isinstance(channel._channel._interceptor, _UnlessStamped)  # type: ignore[attr-defined]
            assert echo(channel) == b"hi"
        finally:
            if cutwatch_first:
                uninstrument()
                otel.uninstrument()
            else:
                otel.uninstrument()
                uninstrument()


def test_servers_coexist_with_opentelemetry_server_instrumentation(rig: Rig) -> None:
    otel = GrpcInstrumentorServer()
    otel.instrument()
    try:
        instrument()
        address = rig.serve()
        agent = instrumented_agent()
        assert agent is not None
        assert echo(rig.channel(address)) == b"hi"
        assert agent.stats().requests_received == 1
    finally:
        uninstrument()
        otel.uninstrument()


def test_the_opentelemetry_instrumentor(rig: Rig) -> None:
    instrumentor = CutwatchInstrumentor()
    assert list(instrumentor.instrumentation_dependencies()) == ["grpcio >= 1.62"]
    instrumentor.instrument(service="via-otel", tracer_provider=None)
    try:
        rig.serve()
        agent = instrumented_agent()
        assert agent is not None and agent.service == "via-otel"
        patched = originals()
        instrument()  # cutwatch's own check (the instrumentor's base class stops a second instrument())
        assert originals() == patched, "a second instrument() patched again"
        assert instrumented_agent() is agent, "a second instrument() replaced the instrumentation"
    finally:
        instrumentor.uninstrument()
    assert agent._closed


# ---------------------------------------------------------------------------
# The application's interceptors, given as an iterator, reach gRPC whole
# ---------------------------------------------------------------------------

CASES = ("the agent cannot be built", "cutwatch is there already", "the glue fails")


class Counting(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.calls += 1
        return continuation(handler_call_details)


class AioCounting(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.calls += 1
        return await continuation(handler_call_details)


class AioClientCounting(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        self.calls += 1
        return await continuation(client_call_details, request)


def arrange(case: str, monkeypatch: pytest.MonkeyPatch, adder: str) -> cutwatch.Agent | None:
    """Instrument so that cutwatch adds nothing to the call, for the reason ``case`` names;
    "cutwatch is there already" returns the application's own agent (to close)."""
    if case == "the agent cannot be built":
        monkeypatch.delenv("CUTWATCH_SERVICE")
    elif case == "the glue fails":

        def broken(*args: Any) -> list[Any]:
            raise RuntimeError("a bug in the glue")

        monkeypatch.setattr(_instrument, adder, broken)
    instrument()
    return cutwatch.Agent("explicit").start() if case == "cutwatch is there already" else None


@pytest.mark.parametrize("positional", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_a_generator_of_sync_server_interceptors_reaches_grpc_whole(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, case: str, positional: bool
) -> None:
    explicit = arrange(case, monkeypatch, "_sync_server_interceptors")
    counting = Counting()
    try:
        mine = [counting, *([explicit.server_interceptor()] if explicit is not None else [])]
        address = rig.serve(interceptors=(interceptor for interceptor in mine), positional=positional)
        assert echo(rig.channel(address)) == b"hi"
        assert counting.calls == 1, "the application's interceptor was lost"
        if explicit is not None:
            assert explicit.stats().requests_received == 1
    finally:
        if explicit is not None:
            explicit.close()


@pytest.mark.parametrize("case", CASES)
def test_a_generator_of_aio_server_interceptors_reaches_grpc_whole(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    explicit = arrange(case, monkeypatch, "_aio_server_interceptors")
    counting = AioCounting()
    mine = [counting, *([explicit.aio_server_interceptor()] if explicit is not None else [])]

    async def main() -> None:
        server = grpc.aio.server(interceptors=(interceptor for interceptor in mine))
        server.add_generic_rpc_handlers((generic_handler(EchoServicer()),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await channel.unary_unary(UNARY_UNARY)(b"hi", timeout=TIMEOUT) == b"hi"
        finally:
            await server.stop(None)

    try:
        asyncio.run(main())
        assert counting.calls == 1, "the application's interceptor was lost"
        if explicit is not None:
            assert explicit.stats().requests_received == 1
    finally:
        if explicit is not None:
            explicit.close()


@pytest.mark.parametrize("positional", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_a_generator_of_aio_channel_interceptors_reaches_grpc_whole(
    monkeypatch: pytest.MonkeyPatch, case: str, positional: bool
) -> None:
    explicit = arrange(case, monkeypatch, "_aio_client_interceptors")
    counting = AioClientCounting()
    mine = [counting, *(explicit.aio_client_interceptors() if explicit is not None else [])]

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((generic_handler(EchoServicer()),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        given = (interceptor for interceptor in mine)
        address = f"127.0.0.1:{port}"
        try:
            if positional:
                channel = grpc.aio.insecure_channel(address, None, None, given)
            else:
                channel = grpc.aio.insecure_channel(address, interceptors=given)
            async with channel:
                assert await channel.unary_unary(UNARY_UNARY)(b"hi", timeout=TIMEOUT) == b"hi"
        finally:
            await server.stop(None)

    try:
        asyncio.run(main())
        assert counting.calls == 1, "the application's interceptor was lost"
        if explicit is not None:
            assert explicit.stats().requests_sent == 1
    finally:
        if explicit is not None:
            explicit.close()
