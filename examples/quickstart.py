"""Quickstart: a sync gRPC server and client, each with a cutwatch agent.

Run it with ``python examples/quickstart.py [EVENT_LOG]``. The two services
talk over real gRPC on 127.0.0.1; every request and response carries the
sender's vector clock in the ``cutwatch-stamp-bin`` metadata, so afterwards
each agent's clock shows what it knows of the other. Raw-bytes handlers keep
the example free of generated code; a servicer from ``*_pb2_grpc`` is
instrumented the same way.
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc

import cutwatch

WORKERS = 4


def greet(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"hello, " + request


def main(event_log: str | None = None) -> None:
    greeter = cutwatch.Agent(service="greeter", event_log=event_log).start()
    frontend = cutwatch.Agent(service="frontend", event_log=event_log).start()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKERS),
        interceptors=[greeter.server_interceptor(max_workers=WORKERS)],
    )
    handler = grpc.method_handlers_generic_handler(
        "demo.Greeter", {"Greet": grpc.unary_unary_rpc_method_handler(greet)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            channel = grpc.intercept_channel(plain, frontend.client_interceptor())
            say_hello = channel.unary_unary("/demo.Greeter/Greet")
            for name in (b"ada", b"grace"):
                print(say_hello(name, timeout=10).decode())
    finally:
        server.stop(grace=None)
        frontend.close()
        greeter.close()

    for agent in (frontend, greeter):
        clock = ", ".join(f"{pid}={value}" for pid, value in sorted(agent.clock.items()))
        print(f"{agent.process_id} clock: {clock}")
    print("greeter's clock happened before frontend's:", greeter.clock.happened_before(frontend.clock))
    stats = frontend.stats()
    print(
        f"frontend: {stats.requests_sent} requests sent, {stats.responses_received} responses received, "
        f"{stats.untracked} untracked, {stats.internal_errors} internal errors"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
