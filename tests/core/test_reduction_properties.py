"""Graph reduction agrees with a brute-force definition of deadlock on small random graphs.

The definition, written naively and independently of the worklist: a task can finish iff some
sequence of completions reaches a state where it finishes; a task may finish in a state when every
one of its needs has an alternative available there (a finished task, or a resource with a free
unit once the units of finished holders are back). Deadlocked = no reachable state finishes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cutwatch.core import Cut, InTransitMessage, TaskView, build_graph, graph_from_cut, reduce_graph
from cutwatch.predicates import find_deadlocks
from cutwatch.predicates._deadlock import deadlocks_from

Graph = tuple[int, list[int], list[tuple[int, int]], list[list[int]], list[int]]
EMPTY_CUT = Cut(epoch=1, status="COMPLETE", started=0.0, finished=0.0, states={}, in_transit=(), clocks={})


def brute_force_stuck(
    n: int,
    capacities: Sequence[int],
    holdings: Sequence[tuple[int, int]],
    needs: Sequence[Sequence[int]],
    need_tasks: Sequence[int],
) -> set[int]:
    """Tasks that no sequence of completions finishes (exhaustive search over reachable states)."""

    def available(alt: int, finished: frozenset[int]) -> bool:
        if alt < n:
            return alt in finished
        busy = sum(1 for task, res in holdings if res == alt and task not in finished)
        return capacities[alt - n] - busy >= 1

    def can_finish(task: int, finished: frozenset[int]) -> bool:
        return all(
            any(available(alt, finished) for alt in alts)
            for alts, owner in zip(needs, need_tasks, strict=True)
            if owner == task
        )

    seen: set[frozenset[int]] = set()
    todo = [frozenset[int]()]
    ever: set[int] = set()
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        ever |= state
        for task in range(n):
            if task not in state and can_finish(task, state):
                todo.append(state | {task})
    return set(range(n)) - ever


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    n = draw(st.integers(1, 7))
    capacities = draw(st.lists(st.integers(1, 3), max_size=4))
    m = len(capacities)
    holdings: list[tuple[int, int]] = []
    if m:
        # Usually within capacity (a real pool); sometimes over it (a wrong capacity).
        for task in range(n):
            for res in draw(st.lists(st.integers(n, n + m - 1), max_size=2)):
                holdings.append((task, res))
    needs: list[list[int]] = []
    need_tasks: list[int] = []
    for task in range(n):
        for _ in range(draw(st.integers(0, 2))):
            alts = draw(st.lists(st.integers(0, n + m - 1), min_size=1, max_size=2, unique=True))
            needs.append(alts)
            need_tasks.append(task)
    return n, capacities, holdings, needs, need_tasks


@settings(max_examples=400)
@given(graphs())
def test_reduction_matches_brute_force(spec: Graph) -> None:
    n, capacities, holdings, needs, need_tasks = spec
    graph = build_graph(n, capacities, holdings, needs, need_tasks)
    reduction = reduce_graph(graph)
    assert set(reduction.deadlocked) == brute_force_stuck(n, capacities, holdings, needs, need_tasks)
    # Needs left unmet are exactly the needs of stuck tasks that still have no available alternative.
    for i, owner in enumerate(need_tasks):
        if not reduction.stuck[owner]:
            assert not reduction.unmet[i]
    # The reports partition the stuck tasks; each cycle is a real path of waits that closes.
    reports = deadlocks_from(graph, reduction, EMPTY_CUT)
    named = [t.task_id for d in reports for t in d.tasks]
    assert sorted(named) == reduction.deadlocked
    for deadlock in reports:
        waits = {t.task_id: {u for w in t.waits_for for _, u in w.waits_on} for t in deadlock.tasks}
        steps = [step.task_id for step in deadlock.cycle]
        assert steps and len(set(steps)) == len(steps)
        for here, there in zip(steps, steps[1:] + steps[:1], strict=True):
            assert there in waits[here]
        assert {t.task_id for t in deadlock.tasks if t.on_cycle} >= set(steps)


def test_brute_force_knows_multi_unit_resources() -> None:
    # Two tasks each hold one of 2 units and need another: stuck. With 3 units: both finish.
    assert brute_force_stuck(2, [2], [(0, 2), (1, 2)], [[2], [2]], [0, 1]) == {0, 1}
    assert brute_force_stuck(2, [3], [(0, 2), (1, 2)], [[2], [2]], [0, 1]) == set()
    # A cycle through a 2-unit resource whose other holder can finish is no deadlock.
    assert brute_force_stuck(3, [2], [(0, 3), (2, 3)], [[1], [3]], [0, 1]) == set()


# The same comparison from cuts: the builder's indexing (call ids that collide across processes,
# lock names that repeat in several processes) against a naive reading of the cut.
PROCESSES = ("p:0", "q:1", "r:2")


@st.composite
def cuts(draw: st.DrawFn) -> Cut:
    tasks: dict[str, list[dict[str, Any]]] = {p: [] for p in PROCESSES}
    pools = {p: {"server-1": draw(st.integers(1, 2))} for p in PROCESSES}
    count = draw(st.integers(1, 9))
    used: dict[str, set[int]] = {p: set() for p in PROCESSES}
    for task_id in range(count):
        process = draw(st.sampled_from(PROCESSES))
        server = draw(st.integers(0, 2)) > 0
        calls = []
        call_id = draw(st.integers(0, 4))  # 0: no call; ids repeat across processes, never within one
        if call_id and call_id not in used[process]:
            used[process].add(call_id)
            target = draw(st.sampled_from(("", *PROCESSES, *PROCESSES)))
            calls.append(
                {"call_id": call_id, "method": "/m", "target": target, "blocking": draw(st.booleans())}
            )
        tasks[process].append(
            {
                "task_id": task_id,
                "kind": "server" if server else "app",
                "method": "/m",
                "caller": draw(st.sampled_from(PROCESSES)) if server else "",
                "call_id": draw(st.integers(1, 4)) if server else 0,
                "pool": "server-1" if server else "",
                "trace_id": "",
                "span_id": "",
                "held_locks": draw(st.lists(st.sampled_from("LMN"), max_size=2, unique=True)),
                "waiting_lock": draw(st.sampled_from((None, "L", "M", "N"))),
                "outbound": calls,
            }
        )
    open_calls = [
        (p, c["call_id"], c["target"]) for p, ts in tasks.items() for t in ts for c in t["outbound"]
    ]
    unsettled = []
    in_transit = []
    for caller, call_id, target in open_calls:
        fate = draw(st.sampled_from(("queued", "queued", "failed", "request", "response", "answered")))
        if fate in ("queued", "failed"):
            unsettled.append(
                {
                    "caller": caller,
                    "call_id": call_id,
                    "method": "/m",
                    "target": target,
                    "failed": "DEADLINE_EXCEEDED" if fate == "failed" else "",
                }
            )
        elif fate == "request" and target:
            in_transit.append(InTransitMessage(caller, target, "/m", "request", call_id, 0, {}))
        elif fate == "response" and target:
            in_transit.append(InTransitMessage(target, caller, "/m", "response", call_id, 0, {}))
    return Cut(
        epoch=1,
        status="INCOMPLETE" if unsettled else "COMPLETE",
        started=0.0,
        finished=1.0,
        states={p: {"service": p.split(":")[0], "state": {}} for p in PROCESSES},
        in_transit=tuple(in_transit),
        clocks={p: {p: 1} for p in PROCESSES},
        tasks={p: tuple(TaskView.from_json(t) for t in ts) for p, ts in tasks.items()},
        unsettled=tuple(unsettled),
        pools=pools,
    )


def naive_stuck(cut: Cut) -> set[tuple[str, int]]:
    """The cut's rules read literally, evaluated by the same exhaustive search."""
    everyone = [(p, t.to_json()) for p in sorted(cut.tasks) for t in cut.tasks[p]]
    n = len(everyone)
    names = sorted({(p, name) for p, t in everyone for name in t["held_locks"]})
    pools = sorted((p, name) for p in cut.pools for name in cut.pools[p])
    resources = [*pools, *names]
    capacities = [cut.pools[p][name] for p, name in pools] + [1] * len(names)
    rid = {key: n + j for j, key in enumerate(resources)}
    holdings: list[tuple[int, int]] = []
    for k, (p, t) in enumerate(everyone):
        holdings += [(k, rid[(p, name)]) for name in t["held_locks"]]
        if t["kind"] == "server":
            holdings.append((k, rid[(p, t["pool"])]))
    needs: list[list[int]] = []
    need_tasks: list[int] = []
    requests = {(m.sender, m.call_id) for m in cut.in_transit if m.kind == "request"}
    responses = {(m.receiver, m.call_id) for m in cut.in_transit if m.kind == "response"}
    for k, (p, t) in enumerate(everyone):
        for c in t["outbound"]:
            if not c["blocking"]:
                continue
            handlers = [
                j
                for j, (_, u) in enumerate(everyone)
                if u["kind"] == "server" and u["caller"] == p and u["call_id"] == c["call_id"]
            ]
            queued = [
                u
                for u in cut.unsettled
                if u["caller"] == p and u["call_id"] == c["call_id"] and not u["failed"]
            ]
            if handlers:
                needs.append(handlers)
            elif (p, c["call_id"]) in requests or (p, c["call_id"]) in responses or not queued:
                continue
            elif queued[0]["target"]:
                needs.append([rid[(queued[0]["target"], "server-1")]])
            else:
                continue
            need_tasks.append(k)
        if t["waiting_lock"]:
            holders = [
                j for j, (q, u) in enumerate(everyone) if q == p and t["waiting_lock"] in u["held_locks"]
            ]
            if len(holders) == 1:
                needs.append([rid[(p, t["waiting_lock"])]])
                need_tasks.append(k)
    stuck = brute_force_stuck(n, capacities, holdings, needs, need_tasks)
    return {(everyone[k][0], everyone[k][1]["task_id"]) for k in stuck}


@settings(max_examples=300)
@given(cuts())
def test_find_deadlocks_matches_a_naive_reading_of_the_cut(cut: Cut) -> None:
    found = find_deadlocks(cut)
    assert {(t.process, t.task_id) for d in found for t in d.tasks} == naive_stuck(cut)
    graph = graph_from_cut(cut)
    for deadlock in found:
        assert deadlock.cycle, "every deadlock has a cycle inside"
        for step in deadlock.cycle:
            assert (step.process, step.task_id) in {(t.process, t.task_id) for t in deadlock.tasks}
        # The chain closes on its first task.
        first = deadlock.cycle[0]
        assert deadlock.chain().startswith(f"{first.process}#{first.task_id} [")
        assert deadlock.chain().endswith(f"-> {first.process}#{first.task_id}")
        assert any(t.on_cycle for t in deadlock.tasks)
        waits = {
            (t.process, t.task_id): {on for w in t.waits_for for on in w.waits_on} for t in deadlock.tasks
        }
        steps = [(step.process, step.task_id) for step in deadlock.cycle]
        for here, there in zip(steps, steps[1:] + steps[:1], strict=True):
            assert there in waits[here]
    assert sum(len(d.tasks) for d in found) == len(reduce_graph(graph).deadlocked)
