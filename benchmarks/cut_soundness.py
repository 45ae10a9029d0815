"""How many cuts complete, and that none completes wrong, on every path money can take.

Real processes over real gRPC: a collector and three banks, each its own
OS process, moving money all the time while the collector takes snapshots
back to back. One scenario per path, all in one run:

  unary               demo banks (``cutwatch.demo.bank``): Credit calls (the reference)
  streams 3 ms        stream banks (``cutwatch.demo.stream_bank``): client, server and
                      bidirectional streams, a message every 3 ms on average, counted
  streams 1 ms        the same, a message every millisecond
  envelope 3 ms       streams whose messages carry a stamp (the opt-in envelope)
  envelope 1 ms
  stripping proxy     demo banks, one reached through a proxy process that drops
                      cutwatch's stamps both ways
  retries             demo banks that fail a quarter of their Credit calls with
                      UNAVAILABLE before applying them; every bank sends over one
                      round_robin channel with a retryPolicy, so retries reach the
                      same or another bank

For each: cuts taken, COMPLETE, COMPLETE and exact (not flagged for untracked
changes), flagged, and COMPLETE but wrong: a cut that is COMPLETE, not
flagged, and whose balances plus money in transit differ from what the banks
started with. That last figure must be 0; the benchmark exits 1 otherwise.
The INCOMPLETE cuts are grouped by their first reason.

    python benchmarks/cut_soundness.py [--snapshots 40] [--json] [--scenarios unary,streams-3ms,...]

It runs from a checkout: it starts the processes with tests/bank_cluster.py
and the proxy of tests/grpc_proxy.py, and stops every one at the end, also
when something fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine, emit  # noqa: E402
from bank_cluster import Bank, BankCluster  # noqa: E402
from polling import wait_until  # noqa: E402
from processes import START_TIMEOUT, spawn  # noqa: E402

from cutwatch import CollectorClient, Cut  # noqa: E402

INITIAL = 100_000
BANKS = 3
PROXY = Path(_TESTS) / "grpc_proxy.py"


class Cluster(BankCluster):
    def stats(self, bank: Bank) -> dict[str, Any]:
        method = "/streams.Bank/Stats" if bank.name.startswith("s") else "/bank.Bank/Stats"
        reply = self.call(bank, method, 10.0)
        return {key: (int(value) if isinstance(value, float) else value) for key, value in reply.items()}

    def demo_banks(
        self, collector: str, peers: Callable[[list[Bank]], list[str]] | None = None, *flags: str
    ) -> list[Bank]:
        return self.start(
            {
                f"b{i}": [
                    sys.executable,
                    "-m",
                    "cutwatch.demo.bank",
                    f"--name=b{i}",
                    f"--collector={collector}",
                    f"--ready-file={self.ready_file(f'b{i}')}",
                    f"--peers-file={self.peers_file}",
                    f"--initial={INITIAL}",
                    "--workers=4",
                    f"--seed={i}",
                    *flags,
                ]
                for i in range(1, BANKS + 1)
            },
            peers,
        )

    def stream_banks(self, collector: str, interval_ms: float, envelope: bool) -> list[Bank]:
        return self.start(
            {
                f"s{i}": [
                    sys.executable,
                    "-m",
                    "cutwatch.demo.stream_bank",
                    f"--name=s{i}",
                    f"--collector={collector}",
                    f"--ready-file={self.ready_file(f's{i}')}",
                    f"--peers-file={self.peers_file}",
                    f"--initial={INITIAL}",
                    f"--interval-ms={interval_ms}",
                    f"--seed={i}",
                    *(["--envelope"] if envelope else []),
                ]
                for i in range(1, BANKS + 1)
            }
        )


def credit_money(cut: Cut) -> int:
    """Demo banks: balances plus the Credit requests in transit, each call once (two attempts of a
    retried call may both be in transit; the cut lists such calls in ``duplicates``)."""
    balances = sum(int(cut.state_of(p)["balance"]) for p in cut.states)
    calls = {
        (m.sender, m.call_id): int(m.payload["amount"])
        for m in cut.in_transit
        if m.kind == "request" and m.method.endswith("/Credit")
    }
    return balances + sum(calls.values())


def stream_money(cut: Cut) -> int:
    """Stream banks: balances plus the stream messages in transit."""
    balances = sum(int(cut.state_of(p)["balance"]) for p in cut.states)
    return balances + sum(int(m.payload.get("amount", 0)) for m in cut.in_transit if m.index)


def run_scenario(name: str, snapshots: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cutwatch-soundness-") as folder:
        tmp = Path(folder)
        cluster = Cluster(tmp)
        try:
            _, address = cluster.start_collector(tmp / "cuts.db")
            money: Callable[[Cut], int] = credit_money
            if name == "unary":
                cluster.demo_banks(address)
            elif name == "retries":
                cluster.demo_banks(address, None, "--bounce-percent=25", "--balanced")
            elif name == "stripping-proxy":

                def through_proxy(banks: list[Bank]) -> list[str]:
                    ready = cluster.ready_file("proxy")
                    command = [
                        sys.executable,
                        str(PROXY),
                        f"--target={banks[-1].address}",
                        f"--ready-file={ready}",
                        "--strip",
                    ]
                    proxy = spawn(tmp, cluster.procs, "proxy", command)
                    wait_until(
                        lambda: proxy.alive() and ready.exists(), "the proxy to serve", START_TIMEOUT, 0.1
                    )
                    return [bank.address for bank in banks[:-1]] + [ready.read_text().split()[1]]

                cluster.demo_banks(address, through_proxy)
            else:
                kind, interval = name.split("-")
                cluster.stream_banks(address, float(interval.removesuffix("ms")), envelope=kind == "envelope")
                money = stream_money
            cuts: list[Cut] = []
            started = time.monotonic()
            with CollectorClient(address) as client:
                for _ in range(snapshots):
                    cuts.append(client.snapshot(timeout=30.0))
            elapsed = time.monotonic() - started
        finally:
            with contextlib.redirect_stdout(io.StringIO()):  # the processes' last log lines
                cluster.close()
    complete = [cut for cut in cuts if cut.complete]
    exact = [cut for cut in complete if not cut.untracked]
    wrong = [cut.epoch for cut in exact if money(cut) != BANKS * INITIAL]
    reasons = Counter(_reason(cut) for cut in cuts if not cut.complete)
    return {
        "cuts": len(cuts),
        "complete": len(complete),
        "complete_exact": len(exact),
        "flagged": len(complete) - len(exact),
        "complete_but_wrong": len(wrong),
        "wrong_epochs": wrong,
        "complete_percent": round(100 * len(complete) / len(cuts), 1),
        "in_transit_stream_messages": sum(1 for cut in complete for m in cut.in_transit if m.index),
        "incomplete_reasons": dict(reasons.most_common()),
        "incomplete_examples": [cut.reasons[0] for cut in cuts if not cut.complete and cut.reasons][:3],
        "seconds": round(elapsed, 2),
    }


def _reason(cut: Cut) -> str:
    """The kind of a cut's first reason, without the names and numbers in it."""
    text = cut.reasons[0] if cut.reasons else "?"
    for known in (
        "consumed before the",
        "only its",
        "not recorded yet",
        "calls in flight",
        "no local snapshot",
        "not connected",
    ):
        if known in text:
            return known
    return text[:60]


SCENARIOS = (
    "unary",
    "streams-3ms",
    "streams-1ms",
    "envelope-3ms",
    "envelope-1ms",
    "stripping-proxy",
    "retries",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--snapshots", type=int, default=40, help="snapshots per scenario (default 40)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="which scenarios, comma-separated")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = parser.parse_args()
    names = [name for name in args.scenarios.split(",") if name]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    result = {
        "machine": describe_machine("grpcio", "protobuf"),
        "config": {"snapshots": args.snapshots, "banks": BANKS, "scenarios": names},
        "scenarios": {name: run_scenario(name, args.snapshots) for name in names},
    }
    emit(result, args.json, print_report)
    return 1 if any(s["complete_but_wrong"] for s in result["scenarios"].values()) else 0


def print_report(result: dict[str, Any]) -> None:
    print(f"{result['config']['banks']} banks, {result['config']['snapshots']} snapshots per scenario")
    header = f"{'scenario':<18}{'cuts':>6}{'COMPLETE':>10}{'%':>7}{'exact':>7}{'flagged':>9}{'wrong':>7}"
    print(f"{header}  INCOMPLETE by reason")
    for name, s in result["scenarios"].items():
        reasons = ", ".join(f"{reason}: {n}" for reason, n in s["incomplete_reasons"].items())
        print(
            f"{name:<18}{s['cuts']:>6}{s['complete']:>10}{s['complete_percent']:>7}{s['complete_exact']:>7}"
            f"{s['flagged']:>9}{s['complete_but_wrong']:>7}  {reasons}"
        )


if __name__ == "__main__":
    sys.exit(main())
