"""A four-kind echo service over real gRPC, for tests and benchmarks.

Payloads are raw bytes (identity serialisers), so no generated code is
needed. ``Echo`` servers may forward each call to a next hop, which is how
chains A -> B -> C are built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "cutwatch.test.Echo"
UNARY_UNARY = f"/{SERVICE}/UnaryUnary"
UNARY_STREAM = f"/{SERVICE}/UnaryStream"
STREAM_UNARY = f"/{SERVICE}/StreamUnary"
STREAM_STREAM = f"/{SERVICE}/StreamStream"
APP_KEY = "x-app-token"
APP_TRAILER = "x-app-trailer"


def _identity(data: bytes) -> bytes:
    return data


class EchoServicer:
    """Echoes; records the metadata it saw; optionally forwards to ``next_hop``."""

    def __init__(self, next_hop: Callable[[bytes], bytes] | None = None) -> None:
        self.next_hop = next_hop
        self.seen_metadata: list[dict[str, Any]] = []
        self.on_call: Callable[[], None] | None = None

    def _record(self, context: grpc.ServicerContext) -> None:
        self.seen_metadata.append(dict(context.invocation_metadata()))
        if self.on_call is not None:
            self.on_call()
        context.set_trailing_metadata(((APP_TRAILER, "kept"),))

    def _forward(self, data: bytes) -> bytes:
        return self.next_hop(data) if self.next_hop is not None else data

    def unary_unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        if request == b"abort":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to abort")
        return self._forward(request)

    def unary_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        for _ in range(3):
            yield self._forward(request)

    def stream_unary(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._record(context)
        return b"".join(self._forward(r) for r in requests)

    def stream_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        for request in requests:
            yield self._forward(request)


def generic_handler(servicer: Any) -> grpc.GenericRpcHandler:
    kw = {"request_deserializer": _identity, "response_serializer": _identity}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(servicer.unary_unary, **kw),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(servicer.unary_stream, **kw),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(servicer.stream_unary, **kw),
            "StreamStream": grpc.stream_stream_rpc_method_handler(servicer.stream_stream, **kw),
        },
    )


def start_server(
    servicer: Any, interceptors: list[Any] | None = None, workers: int = 8
) -> tuple[grpc.Server, str]:
    """A started sync server on 127.0.0.1 and a free port; returns (server, address)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=interceptors or [])
    server.add_generic_rpc_handlers((generic_handler(servicer),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class EchoStub:
    """Callables for the four methods on a channel."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        kw = {"request_serializer": _identity, "response_deserializer": _identity}
        self.unary_unary = channel.unary_unary(UNARY_UNARY, **kw)
        self.unary_stream = channel.unary_stream(UNARY_STREAM, **kw)
        self.stream_unary = channel.stream_unary(STREAM_UNARY, **kw)
        self.stream_stream = channel.stream_stream(STREAM_STREAM, **kw)
