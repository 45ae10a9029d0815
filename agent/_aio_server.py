"""asyncio gRPC server interceptor; the sync one's sibling.

Behaviours may be coroutines, async generators, coroutines that write with
``context.write()``, or plain functions (grpc.aio runs those too); each is
wrapped in kind. ``context.abort()`` in grpc.aio sends the status at once,
so the handler sees a context proxy whose ``abort`` adds the response stamp
to the trailing metadata first.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import grpc.aio

from cutwatch.agent._calls import CountedWrites, counted_pulls_async, counted_sends_async, took
from cutwatch.agent._metadata import with_stamp
from cutwatch.agent._proxy import ObjectProxy
from cutwatch.agent._server import HandlerCache, _HandlerWrapper, add_response_stamp, stamp_key, wrap_handler
from cutwatch.core import Inbound, ProcessCore, Refused, StreamEnd
from cutwatch.proto import AioServerInterceptorBase


class _StampingContext(CountedWrites, ObjectProxy):
    """The servicer context, with aborts that carry the response stamp, and, for a streaming call,
    ``read()`` and ``write()`` that count the stream's messages (a write counts when it is called,
    so that one called inside an ``atomic()`` block goes with the change it carries)."""

    def __init__(
        self,
        context: Any,
        core: ProcessCore,
        inbound: Inbound | None,
        stream: StreamEnd | None = None,
        max_payload: int = 0,
    ) -> None:
        super().__init__(context)
        self._self_core = core
        self._self_inbound = inbound
        self._self_end = stream
        self._self_max_payload = max_payload

    async def read(self) -> Any:
        message = await self.__wrapped__.read()
        if self._self_end is not None and message is not grpc.aio.EOF:
            took(self._self_core, self._self_end, message, self._self_max_payload)
        return message

    def _self_trailing(self, trailing_metadata: Any) -> Any:
        base = trailing_metadata or self.__wrapped__.trailing_metadata()
        if self._self_inbound is None:
            return base
        stamp = self._self_core.end_handler(self._self_inbound, failed=True)
        return with_stamp(base, stamp, stamp_key(self._self_inbound)) if stamp is not None else base

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        await self.__wrapped__.abort(code, details, self._self_trailing(trailing_metadata))
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.__wrapped__.abort(
            status.code, status.details, self._self_trailing(status.trailing_metadata)
        )
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


class _TrailerRecordingContext(ObjectProxy):
    """The context grpc.aio gives plain-function handlers has no
    ``trailing_metadata()``: remember what the handler sets, for the stamp."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._self_trailing: Any = ()

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self.__wrapped__.set_trailing_metadata(trailing_metadata)
        self._self_trailing = trailing_metadata

    def trailing_metadata(self) -> Any:
        return self._self_trailing


def _with_trailing_metadata(context: Any) -> Any:
    return context if hasattr(context, "trailing_metadata") else _TrailerRecordingContext(context)


class _AioHandlerWrapper(_HandlerWrapper):
    async def _begin(
        self, context: Any, request: Any, streaming: bool = False
    ) -> tuple[Inbound | None, Any, StreamEnd | None]:
        """The request's receive event, the context the handler sees and, for a streaming call, the
        handler's stream end."""
        inbound = self.start(context, request, ends_at_deadline=True)
        if isinstance(inbound, Refused):
            await context.abort(grpc.StatusCode.ABORTED, inbound.reason)
            raise AssertionError("unreachable: abort raises")  # pragma: no cover
        stream = self.core.open_server_stream(inbound) if streaming and inbound is not None else None
        return inbound, _StampingContext(context, self.core, inbound, stream, self.max_payload), stream

    def _requests(self, requests: Any, stream: StreamEnd | None, request_stream: bool) -> Any:
        """The request iterator the handler sees: its messages counted as the handler takes them."""
        if stream is None or not request_stream or not hasattr(requests, "__aiter__"):
            return requests
        return counted_pulls_async(self.core, stream, requests, self.max_payload)

    def _end(self, context: Any, inbound: Inbound | None, stream: StreamEnd | None) -> None:
        add_response_stamp(self.core, context, inbound)
        if stream is not None:
            self.core.close_stream(stream)

    def unary_response(
        self, behavior: Callable[[Any, Any], Any], request_stream: bool
    ) -> Callable[[Any, Any], Any]:
        if not inspect.iscoroutinefunction(behavior):
            handle_sync = super().unary_response(behavior, request_stream)
            return lambda request, context: handle_sync(request, _with_trailing_metadata(context))

        async def handle(request_or_iterator: Any, context: Any) -> Any:
            inbound, proxied, stream = await self._begin(context, request_or_iterator, request_stream)
            try:
                return await behavior(self._requests(request_or_iterator, stream, request_stream), proxied)
            finally:
                self._end(context, inbound, stream)

        return handle

    def stream_response(
        self, behavior: Callable[[Any, Any], Any], request_stream: bool
    ) -> Callable[[Any, Any], Any]:
        core = self.core
        if inspect.isasyncgenfunction(behavior):

            async def handle_stream(request_or_iterator: Any, context: Any) -> AsyncIterator[Any]:
                inbound, proxied, stream = await self._begin(context, request_or_iterator, True)
                try:
                    responses = behavior(self._requests(request_or_iterator, stream, request_stream), proxied)
                    if stream is not None:
                        responses = counted_sends_async(core, stream, responses)
                    async for response in responses:
                        yield response
                finally:
                    self._end(context, inbound, stream)

            return handle_stream
        if inspect.iscoroutinefunction(behavior):  # writes with context.write()

            async def handle_writes(request_or_iterator: Any, context: Any) -> Any:
                inbound, proxied, stream = await self._begin(context, request_or_iterator, True)
                try:
                    return await behavior(
                        self._requests(request_or_iterator, stream, request_stream), proxied
                    )
                finally:
                    self._end(context, inbound, stream)

            return handle_writes
        stream_sync = super().stream_response(behavior, request_stream)
        return lambda request, context: stream_sync(request, _with_trailing_metadata(context))


class AioServerInterceptor(AioServerInterceptorBase):
    """Created by ``Agent.aio_server_interceptor()``."""

    def __init__(self, core: ProcessCore, pool: str, max_payload: int) -> None:
        self._core = core
        self._pool = pool
        self._max_payload = max_payload
        self._handlers = HandlerCache()

    # grpc.aio hands None for unknown methods; the stubs do not say so.
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        try:
            return self._handlers.get(  # type: ignore[no-any-return]
                method,
                handler,
                lambda: wrap_handler(
                    handler, _AioHandlerWrapper(self._core, self._pool, method, self._max_payload)
                ),
            )
        except Exception:
            self._core.internal_error("wrapping a method handler")
            return handler
