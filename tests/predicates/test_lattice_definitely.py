"""Whether every run through a window passes a violating cut, against a reference over the lattice.

The reference works backwards from the top over every consistent cut: a cut
*can avoid* violation when it does not violate and it is the top or one of
its successors can avoid it; ``definitely`` holds when the bottom cannot.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cutwatch.predicates._definitely import definitely, possibly_brute_force
from cutwatch.predicates._window import Event, Frontier, History, Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lattice_computations import windows

Violates = Callable[[Frontier], bool]


def reference(window: Window, violates: Violates) -> bool:
    """Definitely, by dynamic programming over every consistent cut, from the top down."""
    can_avoid: dict[Frontier, bool] = {}
    for cut in sorted(window.consistent_cuts(), key=sum, reverse=True):
        can_avoid[cut] = not violates(cut) and (
            cut == window.top or any(can_avoid[after] for after in window.successors(cut))
        )
    return not can_avoid[window.bottom]


@st.composite
def violations(draw: st.DrawFn) -> tuple[Window, Violates]:
    """A random window and what violates on it: a random set of its consistent cuts, or a bound on
    the total of x, or two leaders at once."""
    window = draw(windows())
    kind = draw(st.sampled_from(("cuts", "cuts", "total", "leaders")))
    if kind == "cuts":
        cuts = list(window.consistent_cuts())
        chosen = draw(st.frozensets(st.sampled_from(cuts), max_size=len(cuts)))
        return window, chosen.__contains__
    if kind == "total":
        bound = draw(st.integers(-6, 6))

        def total(cut: Frontier) -> bool:
            return sum(window.value(i, "x", k) or 0 for i, k in enumerate(cut)) > bound

        return window, total

    def two_leaders(cut: Frontier) -> bool:
        return sum(bool(window.value(i, "leader", k)) for i, k in enumerate(cut)) >= 2

    return window, two_leaders


@settings(max_examples=2000, deadline=None)
@given(violations())
def test_agrees_with_the_reference(case: tuple[Window, Violates]) -> None:
    window, violates = case
    assert definitely(window, violates) is reference(window, violates)


@settings(max_examples=300, deadline=None)
@given(violations())
def test_possibly_brute_force_is_the_first_violating_cut(case: tuple[Window, Violates]) -> None:
    window, violates = case
    found = possibly_brute_force(window, violates)
    every = [cut for cut in window.consistent_cuts() if violates(cut)]
    assert found == (every[0] if every else None)
    if definitely(window, violates):
        assert found is not None  # every run passes a violation, so there is one


def test_bottom_and_top_count() -> None:
    window = independent(2, 2)
    assert definitely(window, lambda cut: cut == window.bottom) is True
    assert definitely(window, lambda cut: cut == window.top) is True
    assert definitely(window, lambda cut: False) is False
    empty = Window([History("p0", "svc", {})])
    assert definitely(empty, lambda cut: False) is False
    assert definitely(empty, lambda cut: True) is True


def test_a_wall_across_the_lattice_is_definite_and_a_gap_in_it_is_not() -> None:
    """Every run of two independent processes passes a cut with exactly 3 events in, so
    'three in' is definite; take one of those cuts out and a run slips through it."""
    window = independent(2, 3)
    assert definitely(window, lambda cut: sum(cut) == 3) is True
    assert definitely(window, lambda cut: sum(cut) == 3 and cut != (2, 1)) is False
    assert definitely(window, lambda cut: cut == (2, 1)) is False


def test_two_leaders_definitely_only_when_the_order_forces_it() -> None:
    """p1 takes over before hearing that p0 resigned, then tells p0, which resigns only then: every
    run passes the cut where both lead. Unordered, a run where p0 resigns first avoids it."""

    def both_lead(window: Window) -> Violates:
        return lambda cut: all(window.value(i, "leader", k) for i, k in enumerate(cut))

    take_over = Event({"p1": 1}, {"leader": True})
    ordered = Window(
        [
            History("p0", "svc", {"leader": True}, (Event({"p0": 1, "p1": 2}, {"leader": False}),)),
            History("p1", "svc", {"leader": False}, (take_over,)),
        ]
    )
    unordered = Window(
        [
            History("p0", "svc", {"leader": True}, (Event({"p0": 1}, {"leader": False}),)),
            History("p1", "svc", {"leader": False}, (take_over,)),
        ]
    )
    assert definitely(ordered, both_lead(ordered)) is True
    assert definitely(unordered, both_lead(unordered)) is False
    assert possibly_brute_force(unordered, both_lead(unordered)) == (0, 1)


def test_the_budget_bounds_the_search() -> None:
    window = independent(4, 6)  # 7**4 = 2401 consistent cuts
    seen: list[Frontier] = []

    def middle_with_a_gap(cut: Frontier) -> bool:
        seen.append(cut)
        return bool(sum(cut) == 12 and cut != (3, 3, 3, 3))

    assert definitely(window, middle_with_a_gap, budget=100) is None
    assert len(seen) <= 100
    assert definitely(window, middle_with_a_gap) is False
    assert definitely(window, lambda cut: sum(cut) == 12, budget=100) is None
    assert definitely(window, lambda cut: sum(cut) == 12, budget=2401) is True


def test_the_deadline_bounds_the_search_too() -> None:
    window = independent(4, 6)
    assert definitely(window, lambda cut: sum(cut) == 12, deadline=time.monotonic() - 1) is None
    assert definitely(window, lambda cut: sum(cut) == 12, deadline=time.monotonic() + 60) is True


def independent(processes: int, events: int) -> Window:
    """Processes that never exchange messages: every frontier is a consistent cut."""
    return Window(
        [
            History(
                f"p{i}", "svc", {"x": 0}, tuple(Event({f"p{i}": m}, {"x": m}) for m in range(1, events + 1))
            )
            for i in range(processes)
        ]
    )
