"""Writing the deadlock reports of one reduced wait-for graph: groups, cycles and words.

Linear in the stuck part of the graph, so that a deadlock of 10^5 tasks
costs a few flat lists of ints rather than objects per task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import add, attrgetter, gt, is_, is_not, sub

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
from cutwatch.predicates._deadlock_records import (
    KEPT_STEPS,
    KEPT_TASKS,
    CycleStep,
    Deadlock,
    DeadlockedTask,
    Wait,
    lock_words,
)

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
        self._held: list[int] | None = None
        self.services: dict[str, str] = {}
        self.tasks = stuck_tasks
        s = len(stuck_tasks)
        cid = dict(zip(stuck_tasks, range(s), strict=True))
        self.cid = cid

        # Unmet needs of each stuck task: unmet_needs[needs_start[c]:needs_start[c + 1]].
        need_task, need_start, need_alts, need_note = g.need_task, g.need_start, g.need_alts, g.need_note
        unmet = list(compress(range(len(reduction.unmet)), reduction.unmet))
        owners = [cid[t] for t in map(need_task.__getitem__, unmet)]
        if any(map(int.__gt__, owners, owners[1:])):  # in task order already for graphs built from cuts
            order = sorted(range(len(unmet)), key=owners.__getitem__)
            unmet = [unmet[k] for k in order]
            owners = [owners[k] for k in order]
        self.unmet_needs = unmet
        if len(owners) == s:  # one unmet need per task, the usual case
            needs_start = list(range(s + 1))
            chosen = unmet[:]
        else:
            counts = [0] * s
            for c in owners:
                counts[c] += 1
            needs_start = list(accumulate(counts, initial=0))
            chosen = [unmet[k] for k in needs_start[:-1]]
            for c in compress(range(s), map(int.__gt__, counts, [1] * s)):
                for i in unmet[needs_start[c] : needs_start[c + 1]]:
                    if need_note[i] is None:
                        chosen[c] = i
                        break
        self.needs_start = needs_start
        self.chosen = chosen
        """The unmet need that proves each task stuck: one without an assumption when there is one."""

        # Blocking resources get ids s, s+1, ...; edges: task -> what it waits on -> stuck holders.
        # (Passes of map/compress over lists of ints: a deadlock of 10^5 tasks goes through them all.)
        firsts = list(map(need_start.__getitem__, unmet))
        widths = list(map(sub, map(need_start.__getitem__, map(_NEXT, unmet)), firsts))
        if widths.count(1) == len(widths):  # one alternative per need, the usual case
            alts = list(map(need_alts.__getitem__, firsts))
        else:
            alts = list(
                chain.from_iterable(map(need_alts.__getitem__, map(slice, firsts, map(add, firsts, widths))))
            )
        blocking = dict.fromkeys([r for r in alts if r >= n])
        rid = dict(zip(blocking, range(s, s + len(blocking)), strict=True))
        succ = [cid[r] if r < n else rid[r] for r in alts]
        # succ_start for tasks: every need's alternatives in order, so per task it is the sum.
        per_need = list(accumulate(widths, initial=0))
        succ_start = [per_need[k] for k in needs_start]
        # Each blocking resource's stuck holders, in task order: its edges, after the tasks'.
        hold_start, hold_res = g.hold_start, g.hold_res
        begins = list(map(hold_start.__getitem__, stuck_tasks))
        ends = list(map(hold_start.__getitem__, map(_NEXT, stuck_tasks)))
        held = list(map(rid.get, map(hold_res.__getitem__, chain.from_iterable(map(range, begins, ends)))))
        holder = chain.from_iterable(map(repeat, range(s), map(sub, ends, begins)))
        blocked = list(map(is_not, held, repeat(None)))
        held_ids: list[int] = list(compress(held, blocked))  # type: ignore[arg-type]
        holders = list(compress(holder, blocked))
        if any(map(gt, held_ids, held_ids[1:])):  # by resource, stable: holders stay in task order
            order = sorted(range(len(held_ids)), key=held_ids.__getitem__)
            held_ids = list(map(held_ids.__getitem__, order))
            holders = list(map(holders.__getitem__, order))
        succ.extend(holders)
        per_resource = Counter(held_ids)
        succ_start.extend(
            accumulate(map(per_resource.__getitem__, range(s, s + len(rid))), initial=succ_start[-1])
        )
        del succ_start[s]  # the resources' first start repeats the tasks' end
        self.rid, self.succ, self.succ_start = rid, succ, succ_start

    def report(self) -> list[Deadlock]:
        s = len(self.tasks)
        if not s:
            return []
        # Each stuck task's next task along its chosen need: the first alternative, or the first
        # stuck holder of a resource.
        g, n, cid, rid, succ, succ_start = self.g, self.n, self.cid, self.rid, self.succ, self.succ_start
        first_alts = map(g.need_alts.__getitem__, map(g.need_start.__getitem__, self.chosen))
        self._next = [cid[r] if r < n else succ[succ_start[rid[r]]] for r in first_alts]
        walked = bytearray(s)
        first = self._cycle(0, walked)
        if len(first) == s:  # a cycle through every stuck task: they are all one group, all on it
            groups = {0: list(range(s))}
            parent = [0] * s
        else:
            parent = self._roots()
            groups = {}
            for c in range(s):
                groups.setdefault(parent[c], []).append(c)
        # The tasks whose part in ``rests_on`` needs a look: a proof by assumption, several waits.
        self._noted = _by_group(self._with_assumption(), parent, len(groups))
        self._several = _by_group(self._several_waits(), parent, len(groups))
        # Task 0 is the first member of the first group: its walk is that group's cycle.
        cycles = [first, *[self._cycle(members[0], walked) for members in list(groups.values())[1:]]]
        # A group that its cycle covers is all on the cycle; only the others need Tarjan.
        on_cycle = bytearray(s)
        rest: list[int] = []
        for members, cycle in zip(groups.values(), cycles, strict=True):
            if len(cycle) != len(members):
                rest.extend(members)
        if rest:
            self._on_cycles(rest, on_cycle)
        return [
            self._deadlock(members, cycle, on_cycle, len(cycle) == len(members), k)
            for k, (members, cycle) in enumerate(zip(groups.values(), cycles, strict=True))
        ]

    def _roots(self) -> list[int]:
        """Each node's group, as the least node of it: a task joins what it waits on, a blocking
        resource its holders (union-find with path halving)."""
        succ, succ_start = self.succ, self.succ_start
        total = len(succ_start) - 1
        parent = list(range(total))
        sources = chain.from_iterable(map(repeat, range(total), map(sub, succ_start[1:], succ_start)))
        for a, b in zip(sources, succ, strict=True):
            while (up := parent[a]) != a:
                parent[a] = up = parent[up]
                a = up
            while (up := parent[b]) != b:
                parent[b] = up = parent[up]
                b = up
            if a != b:
                if a < b:
                    parent[b] = a
                else:
                    parent[a] = b
        for c in range(total):  # parent[x] <= x throughout: one pass in order finds every root
            parent[c] = parent[parent[c]]
        return parent

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

    def _with_assumption(self) -> list[int]:
        """Stuck tasks (compact ids, in order) whose chosen need rests on a queued-call assumption."""
        note = self.g.need_note
        return list(
            compress(range(len(self.tasks)), map(is_not, map(note.__getitem__, self.chosen), repeat(None)))
        )

    def _several_waits(self) -> list[int]:
        """Stuck tasks (compact ids, in order) that may have waited on more things than stay unmet."""
        infos = list(map(self.g.task_info.__getitem__, self.tasks))
        starts = self.needs_start
        if any(map(is_, infos, repeat(None))):
            candidates: Iterable[int] = [c for c, info in enumerate(infos) if info is not None]
        else:  # more than one wait needs an outbound call (every stuck task has an unmet need)
            candidates = compress(range(len(infos)), map(_OUTBOUND, infos))
        out: list[int] = []
        for c in candidates:
            info = infos[c]
            assert info is not None
            if len(info.outbound) + bool(info.waiting_lock) > starts[c + 1] - starts[c]:
                out.append(c)
        return out

    def _cycle(self, start: int, walked: bytearray) -> list[int]:
        """The stuck tasks (compact ids) of a cycle reached from task ``start`` by chosen needs, from its
        first task in process order; step ``c`` waits through need ``chosen[c]`` on its first alternative.

        Every stuck task has an unmet need, and everything it waits on is stuck, so the walk
        can only end by coming back to a task it has seen."""
        nxt = self._next
        walk: list[int] = []
        c = start
        while not walked[c]:  # groups are disjoint: one mark per task serves every group's walk
            walked[c] = 1
            walk.append(c)
            c = nxt[c]
        loop = walk[walk.index(c) :]
        first = loop.index(min(loop))
        return loop[first:] + loop[:first]  # from its first task in process order: stable output

    def _step(self, c: int) -> CycleStep:
        i = self.chosen[c]
        r = self.g.need_alts[self.g.need_start[i]]
        return CycleStep(self.g.task_process[self.tasks[c]], self._id(c), self._brief(c), self._edge(i, r))

    def _deadlock(
        self, members: list[int], cycle: list[int], on_cycle: bytearray, covered: bool, group: int
    ) -> Deadlock:
        """The report of one group; ``covered``: its cycle goes through all of its tasks.

        Records, words and steps are made only for what the report keeps (:data:`KEPT_TASKS` tasks,
        :data:`KEPT_STEPS` steps); counts, processes, ``rests_on`` and ``breaks_in`` are linear passes
        over the whole group."""
        process, tasks = self.g.task_process, self.tasks
        left_out = max(len(members) - KEPT_TASKS, 0)
        if not left_out:
            kept = members
        elif covered:
            kept = members[:KEPT_TASKS]
        else:  # those on a cycle first, as the collector stores them
            kept = [c for c in members if on_cycle[c]][:KEPT_TASKS]
            if len(kept) < KEPT_TASKS:
                kept += [c for c in members if not on_cycle[c]][: KEPT_TASKS - len(kept)]
        records = tuple([self._task(c, covered or bool(on_cycle[c])) for c in kept])
        steps_left_out = max(len(cycle) - KEPT_STEPS, 0)
        if steps_left_out:
            steps = tuple([self._step(c) for c in cycle[: KEPT_STEPS - 2]])
            end = tuple([self._step(c) for c in cycle[-2:]])
        else:
            steps, end = tuple([self._step(c) for c in cycle]), ()
        return Deadlock(
            epoch=self.cut.epoch,
            cut_status=self.cut.status,
            tasks=records,
            cycle=steps,
            rests_on=self._rests_on(members, group),
            breaks_in=self._breaks_in(cycle),
            tasks_left_out=left_out,
            cycle_end=end,
            steps_left_out=steps_left_out,
            involved=tuple(sorted(set(map(process.__getitem__, map(tasks.__getitem__, members))))),
        )

    def _breaks_in(self, cycle: list[int]) -> float | None:
        """The earliest time a wait on the cycle ends by itself (None: none does)."""
        g, chosen, tasks = self.g, self.chosen, self.tasks
        need_kind, need_ref, task_info = g.need_kind, g.need_ref, g.task_info
        known: list[float] = []
        for c in cycle:
            i = chosen[c]
            info = task_info[tasks[c]]
            kind = need_kind[i]
            if kind in (NEED_CALL, NEED_WORKER):
                left = _call(need_ref[i]).time_left
            elif kind == NEED_LOCK and info is not None:
                left = info.lock_time_left
            else:
                left = None
            if left is not None:
                known.append(left)
            if info is not None and info.ends_at_deadline and info.time_left is not None:
                known.append(info.time_left)
        return min(known) if known else None

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

    def _held_count(self, j: int) -> int:
        """Units of lock/pool resource ``j`` (index ``r - n``) held at the cut."""
        if self._held is None:
            counts = Counter(self.g.hold_res)
            n = self.n
            self._held = [counts.get(n + k, 0) for k in range(len(self.g.res_capacity))]
        return self._held[j]

    def _id(self, c: int) -> int:
        info = self.g.task_info[self.tasks[c]]
        return info.task_id if info is not None else self.tasks[c]

    def _label(self, c: int) -> str:
        return f"{self.g.task_process[self.tasks[c]]}#{self._id(c)}"

    def _pool_words(self, r: int) -> str:
        j = r - self.n
        return (
            f"{self.g.res_process[j]}'s pool {self.g.res_name[j]} "
            f"({self._held_count(j)} of {self.g.res_capacity[j]} workers busy)"
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
        what = g.res_name[r - self.n] if r >= self.n else self._label(self.cid[r])
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
        process, tasks, label, task_id = g.task_process, self.tasks, self._label, self._id
        if len(waited) == 1:
            c = waited[0]
            on: tuple[tuple[str, int], ...] = ((process[tasks[c]], task_id(c)),)
            names = label(c)
        else:
            on = tuple([(process[tasks[c]], task_id(c)) for c in waited])
            names = ", ".join([label(c) for c in waited[:8]])
            if len(waited) > 8:
                names += f" and {len(waited) - 8} more"
        left = self._times_out_in(i)
        ends = NO_DEADLINE if left is None else _deadline_words(left)
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
            self._id(c),
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

    def _rests_on(self, members: list[int], group: int) -> tuple[str, ...]:
        g, n = self.g, self.n
        out: dict[str, None] = {}
        pools: dict[int, None] = {}
        chosen, need_note = self.chosen, g.need_note
        noted, several = self._noted[group], self._several[group]
        for c in sorted({*noted, *several}) if several else noted:  # in process order, as members are
            i = chosen[c]
            note = need_note[i]
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
                        f"{self._label(c)} waits on {waits} things at once and not all of them are stuck; "
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
_NEXT = (1).__add__
_OUTBOUND = attrgetter("outbound")


def _by_group(tasks: list[int], parent: list[int], groups: int) -> list[list[int]]:
    """``tasks`` (compact ids, in order) split by their group, numbered as the groups' roots come."""
    if groups == 1:
        return [tasks]
    number: dict[int, int] = {}
    out: list[list[int]] = [[] for _ in range(groups)]
    for c in tasks:
        out[number.setdefault(parent[c], len(number))].append(c)
    return out


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
