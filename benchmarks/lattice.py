"""What lattice invariants cost: recording in the agent, and deciding a window in the collector.

Part ``recording``: the cost of one ``atomic()`` block of an agent's process
core that changes one small integer state, with that state registered
without and with ``record=True`` (and a recorded block that changes
nothing), for clocks of 1 and 64 entries. The variants take turns round by
round, so that the machine's drift falls on all of them alike; the figure is
the added microseconds per block (goal: at most 10).

Part ``decide``: the time to decide possibly(not phi) on random
computations (see ``lattice_decide.py``, run by this script).

    python benchmarks/lattice.py [--part recording|decide|all] [--rounds 7] [--blocks 20000]
        [--full | --sizes 128x10000,...] [--predicates sum_sat,...] [--timeout 60]
        [--message-rate 0.5] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cutwatch.core import ProcessCore

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine, emit  # noqa: E402
from lattice_decide import decide_figures, print_decide  # noqa: E402

GOAL_RECORDING_US = 10.0


def _core(record: bool, clock_entries: int) -> tuple[ProcessCore, dict[str, int]]:
    core = ProcessCore("bench:1")
    state = {"v": 0}
    core.register_state("v", lambda: state["v"], record=record)
    # A process that has heard from many peers: its clock (copied into every recorded event) is long.
    core._clock._clock.merge((f"peer:{i}", i + 1) for i in range(clock_entries - 1))
    return core, state


def _time_blocks(core: ProcessCore, state: dict[str, int], blocks: int, change: bool) -> float:
    """Microseconds per ``atomic()`` block; the buffer is drained as a snapshot would, off the clock."""
    atomic = core.atomic
    spent = 0.0
    done = 0
    while done < blocks:
        batch = min(2000, blocks - done)
        started = time.perf_counter()
        if change:
            for _ in range(batch):
                with atomic():
                    state["v"] += 1
        else:
            for _ in range(batch):
                with atomic():
                    pass
        spent += time.perf_counter() - started
        core._recorder.drain()
        done += batch
    return spent / blocks * 1e6


def recording_figures(rounds: int, blocks: int, clock_entries: list[int]) -> list[dict[str, Any]]:
    rows = []
    for entries in clock_entries:
        variants = {
            "off": (*_core(False, entries), True),
            "on": (*_core(True, entries), True),
            "on_unchanged": (*_core(True, entries), False),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, (core, state, change) in variants.items():
                samples[name].append(_time_blocks(core, state, blocks, change))
        figures = {name: statistics.median(values) for name, values in samples.items()}
        added = figures["on"] - figures["off"]
        rows.append(
            {
                "clock_entries": entries,
                "us_per_block": {name: round(value, 3) for name, value in figures.items()},
                "added_us": round(added, 3),
                "added_unchanged_us": round(figures["on_unchanged"] - figures["off"], 3),
                "goal_us": GOAL_RECORDING_US,
                "goal_met": added <= GOAL_RECORDING_US,
            }
        )
    return rows


def print_report(result: dict[str, Any]) -> None:
    machine = result["machine"]
    print(f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}")
    if "recording" in result:
        print("\nrecording: one atomic() block that changes one small integer state (medians of rounds)")
        print(
            f"{'clock':>6}  {'off us':>8}  {'on us':>8}  {'added':>7}  {'unchanged, added':>16}  goal 10 us"
        )
        for row in result["recording"]:
            us = row["us_per_block"]
            print(
                f"{row['clock_entries']:>6}  {us['off']:>8.2f}  {us['on']:>8.2f}  {row['added_us']:>7.2f}  "
                f"{row['added_unchanged_us']:>16.2f}  {'met' if row['goal_met'] else 'MISSED'}"
            )
    if "decide" in result:
        print_decide(result["decide"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--part", choices=["recording", "decide", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--blocks", type=int, default=20_000)
    parser.add_argument("--clock-entries", default="1,64", help="Comma-separated clock sizes to record with.")
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    parser.add_argument("--quick", action="store_true", help="Small sizes: checks that it runs.")
    parser.add_argument("--full", action="store_true", help="Decide on the whole grid, 4..128 x 10..10,000.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds z3 may take per question.")
    parser.add_argument("--sizes", default="", help="Comma-separated PxE to decide on, e.g. 128x10000.")
    parser.add_argument("--predicates", default="", help="Comma-separated predicate names (default: all).")
    parser.add_argument(
        "--message-rate", type=float, default=0.5, help="Chance that a process receives before each change."
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.blocks = 2, 2000
    result: dict[str, Any] = {
        "machine": describe_machine("z3-solver", "igraph"),
        "config": {"part": args.part, "rounds": args.rounds, "blocks": args.blocks, "quick": args.quick},
    }
    if args.part in ("recording", "all"):
        entries = [int(x) for x in args.clock_entries.split(",") if x]
        result["recording"] = recording_figures(args.rounds, args.blocks, entries)
    if args.part in ("decide", "all"):
        sizes = [(int(p), int(e)) for p, e in (s.split("x") for s in args.sizes.split(",") if s)]
        result["decide"] = decide_figures(
            quick=args.quick,
            full=args.full,
            timeout=args.timeout,
            message_rate=args.message_rate,
            sizes=sizes or None,
            only={p for p in args.predicates.split(",") if p} or None,
        )
    emit(result, args.json, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
