"""A small bank, instrumented with cutwatch: processes of `cutwatch demo` and of the real-process tests.

Each bank holds a balance and moves money to its peers with a ``Credit``
RPC. Two ``agent.atomic()`` blocks make every snapshot see each transfer
either in a balance or in a channel, never in both and never in neither:

- the sender debits its balance and starts the ``Credit`` call that carries
  the money in one block (``.future()`` sends without waiting; the response
  is awaited outside the block, which would otherwise hold the cut up);
- the receiver's handler credits the money in one block, which is also
  where its request stops being "in transit".

So in every COMPLETE cut, the balances plus the ``amount`` of the Credit
requests in transit add up to the money the banks started with.

Run one per process::

    python -m cutwatch.demo.bank --name b1 --collector 127.0.0.1:7070 \\
        --ready-file b1.ready --peers-file peers.json

It writes ``NAME ADDRESS`` to ``--ready-file`` once it serves and the
collector knows it, then waits for ``--peers-file`` (a JSON list of bank
addresses, its own may be in it) and transfers money until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.demo._process import service_process, struct, unary, wait_for_json, write_atomically

SERVICE = "bank.Bank"
CREDIT = f"/{SERVICE}/Credit"
STATS = f"/{SERVICE}/Stats"
SERVER_THREADS = 16
TRANSFER_TIMEOUT = 30.0
"""Deadline of one Credit call: long enough that a healthy, loaded peer always answers in time."""

_LOG = logging.getLogger("bank")
ATTEMPT_HEADER = "grpc-previous-rpc-attempts"
RETRYING_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.005s",
                "maxBackoff": "0.05s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
"""gRPC's service config for ``--balanced``: spread Credit calls over the peers, retry UNAVAILABLE."""


class Bank:
    """One bank's money, its peers and its counters."""

    def __init__(
        self,
        agent: cutwatch.Agent,
        initial: int,
        max_delay: float,
        slow_state: float,
        *,
        bounce: float = 0.0,
        balanced: bool = False,
    ) -> None:
        self.agent = agent
        self.balance = initial
        self.transfers_ok = 0
        self.transfers_failed = 0
        self.credits_bounced = 0
        self.credits_retried = 0
        self._max_delay = max_delay
        self._slow_state = slow_state
        self._bounce = bounce
        self._balanced = balanced
        # atomic() is about cuts; this lock is about threads (balance, counters, peers).
        self._lock = threading.Lock()
        self._peers: dict[str, grpc.UnaryUnaryMultiCallable[Struct, Struct]] = {}
        self._channels: list[grpc.Channel] = []
        agent.register_state("balance", self._balance_state)

    def _balance_state(self) -> int:
        """The state provider; runs under the snapshot lock, so no atomic() block is half done."""
        if self._slow_state:
            time.sleep(self._slow_state)  # a provider that takes a while, to make a snapshot last
        return self.balance

    # Server side ---------------------------------------------------------------------------------
    def credit(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        retried = any(key == ATTEMPT_HEADER for key, _ in context.invocation_metadata())
        # Wait a little first, so that calls overtake each other and some are in transit at a cut.
        time.sleep(random.uniform(0, self._max_delay))
        bounce = random.random() < self._bounce
        with self._lock:
            self.credits_retried += retried
            self.credits_bounced += bounce
        if bounce:
            # Before anything is applied: the caller's retry policy sends the call again.
            context.abort(grpc.StatusCode.UNAVAILABLE, "bounced: try another server")
        with self.agent.atomic(), self._lock:
            self.balance += int(request["amount"])  # type: ignore[arg-type]  # a number, from our peers
        return Struct()

    def stats(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        with self._lock:
            return struct(
                process=self.agent.process_id,
                transfers_ok=self.transfers_ok,
                transfers_failed=self.transfers_failed,
                credits_bounced=self.credits_bounced,
                credits_retried=self.credits_retried,
                balance=self.balance,
                peers_alive=len(self._peers),
            )

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE, {"Credit": unary(self.credit), "Stats": unary(self.stats)}
        )

    # Client side ---------------------------------------------------------------------------------
    def connect(self, addresses: list[str]) -> None:
        """One instrumented channel per peer (a client interceptor per channel), or, ``balanced``, one
        over all of them that spreads calls (``round_robin``) and retries UNAVAILABLE."""
        if self._balanced and addresses:
            target = "ipv4:" + ",".join(addresses)
            options = [("grpc.service_config", json.dumps(RETRYING_CONFIG))]
            channel = grpc.intercept_channel(
                grpc.insecure_channel(target, options=options), self.agent.client_interceptor()
            )
            self._channels.append(channel)
            self._peers[target] = channel.unary_unary(
                CREDIT, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
            )
            return
        for address in addresses:
            channel = grpc.intercept_channel(grpc.insecure_channel(address), self.agent.client_interceptor())
            self._channels.append(channel)
            self._peers[address] = channel.unary_unary(
                CREDIT, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
            )

    def transfer_forever(self, stop: threading.Event, rng: random.Random) -> None:
        while not stop.is_set():
            with self._lock:
                peers = sorted(self._peers.items())
            if not peers:
                stop.wait(0.1)
                continue
            address, credit = rng.choice(peers)
            amount = rng.randint(1, 10)
            with self.agent.atomic(), self._lock:
                if self.balance < amount:
                    continue
                # The request that carries the money and the debit are on the same side of every cut.
                future = credit.future(struct(amount=amount), timeout=TRANSFER_TIMEOUT)
                self.balance -= amount
            while True:
                try:
                    future.result()
                except grpc.RpcError as exc:
                    if self._balanced and exc.code() == grpc.StatusCode.UNAVAILABLE and not stop.is_set():
                        # Every attempt bounced, so nothing was applied: send the money again rather
                        # than refund it. A refund would be value carried by the failure, a response,
                        # which a cut can split (docs/snapshots.md); a new request carries it whole.
                        with self.agent.atomic():
                            future = credit.future(struct(amount=amount), timeout=TRANSFER_TIMEOUT)
                        continue
                    self._failed(address, amount, exc)
                else:
                    with self._lock:
                        self.transfers_ok += 1
                break

    def _failed(self, address: str, amount: int, exc: grpc.RpcError) -> None:
        """Refund a transfer whose Credit failed; a peer that is gone leaves the peer list.

        A Credit that failed after its handler ran (a deadline, a peer killed before it
        answered) was applied, and the refund makes money: a real bank would give each
        transfer an id and ask. The deadline here is long enough that healthy peers never hit it.
        """
        code = exc.code()  # gRPC's errors are also calls
        with self.agent.atomic(), self._lock:
            self.balance += amount
            self.transfers_failed += 1
            # Over one balanced channel, UNAVAILABLE means every attempt bounced, not a peer gone.
            gone = code == grpc.StatusCode.UNAVAILABLE and not self._balanced
            if gone and self._peers.pop(address, None) is not None:
                _LOG.warning("peer %s is unavailable; dropped it", address)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def wait_for_peers(path: Path, stop: threading.Event) -> list[str] | None:
    """The addresses in the peers file, once it exists; None when told to stop first."""
    peers = wait_for_json(path, stop)
    return None if peers is None else [str(address) for address in peers]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True, help="This bank's name (kept in its process id).")
    parser.add_argument("--collector", required=True, help="The cutwatch collector's host:port.")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--peers-file", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=4, help="Threads making transfers.")
    parser.add_argument("--initial", type=int, default=1000, help="Starting balance.")
    parser.add_argument("--max-delay-ms", type=float, default=20.0, help="Credit handlers wait up to this.")
    parser.add_argument("--slow-state-ms", type=float, default=0.0, help="The state provider takes this.")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--bounce-percent",
        type=float,
        default=0.0,
        help="Percent of Credit calls failed with UNAVAILABLE before they apply anything (retried).",
    )
    parser.add_argument(
        "--balanced",
        action="store_true",
        help="Send transfers over one round_robin channel to all peers that retries UNAVAILABLE.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = service_process(args.name)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    random.seed(seed)

    agent = cutwatch.Agent(service="bank", instance_id=args.name, collector=args.collector).start()
    bank = Bank(
        agent,
        args.initial,
        args.max_delay_ms / 1000,
        args.slow_state_ms / 1000,
        bounce=args.bounce_percent / 100,
        balanced=args.balanced,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
        interceptors=[agent.server_interceptor(max_workers=SERVER_THREADS)],
    )
    server.add_generic_rpc_handlers((bank.handlers(),))
    return serve(agent, bank, server, args.name, args.ready_file, args.peers_file, args.workers, seed, stop)


class Service(Protocol):
    """What :func:`serve` runs: a bank of any kind that meets its peers and moves money to them."""

    def connect(self, addresses: list[str]) -> None: ...

    def transfer_forever(self, stop: threading.Event, rng: random.Random) -> None: ...

    def close(self) -> None: ...


def serve(
    agent: cutwatch.Agent,
    bank: Service,
    server: grpc.Server,
    name: str,
    ready_file: Path,
    peers_file: Path,
    workers: int,
    seed: object,
    stop: threading.Event,
    *,
    register_timeout: float = 30.0,
    before_traffic: Callable[[], None] | None = None,
) -> int:
    """Run a bank process until ``stop``: serve, register, say ready, meet the peers, transfer.

    Everything is stopped on the way out, whatever happened; returns the exit code.
    """
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    threads: list[threading.Thread] = []
    try:
        if not agent.wait_registered(register_timeout):
            _LOG.error("the collector did not register bank %s", name)
            return 2
        write_atomically(ready_file, f"{name} {address}\n")
        peers = wait_for_peers(peers_file, stop)
        if peers is None:
            return 0
        if before_traffic is not None:
            before_traffic()
        bank.connect([peer for peer in peers if peer != address])
        for i in range(workers):
            rng = random.Random(f"{seed}-{i}")
            thread = threading.Thread(target=bank.transfer_forever, args=(stop, rng), daemon=True)
            thread.start()
            threads.append(thread)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        stop.set()
        deadline = time.monotonic() + 10.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        server.stop(grace=1.0).wait(10)
        bank.close()
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
