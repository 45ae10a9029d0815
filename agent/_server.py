"""Sync gRPC server interceptor: a task and a clock merge per inbound call.

Each method handler is wrapped once and cached, not per call; the wrapper
reads the request stamp from ``context.invocation_metadata()`` and adds the
response stamp to whatever trailing metadata the application set, at the
moment the response (or the end of the response stream, or an abort) goes
out.

A call is recorded twice. grpcio's sync server runs ``intercept_service``
on its polling thread, for every call as it arrives, before it submits the
call to its thread pool (``_process_event_and_continue`` ->
``_handle_call`` -> ``_find_method_handler``, then
``_handle_with_method_handler`` -> ``thread_pool.submit``): there a call
that finds every worker busy is recorded as *arrived* (``ProcessCore.arrive``),
so that a call queued behind busy workers is a fact of the server's local
snapshots (one that a worker takes at once is not: it never waits). The handler's
receive event comes when a worker runs it. Both run in the call's own
``contextvars.Context`` (grpcio makes one per call and runs the interceptor
and the handler in it), through which the arrival reaches the handler.
The polling thread is also where the pool's size is read: the server's
executor is the ``thread_pool`` of the state that thread serves, known as
the first call arrives, before any worker runs it.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from cutwatch.agent._calls import arrive, begin_inbound, counted_pulls, counted_sends
from cutwatch.agent._metadata import with_stamp
from cutwatch.core import (
    BOUNCED_STAMP_METADATA_KEY,
    STAMP_METADATA_KEY,
    Arrival,
    Inbound,
    ProcessCore,
    Refused,
)
from cutwatch.proto import ServerInterceptorBase

_MAX_CACHED_HANDLERS = 4096
ARRIVAL: contextvars.ContextVar[Arrival | None] = contextvars.ContextVar("cutwatch_arrival", default=None)
"""The arrival of the call whose context this is (set by ``intercept_service``, read by the handler)."""


def stamp_key(inbound: Inbound) -> str:
    """The metadata key of the answer's stamp: another one when the request bounced."""
    return BOUNCED_STAMP_METADATA_KEY if inbound.bounced else STAMP_METADATA_KEY


def handler_failed(context: Any) -> bool:
    """Whether the handler ends with an error: an exception on its way out (an abort too; call this
    in a ``finally`` block) or an error code the handler set."""
    if sys.exc_info()[0] is not None:
        return True
    try:
        code = context.code()
    except Exception:  # a context without code(): nothing set
        return False
    return code is not None and code != grpc.StatusCode.OK


def add_response_stamp(core: ProcessCore, context: Any, inbound: Inbound | None) -> None:
    """Append the response stamp to the trailing metadata the app has set (call it in ``finally``)."""
    if inbound is None:
        return
    stamp = core.end_handler(inbound, failed=handler_failed(context))
    if stamp is None:
        return
    try:
        context.set_trailing_metadata(with_stamp(context.trailing_metadata(), stamp, stamp_key(inbound)))
    except Exception:
        core.internal_error("attaching the response stamp")


class _HandlerWrapper:
    """Builds stamped versions of one handler's behaviour."""

    def __init__(
        self,
        core: ProcessCore,
        pool: str,
        method: str,
        max_payload: int,
        probe: Callable[[], None] | None = None,
    ) -> None:
        self.core = core
        self.pool = pool
        self.method = method
        self.max_payload = max_payload
        self.probe = probe
        """Called once a handler runs: the sync server learns its pool's capacity there."""

    def start(
        self, context: Any, request: Any, *, ends_at_deadline: bool = False
    ) -> Inbound | Refused | None:
        """The request's receive event (None: untracked; :data:`REFUSED`: it must not run), with the
        call's deadline (``ends_at_deadline``: the server cancels the handler then)."""
        inbound = begin_inbound(
            self.core,
            self.method,
            context.invocation_metadata(),
            self.pool,
            request,
            self.max_payload,
            ARRIVAL.get(),
        )
        if self.probe is not None:
            self.probe()
        if isinstance(inbound, Inbound):
            # Read when a snapshot lists the task, not now: most calls end before any snapshot.
            task = inbound.task
            task.time_remaining = getattr(context, "time_remaining", None)
            task.ends_at_deadline = ends_at_deadline
        return inbound

    def begin(self, context: Any, request: Any) -> Inbound | None:
        """:meth:`start` for a handler that runs in a thread: a refused request is aborted here."""
        inbound = self.start(context, request)
        if isinstance(inbound, Refused):
            context.abort(grpc.StatusCode.ABORTED, inbound.reason)
            raise AssertionError("unreachable: abort raises")  # pragma: no cover
        return inbound

    def unary_response(
        self, behavior: Callable[[Any, Any], Any], request_stream: bool
    ) -> Callable[[Any, Any], Any]:
        core, begin = self.core, self.begin
        if not request_stream:

            def handle(request: Any, context: Any) -> Any:
                inbound = begin(context, request)
                try:
                    return behavior(request, context)
                finally:
                    add_response_stamp(core, context, inbound)

            return handle

        def handle_stream(requests: Any, context: Any) -> Any:
            inbound = begin(context, requests)
            stream = core.open_server_stream(inbound) if inbound is not None else None
            try:
                if stream is not None:
                    requests = counted_pulls(core, stream, requests, self.max_payload)
                return behavior(requests, context)
            finally:
                add_response_stamp(core, context, inbound)
                if stream is not None:
                    core.close_stream(stream)

        return handle_stream

    def stream_response(
        self, behavior: Callable[[Any, Any], Iterator[Any]], request_stream: bool
    ) -> Callable[[Any, Any], Iterator[Any]]:
        core, begin = self.core, self.begin

        def handle(request_or_iterator: Any, context: Any) -> Iterator[Any]:
            inbound = begin(context, request_or_iterator)
            stream = core.open_server_stream(inbound) if inbound is not None else None
            try:
                if stream is None:
                    yield from behavior(request_or_iterator, context)
                    return
                requests = (
                    counted_pulls(core, stream, request_or_iterator, self.max_payload)
                    if request_stream
                    else request_or_iterator
                )
                yield from counted_sends(core, stream, behavior(requests, context))
            finally:
                add_response_stamp(core, context, inbound)
                if stream is not None:
                    core.close_stream(stream)

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


def wrap_handler(handler: Any, wrapper: _HandlerWrapper) -> Any:
    """A copy of ``handler`` whose behaviour ``wrapper`` stamps."""
    for kind in ("unary_unary", "stream_unary"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return _replace_behavior(handler, kind, wrapper.unary_response(behavior, kind == "stream_unary"))
    for kind in ("unary_stream", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return _replace_behavior(
                handler, kind, wrapper.stream_response(behavior, kind == "stream_stream")
            )
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

    def __init__(self, core: ProcessCore, pool: str, max_payload: int) -> None:
        self._core = core
        self._pool = pool
        self._max_payload = max_payload
        self._handlers = HandlerCache()
        self._probed = False
        self._serving_thread = 0
        """The polling thread seen last, and its server when that limits concurrent calls."""
        self._serving: Any = None

    def _probe(self) -> None:
        """In a handler thread: the pool's size, if the server's polling thread did not tell it."""
        if not self._probed:
            self._probed = True
            capacity = _executor_capacity()
            if capacity:
                self._core.learn_pool_capacity(self._pool, capacity)

    def _arrive(self, method: str, metadata: Any) -> None:
        """Record the call arriving, unless gRPC is about to turn it away (see the module docstring)."""
        ident = threading.get_ident()
        if ident != self._serving_thread:
            self._serving_thread = ident
            self._serving = self._learn_server()
        server = self._serving
        if server is not None:
            limit = server.maximum_concurrent_rpcs
            if limit is not None and server.active_rpc_count >= limit:
                return  # "Concurrent RPC limit exceeded": rejected without running
            if _worker_free(server.thread_pool):
                return  # a worker takes it at once: it never waits for one
        arrival = arrive(self._core, method, metadata, self._pool)
        if arrival is not None:
            ARRIVAL.set(arrival)

    def _learn_server(self) -> Any:
        """On a new polling thread: the pool's size from the server it serves; that server, whose
        limit and executor are read per call (None when they cannot be: every call is recorded)."""
        server = _serving_state()
        if server is None:
            return None
        executor = getattr(server, "thread_pool", None)
        if not self._probed:
            capacity = getattr(executor, "_max_workers", 0)
            if isinstance(capacity, int) and capacity > 0:
                self._probed = True
                self._core.learn_pool_capacity(self._pool, capacity)
        limit = getattr(server, "maximum_concurrent_rpcs", 0)
        counted = isinstance(getattr(server, "active_rpc_count", None), int)
        if (limit is not None and not isinstance(limit, int)) or not counted or not _knows_idle(executor):
            return None
        return server

    def _wrapper(self, method: str) -> _HandlerWrapper:
        return _HandlerWrapper(self._core, self._pool, method, self._max_payload, self._probe)

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
            wrapped = self._handlers.get(
                method, handler, lambda: wrap_handler(handler, self._wrapper(method))
            )
        except Exception:
            self._core.internal_error("wrapping a method handler")
            return handler
        try:
            self._arrive(method, handler_call_details.invocation_metadata)
        except Exception:
            self._core.internal_error("recording a call that arrived")
        return wrapped  # type: ignore[no-any-return]


def _serving_state() -> Any:
    """The grpcio server state the current thread serves, on the server's polling thread; else None.

    grpcio starts that thread as ``threading.Thread(target=_serve, args=(state,))``; its state holds
    the executor (``thread_pool``), ``maximum_concurrent_rpcs`` and ``active_rpc_count``.
    """
    args = getattr(threading.current_thread(), "_args", ())
    if args and hasattr(args[0], "thread_pool") and hasattr(args[0], "active_rpc_count"):
        return args[0]
    return None


def _knows_idle(executor: Any) -> bool:
    """Whether ``executor`` is a CPython ``ThreadPoolExecutor`` whose idle workers can be counted."""
    return (
        isinstance(getattr(executor, "_max_workers", None), int)
        and isinstance(getattr(executor, "_threads", None), set)
        and isinstance(getattr(getattr(executor, "_idle_semaphore", None), "_value", None), int)
    )


def _worker_free(executor: Any) -> bool:
    """Whether a call submitted now runs at once: a worker is idle, or one more may start.

    Read on the polling thread just before grpcio submits the call, which only it does: between the
    two, workers can only become idle. Each call submitted earlier took an idle worker (or started
    one), so a free one is left for this call, and a queued call is never missed.
    """
    return executor._idle_semaphore._value > 0 or len(executor._threads) < executor._max_workers  # type: ignore[no-any-return]


def _executor_capacity() -> int:
    """``max_workers`` of the ThreadPoolExecutor running this thread, or 0.

    CPython's pool threads carry a weak reference to their executor as their
    first argument; this is how the capacity of ``grpc.server(pool)`` is
    inferred when ``server_interceptor(max_workers=...)`` was not given.
    """
    args = getattr(threading.current_thread(), "_args", ())
    if args and callable(args[0]):
        try:
            executor = args[0]()
        except TypeError:
            return 0
        capacity = getattr(executor, "_max_workers", 0)
        if isinstance(capacity, int):
            return capacity
    return 0
