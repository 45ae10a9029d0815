"""Getting started: two instrumented services, a collector, a snapshot and a deadlock report.

Run it with ``python examples/getting_started.py``; docs/getting-started.md
walks through it piece by piece. A teller moves cash into a ledger over
real gRPC on 127.0.0.1; a collector in the same process takes a consistent
cut of both, whose money adds up; then two threads of the teller lock two
cutwatch locks in opposite order, and the collector reports the cycle.
``google.protobuf.struct_pb2.Struct`` messages keep it free of generated code.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.predicates import find_deadlocks, format_deadlocks

WORKERS = 4
DEPOSIT = "/ledger.Ledger/Deposit"


def struct(**values: Any) -> Struct:
    message = Struct()
    message.update(values)
    return message


class Ledger:
    """The server: holds the money deposited so far."""

    def __init__(self, agent: cutwatch.Agent) -> None:
        self.agent = agent
        self.balance = 0
        agent.register_state("balance", lambda: self.balance)

    def deposit(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        with self.agent.atomic():  # the state change, and where the request stops being in transit
            self.balance += int(request["amount"])
        return struct(balance=self.balance)

    def handlers(self) -> grpc.GenericRpcHandler[Struct, Struct]:
        deposit = grpc.unary_unary_rpc_method_handler(
            self.deposit, request_deserializer=Struct.FromString, response_serializer=Struct.SerializeToString
        )
        return grpc.method_handlers_generic_handler("ledger.Ledger", {"Deposit": deposit})


class Teller:
    """The client: hands its cash to the ledger, a few coins at a time."""

    def __init__(self, agent: cutwatch.Agent, address: str, cash: int) -> None:
        self.agent = agent
        self.cash = cash
        agent.register_state("cash", lambda: self.cash)
        self.channel = grpc.intercept_channel(grpc.insecure_channel(address), agent.client_interceptor())
        self.deposit = self.channel.unary_unary(
            DEPOSIT, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )

    def pay_in(self, amount: int) -> int:
        with self.agent.atomic():  # the debit and the call that carries the money: one side of every cut
            self.cash -= amount
            future = self.deposit.future(struct(amount=amount), timeout=10)
        return int(future.result()["balance"])  # wait outside the block


def show_cut(cut: cutwatch.Cut) -> None:
    print(f"cut {cut.epoch}: {cut.status}, {len(cut.states)} processes, {len(cut.in_transit)} in transit")
    for process in cut.processes:
        print(f"  {process}: {json.dumps(dict(cut.state_of(process)))}")
    for message in cut.in_transit:
        print(f"  in transit: {message.sender} -> {message.receiver} {message.method} {message.payload}")
    money = sum(sum(cut.state_of(p).values()) for p in cut.states)
    money += sum(m.payload["amount"] for m in cut.in_transit if m.kind == "request")
    print(f"  money in the cut: {money}")


def lock_in_opposite_order(agent: cutwatch.Agent, stop: threading.Event) -> list[threading.Thread]:
    """Two threads, each holding one cutwatch lock and waiting for the other's: a cycle."""
    accounts, audit = agent.lock("accounts"), agent.lock("audit")
    both_hold = threading.Barrier(2)

    def left() -> None:
        with accounts:
            both_hold.wait()
            with audit:  # waits until right gives up
                pass

    def right() -> None:
        with audit:
            both_hold.wait()
            while not stop.is_set():  # a deadline would end a real deadlock; here, stop does
                if accounts.acquire(timeout=1.0):
                    accounts.release()
                    return

    threads = [threading.Thread(target=left), threading.Thread(target=right)]
    for thread in threads:
        thread.start()
    return threads


def both_waiting(agent: cutwatch.Agent) -> bool:
    return sum(task.waiting_lock is not None for task in agent.tasks()) == 2


def run(db: Path) -> None:
    collector = cutwatch.CollectorServer(db, listen="127.0.0.1:0").start()
    ledger_agent = cutwatch.Agent(service="ledger", collector=collector.address).start()
    teller_agent = cutwatch.Agent(service="teller", collector=collector.address).start()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKERS),
        interceptors=[ledger_agent.server_interceptor(max_workers=WORKERS)],
    )
    ledger = Ledger(ledger_agent)
    server.add_generic_rpc_handlers((ledger.handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    teller = Teller(teller_agent, f"127.0.0.1:{port}", cash=100)
    client = cutwatch.CollectorClient(collector.address)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        assert ledger_agent.wait_registered(30) and teller_agent.wait_registered(30)
        for amount in (10, 20, 5):
            print(f"paid in {amount}, the ledger holds {teller.pay_in(amount)}")

        cut = client.snapshot(timeout=10.0)
        show_cut(cut)

        threads = lock_in_opposite_order(teller_agent, stop)
        deadline = time.monotonic() + 30
        while not both_waiting(teller_agent) and time.monotonic() < deadline:
            time.sleep(0.01)
        deadlocks: list[dict[str, Any]] = []
        for _ in range(5):  # a snapshot may fall between two of right's one-second waits
            cut = client.snapshot(timeout=10.0)
            deadlocks = client.deadlocks()
            if deadlocks:
                break
        for report in deadlocks:
            print(f"deadlock on cut {report['epoch']} ({report['cut_status']}): {report['summary']}")
            print(f"  chain: {report['chain']}")
            for task in report["tasks"]:
                waits = "; ".join(wait["text"] for wait in task["waits_for"])
                print(f"  {task['process']}#{task['task_id']} holds {task['held_locks']}, waits for {waits}")

        found = find_deadlocks(cut)  # [] when the cut shows none
        print(format_deadlocks(found))  # for humans
        assert [d.to_json() for d in found] == deadlocks  # the JSON of client.deadlocks()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        client.close()
        teller.channel.close()
        server.stop(grace=None)
        teller_agent.close()
        ledger_agent.close()
        collector.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cutwatch-getting-started-") as workdir:
        run(Path(workdir) / "cuts.db")


if __name__ == "__main__":
    main()
