"""The Python work of the interceptors alone: cutwatch's next to a minimal clock pair, without gRPC.

The same 64-byte unary echo as benchmarks/interceptor_overhead.py, but over a
fake transport: ``grpc.intercept_channel`` wraps a channel whose call hands the
request's metadata straight to the server interceptor's ``intercept_service``,
runs the handler it returns with a fake servicer context, and gives the client
interceptor a finished call with the handler's trailing metadata. Like grpcio,
it runs each call's server interceptor and handler in a fresh
``contextvars.Context``; everything runs on one thread, whose arguments carry
a server state with idle workers (what grpcio's polling thread serves), so
that cutwatch's server interceptor takes the path it takes in a real server
with a free worker. Five set-ups, measured in interleaved rounds:

  passthrough    client and server interceptors that only call on (the fake
                 transport's own cost, with grpc's interceptor plumbing)
  minimal        a minimal vector-clock pair: the clock (8-byte process ids and
                 counters, an 8-byte call id: 40 bytes for two processes) in one
                 -bin metadata entry on the request, merged by the server, and
                 back in the trailers, merged by the client
  cutwatch       the client and server interceptors of two cutwatch agents
  minimal_core   the minimal pair's clock work alone: two encodes, two merges
  cutwatch_core  cutwatch's event core alone (``ProcessCore``): the four events
                 the interceptors ask of it, begin_call, begin_handler,
                 end_handler, end_call

The aio part measures the first three set-ups again with grpc.aio interceptors
(cutwatch's ``aio_client_interceptors()`` and ``aio_server_interceptor()``, and
the pass-through and minimal pairs in aio form), awaited one call after another
in one event loop. The fake aio channel runs the client interceptors as grpc.aio
does (``intercept_unary_unary(continuation, details, request)``, the method as
bytes, the metadata as ``grpc.aio.Metadata``), but in the caller's coroutine,
without grpc.aio's ``InterceptedUnaryUnaryCall`` and its task (that machinery
needs a real channel); the last continuation runs the server side, found through
the server interceptor's ``intercept_service`` as grpc.aio finds it, in a fresh
``contextvars.Context``, and returns a finished call: awaitable, its metadata
and status coroutines that return at once, its done-callbacks run at once.

Clocks hold 8 entries in every set-up, as in the real-gRPC benchmark (6 extra
clients call each server first). The process is pinned to one CPU by default.

    python benchmarks/interceptor_python_work.py [--part sync|aio|both] [--calls N] [--rounds N]
                                                 [--no-pin] [--cpu N] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import gc
import hashlib
import inspect
import itertools
import statistics
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import grpc

import cutwatch.agent
from cutwatch.core import ChannelPeer, Inbound, ProcessCore
from cutwatch.integrations.opentelemetry import current_span_ids

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine, emit  # noqa: E402
from interceptor_overhead import (  # noqa: E402
    CLOCK_ENTRIES,
    EXTRA_AGENTS,
    METHOD,
    PAYLOAD,
    SYNC_WORKERS,
    WARMUP_CALLS,
    Samples,
    _aio_echo,
    _handler,
    _identity,
    _sync_echo,
    parse_args,
    percentile,
    pin_as_asked,
    round_order,
    run_config,
    unpinned_threads,
)

INTERCEPTED = ("passthrough", "minimal", "cutwatch")
CORES = ("minimal_core", "cutwatch_core")
CONFIGS = INTERCEPTED + CORES
PARTS = ("sync", "aio")
MINIMAL_KEY = "vc-bin"
PREWARM = (
    f"{EXTRA_AGENTS} extra clients call each server first, so every clock the measured client and "
    f"server hold has {CLOCK_ENTRIES} entries"
)


# The fake transport ----------------------------------------------------------
class _HandlerCallDetails(
    NamedTuple("_HandlerCallDetails", [("method", str), ("invocation_metadata", Any)]),
    grpc.HandlerCallDetails,
):
    """What grpcio hands a server interceptor: the method and the request's metadata."""


class FakeRpcError(grpc.RpcError):
    """A failed call, as grpcio raises it: an error that is also the finished call."""

    def __init__(self, call: FakeCall) -> None:
        super().__init__(call.details())
        self.call = call

    def code(self) -> grpc.StatusCode:
        return self.call.code()

    def details(self) -> str:
        return self.call.details()

    def trailing_metadata(self) -> Any:
        return self.call.trailing_metadata()

    def initial_metadata(self) -> Any:
        return ()


class FakeCall:
    """A finished call as ``with_call`` returns it (``grpc.Call``); grpc wraps it in its outcome."""

    __slots__ = ("_code", "_details", "_trailing")

    def __init__(self, trailing: Any, code: grpc.StatusCode = grpc.StatusCode.OK, details: str = "") -> None:
        self._trailing = trailing
        self._code = code
        self._details = details

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return self._trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False  # over already: grpcio does not take callbacks then


class _Aborted(Exception):
    """What ``abort()`` raises, as grpcio's does, to leave the handler."""


class FakeServicerContext:
    """What handlers and server interceptors use of ``grpc.ServicerContext``, for a call without a
    deadline."""

    __slots__ = ("_code", "_details", "_metadata", "_trailing")

    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata
        self._trailing: Any = None
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> Any:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> Any:
        return self._trailing

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def details(self) -> str:
        return self._details

    def set_details(self, details: str) -> None:
        self._details = details

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details
        raise _Aborted(details)

    def time_remaining(self) -> float | None:
        return None

    def is_active(self) -> bool:
        return True

    def peer(self) -> str:
        return "fake:0"


class FakeUnaryUnary:
    """One method of :class:`FakeChannel`: each call runs the server side in place."""

    def __init__(
        self,
        channel: FakeChannel,
        method: str,
        serialize: Callable[[Any], bytes] | None,
        deserialize: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._method = method
        self._serialize = serialize
        self._deserialize = deserialize

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        return self.with_call(request, **kwargs)[0]

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, FakeCall]:
        channel = self._channel
        data = self._serialize(request) if self._serialize is not None else request
        details = _HandlerCallDetails(self._method, tuple(metadata) if metadata else ())
        context = contextvars.Context()  # grpcio's per-call context: interceptors and handler run in it
        handler: Any = context.run(channel.server_interceptor.intercept_service, channel.lookup, details)
        if handler is None or handler.unary_unary is None:
            raise FakeRpcError(FakeCall((), grpc.StatusCode.UNIMPLEMENTED, "Method not found!"))
        servicer = FakeServicerContext(details.invocation_metadata)
        try:
            message = handler.request_deserializer(data) if handler.request_deserializer else data
            response = context.run(handler.unary_unary, message, servicer)
            payload = handler.response_serializer(response) if handler.response_serializer else response
        except Exception as exc:
            code = servicer.code() or grpc.StatusCode.UNKNOWN
            raise FakeRpcError(FakeCall(servicer.trailing_metadata(), code, servicer.details())) from exc
        channel.last_metadata = (details.invocation_metadata, servicer.trailing_metadata())
        code = servicer.code() or grpc.StatusCode.OK
        if code != grpc.StatusCode.OK:
            raise FakeRpcError(FakeCall(servicer.trailing_metadata(), code, servicer.details()))
        answer = self._deserialize(payload) if self._deserialize is not None else payload
        return answer, FakeCall(servicer.trailing_metadata())


class FakeChannel:
    """What ``grpc.intercept_channel`` uses of a channel (``unary_unary``), with one server behind it:
    its interceptor and its handlers, no network, no serialization thread, no C core."""

    def __init__(self, server_interceptor: grpc.ServerInterceptor, handlers: grpc.GenericRpcHandler) -> None:
        self.server_interceptor = server_interceptor
        self.lookup: Callable[[grpc.HandlerCallDetails], Any] = handlers.service
        self.last_metadata: tuple[Any, Any] = ((), ())
        """The request's and the answer's metadata of the last call, as the peer saw them."""

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> FakeUnaryUnary:
        return FakeUnaryUnary(self, method, request_serializer, response_deserializer)


@dataclass
class ServingState:
    """What cutwatch's server interceptor reads of grpcio's server state on the polling thread
    (started as ``Thread(target=_serve, args=(state,))``): an executor with a free worker, no limit
    on concurrent calls. As in a real server whose workers are idle, no call waits to be filed."""

    thread_pool: futures.ThreadPoolExecutor
    maximum_concurrent_rpcs: int | None = None
    active_rpc_count: int = 0


def on_serving_thread(work: Callable[[], Any]) -> Any:
    """``work()`` on a thread that looks like grpcio's polling thread; its result or its error."""
    pool = futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS)  # never started: every worker free
    outcome: list[Any] = []

    def serve(state: ServingState) -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=serve, args=(ServingState(pool),), name="fake-serving")
    thread.start()
    thread.join()
    pool.shutdown()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


# Pass-through and minimal interceptors ---------------------------------------
class PassThroughClient(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(client_call_details, request)


class PassThroughServer(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return continuation(handler_call_details)


def process_number(name: str) -> int:
    """A process's 64-bit id in the minimal clock."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


class MinimalClock:
    """A vector clock sent whole: an 8-byte call id, then 8-byte id and 8-byte counter per entry."""

    def __init__(self, name: str) -> None:
        self.me = process_number(name)
        self.entries: dict[int, int] = {self.me: 0}
        self.call_ids = itertools.count(1)
        self.mismatched = 0
        self._lock = threading.Lock()

    def send(self, call_id: int) -> bytes:
        """A send event: tick, and the clock as a stamp."""
        with self._lock:
            entries = self.entries
            entries[self.me] += 1
            return struct.pack(
                f"<{1 + 2 * len(entries)}Q", call_id, *itertools.chain.from_iterable(entries.items())
            )

    def receive(self, stamp: bytes) -> int:
        """A receive event: merge the stamp's clock, tick; returns its call id."""
        values = struct.unpack(f"<{len(stamp) // 8}Q", stamp)
        with self._lock:
            entries = self.entries
            for i in range(1, len(values), 2):
                if values[i + 1] > entries.get(values[i], 0):
                    entries[values[i]] = values[i + 1]
            entries[self.me] += 1
        return values[0]  # type: ignore[no-any-return]


def minimal_stamp(metadata: Any) -> bytes | None:
    for key, value in metadata or ():
        if key == MINIMAL_KEY:
            return value  # type: ignore[no-any-return]
    return None


class MinimalClient(grpc.UnaryUnaryClientInterceptor):
    """Stamps the request with the clock; merges the answer's clock from the trailers."""

    def __init__(self, clock: MinimalClock) -> None:
        self.clock = clock

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        clock = self.clock
        call_id = next(clock.call_ids)
        metadata = (*(client_call_details.metadata or ()), (MINIMAL_KEY, clock.send(call_id)))
        call = continuation(client_call_details._replace(metadata=metadata), request)
        stamp = minimal_stamp(call.trailing_metadata())
        if stamp is not None and clock.receive(stamp) != call_id:
            clock.mismatched += 1
        return call


class MinimalServer(grpc.ServerInterceptor):
    """Merges the request's clock before the handler runs; the answer's clock goes in the trailers.
    Handlers are wrapped once each (unary-unary only)."""

    def __init__(self, clock: MinimalClock) -> None:
        self.clock = clock
        self._wrapped: dict[int, tuple[Any, Any]] = {}

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        entry = self._wrapped.get(id(handler))
        if entry is None or entry[0] is not handler:
            entry = (handler, handler._replace(unary_unary=self._wrap(handler.unary_unary)))
            self._wrapped[id(handler)] = entry
        return entry[1]

    def _wrap(self, behaviour: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        clock = self.clock

        def handle(request: Any, context: Any) -> Any:
            stamp = minimal_stamp(context.invocation_metadata())
            call_id = clock.receive(stamp) if stamp is not None else 0
            try:
                return behaviour(request, context)
            finally:
                context.set_trailing_metadata(
                    (*(context.trailing_metadata() or ()), (MINIMAL_KEY, clock.send(call_id)))
                )

        return handle


# Set-ups ---------------------------------------------------------------------
def _stub(channel: FakeChannel, interceptor: Any) -> Callable[[bytes], bytes]:
    """The echo method through ``interceptor``, as an application calls it."""
    intercepted = grpc.intercept_channel(cast(grpc.Channel, channel), interceptor)
    return intercepted.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)


class Counted:
    """A call, counting how often it ran (the check compares the agents' counters with it)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._call = call
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self._call()


@dataclass
class SetUps:
    """The measured calls of every set-up and what the check reads after the rounds."""

    calls: dict[str, Counted]
    agents: list[cutwatch.agent.Agent]
    cutwatch_channel: FakeChannel
    minimal_channel: FakeChannel
    minimal_clocks: tuple[MinimalClock, MinimalClock]
    minimal_core_clocks: tuple[MinimalClock, MinimalClock]
    cores: tuple[ProcessCore, ProcessCore]

    @classmethod
    def create(cls) -> SetUps:
        handlers = _handler(_sync_echo)
        calls: dict[str, Counted] = {}

        passthrough = FakeChannel(PassThroughServer(), handlers)
        passthrough_stub = _stub(passthrough, PassThroughClient())
        calls["passthrough"] = Counted(lambda: passthrough_stub(PAYLOAD))

        server_clock, client_clock = MinimalClock("bench-server"), MinimalClock("bench-client")
        minimal = FakeChannel(MinimalServer(server_clock), handlers)
        for i in range(EXTRA_AGENTS):
            _stub(minimal, MinimalClient(MinimalClock(f"bench-peer{i}")))(PAYLOAD)
        minimal_stub = _stub(minimal, MinimalClient(client_clock))
        calls["minimal"] = Counted(lambda: minimal_stub(PAYLOAD))

        server_agent = cutwatch.agent.Agent("bench-server", collector=None).start()
        client_agent = cutwatch.agent.Agent("bench-client", collector=None).start()
        extras = [cutwatch.agent.Agent(f"bench-peer{i}", collector=None).start() for i in range(EXTRA_AGENTS)]
        agents = [server_agent, client_agent, *extras]
        cutwatch_channel = FakeChannel(server_agent.server_interceptor(max_workers=SYNC_WORKERS), handlers)
        for extra in extras:
            _stub(cutwatch_channel, extra.client_interceptor())(PAYLOAD)
        cutwatch_stub = _stub(cutwatch_channel, client_agent.client_interceptor())
        calls["cutwatch"] = Counted(lambda: cutwatch_stub(PAYLOAD))

        core_clocks = (MinimalClock("core-server"), MinimalClock("core-client"))
        for i in range(EXTRA_AGENTS):
            minimal_core_call(core_clocks[0], MinimalClock(f"core-peer{i}"))
        calls["minimal_core"] = Counted(lambda: minimal_core_call(*core_clocks))

        server_core = _core("core-server")
        pool = server_core.register_pool(SYNC_WORKERS)
        cores = (server_core, _core("core-client"))
        for i in range(EXTRA_AGENTS):
            event_core_call(server_core, pool, _core(f"core-peer{i}"), ChannelPeer())
        peer = ChannelPeer()
        calls["cutwatch_core"] = Counted(lambda: event_core_call(server_core, pool, cores[1], peer))

        return cls(
            calls=calls,
            agents=agents,
            cutwatch_channel=cutwatch_channel,
            minimal_channel=minimal,
            minimal_clocks=(server_clock, client_clock),
            minimal_core_clocks=core_clocks,
            cores=cores,
        )

    def close(self) -> None:
        for agent in self.agents:
            agent.close()

    def check(self) -> dict[str, Any]:
        """Whether the stamps travelled: each side's clock holds the other's entry, every set-up's
        clocks have ``CLOCK_ENTRIES`` entries, and every call was counted on both sides."""
        server_agent, client_agent = self.agents[0], self.agents[1]
        cw = _core_check(
            client_agent.process_id,
            client_agent.clock,
            client_agent.stats(),
            server_agent.process_id,
            server_agent.clock,
            server_agent.stats(),
            self.calls["cutwatch"].count,
        )
        core_server, core_client = self.cores
        core = _core_check(
            core_client.process_id,
            core_client.clock,
            core_client.stats(),
            core_server.process_id,
            core_server.clock,
            core_server.stats(),
            self.calls["cutwatch_core"].count,
        )
        minimal = _minimal_check(*self.minimal_clocks)
        minimal_core = _minimal_check(*self.minimal_core_clocks)
        request, answer = self.cutwatch_channel.last_metadata
        minimal_request, minimal_answer = self.minimal_channel.last_metadata
        return {
            "cutwatch": cw,
            "cutwatch_core": core,
            "minimal": minimal,
            "minimal_core": minimal_core,
            "stamp_bytes": {
                "cutwatch_request": len(_value(request, cutwatch.agent.STAMP_METADATA_KEY)),
                "cutwatch_answer": len(_value(answer, cutwatch.agent.STAMP_METADATA_KEY)),
                "minimal_request": len(_value(minimal_request, MINIMAL_KEY)),
                "minimal_answer": len(_value(minimal_answer, MINIMAL_KEY)),
            },
            "stamp_travelled": all(part["travelled"] for part in (cw, core, minimal, minimal_core)),
        }


def _value(metadata: Any, key: str) -> bytes:
    return next((value for k, value in metadata or () if k == key), b"")


def _core(name: str) -> ProcessCore:
    """An event core as ``Agent`` makes one (no collector)."""
    return ProcessCore(f"{name}:bench", span_ids=current_span_ids)


def event_core_call(server: ProcessCore, pool: str, client: ProcessCore, peer: ChannelPeer) -> None:
    """The four events of one call, as the interceptors ask them of the two cores."""
    started = client.begin_call(METHOD, peer, None)
    if started is None:
        raise RuntimeError("begin_call failed")
    outbound, stamp = started
    inbound = server.begin_handler(METHOD, stamp, 0, pool, "null")
    if not isinstance(inbound, Inbound):
        raise RuntimeError("begin_handler did not start the call")
    client.end_call(outbound, server.end_handler(inbound))


def minimal_core_call(server: MinimalClock, client: MinimalClock) -> None:
    """The minimal pair's clock work of one call: send, merge, send back, merge."""
    call_id = next(client.call_ids)
    if client.receive(server.send(server.receive(client.send(call_id)))) != call_id:
        client.mismatched += 1


def _core_check(
    client_id: str,
    client_clock: Any,
    client_stats: Any,
    server_id: str,
    server_clock: Any,
    server_stats: Any,
    calls: int,
) -> dict[str, Any]:
    out = {
        "calls": calls,
        "client_clock_entries": len(client_clock),
        "server_clock_entries": len(server_clock),
        "client_knows_server": client_clock.get(server_id, 0) > 0,
        "server_knows_client": server_clock.get(client_id, 0) > 0,
        "client_requests_sent": client_stats.requests_sent,
        "client_responses_received": client_stats.responses_received,
        "server_requests_received": server_stats.requests_received,
        "server_responses_sent": server_stats.responses_sent,
        "untracked": client_stats.untracked + server_stats.untracked,
        "stamps_degraded": client_stats.stamps_degraded + server_stats.stamps_degraded,
        "internal_errors": client_stats.internal_errors + server_stats.internal_errors,
    }
    out["travelled"] = (
        out["client_knows_server"]
        and out["server_knows_client"]
        and out["client_clock_entries"] == out["server_clock_entries"] == CLOCK_ENTRIES
        and out["client_requests_sent"] == out["client_responses_received"] == calls
        and out["server_requests_received"] == out["server_responses_sent"] == calls + EXTRA_AGENTS
        and out["untracked"] == out["stamps_degraded"] == out["internal_errors"] == 0
    )
    return out


def _minimal_check(server: MinimalClock, client: MinimalClock) -> dict[str, Any]:
    out = {
        "client_clock_entries": len(client.entries),
        "server_clock_entries": len(server.entries),
        "client_knows_server": client.entries.get(server.me, 0) > 0,
        "server_knows_client": server.entries.get(client.me, 0) > 0,
        "mismatched_answers": client.mismatched,
    }
    out["travelled"] = (
        out["client_knows_server"]
        and out["server_knows_client"]
        and out["client_clock_entries"] == out["server_clock_entries"] == CLOCK_ENTRIES
        and out["mismatched_answers"] == 0
    )
    return out


# The aio part: a fake grpc.aio transport -------------------------------------
class FakeAioCall(grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A finished grpc.aio unary call: awaiting it gives the response (or raises ``AioRpcError``),
    its status and metadata are coroutines that return at once, and a done-callback added to it runs
    at once, as grpc.aio's do on a call that is over."""

    __slots__ = ("_code", "_details", "_response", "_trailing")

    def __init__(
        self, response: Any, trailing: Any, code: grpc.StatusCode = grpc.StatusCode.OK, details: str = ""
    ) -> None:
        self._response = response
        self._trailing = grpc.aio.Metadata(*(trailing or ()))
        self._code = code
        self._details = details

    def __await__(self) -> Generator[Any, None, Any]:
        if self._code != grpc.StatusCode.OK:
            raise grpc.aio.AioRpcError(self._code, grpc.aio.Metadata(), self._trailing, self._details)
        yield from ()  # a generator, as grpc.aio's ``__await__`` is
        return self._response

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    async def initial_metadata(self) -> Any:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> Any:
        return self._trailing

    async def code(self) -> grpc.StatusCode:
        return self._code

    async def details(self) -> str:
        return self._details

    async def debug_error_string(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        return None


class FakeAioServicerContext(FakeServicerContext):
    """What handlers and server interceptors use of ``grpc.aio.ServicerContext``, for a call without
    a deadline: the sync fake with an awaitable ``abort`` and no trailers until some are set."""

    __slots__ = ()

    def __init__(self, metadata: Any) -> None:
        super().__init__(metadata)
        self._trailing = ()

    async def abort(  # type: ignore[override]  # grpc.aio's abort is a coroutine
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise _Aborted(details)

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


class FakeAioServer:
    """One grpc.aio server behind :class:`FakeAioChannel`: its interceptor and its handlers. A call
    finds its handler through the interceptor as grpc.aio's ``_find_method_handler`` does, and runs
    it in a fresh ``contextvars.Context`` (grpc.aio runs each call in a task of its own); nothing in
    it waits, so the coroutine is driven by hand, without a loop turn."""

    def __init__(self, interceptor: grpc.aio.ServerInterceptor, handlers: grpc.GenericRpcHandler) -> None:
        self.interceptor = interceptor
        self.lookup: Callable[[grpc.HandlerCallDetails], Any] = handlers.service
        self.last_metadata: tuple[Any, Any] = ((), ())
        """The request's and the answer's metadata of the last call, as the peer saw them."""

    async def _find_handler(self, details: _HandlerCallDetails) -> Any:
        lookup = self.lookup

        async def query_handlers(handler_call_details: Any) -> Any:
            return lookup(handler_call_details)

        return await self.interceptor.intercept_service(query_handlers, details)

    async def _serve(self, method: str, metadata: Any, data: bytes) -> FakeAioCall:
        details = _HandlerCallDetails(method, metadata)
        handler = await self._find_handler(details)
        if handler is None or handler.unary_unary is None:
            return FakeAioCall(None, (), grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        context = FakeAioServicerContext(metadata)
        try:
            request = handler.request_deserializer(data) if handler.request_deserializer else data
            behaviour = handler.unary_unary
            if inspect.iscoroutinefunction(behaviour):
                response = await behaviour(request, context)
            else:  # grpc.aio runs a plain function in its executor; here in place
                response = behaviour(request, context)
            payload = handler.response_serializer(response) if handler.response_serializer else response
        except Exception:
            code = context.code() or grpc.StatusCode.UNKNOWN
            return FakeAioCall(None, context.trailing_metadata(), code, context.details())
        self.last_metadata = (metadata, context.trailing_metadata())
        code = context.code() or grpc.StatusCode.OK
        return FakeAioCall(payload, context.trailing_metadata(), code, context.details())

    def call(self, method: str, metadata: Any, data: bytes) -> FakeAioCall:
        """The server side of one call, finished."""
        coroutine = self._serve(method, metadata, data)
        try:
            contextvars.Context().run(coroutine.send, None)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]
        coroutine.close()
        raise RuntimeError("the fake server side waited")


class FakeAioMultiCallable:
    """One method of :class:`FakeAioChannel`, called as grpc.aio's ``UnaryUnaryMultiCallable`` with
    interceptors is: the details (the method as bytes, the metadata as ``grpc.aio.Metadata``) go
    through the interceptors in turn, the last continuation starts the call (here: the server side
    runs, the call is finished), and the application awaits what the interceptors return. grpc.aio
    does that in a task of its own behind an ``InterceptedUnaryUnaryCall``; here it runs in the
    caller's coroutine."""

    def __init__(
        self,
        channel: FakeAioChannel,
        method: str,
        serialize: Callable[[Any], bytes] | None,
        deserialize: Callable[[bytes], Any] | None,
    ) -> None:
        self._server = channel.server
        self._interceptors = channel.interceptors
        self._method = method
        self._method_bytes = method.encode()
        self._serialize = serialize
        self._deserialize = deserialize

    async def _start(self, details: grpc.aio.ClientCallDetails, request: Any) -> FakeAioCall:
        data = self._serialize(request) if self._serialize is not None else request
        call = self._server.call(self._method, tuple(details.metadata or ()), data)
        if self._deserialize is not None and call._code == grpc.StatusCode.OK:
            call._response = self._deserialize(call._response)
        return call

    async def _run_interceptors(self, index: int, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        if index == len(self._interceptors):
            return await self._start(details, request)
        continuation = functools.partial(self._run_interceptors, index + 1)
        outcome = await self._interceptors[index].intercept_unary_unary(continuation, details, request)
        if isinstance(outcome, grpc.aio.UnaryUnaryCall):
            return outcome
        return _Answered(outcome)  # grpc.aio's UnaryUnaryCallResponse: the interceptor answered itself

    async def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None) -> Any:
        details = grpc.aio.ClientCallDetails(
            self._method_bytes,  # type: ignore[arg-type]  # grpc.aio passes the method as bytes
            timeout,
            grpc.aio.Metadata(*(metadata or ())),
            None,
            None,
        )
        call = await self._run_interceptors(0, details, request)
        return await call


class _Answered:
    """An answer an interceptor gave instead of a call."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __await__(self) -> Generator[Any, None, Any]:
        yield from ()
        return self._response


class FakeAioChannel:
    """What an application uses of a ``grpc.aio`` channel with interceptors (``unary_unary``), with
    one :class:`FakeAioServer` behind it; like grpc.aio, it keeps the unary-unary interceptors."""

    def __init__(self, server: FakeAioServer, interceptors: Sequence[Any]) -> None:
        self.server = server
        self.interceptors = [i for i in interceptors if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor)]

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
    ) -> FakeAioMultiCallable:
        return FakeAioMultiCallable(self, method, request_serializer, response_deserializer)


class PassThroughAioClient(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(client_call_details, request)


class PassThroughAioServer(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return await continuation(handler_call_details)


class MinimalAioClient(grpc.aio.UnaryUnaryClientInterceptor):
    """Stamps the request with the clock; merges the answer's clock from the trailers, which it
    awaits before it hands the call on."""

    def __init__(self, clock: MinimalClock) -> None:
        self.clock = clock

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        clock = self.clock
        call_id = next(clock.call_ids)
        metadata = grpc.aio.Metadata(
            *(client_call_details.metadata or ()), (MINIMAL_KEY, clock.send(call_id))
        )
        call = await continuation(client_call_details._replace(metadata=metadata), request)
        stamp = minimal_stamp(await call.trailing_metadata())
        if stamp is not None and clock.receive(stamp) != call_id:
            clock.mismatched += 1
        return call


class MinimalAioServer(grpc.aio.ServerInterceptor):
    """:class:`MinimalServer` for grpc.aio: coroutine handlers (unary-unary only), wrapped once each."""

    def __init__(self, clock: MinimalClock) -> None:
        self.clock = clock
        self._wrapped: dict[int, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        entry = self._wrapped.get(id(handler))
        if entry is None or entry[0] is not handler:
            entry = (handler, handler._replace(unary_unary=self._wrap(handler.unary_unary)))
            self._wrapped[id(handler)] = entry
        return entry[1]

    def _wrap(self, behaviour: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
        clock = self.clock

        async def handle(request: Any, context: Any) -> Any:
            stamp = minimal_stamp(context.invocation_metadata())
            call_id = clock.receive(stamp) if stamp is not None else 0
            try:
                return await behaviour(request, context)
            finally:
                context.set_trailing_metadata(
                    (*(context.trailing_metadata() or ()), (MINIMAL_KEY, clock.send(call_id)))
                )

        return handle


def _aio_stub(server: FakeAioServer, interceptors: Sequence[Any]) -> Callable[[bytes], Awaitable[bytes]]:
    """The echo method through ``interceptors``, as an application calls it."""
    channel = FakeAioChannel(server, interceptors)
    return channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)


class AioCounted:
    """An awaited call, counting how often it ran."""

    def __init__(self, call: Callable[[], Awaitable[Any]]) -> None:
        self._call = call
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1
        await self._call()


@dataclass
class AioSetUps:
    """The measured calls of the aio part and what its check reads after the rounds."""

    calls: dict[str, AioCounted]
    agents: list[cutwatch.agent.Agent]
    cutwatch_server: FakeAioServer
    minimal_server: FakeAioServer
    minimal_clocks: tuple[MinimalClock, MinimalClock]

    @classmethod
    async def create(cls) -> AioSetUps:
        handlers = _handler(_aio_echo)
        calls: dict[str, AioCounted] = {}

        passthrough = _aio_stub(FakeAioServer(PassThroughAioServer(), handlers), [PassThroughAioClient()])
        calls["passthrough"] = AioCounted(lambda: passthrough(PAYLOAD))

        server_clock, client_clock = MinimalClock("bench-server"), MinimalClock("bench-client")
        minimal_server = FakeAioServer(MinimalAioServer(server_clock), handlers)
        for i in range(EXTRA_AGENTS):
            await _aio_stub(minimal_server, [MinimalAioClient(MinimalClock(f"bench-peer{i}"))])(PAYLOAD)
        minimal = _aio_stub(minimal_server, [MinimalAioClient(client_clock)])
        calls["minimal"] = AioCounted(lambda: minimal(PAYLOAD))

        server_agent = cutwatch.agent.Agent("bench-server", collector=None).start()
        client_agent = cutwatch.agent.Agent("bench-client", collector=None).start()
        extras = [cutwatch.agent.Agent(f"bench-peer{i}", collector=None).start() for i in range(EXTRA_AGENTS)]
        agents = [server_agent, client_agent, *extras]
        cutwatch_server = FakeAioServer(server_agent.aio_server_interceptor(), handlers)
        for extra in extras:
            await _aio_stub(cutwatch_server, extra.aio_client_interceptors())(PAYLOAD)
        cutwatch_stub = _aio_stub(cutwatch_server, client_agent.aio_client_interceptors())
        calls["cutwatch"] = AioCounted(lambda: cutwatch_stub(PAYLOAD))

        return cls(
            calls=calls,
            agents=agents,
            cutwatch_server=cutwatch_server,
            minimal_server=minimal_server,
            minimal_clocks=(server_clock, client_clock),
        )

    def close(self) -> None:
        for agent in self.agents:
            agent.close()

    def check(self) -> dict[str, Any]:
        """As :meth:`SetUps.check`, for the aio part's two clock pairs."""
        server_agent, client_agent = self.agents[0], self.agents[1]
        cw = _core_check(
            client_agent.process_id,
            client_agent.clock,
            client_agent.stats(),
            server_agent.process_id,
            server_agent.clock,
            server_agent.stats(),
            self.calls["cutwatch"].count,
        )
        minimal = _minimal_check(*self.minimal_clocks)
        request, answer = self.cutwatch_server.last_metadata
        minimal_request, minimal_answer = self.minimal_server.last_metadata
        return {
            "cutwatch": cw,
            "minimal": minimal,
            "stamp_bytes": {
                "cutwatch_request": len(_value(request, cutwatch.agent.STAMP_METADATA_KEY)),
                "cutwatch_answer": len(_value(answer, cutwatch.agent.STAMP_METADATA_KEY)),
                "minimal_request": len(_value(minimal_request, MINIMAL_KEY)),
                "minimal_answer": len(_value(minimal_answer, MINIMAL_KEY)),
            },
            "stamp_travelled": cw["travelled"] and minimal["travelled"],
        }


# Measuring -------------------------------------------------------------------
def measure(calls: int, rounds: int, pin: int | None) -> tuple[Samples, dict[str, Any]]:
    """Every set-up in interleaved rounds, on one thread that looks like grpcio's polling thread."""

    def work() -> tuple[Samples, dict[str, Any]]:
        setups = SetUps.create()
        try:
            samples = Samples(
                latencies_ns={c: [] for c in CONFIGS}, round_medians_ns={c: [] for c in CONFIGS}
            )
            clock = time.perf_counter_ns
            for index in range(rounds):
                for config in round_order(index, CONFIGS):
                    call = setups.calls[config]
                    for _ in range(WARMUP_CALLS):
                        call()
                    block = [0] * calls
                    for i in range(calls):
                        start = clock()
                        call()
                        block[i] = clock() - start
                    samples.add(config, block)
                gc.collect()
            check = setups.check()
            check["unpinned_threads"] = unpinned_threads(pin) if pin is not None else -1
            return samples, check
        finally:
            setups.close()

    return on_serving_thread(work)  # type: ignore[no-any-return]


def measure_aio(calls: int, rounds: int, pin: int | None) -> tuple[Samples, dict[str, Any]]:
    """The aio part's set-ups in interleaved rounds, awaited one after another in one event loop."""

    async def work() -> tuple[Samples, dict[str, Any]]:
        setups = await AioSetUps.create()
        try:
            samples = Samples(
                latencies_ns={c: [] for c in INTERCEPTED}, round_medians_ns={c: [] for c in INTERCEPTED}
            )
            clock = time.perf_counter_ns
            for index in range(rounds):
                for config in round_order(index, INTERCEPTED):
                    call = setups.calls[config]
                    for _ in range(WARMUP_CALLS):
                        await call()
                    block = [0] * calls
                    for i in range(calls):
                        start = clock()
                        await call()
                        block[i] = clock() - start
                    samples.add(config, block)
                gc.collect()
            check = setups.check()
            check["unpinned_threads"] = unpinned_threads(pin) if pin is not None else -1
            return samples, check
        finally:
            setups.close()

    return asyncio.run(work())


# Summaries -------------------------------------------------------------------
def summarise(samples: Samples) -> dict[str, Any]:
    """Medians and p99 in microseconds; what each interceptor pair adds to the pass-through pair;
    ratios to the minimal pair (interceptors: of what they add; cores, when measured: of the core's
    own time)."""
    configs = tuple(samples.latencies_ns)
    median = {c: statistics.median(samples.latencies_ns[c]) for c in configs}
    out: dict[str, Any] = {"calls_per_config": len(samples.latencies_ns["passthrough"])}
    for config in configs:
        lat = samples.latencies_ns[config]
        out[config] = {
            "median_us": round(median[config] / 1000, 2),
            "p99_us": round(percentile(lat, 0.99) / 1000, 2),
            "round_spread_us": round(
                (max(samples.round_medians_ns[config]) - min(samples.round_medians_ns[config])) / 1000, 2
            ),
        }
    for config in ("minimal", "cutwatch"):
        rounds = zip(samples.round_medians_ns["passthrough"], samples.round_medians_ns[config], strict=True)
        out[config]["added_us"] = round((median[config] - median["passthrough"]) / 1000, 2)
        out[config]["added_us_round_median"] = round(statistics.median(b - a for a, b in rounds) / 1000, 2)
    added_minimal = median["minimal"] - median["passthrough"]
    added_cutwatch = median["cutwatch"] - median["passthrough"]
    out["ratios"] = {
        "cutwatch_to_minimal": round(median["cutwatch"] / median["minimal"], 2),
        "cutwatch_added_to_minimal_added": (
            round(added_cutwatch / added_minimal, 2) if added_minimal > 0 else float("inf")
        ),
    }
    if "cutwatch_core" in median:
        out["ratios"]["cutwatch_core_to_minimal_core"] = round(
            median["cutwatch_core"] / median["minimal_core"], 2
        )
        out["ratios"]["cutwatch_core_share_of_cutwatch_added"] = (
            round(median["cutwatch_core"] / added_cutwatch, 2) if added_cutwatch > 0 else float("inf")
        )
    return out


# Output ----------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return describe_machine("grpcio", "cutwatch")


LABELS = {
    "passthrough": "pass-through pair",
    "minimal": "minimal clock pair",
    "cutwatch": "cutwatch",
    "minimal_core": "minimal clock work",
    "cutwatch_core": "cutwatch event core",
}


PART_TITLES = {
    "sync": "sync interceptors (grpc.intercept_channel, grpc.ServerInterceptor)",
    "aio": "aio interceptors (grpc.aio client and server interceptors, one event loop)",
}


def print_report(result: dict[str, Any]) -> None:
    cfg, mach = result["config"], result["machine"]
    print(
        f"cutwatch interceptors' Python work: {cfg['calls']} calls x {cfg['rounds']} rounds per set-up, "
        f"{cfg['payload_bytes']}-byte unary echo over a fake transport (no gRPC core)"
    )
    print(
        f"machine: {mach['nproc']} CPUs ({mach['cpu_model']}), Python {mach['python']}, "
        f"grpcio {mach['grpcio']}, cutwatch {mach['cutwatch']}"
    )
    print("pinned to CPU " + str(cfg["pinned_cpu"]) if cfg["pinned_cpu"] is not None else "not pinned")
    print(f"clocks: {PREWARM}")
    for part in PARTS:
        if part in result:
            print(f"\n{part}: {PART_TITLES[part]}")
            print_part(result[part]["figures"], result[part]["check"])


def print_part(res: dict[str, Any], check: dict[str, Any]) -> None:
    print(
        f"\n  {'set-up':<22}{'median us':>11}{'p99 us':>10}{'round range':>13}"
        f"{'added us':>10}{'(by round)':>12}"
    )
    for config in CONFIGS:
        if config not in res:
            continue
        row = res[config]
        added = (
            f"{row['added_us']:>10.2f}{row['added_us_round_median']:>12.2f}"
            if "added_us" in row
            else f"{'':>10}{'':>12}"
        )
        spread = row["round_spread_us"]
        print(f"  {LABELS[config]:<22}{row['median_us']:>11.2f}{row['p99_us']:>10.2f}{spread:>13.2f}{added}")
    ratios = res["ratios"]
    print(
        f"\n  cutwatch adds {ratios['cutwatch_added_to_minimal_added']:.2f} x what the minimal pair adds "
        f"(whole calls: {ratios['cutwatch_to_minimal']:.2f} x)"
    )
    if "cutwatch_core_to_minimal_core" in ratios:
        print(
            f"  cutwatch's event core: {ratios['cutwatch_core_to_minimal_core']:.2f} x the minimal clock "
            f"work, {ratios['cutwatch_core_share_of_cutwatch_added']:.0%} of what cutwatch's interceptors add"
        )
    sizes = check["stamp_bytes"]
    print(
        f"  stamps: cutwatch {sizes['cutwatch_request']} bytes out, {sizes['cutwatch_answer']} back; "
        f"minimal {sizes['minimal_request']} out, {sizes['minimal_answer']} back"
    )
    cw = check["cutwatch"]
    print(
        f"  check: stamps travelled {'yes' if check['stamp_travelled'] else 'NO'}; cutwatch clocks "
        f"{cw['client_clock_entries']} and {cw['server_clock_entries']} entries, {cw['calls']} calls, "
        f"requests sent {cw['client_requests_sent']}, responses received {cw['client_responses_received']}, "
        f"untracked {cw['untracked']}, internal errors {cw['internal_errors']}, "
        f"unpinned threads {check['unpinned_threads']}"
    )


def _part_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--part",
        choices=(*PARTS, "both"),
        default="both",
        help="which interceptors to measure (default both)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, calls=5000, rounds=20, doc=__doc__, extra=_part_option)
    pin = pin_as_asked(args)
    started = time.monotonic()
    parts = PARTS if args.part == "both" else (args.part,)
    measured: dict[str, Any] = {}
    for part in parts:
        samples, check = (measure if part == "sync" else measure_aio)(args.calls, args.rounds, pin)
        measured[part] = {"figures": summarise(samples), "check": check}
    result = {
        "config": {**run_config(args, pin, started, PREWARM), "parts": list(parts)},
        "machine": machine(),
        **measured,
    }
    emit(result, args.json, print_report)
    return 0 if all(part["check"]["stamp_travelled"] for part in measured.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
