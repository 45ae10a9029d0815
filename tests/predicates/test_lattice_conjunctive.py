"""The least consistent cut where local conditions all hold (Garg-Waldecker), against brute force.

The reference checks every consistent cut. The last tests weaken the
procedure (a candidate no longer forces the others forward) and check that
the comparison notices.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from cutwatch.predicates import _conjunctive
from cutwatch.predicates._conjunctive import find_conjunctive
from cutwatch.predicates._window import Event, Frontier, History, InconsistentWitness, Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lattice_computations import windows

Local = dict[int, Callable[[int], bool]]


def satisfying(window: Window, local: Mapping[int, Callable[[int], bool]]) -> list[Frontier]:
    return [cut for cut in window.consistent_cuts() if all(p(cut[i]) for i, p in local.items())]


@st.composite
def conjunctions(draw: st.DrawFn) -> tuple[Window, Local]:
    """A random window and conditions on some of its processes: a random set of indices, or a
    condition on the process's values (x above a bound, leader)."""
    window = draw(windows())
    local: Local = {}
    for i, size in enumerate(window.sizes()):
        kind = draw(st.sampled_from(("free", "free", "indices", "x", "leader")))
        if kind == "indices":
            local[i] = draw(st.frozensets(st.integers(0, size))).__contains__
        elif kind == "x":
            bound = draw(st.integers(-3, 3))
            local[i] = x_above(window, i, bound)
        elif kind == "leader":
            local[i] = leads(window, i)
    return window, local


def x_above(window: Window, i: int, bound: int) -> Callable[[int], bool]:
    return lambda k: (window.value(i, "x", k) or 0) > bound


def leads(window: Window, i: int) -> Callable[[int], bool]:
    return lambda k: bool(window.value(i, "leader", k))


def check(window: Window, local: Local) -> None:
    """find_conjunctive finds a cut exactly when one exists, and the least one."""
    found = find_conjunctive(window, local)
    every = satisfying(window, local)
    if not every:
        assert found is None
        return
    assert found is not None
    window.check_witness(found)
    assert all(p(found[i]) for i, p in local.items())
    assert all(all(a <= b for a, b in zip(found, cut, strict=True)) for cut in every), (
        "not the least such cut"
    )


@settings(max_examples=2000, deadline=None)
@given(conjunctions())
def test_agrees_with_brute_force(case: tuple[Window, Local]) -> None:
    check(*case)


def test_no_conditions_is_the_bottom() -> None:
    window = leaders(ordered=True)
    assert find_conjunctive(window, {}) == window.bottom


def test_a_condition_that_never_holds() -> None:
    assert find_conjunctive(leaders(ordered=False), {0: lambda k: k > 5}) is None


def test_an_unknown_process_is_an_error() -> None:
    with pytest.raises(IndexError):
        find_conjunctive(leaders(ordered=False), {2: lambda k: True})


def test_each_condition_is_read_once_per_index() -> None:
    calls: list[int] = []

    def condition(k: int) -> bool:
        calls.append(k)
        return k == 1

    window = leaders(ordered=True)
    assert find_conjunctive(window, {1: condition}) == (1, 1)
    assert sorted(calls) == [0, 1]  # each index once


# Two leaders ------------------------------------------------------------------------------


def leaders(ordered: bool) -> Window:
    """p0 leads at the bottom and resigns; p1 takes over (with ``ordered``, only once p0 told it)."""
    resign = Event({"p0": 1}, {"leader": False}, seq=1)
    take_over = Event({"p0": 2, "p1": 2} if ordered else {"p1": 1}, {"leader": True}, seq=1)
    return Window(
        [
            History("p0", "svc", {"leader": True}, (resign,)),
            History("p1", "svc", {"leader": False}, (take_over,)),
        ]
    )


def both_lead(window: Window) -> Local:
    return {i: leads(window, i) for i in range(2)}


def test_two_leaders_at_a_cut_no_snapshot_took() -> None:
    window = leaders(ordered=False)
    assert find_conjunctive(window, both_lead(window)) == (0, 1)


def test_a_message_rules_the_two_leaders_out() -> None:
    window = leaders(ordered=True)
    assert find_conjunctive(window, both_lead(window)) is None


def test_a_free_process_goes_as_far_as_required() -> None:
    """p1's third event knows p0's second; with only p1 constrained, p0 goes exactly that far."""
    p0 = tuple(Event({"p0": m}, {"x": m}) for m in (1, 2, 3))
    p1 = (
        Event({"p1": 1}, {"x": 1}),
        Event({"p1": 2}, {"x": 2}),
        Event({"p0": 2, "p1": 4}, {"x": 3}),  # received p0's message (sent after its second event)
    )
    window = Window([History("p0", "svc", {}, p0), History("p1", "svc", {}, p1)])
    assert find_conjunctive(window, {1: lambda k: k == 3}) == (2, 3)
    assert find_conjunctive(window, {1: lambda k: k == 3, 0: lambda k: k != 2}) == (3, 3)
    assert find_conjunctive(window, {1: lambda k: k == 3, 0: lambda k: k < 2}) is None


# The property notices a procedure that does not force candidates forward -----------------


def test_skipping_the_forcing_step_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing_required(self: object, i: int, k: int) -> list[tuple[int, int]]:
        return []

    monkeypatch.setattr(_conjunctive._Requirements, "grown", nothing_required)

    def fails(case: tuple[Window, Local]) -> bool:
        try:
            check(*case)
        except AssertionError:  # InconsistentWitness too: a cut the clocks call inconsistent
            return True
        return False

    window, _ = find(
        conjunctions(), fails, settings=settings(max_examples=2000, database=None, phases=[Phase.generate])
    )
    assert len(window) >= 2
    ordered = leaders(ordered=True)
    with pytest.raises(InconsistentWitness):
        find_conjunctive(ordered, {1: lambda k: k == 1})
