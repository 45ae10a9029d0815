"""Collectors and bank processes as real OS processes, for the tests that cross processes.

A bank process (``src/cutwatch/demo/bank.py`` or a test wrapper of it) writes a
ready file with its address once it serves and is registered, then waits
for the peers file and transfers money with its peers. The cluster starts
them, introduces them to each other, waits for traffic, and ends every
process it started in ``close``, also when a test fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from polling import wait_until
from processes import START_TIMEOUT, Proc, cutwatch_command, listening_address, spawn, stop_all


@dataclass
class Bank:
    name: str
    proc: Proc
    address: str = ""
    process_id: str = ""


class BankCluster:
    """Starts collectors and banks; subclasses say how to read a bank's counters (``stats``)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.peers_file = tmp / "peers.json"
        self._channels: dict[str, grpc.Channel] = {}

    def start_collector(self, db: Path, listen: str = "127.0.0.1:0", *extra: str) -> tuple[Proc, str]:
        """A ``cutwatch collector`` process; returns it and the address it listens on."""
        n = sum(1 for p in self.procs if p.name.startswith("collector"))
        command = [*cutwatch_command(), "collector", "--listen", listen, "--db", str(db), *extra]
        proc = spawn(self.tmp, self.procs, f"collector-{n}", command)
        return proc, listening_address(proc)

    def start(
        self, commands: dict[str, list[str]], peers: Callable[[list[Bank]], list[str]] | None = None
    ) -> list[Bank]:
        """Banks from ``name: command``, peered with each other; returns once each one transfers.

        ``peers`` gives the addresses the banks transfer to, once they serve (default: theirs).
        """
        banks = [Bank(name, spawn(self.tmp, self.procs, name, command)) for name, command in commands.items()]
        for bank in banks:
            ready = self.ready_file(bank.name)

            def is_ready(bank: Bank = bank, ready: Path = ready) -> bool:
                assert bank.proc.alive(), bank.proc.tail()
                return ready.exists()

            wait_until(is_ready, f"{bank.name} to serve and register", START_TIMEOUT, 0.1)
            bank.address = ready.read_text().split()[1]
        partial = self.tmp / "peers.json.partial"
        addresses = [bank.address for bank in banks] if peers is None else peers(banks)
        partial.write_text(json.dumps(addresses))
        partial.replace(self.peers_file)
        for bank in banks:
            bank.process_id = str(self.stats(bank)["process"])
        # Traffic flows everywhere before anything else happens.
        for bank in banks:
            wait_until(
                lambda bank=bank: self.stats(bank)["transfers_ok"] > 0, "transfers", START_TIMEOUT, 0.1
            )
        return banks

    def ready_file(self, name: str) -> Path:
        return self.tmp / f"{name}.ready"

    def stats(self, bank: Bank) -> dict[str, Any]:
        raise NotImplementedError

    def call(self, bank: Bank, method: str, timeout: float) -> Struct:
        """An uninstrumented unary call of ``method`` (Struct in, Struct out) on the bank."""
        channel = self._channels.get(bank.address)
        if channel is None:
            channel = self._channels[bank.address] = grpc.insecure_channel(bank.address)
        stub = channel.unary_unary(
            method, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )
        reply: Struct = stub(Struct(), timeout=timeout)
        return reply

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        stop_all(self.procs)
