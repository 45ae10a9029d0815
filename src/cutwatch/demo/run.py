"""``cutwatch demo``: a collector, a bank, a shop and a leader lease as real OS processes, and what
cutwatch sees of them.

The collector runs in this process; every service is a subprocess
(``python -m cutwatch.demo.bank`` / ``cutwatch.demo.shop`` /
``cutwatch.demo.lease``) on loopback. Three acts:

1. the banks move money and the shop serves orders while snapshots are
   taken: each cut must be COMPLETE and its balances plus the money in
   flight must add up to what the banks started with;
2. the shop is made to deadlock (a lock cycle between inventory and
   payments, and/or orders' worker pool exhausted by calls back into it)
   and the collector must report each deadlock with its chain;
3. the shop is closed and three processes pass a leader lease around a
   ring with a buggy handover: the new leader starts before the old one
   steps down, so for a round trip there are two. Snapshots almost never
   sample that; the lattice invariant ``lease.one_leader``
   (:mod:`cutwatch.demo.lease_invariants`), checked on every consistent cut
   between two snapshots from the changes the processes record, must find
   it, with the cut where both lead.

``--act`` runs some of them only. Progress goes to stderr, the report to
stdout (or one JSON document with ``--json``). Every process started is
ended on the way out, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click
import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from cutwatch.collector import CheckResults, CollectorClient, CollectorError, CollectorServer, Cut
from cutwatch.core import PredicateLoadError

BANKS = 4
INITIAL = 1000
START_TIMEOUT = 60.0
"""Generous: several Python processes importing grpc at once on a loaded machine."""
SNAPSHOT_TIMEOUT = 30.0
QUEUED_SNAPSHOT_TIMEOUT = 4.0
"""A call queued behind an exhausted pool never gets a worker, so its request is never recorded: its
cut ends INCOMPLETE after this (the deadlock it is part of is certain all the same)."""
DEADLOCK_TIMEOUT = 60.0
"""Longest the demo waits for a provoked deadlock to form and be reported."""
SNAPSHOT_PAUSE = 0.3
HOLD_MS = 1500
"""How long a lock holder waits before its call, so that both ends of the cycle hold their lock."""
STUCK_DEADLINE = 600.0
"""Deadline of the calls into a deadlock: they stay blocked until the demo cancels them."""
ACTS = ("bank", "deadlock", "lease")
LEASES = 3
LEASE_SNAPSHOTS = 12
LEASE_PREDICATES = "cutwatch.demo.lease_invariants"
"""The module of the lattice invariant the collector checks on every cut (the bank and the shop hold
no ``leader`` state: on their cuts it holds). Named, not imported: the predicate worker imports it."""
ONE_LEADER = "lease.one_leader"
"""The name it declares."""

# The shop: (workers, RPCs) per service, in shop.py's step language. Place is the everyday traffic.
# Lock cycle: inventory.Hold holds `stock` and calls payments.Want, which wants `ledger`, held by
# payments.Settle, which calls inventory.Recount, which wants `stock`. Pool exhaustion: two
# orders.Checkout take both workers of orders and call inventory.Quote, which calls back orders.Price.
SHOP: dict[str, tuple[int, list[str]]] = {
    "orders": (
        2,
        ["Place=call:inventory.Reserve", "Checkout=sleep:300,call:inventory.Quote", "Price=sleep:1"],
    ),
    "inventory": (
        6,
        [
            "Reserve=sleep:5-15,call:payments.Charge",
            "Quote=call:orders.Price",
            f"Hold=lock:stock,sleep:{HOLD_MS},call:payments.Want",
            "Recount=lock:stock",
        ],
    ),
    "payments": (
        4,
        [
            "Charge=lock:ledger,sleep:1-3",
            "Want=lock:ledger",
            f"Settle=lock:ledger,sleep:{HOLD_MS},call:inventory.Recount",
        ],
    ),
}
SCENARIOS: dict[str, tuple[list[tuple[str, str]], str, float]] = {
    # name: (the calls that provoke it, a method only its report has, snapshot timeout)
    "lock": ([("inventory", "Hold"), ("payments", "Settle")], "/shop.Inventory/Hold", SNAPSHOT_TIMEOUT),
    "pool": ([("orders", "Checkout")] * 2, "/shop.Orders/Checkout", QUEUED_SNAPSHOT_TIMEOUT),
}


class DemoFailed(Exception):
    """Something the demo needs did not happen (a process died, a wait ran out)."""


def progress(text: str) -> None:
    click.echo(f"[demo] {text}", err=True)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = START_TIMEOUT) -> Any:
    """``condition()``'s first truthy value, polled; DemoFailed after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise DemoFailed(f"timed out after {timeout:g} s waiting for {what}")


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    address: str = ""
    admin: str = ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
            raise DemoFailed(f"{self.name} exited with {self.popen.returncode}:\n{tail}")


@dataclass
class Processes:
    """Every subprocess the demo started, and the calls it made into deadlocks: ``close`` ends them."""

    tmp: Path
    children: list[Child] = field(default_factory=list)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    _stuck: list[grpc.Future[Struct]] = field(default_factory=list)

    def spawn(self, name: str, module: str, *args: str) -> Child:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(  # noqa: S603  # our own interpreter and module
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def ready(self, child: Child) -> list[str]:
        """The words of ``child``'s ready file, once it serves and the collector knows it."""
        ready = self.tmp / f"{child.name}.ready"

        def written() -> bool:
            child.check_alive()
            return ready.exists()

        wait_for(written, f"{child.name} to serve and register")
        return ready.read_text().split()

    def call(self, address: str, method: str, timeout: float = 30.0) -> dict[str, Any]:
        """An uninstrumented call: from outside the model, like a load balancer's."""
        reply = self._stub(address, method)(Struct(), timeout=timeout)
        value: dict[str, Any] = MessageToDict(reply)
        return value

    def call_stuck(self, address: str, method: str) -> grpc.Future[Struct]:
        future = self._stub(address, method).future(Struct(), timeout=STUCK_DEADLINE)
        self._stuck.append(future)
        return future

    def _stub(self, address: str, method: str) -> grpc.UnaryUnaryMultiCallable[Struct, Struct]:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.insecure_channel(address)
        return channel.unary_unary(
            method, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )

    def cancel_stuck(self) -> None:
        """Cancel the calls made into deadlocks."""
        for future in self._stuck:
            future.cancel()
        self._stuck.clear()

    def end(self, children: list[Child]) -> None:
        """Close the channels to ``children``, SIGTERM them (SIGKILL after 10 s) and wait for each."""
        for child in children:
            for address in (child.address, child.admin):
                channel = self._channels.pop(address, None)
                if channel is not None:
                    channel.close()
        for child in children:
            if child.popen.poll() is None:
                child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for child in children:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(10)

    def close(self) -> None:
        """Cancel the stuck calls, then end every child."""
        self.cancel_stuck()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self.end(self.children)


@contextmanager
def interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, like Ctrl-C, so that the same cleanup runs."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Money -------------------------------------------------------------------------------------------------
def money_of(cut: Cut) -> tuple[int, int, int]:
    """(balances, money in flight, Credit calls in transit) of the banks in ``cut``."""
    banks = set(cut.services().get("bank", []))
    balances = sum(int(cut.state_of(p)["balance"]) for p in banks)
    credits = [
        int(m.payload["amount"])
        for m in cut.in_transit
        if m.kind == "request" and m.method.endswith("/Credit") and m.receiver in banks
    ]
    return balances, sum(credits), len(credits)


@dataclass
class Demo:
    seconds: float
    scenarios: list[str]
    db: Path
    procs: Processes
    acts: tuple[str, ...] = ACTS
    server: CollectorServer | None = None
    shop: dict[str, Child] = field(default_factory=dict)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    deadlocks: list[dict[str, Any]] = field(default_factory=list)
    leases: dict[str, Child] = field(default_factory=dict)
    lease_names: dict[str, str] = field(default_factory=dict)
    """The name of each lease process, by process id."""
    lease_cuts: list[dict[str, Any]] = field(default_factory=list)
    overlap: dict[str, Any] | None = None
    """The first two-leader cut the lattice check found (in a window whose snapshot held, if any did),
    readably."""
    problems: list[str] = field(default_factory=list)

    # Startup -----------------------------------------------------------------------------------------
    def start(self) -> str:
        if "bank" in self.acts:
            progress(
                f"a bank of {BANKS} services moves money with Credit calls that overtake each other; every "
                f"consistent cut must hold {BANKS * INITIAL} in balances plus money in flight"
            )
        if self.scenarios:
            progress(
                f"{'then ' if 'bank' in self.acts else ''}a shop (orders, inventory, payments) is driven "
                "into a deadlock, which cutwatch must find and explain: who waits for whom"
            )
        if "lease" in self.acts:
            progress(
                f"{'then ' if len(self.acts) > 1 else ''}{LEASES} processes pass a leader lease around a "
                "ring, and the new leader starts before the old one steps down: snapshots almost never see "
                "the two leaders, the lattice check of every consistent cut between two snapshots "
                f"({ONE_LEADER}) must"
            )
        self.server = CollectorServer(
            str(self.db), listen="127.0.0.1:0", predicates=[LEASE_PREDICATES]
        ).start()
        address = self.server.address
        progress(f"collector listening on {address}, storing cuts in {self.db}")
        if "bank" in self.acts or self.scenarios:
            self.start_bank_and_shop(address)
        return address

    def start_bank_and_shop(self, address: str) -> None:
        banks = [
            self.procs.spawn(
                f"b{i}",
                "cutwatch.demo.bank",
                f"--name=b{i}",
                f"--collector={address}",
                f"--ready-file={self.procs.tmp / f'b{i}.ready'}",
                f"--peers-file={self.procs.tmp / 'bank-peers.json'}",
                f"--initial={INITIAL}",
            )
            for i in range(1, BANKS + 1)
            if "bank" in self.acts
        ]
        for name, (workers, rpcs) in SHOP.items():
            self.shop[name] = self.procs.spawn(
                name,
                "cutwatch.demo.shop",
                f"--name={name}",
                f"--collector={address}",
                f"--workers={workers}",
                f"--ready-file={self.procs.tmp / f'{name}.ready'}",
                f"--peers-file={self.procs.tmp / 'shop-peers.json'}",
                *(f"--rpc={rpc}" for rpc in rpcs),
            )
        for bank in banks:
            bank.address = self.procs.ready(bank)[1]
            progress(f"bank {bank.name} up (pid {bank.popen.pid}) on {bank.address}")
        for child in self.shop.values():
            _, child.address, child.admin, _ = self.procs.ready(child)
            progress(f"shop {child.name} up (pid {child.popen.pid}) on {child.address}")
        write_atomically(self.procs.tmp / "bank-peers.json", json.dumps([b.address for b in banks]))
        write_atomically(
            self.procs.tmp / "shop-peers.json", json.dumps({n: c.address for n, c in self.shop.items()})
        )
        for name, child in self.shop.items():
            peers = sorted(set(self.shop) - {name})

            def connected(child: Child = child, others: list[str] = peers) -> bool:
                return bool(self._admin(child, "Stats").get("peers") == others)

            wait_for(connected, f"{name} to read its peers")
        for child in self.shop.values():  # every channel used once: each caller learns who answers on it
            self._admin(child, "Warm")

    def _admin(self, child: Child, method: str) -> dict[str, Any]:
        return self.procs.call(child.admin, f"/shop.Admin/{method}")

    def _method(self, service: str, method: str) -> str:
        return f"/shop.{service.capitalize()}/{method}"

    # Snapshots under traffic ---------------------------------------------------------------------------
    def watch_the_bank(self, client: CollectorClient) -> None:
        """Snapshots for ``seconds`` while the banks transfer and the shop serves Place calls."""
        stop = threading.Event()
        placed: list[str] = []

        def place_orders() -> None:
            while not stop.is_set():
                try:
                    self.procs.call(self.shop["orders"].address, self._method("orders", "Place"))
                except grpc.RpcError as exc:
                    placed.append(f"a Place call failed: {exc}")
                    return
                placed.append("ok")

        shopper = threading.Thread(target=place_orders, name="demo-shopper", daemon=True)
        shopper.start()
        try:
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                for child in self.procs.children:
                    child.check_alive()
                self._bank_snapshot(client)
                time.sleep(SNAPSHOT_PAUSE)
        finally:
            stop.set()
            shopper.join(60.0)
        failures = [p for p in placed if p != "ok"]
        self.problems.extend(failures)
        progress(f"the shop served {placed.count('ok')} orders meanwhile")

    def _bank_snapshot(self, client: CollectorClient) -> None:
        cut = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        balances, in_flight, calls = money_of(cut)
        banks = len(cut.services().get("bank", []))
        total = balances + in_flight
        conserved = cut.complete and banks == BANKS and total == BANKS * INITIAL
        self.snapshots.append(
            {
                "epoch": cut.epoch,
                "status": cut.status,
                "banks": banks,
                "money_total": total,
                "in_transit": in_flight,
                "credits_in_transit": calls,
                "conserved": conserved,
            }
        )
        progress(
            f"snapshot {cut.epoch}: {cut.status}, money {total} = {balances} in balances + {in_flight} "
            f"in flight ({calls} Credit calls in transit){'' if conserved else '  <-- WRONG'}"
        )
        if not conserved:
            why = "; ".join(cut.reasons) or f"{banks} banks, money {total}, expected {BANKS * INITIAL}"
            self.problems.append(f"snapshot {cut.epoch} ({cut.status}) does not conserve money: {why}")

    # Deadlocks -------------------------------------------------------------------------------------------
    def provoke(self, client: CollectorClient, scenario: str) -> None:
        """Make the calls of ``scenario`` until a snapshot's deadlock report shows it."""
        calls, marker, timeout = SCENARIOS[scenario]
        progress(f"provoking a {'lock cycle' if scenario == 'lock' else 'worker-pool exhaustion'}")
        addresses = [(self.shop[s].address, self._method(s, m)) for s, m in calls]
        futures = [self.procs.call_stuck(address, method) for address, method in addresses]
        deadline = time.monotonic() + DEADLOCK_TIMEOUT
        time.sleep(HOLD_MS / 1000)
        while time.monotonic() < deadline:
            for i, future in enumerate(futures):  # one that ran before its partner came: again
                if future.done():
                    futures[i] = self.procs.call_stuck(*addresses[i])
            cut = client.snapshot(timeout=timeout)
            found = [d for d in self._reports(client, cut.epoch) if marker in json.dumps(d["tasks"])]
            progress(f"snapshot {cut.epoch}: {cut.status}, {len(found)} {scenario} deadlock(s)")
            if found:
                self.deadlocks.extend({"scenario": scenario, **report} for report in found)
                return
        self.problems.append(f"the {scenario} deadlock was not reported within {DEADLOCK_TIMEOUT:g} s")

    def _reports(self, client: CollectorClient, epoch: int) -> list[dict[str, Any]]:
        checked = wait_for(lambda: client.results(epoch, name="cutwatch.deadlock"), f"cut {epoch}'s checks")
        if not checked.results or checked.results[0].status != "FAIL":
            return []
        return list(checked.results[0].witness or [])

    # The lease --------------------------------------------------------------------------------------------
    def close_the_shop(self) -> None:
        """End the shop: a call stuck in its exhausted pool would keep every later cut INCOMPLETE (and
        lattice invariants are checked on complete cuts). Its processes say goodbye to the collector."""
        why = (
            "a call stuck in its full pool would keep every later cut from completing"
            if "pool" in self.scenarios
            else "its deadlock is for good"
        )
        progress(f"closing the deadlocked shop: {why}")
        self.procs.cancel_stuck()
        self.procs.end(list(self.shop.values()))

    def start_leases(self, address: str) -> None:
        """Start the ring of lease processes (the first one leads) and wait until the lease went round."""
        peers = self.procs.tmp / "lease-peers.json"
        for i in range(1, LEASES + 1):
            name = f"l{i}"
            self.leases[name] = self.procs.spawn(
                name,
                "cutwatch.demo.lease",
                f"--name={name}",
                f"--collector={address}",
                f"--ready-file={self.procs.tmp / f'{name}.ready'}",
                f"--peers-file={peers}",
                *(["--first"] if i == 1 else []),
            )
        for child in self.leases.values():
            _, child.address, process = self.procs.ready(child)
            self.lease_names[process] = child.name
            progress(f"lease {child.name} up (pid {child.popen.pid}) on {child.address}")
        write_atomically(peers, json.dumps([child.address for child in self.leases.values()]))

        def turned() -> bool:  # each one took the lease once: l1 when it came back to it
            return all(self._lease_stats(child).get("taken", 0) > 0 for child in self.leases.values())

        wait_for(turned, "the lease to go round the ring")
        stats = {name: self._lease_stats(child) for name, child in self.leases.items()}
        progress(
            f"the lease goes round {' -> '.join(self.leases)} -> {next(iter(self.leases))}, "
            f"{sum(int(s.get('handed', 0)) for s in stats.values())} handovers so far"
        )

    def _lease_stats(self, child: Child) -> dict[str, Any]:
        child.check_alive()
        return self.procs.call(child.address, "/lease.Lease/Stats")

    def watch_the_lease(self, client: CollectorClient) -> None:
        """``LEASE_SNAPSHOTS`` snapshots while the lease turns, and what the lattice check says of each."""
        for _ in range(LEASE_SNAPSHOTS):
            for child in self.leases.values():
                child.check_alive()
            self._lease_snapshot(client)
            time.sleep(SNAPSHOT_PAUSE)
        if not any(c.get("window_two_leaders") for c in self.lease_cuts):
            self.problems.append(
                f"the lattice check found no cut with two leaders in {len(self.lease_cuts)} windows"
            )

    def _lease_snapshot(self, client: CollectorClient) -> None:
        cut = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        processes = cut.services().get("lease", [])
        leaders = sorted(self._lease_name(p) for p in processes if cut.state_of(p).get("leader") is True)
        entry: dict[str, Any] = {
            "epoch": cut.epoch,
            "status": cut.status,
            "leases": len(processes),
            "leaders": leaders,
        }
        self.lease_cuts.append(entry)
        if not cut.complete:
            why = "; ".join(cut.reasons) or "not complete"
            self.problems.append(f"lease snapshot {cut.epoch} is {cut.status}: {why}")
            progress(f"snapshot {cut.epoch}: {cut.status}, not checked  <-- WRONG")
            return
        checked: CheckResults = wait_for(
            lambda: client.results(cut.epoch, name=ONE_LEADER), f"cut {cut.epoch}'s {ONE_LEADER} check"
        )
        result = checked.results[0]
        witness = result.witness if isinstance(result.witness, dict) else {}
        sampled = witness.get("cut") or {}
        window = witness.get("window") or {}
        entry.update(
            {
                "check": result.status,
                "message": result.message,
                "sampled_holds": sampled.get("holds"),
                "window_two_leaders": window.get("possibly"),
                "window_definitely": window.get("definitely"),
                "decided_by": window.get("decided_by"),
                "between": window.get("between"),
                "window_events": window.get("events"),
                "window_reason": window.get("reason"),
            }
        )
        if result.status == "ERROR":
            self.problems.append(f"{ONE_LEADER} on cut {cut.epoch}: {result.message}")
        if window.get("possibly"):
            overlap = self._overlap(window, sampled.get("holds"))
            entry["window_leaders"] = [leader["name"] for leader in overlap["leaders"]]
            # The story is best told by a window whose snapshot held: no sampled check saw it.
            if self.overlap is None or (overlap["sampled_holds"] and not self.overlap["sampled_holds"]):
                self.overlap = overlap
        progress(f"snapshot {cut.epoch}: {len(processes)} leases, {self._lease_story(entry)}")

    def _lease_name(self, process: str) -> str:
        return self.lease_names.get(process, process)

    @staticmethod
    def _lease_story(entry: Mapping[str, Any]) -> str:
        leaders = entry["leaders"]
        who = f"{len(leaders)} leader{'' if len(leaders) == 1 else 's'}" + (
            f": {', '.join(leaders)}" if leaders else ""
        )
        if entry["sampled_holds"] is False:
            text = f"sampled cut FAILS ({who})"
        else:
            text = f"sampled cut holds ({who})"
        between = entry.get("between")
        if not between:
            return f"{text}; no window of recorded changes before it"
        bottom, top = between
        since = "since recording started" if bottom is None else f"between cuts {bottom} and {top}"
        how = entry.get("decided_by") or "?"
        if entry["window_two_leaders"] is True:
            many = leaders_text(len(entry.get("window_leaders") or ())) or "two leaders or more"
            return f"{text}; {since} {many} at a consistent cut no snapshot sampled ({how})"
        if entry["window_two_leaders"] is False:
            return f"{text}; {since} at most one leader at every consistent cut ({how})"
        return f"{text}; {since} not decided: {entry.get('window_reason')}"

    def _overlap(self, window: Mapping[str, Any], sampled_holds: object) -> dict[str, Any]:
        """The two-leader cut of ``window``'s witness: each leader with its change and its clock."""
        frontier = (window.get("witness") or {}).get("frontier") or {}
        leaders = [
            {
                "name": self._lease_name(process),
                "process": process,
                "seq": at.get("seq"),
                "events_in": at.get("events_in"),
                "clock": {self._lease_name(p): n for p, n in sorted((at.get("clock") or {}).items())},
            }
            for process, at in sorted(frontier.items())
            if (at.get("values") or {}).get("leader") is True
        ]
        return {
            "between": window.get("between"),
            "decided_by": window.get("decided_by"),
            "definitely": window.get("definitely"),
            "events": window.get("events"),
            "processes": window.get("processes"),
            "sampled_holds": sampled_holds is True,
            "leaders": leaders,
            "frontier": frontier,
        }

    def run(self) -> None:
        address = self.start()
        with CollectorClient(address) as client:
            if "bank" in self.acts:
                self.watch_the_bank(client)
                if not self.snapshots:
                    self.problems.append("no snapshot was taken")
            for scenario in self.scenarios:
                self.provoke(client, scenario)
            if "lease" in self.acts:
                if self.scenarios:
                    self.close_the_shop()
                self.start_leases(address)
                self.watch_the_lease(client)

    def stop(self) -> None:
        self.procs.close()
        if self.server is not None:
            self.server.stop()

    def result(self) -> dict[str, Any]:
        return {
            "processes": [
                {"name": c.name, "pid": c.popen.pid, "address": c.address, "exit": c.popen.returncode}
                for c in self.procs.children
            ],
            "collector": {"address": self.server.address if self.server else None, "db": str(self.db)},
            "acts": list(self.acts),
            "snapshots": self.snapshots,
            "deadlocks": self.deadlocks,
            "lease": self.lease_result() if "lease" in self.acts else None,
            "ok": not self.problems,
            "problems": self.problems,
        }

    def lease_result(self) -> dict[str, Any]:
        """Act three in JSON: each lease cut with its check, the counts, and the first overlap found."""
        checked = [c for c in self.lease_cuts if "check" in c]
        return {
            "processes": {name: process for process, name in self.lease_names.items()},
            "snapshots": self.lease_cuts,
            "sampled": len(checked),
            "sampled_held": sum(1 for c in checked if c["sampled_holds"] is True),
            "windows": sum(1 for c in checked if c["between"]),
            "windows_with_two_leaders": sum(1 for c in checked if c["window_two_leaders"] is True),
            "windows_undecided": sum(1 for c in checked if c["between"] and c["window_two_leaders"] is None),
            "decided_by": sorted({str(c["decided_by"]) for c in checked if c["decided_by"]}),
            "first_overlap": self.overlap,
        }


def summary(doc: Mapping[str, Any]) -> str:
    """The deadlock reports with their chains, the first two-leader cut, then one screen of what
    happened."""
    lines = []
    for report in doc["deadlocks"]:
        lines.append(f"{report['scenario']} deadlock on snapshot {report['epoch']} ({report['cut_status']})")
        lines.append(f"  processes: {', '.join(report['processes'])}")
        lines.append(f"  chain: {report['chain']}")
        lines.extend(f"  rests on: {why}" for why in report.get("rests_on", []))
        lines.append("")
    lease = doc.get("lease")
    if lease and lease["first_overlap"]:
        lines.extend(overlap_story(lease["first_overlap"]))
        lines.append("")
    acts = doc.get("acts", ACTS)
    lines.append("summary")
    lines.append(f"  processes started: {len(doc['processes'])} (+ the collector in this process)")
    if "bank" in acts:
        snapshots = doc["snapshots"]
        complete = sum(1 for s in snapshots if s["status"] == "COMPLETE")
        conserved = sum(1 for s in snapshots if s["conserved"])
        totals = sorted({s["money_total"] for s in snapshots})
        in_flight = sum(1 for s in snapshots if s["in_transit"])
        lines.append(f"  bank snapshots: {len(snapshots)}, {complete} COMPLETE, {conserved} conserving money")
        lines.append(f"  money totals seen: {totals} (expected {BANKS * INITIAL})")
        lines.append(f"  money in flight at a cut: {in_flight} of {len(snapshots)} cuts")
    if "deadlock" in acts:
        found = sorted({d["scenario"] for d in doc["deadlocks"]})
        lines.append(f"  deadlocks reported: {', '.join(found) or 'none'}")
    if lease:
        lines.append(
            f"  lease: sampled cuts: {lease['sampled']}, {lease['sampled_held']} held (at most one leader); "
            f"windows between them with two leaders or more: {lease['windows_with_two_leaders']}"
            f" (decided by {', '.join(lease['decided_by']) or 'nothing'})"
        )
    lines.extend(f"  problem: {problem}" for problem in doc["problems"])
    lines.append("  result: " + ("OK" if doc["ok"] else "FAILED"))
    return "\n".join(lines)


def leaders_text(n: int) -> str:
    """``two leaders`` for 2 ("" below 2: no overlap)."""
    words = {2: "two", 3: "three"}
    return "" if n < 2 else f"{words.get(n, str(n))} leaders"


def overlap_story(overlap: Mapping[str, Any]) -> list[str]:
    """The first cut with two leaders or more the lattice check found: who leads, with which clock, and
    why they can all lead at once (none has seen the previous one step down)."""
    bottom, top = overlap["between"]
    since = "since recording started" if bottom is None else f"between cuts {bottom} and {top}"
    many = leaders_text(len(overlap["leaders"])) or "two leaders or more"
    where = (
        "at a consistent cut no snapshot sampled"
        if overlap.get("sampled_holds", True)
        else f"at a consistent cut (the snapshot of cut {top} also saw more than one)"
    )
    lines = [
        f"{many} {since}, {where} "
        f"(decided by {overlap['decided_by']} over {overlap['events']} recorded state changes of "
        f"{overlap['processes']} processes)"
    ]
    leaders = overlap["leaders"]

    def saw(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        """Whether ``a``'s change happened after ``b``'s (its clock has seen it)."""
        return bool(a["clock"].get(b["name"], 0) >= b["clock"].get(b["name"], 0) > 0)

    # In causal order: the lease went from each one to the next.
    ordered = sorted(leaders, key=lambda a: sum(saw(a, b) for b in leaders if b is not a))
    for i, leader in enumerate(ordered):
        before = ordered[i - 1] if i else None
        clock = ", ".join(f"{name}: {n}" for name, n in leader["clock"].items())
        line = f"  {leader['name']} leads since its state change #{leader['seq']}, clock {{{clock}}}"
        if before is not None and saw(leader, before) and not saw(before, leader):
            line += f": it has seen {before['name']}'s change, and {before['name']} has not stepped down"
        lines.append(line)
    return lines


@click.command()
@click.option(
    "--seconds",
    type=click.FloatRange(1, 3600),
    default=10.0,
    show_default=True,
    help="How long the bank runs under snapshots before the shop deadlocks.",
)
@click.option(
    "--deadlock",
    "which",
    type=click.Choice(["lock", "pool", "both"]),
    default="both",
    show_default=True,
    help="The deadlock the shop falls into.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file for the cuts (default: in a temporary directory).",
)
@click.option(
    "--act",
    "acts",
    type=click.Choice(ACTS),
    multiple=True,
    help="Run only this act (repeatable; default: all three, in this order): bank (snapshots under "
    "traffic), deadlock (the shop deadlocks), lease (two leaders between snapshots).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the report.")
def demo(seconds: float, which: str, db: Path | None, acts: tuple[str, ...], as_json: bool) -> None:
    """Run a bank, a shop and a leader lease as real processes under cutwatch; exit 0 when everything was
    as it should.

    Every bank snapshot must be COMPLETE and conserve money, the shop's deadlock(s) must be reported,
    and the lattice check must find the two leaders the lease has for a moment at each handover,
    which the snapshots themselves almost never sample.
    """
    chosen = tuple(act for act in ACTS if act in acts) if acts else ACTS
    scenarios = [] if "deadlock" not in chosen else ["lock", "pool"] if which == "both" else [which]
    # The demo reports what the collector finds itself; its log lines would only repeat it.
    logging.getLogger("cutwatch").setLevel(logging.ERROR)
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="cutwatch-demo-") as tmp, interrupted_by_sigterm():
        procs = Processes(Path(tmp))
        run = Demo(seconds, scenarios, db.resolve() if db else Path(tmp) / "cuts.db", procs, chosen)
        try:
            run.run()
        except KeyboardInterrupt:
            interrupted = True
            run.problems.append("interrupted")
        except (DemoFailed, CollectorError, PredicateLoadError, grpc.RpcError, OSError) as exc:
            run.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            progress("stopping every process")
            run.stop()
        doc = run.result()
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(summary(doc))
    sys.exit(130 if interrupted else 0 if doc["ok"] else 1)
