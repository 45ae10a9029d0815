"""Holt's graph reduction for multi-unit resources: what a wait-for graph can never finish.

A task whose every need can be met (a free unit of some alternative) is
assumed to finish and release what it holds; what can never be reduced is
deadlocked. Freed units are never taken away again (a task granted a unit
finishes and gives it back), so availability only grows and one worklist
pass with per-task counters of unmet needs suffices: time linear in the
graph (:class:`~cutwatch.core._waitfor.WaitForGraph`). Deadlock is stable,
so a deadlock read from a consistent cut is real.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress

from cutwatch.core._waitfor import WaitForGraph

__all__ = ["Reduction", "reduce_graph"]


@dataclass(frozen=True)
class Reduction:
    """The outcome of reducing a graph."""

    stuck: bytearray
    """``stuck[t]`` is 1 for a task that can never finish (deadlocked), 0 for one reduced."""
    unmet: bytearray
    """``unmet[i]`` is 1 for a need still unmet at the end (only needs of stuck tasks)."""
    free: list[int]
    """Free units of each lock/pool resource at the end (index ``r - n_tasks``)."""

    @property
    def deadlocked(self) -> list[int]:
        return list(compress(range(len(self.stuck)), self.stuck))


def reduce_graph(graph: WaitForGraph) -> Reduction:
    """Holt's reduction with a worklist: O(tasks + resources + holdings + need alternatives)."""
    n = graph.n_tasks
    need_task, need_start, need_alts = graph.need_task, graph.need_start, graph.need_alts
    hold_start, hold_res = graph.hold_start, graph.hold_res
    free = [c - h for c, h in zip(graph.res_capacity, graph.held_counts(), strict=True)]
    n_needs = len(need_task)
    blocked = [0] * n
    unmet = bytearray(n_needs)

    # Which needs are unmet at the cut; count them per task and per resource they wait on.
    waiting = [0] * (n + len(free) + 1)
    for i in range(n_needs):
        s, e = need_start[i], need_start[i + 1]
        if e == s + 1:
            r = need_alts[s]
            if r >= n and free[r - n] >= 1:
                continue
            waiting[r] += 1
        else:
            if any(r >= n and free[r - n] >= 1 for r in need_alts[s:e]):
                continue
            for r in need_alts[s:e]:
                waiting[r] += 1
        unmet[i] = 1
        blocked[need_task[i]] += 1

    # Waiters of each resource, as CSR: wait_needs[wait_start[r]:wait_start[r + 1]].
    total = 0
    for r, count in enumerate(waiting):
        waiting[r] = total
        total += count
    wait_start = waiting  # now the start offsets; filled by advancing a copy
    fill = wait_start[:]
    wait_needs = [0] * total
    for i in range(n_needs):
        if unmet[i]:
            for r in need_alts[need_start[i] : need_start[i + 1]]:
                wait_needs[fill[r]] = i
                fill[r] += 1
    del fill

    stack = [t for t in range(n) if not blocked[t]]
    stuck = bytearray(b"\x01") * n
    while stack:
        t = stack.pop()
        stuck[t] = 0
        # Its completion: callers waiting on this handler go on.
        for k in range(wait_start[t], wait_start[t + 1]):
            i = wait_needs[k]
            if unmet[i]:
                unmet[i] = 0
                u = need_task[i]
                blocked[u] -= 1
                if not blocked[u]:
                    stack.append(u)
        # Its units go back; a resource that gets its first free unit wakes every waiter.
        for h in range(hold_start[t], hold_start[t + 1]):
            r = hold_res[h]
            j = r - n
            free[j] += 1
            if free[j] == 1:
                for k in range(wait_start[r], wait_start[r + 1]):
                    i = wait_needs[k]
                    if unmet[i]:
                        unmet[i] = 0
                        u = need_task[i]
                        blocked[u] -= 1
                        if not blocked[u]:
                            stack.append(u)
    return Reduction(stuck=stuck, unmet=unmet, free=free)
