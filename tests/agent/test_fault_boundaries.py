"""A failure inside cutwatch never reaches the application's RPC: it is caught at the boundary and counted.

The agents' stamp codecs are made to raise on every encode and decode, which
breaks cutwatch at each of the four boundaries (client send and receive,
server receive and send), for every call kind, sync and aio. Every call
must still return the handler's answer, and every failure be counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aio_echo_service import AioEchoServicer, AioRig
from echo_service import EchoServicer, EchoStub

import cutwatch

TIMEOUT = 30.0
PAYLOADS = [b"a", b"bb"]


def break_codec(agent: cutwatch.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected failure inside cutwatch")

    codec = agent._core._clock._codec  # the stamp codec inside the agent's event core
    monkeypatch.setattr(codec, "encode", fail)
    monkeypatch.setattr(codec, "decode", fail)


def test_sync_calls_succeed_when_cutwatch_fails_inside(
    make_agent: Any, serve: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, server = make_agent("client"), make_agent("server")
    stub = EchoStub(open_channel(serve(EchoServicer(), server), client))

    def every_kind() -> list[Any]:
        return [
            stub.unary_unary(b"ping", timeout=TIMEOUT),
            list(stub.unary_stream(b"ping", timeout=TIMEOUT)),
            stub.stream_unary(iter(PAYLOADS), timeout=TIMEOUT),
            list(stub.stream_stream(iter(PAYLOADS), timeout=TIMEOUT)),
            stub.unary_unary.future(b"f", timeout=TIMEOUT).result(TIMEOUT),
        ]

    expected = every_kind()  # stamped round trips first
    assert client.stats().internal_errors == server.stats().internal_errors == 0
    break_codec(client, monkeypatch)
    break_codec(server, monkeypatch)
    assert every_kind() == expected
    client_errors, server_errors = client.stats().internal_errors, server.stats().internal_errors
    assert client_errors >= 5, "the client's send boundary did not count its failures"
    assert server_errors >= 5, "the server's send boundary did not count its failures"


def test_aio_calls_succeed_when_cutwatch_fails_inside(
    make_agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, server = make_agent("client"), make_agent("server")

    async def scenario() -> None:
        async with AioRig() as rig:
            stub = rig.stub(await rig.serve(AioEchoServicer(), server), client)

            async def requests() -> Any:
                for payload in PAYLOADS:
                    yield payload

            async def every_kind() -> list[Any]:
                return [
                    await stub.unary_unary(b"ping", timeout=TIMEOUT),
                    [r async for r in stub.unary_stream(b"ping", timeout=TIMEOUT)],
                    await stub.stream_unary(requests(), timeout=TIMEOUT),
                    [r async for r in stub.stream_stream(requests(), timeout=TIMEOUT)],
                ]

            expected = await every_kind()
            assert client.stats().internal_errors == server.stats().internal_errors == 0
            break_codec(client, monkeypatch)
            break_codec(server, monkeypatch)
            assert await every_kind() == expected

    asyncio.run(scenario())
    assert client.stats().internal_errors >= 4
    assert server.stats().internal_errors >= 4
