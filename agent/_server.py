"""Sync gRPC server interceptor: a task and a clock merge per inbound call.

Each method handler is wrapped once and cached, not per call; the wrapper
reads the request stamp from ``context.invocation_metadata()`` and adds the
response stamp to whatever trailing metadata the application set, at the
moment the response (or the end of the response stream, or an abort) goes
out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from cutwatch.agent._grpc_bases import ServerInterceptorBase
from cutwatch.agent._metadata import with_stamp

if TYPE_CHECKING:
    from cutwatch.agent._agent import Agent, Inbound

_MAX_CACHED_HANDLERS = 4096


def add_response_stamp(agent: Agent, context: Any, inbound: Inbound | None) -> None:
    """Append the response stamp to the trailing metadata the app has set."""
    if inbound is None:
        return
    stamp = agent._end_inbound(inbound)
    if stamp is None:
        return
    try:
        context.set_trailing_metadata(with_stamp(context.trailing_metadata(), stamp))
    except Exception:
        agent._internal_error("attaching the response stamp")


class _HandlerWrapper:
    """Builds stamped versions of one handler's behaviour."""

    def __init__(self, agent: Agent, pool: str, method: str) -> None:
        self.agent = agent
        self.pool = pool
        self.method = method

    def unary_response(self, behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        agent, pool, method = self.agent, self.pool, self.method

        def handle(request_or_iterator: Any, context: Any) -> Any:
            inbound = agent._begin_inbound(method, context.invocation_metadata(), pool, request_or_iterator)
            try:
                return behavior(request_or_iterator, context)
            finally:
                add_response_stamp(agent, context, inbound)

        return handle

    def stream_response(
        self, behavior: Callable[[Any, Any], Iterator[Any]]
    ) -> Callable[[Any, Any], Iterator[Any]]:
        agent, pool, method = self.agent, self.pool, self.method

        def handle(request_or_iterator: Any, context: Any) -> Iterator[Any]:
            inbound = agent._begin_inbound(method, context.invocation_metadata(), pool, request_or_iterator)
            try:
                yield from behavior(request_or_iterator, context)
            finally:
                add_response_stamp(agent, context, inbound)

        return handle


_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _replace_behavior(handler: Any, kind: str, behavior: Any) -> Any:
    if hasattr(handler, "_replace"):
        return handler._replace(**{kind: behavior})
    return _FACTORIES[kind](
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def wrap_handler(agent: Agent, pool: str, method: str, handler: Any, wrapper: Any = None) -> Any:
    """A copy of ``handler`` whose behaviour is stamped."""
    wrapper = wrapper or _HandlerWrapper(agent, pool, method)
    for kind in ("unary_unary", "stream_unary"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return _replace_behavior(handler, kind, wrapper.unary_response(behavior))
    for kind in ("unary_stream", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return _replace_behavior(handler, kind, wrapper.stream_response(behavior))
    return handler


class HandlerCache:
    """Wrapped handlers by (method, original handler), bounded."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any, build: Callable[[], Any]) -> Any:
        key = (method, id(handler))
        entry = self._cache.get(key)
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = build()
        if len(self._cache) >= _MAX_CACHED_HANDLERS:
            self._cache.clear()
        self._cache[key] = (handler, wrapped)
        return wrapped


class ServerInterceptor(ServerInterceptorBase):
    """Created by ``Agent.server_interceptor()``."""

    def __init__(self, agent: Agent, pool: str) -> None:
        self._agent = agent
        self._pool = pool
        self._handlers = HandlerCache()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        try:
            return self._handlers.get(  # type: ignore[no-any-return]
                method, handler, lambda: wrap_handler(self._agent, self._pool, method, handler)
            )
        except Exception:
            self._agent._internal_error("wrapping a method handler")
            return handler
