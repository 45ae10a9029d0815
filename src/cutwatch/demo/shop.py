"""A small shop service, instrumented with cutwatch: processes of `cutwatch demo` and of the deadlock tests.

What each RPC does is given on the command line, as steps run in order::

    python -m cutwatch.demo.shop --name orders --workers 2 --collector 127.0.0.1:7070 \\
        --ready-file orders.ready --peers-file peers.json \\
        --rpc "Place=lock:book,call:inventory.Reserve" --rpc "Echo=sleep:20-60"

Steps:

- ``lock:NAME``: take the cutwatch lock ``NAME`` of this process; it is held
  until the handler returns (so across every later step, calls included);
- ``call:SERVICE.METHOD``: a blocking call to another shop service (by its
  ``--name``), with the rest of this call's deadline;
- ``sleep:MS`` or ``sleep:MIN-MAX``: wait that long (uniformly drawn).

With ``--otel`` the service traces its calls with the OpenTelemetry SDK
(opentelemetry-instrumentation-grpc's interceptors, stacked as cutwatch
recommends), so its tasks, and deadlock reports, carry trace and span ids.

Every service also answers ``Ping`` on its main server, which does nothing:
a harmless call that lets a caller's channel learn which process answers on
it (a client interceptor knows its callee's process id only after a first
answer).

The main server is a sync gRPC server with ``agent.server_interceptor(
max_workers=W, edge=True)``: the shop's front door, called by clients
without an agent (a load generator, a test), whose requests are input from
outside rather than messages that lost their stamp. Its W workers are the pool whose exhaustion the deadlock
tests provoke. ``--no-tell-pool`` leaves ``max_workers`` out (the agent reads
the pool's size from the server's executor), and ``--workers default`` also
leaves it out of the executor: ``ThreadPoolExecutor()``, whose size Python
picks (``min(32, cpus + 4)``). Introspection lives on a separate, uninstrumented admin server
(a debug port), so that reading a process never takes a worker of the pool
being read: ``Tasks`` returns ``agent.tasks()`` and the worker pools as JSON,
``Warm`` pings every peer through the instrumented channels, ``Stats`` the
calls served and failed.

Startup: the service writes ``NAME ADDRESS ADMIN_ADDRESS PROCESS_ID`` to
``--ready-file`` once it serves and the collector knows it, then waits for
``--peers-file`` (a JSON object: service name -> main address, or a list
of addresses of the service's replicas, called through one channel with the
``round_robin`` load balancer) and serves until SIGTERM. A call that needs
a peer before the peers file exists fails with UNAVAILABLE.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import threading
import time
from collections import Counter
from concurrent import futures
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.demo._process import Behaviour, service_process, struct, unary, wait_for_json, write_atomically

ADMIN_SERVICE = "shop.Admin"
ADMIN_WORKERS = 4
DEFAULT_CALL_TIMEOUT = 60.0
"""Longest an outbound call may take when the inbound call has no (shorter) deadline."""

_LOG = logging.getLogger("shop")
_STEP = re.compile(r"^(lock|call|sleep):(.+)$")
_SLEEP = re.compile(r"^(\d+(?:\.\d*)?)(?:-(\d+(?:\.\d*)?))?$")
_CALL = re.compile(r"^([A-Za-z0-9_\-]+)\.([A-Za-z][A-Za-z0-9_]*)$")


def grpc_service(name: str) -> str:
    """The gRPC service of the shop service ``name``: ``orders`` serves ``shop.Orders``."""
    return f"shop.{name[:1].upper()}{name[1:]}"


def method_path(service: str, method: str) -> str:
    """``/shop.Orders/Place`` for ``("orders", "Place")``."""
    return f"/{grpc_service(service)}/{method}"


# Configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    kind: str
    """``lock``, ``call`` or ``sleep``."""
    lock: str = ""
    service: str = ""
    method: str = ""
    low_ms: float = 0.0
    high_ms: float = 0.0


def parse_rpc(text: str) -> tuple[str, list[Step]]:
    """``NAME=STEP,STEP,...`` as an RPC name and its steps; raises ValueError on anything else."""
    name, sep, body = text.partition("=")
    name = name.strip()
    if not sep or not re.match(r"^[A-Z][A-Za-z0-9_]*$", name):
        raise ValueError(f"{text!r}: expected NAME=STEP,... with NAME like Place")
    steps: list[Step] = []
    for part in (p.strip() for p in body.split(",")):
        if not part:
            continue
        match = _STEP.match(part)
        if match is None:
            raise ValueError(f"{part!r}: a step is lock:NAME, call:SERVICE.METHOD or sleep:MS[-MS]")
        kind, arg = match.groups()
        if kind == "lock":
            steps.append(Step("lock", lock=arg))
        elif kind == "call":
            call = _CALL.match(arg)
            if call is None:
                raise ValueError(f"{part!r}: expected call:SERVICE.METHOD")
            steps.append(Step("call", service=call.group(1), method=call.group(2)))
        else:
            sleep = _SLEEP.match(arg)
            if sleep is None:
                raise ValueError(f"{part!r}: expected sleep:MS or sleep:MIN-MAX")
            low = float(sleep.group(1))
            high = float(sleep.group(2)) if sleep.group(2) else low
            if high < low:
                raise ValueError(f"{part!r}: MIN is above MAX")
            steps.append(Step("sleep", low_ms=low, high_ms=high))
    return name, steps


# The service ---------------------------------------------------------------------------------------
class Shop:
    """One shop service: configured RPCs, its peers, and what it has served."""

    def __init__(
        self,
        agent: cutwatch.Agent,
        name: str,
        rpcs: dict[str, list[Step]],
        call_timeout: float,
        otel_client: Any = None,
    ) -> None:
        self.agent = agent
        self._otel_client = otel_client
        self.name = name
        self.rpcs = rpcs
        self.call_timeout = call_timeout
        self.handled: Counter[str] = Counter()
        """Calls served to the end, by RPC name: the state this process shows in every cut."""
        self.failed: Counter[str] = Counter()
        self._lock = threading.Lock()  # counters and peers, between threads
        self._peers: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, grpc.UnaryUnaryMultiCallable[Struct, Struct]] = {}
        agent.register_state("handled", self._handled_state)

    def _handled_state(self) -> dict[str, int]:
        with self._lock:
            return dict(self.handled)

    # Peers ----------------------------------------------------------------------------------------
    def connect(self, peers: dict[str, list[str]]) -> None:
        """One instrumented channel per peer: its client interceptor learns who answers on it."""
        with self._lock:
            for service, addresses in peers.items():
                if service != self.name and service not in self._peers:
                    raw = peer_channel(addresses)
                    channel = grpc.intercept_channel(raw, self.agent.client_interceptor())
                    if self._otel_client is not None:  # OpenTelemetry outside cutwatch on sync channels
                        from opentelemetry.instrumentation.grpc import grpcext

                        channel = grpcext.intercept_channel(channel, self._otel_client)  # type: ignore[no-untyped-call]
                    self._peers[service] = channel

    def stub(self, service: str, method: str) -> grpc.UnaryUnaryMultiCallable[Struct, Struct]:
        path = method_path(service, method)
        with self._lock:
            stub = self._stubs.get(path)
            if stub is None:
                channel = self._peers.get(service)
                if channel is None:
                    raise LookupError(service)
                stub = self._stubs[path] = channel.unary_unary(
                    path, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
                )
            return stub

    def close(self) -> None:
        with self._lock:
            channels, self._peers = list(self._peers.values()), {}
        for channel in channels:
            channel.close()

    # Main server ------------------------------------------------------------------------------------
    def handlers(self) -> grpc.GenericRpcHandler:
        methods = {name: unary(self._behaviour(name, steps)) for name, steps in self.rpcs.items()}
        methods["Ping"] = unary(self.ping)
        return grpc.method_handlers_generic_handler(grpc_service(self.name), methods)

    def ping(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        return struct(process=self.agent.process_id)

    def _behaviour(self, name: str, steps: list[Step]) -> Behaviour:
        def handle(request: Struct, context: grpc.ServicerContext) -> Struct:
            path: list[Any] = []
            try:
                with ExitStack() as held:  # locks are released in reverse order when the handler ends
                    for step in steps:
                        self._run(step, held, path, context)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failed[name] += 1
                call: Any = exc  # gRPC's errors are also calls: they have a code and details
                context.abort(call.code(), f"{self.name}.{name}: {call.details()}")
            with self.agent.atomic(), self._lock:
                self.handled[name] += 1
            return struct(process=self.agent.process_id, rpc=name, path=path)

        return handle

    def _run(self, step: Step, held: ExitStack, path: list[Any], context: grpc.ServicerContext) -> None:
        if step.kind == "lock":
            held.enter_context(self.agent.lock(step.lock))
        elif step.kind == "sleep":
            time.sleep(random.uniform(step.low_ms, step.high_ms) / 1000)
        else:
            try:
                stub = self.stub(step.service, step.method)
            except LookupError:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} does not know {step.service} yet")
            remaining = context.time_remaining()
            timeout = self.call_timeout if remaining is None else min(self.call_timeout, remaining)
            reply = stub(Struct(), timeout=max(timeout, 0.001))
            path.append({"service": step.service, "method": step.method, "reply": MessageToDict(reply)})

    # Admin server -------------------------------------------------------------------------------------
    def admin_handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            ADMIN_SERVICE, {"Tasks": unary(self.tasks), "Warm": unary(self.warm), "Stats": unary(self.stats)}
        )

    def tasks(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        """What a poller without snapshots would read: this process's tasks right now."""
        return struct(
            process=self.agent.process_id,
            service=self.name,
            pools=self.agent.worker_pools,
            tasks_json=json.dumps([task.to_json() for task in self.agent.tasks()]),
            read_at=time.time(),
        )

    def warm(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        """Ping every peer once through its instrumented channel; returns who answered."""
        with self._lock:
            services = sorted(self._peers)
        answered = {}
        for service in services:
            reply = self.stub(service, "Ping")(Struct(), timeout=self.call_timeout)
            answered[service] = reply["process"]
        return struct(answered=answered)

    def stats(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        with self._lock:
            return struct(
                process=self.agent.process_id,
                handled=dict(self.handled),
                failed=dict(self.failed),
                peers=sorted(self._peers),
            )


# Startup ---------------------------------------------------------------------------------------------
def peer_channel(addresses: list[str]) -> grpc.Channel:
    """A channel to one address, or to several replicas (IPv4 ``host:port``) behind ``round_robin``."""
    if len(addresses) == 1:
        return grpc.insecure_channel(addresses[0])
    return grpc.insecure_channel(
        "ipv4:" + ",".join(addresses), options=[("grpc.lb_policy_name", "round_robin")]
    )


def wait_for_peers(path: Path, stop: threading.Event) -> dict[str, list[str]] | None:
    """The services in the peers file (each with its addresses), once it exists; None when told to
    stop first."""
    peers = wait_for_json(path, stop)
    if peers is None:
        return None
    return {str(k): [str(a) for a in v] if isinstance(v, list) else [str(v)] for k, v in peers.items()}


def parse_workers(text: str) -> int | None:
    """``--workers``: a count, or ``default`` (None: the executor's own default size)."""
    if text == "default":
        return None
    workers = int(text)
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    return workers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True, help="The service name (orders, inventory, ...).")
    parser.add_argument("--collector", required=True, help="The cutwatch collector's host:port.")
    parser.add_argument(
        "--workers",
        default="4",
        help="Worker threads of the main server, or 'default' (ThreadPoolExecutor()'s: min(32, cpus + 4)).",
    )
    parser.add_argument(
        "--tell-pool",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Give the pool's size to agent.server_interceptor(max_workers=...) (default: with a --workers "
        "count); without it the agent reads it from the executor.",
    )
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--peers-file", type=Path, required=True)
    parser.add_argument(
        "--rpc", action="append", default=[], metavar="NAME=STEPS", help="An RPC and its steps (repeatable)."
    )
    parser.add_argument("--call-timeout", type=float, default=DEFAULT_CALL_TIMEOUT, help="Seconds.")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--otel", action="store_true", help="Trace calls with the OpenTelemetry SDK.")
    args = parser.parse_args(argv)
    try:
        args.rpcs = dict(parse_rpc(text) for text in args.rpc)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        args.workers = parse_workers(args.workers)
    except ValueError as exc:
        parser.error(f"--workers: {exc}")
    if args.tell_pool is None:
        args.tell_pool = args.workers is not None
    elif args.tell_pool and args.workers is None:
        parser.error("--tell-pool needs a --workers count")
    return args


def opentelemetry_interceptors() -> tuple[Any, Any]:
    """OpenTelemetry's (server, client) interceptors over an SDK tracer provider that exports nothing."""
    from opentelemetry.instrumentation.grpc import client_interceptor, server_interceptor
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    server = server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return server, client_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]


def serve(server: grpc.Server) -> str:
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    return address


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = service_process(args.name)
    random.seed(args.seed)

    agent = cutwatch.Agent(service=args.name, collector=args.collector).start()
    otel_server, otel_client = opentelemetry_interceptors() if args.otel else (None, None)
    shop = Shop(agent, args.name, args.rpcs, args.call_timeout, otel_client)
    told = args.workers if args.tell_pool else None
    interceptors: list[Any] = [agent.server_interceptor(max_workers=told, edge=True)]
    if otel_server is not None:  # OpenTelemetry first: a handler's task carries its server span
        interceptors.insert(0, otel_server)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix=f"{args.name}-worker"),
        interceptors=interceptors,
    )
    server.add_generic_rpc_handlers((shop.handlers(),))
    admin = grpc.server(futures.ThreadPoolExecutor(max_workers=ADMIN_WORKERS, thread_name_prefix="admin"))
    admin.add_generic_rpc_handlers((shop.admin_handlers(),))
    try:
        address, admin_address = serve(server), serve(admin)
        if not agent.wait_registered(30.0):
            _LOG.error("the collector at %s did not register %s", args.collector, args.name)
            return 2
        write_atomically(args.ready_file, f"{args.name} {address} {admin_address} {agent.process_id}\n")
        peers = wait_for_peers(args.peers_file, stop)
        if peers is None:
            return 0
        shop.connect(peers)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        stop.set()
        # Handlers may be stuck for good (that is what the tests provoke): do not wait for them.
        server.stop(grace=None).wait(10)
        admin.stop(grace=None).wait(10)
        shop.close()
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
