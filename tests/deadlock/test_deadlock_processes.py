"""Deadlocks of real processes: a collector and shop services, each its own OS process, over real gRPC.

The services (``shop_service.py``) do what their command line says: take a
cutwatch lock, call another service, sleep. The tests build distributed
deadlocks out of that (lock cycles across two and three services, a worker
pool exhausted by calls back into it, also on the very first calls between
services, with a pool whose size cutwatch reads from the executor, behind a
round_robin balancer and through three services, a deadlock in one corner
of a busy system), and heavy deadlock-free traffic on which the collector must never
report one, while a naive detector that reads each process in turn does.

The test's own calls come from an uninstrumented client: they are outside
the model, like a load balancer's. Every process is started by the ``shops``
fixture and killed at teardown, also when a test fails; calls stuck in a
deadlock have long deadlines and are cancelled at teardown; every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from polling import wait_until
from processes import START_TIMEOUT, Proc, cutwatch_command, listening_address, spawn, stop_all

from cutwatch import CollectorClient, Cut
from cutwatch.core import TaskView
from cutwatch.predicates import find_deadlocks

SHOP_SCRIPT = Path(__file__).resolve().parent / "shop_service.py"
SNAPSHOT_TIMEOUT = 30.0
STUCK_DEADLINE = 600.0
"""Deadline of the test's calls into a deadlock: they stay blocked until teardown cancels them."""
QUEUED_SNAPSHOT_TIMEOUT = 4.0
"""A call queued behind an exhausted pool is never accounted for: its cut ends INCOMPLETE after this."""
HOLD_MS = 1500
"""How long a lock holder waits before its call: both ends of a lock cycle take their lock meanwhile."""
TRAFFIC_SECONDS = 20.0
"""Length of the phantom run: 20 s of 50 ms snapshots (about 400 cuts) keeps this file near a minute."""


def path(service: str, method: str) -> str:
    """The gRPC method path of a shop RPC, as tasks and reports show it."""
    return f"/shop.{service.capitalize()}/{method}"


def struct_to_python(message: Struct) -> dict[str, Any]:
    value: dict[str, Any] = MessageToDict(message)
    return value


# Processes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One shop service: its worker pool and its RPCs (``NAME=STEPS``, see shop_service.py).

    ``workers=None`` is ``ThreadPoolExecutor()``'s default size; ``tell_pool=False`` keeps the size
    from cutwatch (it reads it from the executor). ``service`` is the shop's ``--name`` when it
    differs from the spec's key: replicas of one service share it, and callers reach them through
    one ``round_robin`` channel.
    """

    workers: int | None
    rpcs: Sequence[str]
    otel: bool = False
    tell_pool: bool = True
    service: str = ""


@dataclass
class Service:
    name: str
    proc: Proc
    service: str
    """The shop service it runs (its gRPC service, ``shop.<Service>``)."""
    address: str = ""
    admin: str = ""
    process_id: str = ""


@dataclass
class Shops:
    """Starts a collector and shop services as OS processes; ``close`` ends every one of them."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    services: dict[str, Service] = field(default_factory=dict)
    collector: str = ""
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    _stuck: list[grpc.Future] = field(default_factory=list)

    def _spawn(self, name: str, command: list[str]) -> Proc:
        return spawn(self.tmp, self.procs, name, command)

    def start_collector(self, *extra: str) -> str:
        """A ``cutwatch collector`` process; returns the address it listens on."""
        command = [*cutwatch_command(), "collector", "--listen", "127.0.0.1:0", "--db", "cuts.db", *extra]
        proc = self._spawn("collector", command)

        self.collector = listening_address(proc)
        return self.collector

    def start(self, specs: Mapping[str, Spec], warm: bool = True) -> dict[str, Service]:
        """The services of ``specs``, peered with each other (and, with ``warm``, each channel used once).

        Without ``warm`` no service calls another before the test does: every channel between them is
        fresh (no answer seen on it)."""
        assert self.collector, "start the collector first"
        peers_file = self.tmp / "peers.json"
        for seed, (name, spec) in enumerate(sorted(specs.items())):
            command = [
                sys.executable,
                str(SHOP_SCRIPT),
                f"--name={spec.service or name}",
                f"--collector={self.collector}",
                f"--workers={spec.workers or 'default'}",
                *([] if spec.tell_pool else ["--no-tell-pool"]),
                f"--ready-file={self.tmp / (name + '.ready')}",
                f"--peers-file={peers_file}",
                f"--seed={seed}",
                *(f"--rpc={rpc}" for rpc in spec.rpcs),
                *(["--otel"] if spec.otel else []),
            ]
            self.services[name] = Service(name, self._spawn(name, command), spec.service or name)
        for name in specs:
            service, ready = self.services[name], self.tmp / f"{name}.ready"

            def is_ready(service: Service = service, ready: Path = ready) -> bool:
                assert service.proc.alive(), service.proc.tail()
                return ready.exists()

            wait_until(is_ready, f"{name} to serve and register", START_TIMEOUT, 0.1)
            _, service.address, service.admin, service.process_id = ready.read_text().split()
        replicas: dict[str, list[str]] = {}
        for name in sorted(specs):
            replicas.setdefault(self.services[name].service, []).append(self.services[name].address)
        partial = self.tmp / "peers.json.partial"
        # One address per service, as ever; the replicas of a service as a list (round_robin).
        partial.write_text(json.dumps({s: a[0] if len(a) == 1 else a for s, a in replicas.items()}))
        os.replace(partial, peers_file)

        def connected(name: str) -> bool:
            return sorted(self.stats(name)["peers"]) == sorted(set(replicas) - {self.services[name].service})

        for name in specs:
            wait_until(lambda name=name: connected(name), f"{name} to read its peers", START_TIMEOUT, 0.05)
            if warm:
                assert all(len(a) == 1 for a in replicas.values()), "Warm reaches one replica of each"
                answered = self.admin_call(name, "Warm")["answered"]
                assert answered == {peer: self.services[peer].process_id for peer in specs if peer != name}
        return {name: self.services[name] for name in specs}

    # Calls ------------------------------------------------------------------------------------------
    def _channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.insecure_channel(address)
        return channel

    def _stub(self, address: str, method: str) -> grpc.UnaryUnaryMultiCallable:
        return self._channel(address).unary_unary(
            method, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )

    def call(self, service: str, method: str, timeout: float = 30.0) -> dict[str, Any]:
        """A call to a shop RPC from outside the model (an uninstrumented client)."""
        target = self.services[service]
        reply = self._stub(target.address, path(target.service, method))(Struct(), timeout=timeout)
        return struct_to_python(reply)

    def call_stuck(self, service: str, method: str) -> grpc.Future:
        """A call expected to stay blocked: a long deadline, cancelled at teardown."""
        target = self.services[service]
        stub = self._stub(target.address, path(target.service, method))
        future = stub.future(Struct(), timeout=STUCK_DEADLINE)
        self._stuck.append(future)
        return future

    def until_stuck(
        self, calls: list[tuple[str, str]], formed: Callable[[], bool], what: str, again: bool = True
    ) -> list[grpc.Future]:
        """Make ``calls`` until ``formed()``: a call that finished (it ran before its partners came,
        on a very slow machine) is made again, so that the deadlock forms however late they come.
        Without ``again`` such a call fails the test instead: its answers warmed the channels that
        were to deadlock fresh."""
        futures = [self.call_stuck(service, method) for service, method in calls]

        def stuck() -> bool:
            for i, (service, method) in enumerate(calls):
                if futures[i].done():
                    assert futures[i].exception() is None, futures[i].exception()
                    assert again, f"{service}.{method} finished before the deadlock formed"
                    futures[i] = self.call_stuck(service, method)
            return formed()

        wait_until(stuck, what, START_TIMEOUT, 0.05)
        assert not any(future.done() for future in futures), "a call of the deadlock finished"
        return futures

    def admin_call(self, service: str, method: str) -> dict[str, Any]:
        reply = self._stub(self.services[service].admin, f"/shop.Admin/{method}")(Struct(), timeout=30.0)
        return struct_to_python(reply)

    def stats(self, service: str) -> dict[str, Any]:
        return self.admin_call(service, "Stats")

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """The service's tasks right now, read from its admin server (not a snapshot)."""
        tasks: list[dict[str, Any]] = json.loads(self.admin_call(service, "Tasks")["tasks_json"])
        return tasks

    # Teardown ---------------------------------------------------------------------------------------
    def close(self) -> None:
        for future in self._stuck:
            future.cancel()
        for channel in self._channels.values():
            channel.close()
        stop_all(self.procs)


@pytest.fixture
def shops(tmp_path: Path) -> Iterator[Shops]:
    shops = Shops(tmp_path)
    try:
        yield shops
    finally:
        shops.close()


# Reading reports ---------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cutwatch_command(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def cycle_of(deadlock: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The deadlock's tasks in cycle order (each step's task object from ``tasks``)."""
    tasks = {(t["process"], t["task_id"]): t for t in deadlock["tasks"]}
    return [tasks[(step["process"], step["task_id"])] for step in deadlock["cycle"]]


def rotated(items: list[Any], first: Callable[[Any], bool]) -> list[Any]:
    """``items`` rotated to begin with the first one for which ``first`` holds."""
    start = next(i for i, item in enumerate(items) if first(item))
    return items[start:] + items[:start]


def steps(cycle: list[dict[str, Any]], services: Mapping[str, Service]) -> list[tuple[str, str, list[str]]]:
    """(service, method, held locks) of each task of a cycle: the chain in words a test can compare."""
    by_process = {service.process_id: name for name, service in services.items()}
    return [(by_process[t["process"]], t["method"], t["held_locks"]) for t in cycle]


def assert_links(cycle: list[dict[str, Any]]) -> None:
    """Each task of a cycle waits on exactly the next one (the last on the first)."""
    for task, successor in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        (wait,) = task["waits_for"]
        assert {"process": successor["process"], "task_id": successor["task_id"]} in wait["waits_on"], (
            task,
            successor,
        )
        if wait["kind"] == "call":  # the callee's handler runs this very call, or its server has it queued
            assert (successor["caller"], successor["call_id"]) == (task["process"], wait["call_id"])
            assert wait["target"] == successor["process"]
        elif wait["kind"] == "queued":  # a worker of its own server's pool, one of them the next task's
            assert task["queued"] and not successor["queued"] and task["holds"] == []
            assert wait["target"] == task["process"] == successor["process"]
            assert wait["pools"] == [task["pool"]] == [successor["pool"]]
            assert wait["assumption"] is None
        elif wait["kind"] == "lock":
            assert wait["lock"] in successor["held_locks"]
            assert successor["process"] == task["process"]


def lock_ring(services: Sequence[str], otel: bool = False) -> dict[str, Spec]:
    """Each service holds its lock and calls the next one, whose handler wants that one's lock.

    Service i serves ``Hold`` (take lock i, wait, call service i+1's ``Want``) and
    ``Want`` (take lock i). One ``Hold`` call to every service closes the ring.
    """
    specs = {}
    for i, name in enumerate(services):
        following = services[(i + 1) % len(services)]
        specs[name] = Spec(
            workers=4,
            rpcs=[f"Hold=lock:{name}-lock,sleep:{HOLD_MS},call:{following}.Want", f"Want=lock:{name}-lock"],
            otel=otel,
        )
    return specs


def make_ring(shops: Shops, services: Sequence[str]) -> list[grpc.Future]:
    """Call every service's Hold; return once each shows Hold waiting on its call and Want on its lock."""

    def formed(name: str) -> bool:
        tasks = shops.tasks(name)
        hold = [t for t in tasks if t["method"] == path(name, "Hold") and t["outbound"]]
        want = [t for t in tasks if t["method"] == path(name, "Want") and t["waiting_lock"] == f"{name}-lock"]
        return len(hold) == 1 and len(want) == 1 and hold[0]["held_locks"] == [f"{name}-lock"]

    calls = [(name, "Hold") for name in services]
    return shops.until_stuck(calls, lambda: all(formed(name) for name in services), "the lock cycle to form")


# 1. Lock cycles ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ring", [["orders", "inventory"], ["orders", "inventory", "payments"]])
def test_lock_cycle_across_services_is_reported_with_its_chain(shops: Shops, ring: list[str]) -> None:
    address = shops.start_collector()
    services = shops.start(lock_ring(ring, otel=True))
    stuck = make_ring(shops, ring)
    with CollectorClient(address) as client:
        cut = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        assert cut.complete, (cut.reasons, cut.unsettled)
        found = client.deadlocks()
    (deadlock,) = found
    assert deadlock["epoch"] == cut.epoch
    assert deadlock["cut_status"] == "COMPLETE"
    assert deadlock["rests_on"] == []
    assert deadlock["processes"] == sorted(services[name].process_id for name in ring)

    # The cycle, in order: Hold at i -> (call) Want at i+1 -> (lock of i+1) Hold at i+1 -> ...
    cycle = rotated(cycle_of(deadlock), lambda t: t["method"] == path(ring[0], "Hold"))
    expected = []
    for i, name in enumerate(ring):
        following = ring[(i + 1) % len(ring)]
        expected.append((name, path(name, "Hold"), [f"{name}-lock"]))
        expected.append((following, path(following, "Want"), []))
    assert steps(cycle, services) == expected
    assert_links(cycle)
    assert len(deadlock["tasks"]) == 2 * len(ring)
    assert all(t["on_cycle"] for t in deadlock["tasks"])
    for task in deadlock["tasks"]:
        assert task["kind"] == "server" and task["pool"] == "server-1"
        assert task["service"] == next(n for n in ring if services[n].process_id == task["process"])
        if task["held_locks"]:
            assert f"lock {task['held_locks'][0]}" in task["holds"]
        # Traced with OpenTelemetry: a Want handler is in the trace of the Hold that called it.
        assert re.fullmatch(r"[0-9a-f]{32}", task["trace_id"]), task
        assert re.fullmatch(r"[0-9a-f]{16}", task["span_id"]), task
    for hold, want in zip(cycle[::2], cycle[1::2], strict=True):
        assert want["trace_id"] == hold["trace_id"] and want["span_id"] != hold["span_id"]
    assert len({t["trace_id"] for t in cycle[::2]}) == len(ring)  # one trace per client call

    # The chain reads in cycle order and comes back to where it started.
    chain = deadlock["chain"]
    labels = [f"{s['process']}#{s['task_id']}" for s in deadlock["cycle"]]
    assert chain.startswith(labels[0] + " [") and chain.endswith(" -> " + labels[0])
    positions = [chain.index(label + " [") for label in labels]
    assert positions == sorted(positions)
    assert chain.count("waits for lock") == len(ring) and chain.count("handled by") == len(ring)

    # The command line reads the same report, and says so with its exit code.
    result = run_cli("deadlocks", "--collector", address, "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["epoch"] == cut.epoch and doc["cut_status"] == "COMPLETE"
    assert doc["deadlocks"] == found
    text = run_cli("deadlocks", "--collector", address)
    assert text.returncode == 1 and "1 deadlock(s)" in text.stdout and chain in text.stdout
    assert not any(future.done() for future in stuck), "a call of the deadlock finished"


# 2. Pool exhaustion ------------------------------------------------------------------------------
def test_pool_exhaustion_is_reported_naming_the_pool(shops: Shops) -> None:
    """orders (2 workers) calls inventory, which calls back into orders: 2 calls at once exhaust it."""
    address = shops.start_collector()
    services = shops.start(
        {
            "orders": Spec(workers=2, rpcs=["Place=sleep:300,call:inventory.Reserve", "Price=sleep:1"]),
            "inventory": Spec(workers=4, rpcs=["Reserve=call:orders.Price"]),
        }
    )
    orders, inventory = services["orders"].process_id, services["inventory"].process_id

    def exhausted() -> bool:
        places = [t for t in shops.tasks("orders") if t["method"] == path("orders", "Place")]
        reserves = [t for t in shops.tasks("inventory") if t["method"] == path("inventory", "Reserve")]
        return len(places) == 2 and len(reserves) == 2 and all(t["outbound"] for t in places + reserves)

    stuck = shops.until_stuck([("orders", "Place")] * 2, exhausted, "orders' pool to be exhausted")
    with CollectorClient(address) as client:
        # The calls back into orders are queued in its pool: no worker takes them, so the cut never
        # sees their requests received, and ends INCOMPLETE saying where each one is queued.
        cut = client.snapshot(timeout=QUEUED_SNAPSHOT_TIMEOUT)
        assert cut.status == "INCOMPLETE"
        queued = {(u["caller"], u["method"], u["target"]) for u in cut.unsettled}
        assert queued == {(inventory, path("orders", "Price"), orders)}, cut.unsettled
        assert len(cut.unsettled) == 2
        assert cut.pools[orders] == {"server-1": 2}
        assert any("queued for a worker" in reason and orders in reason for reason in cut.reasons), (
            cut.reasons
        )
        found = client.deadlocks()
    (deadlock,) = found
    assert deadlock["epoch"] == cut.epoch and deadlock["cut_status"] == "INCOMPLETE"
    assert deadlock["processes"] == sorted([orders, inventory])
    by_method = Counter(t["method"] for t in deadlock["tasks"])
    assert by_method == {
        path("orders", "Place"): 2,
        path("inventory", "Reserve"): 2,
        path("orders", "Price"): 2,
    }

    # Place -> (call) Reserve -> (call) Price, queued at orders -> (a worker of orders' pool) Place.
    cycle = rotated(cycle_of(deadlock), lambda t: t["method"] == path("orders", "Place"))
    assert steps(cycle, services) == [
        ("orders", path("orders", "Place"), []),
        ("inventory", path("inventory", "Reserve"), []),
        ("orders", path("orders", "Price"), []),
    ]
    assert [t["queued"] for t in cycle] == [False, False, True]
    assert_links(cycle)
    places = sorted(t["task_id"] for t in deadlock["tasks"] if t["method"] == path("orders", "Place"))
    for task in deadlock["tasks"]:
        (wait,) = task["waits_for"]
        assert wait["assumption"] is None
        if task["method"] == path("orders", "Place"):
            assert "a worker of pool server-1" in task["holds"]
            assert wait["kind"] == "call" and wait["method"] == path("inventory", "Reserve")
        elif task["method"] == path("inventory", "Reserve"):  # its call is queued at orders: a fact
            assert wait["kind"] == "call" and wait["method"] == path("orders", "Price")
            assert wait["target"] == orders
        else:  # queued for a worker of orders' pool, held by the two Place handlers
            assert task["queued"] and task["process"] == orders and task["caller"] == inventory
            assert task["holds"] == [] and task["pool"] == "server-1"
            assert wait["kind"] == "queued" and wait["method"] == path("orders", "Price")
            assert wait["target"] == orders and wait["pools"] == ["server-1"]
            assert sorted(w["task_id"] for w in wait["waits_on"]) == places
            assert {w["process"] for w in wait["waits_on"]} == {orders}
            assert "2 of 2 workers busy" in wait["text"]
    edges = {(s["process"], s["task"]): s["edge"] for s in deadlock["cycle"]}
    assert edges[(inventory, path("inventory", "Reserve"))].startswith(
        f"calls {path('orders', 'Price')} (call "
    )
    assert edges[(orders, path("orders", "Price") + ", queued")] == (
        f"waits in the server's queue for a worker of {orders}'s pool server-1 (2 of 2 workers busy) held by"
    )
    # Nothing is assumed: the queued calls are facts of orders' local snapshot. The cut is INCOMPLETE
    # only because of them, which is all the report may say it rests on.
    assert all("assum" not in line and "pool server-1 has" not in line for line in deadlock["rests_on"])
    assert all("calls queued for a worker at their server" in line for line in deadlock["rests_on"])
    assert not any(future.done() for future in stuck)


# 2b. Pool exhaustion on first calls ---------------------------------------------------------------
PERIODIC = ("--every", "1s", "--snapshot-timeout", "3s")
"""A snapshot a second; a cut with calls queued for good ends (INCOMPLETE) 3 s after it started."""
REPORT_TIMEOUT = 90.0
"""Generous bound on a periodic cut reporting a deadlock that has formed (a few seconds when quiet)."""
PAY_MS = 1500
"""Pay waits before its call: every Pay of a test holds its worker before any Lookup arrives."""
TILL_RPCS = (f"Pay=sleep:{PAY_MS},call:fraud.Screen", "Lookup=sleep:1")
FRAUD = Spec(workers=40, rpcs=["Screen=call:till.Lookup"])
"""More workers than any till pool here (ThreadPoolExecutor's default is at most 32)."""


def queued_tasks(shops: Shops, name: str, method: str) -> list[dict[str, Any]]:
    return [t for t in shops.tasks(name) if t["method"] == method and t["queued"]]


def calling(shops: Shops, name: str, method: str) -> list[dict[str, Any]]:
    """Handlers of ``method`` running at ``name`` and waiting on a call."""
    return [t for t in shops.tasks(name) if t["method"] == method and not t["queued"] and t["outbound"]]


def assert_nothing_answered(shops: Shops, names: Sequence[str]) -> None:
    """No handler of any service has finished: no channel between them has seen an answer."""
    for name in names:
        stats = shops.stats(name)
        assert stats["handled"] == {} and stats["failed"] == {}, (name, stats)


def reported(client: CollectorClient) -> list[dict[str, Any]]:
    """The deadlocks of the first periodic cut that shows any (bounded wait)."""
    found: list[dict[str, Any]] = wait_until(
        client.deadlocks, "a periodic cut to report it", REPORT_TIMEOUT, 0.1
    )
    return found


def assert_queued_at_exhausted_pool(
    deadlock: Mapping[str, Any],
    shops: Shops,
    method: str,
    replicas: Sequence[str],
    workers: Mapping[str, int],
    whole: bool = True,
) -> None:
    """Every queued task of the report is ``method``, at the replica whose server really lists it
    queued (read from each replica's own tasks), waiting for a worker of its full pool; with
    ``whole``, the report has every call the replicas list queued."""
    where = {
        (t["caller"], t["call_id"]): shops.services[name].process_id
        for name in replicas
        for t in queued_tasks(shops, name, method)
    }
    queued = [t for t in deadlock["tasks"] if t["queued"]]
    assert queued and all(where.get((t["caller"], t["call_id"])) == t["process"] for t in queued), (
        where,
        queued,
    )
    if whole:
        assert len(queued) == len(where), (where, queued)
    busy = {
        t["process"]: sorted(
            x["task_id"] for x in deadlock["tasks"] if x["process"] == t["process"] and not x["queued"]
        )
        for t in queued
    }
    for task in queued:
        (wait,) = task["waits_for"]
        n = workers[task["process"]]
        assert task["method"] == method and task["holds"] == [] and task["pool"] == "server-1"
        assert wait["kind"] == "queued" and wait["assumption"] is None and wait["pools"] == ["server-1"]
        assert wait["target"] == task["process"] and f"{n} of {n} workers busy" in wait["text"], wait
        assert sorted(w["task_id"] for w in wait["waits_on"]) == busy[task["process"]]
        assert {w["process"] for w in wait["waits_on"]} == {task["process"]}
    for line in deadlock["rests_on"]:
        assert "assum" not in line and "calls queued for a worker at their server" in line, line


def test_pool_exhaustion_on_first_calls_is_reported(shops: Shops) -> None:
    """till (2 workers): Pay calls fraud.Screen, which calls till.Lookup. Two Pay calls at once, on
    channels that never carried a call: both Lookups queue behind the two Pays."""
    address = shops.start_collector(*PERIODIC)
    services = shops.start({"till": Spec(workers=2, rpcs=list(TILL_RPCS)), "fraud": FRAUD}, warm=False)
    till, fraud = services["till"].process_id, services["fraud"].process_id
    pay, screen, lookup = path("till", "Pay"), path("fraud", "Screen"), path("till", "Lookup")

    def formed() -> bool:
        return len(queued_tasks(shops, "till", lookup)) == 2 and len(calling(shops, "fraud", screen)) == 2

    stuck = shops.until_stuck([("till", "Pay")] * 2, formed, "both Lookups to queue", again=False)
    assert_nothing_answered(shops, ["till", "fraud"])
    with CollectorClient(address) as client:
        (deadlock,) = reported(client)
    assert deadlock["processes"] == sorted([till, fraud])
    assert Counter(t["method"] for t in deadlock["tasks"]) == {pay: 2, screen: 2, lookup: 2}
    assert all(t["on_cycle"] for t in deadlock["tasks"])
    cycle = rotated(cycle_of(deadlock), lambda t: t["method"] == pay)
    assert steps(cycle, services) == [("till", pay, []), ("fraud", screen, []), ("till", lookup, [])]
    assert_links(cycle)
    assert_queued_at_exhausted_pool(deadlock, shops, lookup, ["till"], {till: 2})
    assert (
        f"waits in the server's queue for a worker of {till}'s pool server-1 (2 of 2 workers busy)"
        in (deadlock["chain"])
    )
    assert not any(future.done() for future in stuck)


@pytest.mark.parametrize("workers", [2, None], ids=["2-workers-untold", "default-executor"])
def test_pool_exhaustion_is_reported_when_cutwatch_is_not_told_the_pool_size(
    shops: Shops, workers: int | None
) -> None:
    """As above, with ``server_interceptor()`` given no ``max_workers``: the agent reads the size from
    the server's executor, ``ThreadPoolExecutor(2)`` or ``ThreadPoolExecutor()``; as many Pay calls
    as it has workers."""
    address = shops.start_collector(*PERIODIC)
    till_spec = Spec(workers=workers, rpcs=list(TILL_RPCS), tell_pool=False)
    services = shops.start({"till": till_spec, "fraud": FRAUD}, warm=False)
    till, fraud = services["till"].process_id, services["fraud"].process_id
    pay, screen, lookup = path("till", "Pay"), path("fraud", "Screen"), path("till", "Lookup")
    # The size is learnt as the first call arrives: a Ping from this (uninstrumented) client, on
    # none of the channels that will deadlock.
    assert shops.admin_call("till", "Tasks")["pools"] == {"server-1": 0}
    shops.call("till", "Ping")
    size = int(shops.admin_call("till", "Tasks")["pools"]["server-1"])
    with ThreadPoolExecutor() as default:
        assert size == (workers or default._max_workers), size  # what the executor really has

    def formed() -> bool:
        return (
            len(queued_tasks(shops, "till", lookup)) == size and len(calling(shops, "fraud", screen)) == size
        )

    stuck = shops.until_stuck([("till", "Pay")] * size, formed, f"{size} Lookups to queue", again=False)
    assert_nothing_answered(shops, ["till", "fraud"])
    with CollectorClient(address) as client:
        (deadlock,) = reported(client)
    assert deadlock["processes"] == sorted([till, fraud])
    assert Counter(t["method"] for t in deadlock["tasks"]) == {pay: size, screen: size, lookup: size}
    cycle = rotated(cycle_of(deadlock), lambda t: t["method"] == pay)
    assert steps(cycle, services) == [("till", pay, []), ("fraud", screen, []), ("till", lookup, [])]
    assert_links(cycle)
    assert_queued_at_exhausted_pool(deadlock, shops, lookup, ["till"], {till: size})
    assert not any(future.done() for future in stuck)


def test_pool_exhaustion_behind_round_robin_is_attributed_to_the_replica_that_queued_it(shops: Shops) -> None:
    """Two till replicas of 1 worker each; fraud reaches till through one round_robin channel over
    both. One Pay per replica: each Lookup lands on some replica, whose only worker is taken."""
    address = shops.start_collector(*PERIODIC)
    replica = Spec(workers=1, rpcs=list(TILL_RPCS), service="till")
    services = shops.start({"till-a": replica, "till-b": replica, "fraud": FRAUD}, warm=False)
    tills = ["till-a", "till-b"]
    pids = {name: services[name].process_id for name in [*tills, "fraud"]}
    pay, screen, lookup = path("till", "Pay"), path("fraud", "Screen"), path("till", "Lookup")

    def formed() -> bool:
        queued = sum(len(queued_tasks(shops, name, lookup)) for name in tills)
        return queued == 2 and len(calling(shops, "fraud", screen)) == 2

    stuck = shops.until_stuck([(name, "Pay") for name in tills], formed, "both Lookups to queue", again=False)
    assert_nothing_answered(shops, [*tills, "fraud"])
    # Where each Pay's Lookup landed, as the replicas themselves list it: Pay's replica -> Lookup's.
    by_pid = {pids[name]: name for name in tills}
    screens = {t["outbound"][0]["call_id"]: by_pid[t["caller"]] for t in calling(shops, "fraud", screen)}
    landed = {screens[t["call_id"]]: name for name in tills for t in queued_tasks(shops, name, lookup)}
    assert sorted(landed) == tills, landed
    print(f"each Pay's Lookup queued at: {landed}")
    # One cycle through both replicas when the Lookups crossed over; else one per Lookup that came back
    # to its own Pay's replica (a Pay whose Lookup joined another's cycle is stuck behind it).
    cycles = sum(landed[name] == name for name in tills) or 1
    with CollectorClient(address) as client:
        found = reported(client)
    assert len(found) == cycles, (landed, [d["summary"] for d in found])
    every = [(t["process"], t["task_id"]) for d in found for t in d["tasks"]]
    assert len(every) == len(set(every)) == 6
    assert Counter(t["method"] for d in found for t in d["tasks"]) == {pay: 2, screen: 2, lookup: 2}
    for deadlock in found:
        assert deadlock["processes"] == sorted({t["process"] for t in deadlock["tasks"]})
        assert_queued_at_exhausted_pool(
            deadlock, shops, lookup, tills, {pids[n]: 1 for n in tills}, whole=False
        )
        # Pay -> Screen -> Lookup, queued at the replica it landed on -> that replica's Pay (-> ...).
        cycle = rotated(cycle_of(deadlock), lambda t: t["method"] == pay)
        assert [method for _, method, _ in steps(cycle, services)] == [pay, screen, lookup] * (
            len(cycle) // 3
        )
        assert_links(cycle)
    if cycles == 1:  # one deadlock spanning fraud and both tills
        (deadlock,) = found
        assert deadlock["processes"] == sorted(pids.values())
        crossed = landed == {"till-a": "till-b", "till-b": "till-a"}
        assert len(deadlock["cycle"]) == (6 if crossed else 3)
        assert all(t["on_cycle"] for t in deadlock["tasks"]) == crossed
    assert not any(future.done() for future in stuck)


def test_pool_exhaustion_through_three_services_on_first_calls(shops: Shops) -> None:
    """web (2 workers) -> orders -> stock -> back into web's exhausted pool; two Start calls."""
    address = shops.start_collector(*PERIODIC)
    services = shops.start(
        {
            "web": Spec(workers=2, rpcs=[f"Start=sleep:{PAY_MS},call:orders.Relay", "End=sleep:1"]),
            "orders": Spec(workers=4, rpcs=["Relay=call:stock.Forward"]),
            "stock": Spec(workers=4, rpcs=["Forward=call:web.End"]),
        },
        warm=False,
    )
    web = services["web"].process_id
    start, relay, forward, end = (
        path("web", "Start"),
        path("orders", "Relay"),
        path("stock", "Forward"),
        path("web", "End"),
    )

    def formed() -> bool:
        return len(queued_tasks(shops, "web", end)) == 2 and len(calling(shops, "stock", forward)) == 2

    stuck = shops.until_stuck([("web", "Start")] * 2, formed, "both Ends to queue", again=False)
    assert_nothing_answered(shops, ["web", "orders", "stock"])
    with CollectorClient(address) as client:
        (deadlock,) = reported(client)
    assert deadlock["processes"] == sorted(s.process_id for s in services.values())
    assert Counter(t["method"] for t in deadlock["tasks"]) == {start: 2, relay: 2, forward: 2, end: 2}
    cycle = rotated(cycle_of(deadlock), lambda t: t["method"] == start)
    assert steps(cycle, services) == [
        ("web", start, []),
        ("orders", relay, []),
        ("stock", forward, []),
        ("web", end, []),
    ]
    assert_links(cycle)
    assert_queued_at_exhausted_pool(deadlock, shops, end, ["web"], {web: 2})
    assert not any(future.done() for future in stuck)


# 3. No phantom deadlocks -------------------------------------------------------------------------
PHANTOM_SPECS = {
    # A chain orders -> inventory -> payments with waits all along, a lock at payments that Audit
    # holds for long stretches, and Restock calling back into orders. orders and inventory have 2
    # workers each: 2 Place and 2 Restock calls at once could deadlock the two pools, so the
    # traffic runs them in alternating phases, never both at once.
    "orders": Spec(workers=2, rpcs=["Place=call:inventory.Reserve", "Echo=sleep:15-25"]),
    "inventory": Spec(
        workers=2, rpcs=["Reserve=sleep:5-15,call:payments.Charge", "Restock=call:orders.Echo"]
    ),
    "payments": Spec(workers=4, rpcs=["Charge=lock:ledger,sleep:1-3", "Audit=lock:ledger,sleep:20-120"]),
}
READ_PAUSE = 0.01
"""Pause of the naive detector between two reads (see NaiveDetector)."""


class Traffic:
    """Phases of 2 Place calls, then 2 Restock calls (each phase waits for the last), and Audits beside."""

    def __init__(self, shops: Shops) -> None:
        self.shops = shops
        self.ok = Counter[str]()
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="phase")
        self._threads = [
            threading.Thread(target=self._phases, daemon=True),
            threading.Thread(target=self._audits, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        assert not any(thread.is_alive() for thread in self._threads)

    def _call(self, service: str, method: str) -> None:
        try:
            self.shops.call(service, method, timeout=30.0)
        except grpc.RpcError as exc:
            with self._lock:
                self.failed.append(f"{service}.{method}: {exc}")
        else:
            with self._lock:
                self.ok[method] += 1

    def _phases(self) -> None:
        while not self._stop.is_set():
            for service, method in (("orders", "Place"), ("inventory", "Restock")):
                calls = [self._pool.submit(self._call, service, method) for _ in range(2)]
                for call in calls:
                    call.result(timeout=60.0)

    def _audits(self) -> None:
        while not self._stop.is_set():
            self._call("payments", "Audit")
            self._stop.wait(0.05)


@dataclass
class NaiveDetector:
    """Reads each process's tasks in turn (no snapshot) and runs deadlock detection on the stitched result.

    A blocking call whose handler it did not see is taken to be queued in its callee's pool, as a
    detector without channel state must: that is what ``unsettled`` says to ``find_deadlocks``.
    It pauses ``READ_PAUSE`` between reads, as a poller visiting one service after another over a
    real network does at least: on loopback two reads are well under a millisecond apart, less
    than it takes this traffic to change phase.
    """

    shops: Shops
    services: Sequence[str]
    reads: int = 0
    phantoms: list[dict[str, Any]] = field(default_factory=list)

    def read_once(self) -> Cut:
        started = time.time()
        tasks: dict[str, tuple[TaskView, ...]] = {}
        pools: dict[str, dict[str, int]] = {}
        states: dict[str, dict[str, Any]] = {}
        for name in self.services:  # one process after another, as fast as the reads go
            read = self.shops.admin_call(name, "Tasks")
            process = read["process"]
            tasks[process] = tuple(TaskView.from_json(t) for t in json.loads(read["tasks_json"]))
            pools[process] = {pool: int(n) for pool, n in read["pools"].items()}
            states[process] = {"service": name, "state": {}}
            time.sleep(READ_PAUSE)
        handlers = {(t.caller, t.call_id) for ts in tasks.values() for t in ts if t.kind == "server"}
        queued = [
            {"caller": p, "call_id": c.call_id, "method": c.method, "target": c.target, "failed": ""}
            for p, ts in tasks.items()
            for t in ts
            for c in t.outbound
            if c.blocking and (p, c.call_id) not in handlers
        ]
        self.reads += 1
        return Cut(
            epoch=self.reads,
            status="COMPLETE",
            started=started,
            finished=time.time(),
            states=states,
            in_transit=(),
            clocks={p: {} for p in tasks},
            tasks=tasks,
            unsettled=tuple(queued),
            pools=pools,
        )

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            cut = self.read_once()
            for deadlock in find_deadlocks(cut):
                self.phantoms.append(deadlock.to_json())


def test_no_phantom_deadlocks_under_heavy_traffic_where_a_naive_detector_sees_them(shops: Shops) -> None:
    address = shops.start_collector("--every", "50ms")
    services = shops.start(PHANTOM_SPECS)
    naive = NaiveDetector(shops, ["orders", "inventory", "payments"])
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    with CollectorClient(address) as client, CollectorClient(address) as watcher:
        first = client.latest()
        since = first.epoch if first is not None else 0

        def watch() -> None:
            events.extend(watcher.watch())

        watching = threading.Thread(target=watch, daemon=True)
        watching.start()
        poller = threading.Thread(target=naive.run, args=(stop,), daemon=True)
        with Traffic(shops) as traffic:
            poller.start()
            time.sleep(TRAFFIC_SECONDS)
            stop.set()
            poller.join(60.0)
        last = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        cuts = [info for info in client.list_cuts(limit=10_000) if info.epoch > since]
        verdicts = {}
        for info in cuts:
            checked = client.results(info.epoch, name="cutwatch.deadlock")
            verdict = checked.results[0].status if checked and checked.results else None
            verdicts[info.epoch] = (info.status, verdict)
        busy = 0
        for epoch in random.Random(0).sample(sorted(verdicts), min(40, len(verdicts))):
            cut = client.get(epoch)
            assert cut is not None
            busy += any(len(cut.tasks.get(services[n].process_id, ())) >= 2 for n in ("orders", "inventory"))
        watcher.close()
        watching.join(30.0)
    assert not poller.is_alive() and not watching.is_alive()
    print(
        f"{len(verdicts)} cuts checked ({Counter(v for v in verdicts.values())}), {busy} of 40 sampled busy; "
        f"traffic {dict(traffic.ok)}; naive: {len(naive.phantoms)} phantoms in {naive.reads} reads"
    )

    # The traffic ran, deadlock-free, and the collector checked cut after cut.
    assert not traffic.failed, traffic.failed[:5]
    assert traffic.ok["Place"] > 50 and traffic.ok["Restock"] > 50, traffic.ok
    assert last.complete, last.reasons
    complete = [epoch for epoch, (status, _) in verdicts.items() if status == "COMPLETE"]
    assert len(complete) >= 50, Counter(status for status, _ in verdicts.values())
    assert all(verdicts[epoch][1] == "PASS" for epoch in complete), verdicts
    assert busy > 0, "no sampled cut caught the pools busy"
    # Not one deadlock, on any cut.
    assert [v for v in verdicts.values() if v[1] == "FAIL"] == []
    assert [e for e in events if e["name"] == "cutwatch.deadlock"] == []

    # The same traffic, read process by process: phantom deadlocks.
    assert naive.reads > 100
    assert naive.phantoms, f"the naive detector saw no phantom in {naive.reads} reads"
    kinds = Counter(w["kind"] for d in naive.phantoms for t in d["tasks"] for w in t["waits_for"])
    assert kinds["worker"] > 0, kinds


# 4. A deadlock in one corner ---------------------------------------------------------------------
def test_deadlock_in_one_corner_while_the_rest_keeps_serving(shops: Shops) -> None:
    ring = lock_ring(["orders", "inventory"])
    specs = {
        "orders": Spec(workers=4, rpcs=[*ring["orders"].rpcs, "Browse=call:payments.Quote"]),
        "inventory": Spec(workers=4, rpcs=[*ring["inventory"].rpcs, "Count=sleep:1-5"]),
        "payments": Spec(workers=4, rpcs=["Quote=sleep:1-10", "Pay=call:shipping.Ship"]),
        "shipping": Spec(workers=2, rpcs=["Ship=lock:truck,sleep:1-10"]),
    }
    address = shops.start_collector()
    services = shops.start(specs)
    healthy = [("orders", "Browse"), ("inventory", "Count"), ("payments", "Pay"), ("payments", "Quote")]
    ok = Counter[str]()
    failed: list[str] = []
    stop = threading.Event()

    def serve_forever() -> None:
        rng = random.Random(4)
        while not stop.is_set():
            service, method = rng.choice(healthy)
            try:
                shops.call(service, method, timeout=30.0)
            except grpc.RpcError as exc:
                failed.append(f"{service}.{method}: {exc}")
            else:
                ok[method] += 1

    background = threading.Thread(target=serve_forever, daemon=True)
    background.start()
    try:
        wait_until(lambda: sum(ok.values()) > 20, "the healthy traffic to flow", START_TIMEOUT)
        stuck = make_ring(shops, ["orders", "inventory"])
        before = ok.copy()
        result = run_cli("deadlocks", "--now", "--collector", address, "--json")
        assert result.returncode == 1, (result.stdout, result.stderr)
        doc = json.loads(result.stdout)
        with CollectorClient(address) as client:
            cut = client.get(doc["epoch"])
            assert cut is not None and cut.complete, cut and cut.reasons
            assert client.deadlocks() == doc["deadlocks"]
        during = ok.copy()
        wait_until(lambda: all(ok[m] > during[m] for _, m in healthy), "calls to succeed after detection")
    finally:
        stop.set()
        background.join(60.0)
    assert not background.is_alive()
    assert not failed, failed[:5]
    assert sum(during.values()) > sum(before.values()), "no call succeeded while the deadlock was detected"

    (deadlock,) = doc["deadlocks"]
    corner = {services["orders"].process_id, services["inventory"].process_id}
    assert set(deadlock["processes"]) == corner
    assert sorted((t["process"], t["method"]) for t in deadlock["tasks"]) == sorted(
        (services[name].process_id, path(name, method))
        for name in ("orders", "inventory")
        for method in ("Hold", "Want")
    )
    cycle = rotated(cycle_of(deadlock), lambda t: t["method"] == path("orders", "Hold"))
    assert steps(cycle, services) == [
        ("orders", path("orders", "Hold"), ["orders-lock"]),
        ("inventory", path("inventory", "Want"), []),
        ("inventory", path("inventory", "Hold"), ["inventory-lock"]),
        ("orders", path("orders", "Want"), []),
    ]
    assert_links(cycle)
    # The cut saw the rest of the system at work, the deadlocked processes' other RPCs included.
    handled = {name: cut.state_of(services[name].process_id)["handled"] for name in specs}
    assert handled["payments"]["Quote"] > 0 and handled["shipping"]["Ship"] > 0, handled
    assert handled["orders"]["Browse"] > 0 and handled["inventory"]["Count"] > 0, handled
    assert not any(future.done() for future in stuck)


# 5. Predicates that fail to run do not take the collector down ------------------------------------
PREDICATES = '''
"""Predicates for the shop: one real invariant and two broken ones."""

from cutwatch.predicates import holds, invariant, state_values, violation


@invariant("shop.broken")
def broken(cut):
    raise RuntimeError("this predicate has a bug")


@invariant("shop.endless")
def endless(cut):
    while True:
        pass


@invariant("shop.refunds_covered")
def refunds_covered(cut):
    """payments never refunds more often than it charged."""
    handled = state_values(cut, "handled", services="payments")
    charges = sum(h.get("Charge", 0) for h in handled.values())
    refunds = sum(h.get("Refund", 0) for h in handled.values())
    if refunds > charges:
        return violation(f"{refunds} refunds for {charges} charges", charges=charges, refunds=refunds)
    return holds(f"{refunds} refunds for {charges} charges", charges=charges, refunds=refunds)
'''


def test_predicates_that_raise_or_hang_are_errors_and_the_collector_goes_on(
    shops: Shops, tmp_path: Path
) -> None:
    predicates = tmp_path / "shop_predicates.py"
    predicates.write_text(PREDICATES)
    address = shops.start_collector("--predicates", str(predicates), "--predicate-timeout", "1s")
    shops.start({"payments": Spec(workers=2, rpcs=["Charge=sleep:1", "Refund=sleep:1"])}, warm=False)
    names = ["cutwatch.deadlock", "shop.broken", "shop.endless", "shop.refunds_covered"]

    def verdicts(client: CollectorClient, epoch: int) -> dict[str, tuple[str, str]]:
        checked = client.results(epoch)
        assert checked is not None and checked.epoch == epoch and checked.cut_status == "COMPLETE"
        assert sorted(r.name for r in checked.results) == names
        return {r.name: (r.status, r.message) for r in checked.results}

    with CollectorClient(address) as client:
        for _ in range(2):
            shops.call("payments", "Charge")
        shops.call("payments", "Refund")
        cuts = [client.snapshot(timeout=SNAPSHOT_TIMEOUT) for _ in range(3)]
        for cut in cuts:  # every cut is taken and checked, however the predicates end
            assert cut.complete, cut.reasons
            results = verdicts(client, cut.epoch)
            (broken, why), (endless, how) = results["shop.broken"], results["shop.endless"]
            assert broken == "ERROR" and "RuntimeError: this predicate has a bug" in why, why
            assert endless == "ERROR" and "timed out" in how, how
            assert results["shop.refunds_covered"] == ("PASS", "1 refunds for 2 charges")
            assert results["cutwatch.deadlock"][0] == "PASS"
        assert [cut.epoch for cut in cuts] == sorted({cut.epoch for cut in cuts})

        only_errors = run_cli("check", "--collector", address, "--json")
        assert only_errors.returncode == 5, (only_errors.stdout, only_errors.stderr)
        doc = json.loads(only_errors.stdout)
        assert doc["epoch"] == cuts[-1].epoch
        statuses = {r["name"]: r["status"] for r in doc["results"]}
        assert statuses == dict(zip(names, ["PASS", "ERROR", "ERROR", "PASS"], strict=True))

        for _ in range(2):  # now payments refunds more than it charged
            shops.call("payments", "Refund")
        violated = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        assert violated.complete
        assert verdicts(client, violated.epoch)["shop.refunds_covered"] == ("FAIL", "3 refunds for 2 charges")
        failing = run_cli("check", "--collector", address, "--json")
        assert failing.returncode == 1, (failing.stdout, failing.stderr)
        (result,) = [r for r in json.loads(failing.stdout)["results"] if r["status"] == "FAIL"]
        assert result["name"] == "shop.refunds_covered"
        assert result["witness"] == {"charges": 2, "refunds": 3}
        assert client.status()["stats"]["complete"] == 4
    assert shops.procs[0].alive(), shops.procs[0].tail()
