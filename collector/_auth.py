"""The collector's gate: every call's bearer token is checked against its method's role.

The check runs in a server interceptor, before any handler and before the
request is even parsed, so a refused call writes nothing. The control stream
is the agents' method; everything else is for readers. A method this table
does not know is passed on, and gRPC answers it UNIMPLEMENTED.

The health service's ``Check`` is open to all: probes carry no token, and it
answers only SERVING or NOT_SERVING for the process and the collector's
service, no data. Its ``Watch`` holds a stream, which counts against the
server's bound on concurrent calls, so it is a reader's method.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from typing import Any

import grpc

from cutwatch.collector._health import HEALTH_WATCH
from cutwatch.proto import ServerInterceptorBase
from cutwatch.proto import collector_pb2 as pb
from cutwatch.security import AGENT_ROLE, AUTHORIZATION, BEARER, READER_ROLE, CollectorSecurity

__all__ = ["AuthInterceptor"]

_COLLECTOR = pb.DESCRIPTOR.services_by_name["Collector"]
_ROLES = {
    f"/{_COLLECTOR.full_name}/{method.name}": AGENT_ROLE if method.name == "Control" else READER_ROLE
    for method in _COLLECTOR.methods
} | {HEALTH_WATCH: READER_ROLE}
"""Every method of the service has a role: the control stream is the agents', the rest the readers'."""


def _matches(token: str, allowed: tuple[str, ...]) -> bool:
    # Compare with every allowed token, in constant time for each.
    found = False
    for candidate in allowed:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


class AuthInterceptor(ServerInterceptorBase):
    """Refuses calls without the token of their method's role, and counts them."""

    def __init__(self, security: CollectorSecurity) -> None:
        self._security = security
        self._lock = threading.Lock()
        self.unauthenticated = 0
        self.permission_denied = 0

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        role = _ROLES.get(handler_call_details.method)
        if handler is None or role is None:
            return handler
        refusal = self._refusal(role, handler_call_details.invocation_metadata)
        if refusal is None:
            return handler
        return _refusing(handler, *refusal)

    def _refusal(self, role: str, metadata: Any) -> tuple[grpc.StatusCode, str] | None:
        allowed = self._security.tokens(role)
        if not allowed:
            return None
        token = _bearer_token(metadata)
        if token is not None and _matches(token, allowed):
            return None
        other = AGENT_ROLE if role == READER_ROLE else READER_ROLE
        with self._lock:
            if token is not None and _matches(token, self._security.tokens(other)):
                self.permission_denied += 1
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this is a token for {other}s; {role} calls need {role} tokens",
                )
            self.unauthenticated += 1
        if token is None:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                f"this collector needs a {role} token (authorization: Bearer)",
            )
        return grpc.StatusCode.UNAUTHENTICATED, f"the {role} token is not one this collector accepts"


def _bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value.startswith(BEARER):
            return value[len(BEARER) :]
    return None


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that only aborts; requests stay unparsed bytes."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
