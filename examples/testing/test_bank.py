"""An integration test of a gRPC service under cutwatch, written with cutwatch's pytest plugin.

Two bank branches pay each other over real gRPC on 127.0.0.1 while the test
takes snapshots. In every consistent cut the money adds up (a payment is in
a balance or in flight, never in both or in neither) and nothing is
deadlocked. The fixtures ``cutwatch_collector`` and ``cutwatch_agent`` come
with cutwatch (a pytest plugin); docs/testing.md walks through this file.
Run it with ``pytest examples/testing``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.predicates import Verdict
from cutwatch.testing import LocalCollector

CREDIT = "/bank.Bank/Credit"
OPENING_BALANCE = 100
WORKERS = 4


def struct(**values: Any) -> Struct:
    message = Struct()
    message.update(values)
    return message


class Branch:
    """A bank branch: a balance, a server that other branches credit, channels to pay them."""

    def __init__(self, agent: cutwatch.Agent) -> None:
        self.agent = agent
        self.balance = OPENING_BALANCE
        agent.register_state("balance", lambda: self.balance)
        self.channels: list[grpc.Channel] = []
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=WORKERS),
            interceptors=[agent.server_interceptor(max_workers=WORKERS)],
        )
        credit = grpc.unary_unary_rpc_method_handler(
            self.credit, request_deserializer=Struct.FromString, response_serializer=Struct.SerializeToString
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bank.Bank", {"Credit": credit}),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def credit(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        with self.agent.atomic():  # the credit, and where the request stops being in flight
            self.balance += int(request.fields["amount"].number_value)
        return Struct()

    def payer(self, other: Branch) -> Callable[[int], None]:
        """``pay(amount)``: move money from this branch to ``other``."""
        channel = grpc.intercept_channel(
            grpc.insecure_channel(other.address), self.agent.client_interceptor()
        )
        self.channels.append(channel)
        credit = channel.unary_unary(
            CREDIT, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )

        def pay(amount: int) -> None:
            with self.agent.atomic():  # the debit and the request that carries it: one side of every cut
                self.balance -= amount
                answer = credit.future(struct(amount=amount), timeout=10)
            answer.result()  # wait outside the block

        return pay

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop(grace=None).wait(10)


@cutwatch.invariant("bank.money_is_conserved")
def money_is_conserved(cut: cutwatch.Cut) -> Verdict:
    """The balances and the credits in flight add up to what the branches opened with."""
    total = OPENING_BALANCE * len(cut.services().get("bank", []))
    return cutwatch.conservation(cut, state="balance", payload="amount", methods=[CREDIT], total=total)


@pytest.fixture
def branches(cutwatch_agent: Callable[..., cutwatch.Agent]) -> Iterator[tuple[Branch, Branch]]:
    """Two branches, each a service with its own agent, stopped after the test."""
    opened: list[Branch] = []
    try:
        for _ in range(2):
            opened.append(Branch(cutwatch_agent("bank")))
        yield opened[0], opened[1]
    finally:
        for branch in opened:
            branch.close()


def test_money_adds_up_in_every_cut_while_the_branches_pay_each_other(
    cutwatch_collector: LocalCollector, branches: tuple[Branch, Branch]
) -> None:
    north, south = branches
    stop = threading.Event()

    def keep_paying(branch: Branch, pay: Callable[[int], None]) -> None:
        while not stop.is_set() and branch.balance > 10:
            pay(1)

    payers = [
        threading.Thread(target=keep_paying, args=(north, north.payer(south))),
        threading.Thread(target=keep_paying, args=(south, south.payer(north))),
    ]
    for payer in payers:
        payer.start()
    try:
        for _ in range(3):
            cut = cutwatch_collector.snapshot()
            cutwatch_collector.assert_invariant(money_is_conserved, cut)
            cutwatch_collector.assert_no_deadlock(cut)
    finally:
        stop.set()
        for payer in payers:
            payer.join(30)
    assert north.balance + south.balance == 2 * OPENING_BALANCE


@pytest.mark.cutwatch(predicates=[__file__])  # the collector loads this file's invariants, as in production
def test_the_collector_checks_each_cut_with_the_invariants_it_loaded(
    cutwatch_collector: LocalCollector, branches: tuple[Branch, Branch]
) -> None:
    north, south = branches
    north.payer(south)(25)
    result = cutwatch_collector.assert_invariant("bank.money_is_conserved")  # the result it stored
    assert result.witness["sum"] == 2 * OPENING_BALANCE
