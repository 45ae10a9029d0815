"""A forwarding gRPC proxy without an agent, for tests of what proxies do to calls.

It serves any unary method and forwards it to one target with the caller's
metadata, as an L7 proxy does. It can hold calls (``hold(predicate)``: the
call waits until :meth:`release`, however long ago its caller gave up) and
strip cutwatch's stamp headers (``cutwatch-stamp-bin``, ``cutwatch-bounced-bin``)
both ways (``strip=True``: a proxy that drops headers it does not know).

Run as a script it is a proxy process of the real-process tests::

    python grpc_proxy.py --target ADDRESS --ready-file FILE [--strip]

It writes ``proxy ADDRESS`` to the ready file once it serves; SIGUSR1 stops
stripping, and it prints ``stripping off`` once no call it stripped is still
on its way; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from cutwatch._signals import set_on_signals

STAMPS = ("cutwatch-stamp-bin", "cutwatch-bounced-bin")
TIMEOUT = 30.0


class ForwardingProxy:
    """Listens on 127.0.0.1 and forwards every unary call to ``target``."""

    def __init__(self, target: str, *, strip: bool = False, workers: int = 8) -> None:
        self.strip = strip
        self.stripping = 0
        """Calls forwarded without their stamp that have not ended yet."""
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

    def stop_stripping(self) -> bool:
        """Forward stamps from now on; True once no call forwarded without its stamp is left."""
        with self._lock:
            self.strip = False
            return self.stripping == 0

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._server.stop(0).wait(5)
        self._channel.close()

    @staticmethod
    def _metadata(metadata: Any, strip: bool) -> tuple[tuple[str, Any], ...]:
        return tuple(
            (key, value)
            for key, value in (metadata or ())
            if not key.startswith("grpc-") and not (strip and key in STAMPS)
        )

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            stripped = self.strip
            self.stripping += stripped
        try:
            return self._forward(method, request, context, stripped)
        finally:
            with self._lock:
                self.stripping -= stripped

    def _forward(self, method: str, request: bytes, context: grpc.ServicerContext, strip: bool) -> bytes:
        if self._hold(request):
            with self._lock:
                self.held += 1
            self._released.wait(TIMEOUT)
        call = self._channel.unary_unary(method)
        try:
            response, outcome = call.with_call(
                request, metadata=self._metadata(context.invocation_metadata(), strip), timeout=TIMEOUT
            )
        except grpc.RpcError as exc:
            context.set_trailing_metadata(self._metadata(exc.trailing_metadata(), strip))  # type: ignore[attr-defined]
            context.abort(exc.code(), exc.details())  # type: ignore[attr-defined]
        with self._lock:
            self.forwarded += 1
        context.set_trailing_metadata(self._metadata(outcome.trailing_metadata(), strip))
        return response  # type: ignore[no-any-return]


class _Forwarder(grpc.GenericRpcHandler):
    def __init__(self, proxy: ForwardingProxy) -> None:
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._proxy.forward(method, request, context)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A forwarding gRPC proxy without an agent.")
    parser.add_argument("--target", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--strip", action="store_true", help="drop cutwatch stamps both ways")
    args = parser.parse_args(argv)
    proxy = ForwardingProxy(args.target, strip=args.strip, workers=32)
    stop = threading.Event()
    stop_stripping = threading.Event()
    set_on_signals(stop, signal.SIGTERM)
    set_on_signals(stop_stripping, signal.SIGUSR1)
    partial = args.ready_file.with_suffix(".partial")
    partial.write_text(f"proxy {proxy.address}\n")
    partial.replace(args.ready_file)
    announced = False
    while not stop.wait(0.05):
        if stop_stripping.is_set() and not announced and proxy.stop_stripping():
            print("stripping off", flush=True)
            announced = True
    proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
