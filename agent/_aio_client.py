"""asyncio gRPC client interceptors; the sync one's sibling.

grpc.aio files each interceptor under the first call kind it implements, so
there is one small class per kind, all sharing one ``ChannelPeer``. The call
object returned to the application is a transparent proxy that merges the
response stamp before the response (or the end of the stream) is handed out.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio
import wrapt

from cutwatch.agent._agent import ChannelPeer
from cutwatch.agent._client import NOT_VISIBLE, STREAM_RESPONSE
from cutwatch.agent._grpc_bases import (
    AioStreamStreamClientBase,
    AioStreamUnaryClientBase,
    AioUnaryStreamClientBase,
    AioUnaryUnaryClientBase,
)
from cutwatch.agent._metadata import find_stamp, method_name, with_stamp

if TYPE_CHECKING:
    from cutwatch.agent._agent import Agent, Outbound

_background: set[asyncio.Task[None]] = set()


def _stamped_details(details: grpc.aio.ClientCallDetails, stamp: bytes) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*with_stamp(details.metadata, stamp)),
        details.credentials,
        details.wait_for_ready,
    )


class _StampedCall(wrapt.ObjectProxy[Any]):
    """Proxy of an aio call that finishes the outbound call when it ends."""

    def __init__(self, call: Any, agent: Agent, outbound: Outbound) -> None:
        super().__init__(call)
        self._self_agent = agent
        self._self_outbound = outbound
        self._self_iterator: AsyncIterator[Any] | None = None
        call.add_done_callback(self._self_on_done)

    def _self_on_done(self, _call: Any) -> None:
        # The callback fires before the awaiting caller resumes, and the
        # caller usually finishes the call itself: look again one loop turn
        # later and only then pay for a task of our own.
        if self._self_outbound.finished:
            return
        try:
            asyncio.get_running_loop().call_soon(self._self_backstop)
        except RuntimeError:  # no running loop (shutting down): finish untracked
            self._self_agent._end_outbound(self._self_outbound, None, NOT_VISIBLE)

    def _self_backstop(self) -> None:
        if self._self_outbound.finished:
            return
        task = asyncio.get_running_loop().create_task(self._self_finish())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _self_finish(self, error: BaseException | None = None, response: Any = STREAM_RESPONSE) -> None:
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
        failure = None if error is None else _error_name(error)
        self._self_agent._end_outbound(self._self_outbound, metadata, failure, lambda: response)

    # Unary responses ---------------------------------------------------------
    def __await__(self) -> Generator[Any, None, Any]:
        self._self_outbound.call.blocking = True
        try:
            response = yield from self.__wrapped__.__await__()
        except BaseException as exc:
            yield from self._self_finish(exc).__await__()
            raise
        yield from self._self_finish(response=response).__await__()
        return response

    # Response streams ----------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Any]:
        if self._self_iterator is None:
            self._self_iterator = self._self_stream()
        return self._self_iterator

    async def _self_stream(self) -> AsyncIterator[Any]:
        # Blocking while the caller awaits the next response, not while it
        # holds one; an abandoned iteration (GeneratorExit) leaves the call
        # to the done-callback, which sees its real trailing metadata.
        call = self._self_outbound.call
        responses = self.__wrapped__.__aiter__()
        while True:
            call.blocking = True
            try:
                response = await responses.__anext__()
            except StopAsyncIteration:
                break
            except BaseException as exc:
                await self._self_finish(exc)
                raise
            finally:
                call.blocking = False
            yield response
        await self._self_finish()

    async def read(self) -> Any:
        self._self_outbound.call.blocking = True
        try:
            message = await self.__wrapped__.read()
        except BaseException as exc:
            await self._self_finish(exc)
            raise
        finally:
            self._self_outbound.call.blocking = False
        if message is grpc.aio.EOF:  # type: ignore[attr-defined]
            await self._self_finish()
        return message


class _AioClientBase:
    def __init__(self, agent: Agent, peer: ChannelPeer) -> None:
        self._agent = agent
        self._peer = peer

    async def _intercept(self, continuation: Any, details: Any, request: Any, *, stream: bool) -> Any:
        started = self._agent._begin_outbound(method_name(details.method), self._peer)
        if started is None:
            return await continuation(details, request)
        outbound, stamp = started
        try:
            call = await continuation(_stamped_details(details, stamp), request)
        except BaseException as exc:
            self._agent._end_outbound(outbound, None, _error_name(exc))
            raise
        if stream:
            outbound.call.blocking = False
            return _StampedCall(call, self._agent, outbound)
        # grpc.aio runs done-callbacks when the status arrives, before it
        # wakes the coroutine awaiting the call, so finishing there merges the
        # clock before the application sees the response.
        outbound.call.blocking = False
        call.add_done_callback(functools.partial(_finish_done_call, self._agent, outbound))
        return _AwaitedCall(call, outbound)


class _AwaitedCall(wrapt.ObjectProxy[Any]):
    """A unary aio call that marks its caller blocking while it awaits it."""

    def __init__(self, call: Any, outbound: Outbound) -> None:
        super().__init__(call)
        self._self_outbound = outbound

    def __await__(self) -> Generator[Any, None, Any]:
        self._self_outbound.call.blocking = True
        return (yield from self.__wrapped__.__await__())


def _finish_done_call(agent: Agent, outbound: Outbound, call: Any) -> None:
    if outbound.finished:
        return
    metadata = _now(call.trailing_metadata())
    failure: str | None = None
    if find_stamp(metadata) is None:  # the status matters only without a stamped answer
        code = _now(call.code())
        if code != grpc.StatusCode.OK:
            failure = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    agent._end_outbound(outbound, metadata, failure, lambda: _now(call.__await__()))


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


def _error_name(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


class AioUnaryUnaryInterceptor(_AioClientBase, AioUnaryUnaryClientBase):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request, stream=False)


class AioUnaryStreamInterceptor(_AioClientBase, AioUnaryStreamClientBase):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request, stream=True)


class AioStreamUnaryInterceptor(_AioClientBase, AioStreamUnaryClientBase):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator, stream=False)


class AioStreamStreamInterceptor(_AioClientBase, AioStreamStreamClientBase):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator, stream=True)


AioClientInterceptor: TypeAlias = (
    AioUnaryUnaryInterceptor
    | AioUnaryStreamInterceptor
    | AioStreamUnaryInterceptor
    | AioStreamStreamInterceptor
)


def aio_client_interceptors(agent: Agent) -> list[AioClientInterceptor]:
    """One interceptor per call kind, sharing what they learn of the channel."""
    peer = ChannelPeer()
    return [
        AioUnaryUnaryInterceptor(agent, peer),
        AioUnaryStreamInterceptor(agent, peer),
        AioStreamUnaryInterceptor(agent, peer),
        AioStreamStreamInterceptor(agent, peer),
    ]
