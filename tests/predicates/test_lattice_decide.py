"""The dispatcher against brute force: possibly and definitely, what it calls unknown, and how it says so.

possibly's reference is every consistent cut evaluated one by one;
definitely's is a search over the whole lattice: a cut *can avoid* the
violation when it does not violate and it is the top or one of its
successors can avoid it; definitely holds when the bottom cannot.
``cross_check=True`` makes every answer of min-cut and Garg-Waldecker go
through z3 as well.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from cutwatch.predicates import _lattice
from cutwatch.predicates._lattice import LatticeAnswer, decide
from cutwatch.predicates._symbolic import LatticeView, all_of, count, total, violation_of
from cutwatch.predicates._window import Event, Frontier, History, Window
from cutwatch.predicates._z3 import SolverTimeout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lattice_z3 import cases, violating_cuts

TIMEOUT = 60.0
"""Generous: on a loaded machine z3 must not turn a small window into "unknown"."""


def decided(window: Window, phi: Any, **options: Any) -> LatticeAnswer:
    return decide(window, phi, **{"timeout": TIMEOUT, **options})


def definitely_by_search(window: Window, violating: set[Frontier]) -> bool:
    @cache
    def can_avoid(cut: Frontier) -> bool:
        if cut in violating:
            return False
        return cut == window.top or any(can_avoid(s) for s in window.successors(cut))

    return not can_avoid(window.bottom)


def witness_frontier(window: Window, answer: LatticeAnswer) -> Frontier:
    assert answer.witness is not None
    return tuple(answer.witness["frontier"][p]["events_in"] for p in window.processes)


@settings(max_examples=2000, deadline=None)
@given(case=cases())
def test_decide_agrees_with_brute_force(case: tuple[Window, Any]) -> None:
    window, phi = case
    violating = set(violating_cuts(window, violation_of(phi)))
    answer = decided(window, phi, cross_check=True)
    assert answer.possibly is bool(violating), answer
    if answer.possibly:
        assert witness_frontier(window, answer) in violating
        assert answer.witness is not None and answer.witness["explain"]["holds"] is False
    else:
        assert answer.witness is None
    assert answer.definitely is definitely_by_search(window, violating), answer
    assert answer.decided_by
    assert LatticeAnswer.from_json(json.loads(json.dumps(answer.to_json()))) == answer


# ---------------------------------------------------------------------------------------------------
# Fixed windows
# ---------------------------------------------------------------------------------------------------
def leaders(*, handover: bool) -> Window:
    """Two lease processes that each lead once (off, on, off). ``handover``: p0 steps up, tells p1,
    p1 steps up and tells p0, and only then p0 steps down: every run has both leading at (1, 1).
    Otherwise they are concurrent: a run can keep them apart."""
    p0: tuple[Event, ...]
    p1: tuple[Event, ...]
    if handover:
        p0 = (Event({"p0": 1}, {"leader": True}, 1), Event({"p0": 4, "p1": 3}, {"leader": False}, 2))
        p1 = (Event({"p0": 2, "p1": 2}, {"leader": True}, 1),)
    else:
        p0 = (Event({"p0": 1}, {"leader": True}, 1), Event({"p0": 2}, {"leader": False}, 2))
        p1 = (Event({"p1": 1}, {"leader": True}, 1), Event({"p1": 2}, {"leader": False}, 2))
    return Window(
        [History("p0", "lease", {"leader": False}, p0), History("p1", "lease", {"leader": False}, p1)],
        bottom_epoch=3,
        top_epoch=4,
    )


def one_leader(cut: LatticeView) -> Any:
    return count(cut.values("leader", service="lease")) <= 1


def test_two_leaders_on_every_run_is_definite() -> None:
    window = leaders(handover=True)
    answer = decided(window, one_leader(LatticeView.of_window(window)))
    assert (answer.possibly, answer.definitely, answer.decided_by) == (True, True, "min-cut")
    assert witness_frontier(window, answer) == (1, 1)
    assert answer.witness is not None
    assert answer.witness["explain"]["atoms"] == [
        {"expr": "count(p0.leader, p1.leader) <= 1", "value": 2, "bound": 1, "holds": False}
    ]
    assert answer.witness["frontier"]["p1"] == {
        "service": "lease",
        "events_in": 1,
        "seq": 1,
        "clock": {"p0": 2, "p1": 2},
        "values": {"leader": True},
    }
    assert (answer.events, answer.processes) == (3, 2)


def test_concurrent_leaders_are_possible_not_definite() -> None:
    window = leaders(handover=False)
    answer = decided(window, one_leader(LatticeView.of_window(window)))
    assert (answer.possibly, answer.definitely) == (True, False)
    undecided = decided(window, one_leader(LatticeView.of_window(window)), definitely_budget=1)
    assert (undecided.possibly, undecided.definitely) == (True, None)
    assert "not decided within 1 consistent cuts" in " ".join(undecided.notes)
    # Out of time: the same, however small the window (possibly stays exact).
    late = decided(window, one_leader(LatticeView.of_window(window)), timeout=0.0)
    assert (late.possibly, late.definitely) == (True, None)


def test_constant_invariants() -> None:
    window = leaders(handover=False)
    holds = decided(window, True)
    assert (holds.possibly, holds.definitely, holds.decided_by, holds.witness) == (
        False,
        False,
        "constant",
        None,
    )
    fails = decided(window, False)
    assert (fails.possibly, fails.definitely, fails.decided_by) == (True, True, "constant")
    assert witness_frontier(window, fails) == window.bottom


def test_each_shape_goes_to_its_procedure() -> None:
    window = leaders(handover=False)
    view = LatticeView.of_window(window)
    l0, l1 = view.values("leader")
    assert decided(window, one_leader(view)).decided_by == "min-cut"
    assert decided(window, ~(l0 & l1)).decided_by == "garg-waldecker"
    assert decided(window, l0 != l1).decided_by.startswith("z3:")  # violation: l0 == l1, not linear
    # Disjunctions: each part by its own procedure, cheapest first, until one finds a cut.
    assert (
        decided(window, (count(view.values("leader")) <= 2) & ~(l0 & ~l0)).decided_by
        == "min-cut+garg-waldecker"
    )
    answer = decided(window, (count(view.values("leader")) <= 2) & ((l0 + 2 * l1 != 2) | l0))
    assert (answer.possibly, answer.decided_by.split(":")[0]) == (True, "min-cut+z3")


def test_a_sum_out_of_reach_needs_no_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_solver(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("z3 was asked")

    monkeypatch.setattr(_lattice, "solve", no_solver)
    window = leaders(handover=False)
    view = LatticeView.of_window(window)
    answer = decided(window, total(view.values("leader")) != 5, cross_check=False)
    assert (answer.possibly, answer.decided_by) == (False, "min-cut")
    answer = decided(window, total(view.values("leader")) != 2, cross_check=False)  # the maximum: a cut
    assert (answer.possibly, answer.decided_by) == (True, "min-cut")


# ---------------------------------------------------------------------------------------------------
# Never a wrong "no violation"
# ---------------------------------------------------------------------------------------------------
def test_a_window_that_is_not_whole_is_unknown() -> None:
    whole = leaders(handover=True)
    window = Window(whole.histories, unknown="changes were dropped at p1")
    answer = decided(window, one_leader(LatticeView.of_window(window)))
    assert (answer.possibly, answer.definitely, answer.witness) == (None, None, None)
    assert answer.reason == "the window is not whole: changes were dropped at p1"


def test_a_name_with_values_that_are_not_numbers_is_unknown_when_read() -> None:
    whole = leaders(handover=True)
    window = Window(whole.histories, invalid={"leader": "p1 recorded 'yes'", "role": "a str"})
    answer = decided(window, one_leader(LatticeView.of_window(window)))
    assert answer.possibly is None
    assert answer.reason == "state 'leader' is not an integer or a boolean: p1 recorded 'yes'"
    window = Window(whole.histories, invalid={"role": "a str"})
    assert decided(window, one_leader(LatticeView.of_window(window))).possibly is True


def test_a_process_that_did_not_record_is_unknown_when_read() -> None:
    histories = [*leaders(handover=False).histories, History("p2", "lease", {}, (), missing="records none")]
    window = Window(histories)
    answer = decided(window, one_leader(LatticeView.of_window(window)))
    assert (answer.possibly, answer.reason) == (
        None,
        "process 'p2' is not whole in this window: records none",
    )
    histories[2] = History("p2", "bank", {}, (), missing="records none")
    window = Window(histories)
    assert decided(window, one_leader(LatticeView.of_window(window))).possibly is True


def test_a_solver_timeout_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(*args: Any, **kwargs: Any) -> Any:
        raise SolverTimeout("z3 did not decide the violation within 5 s (ite: timeout)")

    monkeypatch.setattr(_lattice, "solve", slow)
    window = leaders(handover=False)
    l0, l1 = LatticeView.of_window(window).values("leader")
    answer = decided(window, l0 != l1)
    assert (answer.possibly, answer.definitely, answer.decided_by) == (None, None, "z3")
    assert "within 5 s" in answer.reason
    assert answer.notes == ("definitely: not decided, possibly is unknown",)


# ---------------------------------------------------------------------------------------------------
# The cross-check and the witness check catch a wrong procedure
# ---------------------------------------------------------------------------------------------------
def lying_max(window: Window, weights: Any) -> tuple[int, Frontier]:
    return -100, window.bottom  # "the sum never gets above -100": a wrong no


def test_the_cross_check_catches_a_wrong_no(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lattice, "max_linear", lying_max)
    window = leaders(handover=True)
    phi = one_leader(LatticeView.of_window(window))
    with pytest.raises(AssertionError, match="the decision procedures disagree"):
        decided(window, phi, cross_check=True)
    answer = decided(window, phi)  # automatic on a small window: z3's verified witness stands
    assert (answer.possibly, witness_frontier(window, answer)) == (True, (1, 1))
    assert any("disagree" in note for note in answer.notes)
    assert decided(window, phi, cross_check=False).possibly is False  # what the lie alone says


def test_a_witness_that_does_not_violate_is_never_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lattice, "find_conjunctive", lambda window, local: window.bottom)
    window = leaders(handover=False)
    l0, l1 = LatticeView.of_window(window).values("leader")
    with pytest.raises(AssertionError, match="does not hold"):
        decided(window, ~(l0 & l1))


def test_answers_round_trip_through_json() -> None:
    window = leaders(handover=True)
    answer = decided(window, all_of(v >= 0 for v in LatticeView.of_window(window).values("leader")))
    assert LatticeAnswer.from_json(json.loads(json.dumps(answer.to_json()))) == answer
    assert LatticeAnswer.from_json({"possibly": None, "decided_by": "z3"}) == LatticeAnswer(
        None, None, None, "z3"
    )
