"""What checking a predicate costs the collector per cut: a conservation invariant over 1000 processes.

A synthetic COMPLETE cut shaped like the bank's (every process a ``bank``
with a ``balance``, Credit requests in transit carrying an ``amount``, two
tasks per process, vector clocks of a given number of entries) is checked
by ``PredicateEngine`` in its worker process, and the pieces are timed in
this process too:

  predicate      the conservation predicate alone, in process (``check``)
  encode         the cut to JSON text, in the collector (once per cut)
  decode         JSON text to a ``Cut``, what the worker does (timed here)
  evaluate       ``engine.evaluate(cut)`` with the conservation predicate
  evaluate_true  ``engine.evaluate(cut)`` with a predicate that returns True

The two engines take turns cut by cut. Every cut moves money around but
keeps the sum, so every result must be PASS; the benchmark checks that.

    python benchmarks/predicate_overhead.py [--processes 1000] [--in-transit 100]
        [--clock-entries 8,1000] [--cuts 20] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cutwatch.core import Cut, InTransitMessage, TaskView
from cutwatch.predicates import PASS, check, conservation, invariant
from cutwatch.predicates.engine import PredicateEngine

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine  # noqa: E402

CREDIT = "/bank.Bank/Credit"
INITIAL = 1000

CONSERVATION_SOURCE = f"""
from cutwatch.predicates import conservation, invariant

@invariant("bank.conservation")
def conserved(cut):
    return conservation(cut, state="balance", payload="amount", total={{total}}, methods=[{CREDIT!r}])
"""
TRIVIAL_SOURCE = """
from cutwatch.predicates import invariant

@invariant("always")
def always(cut):
    return True
"""


def make_cut(epoch: int, processes: int, in_transit: int, clock_entries: int, rng: random.Random) -> Cut:
    """A bank cut whose balances plus in-transit amounts add up to ``processes * INITIAL``."""
    names = [f"bank:{i:05d}" for i in range(processes)]
    balances = dict.fromkeys(names, INITIAL)
    messages = []
    for n in range(in_transit):
        sender, receiver = rng.choice(names), rng.choice(names)
        amount = rng.randint(1, 10)
        balances[sender] -= amount
        messages.append(
            InTransitMessage(sender, receiver, CREDIT, "request", n + 1, 0, {"amount": float(amount)})
        )
    entries = min(clock_entries, processes)
    clocks = {}
    tasks = {}
    for i, name in enumerate(names):
        known = [names[(i + k) % processes] for k in range(entries)]
        clocks[name] = {q: rng.randint(1, 1 << 20) for q in known}
        tasks[name] = tuple(
            TaskView.from_json(
                {
                    "task_id": t + 1,
                    "kind": "server",
                    "method": CREDIT,
                    "caller": names[(i + t + 1) % processes],
                    "call_id": t + 1,
                    "pool": "0",
                    "trace_id": "",
                    "span_id": "",
                    "held_locks": [],
                    "waiting_lock": None,
                    "outbound": [],
                }
            )
            for t in range(2)
        )
    return Cut(
        epoch=epoch,
        status="COMPLETE",
        started=float(epoch),
        finished=float(epoch) + 0.01,
        states={p: {"service": "bank", "state": {"balance": b}} for p, b in balances.items()},
        in_transit=tuple(messages),
        clocks=clocks,
        tasks=tasks,
    )


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 3),
    }


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run_variant(args: argparse.Namespace, clock_entries: int, folder: Path) -> dict[str, Any]:
    rng = random.Random(clock_entries)
    total = args.processes * INITIAL
    conservation_file = folder / "conservation.py"
    conservation_file.write_text(CONSERVATION_SOURCE.replace("{total}", str(total)))
    trivial_file = folder / "trivial.py"
    trivial_file.write_text(TRIVIAL_SOURCE)

    @invariant("bank.conservation.in_process")
    def in_process(cut: Cut) -> Any:
        return conservation(cut, state="balance", payload="amount", total=total, methods=[CREDIT])

    times: dict[str, list[float]] = {
        k: [] for k in ("predicate", "encode", "decode", "evaluate", "evaluate_true")
    }
    worker_predicate: list[float] = []
    statuses: list[str] = []
    cut_bytes = 0
    with (
        PredicateEngine([str(conservation_file)], timeout=120) as engine,
        PredicateEngine([str(trivial_file)], timeout=120) as trivial,
    ):
        warm = make_cut(0, args.processes, args.in_transit, clock_entries, rng)
        engine.evaluate(warm)
        trivial.evaluate(warm)
        for epoch in range(1, args.cuts + 1):
            cut = make_cut(epoch, args.processes, args.in_transit, clock_entries, rng)
            seconds, result = _timed(lambda c=cut: check(in_process, c))
            times["predicate"].append(seconds)
            statuses.append(result.status)
            seconds, text = _timed(lambda c=cut: json.dumps(c.to_json(), allow_nan=False))
            times["encode"].append(seconds)
            cut_bytes = len(text)
            seconds, _ = _timed(lambda t=text: Cut.from_json(json.loads(t)))
            times["decode"].append(seconds)
            order = [("evaluate", engine), ("evaluate_true", trivial)]
            for key, which in order if epoch % 2 else reversed(order):
                seconds, results = _timed(lambda w=which, c=cut: w.evaluate(c))
                times[key].append(seconds)
                statuses.extend(r.status for r in results)
                if key == "evaluate":
                    worker_predicate.append(results[0].duration)
        restarts = engine.restarts + trivial.restarts
    figures: dict[str, Any] = {key: _ms(values) for key, values in times.items()}
    figures["worker_predicate"] = _ms(worker_predicate)
    figures["overhead_ms"] = round(figures["evaluate"]["median_ms"] - figures["predicate"]["median_ms"], 3)
    return {
        "clock_entries": min(clock_entries, args.processes),
        "cut_json_bytes": cut_bytes,
        "figures": figures,
        "check": {
            "results": len(statuses),
            "all_pass": all(s == PASS for s in statuses),
            "restarts": restarts,
        },
    }


def machine() -> dict[str, Any]:
    return describe_machine()


def report(result: dict[str, Any]) -> str:
    cfg, mach = result["config"], result["machine"]
    lines = [
        f"machine: {mach['nproc']} CPUs ({mach['cpu_model']}), Python {mach['python']}, "
        f"load average {mach['load_average'][0]}",
        f"{cfg['processes']} processes, {cfg['in_transit']} messages in transit, 2 tasks per process, "
        f"{cfg['cuts']} cuts per row; medians (p90) in ms",
        "",
        "| clock entries | cut JSON | predicate | encode | decode | evaluate | evaluate (True) | overhead |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        f = row["figures"]

        def cell(key: str, f: dict[str, Any] = f) -> str:
            return f"{f[key]['median_ms']:.2f} ({f[key]['p90_ms']:.2f})"

        lines.append(
            f"| {row['clock_entries']} | {row['cut_json_bytes'] / 1024:.0f} KiB | {cell('predicate')} | "
            f"{cell('encode')} | {cell('decode')} | {cell('evaluate')} | {cell('evaluate_true')} | "
            f"{f['overhead_ms']:.2f} |"
        )
    lines.append("")
    for row in result["rows"]:
        chk = row["check"]
        lines.append(
            f"clock entries {row['clock_entries']}: {chk['results']} results, all PASS: {chk['all_pass']}, "
            f"worker restarts: {chk['restarts']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--in-transit", type=int, default=100)
    parser.add_argument(
        "--clock-entries", default="8,1000", help="Comma-separated clock sizes, one row each."
    )
    parser.add_argument("--cuts", type=int, default=20, help="Cuts per row.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    parser.add_argument("--quick", action="store_true", help="5 cuts, 8-entry clocks: checks that it runs.")
    args = parser.parse_args(argv)
    if args.quick:
        args.cuts, args.clock_entries = 5, "8"
    sizes = [int(s) for s in args.clock_entries.split(",") if s.strip()]
    mach = machine()
    with tempfile.TemporaryDirectory(prefix="cutwatch-predicate-bench-") as tmp:
        rows = [run_variant(args, size, Path(tmp)) for size in sizes]
    mach["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "config": {
            "processes": args.processes,
            "in_transit": args.in_transit,
            "clock_entries": sizes,
            "cuts": args.cuts,
            "quick": args.quick,
        },
        "machine": mach,
        "rows": rows,
    }
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0 if all(row["check"]["all_pass"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
