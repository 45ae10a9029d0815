"""A leader lease passed around a ring, instrumented with cutwatch: the third act of `cutwatch demo`.

Every process of the ``lease`` service holds a boolean ``leader``, recorded
for lattice invariants (``register_state("leader", ..., record=True)``).
The leader keeps the lease for ``--hold-ms`` and hands it to the next
process of the ring with a ``Take`` RPC, whose handler makes its process
leader in an ``agent.atomic()`` block. The bug the demo shows is in the
order of the old leader's two steps: it calls ``Take`` first and steps down
when the answer comes back. So for the length of a round trip there are
two leaders. A snapshot every few hundred milliseconds almost never lands
in that round trip; the lattice check of the consistent cuts between two
snapshots finds it every time, with the cut where both lead.

``--safe`` hands over correctly: the leader steps down first, then calls
``Take``. The new leader's change then happens after the old one's (the
request carries the old leader's clock), no consistent cut holds both, and
every window passes.

Run one per process::

    python -m cutwatch.demo.lease --name l1 --collector 127.0.0.1:7070 \\
        --ready-file l1.ready --peers-file peers.json --first

It writes ``NAME ADDRESS PROCESS_ID`` to ``--ready-file`` once it serves and
the collector knows it, then waits for ``--peers-file`` (a JSON list of the
ring's addresses in ring order, its own among them) and passes the lease
on until SIGTERM. The process started with ``--first`` holds the lease at
the start. ``Stats`` (on the same server) returns its counters as JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.demo._process import service_process, struct, unary, wait_for_json, write_atomically

SERVICE = "lease.Lease"
TAKE = f"/{SERVICE}/Take"
HANDOVER_MS = 40.0
"""How long a leader keeps the lease before it hands it on."""
TAKE_TIMEOUT = 30.0
"""Deadline of one Take call: long enough that a healthy, loaded peer always answers in time."""
SERVER_THREADS = 4

_LOG = logging.getLogger("lease")


class Lease:
    """One process's share of the lease: whether it leads, and the channel to the next process."""

    def __init__(self, agent: cutwatch.Agent, *, leader: bool, safe: bool, hold: float) -> None:
        self.agent = agent
        self.leader = leader
        self.term = 1 if leader else 0
        """The lease's tenure this process last held: 1 for the first leader, one more at each handover."""
        self.taken = 0
        self.handed = 0
        self.failed = 0
        self._safe = safe
        self._hold = hold
        # atomic() is about cuts; this lock and event are about threads.
        self._lock = threading.Lock()
        self._leading = threading.Event()
        if leader:
            self._leading.set()
        self._channel: grpc.Channel | None = None
        self._take: grpc.UnaryUnaryMultiCallable[Struct, Struct] | None = None
        # Recorded: every new value, with the vector clock of its change, reaches the collector.
        agent.register_state("leader", lambda: self.leader, record=True)
        agent.register_state("term", lambda: self.term)

    # Server side ---------------------------------------------------------------------------------
    def take(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        """The previous leader hands the lease over: lead from now on."""
        with self.agent.atomic(), self._lock:
            self.leader = True
            self.term = int(request["term"])  # type: ignore[arg-type]  # a number, from our peers
            self.taken += 1
            self._leading.set()
        return struct(process=self.agent.process_id)

    def stats(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        with self._lock:
            return struct(
                process=self.agent.process_id,
                leader=self.leader,
                term=self.term,
                taken=self.taken,
                handed=self.handed,
                failed=self.failed,
            )

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE, {"Take": unary(self.take), "Stats": unary(self.stats)}
        )

    # Client side ---------------------------------------------------------------------------------
    def connect(self, address: str) -> None:
        """An instrumented channel to the next process of the ring."""
        channel = grpc.intercept_channel(grpc.insecure_channel(address), self.agent.client_interceptor())
        self._channel = channel
        self._take = channel.unary_unary(
            TAKE, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )

    def run(self, stop: threading.Event) -> None:
        """Whenever this process leads: keep the lease for a while, then hand it on."""
        while not stop.is_set():
            if not self._leading.wait(0.1):
                continue
            if stop.wait(self._hold):
                return
            self.hand_over()

    def hand_over(self) -> None:
        assert self._take is not None, "connect() first"
        with self._lock:
            held = self.term
        if self._safe:
            self._step_down(held)  # first: the Take request carries a clock that has seen it
        try:
            self._take(struct(term=held + 1), timeout=TAKE_TIMEOUT)
        except grpc.RpcError as exc:
            call: Any = exc  # gRPC's errors are also calls: they have a code and details
            _LOG.warning("handing the lease over failed (%s): keeping it", call.code())
            # Nobody took it, as far as this process can tell (a Take that ran but whose answer was
            # lost would leave two leaders: a real lease needs fencing by term for that).
            with self.agent.atomic(), self._lock:
                self.leader = True
                self.failed += 1
                self._leading.set()
            return
        if not self._safe:
            self._step_down(held)  # the bug: the next process has led since its handler ran
        with self._lock:
            self.handed += 1

    def _step_down(self, held: int) -> None:
        """Stop leading, unless the lease came back meanwhile (a newer term)."""
        with self.agent.atomic(), self._lock:
            if self.term != held:
                return
            self.leader = False
            self._leading.clear()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def next_in_ring(peers: list[str], address: str) -> str:
    """The address after ``address`` in the ring ``peers`` (ValueError when it is not in it)."""
    return peers[(peers.index(address) + 1) % len(peers)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True, help="This process's name (kept in its process id).")
    parser.add_argument("--collector", required=True, help="The cutwatch collector's host:port.")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--peers-file", type=Path, required=True)
    parser.add_argument("--first", action="store_true", help="Hold the lease at the start.")
    parser.add_argument(
        "--safe", action="store_true", help="Step down before calling Take (no overlap), not after."
    )
    parser.add_argument(
        "--hold-ms", type=float, default=HANDOVER_MS, help="How long a leader keeps the lease."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = service_process(args.name)
    agent = cutwatch.Agent(service="lease", instance_id=args.name, collector=args.collector).start()
    lease = Lease(agent, leader=args.first, safe=args.safe, hold=args.hold_ms / 1000)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
        interceptors=[agent.server_interceptor(max_workers=SERVER_THREADS)],
    )
    server.add_generic_rpc_handlers((lease.handlers(),))
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    ring: threading.Thread | None = None
    try:
        if not agent.wait_registered(30.0):
            _LOG.error("the collector at %s did not register %s", args.collector, args.name)
            return 2
        write_atomically(args.ready_file, f"{args.name} {address} {agent.process_id}\n")
        peers = wait_for_json(args.peers_file, stop)
        if peers is None:
            return 0
        lease.connect(next_in_ring([str(peer) for peer in peers], address))
        ring = threading.Thread(target=lease.run, args=(stop,), name="lease-ring", daemon=True)
        ring.start()
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        stop.set()
        if ring is not None:
            ring.join(5.0)
        server.stop(grace=1.0).wait(10)
        lease.close()
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
