"""The predicate API in one process: ``@invariant``, return conventions, memory, views and helpers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutwatch.core import Cut, InTransitMessage, TaskView
from cutwatch.predicates import (
    ERROR,
    FAIL,
    PASS,
    Holds,
    PredicateResult,
    Violation,
    as_number,
    at_most_one,
    check,
    conservation,
    holds,
    invariant,
    lock_holders,
    lock_waiters,
    lookup,
    memory,
    messages_by_channel,
    messages_by_method,
    service_of,
    state_values,
    states_by_service,
    violation,
)
from cutwatch.predicates._api import collecting
from cutwatch.predicates.engine import invariants_of, run_invariant

CREDIT = "/bank.Bank/Credit"


def make_cut(
    states: Mapping[str, tuple[str, Mapping[str, Any]]],
    in_transit: list[InTransitMessage] | tuple[InTransitMessage, ...] = (),
    *,
    epoch: int = 1,
    tasks: Mapping[str, list[dict[str, Any]]] | None = None,
) -> Cut:
    """A COMPLETE cut with ``states`` as ``{process: (service, {provider: value})}``."""
    return Cut(
        epoch=epoch,
        status="COMPLETE",
        started=0.0,
        finished=1.0,
        states={p: {"service": s, "state": dict(v)} for p, (s, v) in states.items()},
        in_transit=tuple(in_transit),
        clocks={p: {p: 1} for p in states},
        tasks={p: tuple(TaskView.from_json(t) for t in ts) for p, ts in (tasks or {}).items()},
    )


def credit(
    sender: str, receiver: str, amount: Any, call_id: int = 1, method: str = CREDIT
) -> InTransitMessage:
    return InTransitMessage(sender, receiver, method, "request", call_id, 0, {"amount": amount})


def bank(
    balances: Mapping[str, Any], in_transit: list[InTransitMessage] | None = None, epoch: int = 1
) -> Cut:
    return make_cut({p: ("bank", {"balance": b}) for p, b in balances.items()}, in_transit or [], epoch=epoch)


# The decorator -------------------------------------------------------------------------------------
def test_invariant_registers_and_returns_the_function_unchanged() -> None:
    with collecting() as found:

        @invariant("demo.always", timeout=2.5)
        def always(cut: Cut) -> bool:
            return True

        @invariant("demo.remembers")
        def remembers(cut: Cut, mem: dict[str, Any]) -> bool:
            return True

    assert always(make_cut({})) is True  # still a plain function
    assert [s.name for s in found] == ["demo.always", "demo.remembers"]
    (spec,) = invariants_of(always)
    assert spec.func is always and spec.timeout == 2.5 and not spec.takes_memory
    assert spec.source == __file__ and spec.line > 0
    assert invariants_of(remembers)[0].takes_memory and invariants_of(remembers)[0].timeout is None
    assert invariants_of(make_cut) == ()


def test_invariant_refuses_what_the_loader_could_not_use() -> None:
    with pytest.raises(TypeError, match="needs a name"):
        invariant(lambda cut: True)  # type: ignore[arg-type]  # a bare @invariant
    with pytest.raises(TypeError, match="needs a name"):
        invariant("  ")
    with pytest.raises(ValueError, match="surrounding spaces"):
        invariant(" x")
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            invariant("x", timeout=bad)
    with pytest.raises(TypeError, match=r"\(cut\) or \(cut, memory\)"):
        invariant("x")(lambda: True)
    with pytest.raises(TypeError, match=r"\(cut\) or \(cut, memory\)"):
        invariant("x")(lambda cut, memory, extra: True)
    # Optional parameters are not mistaken for the memory.
    assert not invariants_of(invariant("x")(lambda cut, limit=5: True))[0].takes_memory


# What a predicate returns --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("returned", "status", "witness", "message"),
    [
        (True, PASS, {}, ""),
        (False, FAIL, {}, "returned False (no witness)"),
        (holds("sum is 3", sum=3), PASS, {"sum": 3}, "sum is 3"),
        (violation("two leaders", processes=["a", "b"]), FAIL, {"processes": ["a", "b"]}, "two leaders"),
        (Violation({"x": 1}), FAIL, {"x": 1}, ""),
        (Holds(), PASS, {}, ""),
    ],
)
def test_return_conventions(returned: Any, status: str, witness: dict[str, Any], message: str) -> None:
    pred = invariant("demo")(lambda cut: returned)
    result = check(pred, make_cut({}, epoch=7))
    assert (result.name, result.status, result.epoch) == ("demo", status, 7)
    assert dict(result.witness) == witness and result.message == message and result.error == ""
    assert result.duration >= 0


@pytest.mark.parametrize(
    ("returned", "error"),
    [(None, "returned NoneType (a missing return?)"), (1, "returned int"), ("yes", "returned str")],
)
def test_anything_else_is_an_error_that_says_what_to_return(returned: Any, error: str) -> None:
    result = check(invariant("demo")(lambda cut: returned), make_cut({}))
    assert result.status == ERROR and error in result.error and "violation(...)" in result.error


def test_an_exception_is_an_error_with_the_predicates_traceback() -> None:
    @invariant("demo.raises")
    def raises(cut: Cut) -> bool:
        return 1 / 0 > 0

    result = check(raises, make_cut({}))
    assert result.status == ERROR and result.witness == {} and result.message == ""
    assert "ZeroDivisionError" in result.error and "in raises" in result.error
    assert "run_invariant" not in result.error  # the engine's own frame is left out

    def exits(cut: Cut) -> bool:
        raise SystemExit(3)

    assert check(invariant("demo.exit")(exits), make_cut({})).status == ERROR


def test_holds_is_truthy_and_violation_falsy_so_helpers_compose() -> None:
    first, second = violation("first"), violation("second")
    assert bool(holds()) and not first
    assert (holds() and first) is first
    assert (first and second) is first
    assert all([holds(), True])


def test_witnesses_become_plain_json() -> None:
    message = credit("a", "b", 5)
    raw = {
        "message": message,
        "by_channel": {("a", "b"): [message]},
        "ids": {3, 1, 2},
        "nan": math.nan,
        "obj": object,
        7: "int key",
    }
    result = check(invariant("demo")(lambda cut: Violation(raw, "w")), make_cut({}))
    assert result.status == FAIL
    witness = json.loads(json.dumps(result.witness, allow_nan=False))  # strict JSON
    assert witness["message"] == message.to_json()
    assert witness["by_channel"] == {"a -> b": [message.to_json()]}
    assert witness["ids"] == [1, 2, 3] and witness["nan"] == "nan" and witness["7"] == "int key"
    assert "object" in witness["obj"]


def test_an_oversized_witness_is_replaced_by_a_marker() -> None:
    spec = invariants_of(invariant("demo")(lambda cut: violation("big", blob="x" * 10_000, n=1)))[0]
    result, _ = run_invariant(spec, make_cut({}), None, max_witness_bytes=1000)
    assert result.status == FAIL and result.message == "big"
    assert result.witness["cutwatch"] == "truncated" and result.witness["bytes"] > 10_000
    assert result.witness["keys"] == ["blob", "n"]


def test_result_round_trips_through_json() -> None:
    result = PredicateResult("x", FAIL, 3, {"a": [1]}, "m", "", 0.25)
    assert PredicateResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    assert not result.ok and PredicateResult("x", PASS, 3).ok
    with pytest.raises(ValueError, match="status"):
        PredicateResult.from_json({"name": "x", "status": "MAYBE"})


# Memory --------------------------------------------------------------------------------------------
def test_memory_is_kept_on_pass_and_fail_and_rolled_back_on_error() -> None:
    @invariant("demo.counter")
    def counter(cut: Cut, mem: dict[str, Any]) -> bool:
        mem["seen"] = mem.get("seen", 0) + 1
        assert memory() is mem  # the same dict, also for helpers
        if cut.epoch == 3:
            raise RuntimeError("after changing the memory")
        return cut.epoch != 2

    kept: dict[str, Any] = {}
    assert check(counter, make_cut({}, epoch=1), memory=kept).status == PASS and kept == {"seen": 1}
    assert check(counter, make_cut({}, epoch=2), memory=kept).status == FAIL and kept == {"seen": 2}
    assert check(counter, make_cut({}, epoch=3), memory=kept).status == ERROR and kept == {"seen": 2}
    assert check(counter, make_cut({}, epoch=4), memory=kept).status == PASS and kept == {"seen": 3}


def test_memory_must_stay_json() -> None:
    def keeps_a_set(cut: Cut, mem: dict[str, Any]) -> bool:
        mem["s"] = {1}
        return True

    kept: dict[str, Any] = {"before": 1}
    result = check(invariant("demo")(keeps_a_set), make_cut({}), memory=kept)
    assert result.status == ERROR and "not JSON-serialisable" in result.error and kept == {"before": 1}


def test_memory_outside_a_predicate_explains_itself() -> None:
    with pytest.raises(RuntimeError, match="no predicate is running"):
        memory()


# Views ---------------------------------------------------------------------------------------------
def test_views_group_the_cut_the_way_invariants_read_it() -> None:
    m1, m2, m3 = credit("a:1", "b:1", 1, 1), credit("a:1", "b:1", 2, 2), credit("b:1", "c:1", 3, 3, "/x.Y/Z")
    tasks = {
        "a:1": [{"task_id": 1, "held_locks": ["inv:1"], "waiting_lock": None}],
        "b:1": [
            {"task_id": 4, "held_locks": [], "waiting_lock": "inv:1"},
            {"task_id": 5, "held_locks": ["q"]},
        ],
    }
    cut = make_cut(
        {
            "a:1": ("bank", {"balance": 5, "acct": {"owners": ["ann", "bob"]}}),
            "b:1": ("bank", {"balance": 7}),
            "c:1": ("audit", {"seen": 3}),
        },
        [m1, m2, m3],
        tasks=tasks,
    )
    assert service_of(cut, "c:1") == "audit" and service_of(cut, "nobody") == ""
    assert states_by_service(cut) == {
        "bank": {"a:1": cut.state_of("a:1"), "b:1": cut.state_of("b:1")},
        "audit": {"c:1": {"seen": 3}},
    }
    assert state_values(cut, "balance") == {"a:1": 5, "b:1": 7}
    assert state_values(cut, "seen", services=["bank"]) == {}
    assert messages_by_channel(cut) == {("a:1", "b:1"): [m1, m2], ("b:1", "c:1"): [m3]}
    assert messages_by_method(cut) == {CREDIT: [m1, m2], "/x.Y/Z": [m3]}
    assert lock_holders(cut) == {("a:1", "inv:1"): [1], ("b:1", "q"): [5]}
    assert lock_waiters(cut) == {("b:1", "inv:1"): [4]}
    assert lookup(cut.state_of("a:1"), "acct.owners.1") == "bob"
    assert lookup(cut.state_of("a:1"), "acct.owners.9", None) is None
    assert lookup(cut.state_of("a:1"), "balance.x", "none") == "none"


def test_as_number_accepts_what_json_payloads_hold() -> None:
    assert as_number(3) == 3 and as_number(2.5) == 2.5 and as_number("12") == 12 and as_number("1.5") == 1.5
    assert as_number({"acct1": 5, "acct2": "7"}) == 12 and as_number([1, [2, 3]]) == 6
    for bad in (True, "ten", None, math.inf):
        with pytest.raises(TypeError):
            as_number(bad)


# Conservation --------------------------------------------------------------------------------------
def test_conservation_with_a_constant_total() -> None:
    cut = bank({"b:1": 60, "b:2": 30}, [credit("b:1", "b:2", 10)])
    verdict = conservation(cut, state="balance", payload="amount", total=100)
    assert isinstance(verdict, Holds)
    assert verdict.witness == {
        "expected": 100,
        "sum": 100,
        "states_sum": 90,
        "in_transit_sum": 10,
        "processes": 2,
        "messages": 1,
    }


def test_conservation_counts_a_call_once_however_many_of_its_attempts_are_in_transit() -> None:
    first = credit("b:1", "b:2", 10, call_id=5)
    retry = InTransitMessage("b:1", "b:3", CREDIT, "request", 5, 1, {"amount": 10})  # attempt 1, elsewhere
    cut = bank({"b:1": 60, "b:2": 30, "b:3": 0}, [first, retry])
    verdict = conservation(cut, state="balance", payload="amount", total=100)
    assert isinstance(verdict, Holds)
    assert verdict.witness["messages"] == 1
    other_call = InTransitMessage("b:1", "b:3", CREDIT, "request", 6, 0, {"amount": 10})
    assert isinstance(
        conservation(
            bank({"b:1": 60, "b:2": 30, "b:3": 0}, [first, other_call]),
            state="balance",
            payload="amount",
            total=100,
        ),
        Violation,
    )


def test_a_conservation_violation_names_processes_messages_and_values() -> None:
    lost = credit("b:1", "b:2", 10, call_id=42)
    cut = bank({"b:1": 60, "b:2": 25}, [lost])
    verdict = conservation(cut, state="balance", payload="amount", total=100)
    assert isinstance(verdict, Violation)
    w = verdict.witness
    assert (w["expected"], w["sum"], w["difference"]) == (100, 95, -5)
    assert w["processes"] == {"b:1": 60, "b:2": 25}
    assert w["messages"] == [
        {"sender": "b:1", "receiver": "b:2", "method": CREDIT, "kind": "request", "call_id": 42, "attempt": 0}
        | {"value": 10}
    ]
    assert "is 95, expected 100" in verdict.message and "(difference -5)" in verdict.message


def test_conservation_selects_services_methods_and_kinds() -> None:
    states = {
        "b:1": ("bank", {"balance": 50}),
        "b:2": ("bank", {"balance": "40"}),  # protobuf renders 64-bit ints as strings
        "g:1": ("gateway", {"balance": 1000}),  # another service's "balance"
        "f:1": ("bank", {"other": 1}),  # a bank process without the state is not counted
    }
    messages = [
        credit("b:1", "b:2", 10),
        credit("b:1", "g:1", 500),  # to another service
        credit("b:2", "b:1", 99, method="/bank.Bank/Audit"),  # another method
        InTransitMessage("b:2", "b:1", CREDIT, "response", 7, 0, {"amount": 10}),  # an echo of the amount
        InTransitMessage("b:2", "b:1", CREDIT, "request", 8, 0, {}),  # no amount
    ]
    cut = make_cut(states, messages)
    verdict = conservation(
        cut,
        state="balance",
        payload="amount",
        total=100,
        services="bank",
        methods=["Credit"],
        kinds="request",
    )
    assert verdict, verdict
    failing = conservation(cut, state="balance", payload="amount", total=100, services="bank")
    assert isinstance(failing, Violation)
    assert failing.witness["in_transit_sum"] == 10 + 99 + 10 and failing.witness["without_state"] == ["f:1"]


def test_conservation_sums_mappings_of_balances() -> None:
    cut = make_cut({"b:1": ("bank", {"balances": {"ann": 5, "bob": 7}}), "b:2": ("bank", {"balances": {}})})
    assert conservation(cut, state="balances", total=12)


def test_conservation_refuses_to_check_what_it_cannot_see() -> None:
    cut = bank({"b:1": 10})
    with pytest.raises(ValueError, match="no process has the state 'balanse'"):
        conservation(cut, state="balanse", total=10)
    with pytest.raises(TypeError, match="bool"):
        conservation(make_cut({"b:1": ("bank", {"balance": True})}), state="balance", total=1)
    stream = InTransitMessage("b:1", "b:1", CREDIT, "request", 1, 0, {"cutwatch": "truncated", "bytes": 9e5})
    with pytest.raises(ValueError, match="not captured"):
        conservation(bank({"b:1": 10}, [stream]), state="balance", payload="amount", total=10, methods=CREDIT)
    # Without a method filter an uncaptured payload may be anything: it is listed, not guessed.
    verdict = conservation(bank({"b:1": 10}, [stream]), state="balance", payload="amount", total=11)
    assert isinstance(verdict, Violation) and verdict.witness["unreadable_messages"][0]["call_id"] == 1
    # Through check() a helper's exception is an ERROR result, as in the engine.
    result = check(invariant("x")(lambda cut: conservation(cut, state="nope", total=0)), cut)
    assert result.status == ERROR and "no process has the state 'nope'" in result.error


def test_conservation_across_cuts_compares_with_the_previous_cut() -> None:
    @invariant("bank.conservation")
    def conserved(cut: Cut) -> Any:
        return conservation(cut, state="balance", payload="amount")

    kept: dict[str, Any] = {}
    first = check(conserved, bank({"b:1": 50, "b:2": 50}, epoch=1), memory=kept)
    assert first.status == PASS and first.witness["baseline"] is True and first.witness["sum"] == 100
    moving = check(conserved, bank({"b:1": 40, "b:2": 50}, [credit("b:1", "b:2", 10)], epoch=2), memory=kept)
    assert moving.status == PASS and moving.witness["previous_epoch"] == 1
    leaked = check(conserved, bank({"b:1": 40, "b:2": 53}, epoch=3), memory=kept)
    assert leaked.status == FAIL
    assert leaked.witness["expected"] == 100 and leaked.witness["sum"] == 93
    assert leaked.witness["previous_epoch"] == 2 and leaked.witness["processes"] == {"b:1": 40, "b:2": 53}
    assert "as at epoch 2" in leaked.message
    # The leak is reported once; the next cut is compared with the one that showed it.
    assert check(conserved, bank({"b:1": 43, "b:2": 50}, epoch=4), memory=kept).status == PASS


def test_conservation_across_cuts_needs_a_memory() -> None:
    with pytest.raises(RuntimeError, match="memory"):
        conservation(bank({"b:1": 1}), state="balance")
    mine: dict[str, Any] = {}
    assert conservation(bank({"b:1": 1}), state="balance", memory=mine, key="k")
    assert mine == {"k": {"epoch": 1, "sum": 1}}
    assert not conservation(bank({"b:1": 2}, epoch=2), state="balance", memory=mine, key="k")


@given(
    balances=st.lists(st.integers(0, 1000), min_size=1, max_size=20),
    moves=st.lists(st.tuples(st.integers(0, 19), st.integers(0, 19), st.integers(0, 50)), max_size=30),
    leak=st.integers(-5, 5),
)
def test_money_in_flight_is_still_money(
    balances: list[int], moves: list[tuple[int, int, int]], leak: int
) -> None:
    """Moving money from balances into in-transit credits never changes the sum; a leak always does."""
    total = sum(balances)
    state = {f"b:{i}": b for i, b in enumerate(balances)}
    flying = []
    for n, (src, dst, amount) in enumerate(moves):
        sender, receiver = f"b:{src % len(balances)}", f"b:{dst % len(balances)}"
        amount = min(amount, state[sender])
        state[sender] -= amount
        flying.append(credit(sender, receiver, amount, call_id=n))
    state["b:0"] += leak
    verdict = conservation(bank(state, flying), state="balance", payload="amount", total=total)
    assert bool(verdict) == (leak == 0)
    if leak:
        assert isinstance(verdict, Violation) and verdict.witness["difference"] == leak
        assert len(verdict.witness["messages"]) == len(flying)


# At most one ---------------------------------------------------------------------------------------
def test_at_most_one_leader() -> None:
    followers = {"n:1": ("kv", {"leader": False}), "n:2": ("kv", {"leader": False}), "x:1": ("web", {})}
    assert isinstance(at_most_one(make_cut(followers), state="leader"), Holds)
    one = make_cut(followers | {"n:3": ("kv", {"leader": True})})
    assert at_most_one(one, state="leader").witness["holders"] == ["n:3"]
    two = make_cut(followers | {"n:3": ("kv", {"leader": True}), "n:4": ("kv2", {"leader": True})})
    verdict = at_most_one(two, state="leader")
    assert isinstance(verdict, Violation)
    assert verdict.witness == {
        "state": "leader",
        "value": True,
        "count": 2,
        "processes": {"n:3": "kv", "n:4": "kv2"},
    }
    assert verdict.message == "2 processes have leader == True: n:3, n:4"
    assert at_most_one(two, state="leader", services=["kv"])  # only one of them is in kv


def test_at_most_one_does_not_take_1_for_true() -> None:
    cut = make_cut({"n:1": ("kv", {"leader": 1}), "n:2": ("kv", {"leader": True})})
    assert at_most_one(cut, state="leader")
    assert at_most_one(cut, state="leader", value=1).witness["holders"] == ["n:1"]


def test_at_most_one_per_group() -> None:
    def replica(role: str, term: int) -> tuple[str, dict[str, Any]]:
        return "kv", {"raft": {"role": role, "term": term}}

    deposed = make_cut(
        {"n:1": replica("leader", 4), "n:2": replica("leader", 5), "n:3": replica("follower", 5)}
    )
    assert at_most_one(deposed, state="raft.role", value="leader", per="raft.term")
    split = make_cut({"n:1": replica("leader", 5), "n:2": replica("leader", 5), "n:3": replica("leader", 4)})
    verdict = at_most_one(split, state="raft.role", value="leader", per="raft.term")
    assert isinstance(verdict, Violation)
    assert verdict.witness["groups"] == {"5": {"per_value": 5, "processes": {"n:1": "kv", "n:2": "kv"}}}
    assert "2 with raft.term == 5 (n:1, n:2)" in verdict.message
