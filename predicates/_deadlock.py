"""Built-in deadlock detection: the reduction of a cut's wait-for graph, and the reports.

Detection is Holt's reduction for multi-unit resources
(:mod:`cutwatch.core._reduction`) on the cut's wait-for graph
(:mod:`cutwatch.core._waitfor`). Deadlock is
stable, and a consistent cut is a state the system really passed through, so
every task reported was stuck from that moment on, until a deadline or a
cancellation ends one of its waits. Agents report the deadlines of calls
(the client's timeout) and the timeouts of lock waits, as seconds left at
their local snapshot: a report says when the first deadline on its cycle
passes (``breaks_in``), or that none has one (``permanent``: stuck until
someone intervenes). Permanent deadlocks are listed first.

What a report may rest on, and when a deadlock on an INCOMPLETE cut counts
as proven (see :mod:`cutwatch.core._waitfor` for the edges):

- handler matches, in-transit records and lock holders come from the cut
  itself and need no assumption; so do calls queued for a worker, which
  their server recorded as they arrived;
- a call listed in ``cut.unsettled`` (not failed) is taken to be queued for a
  worker of its callee; that is the one assumption a report may make, and it
  says so (with the caveat when the flush round did not run), together with
  the worker capacity it relies on;
- a call neither matched to a handler, nor in transit, nor unsettled was
  answered: its caller is not blocked by it;
- waits on an unknown callee, a process that did not report, a pool of
  unknown capacity, or data a stopped recording may have lost are treated as
  met, so no deadlock is ever reported that rests on one. Hence every task,
  resource and wait of a reported deadlock lies in processes that reported.
- a task waiting on several things at once is taken to need all of them;
  when that matters (some were met) the report says so.

``Deadlock.to_json()`` keys (stable; fields are only ever added)::

    epoch        int    the cut's epoch
    cut_status   str    "COMPLETE" | "INCOMPLETE"
    summary      str    one line: how many tasks in which processes
    processes    [str]  the processes involved, sorted
    tasks        [obj]  every deadlocked task (those on the cycle and those stuck behind it):
        process, service, task_id, kind ("server" | "app"), method, pool, caller, call_id,
        trace_id, span_id (hex, "" when none), held_locks [str],
        holds [str]      what it holds, in words ("lock stock:42", "a worker of pool server-1"),
        queued bool      a call its server has queued for a worker (no handler runs it yet)
        waits_for [obj]  every unmet wait: kind ("call" | "queued" | "worker" | "lock"), text (in words),
                         method, call_id, target (callee process), lock, pools [str],
                         waits_on [{process, task_id}], assumption (str or null),
                         times_out_in (seconds from the cut until it ends by itself, or null)
        on_cycle bool    whether it lies on a cycle of waits (false: it waits on tasks that do)
        times_out_in     the earliest of its waits' (null: no deadline, stuck until someone intervenes)
        caller_gives_up_in  a server task's: seconds until its caller's deadline passes (or null)
    cycle        [obj]  one cycle inside the deadlock, in order: process, task_id, task (the
                        task in brief), edge (how it waits for the next step; the last
                        step's edge leads back to the first)
    chain        str    the cycle as one line: ``A [..] -> edge -> B [..] -> edge -> A``
    rests_on     [str]  plain-English assumptions the proof needs; [] when the cut alone proves it
    breaks_in    float  seconds from the cut until the first deadline on the cycle passes (or null)
    permanent    bool   no wait on the cycle has a deadline

A deadlock of more than 500 tasks lists 500 of them (those on a cycle first) and adds
``tasks_total  int``; a cycle of more than 500 steps keeps its first 498 in ``cycle`` and adds
``cycle_end  [obj]`` (its last two steps) and ``cycle_length  int``; ``chain`` then reads
``... N more steps ...`` between them. Counts, ``processes``, ``rests_on`` and ``breaks_in`` are
always the whole deadlock's. Those keys appear only in such reports.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

from cutwatch.core import Cut, Reduction, WaitForGraph, graph_from_cut, reduce_graph
from cutwatch.predicates._deadlock_records import CycleStep, Deadlock, DeadlockedTask, Wait
from cutwatch.predicates._deadlock_report import Reporter

__all__ = [
    "CycleStep",
    "Deadlock",
    "DeadlockedTask",
    "Wait",
    "deadlocks_from",
    "find_deadlocks",
    "format_deadlocks",
]

_SHOWN_STEPS = 40
_SHOWN_TASKS = 30


def find_deadlocks(cut: Cut) -> list[Deadlock]:
    """Every deadlock that ``cut`` proves, [] when none: the permanent ones first (no deadline on their
    cycle), then by when they would break, each group in process order of its first task."""
    graph = graph_from_cut(cut)
    return deadlocks_from(graph, reduce_graph(graph), cut)


def deadlocks_from(graph: WaitForGraph, reduction: Reduction, cut: Cut) -> list[Deadlock]:
    """Group the stuck tasks of a reduced cut graph into :class:`Deadlock` reports."""
    stuck_tasks = reduction.deadlocked
    if not stuck_tasks:
        return []
    # A big deadlock's report allocates hundreds of thousands of small objects and no cycles:
    # the cyclic garbage collector would rescan them all many times over, for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        found = Reporter(graph, reduction, cut, stuck_tasks).report()
        found.sort(key=lambda d: (not d.permanent, d.breaks_in or 0.0))
        return found
    finally:
        if collecting:
            gc.enable()


def format_deadlocks(deadlocks: Sequence[Deadlock]) -> str:
    """The reports for humans: summary, the cycle as a chain, every task, what it rests on."""
    if not deadlocks:
        return "no deadlock found"
    lines: list[str] = []
    total = len(deadlocks)
    for number, deadlock in enumerate(deadlocks, 1):
        if lines:
            lines.append("")
        head = f"Deadlock {number} of {total} (cut {deadlock.epoch}, {deadlock.cut_status})"
        lines.append(f"{head}: {deadlock.summary()}")
        lines.append(f"  lasts: {deadlock.lasts()}")
        lines.append("  cycle: " + deadlock.chain(limit=_SHOWN_STEPS))
        lines.append("  tasks (* on a cycle of waits, - stuck behind one):")
        shown = deadlock.tasks[:_SHOWN_TASKS]
        for task in shown:
            where = f"{task.method or task.kind + ' task'}"
            if task.queued:
                where += f" (queued for a worker of {task.pool})"
            elif task.kind == "server" and task.pool:
                where += f" (handler in {task.pool})"
            marker = "*" if task.on_cycle else "-"
            lines.append(f"    {marker} {task.label}  service {task.service}  {where}")
            if task.caller:
                lines.append(f"        called by {task.caller} (call {task.call_id})")
            lines.append(f"        holds: {', '.join(task.holds) or 'nothing'}")
            for wait in task.waits_for:
                lines.append(f"        waits for: {wait.text}")
            if task.times_out_in is None:
                lines.append("        no deadline: stuck until someone intervenes")
            else:
                lines.append(
                    f"        a wait of it ends by itself about {task.times_out_in:.1f} s after the cut"
                )
            if task.caller_gives_up_in is not None:
                gives_up = task.caller_gives_up_in
                lines.append(f"        its caller's deadline passes about {gives_up:.1f} s after the cut")
            if task.trace_id:
                lines.append(f"        trace {task.trace_id} span {task.span_id or '-'}")
        if deadlock.tasks_left_out:
            more = deadlock.task_count - len(shown)
            lines.append(
                f"    ... and {more} more tasks (the JSON report lists {len(deadlock.tasks)} of them)"
            )
        elif len(deadlock.tasks) > len(shown):
            lines.append(f"    ... and {len(deadlock.tasks) - len(shown)} more tasks (see the JSON report)")
        if deadlock.rests_on:
            lines.append("  rests on:")
            lines.extend(f"    - {item}" for item in deadlock.rests_on)
        else:
            lines.append("  rests on: nothing but the cut")
    return "\n".join(lines)
