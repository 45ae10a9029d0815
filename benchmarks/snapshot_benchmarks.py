"""What snapshots cost: their latency, the collector's ingest, and the application's RPCs meanwhile.

Three measurements, each with its reference measured in the same run:

  latency   a collector in this process and N agents (4, 16, 64) spread over
            4 worker processes; every agent has its own sync gRPC server and
            calls a few others (a bank: debit in ``atomic()``, Credit RPC,
            credit in ``atomic()`` at the receiver). On-demand snapshots
            through ``CollectorClient.snapshot``, idle and under traffic, in
            alternating blocks, each next to the round trip of a no-op unary
            RPC to the same collector (GetCut of an epoch that does not exist).
  ingest    the collector's Coordinator and SqliteCutStore driven directly
            with synthetic agent messages (no gRPC): local snapshots and
            in-transit records per second, and the time from the first piece
            of a cut to the cut stored.
  app       the application's RPC latency (p50, p99) with snapshots started
            every 100 ms versus none, in interleaved rounds, traffic running
            throughout.

    python benchmarks/snapshot_benchmarks.py [--quick] [--json] [--sizes 4,16,64] [--rate N]

The worker processes are started from this same file (``--worker``); every
one is stopped at the end, also when something fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.collector import (
    CollectorClient,
    CollectorServer,
    CutStatus,
    CutSummary,
    SqliteCutStore,
    StoredCut,
)
from cutwatch.collector._coordinator import AgentSession, Coordinator
from cutwatch.core import AgentEvent, LocalSnapshot, Registration
from cutwatch.proto import agent_message_from_pb
from cutwatch.proto import collector_pb2 as pb

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine, emit  # noqa: E402

SERVICE = "cutwatch.bench.Bank"
METHOD = f"/{SERVICE}/Credit"
INITIAL_BALANCE = 1_000
WORKERS = 4
POOL = 4
FANOUT = 8
TRAFFIC_THREADS = 2
CALL_TIMEOUT = 10.0
SNAPSHOT_TIMEOUT = 10.0
MISSING_EPOCH = 10**12
PARTS = ("latency", "ingest", "app")
MODES = ("idle", "traffic")
PHASES = ("none", "every 100 ms")
SNAPSHOT_PERIOD = 0.1
GOAL_ROUND_TRIPS = 3
GOAL_CUT_MS = 100.0
GOAL_P50_RATIO = 1.10
READY_TIMEOUT = 120.0
FLUSH_ROUND = "flushed" in pb.AgentMessage.DESCRIPTOR.fields_by_name
"""Whether this cutwatch ends a snapshot with a flush round (a marker from every participant)."""
REPLY_TIMEOUT = 60.0


# Worker processes ------------------------------------------------------------------------------
class BankAgent:
    """One agent with its own gRPC server holding one balance; calls a few other agents."""

    def __init__(self, collector: str, instance: str, pool: int) -> None:
        self.agent = cutwatch.Agent("bank", collector=collector, instance_id=instance).start()
        self.balance = INITIAL_BALANCE
        self.agent.register_state("balance", lambda: self.balance)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=pool),
            interceptors=[self.agent.server_interceptor(max_workers=pool)],
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self._credit, request_deserializer=Struct.FromString, response_serializer=Struct.SerializeToString
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Credit": handler}),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()
        self.channels: list[grpc.Channel] = []
        self.stubs: list[grpc.UnaryUnaryMultiCallable[Struct, Struct]] = []
        self.request = Struct()
        self.request.update({"amount": 1})

    def _credit(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        with self.agent.atomic():
            self.balance += int(request.fields["amount"].number_value)
        return Struct()

    def connect(self, addresses: Sequence[str]) -> None:
        for address in addresses:
            channel = grpc.insecure_channel(address)
            self.channels.append(channel)
            intercepted = grpc.intercept_channel(channel, self.agent.client_interceptor())
            self.stubs.append(
                intercepted.unary_unary(
                    METHOD,
                    request_serializer=Struct.SerializeToString,
                    response_deserializer=Struct.FromString,
                )
            )

    def transfer(self, rng: random.Random) -> None:
        """Debit one unit and send it, in one atomic block; wait for the answer outside it."""
        stub = rng.choice(self.stubs)
        with self.agent.atomic():
            self.balance -= 1
            answer = stub.future(self.request, timeout=CALL_TIMEOUT)
        answer.result()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop(None).wait(10)
        self.agent.close()


class Traffic:
    """Paced transfers from ``threads`` threads; each records (start, latency) in monotonic ns.

    Paced rather than back to back, so that the latency is that of a call on
    a machine with spare capacity, not the queueing of a saturated one.
    """

    def __init__(self, agents: Sequence[BankAgent], threads: int, seed: int) -> None:
        self._agents = agents
        self._threads_wanted = threads
        self._seed = seed
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[tuple[int, int]] = []
        self.errors = 0
        self.calls = 0

    def set_rate(self, rate: float) -> None:
        """Calls per second from this process; 0 stops (waits for the calls in flight)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT + 5)
        self._threads = []
        if rate <= 0:
            return
        self._stop = threading.Event()
        interval = self._threads_wanted / rate
        for index in range(self._threads_wanted):
            thread = threading.Thread(
                target=self._run, args=(index, interval, self._stop), name=f"traffic-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, index: int, interval: float, stop: threading.Event) -> None:
        rng = random.Random(self._seed * 1000 + index)
        next_at = time.monotonic() + rng.random() * interval
        while True:
            delay = next_at - time.monotonic()
            if stop.wait(max(delay, 0.0)):
                return
            # No bursts to catch up after a stall: at most one call late.
            next_at = max(next_at + interval, time.monotonic() - interval)
            agent = rng.choice(self._agents)
            start = time.monotonic_ns()
            try:
                agent.transfer(rng)
            except grpc.RpcError:
                with self._lock:
                    self.errors += 1
                continue
            latency = time.monotonic_ns() - start
            with self._lock:
                self.calls += 1
                self._samples.append((start, latency))

    def drain(self) -> list[tuple[int, int]]:
        with self._lock:
            out, self._samples = self._samples, []
        return out


def _reply(out: IO[str], doc: Mapping[str, Any]) -> None:
    out.write(json.dumps(doc) + "\n")
    out.flush()


def worker_main(argv: Sequence[str]) -> int:
    """A worker process: ``agents`` bank agents; commands and replies are JSON lines on stdin/stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--collector", required=True)
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fanout", type=int, default=FANOUT)
    parser.add_argument("--pool", type=int, default=POOL)
    parser.add_argument("--threads", type=int, default=TRAFFIC_THREADS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = sys.stdout
    agents: list[BankAgent] = []
    traffic = Traffic(agents, args.threads, args.seed + args.index)
    try:
        for j in range(args.agents):
            agents.append(BankAgent(args.collector, f"w{args.index}a{j}", args.pool))
        for bank in agents:
            if not bank.agent.wait_registered(60):
                raise RuntimeError(f"{bank.agent.process_id} did not register with the collector")
        _reply(
            out,
            {
                "ready": True,
                "pid": os.getpid(),
                "agents": [{"process": b.agent.process_id, "address": b.address} for b in agents],
            },
        )
        rng = random.Random(args.seed * 7919 + args.index)
        for line in sys.stdin:
            cmd = json.loads(line)
            name = cmd["cmd"]
            if name == "connect":
                for bank in agents:
                    others = [address for _, address in cmd["peers"] if address != bank.address]
                    bank.connect(rng.sample(others, min(args.fanout, len(others))))
                _reply(out, {"ok": True})
            elif name == "rate":
                traffic.set_rate(float(cmd["rate"]))
                _reply(out, {"ok": True})
            elif name == "cpu":
                _reply(out, {"cpu": time.process_time()})
            elif name == "samples":
                _reply(out, {"samples": traffic.drain(), "errors": traffic.errors, "calls": traffic.calls})
            elif name == "stats":
                stats = [bank.agent.stats() for bank in agents]
                _reply(
                    out,
                    {
                        "balance": sum(bank.balance for bank in agents),
                        "errors": traffic.errors,
                        "calls": traffic.calls,
                        "internal_errors": sum(s.internal_errors for s in stats),
                        "untracked": sum(s.untracked for s in stats),
                        "stamps_degraded": sum(s.stamps_degraded for s in stats),
                        "snapshots_taken": sum(s.snapshots_taken for s in stats),
                        "snapshots_skipped": sum(s.snapshots_skipped for s in stats),
                        "events_dropped": sum(s.collector_events_dropped for s in stats),
                        "max_clock_entries": max(len(bank.agent.clock) for bank in agents),
                    },
                )
            elif name == "quit":
                break
            else:
                _reply(out, {"error": f"unknown command {name!r}"})
    finally:
        traffic.set_rate(0)
        for bank in agents:
            bank.close()
    _reply(out, {"bye": True})
    return 0


# The driver's view of the workers ---------------------------------------------------------------
class Worker:
    """One worker process and the line protocol to it; every wait is bounded."""

    def __init__(self, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def spawn(cls, collector: str, agents: int, index: int, seed: int, logdir: Path) -> Worker:
        log_path = logdir / f"worker-{index}.log"
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    "--collector",
                    collector,
                    "--agents",
                    str(agents),
                    "--index",
                    str(index),
                    "--seed",
                    str(seed),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        return cls(proc, log_path)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def receive(self, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"worker {self.proc.pid} did not answer within {timeout} s") from None
        if line is None:
            raise RuntimeError(f"worker {self.proc.pid} ended: {self.log_tail()}")
        doc: dict[str, Any] = json.loads(line)
        if "error" in doc:
            raise RuntimeError(f"worker {self.proc.pid}: {doc['error']}")
        return doc

    def request(self, cmd: Mapping[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.receive(timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Ask it to quit; kill it (this one process, by its handle) if it does not."""
        if self.proc.poll() is None:
            try:
                self.request({"cmd": "quit"}, timeout=30)
                self.proc.wait(15)
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Fleet:
    """``agents`` agents over ``processes`` worker processes, connected to each other."""

    def __init__(self, collector: str, agents: int, processes: int, seed: int, logdir: Path) -> None:
        processes = min(processes, agents)
        self.agents = agents
        self.workers: list[Worker] = []
        self.processes: list[str] = []
        shares = [agents // processes + (1 if i < agents % processes else 0) for i in range(processes)]
        try:
            for index, share in enumerate(shares):
                self.workers.append(Worker.spawn(collector, share, index, seed, logdir))
            peers: list[tuple[str, str]] = []
            for worker in self.workers:
                ready = worker.receive(READY_TIMEOUT)
                peers += [(a["process"], a["address"]) for a in ready["agents"]]
            self.processes = [process for process, _ in peers]
            for worker in self.workers:
                worker.request({"cmd": "connect", "peers": peers})
        except BaseException:
            self.close()
            raise

    def rate(self, total: float) -> None:
        """Total transfers per second over the fleet; returns once every worker has switched."""
        for worker in self.workers:
            worker.request({"cmd": "rate", "rate": total / len(self.workers)}, timeout=CALL_TIMEOUT + 30)

    def cpu(self) -> float:
        """CPU seconds (user + system, every thread) the worker processes have used so far."""
        return sum(float(worker.request({"cmd": "cpu"})["cpu"]) for worker in self.workers)

    def samples(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for worker in self.workers:
            out += [(int(t), int(lat)) for t, lat in worker.request({"cmd": "samples"})["samples"]]
        return out

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for worker in self.workers:
            for key, value in worker.request({"cmd": "stats"}).items():
                total[key] = (
                    max(total.get(key, 0), value) if key.startswith("max_") else total.get(key, 0) + value
                )
        return total

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The collector, instrumented ----------------------------------------------------------------------
class TimedStore:
    """A SqliteCutStore that remembers how long each ``save_cut`` took (the cut write)."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteCutStore(path)
        self.save_seconds: dict[int, float] = {}

    def save_cut(self, cut: StoredCut) -> None:
        start = time.perf_counter()
        try:
            self.inner.save_cut(cut)
        finally:
            self.save_seconds[cut.epoch] = time.perf_counter() - start

    def get_cut(self, epoch: int) -> StoredCut | None:
        return self.inner.get_cut(epoch)

    def latest(self, status: CutStatus | None = None) -> StoredCut | None:
        return self.inner.latest(status)

    def list_cuts(
        self,
        status: CutStatus | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[CutSummary]:
        return self.inner.list_cuts(status, since, until, limit)

    def next_epoch(self) -> int:
        return self.inner.next_epoch()

    def put_meta(self, key: str, value: str) -> None:
        self.inner.put_meta(key, value)

    def get_meta(self, key: str) -> str | None:
        return self.inner.get_meta(key)

    def close(self) -> None:
        self.inner.close()


class Arrivals:
    """When each local snapshot reached the coordinator (wall clock, like a cut's ``started``)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.by_epoch: dict[int, list[float]] = {}
        original = coordinator.on_message

        def on_message(session: AgentSession, seq: int, body: AgentEvent | None) -> None:
            if isinstance(body, LocalSnapshot):
                self.by_epoch.setdefault(body.epoch, []).append(time.time())
            original(session, seq, body)

        coordinator.on_message = on_message  # type: ignore[method-assign]


@dataclass
class Collector:
    server: CollectorServer
    store: TimedStore
    arrivals: Arrivals

    @property
    def address(self) -> str:
        return self.server.address


@contextmanager
def running_collector(workdir: Path, name: str) -> Iterator[Collector]:
    store = TimedStore(workdir / f"{name}.db")
    server = CollectorServer(store, listen="127.0.0.1:0", snapshot_timeout=SNAPSHOT_TIMEOUT)
    arrivals = Arrivals(server.coordinator)
    server.start()
    try:
        yield Collector(server, store, arrivals)
    finally:
        server.stop()


def wait_for_agents(client: CollectorClient, count: int, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while client.status()["stats"]["agents"] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} agents registered within {timeout} s")
        time.sleep(0.05)


def conserved(cut: cutwatch.Cut, agents: int) -> bool:
    """Balances plus the money in transit add up to what the agents started with."""
    held = sum(int(cut.state_of(p).get("balance", 0)) for p in cut.states)
    moving = sum(
        int(m.payload.get("amount", 0))
        for m in cut.in_transit
        if m.kind == "request" and m.method == METHOD and isinstance(m.payload, dict)
    )
    return held + moving == INITIAL_BALANCE * agents


# 1. Snapshot latency -----------------------------------------------------------------------------
@dataclass
class LatencySample:
    status: str
    round_trip_ms: float
    internal_ms: float
    write_ms: float
    first_local_ms: float
    last_local_ms: float
    in_transit: int
    conserved: bool
    unit_getcut_ms: float
    unit_status_ms: float


def _timed_ms(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def measure_latency(
    agents: int, cfg: Config, workdir: Path, logdir: Path
) -> tuple[dict[str, list[LatencySample]], dict[str, Any]]:
    samples: dict[str, list[LatencySample]] = {mode: [] for mode in MODES}
    with ExitStack() as stack:
        col = stack.enter_context(running_collector(workdir, f"latency-{agents}"))
        fleet = stack.enter_context(Fleet(col.address, agents, cfg.workers, cfg.seed, logdir))
        client = stack.enter_context(CollectorClient(col.address))
        wait_for_agents(client, agents)
        # Warm up: stamps learn their names, the collector's and agents' code paths run once.
        fleet.rate(cfg.rate)
        time.sleep(cfg.warm)
        for _ in range(2):
            client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        fleet.rate(0)
        for _ in range(2):
            client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        # CPU that agents and collector use with no snapshot and no traffic (heartbeats, pollers),
        # so that it can be told apart from what the snapshots cost.
        agents_cpu, collector_cpu, quiet_start = fleet.cpu(), time.process_time(), time.monotonic()
        time.sleep(cfg.quiet)
        quiet = time.monotonic() - quiet_start
        background = ((fleet.cpu() - agents_cpu) / quiet, (time.process_time() - collector_cpu) / quiet)
        cut_bytes = 0
        cpu: dict[str, list[float]] = {mode: [0.0, 0.0] for mode in MODES}
        for index in range(cfg.rounds):
            for mode in MODES if index % 2 == 0 else MODES[::-1]:
                fleet.rate(cfg.rate if mode == "traffic" else 0)
                time.sleep(cfg.settle)
                agents_cpu, collector_cpu, block_start = fleet.cpu(), time.process_time(), time.monotonic()
                for _ in range(cfg.snapshots):
                    # The first call after a pause pays for waking threads up; the unit is measured
                    # warm, like the snapshot that follows it, so that the budget is not inflated.
                    client.get(MISSING_EPOCH)
                    getcut = _timed_ms(lambda: client.get(MISSING_EPOCH))
                    status = _timed_ms(client.status)
                    start = time.perf_counter()
                    cut = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
                    round_trip = (time.perf_counter() - start) * 1000
                    arrived = col.arrivals.by_epoch.get(cut.epoch, [cut.started])
                    cut_bytes = max(cut_bytes, len(cut.dumps()))
                    samples[mode].append(
                        LatencySample(
                            status=cut.status,
                            round_trip_ms=round_trip,
                            internal_ms=(cut.finished - cut.started) * 1000,
                            write_ms=col.store.save_seconds.get(cut.epoch, 0.0) * 1000,
                            first_local_ms=(min(arrived) - cut.started) * 1000,
                            last_local_ms=(max(arrived) - cut.started) * 1000,
                            in_transit=len(cut.in_transit),
                            conserved=conserved(cut, agents),
                            unit_getcut_ms=getcut,
                            unit_status_ms=status,
                        )
                    )
                    time.sleep(cfg.gap)
                block = time.monotonic() - block_start
                cpu[mode][0] += fleet.cpu() - agents_cpu - background[0] * block
                cpu[mode][1] += time.process_time() - collector_cpu - background[1] * block
        fleet.rate(0)
        check: dict[str, Any] = dict(fleet.stats())
        check["cpu_seconds"] = cpu
        check["background_cores"] = [round(x, 4) for x in background]
        check["agents"] = len(fleet.processes)
        check["cut_json_bytes"] = cut_bytes
        check["collector"] = client.status()["stats"]
    return samples, check


def summarise_latency(
    agents: int, samples: dict[str, list[LatencySample]], check: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"agents": agents, "check": check}
    for mode, rows in samples.items():

        def med(attr: str, rows: list[LatencySample] = rows) -> float:
            return round(float(statistics.median(getattr(r, attr) for r in rows)), 3)

        unit = med("unit_getcut_ms")
        write = med("write_ms")
        round_trip = med("round_trip_ms")
        budget = GOAL_ROUND_TRIPS * unit + write
        out[mode] = {
            "snapshots": len(rows),
            "complete": sum(r.status == "COMPLETE" for r in rows),
            "conserved": sum(r.conserved for r in rows),
            "round_trip_ms": round_trip,
            "round_trip_p90_ms": round(percentile([r.round_trip_ms for r in rows], 0.9), 3),
            "internal_ms": med("internal_ms"),
            "write_ms": write,
            "stored_ms": round(statistics.median(r.internal_ms + r.write_ms for r in rows), 3),
            "first_local_ms": med("first_local_ms"),
            "last_local_ms": med("last_local_ms"),
            "per_agent_us": round(
                statistics.median((r.last_local_ms - r.first_local_ms) * 1000 / (agents - 1) for r in rows), 1
            ),
            "in_transit_median": med("in_transit"),
            "in_transit_max": max(r.in_transit for r in rows),
            "unit_getcut_ms": unit,
            "unit_status_ms": med("unit_status_ms"),
            "round_trips": round(round_trip / unit, 2),
            "round_trips_status": round(round_trip / med("unit_status_ms"), 2),
            "budget_ms": round(budget, 3),
            "goal_met": round_trip <= budget,
        }
        if mode == "idle":  # under traffic the CPU is mostly the transfers'
            out[mode]["cpu_agents_ms"] = round(check["cpu_seconds"][mode][0] * 1000 / len(rows), 2)
            out[mode]["cpu_collector_ms"] = round(check["cpu_seconds"][mode][1] * 1000 / len(rows), 2)
    return out


# 2. Collector ingest ---------------------------------------------------------------------------
def _synthetic_local(
    epoch: int, index: int, processes: Sequence[str], seq: int, open_calls: Sequence[tuple[int, str]]
) -> pb.AgentMessage:
    """A local snapshot shaped like a bank agent's: a clock of every process, counters of a few peers.

    Process i's own entry is ``1000 * epoch + i``, and it knows every other
    process j one to five events short of j's cut: a consistent cut.
    """
    me = processes[index]
    n = len(processes)
    clock = {
        q: 1000 * epoch + j - (0 if j == index else 1 + (index + j) % 5) for j, q in enumerate(processes)
    }
    peers = [processes[(index + k) % n] for k in range(1, min(FANOUT, n - 1) + 1)]
    tasks = [
        {
            "task_id": 7 + k,
            "kind": "server",
            "method": METHOD,
            "caller": peers[k % len(peers)] if peers else "",
            "call_id": 100 + k,
            "pool": "server-1",
            "trace_id": "",
            "span_id": "",
            "held_locks": [],
            "waiting_lock": "",
            "outbound": [],
        }
        for k in range(2)
    ]
    return pb.AgentMessage(
        seq=seq,
        local_snapshot=pb.LocalSnapshot(
            epoch=epoch,
            process_id=me,
            clock=clock,
            state_json=json.dumps({"balance": INITIAL_BALANCE}),
            tasks_json=json.dumps(tasks, sort_keys=True),
            open_calls=[pb.OpenCall(call_id=c, method=METHOD, target=t) for c, t in open_calls],
            requests_sent=50 * epoch,
            responses_sent={p: 5 * epoch for p in peers},
            requests_consumed={p: 5 * epoch for p in peers},
            responses_consumed={p: 5 * epoch for p in peers},
        ),
    )


@dataclass
class IngestTimes:
    local_us: list[float] = field(default_factory=list)
    """Each local snapshot message but the one that finished its cut."""
    record_us: list[float] = field(default_factory=list)
    """Each in-transit record message but the one that finished its cut."""
    cut_ms: dict[str, list[float]] = field(default_factory=lambda: {"idle": [], "records": []})
    """First piece in to cut stored, per cut."""
    write_ms: dict[str, list[float]] = field(default_factory=lambda: {"idle": [], "records": []})
    final_ms: dict[str, list[float]] = field(default_factory=lambda: {"idle": [], "records": []})
    """The message that finished the cut: assembly, conversion and the write."""


def measure_ingest(agents: int, cuts: int, open_calls: int, workdir: Path) -> IngestTimes:
    """Feed ``cuts`` idle cuts and ``cuts`` cuts with ``open_calls`` records per agent to a Coordinator."""
    store = TimedStore(workdir / f"ingest-{agents}.db")
    coordinator = Coordinator(store, snapshot_timeout=600.0)
    times = IngestTimes()
    clock = time.perf_counter_ns
    try:
        processes = [f"bank:w{i % WORKERS}a{i // WORKERS}.{i:04x}" for i in range(agents)]
        sessions = {p: coordinator.register(Registration(p, "bank")) for p in processes}
        seqs = dict.fromkeys(processes, 0)

        def next_seq(process: str) -> int:
            seqs[process] += 1
            return seqs[process]

        for kind in ("idle", "records"):
            for _ in range(cuts):
                epoch = coordinator.start_snapshot()
                calls: dict[int, list[tuple[int, str]]] = {i: [] for i in range(agents)}
                records: list[tuple[str, pb.AgentMessage]] = []
                if kind == "records":
                    for i, caller in enumerate(processes):
                        for k in range(open_calls):
                            receiver = processes[(i + 1 + k) % agents]
                            call_id = 10_000 * epoch + k
                            calls[i].append((call_id, receiver))
                            records.append(
                                (
                                    receiver,
                                    pb.AgentMessage(
                                        channel_record=pb.ChannelRecord(
                                            epoch=epoch,
                                            sender=caller,
                                            receiver=receiver,
                                            method=METHOD,
                                            kind="request",
                                            payload_json='{"amount": 1.0}',
                                            call_id=call_id,
                                            attempt=0,
                                        )
                                    ),
                                )
                            )
                locals_ = [
                    (p, _synthetic_local(epoch, i, processes, next_seq(p), calls[i]))
                    for i, p in enumerate(processes)
                ]
                for receiver, message in records:
                    message.seq = next_seq(receiver)
                # Where the protocol has it, each agent answers the collector's Flush with a marker
                # sent behind its records; the cut completes with the last marker.
                markers = [
                    (p, pb.AgentMessage(seq=next_seq(p), flushed=pb.Flushed(epoch=epoch, round=1)))
                    for p in processes
                    if FLUSH_ROUND
                ]
                pieces = locals_ + records + markers
                started = clock()
                spent = [0] * len(pieces)
                for n, (process, message) in enumerate(pieces):
                    t0 = clock()
                    # What the collector's servicer does with each message: convert, then hand over.
                    coordinator.on_message(sessions[process], *agent_message_from_pb(message, process))
                    spent[n] = clock() - t0
                total = clock() - started
                cut = coordinator.wait(epoch, 0)
                if cut is None or cut.status != "COMPLETE" or len(cut.in_transit) != len(records):
                    raise RuntimeError(f"synthetic cut {epoch} did not complete as built: {cut}")
                local_us = [ns / 1000 for ns in spent[: len(locals_)]]
                record_us = [ns / 1000 for ns in spent[len(locals_) : len(locals_) + len(records)]]
                if not markers:
                    # The last piece finished the cut: it is counted in final_ms, not as one message.
                    (record_us or local_us).pop()
                times.local_us += local_us
                times.record_us += record_us
                times.cut_ms[kind].append(total / 1e6)
                times.final_ms[kind].append(spent[-1] / 1e6)
                times.write_ms[kind].append(store.save_seconds[epoch] * 1000)
                for session in sessions.values():
                    while not session.outbox.empty():
                        session.outbox.get_nowait()
    finally:
        coordinator.close()
        store.close()
    return times


def summarise_ingest(agents: int, open_calls: int, times: IngestTimes) -> dict[str, Any]:
    local_us = statistics.median(times.local_us)
    record_us = statistics.median(times.record_us)
    out: dict[str, Any] = {
        "agents": agents,
        "records_per_cut": agents * open_calls,
        "local_us": round(local_us, 1),
        "locals_per_s": round(1e6 / local_us),
        "record_us": round(record_us, 1),
        "records_per_s": round(1e6 / record_us),
    }
    for kind in ("idle", "records"):
        out[kind] = {
            "cuts": len(times.cut_ms[kind]),
            "cut_ms": round(statistics.median(times.cut_ms[kind]), 2),
            "cut_p90_ms": round(percentile(times.cut_ms[kind], 0.9), 2),
            "final_ms": round(statistics.median(times.final_ms[kind]), 2),
            "write_ms": round(statistics.median(times.write_ms[kind]), 2),
            "goal_met": statistics.median(times.cut_ms[kind]) < GOAL_CUT_MS,
        }
    return out


# 3. Application-side cost ------------------------------------------------------------------------
class Ticker:
    """Starts a snapshot every ``period`` seconds, as the collector's ``every`` does."""

    def __init__(self, coordinator: Coordinator, period: float) -> None:
        self._coordinator = coordinator
        self._period = period
        self._stop = threading.Event()
        self.epochs: list[int] = []
        self._thread = threading.Thread(target=self._run, name="snapshot-ticker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(next_at - time.monotonic(), 0.0)):
            next_at += self._period
            self.epochs.append(self._coordinator.start_snapshot(SNAPSHOT_TIMEOUT))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def measure_app_cost(cfg: Config, workdir: Path, logdir: Path) -> dict[str, Any]:
    windows: list[tuple[str, int, int, int]] = []
    epochs: list[int] = []
    # Per phase: wall seconds, CPU seconds of the agents' processes, of the collector's process.
    usage = {phase: [0.0, 0.0, 0.0] for phase in PHASES}
    with ExitStack() as stack:
        col = stack.enter_context(running_collector(workdir, "app"))
        fleet = stack.enter_context(Fleet(col.address, cfg.app_agents, cfg.workers, cfg.seed + 1, logdir))
        client = stack.enter_context(CollectorClient(col.address))
        wait_for_agents(client, cfg.app_agents)
        fleet.rate(cfg.rate)
        time.sleep(cfg.warm)
        for _ in range(2):
            client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        fleet.samples()  # the warm-up's calls are not counted
        margin = int(cfg.margin * 1e9)
        for index in range(cfg.app_rounds):
            for phase in PHASES if index % 2 == 0 else PHASES[::-1]:
                agents_cpu, collector_cpu = fleet.cpu(), time.process_time()
                start = time.monotonic_ns()
                ticker = Ticker(col.server.coordinator, SNAPSHOT_PERIOD) if phase != "none" else None
                time.sleep(cfg.window)
                if ticker is not None:
                    ticker.stop()
                    epochs += ticker.epochs
                end = time.monotonic_ns()
                windows.append((phase, index, start + margin, end))
                usage[phase][0] += (end - start) / 1e9
                usage[phase][1] += fleet.cpu() - agents_cpu
                usage[phase][2] += time.process_time() - collector_cpu
        samples = fleet.samples()
        fleet.rate(0)
        statuses = []
        for epoch in epochs:
            cut = col.server.coordinator.wait(epoch, SNAPSHOT_TIMEOUT + 5)
            statuses.append(cut.status if cut is not None else "unfinished")
        check: dict[str, Any] = fleet.stats()
        check["agents"] = len(fleet.processes)
        check["collector"] = client.status()["stats"]
    latencies: dict[str, list[int]] = {phase: [] for phase in PHASES}
    by_round: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for phase, _, begin, end in windows:
        block = [lat for t, lat in samples if begin <= t < end]
        latencies[phase] += block
        by_round[phase].append(statistics.median(block) if block else float("nan"))
    out: dict[str, Any] = {
        "agents": cfg.app_agents,
        "rate": cfg.rate,
        "rounds": cfg.app_rounds,
        "window_s": cfg.window,
        "snapshots": len(epochs),
        "snapshots_complete": statuses.count("COMPLETE"),
        "check": check,
    }
    for phase in PHASES:
        lat = latencies[phase]
        wall, agents_cpu, collector_cpu = usage[phase]
        out[phase] = {
            "calls": len(lat),
            "p50_ms": round(statistics.median(lat) / 1e6, 3),
            "p99_ms": round(percentile(lat, 0.99) / 1e6, 3),
            "mean_ms": round(statistics.fmean(lat) / 1e6, 3),
            "agents_cores": round(agents_cpu / wall, 3),
            "collector_cores": round(collector_cpu / wall, 3),
        }
    base, snap = out["none"], out["every 100 ms"]
    out["p50_ratio"] = round(snap["p50_ms"] / base["p50_ms"], 3)
    out["p99_ratio"] = round(snap["p99_ms"] / base["p99_ms"], 3)
    pairs = [b / a for a, b in zip(by_round["none"], by_round["every 100 ms"], strict=True) if a > 0]
    out["p50_ratio_by_round"] = round(statistics.median(pairs), 3)
    out["goal_met"] = out["p50_ratio"] <= GOAL_P50_RATIO
    return out


# Output ------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def machine() -> dict[str, Any]:
    return {
        **describe_machine("grpcio", "cutwatch"),
        "cutwatch_commit": _commit(),
        "flush_round": FLUSH_ROUND,
    }


def _commit() -> str:
    """The checkout's commit, ``+`` when it has local changes; empty outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+" if dirty else "")


def _goal(met: bool) -> str:
    return "met" if met else "MISSED"


def print_report(result: dict[str, Any]) -> None:
    cfg, mach = result["config"], result["machine"]
    print(
        f"cutwatch snapshot benchmarks ({'quick' if cfg['quick'] else 'full'} run, {cfg['seconds']} s)\n"
        f"machine: {mach['nproc']} CPUs ({mach['cpu_model']}), Python {mach['python']}, "
        f"grpcio {mach['grpcio']}, load average {mach['load_average'][0]} at start, "
        f"{mach['load_average_at_end'][0]} at the end\n"
        f"cutwatch {mach['cutwatch']} at {mach['cutwatch_commit'] or 'an unknown commit'}, "
        f"{'with' if mach['flush_round'] else 'without'} the flush round\n"
        f"agents over {cfg['workers']} worker processes, each a sync gRPC server ({POOL} threads) "
        f"calling up to {FANOUT} others; traffic {cfg['rate']:g} transfers/s in all; the collector runs "
        "in this process (SQLite, WAL, synchronous=FULL)"
    )
    if result["latency"]:
        _print_latency(result)
    if result["ingest"]:
        _print_ingest(result)
    if result["app"]:
        _print_app(result["app"])


def _print_latency(result: dict[str, Any]) -> None:
    print(
        "\n1. snapshot latency, medians in ms\n"
        "   client: CollectorClient.snapshot round trip; cut: cut.finished - cut.started (collector);\n"
        "   write: save_cut; first/last: local snapshots in after the start; per agent: (last - first) /\n"
        "   (agents - 1) in us; unit: GetCut of a missing epoch, same collector, same run;\n"
        "   RTs: client / unit;"
        f" goal: client <= budget = {GOAL_ROUND_TRIPS} x unit + write"
    )
    print(
        f"  {'agents':>6} {'mode':<8}{'n':>4}{'ok':>4}{'client':>8}{'p90':>7}{'cut':>7}{'write':>6}"
        f"{'first':>6}{'last':>6}{'/agent':>7}{'transit':>8}{'unit':>6}{'Status':>7}{'RTs':>6}{'budget':>7}"
        "  goal"
    )
    for row in result["latency"]:
        for mode in MODES:
            r = row[mode]
            print(
                f"  {row['agents']:>6} {mode:<8}{r['snapshots']:>4}{r['complete']:>4}"
                f"{r['round_trip_ms']:>8.2f}{r['round_trip_p90_ms']:>7.2f}{r['internal_ms']:>7.2f}"
                f"{r['write_ms']:>6.2f}{r['first_local_ms']:>6.2f}{r['last_local_ms']:>6.2f}"
                f"{r['per_agent_us']:>7.0f}{r['in_transit_median']:>8.1f}{r['unit_getcut_ms']:>6.2f}"
                f"{r['unit_status_ms']:>7.2f}{r['round_trips']:>6.1f}{r['budget_ms']:>7.2f}"
                f"  {_goal(r['goal_met'])}"
            )
    for row in result["latency"]:
        c = row["check"]
        print(
            f"  check, {row['agents']} agents: conserved cuts {sum(row[m]['conserved'] for m in MODES)}/"
            f"{sum(row[m]['snapshots'] for m in MODES)}, transfers {c['calls']}, failed {c['errors']}, "
            f"internal errors {c['internal_errors']}, untracked {c['untracked']}, skipped "
            f"{c['snapshots_skipped']}, events dropped {c['events_dropped']}, clock entries "
            f"{c['max_clock_entries']}, cut JSON {c['cut_json_bytes'] / 1024:.0f} KiB"
        )
    print("  CPU per idle snapshot, background (no snapshots, no traffic) subtracted:")
    for row in result["latency"]:
        idle, n = row["idle"], row["agents"]
        print(
            f"  {n:>6} agents: agents' processes {idle['cpu_agents_ms']:.1f} ms "
            f"({idle['cpu_agents_ms'] * 1000 / n:.0f} us per agent), collector's process (with the client) "
            f"{idle['cpu_collector_ms']:.1f} ms ({idle['cpu_collector_ms'] * 1000 / n:.0f} us per agent)"
        )


def _print_ingest(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        "\n2. collector ingest: Coordinator + SqliteCutStore fed synthetic pieces (no gRPC), medians\n"
        "   local/record: one message that does not finish its cut; cut: first piece in to cut stored;\n"
        f"   'with records': {cfg['open_calls']} open calls per agent, each settled by a request record; "
        f"goal: a {max(cfg['ingest_sizes'])}-agent cut in < {GOAL_CUT_MS:g} ms"
    )
    print(
        f"  {'agents':>6}{'local us':>10}{'locals/s':>10}{'record us':>11}{'records/s':>11}"
        f"{'idle cut':>10}{'write':>7}{'records':>9}{'cut':>8}{'write':>7}  goal"
    )
    largest = max(row["agents"] for row in result["ingest"])
    for row in result["ingest"]:
        idle, rec = row["idle"], row["records"]
        goal = f"{_goal(idle['goal_met'])}, {_goal(rec['goal_met'])}" if row["agents"] == largest else ""
        print(
            f"  {row['agents']:>6}{row['local_us']:>10.1f}{row['locals_per_s']:>10}{row['record_us']:>11.1f}"
            f"{row['records_per_s']:>11}{idle['cut_ms']:>10.2f}{idle['write_ms']:>7.2f}"
            f"{row['records_per_cut']:>9}{rec['cut_ms']:>8.2f}{rec['write_ms']:>7.2f}  {goal}"
        )


def _print_app(app: dict[str, Any]) -> None:
    print(
        f"\n3. application RPCs while snapshots run every {SNAPSHOT_PERIOD * 1000:g} ms, or not: "
        f"{app['agents']} agents, {app['rate']:g} transfers/s,\n"
        f"   {app['rounds']} interleaved rounds of {app['window_s']:g} s per phase; a transfer is an atomic "
        "debit, a Credit RPC, an atomic credit"
    )
    print(
        f"  {'snapshots':<14}{'calls':>8}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
        f"{'CPU agents':>12}{'CPU collector':>15}"
    )
    for phase in PHASES:
        r = app[phase]
        print(
            f"  {phase:<14}{r['calls']:>8}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['mean_ms']:>9.3f}"
            f"{r['agents_cores']:>12.3f}{r['collector_cores']:>15.3f}"
        )
    print("  (CPU: cores busy on average, all threads of the agents' processes and of the collector's)")
    print(
        f"  p50 ratio {app['p50_ratio']:.3f} (by round {app['p50_ratio_by_round']:.3f}), "
        f"p99 ratio {app['p99_ratio']:.3f}; "
        f"goal p50 within {GOAL_P50_RATIO - 1:.0%}: {_goal(app['goal_met'])}\n"
        f"  check: snapshots {app['snapshots_complete']}/{app['snapshots']} COMPLETE, failed transfers "
        f"{app['check']['errors']}, internal errors {app['check']['internal_errors']}"
    )


# Main --------------------------------------------------------------------------------------------
@dataclass
class Config:
    quick: bool
    parts: tuple[str, ...]
    sizes: tuple[int, ...]
    workers: int
    rate: float
    snapshots: int
    rounds: int
    warm: float
    quiet: float
    settle: float
    gap: float
    ingest_sizes: tuple[int, ...]
    ingest_cuts: int
    open_calls: int
    app_agents: int
    app_rounds: int
    window: float
    margin: float
    seed: int


def parse_args(argv: Sequence[str] | None) -> tuple[Config, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few samples only (smoke test, ~20 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--sizes", default=None, help="agent counts for the latency part (default 4,16,64)")
    parser.add_argument(
        "--rate", type=float, default=400.0, help="transfers per second in total (default 400)"
    )
    parser.add_argument(
        "--snapshots", type=int, default=None, help="snapshots per mode per round (default 15)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="idle/traffic rounds (default 2)")
    parser.add_argument("--app-rounds", type=int, default=None, help="rounds of part 3 (default 8)")
    parser.add_argument("--window", type=float, default=None, help="seconds per phase in part 3 (default 3)")
    parser.add_argument("--app-agents", type=int, default=None, help="agents in part 3 (default 16)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"which parts to run, of {','.join(PARTS)} (default all)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    parts = tuple(part for part in PARTS if part in args.parts.split(","))
    if not parts or set(args.parts.split(",")) - set(PARTS):
        parser.error(f"--parts takes a comma-separated list of {', '.join(PARTS)}")
    quick = args.quick
    sizes = (
        tuple(int(s) for s in args.sizes.split(",")) if args.sizes else ((4, 16) if quick else (4, 16, 64))
    )
    if any(s < 2 for s in sizes):
        parser.error("every size must be at least 2 agents")
    cfg = Config(
        quick=quick,
        parts=parts,
        sizes=sizes,
        workers=WORKERS,
        rate=args.rate,
        snapshots=args.snapshots or (3 if quick else 15),
        rounds=args.rounds or (1 if quick else 2),
        warm=0.5 if quick else 2.0,
        quiet=0.5 if quick else 2.0,
        settle=0.2 if quick else 0.5,
        gap=0.02 if quick else 0.05,
        ingest_sizes=(4, 16, 64),
        ingest_cuts=3 if quick else 20,
        open_calls=2,
        app_agents=args.app_agents or (8 if quick else 16),
        app_rounds=args.app_rounds or (2 if quick else 8),
        window=args.window or (0.8 if quick else 3.0),
        margin=0.2,
        seed=args.seed,
    )
    return cfg, args.json


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return worker_main(argv)
    cfg, as_json = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    mach = machine()
    with tempfile.TemporaryDirectory(prefix="cutwatch-snapbench-") as tmp:
        workdir = Path(tmp)
        latency = []
        if "latency" in cfg.parts:
            for agents in cfg.sizes:
                samples, check = measure_latency(agents, cfg, workdir, workdir)
                latency.append(summarise_latency(agents, samples, check))
        ingest = []
        if "ingest" in cfg.parts:
            for n in cfg.ingest_sizes:
                times = measure_ingest(n, cfg.ingest_cuts, cfg.open_calls, workdir)
                ingest.append(summarise_ingest(n, cfg.open_calls, times))
        app = measure_app_cost(cfg, workdir, workdir) if "app" in cfg.parts else None
    mach["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "config": {**cfg.__dict__, "seconds": round(time.monotonic() - started, 1)},
        "machine": mach,
        "latency": latency,
        "ingest": ingest,
        "app": app,
    }
    emit(result, as_json, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
