"""Sync gRPC client interceptor: stamp requests, merge response clocks.

The response's clock is merged before the application can see the response:
blocking calls are finished inside the interceptor; futures and response
streams are wrapped in transparent proxies that finish the call in
``result()`` / at the end of iteration, with a done-callback as a backstop
for calls the application never reads.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc

from cutwatch.agent._calls import (
    NOT_VISIBLE,
    STREAM_RESPONSE,
    counted_sends,
    failure_name,
    finish_outbound,
    took,
    waiting,
)
from cutwatch.agent._metadata import call_timeout, method_name, with_stamp
from cutwatch.agent._proxy import ObjectProxy
from cutwatch.core import ChannelPeer, Outbound, ProcessCore, StreamEnd
from cutwatch.proto import (
    StreamStreamClientBase,
    StreamUnaryClientBase,
    UnaryStreamClientBase,
    UnaryUnaryClientBase,
)


class _CallDetails(
    NamedTuple(
        "_CallDetails",
        [
            ("method", str),
            ("timeout", Any),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", Any),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,
):
    """A copy of the caller's ``ClientCallDetails`` with new metadata."""


def stamped_details(details: Any, stamp: bytes) -> _CallDetails:
    return _CallDetails(
        details.method,
        details.timeout,
        with_stamp(details.metadata, stamp),
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def trailing_metadata_of(call: Any) -> Any:
    """Trailing metadata of a finished call or of the error it raised."""
    try:
        metadata = call.trailing_metadata()
    except Exception:
        metadata = None
    if metadata is None:
        try:
            error = call.exception(0)
        except Exception:
            error = None
        if error is not None and hasattr(error, "trailing_metadata"):
            try:
                metadata = error.trailing_metadata()
            except Exception:
                metadata = None
    return metadata


def finish_call(
    core: ProcessCore,
    outbound: Outbound,
    call: Any,
    response: Callable[[], object] | None,
    max_payload: int,
    *,
    deferrable: bool = False,
) -> None:
    """The receive event of a finished sync call, from its trailers and status."""
    if not outbound.finished:
        finish_outbound(
            core,
            outbound,
            trailing_metadata_of(call),
            call.code,
            response,
            max_payload,
            deferrable=deferrable,
        )


class _FinishingProxy(ObjectProxy):
    """A gRPC call object that finishes the outbound call before the application sees its end.

    A done-callback is the backstop for calls the application never reads.
    ``stream`` is the call's stream end, closed once the call is over (for a
    response stream: once the application stopped reading it).
    """

    def __init__(
        self,
        call: Any,
        core: ProcessCore,
        outbound: Outbound,
        max_payload: int,
        stream: StreamEnd | None = None,
    ) -> None:
        super().__init__(call)
        self._self_core = core
        self._self_outbound = outbound
        self._self_max_payload = max_payload
        self._self_stream = stream
        outbound.call.blocking = False
        call.add_done_callback(self._self_on_done)

    def _self_response(self) -> object:
        return STREAM_RESPONSE

    def _self_on_done(self, _call: Any) -> None:
        if not self._self_outbound.finished:
            self._self_finish(deferrable=True)
        self._self_call_over()

    def _self_call_over(self) -> None:
        """The call is over; a stream end closes here unless the application still reads it."""
        if self._self_stream is not None:
            self._self_core.close_stream(self._self_stream)

    def _self_finish(self, *, deferrable: bool = False) -> None:
        # Always through the core, never on ``finished`` alone: the
        # done-callback may be finishing the call in a gRPC thread right now.
        finish_call(
            self._self_core,
            self._self_outbound,
            self.__wrapped__,
            self._self_response,
            self._self_max_payload,
            deferrable=deferrable,
        )


class _UnaryFuture(_FinishingProxy):
    """The call future, finishing the outbound call before handing out results."""

    def _self_response(self) -> object:
        return self.__wrapped__.result(0)

    def _self_wait(self, timeout: float | None) -> None:
        # The call's own failure reaches the caller from result() below.
        with waiting(self._self_outbound), contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
            self.__wrapped__.exception(timeout)
        self._self_finish()
        if self.__wrapped__.done():
            self._self_call_over()

    def result(self, timeout: float | None = None) -> Any:
        self._self_wait(timeout)
        return self.__wrapped__.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        self._self_wait(timeout)
        return self.__wrapped__.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        self._self_wait(timeout)
        return self.__wrapped__.traceback(timeout)


class _ResponseStream(_FinishingProxy):
    """The response iterator, finishing the outbound call when it ends and counting the messages the
    application takes; its stream end closes when the application stops reading (the iteration ends,
    the call is cancelled, or the iterator is dropped)."""

    def __init__(
        self, call: Any, core: ProcessCore, outbound: Outbound, max_payload: int, stream: StreamEnd
    ) -> None:
        super().__init__(call, core, outbound, max_payload, stream)
        self._self_end = stream
        weakref.finalize(self, core.close_stream, stream)

    def _self_call_over(self) -> None:
        """Buffered messages may still be read after the call is over: the end stays open."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with waiting(self._self_outbound):
            try:
                message = next(self.__wrapped__)
            except (StopIteration, grpc.RpcError):
                self._self_finish()
                self._self_core.close_stream(self._self_end)
                raise
        took(self._self_core, self._self_end, message, self._self_max_payload)
        return message

    def cancel(self) -> Any:
        self._self_core.close_stream(self._self_end)
        return self.__wrapped__.cancel()

    def next(self) -> Any:
        return self.__next__()


class ClientInterceptor(
    UnaryUnaryClientBase,
    UnaryStreamClientBase,
    StreamUnaryClientBase,
    StreamStreamClientBase,
):
    """Created by ``Agent.client_interceptor()``; one per channel."""

    def __init__(self, core: ProcessCore, max_payload: int, *, uninstrumented: bool = False) -> None:
        self._core = core
        self._max_payload = max_payload
        self._peer = ChannelPeer(uninstrumented=uninstrumented)

    def _start(
        self,
        continuation: Callable[[Any, Any], Any],
        details: Any,
        request: Any,
        *,
        streaming: bool = False,
        request_stream: bool = False,
    ) -> tuple[Any, Outbound | None, StreamEnd | None]:
        """The call, sent with a stamp; its outbound record (None: the call goes untracked) and, for a
        streaming call, its stream end (whose request messages are counted as gRPC sends them)."""
        started = self._core.begin_call(method_name(details.method), self._peer, call_timeout(details))
        if started is None:
            return continuation(details, request), None, None
        outbound, stamp = started
        stream = self._core.open_client_stream(outbound) if streaming else None
        if stream is not None and request_stream:
            request = counted_sends(self._core, stream, request)
        try:
            return continuation(stamped_details(details, stamp), request), outbound, stream
        except BaseException as exc:
            self._core.end_call(outbound, None, failure_name(exc))
            if stream is not None:
                self._core.close_stream(stream)
            raise

    def _unary_response(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any, request_stream: bool
    ) -> Any:
        call, outbound, stream = self._start(
            continuation, details, request, streaming=request_stream, request_stream=request_stream
        )
        if outbound is None:
            return call
        if not hasattr(call, "add_done_callback"):  # an inner interceptor returned a plain value
            self._core.end_call(outbound, None, NOT_VISIBLE)
            self._close(stream)
            return call
        if call.done() and not self._core.in_atomic():
            # The blocking path (or a quick answer): finished here, before
            # gRPC hands the result to the application.
            finish_call(self._core, outbound, call, lambda: call.result(0), self._max_payload)
            self._close(stream)
            return call
        # Inside atomic(), a call that is over already still goes through the
        # proxy: gRPC's blocking path reads the result through it, which is
        # when the application sees it, while a .future() waits for the block.
        return _UnaryFuture(call, self._core, outbound, self._max_payload, stream)

    def _stream_response(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any, request_stream: bool
    ) -> Any:
        call, outbound, stream = self._start(
            continuation, details, request, streaming=True, request_stream=request_stream
        )
        if outbound is None or stream is None:
            return call
        if not hasattr(call, "add_done_callback"):
            # A bare iterator (an inner interceptor hid the call): its stamp
            # cannot be read, but the wait lasts until the stream ends.
            return self._untracked_stream(call, outbound, stream)
        return _ResponseStream(call, self._core, outbound, self._max_payload, stream)

    def _untracked_stream(
        self, responses: Iterator[Any], outbound: Outbound, stream: StreamEnd
    ) -> Iterator[Any]:
        try:
            for message in responses:
                took(self._core, stream, message, self._max_payload)
                yield message
        finally:
            self._core.end_call(outbound, None, NOT_VISIBLE)
            self._core.close_stream(stream)

    def _close(self, stream: StreamEnd | None) -> None:
        if stream is not None:
            self._core.close_stream(stream)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._unary_response(continuation, client_call_details, request, False)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._unary_response(continuation, client_call_details, request_iterator, True)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._stream_response(continuation, client_call_details, request, False)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._stream_response(continuation, client_call_details, request_iterator, True)
