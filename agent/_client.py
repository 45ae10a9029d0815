"""Sync gRPC client interceptor: stamp requests, merge response clocks.

The response's clock is merged before the application can see the response:
blocking calls are finished inside the interceptor; futures and response
streams are wrapped in transparent proxies that finish the call in
``result()`` / at the end of iteration, with a done-callback as a backstop
for calls the application never reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
import wrapt

from cutwatch.agent._agent import ChannelPeer
from cutwatch.agent._grpc_bases import (
    StreamStreamClientBase,
    StreamUnaryClientBase,
    UnaryStreamClientBase,
    UnaryUnaryClientBase,
)
from cutwatch.agent._metadata import find_stamp, method_name, with_stamp

if TYPE_CHECKING:
    from cutwatch.agent._agent import Agent, Outbound


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


NOT_VISIBLE = "response not visible to cutwatch"
STREAM_RESPONSE: dict[str, str] = {"cutwatch": "stream"}


def call_failure(call: Any) -> str | None:
    """None for a finished call that succeeded, else the name of its status."""
    try:
        code = call.code()
    except Exception:
        return "UNKNOWN"
    if code == grpc.StatusCode.OK:
        return None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def finish_call(
    agent: Agent,
    outbound: Outbound,
    call: Any,
    response: Callable[[], object] | None,
    *,
    deferrable: bool = False,
) -> None:
    """The receive event of a finished sync call, from its trailers and status."""
    if outbound.finished:  # set last, under the agent's locks: nothing is left to do
        return
    metadata = trailing_metadata_of(call)
    # A stamped answer is delivered whatever its status; the status matters only without one.
    failure = None if find_stamp(metadata) is not None else call_failure(call)
    agent._end_outbound(outbound, metadata, failure, None if failure else response, deferrable=deferrable)


class _UnaryFuture(wrapt.ObjectProxy[Any]):
    """The call future, finishing the outbound call before handing out results."""

    def __init__(self, call: Any, agent: Agent, outbound: Outbound) -> None:
        super().__init__(call)
        self._self_agent = agent
        self._self_outbound = outbound
        outbound.call.blocking = False
        call.add_done_callback(self._self_on_done)

    def _self_on_done(self, _call: Any) -> None:
        if not self._self_outbound.finished:
            self._self_finish(deferrable=True)

    def _self_finish(self, *, deferrable: bool = False) -> None:
        # Always through the agent, never on ``finished`` alone: the
        # done-callback may be finishing the call in a gRPC thread right now.
        call = self.__wrapped__
        finish_call(
            self._self_agent, self._self_outbound, call, lambda: call.result(0), deferrable=deferrable
        )

    def _self_wait(self, timeout: float | None) -> None:
        self._self_outbound.call.blocking = True
        try:
            # The call's own failure reaches the caller from result() below.
            with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
                self.__wrapped__.exception(timeout)
        except grpc.FutureTimeoutError:
            self._self_outbound.call.blocking = False
            raise
        self._self_finish()

    def result(self, timeout: float | None = None) -> Any:
        self._self_wait(timeout)
        return self.__wrapped__.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        self._self_wait(timeout)
        return self.__wrapped__.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        self._self_wait(timeout)
        return self.__wrapped__.traceback(timeout)


class _ResponseStream(wrapt.ObjectProxy[Any]):
    """The response iterator, finishing the outbound call when it ends."""

    def __init__(self, call: Any, agent: Agent, outbound: Outbound) -> None:
        super().__init__(call)
        self._self_agent = agent
        self._self_outbound = outbound
        outbound.call.blocking = False
        call.add_done_callback(self._self_on_done)

    def _self_on_done(self, _call: Any) -> None:
        if not self._self_outbound.finished:
            self._self_finish(deferrable=True)

    def _self_finish(self, *, deferrable: bool = False) -> None:
        # Always through the agent, never on ``finished`` alone: the
        # done-callback may be finishing the call in a gRPC thread right now.
        finish_call(
            self._self_agent,
            self._self_outbound,
            self.__wrapped__,
            lambda: STREAM_RESPONSE,
            deferrable=deferrable,
        )

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        self._self_outbound.call.blocking = True
        try:
            return next(self.__wrapped__)
        except StopIteration:
            self._self_finish()
            raise
        except grpc.RpcError:
            self._self_finish()
            raise
        finally:
            self._self_outbound.call.blocking = False

    def next(self) -> Any:
        return self.__next__()


class ClientInterceptor(
    UnaryUnaryClientBase,
    UnaryStreamClientBase,
    StreamUnaryClientBase,
    StreamStreamClientBase,
):
    """Created by ``Agent.client_interceptor()``; one per channel."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._peer = ChannelPeer()

    def _unary_response(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        started = self._agent._begin_outbound(method_name(details.method), self._peer)
        if started is None:
            return continuation(details, request)
        outbound, stamp = started
        try:
            call = continuation(stamped_details(details, stamp), request)
        except BaseException as exc:
            self._agent._end_outbound(outbound, None, type(exc).__name__)
            raise
        if not hasattr(call, "add_done_callback"):  # an inner interceptor returned a plain value
            self._agent._end_outbound(outbound, None, NOT_VISIBLE)
            return call
        if call.done() and not self._agent._in_atomic():
            # The blocking path (or a quick answer): finished here, before
            # gRPC hands the result to the application.
            finish_call(self._agent, outbound, call, lambda: call.result(0))
            return call
        # Inside atomic(), a call that is over already still goes through the
        # proxy: gRPC's blocking path reads the result through it, which is
        # when the application sees it, while a .future() waits for the block.
        return _UnaryFuture(call, self._agent, outbound)

    def _stream_response(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        started = self._agent._begin_outbound(method_name(details.method), self._peer)
        if started is None:
            return continuation(details, request)
        outbound, stamp = started
        try:
            call = continuation(stamped_details(details, stamp), request)
        except BaseException as exc:
            self._agent._end_outbound(outbound, None, type(exc).__name__)
            raise
        if not hasattr(call, "add_done_callback"):
            # A bare iterator (an inner interceptor hid the call): its stamp
            # cannot be read, but the wait lasts until the stream ends.
            return self._untracked_stream(call, outbound)
        return _ResponseStream(call, self._agent, outbound)

    def _untracked_stream(self, responses: Iterator[Any], outbound: Outbound) -> Iterator[Any]:
        try:
            yield from responses
        finally:
            self._agent._end_outbound(outbound, None, NOT_VISIBLE)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._unary_response(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._unary_response(continuation, client_call_details, request_iterator)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._stream_response(continuation, client_call_details, request)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._stream_response(continuation, client_call_details, request_iterator)
