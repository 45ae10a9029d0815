"""How long a real pool-exhaustion deadlock takes to be reported, from the moment it forms.

Each case starts a collector (``cutwatch collector --every 1s``) and shop
services (``python -m cutwatch.demo.shop``) as OS processes on loopback,
with no call between the services before the deadlock (every channel is
fresh), then makes the calls that deadlock them:

  two-workers     till (2 workers): Pay calls fraud.Screen, which calls till.Lookup; 2 Pay calls
  default-pool    the same with ``ThreadPoolExecutor()`` and no ``max_workers`` told to cutwatch;
                  as many Pay calls as the pool has workers (read from till's admin Tasks RPC)
  round-robin     two till replicas of 1 worker, fraud reaches them through one round_robin
                  channel; one Pay per replica
  three-services  web (2 workers) -> orders -> stock -> web.End; 2 Start calls

*Formed* is the moment the admin Tasks RPCs first show every Lookup (End)
queued at its server; *reported* the first time ``client.deadlocks()``
(polled every 20 ms) returns it. A queued call never reaches a handler, so
the cut that shows it ends INCOMPLETE: at once when all it waits for are
calls queued behind deadlocked workers, else at the snapshot timeout. The
table shows when the reporting cut started, from formation (``start``;
negative: before formation was observed, its local snapshots taken after),
and how long it ran (``cut``).

    python benchmarks/deadlock_formation.py [--quick] [--json] [--runs N] [--timeouts 10s,2s]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from cutwatch.collector import CollectorClient

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine, emit  # noqa: E402
from polling import wait_until  # noqa: E402
from processes import cutwatch_command  # noqa: E402

EVERY = "1s"
START_TIMEOUT = 60.0
REPORT_TIMEOUT = 90.0
PAY_MS = 1500
"""Pay (Start) waits before its call: every one holds its worker before any Lookup (End) arrives."""
TILL = [f"Pay=sleep:{PAY_MS},call:fraud.Screen", "Lookup=sleep:1"]
FRAUD = ["Screen=call:till.Lookup"]


@dataclass(frozen=True)
class Shop:
    service: str
    workers: int | None
    """None: ``ThreadPoolExecutor()``, its size not told to cutwatch."""
    rpcs: Sequence[str]


@dataclass(frozen=True)
class Case:
    name: str
    shops: dict[str, Shop]
    """By label (replicas share a service)."""
    calls: Callable[[Cluster], list[tuple[str, str]]]
    """The calls that deadlock it: (label, method)."""
    queued: tuple[str, str]
    """(service, method) of the calls that end up queued, and how many: one per call."""


CASES = (
    Case(
        "two-workers",
        {"till": Shop("till", 2, TILL), "fraud": Shop("fraud", 40, FRAUD)},
        lambda c: [("till", "Pay")] * 2,
        ("till", "Lookup"),
    ),
    Case(
        "default-pool",
        {"till": Shop("till", None, TILL), "fraud": Shop("fraud", 40, FRAUD)},
        lambda c: [("till", "Pay")] * c.pool_size("till"),
        ("till", "Lookup"),
    ),
    Case(
        "round-robin",
        {"till-a": Shop("till", 1, TILL), "till-b": Shop("till", 1, TILL), "fraud": Shop("fraud", 40, FRAUD)},
        lambda c: [("till-a", "Pay"), ("till-b", "Pay")],
        ("till", "Lookup"),
    ),
    Case(
        "three-services",
        {
            "web": Shop("web", 2, [f"Start=sleep:{PAY_MS},call:orders.Relay", "End=sleep:1"]),
            "orders": Shop("orders", 4, ["Relay=call:stock.Forward"]),
            "stock": Shop("stock", 4, ["Forward=call:web.End"]),
        },
        lambda c: [("web", "Start")] * 2,
        ("web", "End"),
    ),
)


def method_path(service: str, method: str) -> str:
    return f"/shop.{service[:1].upper()}{service[1:]}/{method}"


@dataclass
class Cluster:
    """A collector and the shops of one case, as processes in ``workdir``."""

    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    shops: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """label -> (service, address, admin address)."""
    collector: str = ""
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    stuck: list[grpc.Future] = field(default_factory=list)

    def spawn(self, name: str, command: list[str]) -> Path:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            self.procs.append(
                subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.workdir)
            )
        return log

    def start(self, case: Case, timeout: str) -> None:
        command = [*cutwatch_command(), "collector", "--listen", "127.0.0.1:0", "--db", "cuts.db"]
        log = self.spawn("collector", [*command, "--every", EVERY, "--snapshot-timeout", timeout])

        def listening() -> str:
            text = log.read_text(errors="replace")
            found = re.search(r"listening on (\S+:\d+)", text)  # the command's line: "... on HOST:PORT, ..."
            return found.group(1) if found else ""

        self.collector = wait_until(listening, "the collector", START_TIMEOUT)
        peers = self.workdir / "peers.json"
        for label, shop in case.shops.items():
            self.spawn(
                label,
                [
                    sys.executable,
                    "-m",
                    "cutwatch.demo.shop",
                    f"--name={shop.service}",
                    f"--collector={self.collector}",
                    f"--workers={shop.workers or 'default'}",
                    f"--ready-file={self.workdir / (label + '.ready')}",
                    f"--peers-file={peers}",
                    *(f"--rpc={rpc}" for rpc in shop.rpcs),
                ],
            )
        replicas: dict[str, list[str]] = {}
        for label, shop in case.shops.items():
            ready = self.workdir / f"{label}.ready"
            wait_until(ready.exists, f"{label} to serve", START_TIMEOUT)
            _, address, admin, _ = ready.read_text().split()
            self.shops[label] = (shop.service, address, admin)
            replicas.setdefault(shop.service, []).append(address)
        partial = peers.with_name("peers.json.partial")
        partial.write_text(json.dumps({s: a[0] if len(a) == 1 else a for s, a in replicas.items()}))
        partial.replace(peers)
        for label, (service, _, _) in self.shops.items():
            others = sorted(set(replicas) - {service})
            wait_until(
                lambda label=label, o=others: self.admin(label, "Stats")["peers"] == o, "peers", START_TIMEOUT
            )

    def _stub(self, address: str, method: str) -> grpc.UnaryUnaryMultiCallable:
        channel = self.channels.get(address) or self.channels.setdefault(
            address, grpc.insecure_channel(address)
        )
        return channel.unary_unary(
            method, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )

    def admin(self, label: str, method: str) -> dict[str, Any]:
        reply = self._stub(self.shops[label][2], f"/shop.Admin/{method}")(Struct(), timeout=30.0)
        doc: dict[str, Any] = MessageToDict(reply)
        return doc

    def call(self, label: str, method: str, timeout: float) -> grpc.Future:
        service, address, _ = self.shops[label]
        return self._stub(address, method_path(service, method)).future(Struct(), timeout=timeout)

    def pool_size(self, label: str) -> int:
        """The size of ``label``'s pool as its agent knows it: learnt as a first call (a Ping from this
        uninstrumented client, on none of the channels that deadlock) arrives."""
        self.call(label, "Ping", 30.0).result()
        return int(self.admin(label, "Tasks")["pools"]["server-1"])

    def queued(self, service: str, method: str) -> int:
        path = method_path(service, method)
        return sum(
            1
            for label, (s, _, _) in self.shops.items()
            if s == service
            for task in json.loads(self.admin(label, "Tasks")["tasks_json"])
            if task["method"] == path and task["queued"]
        )

    def close(self) -> None:
        for future in self.stuck:
            future.cancel()
        for channel in self.channels.values():
            channel.close()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def cluster() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="cutwatch-formation-") as tmp:
        running = Cluster(Path(tmp))
        try:
            yield running
        finally:
            running.close()


def measure(case: Case, timeout: str) -> dict[str, Any]:
    """One run of ``case``: seconds from formation to the first report, and how they split."""
    with cluster() as c:
        c.start(case, timeout)
        calls = case.calls(c)
        c.stuck = [c.call(label, method, 600.0) for label, method in calls]

        def formed() -> bool:
            if any(future.done() for future in c.stuck):
                raise RuntimeError(f"{case.name}: a call finished before the deadlock formed")
            return c.queued(*case.queued) == len(calls)

        wait_until(formed, f"{case.name} to deadlock", START_TIMEOUT, 0.02)
        formed_at, formed_wall = time.monotonic(), time.time()
        with CollectorClient(c.collector) as client:
            found = wait_until(client.deadlocks, "a report", REPORT_TIMEOUT, 0.02)
            reported_at = time.monotonic()
            cut = client.get(found[0]["epoch"])
        assert cut is not None
        return {
            "case": case.name,
            "calls": len(calls),
            "deadlocks": len(found),
            "tasks": sum(len(d["tasks"]) for d in found),
            "to_report_s": reported_at - formed_at,
            "start_s": cut.started - formed_wall,
            "cut_s": cut.finished - cut.started,
            "cut_status": cut.status,
        }


def run(cases: Sequence[Case], timeouts: Sequence[str], runs: int) -> dict[str, Any]:
    rows = []
    for timeout in timeouts:
        for case in cases:
            samples = []
            for _ in range(runs):
                samples.append(measure(case, timeout))
                print(
                    f"  {case.name} ({timeout}): {samples[-1]['to_report_s']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
            times = [s["to_report_s"] for s in samples]
            rows.append(
                {
                    "case": case.name,
                    "snapshot_timeout": timeout,
                    "runs": runs,
                    "calls": samples[0]["calls"],
                    "deadlocks": sorted({s["deadlocks"] for s in samples}),
                    "tasks": samples[0]["tasks"],
                    "median_s": statistics.median(times),
                    "max_s": max(times),
                    "start_median_s": statistics.median(s["start_s"] for s in samples),
                    "cut_median_s": statistics.median(s["cut_s"] for s in samples),
                    "samples": samples,
                }
            )
    return {"rows": rows}


def print_report(result: dict[str, Any]) -> None:
    mach, cfg = result["machine"], result["config"]
    print(
        f"cutwatch deadlock formation to report: {mach['nproc']} CPUs ({mach['cpu_model']}), "
        f"Python {mach['python']}, grpcio {mach['grpcio']}; load {mach['load_average']}; "
        f"collector --every {cfg['every']}; {cfg['runs']} run(s) per case"
    )
    print(
        f"\n{'case':<15} {'timeout':>7} {'calls':>5} {'stuck':>5} {'median s':>9} {'max s':>7} "
        f"{'start s':>7} {'cut s':>6}"
    )
    for r in result["rows"]:
        print(
            f"{r['case']:<15} {r['snapshot_timeout']:>7} {r['calls']:>5} {r['tasks']:>5} "
            f"{r['median_s']:>9.2f} {r['max_s']:>7.2f} {r['start_median_s']:>7.2f} {r['cut_median_s']:>6.2f}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="one run per case, 2s snapshot timeout (smoke test)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--runs", type=int, default=3, help="runs per case and timeout (median, max)")
    parser.add_argument(
        "--timeouts", default="10s,2s", help="collector --snapshot-timeout values (10s: default)"
    )
    parser.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    by_name = {c.name: c for c in CASES}
    cases = [by_name[name] for name in args.cases.split(",")]
    timeouts = ["2s"] if args.quick else args.timeouts.split(",")
    runs = 1 if args.quick else max(1, args.runs)
    result = run(cases, timeouts, runs)
    result["config"] = {"every": EVERY, "runs": runs, "timeouts": timeouts, "quick": args.quick}
    result["machine"] = describe_machine("cutwatch", "grpcio")
    emit(result, args.json, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
