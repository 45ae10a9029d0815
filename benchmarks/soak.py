"""Soak: a collector and several banks run for minutes; does anything grow, slow down or fail?

A ``cutwatch collector`` (SQLite, a snapshot every second) and ``--agents``
bank processes (``cutwatch.demo.bank``: each moves money to the others all
the time, with cutwatch's interceptors and ``atomic()`` blocks) run for
``--minutes``. Every ``--sample`` seconds the resident memory (RSS) of every
process is read. At the end it prints, per process, the mean RSS of the
first and of the last window (a minute, or a third of a shorter run) and
their ratio; the snapshots COMPLETE and INCOMPLETE; the application's failed
transfers; the median latency of a transfer (the Credit call, as the
application sees it) in the first and the last window; and whether the
newest COMPLETE cut still holds all the money.

    python benchmarks/soak.py [--minutes 10] [--agents 4] [--threads 2] [--every 1s] [--sample 5] [--json]

The bank processes are started from this same file (``--worker``); every
process is stopped at the end, also when something fails.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import grpc
import psutil
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.collector import CollectorClient
from cutwatch.demo._process import service_process, struct, write_atomically
from cutwatch.demo.bank import SERVER_THREADS, Bank, serve

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine, emit  # noqa: E402

INITIAL = 1000
PROBE = "/soak.Probe/Stats"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
_BUCKETS = [1e-5 * 1.02**i for i in range(790)]
"""Upper bounds of the latency histogram's buckets: 10 us to ~60 s, 2 % apart (memory stays fixed)."""


# The bank processes ------------------------------------------------------------------------------------
class Histogram:
    """Latencies counted in fixed buckets: constant memory, however long the run."""

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_BUCKETS, seconds)] += 1

    def merge(self, other: Sequence[int]) -> None:
        for i, n in enumerate(other):
            self.counts[i] += n

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds (a bucket's upper bound), None when empty."""
        total = self.total
        if not total:
            return None
        rank, seen = q * total, 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return _BUCKETS[min(i, len(_BUCKETS) - 1)]
        return _BUCKETS[-1]


class Latencies:
    """The latencies of the first ``window`` seconds, and of the last ``window`` seconds at any time."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._start = time.monotonic()
        self._first = Histogram()
        self._slots: collections.deque[tuple[int, Histogram]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        now = time.monotonic() - self._start
        slot = int(now)
        with self._lock:
            if now < self._window:
                self._first.add(seconds)
            if not self._slots or self._slots[-1][0] != slot:
                self._slots.append((slot, Histogram()))
                while self._slots and self._slots[0][0] <= slot - self._window:
                    self._slots.popleft()
            self._slots[-1][1].add(seconds)

    def windows(self) -> tuple[list[int], list[int]]:
        """Histogram counts of the first window and of the last one."""
        last = Histogram()
        now = int(time.monotonic() - self._start)
        with self._lock:
            for slot, histogram in self._slots:
                if slot > now - self._window:
                    last.merge(histogram.counts)
            return list(self._first.counts), last.counts


class _Timer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Times each call from the application's side, cutwatch's interceptor included."""

    def __init__(self, latencies: Latencies) -> None:
        self._latencies = latencies

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        started = time.perf_counter()
        call = continuation(details, request)
        call.add_done_callback(lambda _: self._latencies.add(time.perf_counter() - started))
        return call


class TimedBank(Bank):
    """The demo's bank, with every Credit call it makes timed."""

    def __init__(self, agent: cutwatch.Agent, window: float) -> None:
        super().__init__(agent, INITIAL, 0.02, 0.0)
        self.latencies = Latencies(window)

    def connect(self, addresses: list[str]) -> None:
        timer = _Timer(self.latencies)
        for address in addresses:
            channel = grpc.intercept_channel(
                grpc.insecure_channel(address), timer, self.agent.client_interceptor()
            )
            self._channels.append(channel)
            self._peers[address] = channel.unary_unary(
                "/bank.Bank/Credit",
                request_serializer=Struct.SerializeToString,
                response_deserializer=Struct.FromString,
            )

    def probe(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        first, last = self.latencies.windows()
        stats = self.agent.stats()
        with self._lock:
            doc = {
                "process": self.agent.process_id,
                "transfers_ok": self.transfers_ok,
                "transfers_failed": self.transfers_failed,
                "latency_first": first,
                "latency_last": last,
                "events_dropped": stats.collector_events_dropped,
                "internal_errors": stats.internal_errors,
                "snapshots_skipped": stats.snapshots_skipped,
            }
        return struct(json=json.dumps(doc))


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--name", required=True)
    parser.add_argument("--collector", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--peers-file", type=Path, required=True)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    stop = service_process(args.name)
    agent = cutwatch.Agent(service="bank", instance_id=args.name, collector=args.collector).start()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
        interceptors=[agent.server_interceptor(max_workers=SERVER_THREADS)],
    )
    bank = TimedBank(agent, args.window)
    probe = grpc.unary_unary_rpc_method_handler(
        bank.probe, request_deserializer=Struct.FromString, response_serializer=Struct.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (bank.handlers(), grpc.method_handlers_generic_handler("soak.Probe", {"Stats": probe}))
    )

    def windows_start_with_the_traffic() -> None:
        bank.latencies = Latencies(args.window)

    return serve(
        agent,
        bank,
        server,
        args.name,
        args.ready_file,
        args.peers_file,
        args.workers,
        args.name,
        stop,
        register_timeout=START_TIMEOUT,
        before_traffic=windows_start_with_the_traffic,
    )


# The driver ---------------------------------------------------------------------------------------------
class Proc:
    def __init__(self, name: str, command: list[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.ps = psutil.Process(self.popen.pid)
        self.rss: list[tuple[float, int]] = []

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()[-20:]
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(lines)

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()


@contextmanager
def processes() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()
        for proc in procs:
            proc.wait()


def wait_for(condition: Callable[[], Any], what: str, procs: Sequence[Proc], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while waiting for {what}\n{proc.tail()}")
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def cutwatch_command() -> list[str]:
    script = Path(sys.executable).parent / "cutwatch"
    return (
        [str(script)] if script.exists() else [sys.executable, "-c", "from cutwatch.cli import main; main()"]
    )


def run(cfg: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    seconds = cfg.minutes * 60
    window = min(60.0, seconds / 3)
    with processes() as procs:
        collector = Proc(
            "collector",
            [
                *cutwatch_command(),
                "collector",
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(workdir / "soak.db"),
                "--every",
                cfg.every,
                "-q",
            ],
            workdir,
        )
        procs.append(collector)

        def listening() -> str | None:
            for line in collector.log_path.read_text(errors="replace").splitlines():
                if "listening on " in line:
                    return line.split("listening on ", 1)[1].split()[0].rstrip(",")
            return None

        address = str(wait_for(listening, "the collector to listen", procs, START_TIMEOUT))
        peers = workdir / "peers.json"
        banks = []
        for i in range(1, cfg.agents + 1):
            name = f"bank{i}"
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", f"--name={name}"]
            command += [f"--collector={address}", f"--ready-file={workdir / (name + '.ready')}"]
            command += [f"--peers-file={peers}", f"--window={window}", f"--workers={cfg.threads}"]
            banks.append(Proc(name, command, workdir))
        procs += banks
        for bank in banks:
            ready = workdir / f"{bank.name}.ready"
            wait_for(ready.exists, f"{bank.name} to start", procs, START_TIMEOUT)
        addresses = {b.name: (workdir / f"{b.name}.ready").read_text().split()[1] for b in banks}
        write_atomically(peers, json.dumps(list(addresses.values())))

        started = time.monotonic()
        next_sample = started
        while (now := time.monotonic()) < started + seconds:
            for proc in procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited during the soak\n{proc.tail()}")
                proc.rss.append((now - started, proc.ps.memory_info().rss))
            next_sample += cfg.sample
            time.sleep(max(0.0, min(next_sample, started + seconds) - time.monotonic()))
        elapsed = time.monotonic() - started
        for proc in procs:  # one sample at the very end: the last window always has one
            proc.rss.append((elapsed, proc.ps.memory_info().rss))

        probes = {}
        for bank in banks:
            with grpc.insecure_channel(addresses[bank.name]) as channel:
                stub = channel.unary_unary(
                    PROBE,
                    request_serializer=Struct.SerializeToString,
                    response_deserializer=Struct.FromString,
                )
                probes[bank.name] = json.loads(str(stub(Struct(), timeout=30.0)["json"]))
        with CollectorClient(address, timeout=30.0) as client:
            status = client.status()
            latest = client.latest("COMPLETE")
        db_bytes = sum(p.stat().st_size for p in workdir.glob("soak.db*"))
    return summarise(cfg, window, elapsed, procs, probes, status, latest, db_bytes)


def _trend(samples: Sequence[tuple[float, int]], elapsed: float, window: float) -> list[float]:
    """Mean RSS of each successive window (at most 12, the last one partial): where the memory goes."""
    width = max(window, elapsed / 12)
    slots: dict[int, list[int]] = collections.defaultdict(list)
    for t, rss in samples:
        slots[min(int(t // width), math.ceil(elapsed / width) - 1)].append(rss)
    return [_mb(statistics.fmean(slots[i])) for i in sorted(slots)]


def _mb(size: float) -> float:
    return round(size / 2**20, 1)


def summarise(
    cfg: argparse.Namespace,
    window: float,
    elapsed: float,
    procs: Sequence[Proc],
    probes: dict[str, dict[str, Any]],
    status: dict[str, Any],
    latest: Any,
    db_bytes: int,
) -> dict[str, Any]:
    rows = []
    for proc in procs:
        first = [rss for t, rss in proc.rss if t <= window]
        last = [rss for t, rss in proc.rss if t >= elapsed - window]
        rows.append(
            {
                "process": proc.name,
                "rss_first_mb": _mb(statistics.fmean(first)),
                "rss_last_mb": _mb(statistics.fmean(last)),
                "ratio": round(statistics.fmean(last) / statistics.fmean(first), 3),
                "rss_peak_mb": _mb(max(r for _, r in proc.rss)),
                "samples": len(proc.rss),
                "trend_mb": _trend(proc.rss, elapsed, window),
                "series_mb": [[round(t, 1), _mb(r)] for t, r in proc.rss],
            }
        )
    first_all, last_all = Histogram(), Histogram()
    banks = []
    for name, probe in probes.items():
        first, last = Histogram(), Histogram()
        first.merge(probe["latency_first"])
        last.merge(probe["latency_last"])
        first_all.merge(probe["latency_first"])
        last_all.merge(probe["latency_last"])
        banks.append(
            {
                "bank": name,
                "transfers_ok": probe["transfers_ok"],
                "transfers_failed": probe["transfers_failed"],
                "p50_first_ms": _ms(first.quantile(0.5)),
                "p50_last_ms": _ms(last.quantile(0.5)),
                "calls_first": first.total,
                "calls_last": last.total,
                "events_dropped": probe["events_dropped"],
                "internal_errors": probe["internal_errors"],
                "snapshots_skipped": probe["snapshots_skipped"],
            }
        )
    stats = status["stats"]
    conserved = None
    if latest is not None:
        in_transit = sum(
            int(m.payload["amount"])
            for m in latest.in_transit
            if m.kind == "request" and m.method.endswith("/Credit")
        )
        money = sum(int(latest.state_of(p)["balance"]) for p in latest.states) + in_transit
        conserved = money == cfg.agents * INITIAL and len(latest.states) == cfg.agents
    return {
        "config": {
            "minutes": cfg.minutes,
            "agents": cfg.agents,
            "every": cfg.every,
            "sample_s": cfg.sample,
            "threads": cfg.threads,
            "window_s": round(window, 1),
            "elapsed_s": round(elapsed, 1),
        },
        "machine": machine(),
        "rss": rows,
        "snapshots": {
            "started": stats["snapshots_started"],
            "complete": stats["complete"],
            "incomplete": stats["incomplete"],
            "rejected": stats["rejected"],
            "store_errors": stats["store_errors"],
            "latest_complete_epoch": latest.epoch if latest is not None else None,
            "latest_complete_conserves_money": conserved,
        },
        "app": {
            "transfers_ok": sum(b["transfers_ok"] for b in banks),
            "transfers_failed": sum(b["transfers_failed"] for b in banks),
            "p50_first_ms": _ms(first_all.quantile(0.5)),
            "p50_last_ms": _ms(last_all.quantile(0.5)),
            "p99_first_ms": _ms(first_all.quantile(0.99)),
            "p99_last_ms": _ms(last_all.quantile(0.99)),
            "banks": banks,
        },
        "collector": {
            "db_mb": round(db_bytes / 2**20, 2),
            "events_dropped": sum(a["events_dropped"] for a in status["agents"]),
            "agents": len(status["agents"]),
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or not math.isfinite(seconds) else round(seconds * 1000, 2)


def machine() -> dict[str, Any]:
    return describe_machine("grpcio", "cutwatch")


def print_report(result: dict[str, Any]) -> None:
    cfg, mach, snaps, app = result["config"], result["machine"], result["snapshots"], result["app"]
    print(
        f"cutwatch soak: {cfg['agents']} banks ({cfg['threads']} transfer threads each) and a collector "
        f"(snapshot every {cfg['every']}) for "
        f"{cfg['elapsed_s']} s; RSS sampled every {cfg['sample_s']} s; windows of {cfg['window_s']} s\n"
        f"machine: {mach['nproc']} CPUs, Python {mach['python']}, grpcio {mach['grpcio']}, "
        f"cutwatch {mach['cutwatch']}, load average {mach['load_average'][0]} at the end\n"
    )
    print(f"{'process':<12}{'RSS first MB':>14}{'RSS last MB':>13}{'ratio':>8}{'peak MB':>9}{'samples':>9}")
    for row in result["rss"]:
        print(
            f"{row['process']:<12}{row['rss_first_mb']:>14.1f}{row['rss_last_mb']:>13.1f}"
            f"{row['ratio']:>8.3f}{row['rss_peak_mb']:>9.1f}{row['samples']:>9}"
        )
    print(f"\nmean RSS (MB) window by window, {cfg['window_s']} s or longer each:")
    for row in result["rss"]:
        print(f"{row['process']:<12}" + " ".join(f"{mb:.1f}" for mb in row["trend_mb"]))
    print(
        f"\nsnapshots: {snaps['started']} started, {snaps['complete']} COMPLETE, "
        f"{snaps['incomplete']} INCOMPLETE, {snaps['rejected']} rejected, "
        f"{snaps['store_errors']} store errors; "
        f"newest COMPLETE cut {snaps['latest_complete_epoch']} conserves the money: "
        f"{snaps['latest_complete_conserves_money']}"
    )
    print(
        f"application: {app['transfers_ok']} transfers, {app['transfers_failed']} failed; "
        f"Credit latency p50 {app['p50_first_ms']} ms first window, {app['p50_last_ms']} ms last window "
        f"(p99 {app['p99_first_ms']} -> {app['p99_last_ms']} ms)"
    )
    print(f"{'bank':<10}{'transfers':>11}{'failed':>8}{'p50 first ms':>14}{'p50 last ms':>13}{'dropped':>9}")
    for bank in app["banks"]:
        print(
            f"{bank['bank']:<10}{bank['transfers_ok']:>11}{bank['transfers_failed']:>8}"
            f"{bank['p50_first_ms']!s:>14}{bank['p50_last_ms']!s:>13}{bank['events_dropped']:>9}"
        )
    col = result["collector"]
    print(f"collector: store {col['db_mb']} MB, events dropped by agents {col['events_dropped']}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return worker_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs (default 10)")
    parser.add_argument("--agents", type=int, default=4, help="bank processes (default 4)")
    parser.add_argument("--every", default="1s", help="the collector's snapshot period (default 1s)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="transfer threads per bank (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    cfg = parser.parse_args(argv)
    if cfg.minutes <= 0 or cfg.agents < 2 or cfg.sample <= 0 or cfg.threads < 1:
        parser.error("--minutes and --sample must be positive, --agents at least 2, --threads at least 1")
    with tempfile.TemporaryDirectory(prefix="cutwatch-soak-") as tmp:
        result = run(cfg, Path(tmp))
    emit(result, cfg.json, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
