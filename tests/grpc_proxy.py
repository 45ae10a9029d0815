"""A forwarding gRPC proxy without an agent, for tests of what proxies do to calls.

It serves any unary method and forwards it to one target with the caller's
metadata, as an L7 proxy does. It can hold calls (``hold(predicate)``: the
call waits until :meth:`release`, however long ago its caller gave up) and
strip the ``cutwatch-stamp-bin`` header both ways (``strip=True``: a proxy
that drops headers it does not know).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

STAMP = "cutwatch-stamp-bin"
TIMEOUT = 30.0


class ForwardingProxy:
    """Listens on 127.0.0.1 and forwards every unary call to ``target``."""

    def __init__(self, target: str, *, strip: bool = False, workers: int = 8) -> None:
        self.strip = strip
        self.forwarded = 0
        self.held = 0
        self._hold: Callable[[bytes], bool] = lambda request: False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(target)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        self._server.add_generic_rpc_handlers((_Forwarder(self),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def hold(self, predicate: Callable[[bytes], bool]) -> None:
        """Hold every call whose serialised request ``predicate`` accepts, until :meth:`release`."""
        self._released.clear()
        self._hold = predicate

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._server.stop(0).wait(5)
        self._channel.close()

    def _metadata(self, metadata: Any) -> tuple[tuple[str, Any], ...]:
        return tuple(
            (key, value)
            for key, value in (metadata or ())
            if not key.startswith("grpc-") and not (self.strip and key == STAMP)
        )

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        if self._hold(request):
            with self._lock:
                self.held += 1
            self._released.wait(TIMEOUT)
        call = self._channel.unary_unary(method)
        try:
            response, outcome = call.with_call(
                request, metadata=self._metadata(context.invocation_metadata()), timeout=TIMEOUT
            )
        except grpc.RpcError as exc:
            context.set_trailing_metadata(self._metadata(exc.trailing_metadata()))  # type: ignore[attr-defined]
            context.abort(exc.code(), exc.details())  # type: ignore[attr-defined]
        with self._lock:
            self.forwarded += 1
        context.set_trailing_metadata(self._metadata(outcome.trailing_metadata()))
        return response  # type: ignore[no-any-return]


class _Forwarder(grpc.GenericRpcHandler):
    def __init__(self, proxy: ForwardingProxy) -> None:
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._proxy.forward(method, request, context)
        )
