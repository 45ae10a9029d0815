"""z3 on a window: each encoding against brute force, the reduction to levels, timeouts, weakened consistency.

The reference is :meth:`Window.consistent_cuts` with :func:`evaluate` on
each cut. Every encoding is checked on its own (the race hides a wrong one
whenever the other answers first), on fixed predicate shapes and on random
formulas. The last tests drop the cross-process constraints on purpose and
check that the comparison notices.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from cutwatch.predicates import _z3
from cutwatch.predicates._symbolic import (
    BoolNode,
    LatticeView,
    all_of,
    any_of,
    count,
    evaluate,
    implies,
    total,
    variables,
    violation_of,
)
from cutwatch.predicates._window import Event, Frontier, History, InconsistentWitness, Window
from cutwatch.predicates._z3 import (
    ENCODINGS,
    SolverTimeout,
    find_violation,
    frontier_of,
    problem_of,
    solve,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lattice_computations import windows
from test_lattice_symbolic import dsl, trees

Shape = Callable[[LatticeView], Any]

SHAPES: dict[str, Shape] = {
    "one leader": lambda cut: count(cut.values("leader")) <= 1,
    "sum is not 2 (violation: sum == 2)": lambda cut: total(cut.values("x")) != 2,
    "sum is 0": lambda cut: total(cut.values("x")) == 0,
    "pairs differ": lambda cut: all_of(
        a != b for a, b in zip(cut.values("x"), cut.values("x")[1:], strict=False)
    ),
    "some leader or a large sum": lambda cut: any_of(cut.values("leader")) | (total(cut.values("x")) > 3),
    "a leader means a small sum": lambda cut: implies(
        count(cut.values("leader")) >= 1, total(cut.values("x")) >= -1
    ),
    "exactly one x is 1": lambda cut: count(x == 1 for x in cut.values("x")) == 1,
    "mixed": lambda cut: (
        ~((total(cut.values("x")) == 1) & (count(cut.values("leader")) == 2))
        | (count(x > 0 for x in cut.values("x")) >= 3)
    ),
    "no negative x": lambda cut: all_of(x >= 0 for x in cut.values("x")),
    "constant": lambda cut: True,
}


@st.composite
def cases(draw: st.DrawFn) -> tuple[Window, Any]:
    """A random window and what an invariant returned on it: a fixed shape or a random formula."""
    window = draw(windows())
    view = LatticeView.of_window(window)
    if not window.processes or draw(st.booleans()):
        return window, SHAPES[draw(st.sampled_from(sorted(SHAPES)))](view)
    return window, dsl(draw(trees(window.processes)), view)


def violating_cuts(window: Window, violation: BoolNode) -> list[Frontier]:
    """Every consistent cut, one by one, where the violation holds on the values it reads."""
    read = [(v.process, v.name, window.index(v.process)) for v in variables(violation)]
    return [
        cut
        for cut in window.consistent_cuts()
        if evaluate(violation, {(p, n): window.value(i, n, cut[i]) for p, n, i in read})
    ]


def check(window: Window, phi: Any, encodings: tuple[str, ...]) -> None:
    """z3's answer matches brute force, and its witness is one of the violating cuts."""
    violation = violation_of(phi)
    expected = violating_cuts(window, violation)
    found = find_violation(window, violation, timeout=30, encodings=encodings)
    if found is None:
        assert not expected, f"z3 ({encodings}) found nothing; brute force found {expected[:3]}"
    else:
        assert found in expected, f"z3 ({encodings}) chose {found}; brute force: {expected[:3]}"


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=2000, deadline=None)
@given(case=cases())
def test_each_encoding_agrees_with_brute_force(encoding: str, case: tuple[Window, Any]) -> None:
    check(*case, (encoding,))


@settings(max_examples=300, deadline=None)
@given(case=cases())
def test_the_race_agrees_with_brute_force(case: tuple[Window, Any]) -> None:
    check(*case, ENCODINGS)


# ---------------------------------------------------------------------------------------------------
# Fixed windows
# ---------------------------------------------------------------------------------------------------
def two_leaders(*, ordered: bool) -> Window:
    """p0 leads, then steps down; p1 then takes over. ``ordered``: p1's takeover follows a message
    p0 sent after stepping down, so the two lead together only in an inconsistent cut."""
    p1_clock = {"p0": 2, "p1": 2} if ordered else {"p1": 1}
    return Window(
        [
            History("p0", "lease", {"leader": True}, (Event({"p0": 1}, {"leader": False}, seq=1),)),
            History("p1", "lease", {"leader": False}, (Event(p1_clock, {"leader": True}, seq=1),)),
        ]
    )


def one_leader(cut: LatticeView) -> Any:
    return count(cut.values("leader", service="lease")) <= 1


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_two_leaders_only_in_an_inconsistent_cut_is_no_violation(encoding: str) -> None:
    window = two_leaders(ordered=True)
    violation = violation_of(one_leader(LatticeView.of_window(window)))
    assert find_violation(window, violation, timeout=10, encodings=(encoding,)) is None
    window = two_leaders(ordered=False)
    violation = violation_of(one_leader(LatticeView.of_window(window)))
    assert find_violation(window, violation, timeout=10, encodings=(encoding,)) == (0, 1)


def test_the_solution_says_which_encoding_answered_and_how_big_the_problem_was() -> None:
    window = two_leaders(ordered=False)
    solution = solve(window, violation_of(one_leader(LatticeView.of_window(window))), timeout=10)
    assert solution.encoding in ENCODINGS
    assert (solution.frontier, solution.processes, solution.levels, solution.edges) == ((0, 1), 2, 2, 0)
    assert solution.duration > 0


def test_only_what_the_formula_reads_becomes_levels() -> None:
    """An unread process, events that change nothing read, and repeated values add nothing."""
    window = Window(
        [
            History(
                "p0",
                "svc",
                {"x": 0},
                (
                    Event({"p0": 1}, {"x": 1}),
                    Event({"p0": 2}, {"y": 7}),  # changes nothing read
                    Event({"p0": 3}, {"x": 1}),  # the same value again
                    Event({"p0": 4}, {"x": 2}),
                ),
            ),
            History("p1", "svc", {"x": 5}, (Event({"p0": 2, "p1": 1}, {"x": 6}),)),
            History("p2", "svc", {"x": 9}, (Event({"p2": 1}, {"y": 1}),)),  # x never changes
            History("p3", "other", {}, (Event({"p3": 1}, {"x": 3}),)),  # not read
        ]
    )
    view = LatticeView.of_window(window)
    violation = violation_of(total(view.values("x", service="svc")) != 16)
    problem = problem_of(window, violation)
    assert problem.points == {0: [1, 4], 1: [1]}
    # p1's event needs p0's first two events: the first level of p0 (event 2 changes nothing).
    assert problem.edges == [(1, 1, 0, 1)]
    frontier = find_violation(window, violation, timeout=10)
    assert frontier is not None
    assert window.values_at(frontier)[("p0", "x")] + window.values_at(frontier)[("p1", "x")] == 16 - 9
    assert frontier_of(problem, {0: 1, 1: 1}) == (2, 1, 0, 0)  # p0 up to what p1 needs, below level 2


def test_a_constant_violation_needs_no_solver() -> None:
    window = two_leaders(ordered=True)
    assert solve(window, violation_of(False), timeout=1).frontier == window.bottom
    assert solve(window, violation_of(True), timeout=1).encoding == "constant"
    assert find_violation(window, violation_of(True), timeout=1) is None


def test_no_time_left_is_a_timeout_never_a_no() -> None:
    window = two_leaders(ordered=True)
    violation = violation_of(one_leader(LatticeView.of_window(window)))
    with pytest.raises(SolverTimeout, match="did not decide"):
        solve(window, violation, timeout=0.0)


def test_unknown_encodings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown z3 encodings"):
        solve(two_leaders(ordered=True), violation_of(False), timeout=1, encodings=("bdd",))


def test_missing_z3_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "z3", None)
    window = two_leaders(ordered=True)
    with pytest.raises(ImportError) as caught:
        solve(window, violation_of(one_leader(LatticeView.of_window(window))), timeout=1)
    assert (
        str(caught.value) == 'lattice predicates need the collector extra: pip install "cutwatch[collector]"'
    )


# ---------------------------------------------------------------------------------------------------
# The comparison notices an encoding without the order between processes
# ---------------------------------------------------------------------------------------------------
def drop_consistency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weaken every encoding: no cross-process implication at all. Fresh contexts only: a reused one
    may pick another of the (now many) solutions on hypothesis' replay, which it calls flaky."""
    monkeypatch.setattr(_z3, "consistency_edges", lambda problem: [])
    monkeypatch.setattr(_z3, "_REUSE_BELOW", 0)


def fails(case: tuple[Window, Any], encoding: str) -> bool:
    try:
        check(*case, (encoding,))
    except (AssertionError, InconsistentWitness):  # a wrong answer or a witness the clocks reject
        return True
    return False


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_dropping_consistency_is_caught_on_the_two_leaders(
    encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = two_leaders(ordered=True)
    violation = violation_of(one_leader(LatticeView.of_window(window)))
    check(window, one_leader(LatticeView.of_window(window)), (encoding,))
    drop_consistency(monkeypatch)
    with pytest.raises(InconsistentWitness, match=r"\(0, 1\) is not a consistent cut"):
        find_violation(window, violation, timeout=10, encodings=(encoding,))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_dropping_consistency_is_caught_on_random_windows(
    encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_consistency(monkeypatch)
    window, _ = find(
        cases(),
        lambda case: fails(case, encoding),
        settings=settings(max_examples=2000, database=None, phases=[Phase.generate]),
    )
    assert len(window) >= 2
