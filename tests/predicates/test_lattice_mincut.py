"""The largest and smallest weighted sum over a window's consistent cuts (min cut), against brute force.

The reference is :meth:`Window.consistent_cuts`: every frontier, checked
one by one. The property must also *fail* when the order between processes
is dropped from the graph: the last tests weaken the procedure on purpose and
check that the comparison notices.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from cutwatch.predicates import _mincut
from cutwatch.predicates._mincut import MISSING_IGRAPH, max_linear, min_linear
from cutwatch.predicates._window import Event, Frontier, History, Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lattice_computations import NAMES, windows

Weights = dict[tuple[str, str], int]


def weighted_sum(window: Window, weights: Mapping[tuple[str, str], int], cut: Frontier) -> int:
    total = 0
    for (process, name), coef in weights.items():
        if process in window.processes:
            i = window.index(process)
            value = window.value(i, name, cut[i])
            total += coef * (0 if value is None else int(value))
    return total


def brute_force(window: Window, weights: Mapping[tuple[str, str], int]) -> tuple[int, int]:
    """The largest and smallest sum over every consistent cut, one by one."""
    sums = [weighted_sum(window, weights, cut) for cut in window.consistent_cuts()]
    return max(sums), min(sums)


@st.composite
def weighted_windows(draw: st.DrawFn) -> tuple[Window, Weights]:
    """A random window and random weights over its ('x', 'leader') values (0 means unweighted), now
    and then a weight for a process the window lacks."""
    window = draw(windows())
    weights: Weights = {}
    for process in window.processes:
        for name in NAMES:
            coef = draw(st.integers(-3, 3))
            if coef:
                weights[(process, name)] = coef
    if draw(st.integers(0, 9)) == 0:
        weights[("elsewhere", "x")] = 5
    return window, weights


def check(window: Window, weights: Weights) -> None:
    """max_linear and min_linear agree with brute force, each with a consistent cut reaching it."""
    high, low = brute_force(window, weights)
    for procedure, expected in ((max_linear, high), (min_linear, low)):
        value, cut = procedure(window, weights)
        assert value == expected, (procedure.__name__, value, expected, cut)
        window.check_witness(cut)
        assert weighted_sum(window, weights, cut) == value


@settings(max_examples=2000, deadline=None)
@given(weighted_windows())
def test_agrees_with_brute_force(case: tuple[Window, Weights]) -> None:
    check(*case)


@settings(max_examples=150, deadline=None)
@given(windows(max_processes=6, max_events=6), st.integers(-2, 2), st.integers(-2, 2))
def test_one_weight_for_every_process(window: Window, x: int, leader: int) -> None:
    """Sums over every process at once (the usual invariant: a total, a count of leaders)."""
    weights = {(p, n): c for p in window.processes for n, c in (("x", x), ("leader", leader)) if c}
    check(window, weights)


def test_no_weights_and_no_events() -> None:
    window = Window([History("p0", "svc", {"x": 4}), History("p1", "svc", {})])
    assert max_linear(window, {}) == (0, (0, 0))
    assert max_linear(window, {("p0", "x"): 2, ("p1", "x"): 7}) == (8, (0, 0))
    assert min_linear(window, {("p0", "x"): -1}) == (-4, (0, 0))


# Two leaders ------------------------------------------------------------------------------


def leaders(ordered: bool) -> Window:
    """p0 leads at the bottom and resigns; p1 takes over. Neither snapshot (bottom, top) sees two
    leaders. With ``ordered`` p0 tells p1 after resigning and p1 takes over only on hearing it."""
    resign = Event({"p0": 1}, {"leader": False}, seq=1)
    if ordered:
        take_over = Event({"p0": 2, "p1": 2}, {"leader": True}, seq=1)  # p0 sent at 2; p1 received at 1
    else:
        take_over = Event({"p1": 1}, {"leader": True}, seq=1)
    return Window(
        [
            History("p0", "svc", {"leader": True}, (resign,)),
            History("p1", "svc", {"leader": False}, (take_over,)),
        ]
    )


LEADERS = {("p0", "leader"): 1, ("p1", "leader"): 1}


def test_two_leaders_at_a_cut_no_snapshot_took() -> None:
    window = leaders(ordered=False)
    assert weighted_sum(window, LEADERS, window.bottom) == weighted_sum(window, LEADERS, window.top) == 1
    assert max_linear(window, LEADERS) == (2, (0, 1))
    assert min_linear(window, LEADERS) == (0, (1, 0))


def test_a_message_rules_the_two_leaders_out() -> None:
    window = leaders(ordered=True)
    value, cut = max_linear(window, LEADERS)
    assert value == 1
    assert window.is_consistent(cut)
    assert not window.is_consistent((0, 1))  # p1 cannot lead before p0 resigned
    assert min_linear(window, LEADERS) == (0, (1, 0))


def test_transitive_order_through_a_process_without_weights() -> None:
    """p0 resigns, tells p2 (unweighted, never recorded anything weighted), p2 tells p1, p1 takes
    over: the order reaches p1 only through p2's clock, which p1's clock carries."""
    window = Window(
        [
            History("p0", "svc", {"leader": True}, (Event({"p0": 1}, {"leader": False}),)),
            History("p1", "svc", {"leader": False}, (Event({"p0": 2, "p2": 3, "p1": 2}, {"leader": True}),)),
            History("p2", "svc", {"x": 0}, (Event({"p0": 2, "p2": 2}, {"x": 1}),)),
        ]
    )
    value, cut = max_linear(window, LEADERS)
    assert value == 1
    window.check_witness(cut)


def test_bool_and_missing_values_count_as_numbers() -> None:
    window = Window(
        [
            History("p0", "svc", {}, (Event({"p0": 1}, {"x": -5}), Event({"p0": 2}, {"leader": True}))),
            History("p1", "svc", {"leader": True}, (Event({"p1": 1}, {"leader": False}),)),
        ]
    )
    weights = {("p0", "x"): 1, ("p0", "leader"): 10, ("p1", "leader"): 3}
    assert brute_force(window, weights) == (8, -5)
    assert max_linear(window, weights) == (8, (2, 0))
    assert min_linear(window, weights) == (-5, (1, 1))


def test_missing_igraph_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "igraph", None)
    with pytest.raises(ImportError) as caught:
        max_linear(leaders(ordered=False), LEADERS)
    assert str(caught.value) == MISSING_IGRAPH


def test_weights_beyond_exact_doubles_are_refused() -> None:
    with pytest.raises(ValueError, match="2\\*\\*53"):
        max_linear(leaders(ordered=True), {("p0", "leader"): 2**52, ("p1", "leader"): 2**52})


# The property notices a procedure that drops the order between processes ------------------


def drop_cross_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weaken max_linear: no event requires anything of another process."""
    connect = _mincut._connect

    def weakened(window: Window, chains: list[_mincut._Chain]) -> None:
        connect(window, chains)
        for chain in chains:
            chain.targets = {}
            chain.required = set()

    monkeypatch.setattr(_mincut, "_connect", weakened)


def fails(case: tuple[Window, Weights]) -> bool:
    try:
        check(*case)
    except AssertionError:  # a wrong value, or a witness that is inconsistent or misses it
        return True
    return False


def test_dropping_the_order_is_caught_on_the_two_leaders(monkeypatch: pytest.MonkeyPatch) -> None:
    window = leaders(ordered=True)
    check(window, LEADERS)
    drop_cross_edges(monkeypatch)
    assert fails((window, LEADERS))


def test_dropping_the_order_is_caught_on_random_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    drop_cross_edges(monkeypatch)
    case = find(
        weighted_windows(),
        fails,
        settings=settings(max_examples=2000, database=None, phases=[Phase.generate]),
    )
    window, _ = case
    assert len(window) >= 2
