"""A huge deadlock's report keeps what it lists (tasks, cycle steps) and counts the rest, and its kept
part says what the full report says (no timing here: see benchmarks/deadlock_detection.py)."""

from __future__ import annotations

import dataclasses

import pytest
from benchmark_scripts import BENCHMARKS, load_script

from cutwatch.collector._checks import _capped
from cutwatch.core import Cut, TaskView
from cutwatch.predicates import Deadlock, _deadlock_report, find_deadlocks, format_deadlocks
from cutwatch.predicates._deadlock_records import KEPT_STEPS, KEPT_TASKS

BLOCK = 10
BLOCKS = 2_000  # 20,000 tasks on one cycle
BEHIND_EVERY = 50  # every 50th process has an app task stuck behind the cycle (not on it)
DEADLINE_AT = BLOCKS - 3  # the cycle's only deadline, far beyond the steps a report keeps


def cycle_cut() -> Cut:
    """The benchmark's cycle (blocks of 10 tasks per process chained by locks, each block calling the
    next process, every fifth call queued for a full pool), plus tasks stuck behind it and a deadline."""
    cut = load_script(BENCHMARKS / "deadlock_detection.py").cycle_cut(BLOCKS * BLOCK)
    tasks: dict[str, tuple[TaskView, ...]] = {}
    for b, (process, own) in enumerate(cut.tasks.items()):
        if b == DEADLINE_AT:
            last = own[-1]
            (outbound,) = last.outbound
            timed = dataclasses.replace(outbound, time_left=12.5)
            own = (*own[:-1], dataclasses.replace(last, outbound=(timed,)))
        if b % BEHIND_EVERY == 0:  # first in process order: waits for a lock the cycle holds
            behind = TaskView.from_json({"task_id": 10**6 + b, "kind": "app", "waiting_lock": "L3"})
            own = (behind, *own)
        tasks[process] = own
    return dataclasses.replace(cut, tasks=tasks)


@pytest.fixture(scope="module")
def reports() -> tuple[Deadlock, Deadlock]:
    cut = cycle_cut()
    (kept,) = find_deadlocks(cut)
    with pytest.MonkeyPatch.context() as patch:  # the same report, keeping everything
        patch.setattr(_deadlock_report, "KEPT_TASKS", 10**9)
        patch.setattr(_deadlock_report, "KEPT_STEPS", 10**9)
        (full,) = find_deadlocks(cut)
    return kept, full


def test_a_huge_deadlock_keeps_at_most_the_cap_and_counts_the_rest(
    reports: tuple[Deadlock, Deadlock],
) -> None:
    kept, full = reports
    behind = BLOCKS // BEHIND_EVERY
    total = BLOCKS * BLOCK + behind
    assert full.task_count == len(full.tasks) == total and full.tasks_left_out == 0
    assert len(full.cycle) == full.cycle_length == BLOCKS * BLOCK and not full.cycle_end

    assert len(kept.tasks) == KEPT_TASKS and kept.tasks_left_out == total - KEPT_TASKS
    assert kept.task_count == total
    assert len(kept.cycle) + len(kept.cycle_end) == KEPT_STEPS and len(kept.cycle_end) == 2
    assert kept.cycle_length == BLOCKS * BLOCK and kept.steps_left_out == BLOCKS * BLOCK - KEPT_STEPS
    # Counts and processes are the whole deadlock's.
    assert kept.processes == full.processes and len(kept.processes) == BLOCKS
    assert kept.summary() == full.summary()
    assert kept.summary().startswith(f"deadlock of {total} tasks in {BLOCKS} processes (")
    assert kept.summary().endswith(f", {kept.processes[4]} and {BLOCKS - 5} more)")
    assert kept.rests_on == full.rests_on and len(kept.rests_on) == 2 * (BLOCKS // 5) + 1
    assert kept.breaks_in == full.breaks_in == 12.5 and not kept.permanent


def test_the_kept_part_is_what_the_full_report_says(reports: tuple[Deadlock, Deadlock]) -> None:
    kept, full = reports
    # Tasks: those on the cycle first, as the collector stores a capped report.
    assert all(t.on_cycle for t in kept.tasks)
    assert any(not t.on_cycle for t in full.tasks[:KEPT_TASKS])  # so the order did matter
    on_cycle_first = [t for t in full.tasks if t.on_cycle] + [t for t in full.tasks if not t.on_cycle]
    assert list(kept.tasks) == on_cycle_first[:KEPT_TASKS]
    # Cycle: its first steps and its last two.
    assert kept.cycle == full.cycle[: KEPT_STEPS - 2] and kept.cycle_end == full.cycle[-2:]
    assert kept.chain(limit=40) == full.chain(limit=40)
    head, tail = kept.chain().split(f" -> ... {kept.steps_left_out} more steps ... -> ")
    assert full.chain().startswith(head + " -> ") and full.chain().endswith(" -> " + tail)

    # JSON: the whole report's keys, and what a capped report adds; the collector stores it as it is.
    doc, whole = kept.to_json(), full.to_json()
    assert set(doc) - set(whole) == {"tasks_total", "cycle_end", "cycle_length"}
    assert doc["tasks_total"] == len(whole["tasks"]) and doc["cycle_length"] == len(whole["cycle"])
    assert doc["tasks"] == _capped(whole)["tasks"]
    assert doc["cycle"] == whole["cycle"][: KEPT_STEPS - 2] and doc["cycle_end"] == whole["cycle"][-2:]
    for key in ("epoch", "cut_status", "summary", "processes", "rests_on", "breaks_in", "permanent"):
        assert doc[key] == whole[key], key
    assert _capped(doc) is doc

    # Text: the same summary and chain; the task list says how many the JSON report keeps.
    text, full_text = format_deadlocks([kept]), format_deadlocks([full])
    more = f"    ... and {kept.task_count - 30} more tasks (the JSON report lists {KEPT_TASKS} of them)"
    assert more in text.splitlines()
    assert text.splitlines()[:3] == full_text.splitlines()[:3]
