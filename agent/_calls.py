"""What every interceptor decides the same way, sync or aio, client or server.

How a request's metadata starts a handler's task; how a finished call's
trailers and status become the response's receive event (a stamped answer
wins over the status: only a call answered without a stamp has an outcome
of its own); and when a caller counts as blocked on its call, which is what
makes a wait-for edge.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from cutwatch.agent._envelope import read_stamp, write_stamp
from cutwatch.agent._metadata import find_answer_stamp, find_attempt, find_stamp, find_stamp_and_attempt
from cutwatch.agent._payload import lazy_message_json, render_later
from cutwatch.core import SENDING, Arrival, Inbound, Outbound, ProcessCore, Refused, Sending, StreamEnd

__all__ = [
    "NOT_VISIBLE",
    "STREAM_RESPONSE",
    "CountedWrites",
    "arrive",
    "begin_inbound",
    "counted_pulls",
    "counted_pulls_async",
    "counted_sends",
    "counted_sends_async",
    "failure_name",
    "finish_outbound",
    "sending",
    "took",
    "waiting",
]

NOT_VISIBLE = "response not visible to cutwatch"
"""The failure of a call whose answer an inner interceptor hid: its stamp cannot be read."""
STREAM_RESPONSE: dict[str, str] = {"cutwatch": "stream"}
"""What a response stream's record holds: its messages are not captured."""


def arrive(core: ProcessCore, method: str, metadata: Iterable[Any] | None, pool: str) -> Arrival | None:
    """Record a call that reached the server and waits for a worker (see ``ProcessCore.arrive``)."""
    try:
        stamp, attempt = find_stamp_and_attempt(metadata)
        if stamp is None:
            return None
        return core.arrive(method, stamp, attempt, pool)
    except Exception:
        core.internal_error("reading a request's metadata")
        return None


def begin_inbound(
    core: ProcessCore,
    method: str,
    metadata: Iterable[Any] | None,
    pool: str,
    request: object,
    max_payload: int,
    arrival: Arrival | None = None,
) -> Inbound | Refused | None:
    """The receive event of a request reaching its handler (None: it runs untracked; :data:`REFUSED`:
    it must not run, see ``ProcessCore.begin_handler``); ``arrival`` is the call's record from when it
    reached the server, if any."""
    try:
        stamp, attempt = find_stamp(metadata), find_attempt(metadata)
    except Exception:
        core.internal_error("reading a request's metadata")
        return None
    return core.begin_handler(method, stamp, attempt, pool, lazy_message_json(request, max_payload), arrival)


def failure_name(status: object) -> str | None:
    """None for a call that succeeded, else the name of how it failed.

    ``status`` is a ``grpc.StatusCode``, an error (gRPC's carry their code),
    a name, or None for success.
    """
    if status is None or status == grpc.StatusCode.OK:
        return None
    if isinstance(status, grpc.StatusCode):
        return status.name
    if isinstance(status, str):
        return status
    if isinstance(status, grpc.RpcError):
        try:
            code = status.code()
        except Exception:
            code = None
        if isinstance(code, grpc.StatusCode):
            return code.name
    return type(status).__name__


def finish_outbound(
    core: ProcessCore,
    outbound: Outbound,
    metadata: Iterable[Any] | None,
    status: Callable[[], object],
    response: Callable[[], object] | None,
    max_payload: int,
    *,
    deferrable: bool = False,
) -> None:
    """The receive event of a finished call, from its trailing metadata and status.

    ``status`` returns the call's status (see :func:`failure_name`; an error
    it raises is the status); it is asked only for a call answered without a
    stamp. ``response`` returns the
    response message, rendered only if the response is recorded in transit;
    ``deferrable`` as in ``ProcessCore.end_call``.
    """
    if outbound.finished:  # set last, under the core's locks: nothing is left to do
        return
    try:
        stamp, bounced = find_answer_stamp(metadata)
    except Exception:
        stamp, bounced = None, False
    # A stamped answer is delivered whatever its status; the status matters without one, or when the
    # server says the request bounced (no attempt followed it: the call failed).
    failure = failure_name(_status(status)) if stamp is None or bounced else None
    payload = render_later(response, max_payload) if response is not None and failure is None else None
    core.end_call(outbound, stamp, failure, payload, deferrable=deferrable)


def _status(status: Callable[[], object]) -> object:
    try:
        return status()
    except Exception as exc:
        return exc


def counted_sends(core: ProcessCore, end: StreamEnd, messages: Iterable[Any]) -> Iterator[Any]:
    """``messages`` as gRPC takes them to send on ``end``, each counted as sent (see
    :class:`cutwatch.core.Sending`: an ``atomic()`` block that ran while producing it sends it)."""
    produced = iter(messages)
    while True:
        producing = Sending(end)
        token = SENDING.set(producing)
        try:
            message = next(produced)
        except StopIteration:
            return
        finally:
            SENDING.reset(token)
        _produced(core, producing, message)
        yield message


def _produced(core: ProcessCore, producing: Sending, message: Any) -> None:
    """gRPC takes ``message``, produced for ``producing.end``: counted as sent now unless an
    ``atomic()`` block that ran while producing it counted it, and stamped (the envelope)."""
    if not producing.counted:
        core.stream_sent(producing.end)
    write_stamp(core, producing.end, message)


def took(core: ProcessCore, end: StreamEnd, message: Any, max_payload: int) -> None:
    """The application took ``message`` from ``end``: counted, with its payload rendered only if a
    cut records it, and its stamp if it carries one (the envelope)."""
    core.stream_pulled(end, lazy_message_json(message, max_payload), read_stamp(core, message))


def sending(core: ProcessCore, end: StreamEnd, message: Any) -> None:
    """The application hands ``message`` to gRPC on ``end`` (a write): counted now, and stamped."""
    core.stream_sent(end)
    write_stamp(core, end, message)


def counted_pulls(
    core: ProcessCore, end: StreamEnd, messages: Iterable[Any], max_payload: int
) -> Iterator[Any]:
    """``messages`` as the application takes them from ``end``, each counted as taken (and rendered
    as JSON only if a cut records it in transit)."""
    for message in messages:
        took(core, end, message, max_payload)
        yield message


async def counted_sends_async(
    core: ProcessCore, end: StreamEnd, messages: AsyncIterable[Any] | Iterable[Any]
) -> AsyncIterator[Any]:
    """:func:`counted_sends` for grpc.aio, whose request iterators may be async or not."""
    if not isinstance(messages, AsyncIterable):
        for message in counted_sends(core, end, messages):
            yield message
        return
    produced = messages.__aiter__()
    while True:
        producing = Sending(end)
        token = SENDING.set(producing)
        try:
            message = await produced.__anext__()
        except StopAsyncIteration:
            return
        finally:
            SENDING.reset(token)
        _produced(core, producing, message)
        yield message


async def counted_pulls_async(
    core: ProcessCore, end: StreamEnd, messages: AsyncIterable[Any], max_payload: int
) -> AsyncIterator[Any]:
    """:func:`counted_pulls` for grpc.aio's request iterators."""
    async for message in messages:
        took(core, end, message, max_payload)
        yield message


class CountedWrites:
    """Mixin of a proxy of a grpc.aio call or servicer context that writes on the stream end
    ``_self_end``: a message counts as sent when ``write()`` is called (inside an ``atomic()``
    block, with the change it carries), not when the write is awaited."""

    _self_core: ProcessCore
    _self_end: StreamEnd | None
    __wrapped__: Any

    def write(self, message: Any) -> Any:
        if self._self_end is not None:
            sending(self._self_core, self._self_end, message)
        return self.__wrapped__.write(message)


@contextmanager
def waiting(outbound: Outbound) -> Iterator[None]:
    """The caller waits for its call: a wait-for edge while the block runs, none after."""
    outbound.call.blocking = True
    try:
        yield
    finally:
        outbound.call.blocking = False
