"""Built-in deadlock detection: graph reduction of a cut's wait-for graph, and the reports.

Detection is Holt's reduction for multi-unit resources: a task whose every
need can be met (a free unit of some alternative) is assumed to finish and
release what it holds; what can never be reduced is deadlocked. Freed units
are never taken away again (a task granted a unit finishes and gives it
back), so availability only grows and one worklist pass with per-task
counters of unmet needs suffices: time linear in the graph. Deadlock is
stable, and a consistent cut is a state the system really passed through, so
every task reported was stuck from that moment on (until a deadline or a
cancellation ends one of its calls: cutwatch cannot see deadlines).

What a report may rest on, and when a deadlock on an INCOMPLETE cut counts
as proven (see :mod:`cutwatch.predicates._waitfor` for the edges):

- handler matches, in-transit records and lock holders come from the cut
  itself and need no assumption;
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
        waits_for [obj]  every unmet wait: kind ("call" | "worker" | "lock"), text (in words),
                         method, call_id, target (callee process), lock, pools [str],
                         waits_on [{process, task_id}], assumption (str or null)
        on_cycle bool    whether it lies on a cycle of waits (false: it waits on tasks that do)
    cycle        [obj]  one cycle inside the deadlock, in order: process, task_id, task (the
                        task in brief), edge (how it waits for the next step; the last
                        step's edge leads back to the first)
    chain        str    the cycle as one line: ``A [..] -> edge -> B [..] -> edge -> A``
    rests_on     [str]  plain-English assumptions the proof needs; [] when the cut alone proves it
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING, Any, NamedTuple

from cutwatch.predicates._waitfor import (
    NEED_CALL,
    NEED_LOCK,
    NEED_WORKER,
    QueuedCall,
    WaitForGraph,
    graph_from_cut,
)

if TYPE_CHECKING:
    from cutwatch.collector._cut import Cut

__all__ = [
    "CycleStep",
    "Deadlock",
    "DeadlockedTask",
    "Reduction",
    "Wait",
    "deadlocks_from",
    "find_deadlocks",
    "format_deadlocks",
    "reduce_graph",
]

_SHOWN_STEPS = 40
_SHOWN_TASKS = 30


# Reduction ------------------------------------------------------------------------------------------
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


# Reports ----------------------------------------------------------------------------------------------
class Wait(NamedTuple):
    """One unmet wait of a deadlocked task.

    Report records are named tuples of plain values: immutable, cheap to make, and left alone by
    the garbage collector, which matters when one deadlock names 10^5 tasks.
    """

    kind: str
    """``call`` (a handler is running it), ``worker`` (queued for a worker) or ``lock``."""
    text: str
    method: str = ""
    call_id: int | None = None
    target: str = ""
    """The process it waits on: the callee of a call, the lock's process."""
    lock: str = ""
    pools: tuple[str, ...] = ()
    waits_on: tuple[tuple[str, int], ...] = ()
    """(process, task_id) of the tasks it waits on: handler, lock holder, busy workers."""
    assumption: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            "method": self.method,
            "call_id": self.call_id,
            "target": self.target,
            "lock": self.lock,
            "pools": list(self.pools),
            "waits_on": [{"process": p, "task_id": t} for p, t in self.waits_on],
            "assumption": self.assumption,
        }


class DeadlockedTask(NamedTuple):
    process: str
    service: str
    task_id: int
    kind: str
    method: str
    pool: str
    caller: str
    call_id: int
    trace_id: str
    span_id: str
    held_locks: tuple[str, ...]
    waits_for: tuple[Wait, ...]
    on_cycle: bool

    @property
    def label(self) -> str:
        return f"{self.process}#{self.task_id}"

    @property
    def holds(self) -> tuple[str, ...]:
        out = [f"lock {name}" for name in self.held_locks]
        if self.kind == "server" and self.pool:
            out.append(f"a worker of pool {self.pool}")
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "service": self.service,
            "task_id": self.task_id,
            "kind": self.kind,
            "method": self.method,
            "pool": self.pool,
            "caller": self.caller,
            "call_id": self.call_id,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "held_locks": list(self.held_locks),
            "holds": list(self.holds),
            "waits_for": [w.to_json() for w in self.waits_for],
            "on_cycle": self.on_cycle,
        }


class CycleStep(NamedTuple):
    process: str
    task_id: int
    task: str
    """The task in brief (method, held locks)."""
    edge: str
    """How this task waits for the next step (the last one's for the first)."""


@dataclass(frozen=True)
class Deadlock:
    """One group of deadlocked tasks (connected through what they wait for), with a cycle inside it."""

    epoch: int
    cut_status: str
    tasks: tuple[DeadlockedTask, ...]
    cycle: tuple[CycleStep, ...]
    rests_on: tuple[str, ...] = ()

    @property
    def processes(self) -> tuple[str, ...]:
        return tuple(sorted({t.process for t in self.tasks}))

    def summary(self) -> str:
        processes = self.processes
        where = ", ".join(processes[:5]) + (f" and {len(processes) - 5} more" if len(processes) > 5 else "")
        return (
            f"deadlock of {len(self.tasks)} task{'s' if len(self.tasks) != 1 else ''} in "
            f"{len(processes)} process{'es' if len(processes) != 1 else ''} ({where})"
        )

    def chain(self, limit: int | None = None) -> str:
        """The cycle as one readable line; ``limit`` shows only that many steps of a long one."""
        steps = self.cycle
        if not steps:
            return ""
        parts: list[str] = []
        shown = steps if limit is None or len(steps) <= limit else steps[: limit - 3]
        for step in shown:
            parts.append(f"{step.process}#{step.task_id} [{step.task}]")
            parts.append(step.edge)
        if len(shown) < len(steps):
            parts.append(f"... {len(steps) - len(shown) - 2} more steps ...")
            for step in steps[-2:]:
                parts.append(f"{step.process}#{step.task_id} [{step.task}]")
                parts.append(step.edge)
        first = steps[0]
        parts.append(f"{first.process}#{first.task_id}")
        return " -> ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "cut_status": self.cut_status,
            "summary": self.summary(),
            "processes": list(self.processes),
            "tasks": [t.to_json() for t in self.tasks],
            "cycle": [
                {"process": s.process, "task_id": s.task_id, "task": s.task, "edge": s.edge}
                for s in self.cycle
            ],
            "chain": self.chain(),
            "rests_on": list(self.rests_on),
        }


def find_deadlocks(cut: Cut) -> list[Deadlock]:
    """Every deadlock that ``cut`` proves, in process order of their first task; [] when none."""
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
        return _Reporter(graph, reduction, cut, stuck_tasks).report()
    finally:
        if collecting:
            gc.enable()


class _Reporter:
    """Groups, cycles and words for the stuck tasks of one reduced graph, linear in the stuck part.

    The stuck tasks and the locks and pools they wait on get compact ids (tasks first, in
    process order); their wait-for edges are kept as CSR lists of ints, so that a deadlock of
    10^5 tasks costs a few flat lists rather than objects per task.
    """

    def __init__(self, graph: WaitForGraph, reduction: Reduction, cut: Cut, stuck_tasks: list[int]) -> None:
        g = graph
        self.g = graph
        self.cut = cut
        self.n = n = graph.n_tasks
        self.held = graph.held_counts()
        self.services: dict[str, str] = {}
        self.tasks = stuck_tasks
        s = len(stuck_tasks)
        cid = {t: c for c, t in enumerate(stuck_tasks)}
        self.cid = cid
        ids: list[int] = []
        labels: list[str] = []
        task_info, task_process = g.task_info, g.task_process
        for t in stuck_tasks:
            info = task_info[t]
            tid = int(info.get("task_id", t)) if info is not None else t
            ids.append(tid)
            labels.append(f"{task_process[t]}#{tid}")
        self.ids, self.labels = ids, labels

        # Unmet needs of each stuck task: unmet_needs[need_start_of[c]:need_start_of[c + 1]].
        need_task, need_start, need_alts = g.need_task, g.need_start, g.need_alts
        unmet = list(compress(range(len(reduction.unmet)), reduction.unmet))
        unmet.sort(key=need_task.__getitem__)  # already in task order for graphs built from cuts
        needs_start = [0] * (s + 1)
        for i in unmet:
            needs_start[cid[need_task[i]] + 1] += 1
        for c in range(s):
            needs_start[c + 1] += needs_start[c]
        self.unmet_needs, self.needs_start = unmet, needs_start

        # Blocking resources get ids s, s+1, ...; edges: task -> what it waits on -> stuck holders.
        rid: dict[int, int] = {}
        succ: list[int] = []
        succ_start = [0]
        for i in unmet:  # tasks in compact order, since ``unmet`` is sorted by task
            for k in range(need_start[i], need_start[i + 1]):
                r = need_alts[k]
                if r < n:
                    succ.append(cid[r])
                else:
                    found = rid.get(r)
                    if found is None:
                        found = rid[r] = s + len(rid)
                    succ.append(found)
        # succ_start for tasks: every need's alternatives in order, so per task it is the sum.
        pos = 0
        for c in range(s):
            for i in unmet[needs_start[c] : needs_start[c + 1]]:
                pos += need_start[i + 1] - need_start[i]
            succ_start.append(pos)
        pairs: list[int] = []  # (resource id, holder) flattened, for a counting sort
        hold_start, hold_res = g.hold_start, g.hold_res
        for c, t in enumerate(stuck_tasks):
            for h in range(hold_start[t], hold_start[t + 1]):
                rc = rid.get(hold_res[h])
                if rc is not None:
                    pairs.append(rc)
                    pairs.append(c)
        counts = [0] * len(rid)
        for k in range(0, len(pairs), 2):
            counts[pairs[k] - s] += 1
        for count in counts:
            succ_start.append(succ_start[-1] + count)
        succ.extend([0] * (succ_start[-1] - len(succ)))
        fill = succ_start[s:-1]
        for k in range(0, len(pairs), 2):
            j = pairs[k] - s
            succ[fill[j]] = pairs[k + 1]
            fill[j] += 1
        self.rid, self.succ, self.succ_start = rid, succ, succ_start
        self.resources = [0] * len(rid)
        for r, c in rid.items():
            self.resources[c - s] = r

    def report(self) -> list[Deadlock]:
        s = len(self.tasks)
        succ, succ_start = self.succ, self.succ_start
        total = len(succ_start) - 1
        # Connected groups: a task joins what it waits on, a blocking resource its holders.
        parent = list(range(total))
        for node in range(total):
            for k in range(succ_start[node], succ_start[node + 1]):
                a, b = node, succ[k]
                while parent[a] != a:
                    parent[a] = parent[parent[a]]
                    a = parent[a]
                while parent[b] != b:
                    parent[b] = parent[parent[b]]
                    b = parent[b]
                if a != b:
                    if a < b:
                        parent[b] = a
                    else:
                        parent[a] = b
        for c in range(total):  # parent[x] <= x throughout: one pass in order finds every root
            parent[c] = parent[parent[c]]
        groups: dict[int, list[int]] = {}
        for c in range(s):
            groups.setdefault(parent[c], []).append(c)
        cycles = [self._cycle(members[0]) for members in groups.values()]
        # A group that its cycle covers is all on the cycle; only the others need Tarjan.
        on_cycle = bytearray(s)
        rest: list[int] = []
        for members, cycle in zip(groups.values(), cycles, strict=True):
            if len(cycle) == len(members):
                for c in members:
                    on_cycle[c] = 1
            else:
                rest.extend(members)
        if rest:
            self._on_cycles(rest, on_cycle)
        return [
            self._deadlock(members, cycle, on_cycle)
            for members, cycle in zip(groups.values(), cycles, strict=True)
        ]

    # Structure ----------------------------------------------------------------------------------------
    def _on_cycles(self, roots: list[int], out: bytearray) -> None:
        """Set ``out[c]`` for stuck tasks reachable from ``roots`` that lie in a strongly connected
        component with a cycle (iterative Tarjan, linear)."""
        succ, succ_start = self.succ, self.succ_start
        total = len(succ_start) - 1
        index = [-1] * total
        low = [0] * total
        pos = succ_start[:-1]
        on_stack = bytearray(total)
        stack: list[int] = []
        counter = 0
        for root in roots:
            if index[root] >= 0:
                continue
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack[root] = 1
            work = [root]
            while work:
                node = work[-1]
                k = pos[node]
                if k < succ_start[node + 1]:
                    pos[node] = k + 1
                    nxt = succ[k]
                    if index[nxt] < 0:
                        index[nxt] = low[nxt] = counter
                        counter += 1
                        stack.append(nxt)
                        on_stack[nxt] = 1
                        work.append(nxt)
                    elif on_stack[nxt] and index[nxt] < low[node]:
                        low[node] = index[nxt]
                    continue
                work.pop()
                if work and low[node] < low[work[-1]]:
                    low[work[-1]] = low[node]
                if low[node] == index[node]:
                    member = stack.pop()
                    on_stack[member] = 0
                    if member != node:
                        while True:
                            if member < len(out):
                                out[member] = 1
                            if member == node:
                                break
                            member = stack.pop()
                            on_stack[member] = 0
                    elif node in succ[succ_start[node] : succ_start[node + 1]]:  # waits on itself
                        out[node] = 1

    def _chosen(self, c: int) -> int:
        """The unmet need that proves task ``c`` stuck: one without an assumption when there is one."""
        needs = self.unmet_needs[self.needs_start[c] : self.needs_start[c + 1]]
        for i in needs:
            if self.g.need_note[i] is None:
                return i
        return needs[0]

    def _cycle(self, start: int) -> list[tuple[int, int, int]]:
        """Steps (task, need, resource) of a cycle reached from task ``start`` by chosen needs.

        Every stuck task has an unmet need, and everything it waits on is stuck, so the walk
        can only end by coming back to a task it has seen."""
        g, n, cid, rid = self.g, self.n, self.cid, self.rid
        need_alts, need_start, succ, succ_start = g.need_alts, g.need_start, self.succ, self.succ_start
        seen: dict[int, int] = {}
        walk: list[int] = []
        c = start
        while c not in seen:
            seen[c] = len(walk)
            walk.append(c)
            r = need_alts[need_start[self._chosen(c)]]
            c = cid[r] if r < n else succ[succ_start[rid[r]]]
        loop = walk[seen[c] :]
        first = loop.index(min(loop))
        loop = loop[first:] + loop[:first]  # from its first task in process order: stable output
        steps = []
        for c in loop:
            i = self._chosen(c)
            steps.append((c, i, need_alts[need_start[i]]))
        return steps

    def _deadlock(
        self, members: list[int], cycle: list[tuple[int, int, int]], on_cycle: bytearray
    ) -> Deadlock:
        process, tasks = self.g.task_process, self.tasks
        steps = tuple(
            [CycleStep(process[tasks[c]], self.ids[c], self._brief(c), self._edge(i, r)) for c, i, r in cycle]
        )
        return Deadlock(
            epoch=self.cut.epoch,
            cut_status=self.cut.status,
            tasks=tuple([self._task(c, bool(on_cycle[c])) for c in members]),
            cycle=steps,
            rests_on=self._rests_on(members),
        )

    # Words ------------------------------------------------------------------------------------------
    def _brief(self, c: int) -> str:
        info = self.g.task_info[self.tasks[c]] or {}
        what = str(info.get("method") or ("app task" if info.get("kind") == "app" else "task"))
        held = info.get("held_locks")
        if held:
            what += ", holds lock " + ", ".join(str(h) for h in held)
        return what

    def _pool_words(self, r: int) -> str:
        j = r - self.n
        return (
            f"{self.g.res_process[j]}'s pool {self.g.res_name[j]} "
            f"({self.held[j]} of {self.g.res_capacity[j]} workers busy)"
        )

    def _edge(self, i: int, r: int) -> str:
        g = self.g
        kind = g.need_kind[i]
        ref = g.need_ref[i]
        if kind == NEED_CALL:
            return f"calls {_method(ref)} (call {_call_id(ref)}), handled by"
        if kind == NEED_WORKER:
            call = f"calls {_method(ref)} (call {_call_id(ref)})"
            return f"{call}, queued for a worker of {self._pool_words(r)} held by"
        if kind == NEED_LOCK:
            return f"waits for lock {ref} held by"
        what = g.res_name[r - self.n] if r >= self.n else self.labels[self.cid[r]]
        return f"waits for {what} held by"

    def _waited_on(self, i: int) -> list[int]:
        """Compact ids of the stuck tasks an unmet need waits on (handlers, holders)."""
        g, n = self.g, self.n
        k = g.need_start[i]
        if k + 1 == g.need_start[i + 1]:
            r = g.need_alts[k]
            if r < n:
                return [self.cid[r]]
            rc = self.rid[r]
            return self.succ[self.succ_start[rc] : self.succ_start[rc + 1]]
        out: list[int] = []
        for k in range(g.need_start[i], g.need_start[i + 1]):
            r = g.need_alts[k]
            if r < n:
                out.append(self.cid[r])
            else:
                rc = self.rid[r]
                out.extend(self.succ[self.succ_start[rc] : self.succ_start[rc + 1]])
        return out

    def _wait(self, i: int) -> Wait:
        g, n = self.g, self.n
        kind = g.need_kind[i]
        ref = g.need_ref[i]
        waited = self._waited_on(i)
        process, tasks, ids, labels = g.task_process, self.tasks, self.ids, self.labels
        if len(waited) == 1:
            c = waited[0]
            on: tuple[tuple[str, int], ...] = ((process[tasks[c]], ids[c]),)
            names = labels[c]
        else:
            on = tuple([(process[tasks[c]], ids[c]) for c in waited])
            names = ", ".join([labels[c] for c in waited[:8]])
            if len(waited) > 8:
                names += f" and {len(waited) - 8} more"
        if kind == NEED_CALL:
            method, call_id = _method(ref), _call_id(ref)
            text = f"the answer to its call {method} (call {call_id}), being handled by {names}"
            return Wait("call", text, method, call_id, on[0][0], "", (), on, None)
        if kind == NEED_WORKER:
            alts = g.need_alts[g.need_start[i] : g.need_start[i + 1]]
            note = g.need_note[i]
            target = note.target if note is not None else str(ref.get("target", ""))
            where = " or ".join(self._pool_words(r) for r in alts)
            method, call_id = _method(ref), _call_id(ref)
            text = (
                f"a worker of {where}, held by {names}, for its call {method} (call {call_id}) to {target}, "
                f"which has not reached a handler"
            )
            pools = tuple(g.res_name[r - n] for r in alts)
            assumption = self._queued_words(note, alts) if note is not None else None
            return Wait("worker", text, method, call_id, target, "", pools, on, assumption)
        if kind == NEED_LOCK:
            where = g.task_process[g.need_task[i]]
            return Wait(
                "lock", f"lock {ref} at {where}, held by {names}", "", None, where, str(ref), (), on, None
            )
        alts = g.need_alts[g.need_start[i] : g.need_start[i + 1]]
        return Wait("other", f"resources {', '.join(str(r) for r in alts)}, held by {names}", waits_on=on)

    def _queued_words(self, note: QueuedCall, alts: Sequence[int]) -> str:
        span = max(self.cut.finished - self.cut.started, 0.0)
        within = f" ({span:.1f} s)" if span else ""
        where = " or ".join(self._pool_words(r) for r in alts)
        text = (
            f"call {note.method or '?'} #{note.call_id} from {note.caller} to {note.target} was not "
            f"accounted for within the snapshot's timeout{within}: no handler, request or response "
            f"record; it is taken to be queued for a worker of {where}"
        )
        if note.no_flush:
            text += (
                " (the collector ran no flush round with both ends of the call, so a late record of it "
                "cannot be ruled out)"
            )
        return text

    def _task(self, c: int, on_cycle: bool) -> DeadlockedTask:
        t = self.tasks[c]
        info = self.g.task_info[t] or {}
        process = self.g.task_process[t]
        service = self.services.get(process)
        if service is None:
            entry = self.cut.states.get(process)
            found = entry.get("service") if isinstance(entry, Mapping) else None
            service = self.services[process] = str(found) if found else process.split(":", 1)[0]
        held = info.get("held_locks")
        return DeadlockedTask(
            process,
            service,
            self.ids[c],
            str(info.get("kind", "")),
            str(info.get("method", "")),
            str(info.get("pool", "")),
            str(info.get("caller", "")),
            int(info.get("call_id", 0) or 0),
            str(info.get("trace_id", "") or ""),
            str(info.get("span_id", "") or ""),
            tuple([str(h) for h in held]) if held else (),
            tuple([self._wait(i) for i in self.unmet_needs[self.needs_start[c] : self.needs_start[c + 1]]]),
            on_cycle,
        )

    def _rests_on(self, members: list[int]) -> tuple[str, ...]:
        g, n = self.g, self.n
        out: dict[str, None] = {}
        pools: dict[int, None] = {}
        for c in members:
            i = self._chosen(c)
            note = g.need_note[i]
            if note is not None:
                alts = g.need_alts[g.need_start[i] : g.need_start[i + 1]]
                out[self._queued_words(note, alts)] = None
                pools.update(dict.fromkeys(alts))
            info = g.task_info[self.tasks[c]]
            unmet = self.needs_start[c + 1] - self.needs_start[c]
            if info is not None and len(info.get("outbound") or ()) + bool(info.get("waiting_lock")) > unmet:
                waits = _waits_at_cut(info)
                if waits > unmet:
                    out[
                        f"{self.labels[c]} waits on {waits} things at once and not all of them are stuck; "
                        f"it is taken to need all of them (as asyncio.gather does)"
                    ] = None
        for r in pools:
            j = r - n
            rc = self.rid[r]
            busy = self.succ_start[rc + 1] - self.succ_start[rc]
            out[
                f"{g.res_process[j]}'s worker pool {g.res_name[j]} has {g.res_capacity[j]} workers, as its "
                f"agent reported (max_workers given to the server interceptor, or read from the server's "
                f"executor); {busy} of them run tasks of this deadlock"
            ] = None
        if not self.cut.complete:
            reasons = "; ".join(self.cut.reasons[:3]) or "no reason given"
            out[
                f"the cut is INCOMPLETE ({reasons}); this deadlock involves only processes that reported, "
                f"whose local snapshots are consistent with one another"
            ] = None
        return tuple(out)


def _waits_at_cut(info: Mapping[str, Any]) -> int:
    """How many things a task waited on at the cut: blocking calls and a lock."""
    calls = info.get("outbound") or ()
    return sum(1 for c in calls if c.get("blocking", True)) + (1 if info.get("waiting_lock") else 0)


def _method(call: Mapping[str, Any]) -> str:
    return str(call.get("method", ""))


def _call_id(call: Mapping[str, Any]) -> int:
    return int(call.get("call_id", 0))


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
        lines.append("  cycle: " + deadlock.chain(limit=_SHOWN_STEPS))
        lines.append("  tasks (* on a cycle of waits, - stuck behind one):")
        shown = deadlock.tasks[:_SHOWN_TASKS]
        for task in shown:
            where = f"{task.method or task.kind + ' task'}"
            if task.kind == "server" and task.pool:
                where += f" (handler in {task.pool})"
            marker = "*" if task.on_cycle else "-"
            lines.append(f"    {marker} {task.label}  service {task.service}  {where}")
            if task.caller:
                lines.append(f"        called by {task.caller} (call {task.call_id})")
            lines.append(f"        holds: {', '.join(task.holds) or 'nothing'}")
            for wait in task.waits_for:
                lines.append(f"        waits for: {wait.text}")
            if task.trace_id:
                lines.append(f"        trace {task.trace_id} span {task.span_id or '-'}")
        if len(deadlock.tasks) > len(shown):
            lines.append(f"    ... and {len(deadlock.tasks) - len(shown)} more tasks (see the JSON report)")
        if deadlock.rests_on:
            lines.append("  rests on:")
            lines.extend(f"    - {item}" for item in deadlock.rests_on)
        else:
            lines.append("  rests on: nothing but the cut")
    return "\n".join(lines)
