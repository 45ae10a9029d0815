"""The echo service of ``echo_service`` for grpc.aio, over real gRPC.

Same methods, payloads and metadata keys as the sync service, with async
handlers: coroutines for unary responses, async generators for response
streams, plus ``UnaryStreamWrite``, which streams with ``await
context.write()``. ``next_hop`` (async) forwards each payload, building
chains A -> B -> C; ``on_call`` (async) runs inside every handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from echo_service import APP_TRAILER, SERVICE, EchoStub

UNARY_STREAM_WRITE = f"/{SERVICE}/UnaryStreamWrite"


def _identity(data: bytes) -> bytes:
    return data


class AioEchoServicer:
    """Echoes; records the metadata it saw; optionally forwards to ``next_hop``."""

    def __init__(self, next_hop: Callable[[bytes], Awaitable[bytes]] | None = None) -> None:
        self.next_hop = next_hop
        self.seen_metadata: list[dict[str, Any]] = []
        self.on_call: Callable[[], Awaitable[None]] | None = None

    async def _record(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # list(): grpcio before 1.64 cannot turn aio Metadata into a dict directly
        self.seen_metadata.append(dict(list(context.invocation_metadata() or ())))
        if self.on_call is not None:
            await self.on_call()
        context.set_trailing_metadata(((APP_TRAILER, "kept"),))

    async def _forward(self, data: bytes) -> bytes:
        return await self.next_hop(data) if self.next_hop is not None else data

    async def unary_unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await self._record(context)
        if request == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to abort")
        return await self._forward(request)

    async def unary_stream(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        await self._record(context)
        for _ in range(3):
            yield await self._forward(request)

    async def unary_stream_write(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self._record(context)
        for _ in range(3):
            await context.write(await self._forward(request))

    async def stream_unary(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        await self._record(context)
        return b"".join([await self._forward(r) async for r in requests])

    async def stream_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        await self._record(context)
        async for request in requests:
            yield await self._forward(request)


def generic_handler(servicer: AioEchoServicer) -> grpc.GenericRpcHandler:
    kw = {"request_deserializer": _identity, "response_serializer": _identity}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(servicer.unary_unary, **kw),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(servicer.unary_stream, **kw),
            "UnaryStreamWrite": grpc.unary_stream_rpc_method_handler(servicer.unary_stream_write, **kw),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(servicer.stream_unary, **kw),
            "StreamStream": grpc.stream_stream_rpc_method_handler(servicer.stream_stream, **kw),
        },
    )


async def start_server(
    servicer: AioEchoServicer, interceptors: list[Any] | None = None
) -> tuple[grpc.aio.Server, str]:
    """A started aio server on 127.0.0.1 and a free port; returns (server, address)."""
    server = grpc.aio.server(interceptors=interceptors or None)
    server.add_generic_rpc_handlers((generic_handler(servicer),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


class AioEchoStub(EchoStub):
    """The four echo methods plus ``unary_stream_write`` on an aio channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.unary_stream_write = channel.unary_stream(
            UNARY_STREAM_WRITE, request_serializer=_identity, response_deserializer=_identity
        )


class AioRig:
    """Servers and channels of one asyncio test, all closed on exit, also on failure."""

    def __init__(self) -> None:
        self._servers: list[grpc.aio.Server] = []
        self._channels: list[grpc.aio.Channel] = []

    async def serve(self, servicer: AioEchoServicer, agent: Any = None) -> str:
        """Start ``servicer``, instrumented by ``agent`` when given; returns its address."""
        interceptors = [agent.aio_server_interceptor()] if agent is not None else None
        server, address = await start_server(servicer, interceptors)
        self._servers.append(server)
        return address

    def stub(self, address: str, agent: Any = None) -> AioEchoStub:
        """A stub on a new channel, instrumented by ``agent`` when given."""
        interceptors = agent.aio_client_interceptors() if agent is not None else None
        channel = grpc.aio.insecure_channel(address, interceptors=interceptors)
        self._channels.append(channel)
        return AioEchoStub(channel)

    async def __aenter__(self) -> AioRig:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for channel in self._channels:
            await channel.close()
        for server in self._servers:
            await server.stop(None)
