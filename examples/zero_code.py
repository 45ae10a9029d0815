"""A plain gRPC service and its client, with no cutwatch in them, to run under cutwatch unchanged.

    pip install opentelemetry-distro
    export CUTWATCH_COLLECTOR=127.0.0.1:7070
    CUTWATCH_SERVICE=echo opentelemetry-instrument python zero_code.py serve
    CUTWATCH_SERVICE=caller opentelemetry-instrument python zero_code.py call 127.0.0.1:PORT

``serve`` prints the address it listens on, ``call`` calls it three times;
both then run until they are stopped (Ctrl-C, SIGTERM), so that the
collector can take cuts of them. ``--aio`` uses ``grpc.aio`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from concurrent import futures

import grpc
import grpc.aio

METHOD = "/demo.Echo/Echo"


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


async def echo_aio(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def handler(function: object) -> grpc.GenericRpcHandler:
    """Raw bytes in and out: no generated code needed."""
    return grpc.method_handlers_generic_handler(
        "demo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(function)}
    )


def serve(stop: threading.Event) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler(echo),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop.wait()
    server.stop(grace=1).wait()


def call(address: str, stop: threading.Event) -> None:
    with grpc.insecure_channel(address) as channel:
        say = channel.unary_unary(METHOD)
        for name in ("ada", "grace", "barbara"):
            print(say(f"hello, {name}".encode(), timeout=10).decode(), flush=True)
        print("3 calls answered", flush=True)
        stop.wait()


async def until(stop: threading.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(0.1)


async def serve_aio(stop: threading.Event) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(echo_aio),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await until(stop)
    await server.stop(grace=1)


async def call_aio(address: str, stop: threading.Event) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        say = channel.unary_unary(METHOD)
        for name in ("ada", "grace", "barbara"):
            answer = await say(f"hello, {name}".encode(), timeout=10)
            print(answer.decode(), flush=True)
        print("3 calls answered", flush=True)
        await until(stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "call"])
    parser.add_argument("address", nargs="?", help="the server to call (call)")
    parser.add_argument("--aio", action="store_true", help="use grpc.aio")
    args = parser.parse_args()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.mode == "serve" and args.aio:
        asyncio.run(serve_aio(stop))
    elif args.mode == "serve":
        serve(stop)
    elif args.aio:
        asyncio.run(call_aio(args.address, stop))
    else:
        call(args.address, stop)


if __name__ == "__main__":
    main()
