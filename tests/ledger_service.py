"""A tiny in-process bank over real gRPC, for collector tests.

Each :class:`Ledger` is one agent with a balance and a ``Credit`` RPC whose
handler can be held before its ``atomic()`` block, so that a test can put a
request in the channel at a cut on purpose.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

import cutwatch

CREDIT = "/ledger.Ledger/Credit"


def amount_request(amount: int) -> Struct:
    request = Struct()
    request.update({"amount": amount})
    return request


class Ledger:
    """One process of the bank: agent, balance, server, and channels to peers."""

    def __init__(self, name: str, collector: str | None, initial: int = 100, **agent_options: Any) -> None:
        self.agent = cutwatch.Agent("ledger", collector=collector, instance_id=name, **agent_options).start()
        self.balance = initial
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.on_credit: Callable[[], None] = lambda: None
        self.agent.register_state("balance", lambda: self.balance)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=[self.agent.server_interceptor(max_workers=4)],
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self._credit, request_deserializer=Struct.FromString, response_serializer=Struct.SerializeToString
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("ledger.Ledger", {"Credit": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self._channels: list[grpc.Channel] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _credit(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        self.on_credit()
        self.entered.set()
        self.hold.wait(30)
        with self.agent.atomic():
            self.balance += int(request["amount"])
        return Struct()

    def stub(self, peer: Ledger) -> Any:
        channel = grpc.intercept_channel(grpc.insecure_channel(peer.address), self.agent.client_interceptor())
        self._channels.append(channel)
        return channel.unary_unary(
            CREDIT, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )

    def transfer(self, stub: Any, amount: int) -> Any:
        """Debit and send in one atomic step; returns the call's future."""
        with self.agent.atomic():
            self.balance -= amount
            return stub.future(amount_request(amount))

    def close(self) -> None:
        self.hold.set()
        for channel in self._channels:
            channel.close()
        self.server.stop(0).wait(5)
        self.agent.close()
