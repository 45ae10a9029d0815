"""The wait-for graph of a cut: tasks, the resources they hold and the needs that block them.

Nodes are integers. Task ``t`` (``0 <= t < n_tasks``) is one entry of
``cut.tasks``, in process order. Resource ids share one space:

- ``r < n_tasks``: the *completion* of task ``r``: a caller waiting on a
  call whose handler runs waits for that handler to finish;
- ``r >= n_tasks``: a lock (one unit, held by the task that lists it in
  ``held_locks``) or a worker pool (``capacity`` units, one held by every
  server task that runs in it; a *queued* server task, a call that reached
  its server and waits for a worker, holds none and needs one).

A *need* is one thing a task waits for: a list of alternative resources, any
one of which unblocks it (usually one; several when one call reached
several handlers, or a queued request may sit in any of its callee's
pools). A task is blocked while any of its needs is unmet. Everything is
kept in flat lists (CSR for the variable-length parts), so that building and
reducing a graph of a million tasks stays a few passes over lists of ints.

What a blocking outbound call ``c`` of a task at process ``p`` waits for:

1. a server task anywhere with ``caller == p`` and ``call_id == c``: that
   handler (its completion), running or queued. A queued task in turn needs
   a worker of its pool: its server recorded the call as it arrived, so
   this edge rests on nothing but the cut. (A queued task whose caller
   reported without the call open waits for nobody: the call was answered
   by another attempt, or given up; it needs nothing.) When the pool's
   capacity is unknown, the wait is *uncertain* (below);
2. otherwise, if the request is in transit (recorded by the callee when it
   reached a handler after the callee's cut) or the response is in transit:
   nothing. Both show the call making progress after the cut, which a
   deadlocked call cannot do;
3. otherwise, if the call is in ``cut.unsettled`` (nobody accounted for it
   before the snapshot's timeout) and did not fail: a worker of the callee's
   pool, *assumed* queued there. The need records that assumption; it is the
   only assumption a deadlock may rest on. When the callee is unknown or did
   not report, a pool's capacity is unknown, or recording stopped at the caller
   or the callee, the wait is *uncertain*: kept in ``uncertain`` and treated
   as met, so that no deadlock is ever reported that rests on an unknown;
4. otherwise the call was answered (its response is on its way): nothing.

A task waiting on a cutwatch lock waits for its holder; a lock that nobody
holds at the cut blocks nobody. Non-blocking outbound calls (futures the task
is not waiting on) create no need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cutwatch.core._events import STOPPED_REASONS
from cutwatch.core._tasks import OutboundCall, TaskView

if TYPE_CHECKING:
    from cutwatch.core._cut import Cut

__all__ = [
    "NEED_CALL",
    "NEED_LOCK",
    "NEED_OTHER",
    "NEED_QUEUED",
    "NEED_WORKER",
    "RES_LOCK",
    "RES_OTHER",
    "RES_POOL",
    "QueuedCall",
    "UncertainWait",
    "WaitForGraph",
    "build_graph",
    "graph_from_cut",
    "stopped_processes",
    "unflushed_processes",
]

NEED_CALL = 0
"""Waiting on a call whose handler runs: alternatives are handler tasks (completion resources)."""
NEED_WORKER = 1
"""Waiting on a call assumed queued for a worker: alternatives are the callee's pools."""
NEED_LOCK = 2
"""Waiting for a cutwatch lock: the alternative is the lock."""
NEED_OTHER = 3
"""A need of a synthetic graph (tests, benchmarks)."""
NEED_QUEUED = 4
"""A queued server task waits for a worker of its pool (its server says so): the alternative is the pool."""

RES_LOCK = 0
RES_POOL = 1
RES_OTHER = 2


@dataclass(frozen=True, slots=True)
class QueuedCall:
    """The assumption behind a worker need: an unsettled call taken to be queued at its callee."""

    caller: str
    call_id: int
    method: str
    target: str
    no_flush: bool
    """The collector has no flush marker from the caller or the callee: a record may have been late."""


@dataclass(frozen=True, slots=True)
class UncertainWait:
    """A wait that cannot be judged from the cut; it is treated as met (the task may proceed)."""

    task: int
    what: str
    why: str


class WaitForGraph:
    """A wait-for graph; see the module docstring for the id spaces. Immutable once built."""

    __slots__ = (
        "hold_res",
        "hold_start",
        "n_tasks",
        "need_alts",
        "need_kind",
        "need_note",
        "need_ref",
        "need_start",
        "need_task",
        "res_capacity",
        "res_kind",
        "res_name",
        "res_process",
        "task_info",
        "task_process",
        "uncertain",
    )

    def __init__(
        self,
        *,
        task_process: list[str],
        task_info: Sequence[TaskView | None],
        res_kind: list[int],
        res_process: list[str],
        res_name: list[str],
        res_capacity: list[int],
        hold_start: list[int],
        hold_res: list[int],
        need_task: list[int],
        need_start: list[int],
        need_alts: list[int],
        need_kind: list[int],
        need_ref: list[OutboundCall | str | None],
        need_note: list[QueuedCall | None],
        uncertain: list[UncertainWait],
    ) -> None:
        self.n_tasks = len(task_process)
        self.task_process = task_process
        self.task_info = task_info
        """The task's record from the cut (None in synthetic graphs)."""
        self.res_kind = res_kind
        """Kind of resource ``n_tasks + j`` at index ``j`` (likewise the next three lists)."""
        self.res_process = res_process
        self.res_name = res_name
        self.res_capacity = res_capacity
        """Units of each resource; 0 means unknown (never an alternative of a need)."""
        self.hold_start = hold_start
        """Task ``t`` holds one unit of each of ``hold_res[hold_start[t]:hold_start[t + 1]]``."""
        self.hold_res = hold_res
        self.need_task = need_task
        self.need_start = need_start
        """Need ``i`` is met by any of ``need_alts[need_start[i]:need_start[i + 1]]``."""
        self.need_alts = need_alts
        self.need_kind = need_kind
        self.need_ref = need_ref
        """The outbound call of a call or worker need; the lock name of a lock need; None for a queued
        task's need (its task says it all)."""
        self.need_note = need_note
        """What a need rests on beyond the cut itself (None: nothing)."""
        self.uncertain = uncertain

    @property
    def n_resources(self) -> int:
        """Lock and pool resources (completion resources not counted)."""
        return len(self.res_capacity)

    @property
    def n_needs(self) -> int:
        return len(self.need_task)

    def alternatives(self, need: int) -> list[int]:
        return self.need_alts[self.need_start[need] : self.need_start[need + 1]]

    def holdings(self, task: int) -> list[int]:
        return self.hold_res[self.hold_start[task] : self.hold_start[task + 1]]

    def held_counts(self) -> list[int]:
        """Units of each lock/pool resource held at the cut."""
        held = [0] * len(self.res_capacity)
        n = self.n_tasks
        for r in self.hold_res:
            held[r - n] += 1
        return held

    def size(self) -> int:
        """Tasks + resources + holdings + need alternatives: what building and reducing are linear in."""
        return self.n_tasks + len(self.res_capacity) + len(self.hold_res) + len(self.need_alts)


def build_graph(
    n_tasks: int,
    capacities: Sequence[int],
    holdings: Iterable[tuple[int, int]],
    needs: Iterable[Sequence[int]],
    need_tasks: Sequence[int],
) -> WaitForGraph:
    """A synthetic graph: ``n_tasks`` tasks, resources ``n_tasks + j`` with ``capacities[j]`` units.

    ``holdings`` lists (task, resource id) pairs, one unit each; ``needs[i]``
    the alternative resource ids (any id space) of a need of task
    ``need_tasks[i]``. For tests and benchmarks at the graph level.
    """
    if any(capacity < 1 for capacity in capacities):
        raise ValueError("every resource needs at least one unit (unknown capacities are not resources)")
    per_task: list[list[int]] = [[] for _ in range(n_tasks)]
    for task, res in holdings:
        if not n_tasks <= res < n_tasks + len(capacities):
            raise ValueError(f"task {task} cannot hold resource {res}: only locks and pools are held")
        per_task[task].append(res)
    hold_start = [0]
    hold_res: list[int] = []
    for held in per_task:
        hold_res.extend(held)
        hold_start.append(len(hold_res))
    need_start = [0]
    need_alts: list[int] = []
    for alts in needs:
        need_alts.extend(alts)
        need_start.append(len(need_alts))
    count = len(need_start) - 1
    if count != len(need_tasks):
        raise ValueError("needs and need_tasks differ in length")
    return WaitForGraph(
        task_process=[""] * n_tasks,
        task_info=[None] * n_tasks,
        res_kind=[RES_OTHER] * len(capacities),
        res_process=[""] * len(capacities),
        res_name=[f"r{j}" for j in range(len(capacities))],
        res_capacity=list(capacities),
        hold_start=hold_start,
        hold_res=hold_res,
        need_task=list(need_tasks),
        need_start=need_start,
        need_alts=need_alts,
        need_kind=[NEED_OTHER] * count,
        need_ref=[None] * count,
        need_note=[None] * count,
        uncertain=[],
    )


def stopped_processes(cut: Cut) -> set[str]:
    """Processes where recording stopped (truncated, too many epochs or calls): their records are partial."""
    out: set[str] = set()
    for reason in cut.reasons:
        for prefix in STOPPED_REASONS:
            head = prefix + " at "
            if reason.startswith(head):
                out.add(reason[len(head) :])
    return out


def unflushed_processes(cut: Cut) -> set[str] | None:
    """Processes without a flush marker; None when the flush round never ran (a process is missing)."""
    if cut.missing:
        return None
    out: set[str] = set()
    head = "no flush marker from "
    for reason in cut.reasons:
        if reason.startswith(head):
            out.update(p.strip() for p in reason[len(head) :].split(","))
    return out


def graph_from_cut(cut: Cut) -> WaitForGraph:
    """The wait-for graph of ``cut`` (a :class:`cutwatch.core.Cut`), in time linear in its size."""
    processes = sorted(cut.tasks)
    reported = set(cut.states) | set(processes)
    missing = set(cut.missing)
    pools_by_process: Mapping[str, Mapping[str, int]] = cut.pools

    task_process: list[str] = []
    task_info: list[TaskView] = []
    res_kind: list[int] = []
    res_process: list[str] = []
    res_name: list[str] = []
    res_capacity: list[int] = []
    res_ids: dict[tuple[int, str, str], int] = {}
    hold_start = [0]
    hold_res: list[int] = []
    lock_holders: dict[int, int] = {}
    """Lock resource -> number of holders (more than one: the cut contradicts itself)."""

    # Resource ids are offsets into the res_* lists until every task is counted; ``n_tasks`` is
    # added to every stored id at the end (the first pass does not know it yet).
    def resource(kind: int, process: str, name: str, capacity: int) -> int:
        key = (kind, process, name)
        rid = res_ids.get(key)
        if rid is None:
            rid = len(res_capacity)
            res_ids[key] = rid
            res_kind.append(kind)
            res_process.append(process)
            res_name.append(name)
            res_capacity.append(capacity)
            if kind == RES_POOL:
                pools_of.setdefault(process, []).append(rid)
        return rid

    pools_of: dict[str, list[int]] = {}
    """Every worker pool of a process: those it reported and any its server tasks name."""
    for process in sorted(reported):
        for name, capacity in sorted(pools_by_process.get(process, {}).items()):
            resource(RES_POOL, process, name, max(int(capacity), 0))

    # Pass 1: tasks, what they hold, and the index of handlers by (caller, call id).
    handlers: dict[tuple[str, int], int] = {}
    extra_handlers: dict[tuple[str, int], list[int]] = {}
    for process in processes:
        for task in cut.tasks[process]:
            t = len(task_process)
            task_process.append(process)
            task_info.append(task)
            if task.kind == "server":
                caller = task.caller
                if caller:
                    key = (caller, task.call_id)
                    if key in handlers:
                        extra_handlers.setdefault(key, []).append(t)
                    else:
                        handlers[key] = t
                pool = task.pool
                if pool:
                    rid = res_ids.get((RES_POOL, process, pool))
                    if rid is None:
                        rid = resource(RES_POOL, process, pool, 0)
                    if not task.queued:
                        hold_res.append(rid)
            for name in task.held_locks:
                rid = resource(RES_LOCK, process, name, 1)
                hold_res.append(rid)
                lock_holders[rid] = lock_holders.get(rid, 0) + 1
            hold_start.append(len(hold_res))
    n = len(task_process)
    if n:
        hold_res = [r + n for r in hold_res]

    requests_in_transit: set[tuple[str, int]] = set()
    responses_in_transit: set[tuple[str, int]] = set()
    for message in cut.in_transit:
        if message.kind == "request":
            requests_in_transit.add((message.sender, message.call_id))
        else:
            responses_in_transit.add((message.receiver, message.call_id))
    unsettled: dict[tuple[str, int], Mapping[str, Any]] = {}
    for entry in cut.unsettled:
        unsettled[(str(entry.get("caller", "")), int(entry.get("call_id", 0)))] = entry
    stopped = stopped_processes(cut) if unsettled else set()
    unflushed = unflushed_processes(cut) if unsettled else set()
    open_calls: set[tuple[str, int]] | None = None
    """Every outbound call open at its caller's cut (built when a queued task needs it)."""

    need_task: list[int] = []
    need_start = [0]
    need_alts: list[int] = []
    need_kind: list[int] = []
    need_ref: list[OutboundCall | str | None] = []
    need_note: list[QueuedCall | None] = []
    uncertain: list[UncertainWait] = []

    def close_need(t: int, kind: int, ref: OutboundCall | str | None, note: QueuedCall | None = None) -> None:
        """End a need of task ``t`` whose alternatives were just appended to ``need_alts``."""
        need_task.append(t)
        need_start.append(len(need_alts))
        need_kind.append(kind)
        need_ref.append(ref)
        need_note.append(note)

    # Pass 2: what each task waits for.
    for t, task in enumerate(task_info):
        process = task_process[t]
        if task.queued and task.pool:
            if open_calls is None:
                open_calls = {
                    (p, call.call_id) for p in processes for view in cut.tasks[p] for call in view.outbound
                }
            if task.caller in reported and (task.caller, task.call_id) not in open_calls:
                continue  # nobody waits for it: answered by another attempt, or given up
            rid = res_ids[(RES_POOL, process, task.pool)]
            if res_capacity[rid] <= 0:
                uncertain.append(
                    UncertainWait(
                        t,
                        f"queued call {task.method} #{task.call_id} from {task.caller}",
                        f"the worker capacity of {process}'s pool {task.pool} is unknown",
                    )
                )
                continue
            need_alts.append(rid + n)
            close_need(t, NEED_QUEUED, None)
            continue
        for call in task.outbound:
            if not call.blocking:
                continue
            call_id = call.call_id
            key = (process, call_id)
            handler = handlers.get(key)
            if handler is not None:
                need_alts.append(handler)
                more = extra_handlers.get(key)
                if more:
                    need_alts.extend(more)
                close_need(t, NEED_CALL, call)
                continue
            pending = unsettled.get(key)
            if pending is None or key in requests_in_transit or key in responses_in_transit:
                continue  # answered, or progressing after the cut
            if pending.get("failed"):
                continue  # the caller got its error and goes on
            target = str(pending.get("target") or call.target)
            what = f"call {call.method} #{call_id}"
            why = _why_uncertain(target, process, reported, missing, stopped)
            pools: list[int] = []
            if not why:
                for rid in pools_of.get(target, ()):
                    if res_capacity[rid] <= 0:
                        why = f"the worker capacity of {target}'s pool {res_name[rid]} is unknown"
                        break
                    pools.append(rid + n)
                if not pools and not why:
                    why = f"{target} reported no worker pool"
            if why:
                uncertain.append(UncertainWait(t, what, why))
                continue
            need_alts.extend(pools)
            no_flush = unflushed is None or process in unflushed or target in unflushed
            method = str(pending.get("method") or call.method)
            close_need(t, NEED_WORKER, call, QueuedCall(process, int(call_id), method, target, no_flush))
        lock = task.waiting_lock
        if lock:
            rid = res_ids.get((RES_LOCK, process, lock))
            holders = lock_holders.get(rid, 0) if rid is not None else 0
            if rid is None or holders == 0:
                continue  # nobody holds it at the cut: it is being handed over
            if holders > 1:
                uncertain.append(
                    UncertainWait(t, f"lock {lock}", f"{holders} tasks of {process} list it as held")
                )
                continue
            need_alts.append(rid + n)
            close_need(t, NEED_LOCK, lock)

    return WaitForGraph(
        task_process=task_process,
        task_info=task_info,
        res_kind=res_kind,
        res_process=res_process,
        res_name=res_name,
        res_capacity=res_capacity,
        hold_start=hold_start,
        hold_res=hold_res,
        need_task=need_task,
        need_start=need_start,
        need_alts=need_alts,
        need_kind=need_kind,
        need_ref=need_ref,
        need_note=need_note,
        uncertain=uncertain,
    )


def _why_uncertain(target: str, caller: str, reported: set[str], missing: set[str], stopped: set[str]) -> str:
    """Why a call assumed queued cannot be judged ('' when it can)."""
    if not target:
        return "its callee is not known (no answer on that channel yet)"
    if target in missing or target not in reported:
        return f"its callee {target} did not report"
    if target in stopped:
        return f"recording stopped at {target}: a record of the call may be missing"
    if caller in stopped:
        return f"recording stopped at {caller}: a record of the call may be missing"
    return ""
