"""Writing the deadlock reports of one reduced wait-for graph: groups, cycles and words.

Linear in the stuck part of the graph, so that a deadlock of 10^5 tasks
costs a few flat lists of ints rather than objects per task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress

from cutwatch.core import (
    NEED_CALL,
    NEED_LOCK,
    NEED_QUEUED,
    NEED_WORKER,
    Cut,
    OutboundCall,
    QueuedCall,
    Reduction,
    TaskView,
    WaitForGraph,
)
from cutwatch.predicates._deadlock_records import CycleStep, Deadlock, DeadlockedTask, Wait, lock_words

__all__ = ["Reporter"]


class Reporter:
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
            tid = info.task_id if info is not None else t
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
        self._ends: dict[int, float] = {}
        """When each unmet need ends by itself (seconds from the cut), for the needs that do."""

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
        records = tuple([self._task(c, bool(on_cycle[c])) for c in members])  # fills self._ends
        steps = tuple(
            [CycleStep(process[tasks[c]], self.ids[c], self._brief(c), self._edge(i, r)) for c, i, r in cycle]
        )
        ends = self._ends
        known = [left for _, i, _ in cycle if (left := ends.get(i)) is not None]
        return Deadlock(
            epoch=self.cut.epoch,
            cut_status=self.cut.status,
            tasks=records,
            cycle=steps,
            rests_on=self._rests_on(members),
            breaks_in=min(known) if known else None,
        )

    def _times_out_in(self, i: int) -> float | None:
        """When need ``i`` ends by itself, in seconds from the waiting task's local snapshot."""
        g = self.g
        kind = g.need_kind[i]
        info = g.task_info[g.need_task[i]]
        left: float | None = None
        if kind in (NEED_CALL, NEED_WORKER):
            left = _call(g.need_ref[i]).time_left
        elif kind == NEED_LOCK and info is not None:
            left = info.lock_time_left
        # (A queued call's wait ends when its caller's does: the caller's wait carries the deadline.)
        if info is not None and info.ends_at_deadline and info.time_left is not None:
            left = info.time_left if left is None else min(left, info.time_left)
        return left

    # Words ------------------------------------------------------------------------------------------
    def _brief(self, c: int) -> str:
        info = self.g.task_info[self.tasks[c]]
        if info is None:
            return "task"
        what = info.method or ("app task" if info.kind == "app" else "task")
        if info.queued:
            what += ", queued"
        held = info.held_locks
        if held:
            what += ", holds " + (lock_words(held[0]) if len(held) == 1 else ", ".join(map(lock_words, held)))
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
            return f"waits for {lock_words(str(ref))} held by"
        if kind == NEED_QUEUED:
            return f"waits in the server's queue for a worker of {self._pool_words(r)} held by"
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
        left = self._times_out_in(i)
        if left is None:
            ends = NO_DEADLINE
        else:
            self._ends[i] = left
            ends = _deadline_words(left)
        if kind == NEED_CALL:
            method, call_id = _method(ref), _call_id(ref)
            handler = "queued at" if self._all_queued(waited) else "being handled by"
            text = f"the answer to its call {method} (call {call_id}), {handler} {names}{ends}"
            return Wait("call", text, method, call_id, on[0][0], "", (), on, None, left)
        if kind == NEED_WORKER:
            alts = g.need_alts[g.need_start[i] : g.need_start[i + 1]]
            note = g.need_note[i]
            target = note.target if note is not None else _call(ref).target
            where = " or ".join(self._pool_words(r) for r in alts)
            method, call_id = _method(ref), _call_id(ref)
            text = (
                f"a worker of {where}, held by {names}, for its call {method} (call {call_id}) to {target}, "
                f"which has not reached a handler{ends}"
            )
            pools = tuple(g.res_name[r - n] for r in alts)
            assumption = self._queued_words(note, alts) if note is not None else None
            return Wait("worker", text, method, call_id, target, "", pools, on, assumption, left)
        if kind == NEED_QUEUED:
            r = g.need_alts[g.need_start[i]]
            info = g.task_info[g.need_task[i]]
            where = g.task_process[g.need_task[i]]
            text = (
                f"a worker of {self._pool_words(r)}, held by {names}: its call arrived at {where} and waits "
                f"in the server's queue"
            )
            queued_method = info.method if info is not None else ""
            queued_id = info.call_id if info is not None else None
            return Wait("queued", text, queued_method, queued_id, where, "", (g.res_name[r - n],), on, None)
        if kind == NEED_LOCK:
            where = g.task_process[g.need_task[i]]
            if left is not None:
                ends = _deadline_words(left, "its wait times out")
            text = f"{lock_words(str(ref))} at {where}, held by {names}{ends}"
            return Wait("lock", text, "", None, where, str(ref), (), on, None, left)
        alts = g.need_alts[g.need_start[i] : g.need_start[i + 1]]
        return Wait("other", f"resources {', '.join(str(r) for r in alts)}, held by {names}", waits_on=on)

    def _all_queued(self, waited: list[int]) -> bool:
        """Whether the tasks a call waits on (compact ids) are all queued calls."""
        task_info, tasks = self.g.task_info, self.tasks
        for c in waited:
            info = task_info[tasks[c]]
            if info is None or not info.queued:
                return False
        return True

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
        info = self.g.task_info[t] or TaskView(t, "", "", "", 0, "", "", (), None, ())
        process = self.g.task_process[t]
        service = self.services.get(process)
        if service is None:
            entry = self.cut.states.get(process)
            found = entry.get("service") if isinstance(entry, Mapping) else None
            service = self.services[process] = str(found) if found else process.split(":", 1)[0]
        return DeadlockedTask(
            process,
            service,
            self.ids[c],
            info.kind,
            info.method,
            info.pool,
            info.caller,
            info.call_id,
            info.trace_id,
            info.span_id,
            info.held_locks,
            tuple([self._wait(i) for i in self.unmet_needs[self.needs_start[c] : self.needs_start[c + 1]]]),
            on_cycle,
            info.queued,
            info.time_left,
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
            if info is not None and len(info.outbound) + bool(info.waiting_lock) > unmet:
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


NO_DEADLINE = " (no deadline)"


def _deadline_words(left: float, what: str = "its deadline passes") -> str:
    return f" ({what} about {left:.1f} s after the cut)"


def _waits_at_cut(info: TaskView) -> int:
    """How many things a task waited on at the cut: blocking calls and a lock."""
    return sum(1 for call in info.outbound if call.blocking) + (1 if info.waiting_lock else 0)


def _call(ref: OutboundCall | str | None) -> OutboundCall:
    """The outbound call a call or worker need refers to."""
    assert isinstance(ref, OutboundCall), ref
    return ref


def _method(ref: OutboundCall | str | None) -> str:
    return _call(ref).method


def _call_id(ref: OutboundCall | str | None) -> int:
    return _call(ref).call_id
