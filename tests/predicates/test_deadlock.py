"""Deadlock detection on hand-built cuts: lock cycles, pool exhaustion, partial deadlocks, and
everything that must not be reported (free units, healthy handlers, uncertain waits, missing processes)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from cutwatch.core import Cut, InTransitMessage, TaskView, graph_from_cut, reduce_graph
from cutwatch.predicates import Deadlock, find_deadlocks, format_deadlocks

A, B, C = "orders:a1", "inventory:b2", "billing:c3"
SERVICES = {A: "orders", B: "inventory", C: "billing"}


def call(
    call_id: int, method: str, target: str = "", blocking: bool = True, time_left: float | None = None
) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "method": method,
        "target": target,
        "blocking": blocking,
        "time_left": time_left,
    }


def task(
    task_id: int,
    *,
    kind: str = "server",
    method: str = "",
    caller: str = "",
    call_id: int = 0,
    pool: str = "server-1",
    held: Sequence[str] = (),
    waiting: str | None = None,
    calls: Sequence[dict[str, Any]] = (),
    trace: str = "",
    span: str = "",
    queued: bool = False,
    lock_time_left: float | None = None,
) -> dict[str, Any]:
    return {
        "queued": queued,
        "lock_time_left": lock_time_left,
        "task_id": task_id,
        "kind": kind,
        "method": method,
        "caller": caller,
        "call_id": call_id,
        "pool": pool if kind == "server" else "",
        "trace_id": trace,
        "span_id": span,
        "held_locks": list(held),
        "waiting_lock": waiting,
        "outbound": list(calls),
    }


def app(task_id: int, **kwargs: Any) -> dict[str, Any]:
    return task(task_id, kind="app", **kwargs)


def unsettled(caller: str, call_id: int, method: str, target: str, failed: str = "") -> dict[str, Any]:
    return {"caller": caller, "call_id": call_id, "method": method, "target": target, "failed": failed}


def make_cut(
    tasks: Mapping[str, Sequence[dict[str, Any]]],
    *,
    pools: Mapping[str, Mapping[str, int]] | None = None,
    queued: Iterable[dict[str, Any]] = (),
    in_transit: Iterable[InTransitMessage] = (),
    missing: Sequence[str] = (),
    reasons: Sequence[str] = (),
) -> Cut:
    """A cut of the given tasks; INCOMPLETE when anything is unsettled, missing or given a reason."""
    queued = tuple(queued)
    why = list(reasons)
    if missing:
        why.insert(0, "no local snapshot from " + ", ".join(missing))
    if queued:
        shown = ", ".join(f"{u['method']} #{u['call_id']} from {u['caller']}" for u in queued)
        why.append(f"calls in flight at the cut not accounted for: {shown}")
    return Cut(
        epoch=7,
        status="INCOMPLETE" if why else "COMPLETE",
        started=100.0,
        finished=110.0,
        states={p: {"service": SERVICES[p], "state": {}} for p in tasks},
        in_transit=tuple(in_transit),
        clocks={p: {p: 1} for p in tasks},
        tasks={p: tuple(TaskView.from_json(t) for t in ts) for p, ts in tasks.items()},
        reasons=tuple(why),
        missing=tuple(missing),
        unsettled=queued,
        pools={p: dict(v) for p, v in (pools or {p: {"server-1": 4} for p in tasks}).items()},
    )


def stuck(deadlocks: Sequence[Deadlock]) -> set[tuple[str, int]]:
    return {(t.process, t.task_id) for d in deadlocks for t in d.tasks}


def json_roundtrip(deadlocks: Sequence[Deadlock]) -> list[dict[str, Any]]:
    docs = [d.to_json() for d in deadlocks]
    assert json.loads(json.dumps(docs)) == docs
    return docs


# Lock cycles -------------------------------------------------------------------------------------------
def two_process_lock_cycle() -> dict[str, list[dict[str, Any]]]:
    """orders#1 holds order:7 and calls inventory; that handler waits for stock:42, held by inventory's
    app task #5, which calls back into orders, whose handler #2 waits for order:7."""
    return {
        A: [
            task(
                1,
                method="/shop.Orders/Place",
                caller=C,
                call_id=90,
                held=["order:7"],
                calls=[call(17, "/shop.Inventory/Reserve", B)],
                trace="4bf92f3577b34da6a3ce929d0e0e4736",
                span="00f067aa0ba902b7",
            ),
            task(2, method="/shop.Orders/Confirm", caller=B, call_id=4, waiting="order:7"),
        ],
        B: [
            task(3, method="/shop.Inventory/Reserve", caller=A, call_id=17, waiting="stock:42"),
            app(5, held=["stock:42"], calls=[call(4, "/shop.Orders/Confirm", A)]),
        ],
    }


def test_two_process_lock_cycle_names_every_task_and_prints_the_chain() -> None:
    cut = make_cut(two_process_lock_cycle())
    (deadlock,) = find_deadlocks(cut)
    assert stuck([deadlock]) == {(A, 1), (A, 2), (B, 3), (B, 5)}
    assert deadlock.rests_on == ()  # a COMPLETE cut proves it alone
    assert deadlock.epoch == 7 and deadlock.cut_status == "COMPLETE"
    # The cycle starts at its first task in process order (inventory:b2 < orders:a1).
    assert deadlock.chain() == (
        "inventory:b2#3 [/shop.Inventory/Reserve]"
        " -> waits for lock stock:42 held by"
        " -> inventory:b2#5 [app task, holds lock stock:42]"
        " -> calls /shop.Orders/Confirm (call 4), handled by"
        " -> orders:a1#2 [/shop.Orders/Confirm]"
        " -> waits for lock order:7 held by"
        " -> orders:a1#1 [/shop.Orders/Place, holds lock order:7]"
        " -> calls /shop.Inventory/Reserve (call 17), handled by"
        " -> inventory:b2#3"
    )
    place = next(t for t in deadlock.tasks if t.task_id == 1)
    assert place.service == "orders" and place.method == "/shop.Orders/Place" and place.kind == "server"
    assert place.held_locks == ("order:7",) and place.holds == ("lock order:7", "a worker of pool server-1")
    assert place.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and place.span_id == "00f067aa0ba902b7"
    (wait,) = place.waits_for
    assert wait.kind == "call" and wait.call_id == 17 and wait.target == B and wait.waits_on == ((B, 3),)
    assert "being handled by inventory:b2#3" in wait.text and wait.assumption is None
    confirm = next(t for t in deadlock.tasks if t.task_id == 2)
    assert confirm.waits_for[0].kind == "lock" and confirm.waits_for[0].waits_on == ((A, 1),)
    assert all(t.on_cycle for t in deadlock.tasks)

    (doc,) = json_roundtrip([deadlock])
    assert set(doc) == {
        "epoch",
        "cut_status",
        "summary",
        "processes",
        "tasks",
        "cycle",
        "chain",
        "rests_on",
        "breaks_in",
        "permanent",
    }
    assert doc["permanent"] is True and doc["breaks_in"] is None
    assert doc["processes"] == [B, A]
    assert doc["chain"] == deadlock.chain()
    assert [(s["process"], s["task_id"]) for s in doc["cycle"]] == [(B, 3), (B, 5), (A, 2), (A, 1)]
    first = doc["tasks"][2]
    assert (
        first["task_id"] == 1
        and first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        and first["span_id"] == "00f067aa0ba902b7"
    )
    assert first["waits_for"][0]["waits_on"] == [{"process": B, "task_id": 3}]

    text = format_deadlocks([deadlock])
    assert text.startswith("Deadlock 1 of 1 (cut 7, COMPLETE): deadlock of 4 tasks in 2 processes")
    for needle in (
        "cycle: inventory:b2#3",
        "service inventory",
        "waits for: lock stock:42",
        "trace 4bf92f35",
    ):
        assert needle in text
    assert "rests on: nothing but the cut" in text


def test_three_process_lock_cycle() -> None:
    ring = [A, B, C]
    tasks: dict[str, list[dict[str, Any]]] = {p: [] for p in ring}
    for k, process in enumerate(ring):
        nxt = ring[(k + 1) % 3]
        # h_k holds L_k and calls the next process; that handler waits for L_(k+1).
        tasks[process].append(
            task(
                10 + k,
                method=f"/svc{k}/Hold",
                held=[f"L{k}"],
                calls=[call(100 + k, f"/svc{k + 1}/Take", nxt)],
            )
        )
        tasks[nxt].append(
            task(
                20 + k, method=f"/svc{k + 1}/Take", caller=process, call_id=100 + k, waiting=f"L{(k + 1) % 3}"
            )
        )
    (deadlock,) = find_deadlocks(make_cut(tasks))
    assert stuck([deadlock]) == {(A, 10), (B, 11), (C, 12), (B, 20), (C, 21), (A, 22)}
    assert len(deadlock.cycle) == 6 and deadlock.processes == (C, B, A)
    assert deadlock.chain().count("waits for lock") == 3 and deadlock.chain().count("calls /svc") == 3


def test_self_deadlock_on_a_held_lock() -> None:
    cut = make_cut({A: [app(1, held=["L"], waiting="L"), app(2)]})
    (deadlock,) = find_deadlocks(cut)
    assert stuck([deadlock]) == {(A, 1)}
    assert (
        deadlock.chain() == "orders:a1#1 [app task, holds lock L] -> waits for lock L held by -> orders:a1#1"
    )


# Worker pools ------------------------------------------------------------------------------------------
def pool_exhaustion(capacity: int = 2, extra_idle_workers: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Two handlers of orders (server-1) call inventory; inventory's handlers call back into orders.
    A client at billing waits on the first orders handler."""
    tasks: dict[str, list[dict[str, Any]]] = {
        A: [
            task(
                1,
                method="/shop.Orders/Place",
                caller=C,
                call_id=50,
                calls=[call(11, "/shop.Inventory/Reserve", B)],
            ),
            task(
                2,
                method="/shop.Orders/Place",
                caller=C,
                call_id=51,
                calls=[call(12, "/shop.Inventory/Reserve", B)],
            ),
        ],
        B: [
            task(
                3,
                method="/shop.Inventory/Reserve",
                caller=A,
                call_id=11,
                calls=[call(31, "/shop.Orders/Price", A)],
            ),
            task(
                4,
                method="/shop.Inventory/Reserve",
                caller=A,
                call_id=12,
                calls=[call(32, "/shop.Orders/Price", A)],
            ),
        ],
        C: [
            app(7, calls=[call(50, "/shop.Orders/Place", A)]),
            app(8, calls=[call(51, "/shop.Orders/Place", A)]),
        ],
    }
    tasks[A] += [task(40 + k, method="/shop.Orders/Status") for k in range(extra_idle_workers)]
    return tasks


QUEUED = (unsettled(B, 31, "/shop.Orders/Price", A), unsettled(B, 32, "/shop.Orders/Price", A))


def test_pool_exhaustion_is_found_and_says_what_it_rests_on() -> None:
    cut = make_cut(pool_exhaustion(), pools={A: {"server-1": 2}, B: {"server-1": 8}}, queued=QUEUED)
    assert cut.status == "INCOMPLETE"
    (deadlock,) = find_deadlocks(cut)
    assert stuck([deadlock]) == {(A, 1), (A, 2), (B, 3), (B, 4), (C, 7), (C, 8)}
    on_cycle = {(t.process, t.task_id) for t in deadlock.tasks if t.on_cycle}
    assert on_cycle == {(A, 1), (A, 2), (B, 3), (B, 4)}  # the clients at billing are stuck behind it
    chain = deadlock.chain()
    assert "queued for a worker of orders:a1's pool server-1 (2 of 2 workers busy) held by" in chain
    reserve = next(t for t in deadlock.tasks if t.task_id == 3)
    (wait,) = reserve.waits_for
    assert wait.kind == "worker" and wait.target == A and wait.pools == ("server-1",)
    assert set(wait.waits_on) == {(A, 1), (A, 2)}
    assert wait.assumption is not None and "taken to be queued" in wait.assumption
    rests = "\n".join(deadlock.rests_on)
    assert "call /shop.Orders/Price #31 from inventory:b2 to orders:a1 was not accounted for" in rests
    assert "(10.0 s)" in rests
    assert "taken to be queued for a worker of orders:a1's pool server-1 (2 of 2 workers busy)" in rests
    assert "worker pool server-1 has 2 workers" in rests and "2 of them run tasks of this deadlock" in rests
    assert "the cut is INCOMPLETE" in rests
    assert "flush" not in rests  # every process reported and flushed: no late record is possible
    text = format_deadlocks([deadlock])
    assert "rests on:" in text and "- call /shop.Orders/Price #31" in text
    json_roundtrip([deadlock])


def test_pool_exhaustion_in_a_multi_unit_pool() -> None:
    # Three workers, all busy: two on the cycle, the third waits on a lock one of them holds.
    tasks = pool_exhaustion()
    tasks[A][0]["held_locks"] = ["cart:1"]
    tasks[A].append(task(9, method="/shop.Orders/Cancel", waiting="cart:1"))
    cut = make_cut(tasks, pools={A: {"server-1": 3}, B: {"server-1": 8}}, queued=QUEUED)
    (deadlock,) = find_deadlocks(cut)
    assert (A, 9) in stuck([deadlock])
    assert "3 of 3 workers busy" in deadlock.chain() or any(
        "3 of 3 workers busy" in w.text for t in deadlock.tasks for w in t.waits_for
    )


def test_a_free_unit_means_no_deadlock() -> None:
    # The same calls, but the pool has 3 workers and only 2 are busy: the callbacks get the third.
    cut = make_cut(pool_exhaustion(), pools={A: {"server-1": 3}, B: {"server-1": 8}}, queued=QUEUED)
    assert find_deadlocks(cut) == []


def test_a_cycle_through_a_multi_unit_pool_is_not_a_deadlock_while_a_holder_can_finish() -> None:
    # 2 workers: handler #1 waits on a callback queued for a worker (a cycle in the graph), but the
    # other worker runs a handler that waits for nothing: it finishes and frees its unit.
    tasks = pool_exhaustion(capacity=2)
    del tasks[A][1]
    del tasks[B][1]
    tasks[A].append(task(2, method="/shop.Orders/Status"))
    cut = make_cut(tasks, pools={A: {"server-1": 2}, B: {"server-1": 8}}, queued=QUEUED[:1])
    assert find_deadlocks(cut) == []
    graph = graph_from_cut(cut)
    assert graph.n_needs >= 3  # the edges are there; only reduction sees the free unit coming


def test_a_callback_delivered_after_the_cut_breaks_the_deadlock() -> None:
    late = InTransitMessage(B, A, "/shop.Orders/Price", "request", 31, 0, {})
    cut = make_cut(
        pool_exhaustion(),
        pools={A: {"server-1": 2}, B: {"server-1": 8}},
        queued=QUEUED[1:],
        in_transit=[late],
    )
    assert find_deadlocks(cut) == []


def test_a_failed_or_answered_callback_breaks_the_deadlock() -> None:
    failed = (unsettled(B, 31, "/shop.Orders/Price", A, failed="DEADLINE_EXCEEDED"), QUEUED[1])
    cut = make_cut(pool_exhaustion(), pools={A: {"server-1": 2}, B: {"server-1": 8}}, queued=failed)
    assert find_deadlocks(cut) == []
    # Not unsettled, not in a handler, not in transit: it was answered.
    cut = make_cut(pool_exhaustion(), pools={A: {"server-1": 2}, B: {"server-1": 8}}, queued=QUEUED[1:])
    assert find_deadlocks(cut) == []


def test_a_full_pool_of_tasks_that_can_finish_is_no_deadlock() -> None:
    tasks = {
        A: [app(1, calls=[call(5, "/shop.Inventory/Reserve", B)])],
        B: [task(2, method="/x/Busy"), task(3, method="/x/Busy", waiting="L"), app(4, held=["L"])],
    }
    cut = make_cut(
        tasks, pools={A: {}, B: {"server-1": 2}}, queued=[unsettled(A, 5, "/shop.Inventory/Reserve", B)]
    )
    assert find_deadlocks(cut) == []


def test_a_queued_call_into_several_full_pools_is_proven_for_all_of_them() -> None:
    tasks = pool_exhaustion()
    cut = make_cut(tasks, pools={A: {"server-1": 2, "server-2": 1}, B: {"server-1": 8}}, queued=QUEUED)
    assert find_deadlocks(cut) == []  # server-2 of orders has a free worker: the callbacks may land there
    tasks[A].append(
        task(6, method="/shop.Admin/Wait", pool="server-2", calls=[call(60, "/shop.Inventory/Reserve", B)])
    )
    tasks[B].append(task(61, method="/shop.Inventory/Reserve", caller=A, call_id=60, waiting="stock:1"))
    tasks[B].append(
        task(62, method="/shop.Inventory/Hold", held=["stock:1"], calls=[call(33, "/shop.Orders/Price", A)])
    )
    queued = (*QUEUED, unsettled(B, 33, "/shop.Orders/Price", A))
    cut = make_cut(tasks, pools={A: {"server-1": 2, "server-2": 1}, B: {"server-1": 8}}, queued=queued)
    (deadlock,) = find_deadlocks(cut)
    assert {(A, 6), (B, 61), (B, 62)} <= stuck([deadlock])
    reserve = next(t for t in deadlock.tasks if t.task_id == 3)
    assert reserve.waits_for[0].pools == ("server-1", "server-2")


# What is not a deadlock ---------------------------------------------------------------------------------
def test_a_waited_for_handler_that_is_not_blocked_means_no_deadlock() -> None:
    tasks = two_process_lock_cycle()
    tasks[B][0]["waiting_lock"] = None  # inventory's handler runs: it will answer
    assert find_deadlocks(make_cut(tasks)) == []


def test_non_blocking_calls_and_free_locks_create_no_wait() -> None:
    tasks = two_process_lock_cycle()
    tasks[A][0]["outbound"][0]["blocking"] = False  # a future the task is not waiting on
    assert find_deadlocks(make_cut(tasks)) == []
    tasks = two_process_lock_cycle()
    tasks[B][1]["held_locks"] = []  # nobody holds stock:42 at the cut: it is being handed over
    assert find_deadlocks(make_cut(tasks)) == []


def test_partial_deadlock_names_only_the_stuck_tasks() -> None:
    tasks = two_process_lock_cycle()
    tasks[C] = [app(30, calls=[call(90, "/shop.Orders/Place", A)])]  # stuck behind orders#1
    # The rest of the system is busy but fine.
    tasks[A] += [
        task(40, method="/shop.Orders/List", calls=[call(41, "/shop.Billing/Charge", C)]),
        app(42, held=["audit"], calls=[call(43, "/shop.Billing/Charge", C)]),
        app(44, waiting="audit"),
    ]
    tasks[C] += [
        task(45, method="/shop.Billing/Charge", caller=A, call_id=41),
        task(
            46,
            method="/shop.Billing/Charge",
            caller=A,
            call_id=43,
            calls=[call(47, "/shop.Inventory/Count", B)],
        ),
    ]
    tasks[B] += [task(48, method="/shop.Inventory/Count", caller=C, call_id=47)]
    deadlocks = find_deadlocks(make_cut(tasks))
    assert len(deadlocks) == 1
    assert stuck(deadlocks) == {(A, 1), (A, 2), (B, 3), (B, 5), (C, 30)}
    (client,) = [t for t in deadlocks[0].tasks if t.process == C]
    assert not client.on_cycle and client.waits_for[0].waits_on == ((A, 1),)
    assert format_deadlocks(deadlocks).count("\n    - ") == 1  # one task marked as stuck behind


def test_two_independent_deadlocks_are_reported_separately() -> None:
    tasks = {
        A: [app(1, held=["x"], waiting="y"), app(2, held=["y"], waiting="x")],
        B: [app(3, held=["x"], waiting="y"), app(4, held=["y"], waiting="x")],
    }
    deadlocks = find_deadlocks(make_cut(tasks))
    assert [stuck([d]) for d in deadlocks] == [{(B, 3), (B, 4)}, {(A, 1), (A, 2)}]
    assert format_deadlocks(deadlocks).count("Deadlock ") == 2
    assert format_deadlocks([]) == "no deadlock found"


def test_waiting_on_several_things_says_that_it_needs_all_of_them() -> None:
    tasks = two_process_lock_cycle()
    tasks[A][0]["outbound"].append(call(18, "/shop.Billing/Charge", C))
    tasks[C] = [task(9, method="/shop.Billing/Charge", caller=A, call_id=18)]
    (deadlock,) = find_deadlocks(make_cut(tasks))
    assert any("waits on 2 things at once" in r for r in deadlock.rests_on)


# Uncertain waits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("unknown callee", "callee is not known"),
        ("unknown capacity", "capacity of orders:a1's pool server-1 is unknown"),
        ("one pool of unknown capacity", "capacity of orders:a1's pool server-2 is unknown"),
        ("pool only a task names", "capacity of orders:a1's pool server-9 is unknown"),
        ("recording stopped", "recording stopped at orders:a1"),
        ("callee not a participant", "did not report"),
    ],
)
def test_uncertain_waits_never_produce_a_report(case: str, why: str) -> None:
    tasks = pool_exhaustion()
    pools: dict[str, dict[str, int]] = {A: {"server-1": 2}, B: {"server-1": 8}}
    queued = [dict(u) for u in QUEUED]
    reasons: list[str] = []
    if case == "unknown callee":
        for u in queued:
            u["target"] = ""
        for t in tasks[B]:
            t["outbound"][0]["target"] = ""
    elif case == "unknown capacity":
        pools[A]["server-1"] = 0
    elif case == "one pool of unknown capacity":
        pools[A]["server-2"] = 0
    elif case == "pool only a task names":
        tasks[A].append(task(9, method="/shop.Admin/Run", pool="server-9"))
    elif case == "recording stopped":
        reasons.append(f"recording truncated at {A}")
    else:
        for u in queued:
            u["target"] = "elsewhere:z9"
    cut = make_cut(tasks, pools=pools, queued=queued, reasons=reasons)
    assert find_deadlocks(cut) == []
    graph = graph_from_cut(cut)
    assert len(graph.uncertain) == 2 and all(why in u.why for u in graph.uncertain)


def test_a_lock_listed_by_two_holders_is_uncertain() -> None:
    cut = make_cut(
        {A: [app(1, held=["L"], waiting="M"), app(2, held=["M"], waiting="L"), app(3, held=["L"])]}
    )
    assert find_deadlocks(cut) == []
    (wait,) = graph_from_cut(cut).uncertain
    assert wait.what == "lock L" and "2 tasks" in wait.why


# Missing processes --------------------------------------------------------------------------------------
def test_missing_process_only_deadlocks_within_reporting_processes() -> None:
    tasks = two_process_lock_cycle()
    # orders#60 holds lock "ledger" and calls billing (missing); #61 waits for "ledger". Billing may
    # answer, so that is no deadlock, whatever billing was doing.
    tasks[A] += [
        app(60, held=["ledger"], calls=[call(70, "/shop.Billing/Charge", C)]),
        app(61, waiting="ledger"),
    ]
    # inventory's handler #62 is queued behind billing's pool: unknown (billing did not report).
    tasks[B] += [app(62, calls=[call(71, "/shop.Billing/Charge", C)])]
    queued = [unsettled(A, 70, "/shop.Billing/Charge", C), unsettled(B, 71, "/shop.Billing/Charge", C)]
    cut = make_cut(tasks, missing=[C], queued=queued, pools={A: {"server-1": 4}, B: {"server-1": 4}})
    (deadlock,) = find_deadlocks(cut)
    assert stuck([deadlock]) == {(A, 1), (A, 2), (B, 3), (B, 5)}
    assert any("INCOMPLETE (no local snapshot from billing:c3" in r for r in deadlock.rests_on)
    assert {u.why for u in graph_from_cut(cut).uncertain} == {f"its callee {C} did not report"}


def test_missing_process_caveat_on_a_queued_call() -> None:
    # A pool-exhaustion deadlock between orders and inventory while billing is missing: the flush
    # round never ran, and the report says so.
    tasks = pool_exhaustion()
    del tasks[C]
    for t in tasks[A]:
        t["caller"] = ""
    cut = make_cut(tasks, pools={A: {"server-1": 2}, B: {"server-1": 8}}, queued=QUEUED, missing=[C])
    (deadlock,) = find_deadlocks(cut)
    assert stuck([deadlock]) == {(A, 1), (A, 2), (B, 3), (B, 4)}
    assert any("no flush round" in r for r in deadlock.rests_on)


def test_cut_round_trip_through_json_gives_the_same_report() -> None:
    cut = make_cut(pool_exhaustion(), pools={A: {"server-1": 2}, B: {"server-1": 8}}, queued=QUEUED)
    again = Cut.loads(cut.dumps())
    assert [d.to_json() for d in find_deadlocks(again)] == [d.to_json() for d in find_deadlocks(cut)]
    assert reduce_graph(graph_from_cut(again)).deadlocked == reduce_graph(graph_from_cut(cut)).deadlocked


def test_two_full_pools_waiting_on_each_other() -> None:
    # Both pools are full of handlers whose calls sit queued in the other pool (a graph on which an
    # earlier version of the report's grouping looped forever).
    tasks = pool_exhaustion()
    tasks[C] = []
    for n, restock in enumerate(tasks[B]):  # B's handlers now serve other callers, A's calls are queued
        restock.update(method="/shop.Inventory/Restock", caller=C, call_id=52 + n)
    queued = (
        unsettled(A, 11, "/shop.Inventory/Reserve", B),
        unsettled(A, 12, "/shop.Inventory/Reserve", B),
        unsettled(B, 31, "/shop.Orders/Price", A),
        unsettled(B, 32, "/shop.Orders/Price", A),
    )
    cut = make_cut(tasks, pools={A: {"server-1": 2}, B: {"server-1": 2}, C: {}}, queued=queued)
    (deadlock,) = find_deadlocks(cut)
    assert stuck([deadlock]) == {(A, 1), (A, 2), (B, 3), (B, 4)}
    assert all(t.on_cycle for t in deadlock.tasks)
    json_roundtrip([deadlock])
    # One free worker in either pool, and it is no deadlock.
    roomy = make_cut(tasks, pools={A: {"server-1": 3}, B: {"server-1": 2}, C: {}}, queued=queued)
    assert find_deadlocks(roomy) == []


# Queued calls (recorded by their server as they arrived) ------------------------------------------
def exhausted_pool_cut(*, capacity: int = 2, lookup_left: float | None = None, answered: bool = False) -> Cut:
    """till's 2 workers run Pay, each calling fraud.Screen, which calls till.Lookup: queued at till.

    ``answered``: fraud's calls are no longer open (another attempt answered them)."""
    till: list[dict[str, Any]] = []
    fraud: list[dict[str, Any]] = []
    for k in range(2):
        till.append(
            task(
                1 + k,
                method="/shop.Till/Pay",
                caller="client",
                call_id=50 + k,
                calls=[call(10 + k, "/shop.Fraud/Screen", B)],
            )
        )
        fraud.append(
            task(
                5 + k,
                method="/shop.Fraud/Screen",
                caller=A,
                call_id=10 + k,
                calls=[] if answered else [call(20 + k, "/shop.Till/Lookup", "", time_left=lookup_left)],
            )
        )
        till.append(task(8 + k, method="/shop.Till/Lookup", caller=B, call_id=20 + k, queued=True))
    return make_cut({A: till, B: fraud}, pools={A: {"server-1": capacity}, B: {"server-1": 4}})


def test_calls_queued_at_their_server_close_the_cycle_with_no_assumption() -> None:
    """The callee is known from the server's own record, even on a channel that was never answered."""
    cut = exhausted_pool_cut()
    (deadlock,) = find_deadlocks(cut)
    assert stuck([deadlock]) == {(A, 1), (A, 2), (A, 8), (A, 9), (B, 5), (B, 6)}
    assert deadlock.rests_on == ()
    lookup = next(t for t in deadlock.tasks if t.task_id == 8)
    assert lookup.queued and lookup.holds == ()
    (wait,) = lookup.waits_for
    assert wait.kind == "queued" and wait.pools == ("server-1",) and wait.target == A
    assert "2 of 2 workers busy" in wait.text and sorted(wait.waits_on) == [(A, 1), (A, 2)]
    screen = next(t for t in deadlock.tasks if t.task_id == 5)
    assert screen.waits_for[0].kind == "call" and "queued at orders:a1#8" in screen.waits_for[0].text
    assert "waits in the server's queue for a worker of orders:a1's pool server-1 (2 of 2 workers busy)" in (
        deadlock.chain()
    )
    assert {t["task_id"] for t in deadlock.to_json()["tasks"] if t["queued"]} == {8, 9}
    assert "(queued for a worker of server-1)" in format_deadlocks([deadlock])


def test_a_queued_call_with_a_free_worker_or_nobody_waiting_is_no_deadlock() -> None:
    assert find_deadlocks(exhausted_pool_cut(capacity=3)) == []
    assert find_deadlocks(exhausted_pool_cut(answered=True)) == []


def test_a_queued_call_in_a_pool_of_unknown_size_is_uncertain() -> None:
    cut = exhausted_pool_cut(capacity=0)
    assert find_deadlocks(cut) == []
    graph = graph_from_cut(cut)
    assert {w.why for w in graph.uncertain} == {"the worker capacity of orders:a1's pool server-1 is unknown"}


# Deadlines -----------------------------------------------------------------------------------------
def test_reports_say_when_a_deadline_breaks_the_cycle_and_list_permanent_deadlocks_first() -> None:
    timed = exhausted_pool_cut(lookup_left=12.5)
    (deadlock,) = find_deadlocks(timed)
    assert deadlock.breaks_in == 12.5 and not deadlock.permanent
    screen = next(t for t in deadlock.tasks if t.task_id == 5)
    assert screen.times_out_in == 12.5 and "its deadline passes about 12.5 s after the cut" in (
        screen.waits_for[0].text
    )
    pay = next(t for t in deadlock.tasks if t.task_id == 1)
    assert pay.times_out_in is None
    text = format_deadlocks([deadlock])
    assert "lasts: a deadline on its cycle passes about 12.5 s after the cut" in text
    assert "no deadline: stuck until someone intervenes" in text
    assert json_roundtrip([deadlock])[0]["breaks_in"] == 12.5

    # The same pool deadlock at till, and a lock cycle with no deadline at billing: permanent first.
    tasks = {p: list(ts) for p, ts in timed.tasks.items()}
    doc_tasks = {p: [t.to_json() for t in ts] for p, ts in tasks.items()}
    doc_tasks[C] = [
        task(30, method="/shop.Billing/Hold", held=["x"], waiting="y", lock_time_left=None),
        task(31, method="/shop.Billing/Take", held=["y"], waiting="x"),
    ]
    both = make_cut(doc_tasks, pools={A: {"server-1": 2}, B: {"server-1": 4}, C: {"server-1": 4}})
    first, second = find_deadlocks(both)
    assert first.permanent and first.processes == (C,)
    assert second.breaks_in == 12.5


def test_a_handler_cancelled_at_its_deadline_breaks_the_cycle_a_sync_one_does_not() -> None:
    def cycle(ends: bool) -> Deadlock:
        hold = task(30, method="/shop.Billing/Hold", held=["x"], waiting="y")
        hold["time_left"], hold["ends_at_deadline"] = 7.0, ends
        (deadlock,) = find_deadlocks(
            make_cut({C: [hold, task(31, method="/shop.Billing/Take", held=["y"], waiting="x")]})
        )
        return deadlock

    aio, sync = cycle(True), cycle(False)
    assert aio.breaks_in == 7.0 and sync.permanent
    (held,) = [t for t in sync.tasks if t.task_id == 30]
    assert held.caller_gives_up_in == 7.0 and held.times_out_in is None
    assert "its caller's deadline passes about 7.0 s after the cut" in format_deadlocks([sync])


def test_a_lock_wait_with_a_timeout_breaks_the_cycle() -> None:
    cut = make_cut(
        {
            C: [
                task(30, method="/shop.Billing/Hold", held=["x"], waiting="y", lock_time_left=3.0),
                task(31, method="/shop.Billing/Take", held=["y"], waiting="x"),
            ]
        }
    )
    (deadlock,) = find_deadlocks(cut)
    assert deadlock.breaks_in == 3.0
    hold = next(t for t in deadlock.tasks if t.task_id == 30)
    assert "its wait times out about 3.0 s after the cut" in hold.waits_for[0].text
