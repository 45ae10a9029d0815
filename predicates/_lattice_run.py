"""Running a lattice invariant: on the cut itself, and on every consistent cut of the window before it.

The same definition serves both: on the cut it is evaluated with the cut's
values, on the window it becomes a formula over the window's consistent
cuts and goes to the decision procedure its shape calls for
(:func:`~cutwatch.predicates._lattice.decide`). One result comes out: FAIL
when either the cut or some consistent cut of the window violates it (the
witness says which, and where), INCONCLUSIVE when the cut holds but the
window cannot be decided (changes lost, a process that records none), PASS
when both hold.
"""

from __future__ import annotations

import importlib.util
import time
import traceback
from collections.abc import Mapping
from typing import Any

from cutwatch.core import Cut, PredicateLoadError
from cutwatch.predicates._api import ERROR, FAIL, INCONCLUSIVE, PASS, Invariant
from cutwatch.predicates._lattice import LatticeAnswer, decide
from cutwatch.predicates._mincut import MISSING_IGRAPH
from cutwatch.predicates._results import MAX_ERROR_CHARS, PredicateResult, _bounded_witness
from cutwatch.predicates._symbolic import LatticeView, SubsetError, evaluate, explain
from cutwatch.predicates._window import Window

__all__ = ["cut_values", "lattice_reads", "run_lattice_invariant"]

_SOLVERS = (("z3", "z3-solver"), ("igraph", "igraph"))
"""The modules lattice invariants are decided with, and the packages that give them."""


def lattice_reads(spec: Invariant) -> tuple[str, ...]:
    """The state names ``spec`` reads, found by running it on a sample symbolic cut; a
    :class:`PredicateLoadError` naming its file and line when it is outside the symbolic subset."""
    missing = [package for module, package in _SOLVERS if importlib.util.find_spec(module) is None]
    if missing:
        raise PredicateLoadError(
            spec.source,
            spec.line,
            f"{MISSING_IGRAPH} (lattice invariant {spec.name!r}; missing: {', '.join(missing)})",
        )
    view = LatticeView.universal()
    try:
        returned = spec.func(view)
        evaluate(returned, {})
    except SubsetError as exc:
        raise PredicateLoadError(
            spec.source, spec.line, f"lattice invariant {spec.name!r} is outside the symbolic subset: {exc}"
        ) from None
    except Exception as exc:
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-MAX_ERROR_CHARS:]
        raise PredicateLoadError(
            spec.source,
            spec.line,
            f"lattice invariant {spec.name!r} failed on a sample symbolic cut: {type(exc).__name__}: {exc}",
            details,
        ) from None
    return tuple(sorted(view.names_read))


def cut_values(cut: Cut) -> dict[tuple[str, str], Any]:
    """Every state value of ``cut``, by (process, name); evaluating one that is not an integer or a
    boolean raises a ``ValueError`` that names it."""
    found: dict[tuple[str, str], Any] = {}
    for process, entry in cut.states.items():
        state = entry.get("state")
        if isinstance(state, Mapping):
            for name, value in state.items():
                found[(process, str(name))] = value
    return found


def run_lattice_invariant(
    spec: Invariant,
    cut: Cut,
    window: Window | None,
    *,
    timeout: float = 5.0,
    max_witness_bytes: int = 256 * 1024,
) -> PredicateResult:
    """``spec`` on ``cut`` and on ``window`` (the consistent cuts since the previous cut; None: none)."""
    started = time.perf_counter()

    def error(exc: BaseException, where: str) -> PredicateResult:
        text = f"{where}: " + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return PredicateResult(
            spec.name, ERROR, cut.epoch, error=text[-MAX_ERROR_CHARS:], duration=time.perf_counter() - started
        )

    try:
        values = cut_values(cut)
        phi = spec.func(LatticeView.of_cut(cut.states))
        holds_at_cut = evaluate(phi, values)
        at_cut: dict[str, Any] = {"holds": holds_at_cut, "values": explain(phi, values)}
    except (Exception, SystemExit) as exc:
        return error(exc, f"on cut {cut.epoch}")
    if cut.untracked:
        at_cut["note"] = "state changed without a stamp during this snapshot: the values may not add up"
    answer: LatticeAnswer | None = None
    if window is not None:
        try:
            answer = decide(window, spec.func(LatticeView.of_window(window)), timeout=timeout)
        except (Exception, SystemExit) as exc:
            return error(exc, f"on the window before cut {cut.epoch}")
    witness: dict[str, Any] = {"cut": at_cut}
    if answer is not None:
        witness["window"] = answer.to_json()
        witness["window"]["between"] = [window.bottom_epoch if window else None, cut.epoch]
    status, message = _verdict(cut, window, holds_at_cut, answer)
    return PredicateResult(
        spec.name,
        status,
        cut.epoch,
        _bounded_witness(witness, max_witness_bytes),
        message,
        duration=time.perf_counter() - started,
    )


def _verdict(
    cut: Cut, window: Window | None, holds_at_cut: bool, answer: LatticeAnswer | None
) -> tuple[str, str]:
    since = (
        "since the start of recording"
        if window is None or window.bottom_epoch is None
        else f"between cuts {window.bottom_epoch} and {cut.epoch}"
    )
    if not holds_at_cut:
        return FAIL, f"fails at cut {cut.epoch}"
    if answer is None:
        return INCONCLUSIVE, f"holds at cut {cut.epoch}; no window of recorded changes before it"
    how = f"{answer.decided_by}, {answer.events} events of {answer.processes} processes"
    if answer.possibly is None:
        return INCONCLUSIVE, f"holds at cut {cut.epoch}; {since} unknown: {answer.reason}"
    if answer.possibly:
        every = {True: "on every path", False: "not on every path", None: "every path: not decided"}
        return FAIL, (
            f"fails {since} at a consistent cut no snapshot sampled ({every[answer.definitely]}; {how})"
        )
    return PASS, f"holds at cut {cut.epoch} and at every consistent cut {since} ({how})"
