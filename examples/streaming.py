"""Streams: money moved by the messages of a client stream, and snapshots that place every one.

Run it with ``python examples/streaming.py``; docs/snapshots.md explains the
rules it follows. A teller streams deposits to a vault over real gRPC on
127.0.0.1, a message every few milliseconds, each debited in its own
``atomic()`` block right before it is yielded; the vault credits each one it
takes in a block of its own. A collector in the same process takes ten
snapshots meanwhile: every COMPLETE one adds up to the 2000 the two started
with, counting the deposits that were on the wire at the cut.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

import cutwatch

DEPOSITS = "/vault.Vault/Deposits"
START = 1000


def amount(value: int) -> Struct:
    message = Struct()
    message.update({"amount": value})
    return message


class Vault:
    def __init__(self, agent: cutwatch.Agent) -> None:
        self.agent = agent
        self.balance = START
        agent.register_state("balance", lambda: self.balance)

    def deposits(self, requests: Iterable[Struct], context: grpc.ServicerContext) -> Struct:
        for message in requests:
            with self.agent.atomic():  # one block per message taken: it is consumed when the block ends
                self.balance += int(message["amount"])
        return Struct()


class Teller:
    def __init__(self, agent: cutwatch.Agent) -> None:
        self.agent = agent
        self.balance = START
        agent.register_state("balance", lambda: self.balance)

    def deposits(self, count: int) -> Iterator[Struct]:
        for _ in range(count):
            time.sleep(0.002)
            with self.agent.atomic():  # the message yielded next goes with this debit
                self.balance -= 1
            yield amount(1)


def money(cut: cutwatch.Cut) -> int:
    balances = sum(int(cut.state_of(process)["balance"]) for process in cut.states)
    on_the_wire = [m for m in cut.in_transit if m.index]  # stream messages carry their number
    return balances + sum(int(m.payload["amount"]) for m in on_the_wire)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        collector = cutwatch.CollectorServer(Path(folder) / "cuts.db", listen="127.0.0.1:0").start()
        vault_agent = cutwatch.Agent("vault", collector=collector.address).start()
        teller_agent = cutwatch.Agent("teller", collector=collector.address).start()
        vault, teller = Vault(vault_agent), Teller(teller_agent)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=[vault_agent.server_interceptor(max_workers=4)],
        )
        handler = grpc.stream_unary_rpc_method_handler(
            vault.deposits,
            request_deserializer=Struct.FromString,
            response_serializer=Struct.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("vault.Vault", {"Deposits": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        channel = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{port}"), teller_agent.client_interceptor()
        )
        stream: Any = channel.stream_unary(
            DEPOSITS, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )
        try:
            assert vault_agent.wait_registered(10) and teller_agent.wait_registered(10)
            call = stream.future(teller.deposits(500), timeout=60)
            with cutwatch.CollectorClient(collector.address) as client:
                for _ in range(10):
                    cut = client.snapshot(timeout=30)
                    if cut.complete:
                        wire = sum(1 for m in cut.in_transit if m.index)
                        print(f"snapshot {cut.epoch}: COMPLETE, {money(cut)} in all, {wire} on the wire")
                        assert money(cut) == 2 * START
                    else:
                        print(f"snapshot {cut.epoch}: INCOMPLETE: {'; '.join(cut.reasons)}")
                    time.sleep(0.05)
            call.result(60)
            print(f"done: teller {teller.balance}, vault {vault.balance}")
        finally:
            channel.close()
            server.stop(0)
            teller_agent.close()
            vault_agent.close()
            collector.stop()


if __name__ == "__main__":
    threading.current_thread().name = "main"
    main()
