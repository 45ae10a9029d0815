"""Every gRPC server and channel of a process under cutwatch, without a change to its code.

:func:`instrument` patches gRPC's factories (``grpc.server``,
``grpc.aio.server``, ``grpc.insecure_channel``, ``grpc.secure_channel`` and
their ``grpc.aio`` siblings) so that what the application makes afterwards
carries cutwatch's interceptors; :func:`uninstrument` puts them back. This is
what ``opentelemetry-instrument`` runs, through
:class:`cutwatch.agent.instrumentation.CutwatchInstrumentor`.

The host application must never suffer for it, hence:

* the agent is built, from the environment (``cutwatch.Agent()``), when the
  first server or channel is made: a process that makes none never builds
  one. If it cannot be built, that is logged once and gRPC runs as it would
  without cutwatch;
* a server or channel the application instruments with cutwatch itself is
  left alone, and so are cutwatch's own connections (:mod:`cutwatch._own`);
* on sync channels cutwatch's interceptor goes beneath other wrappers of the
  factory (OpenTelemetry's), which thus stay outside it, the order that
  :mod:`cutwatch.integrations.opentelemetry` recommends; on servers and aio
  channels it goes last in the list, after OpenTelemetry's;
* a failure in this glue leaves the call as the application made it (its
  interceptors read once, into a list, so that an iterator reaches gRPC whole).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import wrapt

from cutwatch._own import is_own_grpc
from cutwatch.agent._agent import Agent
from cutwatch.agent._metadata import find_stamp
from cutwatch.proto import (
    StreamStreamClientBase,
    StreamUnaryClientBase,
    UnaryStreamClientBase,
    UnaryUnaryClientBase,
)

__all__ = ["AGENT_PARAMETERS", "instrument", "instrumented_agent", "uninstrument"]

_LOG = logging.getLogger("cutwatch.agent.instrument")

_SERVER = (
    "thread_pool",
    "handlers",
    "interceptors",
    "options",
    "maximum_concurrent_rpcs",
    "compression",
    "xds",
)
_AIO_SERVER = (
    "migration_thread_pool",
    "handlers",
    "interceptors",
    "options",
    "maximum_concurrent_rpcs",
    "compression",
)
_AIO_INSECURE = ("target", "options", "compression", "interceptors")
_AIO_SECURE = ("target", "credentials", "options", "compression", "interceptors")
"""The factories' positional parameters up to ``interceptors`` and past it (as grpcio 1.62 on has them)."""

_PROXY: type[Any] = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)
"""What wrapt's function wrappers are (wrapt 2 calls the base of them all ``BaseObjectProxy``)."""

_Args = tuple[Any, ...]
_Kwargs = dict[str, Any]
_Adder = Callable[[Callable[[], Agent | None], list[Any], _Kwargs], list[Any]]
"""Given the agent (built on demand), the interceptors there are and the call's arguments:
the interceptors to append."""


class _UnlessStamped(
    UnaryUnaryClientBase, UnaryStreamClientBase, StreamUnaryClientBase, StreamStreamClientBase
):
    """cutwatch's client interceptor on a channel the application may intercept again, with its own.

    Such an application interceptor sits outside this one and stamps first:
    a call that arrives here stamped already passes through untouched, so it
    carries one stamp and is counted once.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        if find_stamp(client_call_details.metadata) is not None:
            return continuation(client_call_details, request)
        return self._inner.intercept_unary_unary(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        if find_stamp(client_call_details.metadata) is not None:
            return continuation(client_call_details, request)
        return self._inner.intercept_unary_stream(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        if find_stamp(client_call_details.metadata) is not None:
            return continuation(client_call_details, request_iterator)
        return self._inner.intercept_stream_unary(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        if find_stamp(client_call_details.metadata) is not None:
            return continuation(client_call_details, request_iterator)
        return self._inner.intercept_stream_stream(continuation, client_call_details, request_iterator)


def _sync_server_interceptors(
    agent: Callable[[], Agent | None], existing: list[Any], kwargs: _Kwargs
) -> list[Any]:
    from cutwatch.agent._server import ServerInterceptor

    if any(isinstance(interceptor, ServerInterceptor) for interceptor in existing):
        return []
    built = agent()
    return [] if built is None else [built.server_interceptor()]


def _aio_server_interceptors(
    agent: Callable[[], Agent | None], existing: list[Any], kwargs: _Kwargs
) -> list[Any]:
    from cutwatch.agent._aio_server import AioServerInterceptor

    if any(isinstance(interceptor, AioServerInterceptor) for interceptor in existing):
        return []
    built = agent()
    if built is None:
        return []
    limit = kwargs.get("maximum_concurrent_rpcs")
    return [built.aio_server_interceptor(limit if isinstance(limit, int) and limit > 0 else None)]


def _aio_client_interceptors(
    agent: Callable[[], Agent | None], existing: list[Any], kwargs: _Kwargs
) -> list[Any]:
    from cutwatch.agent._aio_client import (
        AioStreamStreamInterceptor,
        AioStreamUnaryInterceptor,
        AioUnaryStreamInterceptor,
        AioUnaryUnaryInterceptor,
    )

    ours = (
        AioUnaryUnaryInterceptor,
        AioUnaryStreamInterceptor,
        AioStreamUnaryInterceptor,
        AioStreamStreamInterceptor,
    )
    if any(isinstance(interceptor, ours) for interceptor in existing):
        return []
    built = agent()
    return [] if built is None else list(built.aio_client_interceptors())


def _materialised(args: _Args, kwargs: _Kwargs, index: int) -> tuple[_Args, _Kwargs, list[Any] | None]:
    """The call with its interceptors (at ``index``, or by name) made a list, and that list.

    None instead of the list leaves the call alone: what is there is not iterable, for gRPC
    to refuse in its own words. What the application's own iterator raises goes up as it
    would from gRPC, which reads it too.
    """
    positional = len(args) > index
    given = args[index] if positional else kwargs.get("interceptors")
    if given is None:
        return args, kwargs, []
    try:
        iterator = iter(given)
    except TypeError:
        return args, kwargs, None
    existing = list(iterator)
    if positional:
        return (*args[:index], existing, *args[index + 1 :]), kwargs, existing
    return args, {**kwargs, "interceptors": existing}, existing


@dataclass
class _Patch:
    module: Any
    name: str
    ours: Any
    """Our ``wrapt.FunctionWrapper``, around what it found there (or beneath other wrappers)."""


class _Instrumentation:
    """One ``instrument()`` until its ``uninstrument()``: the agent and the patches."""

    def __init__(self, agent: Agent | None, agent_kwargs: _Kwargs) -> None:
        self._given = agent
        self._agent_kwargs = agent_kwargs
        self._agent = agent
        self._failed = False
        self.active = True
        self._lock = threading.Lock()
        self._patches: list[_Patch] = []
        self._reported = False

    # The agent ------------------------------------------------------------------------
    def agent(self) -> Agent | None:
        """The agent for a new server or channel; None: leave it alone."""
        if not self.active or self._failed or is_own_grpc():
            return None
        if self._agent is not None:
            return self._agent
        with self._lock:
            if self._agent is None and self.active and not self._failed:
                try:
                    self._agent = Agent(**self._agent_kwargs).start()
                except Exception as exc:
                    self._failed = True
                    _LOG.warning("cutwatch: gRPC runs without cutwatch, its agent cannot start: %s", exc)
                    return None
                atexit.register(self.close)
            return self._agent

    @property
    def current(self) -> Agent | None:
        return self._agent

    def close(self) -> None:
        """Stop instrumenting; close the agent if this instrumentation built it."""
        with self._lock:
            self.active = False
            built = self._agent if self._given is None else None
            self._agent = self._given
        if built is not None:
            built.close()

    def report(self, what: str) -> None:
        """Log a failure of the glue itself once (the call then goes as the application made it)."""
        if not self._reported:
            self._reported = True
            _LOG.warning("cutwatch: %s left uninstrumented after an internal error", what, exc_info=True)

    # The patches ----------------------------------------------------------------------
    def patch(self, module: Any, name: str, wrapper: Callable[..., Any], *, beneath: bool = False) -> None:
        """Wrap ``module.name``; ``beneath``: under wrapt wrappers that are there already."""
        holder, inner = None, getattr(module, name)
        while beneath and isinstance(inner, _PROXY):
            holder, inner = inner, inner.__wrapped__
        ours = wrapt.FunctionWrapper(inner, wrapper)
        if holder is None:
            setattr(module, name, ours)
        else:
            holder.__wrapped__ = ours
        self._patches.append(_Patch(module, name, ours))

    def unpatch(self) -> None:
        """Take our wrappers out; one another wrapper hides stays in place, inert (``active`` is off)."""
        for patch in reversed(self._patches):
            holder, item = None, getattr(patch.module, patch.name)
            while item is not patch.ours and isinstance(item, _PROXY):
                holder, item = item, item.__wrapped__
            if item is not patch.ours:
                continue
            if holder is None:
                setattr(patch.module, patch.name, patch.ours.__wrapped__)
            else:
                holder.__wrapped__ = patch.ours.__wrapped__
        self._patches.clear()

    # The wrappers (wrapt's signature) -------------------------------------------------------
    def interceptors_wrapper(self, what: str, params: Sequence[str], adder: _Adder) -> Callable[..., Any]:
        """A wrapper for a factory that takes ``interceptors``: it appends cutwatch's."""
        index = params.index("interceptors")

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: _Args, kwargs: _Kwargs) -> Any:
            # From here on the call goes with the list, whatever happens: an iterator read here
            # would reach gRPC empty, and the application's own interceptors would be lost.
            args, kwargs, existing = _materialised(args, kwargs, index)
            if existing is None:
                return wrapped(*args, **kwargs)
            try:
                call_args, call_kwargs = self._with_interceptors(args, kwargs, existing, params, adder)
            except Exception:
                self.report(what)
                call_args, call_kwargs = args, kwargs
            return wrapped(*call_args, **call_kwargs)

        return wrapper

    def _with_interceptors(
        self, args: _Args, kwargs: _Kwargs, existing: list[Any], params: Sequence[str], adder: _Adder
    ) -> tuple[_Args, _Kwargs]:
        index = params.index("interceptors")
        if len(args) > len(params):
            return args, kwargs  # not a call grpc accepts: let grpc say so
        moved = dict(zip(params[index:], args[index:], strict=False))
        if set(moved) & set(kwargs):
            return args, kwargs  # not a call grpc accepts: let grpc say so
        if not self.active or is_own_grpc():
            return args, kwargs
        # Passed by name, so that another instrumentation that reads kwargs sees them too.
        call_kwargs = {**kwargs, **moved}
        added = adder(self.agent, existing, call_kwargs)
        if not added:
            return args, kwargs
        call_kwargs["interceptors"] = [*existing, *added]
        return args[:index], call_kwargs

    def channel_wrapper(
        self, wrapped: Callable[..., Any], instance: Any, args: _Args, kwargs: _Kwargs
    ) -> Any:
        """For ``grpc.insecure_channel`` and ``grpc.secure_channel``: the channel, intercepted."""
        channel = wrapped(*args, **kwargs)
        try:
            agent = self.agent()
            if agent is None:
                return channel
            return grpc.intercept_channel(channel, _UnlessStamped(agent.client_interceptor()))
        except Exception:
            self.report("a channel")
            return channel


_STATE: _Instrumentation | None = None
_STATE_LOCK = threading.Lock()
AGENT_PARAMETERS = frozenset(inspect.signature(Agent).parameters)


def instrument(agent: Agent | None = None, **agent_kwargs: Any) -> None:
    """Put every gRPC server and channel the process makes from now on under cutwatch.

    ``agent`` is the agent to use (yours to start and close); without one,
    ``cutwatch.Agent(**agent_kwargs)`` is built and started when the first
    server or channel is made, reading what it is not given from the
    environment, and closed by :func:`uninstrument` or at exit. Calling it
    again while instrumented changes nothing.
    """
    global _STATE
    if agent is not None and agent_kwargs:
        raise TypeError("instrument() takes an agent or the arguments to build one, not both")
    unknown = sorted(set(agent_kwargs) - AGENT_PARAMETERS)
    if unknown:
        raise TypeError(f"cutwatch.Agent() has no parameters {', '.join(unknown)}")
    with _STATE_LOCK:
        if _STATE is not None:
            _LOG.debug("cutwatch: gRPC is instrumented already")
            return
        state = _Instrumentation(agent, agent_kwargs)
        state.patch(
            grpc, "server", state.interceptors_wrapper("a server", _SERVER, _sync_server_interceptors)
        )
        state.patch(
            grpc.aio,
            "server",
            state.interceptors_wrapper("an aio server", _AIO_SERVER, _aio_server_interceptors),
        )
        state.patch(grpc, "insecure_channel", state.channel_wrapper, beneath=True)
        state.patch(grpc, "secure_channel", state.channel_wrapper, beneath=True)
        for name, params in (("insecure_channel", _AIO_INSECURE), ("secure_channel", _AIO_SECURE)):
            wrapper = state.interceptors_wrapper("an aio channel", params, _aio_client_interceptors)
            state.patch(grpc.aio, name, wrapper)
        _STATE = state


def uninstrument() -> None:
    """Restore gRPC's factories and close the agent :func:`instrument` built (not one it was given).

    Servers and channels made meanwhile keep their interceptors; with the
    agent closed they still stamp, but no longer take part in snapshots.
    """
    global _STATE
    with _STATE_LOCK:
        state, _STATE = _STATE, None
    if state is not None:
        state.unpatch()
        atexit.unregister(state.close)
        state.close()


def instrumented_agent() -> Agent | None:
    """The agent of the current instrumentation, once built (None before the first server or channel)."""
    state = _STATE
    return state.current if state is not None else None
