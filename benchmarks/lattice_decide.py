"""Deciding possibly(not phi) on random computations, for the figures of ``benchmarks/lattice.py``.

A computation: ``processes`` processes with ``events`` recorded changes each;
before each change a process receives, with probability 1/2 (``--message-rate``), the clock of a
random earlier send of a random other process (so messages cross and
overtake each other), and sends its own clock for others to receive. Every
change sets ``x`` (an integer, a step of -2..2) and, one change in four,
flips ``leader``. The window holds every process's changes with their
vector clocks, as the collector builds it.

Predicates (``phi``; a violation is a consistent cut where it fails):

  sum_unsat     total(x) <= M, M the largest sum over the window's cuts (min-cut)
  sum_sat       total(x) <= M - 1 (min-cut, violated)
  two_leaders   count(leader) <= 1 (min-cut)
  conjunctive   any_of(x_i < 2): violated where every x_i >= 2 at once (Garg-Waldecker)
  general       total(x) != M - 1 (z3: a sum equal to a constant)
  general_bool  any_of(x_0 < 1, leader_1 & leader_2 ...) style mix (z3)

``brute`` enumerates the lattice for the same question, as the anchor, where
it finishes within its budget.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from cutwatch.predicates import LatticeView, all_of, any_of, count, total
from cutwatch.predicates._lattice import decide
from cutwatch.predicates._mincut import max_linear
from cutwatch.predicates._window import Event, History, Window

GRID_FULL = [(p, e) for p in (4, 8, 16, 32, 128) for e in (10, 100, 1000, 10_000)]
GRID_DEFAULT = [(4, 10), (8, 10), (8, 100), (16, 100), (32, 100), (16, 1000), (32, 1000), (128, 1000)]
GRID_QUICK = [(4, 10), (8, 100)]
MAX_CLOCK_ENTRIES = 20_000_000
"""Windows whose clocks would hold more entries than this are not built (memory), and say so;
``--full`` raises it to :data:`MAX_CLOCK_ENTRIES_FULL` (128 x 10,000: about 6 GB of dicts)."""
MAX_CLOCK_ENTRIES_FULL = 200_000_000
BRUTE_LIMIT = 2_000_000
"""Frontiers the brute-force anchor may try (its cost is the product of events + 1 per process)."""


def computation(processes: int, events: int, seed: int = 1, message_rate: float = 0.5) -> Window:
    """A random window of ``processes`` x ``events`` recorded changes (see the module docstring)."""
    rng = random.Random(seed)
    names = [f"p{i:03d}" for i in range(processes)]
    clocks: list[dict[str, int]] = [{} for _ in names]
    sent: list[list[dict[str, int]]] = [[] for _ in names]
    values: list[dict[str, int | bool]] = [{"x": 0, "leader": False} for _ in names]
    histories: list[list[Event]] = [[] for _ in names]
    order = [i for i in range(processes) for _ in range(events)]
    rng.shuffle(order)
    for i in order:
        me = names[i]
        clock = clocks[i]
        if processes > 1 and rng.random() < message_rate:
            j = rng.randrange(processes - 1)
            j += j >= i
            if sent[j]:
                for pid, seen in rng.choice(sent[j][-8:]).items():
                    if seen > clock.get(pid, 0):
                        clock[pid] = seen
        clock[me] = clock.get(me, 0) + 1
        changed: dict[str, int | bool] = {"x": int(values[i]["x"]) + rng.randint(-2, 2)}
        if rng.random() < 0.25:
            changed["leader"] = not values[i]["leader"]
        values[i].update(changed)
        histories[i].append(Event(dict(clock), changed, len(histories[i])))
        clock[me] += 1
        sent[i].append(dict(clock))
        if len(sent[i]) > 8:
            del sent[i][0]
    return Window(
        [History(names[i], "svc", {"x": 0, "leader": False}, tuple(histories[i])) for i in range(processes)],
        bottom_epoch=1,
        top_epoch=2,
    )


def predicates(window: Window) -> dict[str, Callable[[LatticeView], Any]]:
    best, _ = max_linear(window, {(p, "x"): 1 for p in window.processes})
    xs: Callable[[LatticeView], list[Any]] = lambda cut: cut.values("x")  # noqa: E731
    return {
        "sum_unsat": lambda cut: total(xs(cut)) <= best,
        "sum_sat": lambda cut: total(xs(cut)) <= best - 1,
        "two_leaders": lambda cut: count(cut.values("leader")) <= 1,
        "conjunctive": lambda cut: any_of(x < 2 for x in xs(cut)),
        "general": lambda cut: total(xs(cut)) != best - 1,
        "general_bool": lambda cut: (
            all_of(any_of(x < 3, leader) for x, leader in zip(xs(cut), cut.values("leader"), strict=True))
            | (total(xs(cut)) == best)
        ),
    }


def brute(window: Window, phi: Callable[[LatticeView], Any], budget: int) -> dict[str, Any]:
    """possibly(not phi) by enumerating every frontier, or why it was not tried."""
    digits = sum(math.log10(n + 1) for n in window.sizes())
    if digits > math.log10(budget):
        return {"skipped": f"10^{digits:.0f} frontiers"}
    from cutwatch.predicates._symbolic import evaluate  # the same evaluator the engine uses

    formula = phi(LatticeView.of_window(window))
    started = time.perf_counter()
    found = any(not evaluate(formula, window.values_at(f)) for f in window.consistent_cuts())
    return {"seconds": time.perf_counter() - started, "possibly": found}


def decide_figures(
    quick: bool = False,
    full: bool = False,
    timeout: float = 60.0,
    message_rate: float = 0.5,
    sizes: list[tuple[int, int]] | None = None,
    only: set[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per size and predicate; ``sizes`` (processes, events) replaces the grid, ``only``
    keeps those predicates."""
    rows: list[dict[str, Any]] = []
    grid = sizes or (GRID_QUICK if quick else GRID_FULL if full else GRID_DEFAULT)
    full = full or bool(sizes)
    for processes, events in grid:
        if processes * events * processes > (MAX_CLOCK_ENTRIES_FULL if full else MAX_CLOCK_ENTRIES):
            rows.append(
                {
                    "processes": processes,
                    "events": events,
                    "skipped": f"the window's clocks hold about {processes * processes * events:.1e} entries",
                }
            )
            continue
        print(f"[lattice] {processes} x {events}", file=sys.stderr, flush=True)
        built = time.perf_counter()
        window = computation(processes, events, message_rate=message_rate)
        build_seconds = time.perf_counter() - built
        for name, phi in predicates(window).items():
            if only and name not in only:
                continue
            formula = phi(LatticeView.of_window(window))
            answer = decide(window, formula, timeout=timeout, definitely_budget=0, cross_check=False)
            row: dict[str, Any] = {
                "processes": processes,
                "events": events,
                "predicate": name,
                "seconds": round(answer.duration, 4),
                "decided_by": answer.decided_by,
                "possibly": answer.possibly,
                "reason": answer.reason,
                "build_seconds": round(build_seconds, 3),
            }
            if not quick or processes * events <= 40:
                anchor = brute(window, phi, BRUTE_LIMIT)
                row["brute"] = anchor
                if (
                    "possibly" in anchor
                    and answer.possibly is not None
                    and anchor["possibly"] != answer.possibly
                ):
                    raise AssertionError(
                        f"{name} at {processes}x{events}: {answer} but brute force says otherwise"
                    )
            rows.append(row)
    return rows


def print_decide(rows: list[dict[str, Any]]) -> None:
    print("\ndeciding possibly(not phi): seconds (decided by), random computations")
    print(
        f"{'procs':>5} {'events':>6}  {'predicate':<13} {'seconds':>8}  {'answer':<8} {'by':<16} brute force"
    )
    for row in rows:
        if "skipped" in row and "predicate" not in row:
            print(f"{row['processes']:>5} {row['events']:>6}  not run: {row['skipped']}")
            continue
        answer = {True: "violated", False: "holds", None: "unknown"}[row["possibly"]]
        anchor = row.get("brute", {})
        brute_text = (
            f"{anchor['seconds']:.3f} s"
            if "seconds" in anchor
            else f"not run ({anchor['skipped']})"
            if anchor
            else ""
        )
        print(
            f"{row['processes']:>5} {row['events']:>6}  {row['predicate']:<13} {row['seconds']:>8.3f}  "
            f"{answer:<8} {row['decided_by']:<16} {brute_text}"
        )
