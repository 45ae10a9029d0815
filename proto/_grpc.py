"""gRPC's types as the type checker and the error paths of the agent's and collector's edges need them.

The typing stubs (types-grpcio) declare the interceptor bases generic while the runtime classes
are not subscriptable, so the subclasses name them through these aliases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

__all__ = [
    "AioServerInterceptorBase",
    "AioStreamStreamClientBase",
    "AioStreamUnaryClientBase",
    "AioUnaryStreamClientBase",
    "AioUnaryUnaryClientBase",
    "ServerInterceptorBase",
    "StreamStreamClientBase",
    "StreamUnaryClientBase",
    "UnaryStreamClientBase",
    "UnaryUnaryClientBase",
    "rpc_error_parts",
]

if TYPE_CHECKING:
    ServerInterceptorBase = grpc.ServerInterceptor[Any, Any]
    UnaryUnaryClientBase = grpc.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamClientBase = grpc.UnaryStreamClientInterceptor[Any, Any]
    StreamUnaryClientBase = grpc.StreamUnaryClientInterceptor[Any, Any]
    StreamStreamClientBase = grpc.StreamStreamClientInterceptor[Any, Any]
    AioServerInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    AioUnaryUnaryClientBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    AioUnaryStreamClientBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    AioStreamUnaryClientBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    AioStreamStreamClientBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    ServerInterceptorBase = grpc.ServerInterceptor
    UnaryUnaryClientBase = grpc.UnaryUnaryClientInterceptor
    UnaryStreamClientBase = grpc.UnaryStreamClientInterceptor
    StreamUnaryClientBase = grpc.StreamUnaryClientInterceptor
    StreamStreamClientBase = grpc.StreamStreamClientInterceptor
    AioServerInterceptorBase = grpc.aio.ServerInterceptor
    AioUnaryUnaryClientBase = grpc.aio.UnaryUnaryClientInterceptor
    AioUnaryStreamClientBase = grpc.aio.UnaryStreamClientInterceptor
    AioStreamUnaryClientBase = grpc.aio.StreamUnaryClientInterceptor
    AioStreamStreamClientBase = grpc.aio.StreamStreamClientInterceptor


def rpc_error_parts(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """The status code and details of a failed call (gRPC's errors are calls too; the stubs do not say so)."""
    code: Any = getattr(exc, "code", lambda: None)()
    details: Any = getattr(exc, "details", lambda: None)()
    return (code if isinstance(code, grpc.StatusCode) else None), str(details or "")
