"""What faults on the agents' links to the collector cost the application, and what they do to the cuts.

Four ledgers (agents, each with its own sync gRPC server) move money between
each other at a steady pace, in a child process of their own (as in
production, nothing of the collector shares their interpreter). This process
runs the collector, a snapshot every 150 ms, and a fault-injecting TCP proxy
(tests/faults/proxy.py) with one link per agent's control stream. The
scenarios run in interleaved rounds on the same system, one window each per
round in a new seeded order, so that load on the machine falls on all alike:

  none      no fault: the reference
  latency   50 ms added to every chunk, each direction, every link
  throttle  every link paced to 4 kB/s each direction (about what the streams send)
  reset     one link reset (RST) every 0.4 s, going round all of them
  clog      links clogged one after another, restored in another order

After each window the links are restored and the run waits until every
agent is registered again and a snapshot started after the fault is
COMPLETE. Every transfer and snapshot counts in the window it started in.
Goal: application p50 within 10% of the fault-free run under each fault.

    python benchmarks/fault_injection.py [--seconds 20] [--json] [--seed 1]

It runs from a checkout: it imports the proxy and the bank from tests/. The
child process is this script again (``--app``); it is stopped at the end,
also when something fails.
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
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine, emit  # noqa: E402
from faults.cluster import (  # noqa: E402
    FAULTS,
    LATENCY,
    RESET_EVERY,
    THROTTLE,
    AppResults,
    Bank,
    Figures,
    Traffic,
    no_fault,
)

SCENARIOS = ("none", *FAULTS)
WINDOW = 2.0
"""Seconds per window: short, so that many rounds average out the machine's other load."""
GOAL_P50_RATIO = 1.10
REPLY_TIMEOUT = 60.0


# The application, in a process of its own ---------------------------------------------------------
def app_main(argv: Sequence[str]) -> int:
    """The child: ledgers and traffic; commands and replies are JSON lines on stdin/stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True, help="the collector addresses (links), JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    out = sys.stdout
    traffic = Traffic(json.loads(args.app), args.seed, args.interval)
    try:
        _reply(out, {"processes": traffic.processes})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "start":
                traffic.start()
            elif cmd["cmd"] == "window":
                traffic.set_window(cmd["name"])
            elif cmd["cmd"] == "stop":
                traffic.stop()
            elif cmd["cmd"] == "results":
                _reply(out, traffic.results().to_json())
                continue
            elif cmd["cmd"] == "quit":
                break
            _reply(out, {"ok": True})
    finally:
        traffic.close()
    return 0


def _reply(out: IO[str], doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc) + "\n")
    out.flush()


class RemoteApp:
    """The application side of a :class:`Bank` in a child process, so that the collector and the
    proxy (in this process) take nothing from the application's interpreter: as in production."""

    def __init__(self, collectors: list[str], seed: int, interval: float, log: Path) -> None:
        self._log = log
        with open(log, "w", encoding="utf-8") as err:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--app",
                    json.dumps(collectors),
                    "--seed",
                    str(seed),
                    "--interval",
                    str(interval),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.processes: list[str] = list(self._receive()["processes"])
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=REPLY_TIMEOUT)
        except queue.Empty:
            raise RuntimeError(f"the application did not answer within {REPLY_TIMEOUT} s") from None
        if line is None:
            tail = self._log.read_text(encoding="utf-8")[-3000:]
            raise RuntimeError(f"the application process ended:\n{tail}")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def _request(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self._proc.stdin.flush()
        return self._receive()

    def start(self) -> None:
        self._request("start")

    def set_window(self, window: str | None) -> None:
        self._request("window", name=window)

    def stop(self) -> None:
        self._request("stop")

    def results(self) -> AppResults:
        return AppResults.from_json(self._request("results"))

    def close(self) -> None:
        """Ask it to quit; kill it (this one process, by its handle) if it does not."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._proc.stdin.flush()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# Measuring ----------------------------------------------------------------------------------------


def measure(seconds: float, agents: int, seed: int, period: float, timeout: float) -> dict[str, Any]:
    """``seconds`` per scenario, in rounds of about WINDOW seconds, each round in a new seeded order."""
    rounds = max(1, round(seconds / WINDOW))
    window = seconds / rounds
    faults = {"none": no_fault, **FAULTS}
    order = random.Random(seed)
    held: dict[str, int] = dict.fromkeys(SCENARIOS, 0)
    resets: dict[str, int] = dict.fromkeys(SCENARIOS, 0)
    recovery: dict[str, float] = dict.fromkeys(SCENARIOS, 0.0)
    with tempfile.TemporaryDirectory(prefix="cutwatch-faultbench-") as tmp:

        def app(collectors: list[str], seed: int, interval: float) -> RemoteApp:
            return RemoteApp(collectors, seed, interval, Path(tmp) / "app.log")

        bank = Bank(Path(tmp), agents=agents, seed=seed, period=period, snapshot_timeout=timeout, app=app)
        with bank:
            bank.start()
            bank.run("warm-up", no_fault, 1.0)
            for index in range(rounds):
                for name in order.sample(SCENARIOS, len(SCENARIOS)):
                    before = [link.stats() for link in bank.links]
                    bank.run(f"{name}#{index}", faults[name], window)
                    after = [link.stats() for link in bank.links]
                    held[name] += sum(a.delayed - b.delayed for a, b in zip(after, before, strict=True))
                    resets[name] += sum(a.resets - b.resets for a, b in zip(after, before, strict=True))
                    started = time.monotonic()
                    bank.recover()
                    recovery[name] = max(recovery[name], time.monotonic() - started)
            bank.stop()
            windows = bank.figures()
            assert bank.app is not None
            app_results = bank.app.results()
            stats = bank.collector.coordinator.stats()
    per_round = {
        name: [windows.get(f"{name}#{index}", Figures()) for index in range(rounds)] for name in SCENARIOS
    }
    figures = {name: Figures.merged(parts) for name, parts in per_round.items()}
    base = figures["none"]
    rows = []
    for name in SCENARIOS:
        f = figures[name]
        paired = [
            mine.p(0.5) / ref.p(0.5)
            for mine, ref in zip(per_round[name], per_round["none"], strict=True)
            if mine.latencies and ref.latencies
        ]
        p50_ratio = round(f.p(0.5) / base.p(0.5), 3) if base.latencies and f.latencies else None
        rows.append(
            {
                "scenario": name,
                "calls": f.calls,
                "failures": f.failures,
                "p50_ms": round(f.p(0.5), 3),
                "p99_ms": round(f.p(0.99), 3),
                "p50_ratio": p50_ratio,
                "p50_ratio_by_round": round(statistics.median(paired), 3) if paired else None,
                "p99_ratio": round(f.p(0.99) / base.p(0.99), 3) if base.latencies and f.latencies else None,
                "snapshots": f.started,
                "complete": f.complete,
                "incomplete": f.incomplete,
                "max_terminal_s": round(f.max_terminal, 3),
                "median_complete_s": round(f.median_complete, 3),
                "partial": len(f.partial),
                "inconsistent": len(f.inconsistent),
                "examples": (f.inconsistent + f.partial)[:3],
                "chunks_held": held[name],
                "resets": resets[name],
                "max_recovery_s": round(recovery[name], 3),
                "goal_met": name == "none" or (p50_ratio is not None and p50_ratio <= GOAL_P50_RATIO),
            }
        )
    return {
        "scenarios": rows,
        "rounds": rounds,
        "window_s": round(window, 3),
        "reconnects": [n - 1 for n in app_results.connects],
        "failure_examples": app_results.failures[:5],
        "collector": {"rejected": stats.rejected, "store_errors": stats.store_errors},
        "no_agents": bank.no_agents,
    }


def machine() -> dict[str, Any]:
    return describe_machine("grpcio", "cutwatch")


def _goal(met: bool) -> str:
    return "met" if met else "MISSED"


def print_report(result: dict[str, Any]) -> None:
    cfg, mach = result["config"], result["machine"]
    print(
        f"cutwatch under faults on the agents' links to the collector ({cfg['elapsed_s']} s)\n"
        f"machine: {mach['nproc']} CPUs, Python {mach['python']}, grpcio {mach['grpcio']}, load average "
        f"{mach['load_average'][0]} at start, {mach['load_average_at_end'][0]} at the end\n"
        f"{cfg['agents']} agents, a snapshot every {cfg['period'] * 1000:g} ms "
        f"(timeout {cfg['timeout']:g} s); "
        f"{result['rounds']} rounds of one {result['window_s']:g} s window per scenario, seed {cfg['seed']}\n"
        f"faults: latency +{LATENCY * 1000:g} ms per chunk each way; "
        f"throttle {THROTTLE / 1000:g} kB/s each way; "
        f"reset one link every {RESET_EVERY:g} s; clog links one at a time, restore in another order"
    )
    print(
        f"\n  {'scenario':<10}{'RPCs':>7}{'fail':>5}{'p50 ms':>8}{'x':>6}{'x rnd':>6}{'p99 ms':>8}{'x':>6}"
        f"{'snaps':>6}{'COMPL':>6}{'INCOM':>6}{'max end s':>10}{'partial':>8}{'incons.':>8}{'held':>6}"
        f"{'resets':>7}  goal p50"
    )
    for r in result["scenarios"]:
        ratio50 = f"{r['p50_ratio']:.2f}" if r["p50_ratio"] is not None else "-"
        ratio99 = f"{r['p99_ratio']:.2f}" if r["p99_ratio"] is not None else "-"
        by_round = f"{r['p50_ratio_by_round']:.2f}" if r["p50_ratio_by_round"] is not None else "-"
        goal = "" if r["scenario"] == "none" else _goal(r["goal_met"])
        print(
            f"  {r['scenario']:<10}{r['calls']:>7}{r['failures']:>5}{r['p50_ms']:>8.3f}{ratio50:>6}"
            f"{by_round:>6}{r['p99_ms']:>8.3f}{ratio99:>6}{r['snapshots']:>6}{r['complete']:>6}"
            f"{r['incomplete']:>6}{r['max_terminal_s']:>10.3f}{r['partial']:>8}{r['inconsistent']:>8}"
            f"{r['chunks_held']:>6}{r['resets']:>7}  {goal}"
        )
    print(
        "  (x: ratio to 'none'; x rnd: median over rounds of the ratio to that round's 'none';\n"
        "   max end: longest time from a snapshot's start to COMPLETE or INCOMPLETE; partial: stored\n"
        "   COMPLETE cuts that lack a process; incons.: stored COMPLETE cuts that do not conserve the\n"
        "   money or fail the vector-clock check; held: chunks the proxy held back)"
    )
    print(
        f"  reconnects per agent {result['reconnects']}, longest wait for recovery after a window "
        + ", ".join(f"{r['scenario']} {r['max_recovery_s']:.2f} s" for r in result["scenarios"])
        + f"; collector rejected {result['collector']['rejected']}, store errors "
        f"{result['collector']['store_errors']}"
    )
    for r in result["scenarios"]:
        for example in r["examples"]:
            print(f"  {r['scenario']}: {example}")
    for failure in result["failure_examples"]:
        print(f"  failed transfer: {failure}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--app" in argv:
        return app_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="seconds measured per scenario (default 20)"
    )
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--period", type=float, default=0.15, help="seconds between snapshots")
    parser.add_argument("--timeout", type=float, default=1.0, help="snapshot timeout, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.agents < 2:
        parser.error("--seconds must be positive and --agents at least 2")
    logging.basicConfig(level=logging.CRITICAL)
    started = time.monotonic()
    mach = machine()
    result = measure(args.seconds, args.agents, args.seed, args.period, args.timeout)
    mach["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    config = {
        "seconds": args.seconds,
        "agents": args.agents,
        "period": args.period,
        "timeout": args.timeout,
        "seed": args.seed,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    result = {"config": config, "machine": mach, **result}
    emit(result, args.json, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
