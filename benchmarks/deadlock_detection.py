"""How long built-in deadlock detection takes on synthetic cuts of 10^3 to 10^6 tasks.

Two shapes of cut, each built as a real :class:`cutwatch.collector.Cut` (task
objects as agents report them, pools, unsettled calls, in-transit records):

  random  processes of 50 tasks (a worker pool of 8, 0-8 handlers, the rest
          application tasks); tasks hold and wait for locks of their process and
          call handlers of other processes; some calls are unsettled (queued for a
          worker), answered, in transit or non-blocking. Small deadlocks appear.
  cycle   one cycle through every task: blocks of 10 tasks per process chained by
          locks, each block calling the next process's handler (every fifth call
          unsettled: queued for that process's full pool). Everything is deadlocked,
          and the report counts every task and a cycle of all of them (listing 500).

Measured separately, each after a full garbage collection: ``build`` (the
wait-for graph from the cut), ``reduce`` (Holt's reduction) and ``report``
(grouping, cycles and the Deadlock objects); ``total`` is their sum, what
``find_deadlocks`` costs. Generating the cut is not timed. Python's garbage
collector stays on, as in the collector (``--gc off`` shows the algorithm
alone); ``gen2`` counts its full collections inside the timed phases, each a
walk over every object of the cut.

    python benchmarks/deadlock_detection.py [--quick] [--json] [--sizes 1000,10000] [--repeat N] [--gc on|off]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cutwatch.core import (
    Cut,
    InTransitMessage,
    Reduction,
    TaskView,
    WaitForGraph,
    graph_from_cut,
    reduce_graph,
)
from cutwatch.predicates._deadlock import deadlocks_from

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine  # noqa: E402

SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
SHAPES = ("random", "cycle")
PHASES = ("build", "reduce", "report")
GOAL_SIZE = 100_000
GOAL_SECONDS = 1.0
LINEAR_SLACK = 1.5
"""Linear growth: per-task time at the largest size within this factor of the one at 10^5 (both far
beyond the CPU caches; from 10^3 to 10^5 every pass over the cut's objects gets slower per object as
they stop fitting in the caches)."""
TASKS_PER_PROCESS = 50
POOL = 8
BLOCK = 10


# Synthetic cuts ------------------------------------------------------------------------------------
def _task(task_id: int, kind: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "task_id": task_id,
        "kind": kind,
        "method": "/bench.Svc/Call" if kind == "server" else "",
        "caller": "",
        "call_id": 0,
        "pool": "server-1" if kind == "server" else "",
        "trace_id": "",
        "span_id": "",
        "held_locks": [],
        "waiting_lock": None,
        "outbound": [],
    }
    doc.update(fields)
    return doc


def _process_ids(count: int) -> list[str]:
    return [f"svc{k % 20}:{k:07x}" for k in range(count)]


def _cut(
    tasks: dict[str, list[dict[str, Any]]],
    pools: dict[str, dict[str, int]],
    unsettled: list[dict[str, Any]],
    in_transit: list[InTransitMessage],
) -> Cut:
    return Cut(
        epoch=1,
        status="INCOMPLETE" if unsettled else "COMPLETE",
        started=0.0,
        finished=5.0,
        states={p: {"service": p.split(":", 1)[0], "state": {}} for p in tasks},
        in_transit=tuple(in_transit),
        clocks={},
        tasks={p: tuple(TaskView.from_json(t) for t in ts) for p, ts in tasks.items()},
        reasons=("calls in flight at the cut not accounted for",) if unsettled else (),
        unsettled=tuple(unsettled),
        pools=pools,
    )


def random_cut(n: int, seed: int = 1) -> Cut:
    """``n`` tasks in processes of 50: locks, calls, queued calls; a few small deadlocks."""
    rng = random.Random(seed)
    processes = _process_ids(max(2, n // TASKS_PER_PROCESS))
    tasks: dict[str, list[dict[str, Any]]] = {p: [] for p in processes}
    free_handlers: dict[str, list[dict[str, Any]]] = {p: [] for p in processes}
    for k in range(n):
        task_id = k + 1
        process = processes[k % len(processes)]
        own = tasks[process]
        kind = "server" if len(own) < POOL and rng.random() < 0.2 else "app"
        doc = _task(task_id, kind)
        own.append(doc)
        if kind == "server":
            free_handlers[process].append(doc)
    unsettled: list[dict[str, Any]] = []
    in_transit: list[InTransitMessage] = []
    call_id = 0
    for process in processes:
        held: set[str] = set()
        for doc in tasks[process]:
            if rng.random() < 0.2:
                name = f"lock{rng.randrange(20)}"
                if name not in held:
                    held.add(name)
                    doc["held_locks"] = [name]
            if rng.random() < 0.1:
                doc["waiting_lock"] = f"lock{rng.randrange(20)}"
            if rng.random() < 0.5:
                call_id += 1
                target = processes[rng.randrange(len(processes))]
                blocking = rng.random() < 0.9
                doc["outbound"] = [
                    {"call_id": call_id, "method": "/bench.Svc/Call", "target": target, "blocking": blocking}
                ]
                fate = rng.random()
                if fate < 0.6 and free_handlers[target]:
                    handler = free_handlers[target].pop()
                    handler["caller"], handler["call_id"] = process, call_id
                elif fate < 0.7:
                    unsettled.append(
                        {
                            "caller": process,
                            "call_id": call_id,
                            "method": "/bench.Svc/Call",
                            "target": target,
                            "failed": "",
                        }
                    )
                elif fate < 0.8:
                    in_transit.append(
                        InTransitMessage(process, target, "/bench.Svc/Call", "request", call_id, 0, {})
                    )
                elif fate < 0.85:
                    in_transit.append(
                        InTransitMessage(target, process, "/bench.Svc/Call", "response", call_id, 0, {})
                    )
    pools = {p: {"server-1": POOL} for p in processes}
    return _cut(tasks, pools, unsettled, in_transit)


def cycle_cut(n: int) -> Cut:
    """One cycle through all ``n`` tasks (a multiple of 10): lock chains joined by calls and queued calls."""
    blocks = max(2, n // BLOCK)
    processes = _process_ids(blocks)
    tasks: dict[str, list[dict[str, Any]]] = {}
    unsettled: list[dict[str, Any]] = []
    task_id = 0
    for b, process in enumerate(processes):
        prev = processes[b - 1]
        # Task 0 of the block is the handler the previous block waits on: a call it handles, or
        # the only worker of this process's pool that the previous block's queued call waits for.
        queued_into = b % 5 == 0
        own: list[dict[str, Any]] = []
        for j in range(BLOCK):
            task_id += 1
            fields: dict[str, Any] = {"held_locks": [f"L{j}"] if j else []}
            if j + 1 < BLOCK:
                fields["waiting_lock"] = f"L{j + 1}"
            else:
                nxt = processes[(b + 1) % blocks]
                call_id = task_id
                fields["outbound"] = [
                    {"call_id": call_id, "method": "/bench.Svc/Next", "target": nxt, "blocking": True}
                ]
                if (b + 1) % blocks % 5 == 0:
                    unsettled.append(
                        {
                            "caller": process,
                            "call_id": call_id,
                            "method": "/bench.Svc/Next",
                            "target": nxt,
                            "failed": "",
                        }
                    )
            if j == 0:
                caller, called = ("", 0) if queued_into else (prev, task_id - 1)
                own.append(
                    _task(
                        task_id, "server", caller=caller, call_id=called, method="/bench.Svc/Next", **fields
                    )
                )
            else:
                own.append(_task(task_id, "app", **fields))
        tasks[process] = own
    pools = {p: {"server-1": 1} for p in processes}
    return _cut(tasks, pools, unsettled, [])


SHAPE_MAKERS: dict[str, Callable[[int], Cut]] = {"random": random_cut, "cycle": cycle_cut}


# Measuring ---------------------------------------------------------------------------------------
def _clock() -> float:
    """A collection first, so that one phase's garbage is not charged to the next."""
    gc.collect()
    return time.perf_counter()


def _full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def measure(shape: str, n: int, repeat: int, collect: bool = True) -> dict[str, Any]:
    cut = SHAPE_MAKERS[shape](n)
    tasks = sum(len(ts) for ts in cut.tasks.values())
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    graph: WaitForGraph | None = None
    reduction: Reduction | None = None
    found: list[Any] = []
    gen2 = 0
    for _ in range(repeat):
        graph = reduction = None
        found = []
        start = _clock()
        if not collect:
            gc.disable()
        try:
            before = _full_collections()
            graph = graph_from_cut(cut)
            times["build"].append(time.perf_counter() - start)
            start = time.perf_counter()
            reduction = reduce_graph(graph)
            times["reduce"].append(time.perf_counter() - start)
            start = time.perf_counter()
            found = deadlocks_from(graph, reduction, cut)
            times["report"].append(time.perf_counter() - start)
            gen2 = max(gen2, _full_collections() - before)
        finally:
            gc.enable()
    assert graph is not None and reduction is not None
    row: dict[str, Any] = {
        "tasks": tasks,
        "processes": len(cut.tasks),
        "graph_size": graph.size(),
        "needs": graph.n_needs,
        "resources": graph.n_resources,
        "deadlocks": len(found),
        "deadlocked_tasks": sum(d.task_count for d in found),
        "longest_cycle": max((d.cycle_length for d in found), default=0),
        "gen2": gen2,
    }
    for phase in PHASES:
        row[f"{phase}_s"] = statistics.median(times[phase])
    row["detect_s"] = row["build_s"] + row["reduce_s"]
    row["total_s"] = sum(row[f"{phase}_s"] for phase in PHASES)
    row["per_task_us"] = row["total_s"] / tasks * 1e6
    if shape == "cycle":
        assert row["deadlocked_tasks"] == tasks and row["deadlocks"] == 1 and row["longest_cycle"] == tasks
    return row


def run(sizes: Sequence[int], repeat: int, collect: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"shapes": {}}
    for shape in SHAPES:
        rows: list[dict[str, Any]] = []
        for n in sizes:
            times = repeat if n <= 100_000 else 1
            row = measure(shape, n, times, collect)
            row["repeat"] = times
            if rows:
                prev = rows[-1]
                row["growth"] = row["total_s"] / prev["total_s"]
                row["size_ratio"] = row["tasks"] / prev["tasks"]
            rows.append(row)
            print(f"  {shape} {n}: {row['total_s'] * 1000:.1f} ms", file=sys.stderr, flush=True)
        result["shapes"][shape] = rows
    goals: dict[str, Any] = {}
    for shape, rows in result["shapes"].items():
        at_goal = [r for r in rows if r["tasks"] == GOAL_SIZE]
        largest = rows[-1]
        base = at_goal[0] if at_goal and largest["tasks"] > GOAL_SIZE else rows[0]
        goals[shape] = {
            "under_1s_at_1e5": (at_goal[0]["total_s"] < GOAL_SECONDS) if at_goal else None,
            "detect_under_1s_at_1e5": (at_goal[0]["detect_s"] < GOAL_SECONDS) if at_goal else None,
            "linear_base": base["tasks"],
            "per_task_growth": largest["per_task_us"] / base["per_task_us"],
            "linear": largest["per_task_us"] <= LINEAR_SLACK * base["per_task_us"],
        }
    result["goals"] = goals
    return result


def machine() -> dict[str, Any]:
    return describe_machine("cutwatch")


def print_report(result: dict[str, Any]) -> None:
    mach, cfg = result["machine"], result["config"]
    print(
        f"cutwatch deadlock detection: {mach['nproc']} CPUs ({mach['cpu_model']}), Python {mach['python']}; "
        f"median of {cfg['repeat']} runs (1 run at 10^6); garbage collector {cfg.get('gc', 'on')}"
    )
    for shape, rows in result["shapes"].items():
        print(f"\n{shape}")
        print(
            f"{'tasks':>9} {'graph':>9} {'stuck':>8} {'build ms':>10} {'reduce ms':>10} {'report ms':>10} "
            f"{'total ms':>10} {'us/task':>8} {'growth':>7} {'gen2':>5}"
        )
        for r in rows:
            growth = f"{r['growth']:.1f}x" if "growth" in r else ""
            ms = [f"{r[f'{phase}_s'] * 1e3:>10.1f}" for phase in (*PHASES, "total")]
            print(
                f"{r['tasks']:>9} {r['graph_size']:>9} {r['deadlocked_tasks']:>8} {' '.join(ms)} "
                f"{r['per_task_us']:>8.2f} {growth:>7} {r['gen2']:>5}"
            )
        goal = result["goals"][shape]
        words = {None: "not measured", True: "met", False: "MISSED"}
        print(
            f"goal under {GOAL_SECONDS:.0f} s at 10^5 tasks: {words[goal['under_1s_at_1e5']]} "
            f"(build + reduce alone: {words[goal['detect_under_1s_at_1e5']]}); linear growth (per-task time "
            f"at {rows[-1]['tasks']} within {LINEAR_SLACK}x of {goal['linear_base']}): "
            f"{'met' if goal['linear'] else 'MISSED'} ({goal['per_task_growth']:.2f}x)"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10^3 and 10^4 tasks only, one run (smoke test)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--sizes", default="", help="comma-separated task counts (default 10^3..10^6)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per size up to 10^5 (median)")
    parser.add_argument(
        "--gc", choices=("on", "off"), default="on", help="Python's garbage collector while timed"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    else:
        sizes = QUICK_SIZES if args.quick else SIZES
    repeat = 1 if args.quick else max(1, args.repeat)
    result = run(sizes, repeat, collect=args.gc == "on")
    result["config"] = {"sizes": list(sizes), "repeat": repeat, "quick": args.quick, "gc": args.gc}
    result["machine"] = machine()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
