"""asyncio gRPC client interceptors; the sync one's sibling.

grpc.aio files each interceptor under the first call kind it implements, so
there is one small class per kind, all sharing one ``ChannelPeer``. The call
object returned to the application is a transparent proxy that merges the
response stamp before the response (or the end of the stream) is handed out.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator, Generator
from typing import Any, TypeAlias

import grpc
import grpc.aio

from cutwatch.agent._calls import (
    NOT_VISIBLE,
    STREAM_RESPONSE,
    CountedWrites,
    counted_sends_async,
    failure_name,
    finish_outbound,
    took,
    waiting,
)
from cutwatch.agent._grpc_compat import fix_intercepted_stream_read
from cutwatch.agent._metadata import call_timeout, method_name, with_stamp
from cutwatch.agent._proxy import ObjectProxy
from cutwatch.core import ChannelPeer, Outbound, ProcessCore, StreamEnd
from cutwatch.proto import (
    AioStreamStreamClientBase,
    AioStreamUnaryClientBase,
    AioUnaryStreamClientBase,
    AioUnaryUnaryClientBase,
)

_background: set[asyncio.Task[None]] = set()


def _stamped_details(details: grpc.aio.ClientCallDetails, stamp: bytes) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*with_stamp(details.metadata, stamp)),
        details.credentials,
        details.wait_for_ready,
    )


class _StampedCall(CountedWrites, ObjectProxy):
    """Proxy of an aio call with a response stream that finishes the outbound call when it ends and
    counts the messages the application takes; its stream end closes when the application stops
    reading (the stream ends, the call is cancelled, the call object is dropped)."""

    def __init__(
        self, call: Any, core: ProcessCore, outbound: Outbound, max_payload: int, stream: StreamEnd
    ) -> None:
        super().__init__(call)
        self._self_core = core
        self._self_outbound = outbound
        self._self_max_payload = max_payload
        self._self_end = stream
        self._self_iterator: AsyncIterator[Any] | None = None
        call.add_done_callback(self._self_on_done)
        weakref.finalize(self, core.close_stream, stream)

    def cancel(self) -> bool:
        self._self_core.close_stream(self._self_end)  # type: ignore[arg-type]
        return bool(self.__wrapped__.cancel())

    def _self_on_done(self, _call: Any) -> None:
        # The callback fires before the awaiting caller resumes, and the
        # caller usually finishes the call itself: look again one loop turn
        # later and only then pay for a task of our own.
        if self._self_outbound.finished:
            return
        try:
            asyncio.get_running_loop().call_soon(self._self_backstop)
        except RuntimeError:  # no running loop (shutting down): finish untracked
            self._self_core.end_call(self._self_outbound, None, NOT_VISIBLE)

    def _self_backstop(self) -> None:
        if self._self_outbound.finished:
            return
        task = asyncio.get_running_loop().create_task(_finish_later(self))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _self_finish(self, error: BaseException | None = None) -> None:
        if self._self_outbound.finished:
            return
        metadata = None
        if isinstance(error, grpc.aio.AioRpcError):
            metadata = error.trailing_metadata()
        elif error is None or isinstance(error, grpc.RpcError):
            try:
                metadata = await self.__wrapped__.trailing_metadata()
            except Exception:
                metadata = None
        finish_outbound(
            self._self_core,
            self._self_outbound,
            metadata,
            lambda: error,
            lambda: STREAM_RESPONSE,
            self._self_max_payload,
        )

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._self_iterator is None:
            self._self_iterator = self._self_responses()
        return self._self_iterator

    async def _self_responses(self) -> AsyncIterator[Any]:
        # Blocking while the caller awaits the next response, not while it
        # holds one; an abandoned iteration (GeneratorExit) leaves the call
        # to the done-callback, which sees its real trailing metadata.
        responses = self.__wrapped__.__aiter__()
        stream = self._self_end
        assert stream is not None
        while True:
            with waiting(self._self_outbound):
                try:
                    response = await responses.__anext__()
                except StopAsyncIteration:
                    break
                except BaseException as exc:
                    self._self_core.close_stream(stream)
                    await self._self_finish(exc)
                    raise
            took(self._self_core, stream, response, self._self_max_payload)
            yield response
        self._self_core.close_stream(stream)
        await self._self_finish()

    async def read(self) -> Any:
        stream = self._self_end
        assert stream is not None
        with waiting(self._self_outbound):
            try:
                message = await self.__wrapped__.read()
            except BaseException as exc:
                self._self_core.close_stream(stream)
                await self._self_finish(exc)
                raise
        if message is grpc.aio.EOF:
            self._self_core.close_stream(stream)
            await self._self_finish()
        else:
            took(self._self_core, stream, message, self._self_max_payload)
        return message


async def _finish_later(call: _StampedCall) -> None:
    """The backstop's task, a plain coroutine. Closing a channel, older grpcio (1.62 among them)
    looks at the first frame of every pending task and raises on a ``self`` that is a call object
    it does not know, as this proxy of a call another interceptor returned is; a frame without
    ``self`` is left alone."""
    await call._self_finish()


class _AioClientBase:
    def __init__(self, core: ProcessCore, peer: ChannelPeer, max_payload: int) -> None:
        self._core = core
        self._peer = peer
        self._max_payload = max_payload

    async def _intercept(
        self, continuation: Any, details: Any, request: Any, *, request_stream: bool, response_stream: bool
    ) -> Any:
        started = self._core.begin_call(method_name(details.method), self._peer, call_timeout(details))
        if started is None:
            return await continuation(details, request)
        outbound, stamp = started
        stream = self._core.open_client_stream(outbound) if request_stream or response_stream else None
        if stream is not None and request_stream and request is not None:
            request = counted_sends_async(self._core, stream, request)
        try:
            call = await continuation(_stamped_details(details, stamp), request)
        except BaseException as exc:
            self._core.end_call(outbound, None, failure_name(exc))
            if stream is not None:
                self._core.close_stream(stream)
            raise
        outbound.call.blocking = False
        if response_stream:
            assert stream is not None
            return _StampedCall(call, self._core, outbound, self._max_payload, stream)
        # grpc.aio runs done-callbacks when the status arrives, before it
        # wakes the coroutine awaiting the call, so finishing there merges the
        # clock before the application sees the response.
        call.add_done_callback(
            functools.partial(_finish_done_call, self._core, outbound, self._max_payload, stream)
        )
        return _AwaitedCall(call, outbound, self._core, stream)


class _AwaitedCall(CountedWrites, ObjectProxy):
    """A unary-response aio call that marks its caller blocking while it awaits it (and counts the
    messages it writes, for a request stream)."""

    def __init__(self, call: Any, outbound: Outbound, core: ProcessCore, stream: StreamEnd | None) -> None:
        super().__init__(call)
        self._self_outbound = outbound
        self._self_core = core
        self._self_end = stream

    def __await__(self) -> Generator[Any, None, Any]:
        self._self_outbound.call.blocking = True
        return (yield from self.__wrapped__.__await__())


def _finish_done_call(
    core: ProcessCore, outbound: Outbound, max_payload: int, stream: StreamEnd | None, call: Any
) -> None:
    if not outbound.finished:
        metadata = _now(call.trailing_metadata())
        finish_outbound(
            core, outbound, metadata, lambda: _now(call.code()), lambda: _now(call.__await__()), max_payload
        )
    if stream is not None:
        core.close_stream(stream)


def _now(awaitable: Any) -> Any:
    """The value of an awaitable of a finished aio call, without a loop turn (None if it would wait).

    ``trailing_metadata()``, ``code()`` and the call itself return at once
    when the status is there (it is, in a done-callback); they are driven by
    hand.
    """
    try:
        awaitable.send(None)
    except StopIteration as finished:
        return finished.value
    except Exception:
        return None
    awaitable.close()  # it wanted to wait: not finished after all
    return None


class AioUnaryUnaryInterceptor(_AioClientBase, AioUnaryUnaryClientBase):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(
            continuation, client_call_details, request, request_stream=False, response_stream=False
        )


class AioUnaryStreamInterceptor(_AioClientBase, AioUnaryStreamClientBase):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(
            continuation, client_call_details, request, request_stream=False, response_stream=True
        )


class AioStreamUnaryInterceptor(_AioClientBase, AioStreamUnaryClientBase):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(
            continuation, client_call_details, request_iterator, request_stream=True, response_stream=False
        )


class AioStreamStreamInterceptor(_AioClientBase, AioStreamStreamClientBase):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(
            continuation, client_call_details, request_iterator, request_stream=True, response_stream=True
        )


AioClientInterceptor: TypeAlias = (
    AioUnaryUnaryInterceptor
    | AioUnaryStreamInterceptor
    | AioStreamUnaryInterceptor
    | AioStreamStreamInterceptor
)


def aio_client_interceptors(
    core: ProcessCore, max_payload: int, *, uninstrumented: bool = False
) -> list[AioClientInterceptor]:
    """One interceptor per call kind, sharing what they learn of the channel."""
    fix_intercepted_stream_read()
    peer = ChannelPeer(uninstrumented=uninstrumented)
    return [
        AioUnaryUnaryInterceptor(core, peer, max_payload),
        AioUnaryStreamInterceptor(core, peer, max_payload),
        AioStreamUnaryInterceptor(core, peer, max_payload),
        AioStreamStreamInterceptor(core, peer, max_payload),
    ]
