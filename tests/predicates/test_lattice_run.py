"""One lattice invariant on one cut and the window before it: the result, its witness and its message."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from cutwatch.core import Cut, PredicateLoadError
from cutwatch.predicates import ERROR, FAIL, INCONCLUSIVE, PASS, count, invariant
from cutwatch.predicates._api import Invariant, invariants_of
from cutwatch.predicates._lattice_run import lattice_reads, run_lattice_invariant
from cutwatch.predicates._window import Event, History, Window


@invariant("lease.one_leader", lattice=True)
def one_leader(cut: Any) -> Any:
    return count(cut.values("leader", service="lease")) <= 1


@invariant("lease.broken", lattice=True)
def broken(cut: Any) -> Any:
    raise RuntimeError("a bug in the predicate")


def _spec(func: Any) -> Invariant:
    (spec,) = invariants_of(func)
    return spec


def _cut(epoch: int, leaders: dict[str, Any]) -> Cut:
    return Cut(
        epoch=epoch,
        status="COMPLETE",
        started=0.0,
        finished=0.0,
        states={p: {"service": "lease", "state": {"leader": v}} for p, v in leaders.items()},
        in_transit=(),
        clocks={p: {p: 10} for p in leaders},
    )


def _overlap_window(*, missing: str = "") -> Window:
    """a leads at the bottom and steps down after b, which it called, took the lease."""
    a = History("lease:a", "lease", {"leader": True}, (Event({"lease:a": 20}, {"leader": False}, 5),))
    b = History(
        "lease:b",
        "lease",
        {"leader": False},
        (Event({"lease:a": 15, "lease:b": 4}, {"leader": True}, 2),),
        {},
        missing,
    )
    return Window([a, b], bottom_epoch=1, top_epoch=2)


def test_the_overlap_between_cuts_fails_with_the_cut_where_both_lead() -> None:
    result = run_lattice_invariant(
        _spec(one_leader), _cut(2, {"lease:a": False, "lease:b": True}), _overlap_window()
    )
    assert result.status == FAIL
    assert result.witness["cut"]["holds"] is True
    window = result.witness["window"]
    assert window["possibly"] is True and window["between"] == [1, 2]
    frontier = window["witness"]["frontier"]
    assert frontier["lease:a"]["values"] == {"leader": True} and frontier["lease:a"]["seq"] is None
    assert frontier["lease:b"]["values"] == {"leader": True} and frontier["lease:b"]["seq"] == 2
    assert "between cuts 1 and 2" in result.message and window["decided_by"] in result.message


def test_a_violation_at_the_cut_itself_fails_even_without_a_window() -> None:
    result = run_lattice_invariant(_spec(one_leader), _cut(3, {"lease:a": True, "lease:b": True}), None)
    assert result.status == FAIL and result.message == "fails at cut 3"
    assert result.witness["cut"]["holds"] is False


def test_a_window_with_changes_missing_is_inconclusive_never_pass() -> None:
    window = _overlap_window(missing="3 of its recorded state changes never reached the collector")
    result = run_lattice_invariant(_spec(one_leader), _cut(2, {"lease:a": False, "lease:b": True}), window)
    assert result.status == INCONCLUSIVE
    assert result.witness["window"]["possibly"] is None
    assert "never reached the collector" in result.message


def test_no_window_is_inconclusive_and_a_quiet_window_passes() -> None:
    cut = _cut(2, {"lease:a": True, "lease:b": False})
    assert run_lattice_invariant(_spec(one_leader), cut, None).status == INCONCLUSIVE
    quiet = Window(
        [History("lease:a", "lease", {"leader": True}), History("lease:b", "lease", {"leader": False})],
        bottom_epoch=1,
        top_epoch=2,
    )
    result = run_lattice_invariant(_spec(one_leader), cut, quiet)
    assert result.status == PASS, result.message
    assert "every consistent cut between cuts 1 and 2" in result.message


def test_a_predicate_that_raises_is_an_error_and_a_value_that_is_no_number_too() -> None:
    cut = _cut(2, {"lease:a": True})
    assert run_lattice_invariant(_spec(broken), cut, None).status == ERROR
    odd = run_lattice_invariant(_spec(one_leader), _cut(2, {"lease:a": "yes"}), None)
    assert odd.status == ERROR and "lease:a" in odd.error


def test_reads_are_found_at_load_and_missing_solvers_say_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert lattice_reads(_spec(one_leader)) == ("leader",)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "z3" else real(name, *a)
    )
    with pytest.raises(PredicateLoadError) as info:
        lattice_reads(_spec(one_leader))
    assert 'pip install "cutwatch[collector]"' in str(info.value) and "z3-solver" in str(info.value)
