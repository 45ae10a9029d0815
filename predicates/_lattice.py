"""Deciding a lattice invariant on a window: which procedure, and the answer with its witness.

The violation (``not phi`` in negation normal form, values that never
change in the window folded in) is split into disjuncts (possibly(A | B) =
possibly(A) or possibly(B)) and each goes to the cheapest exact procedure
its shape allows: a linear comparison over several processes to min-cut
(:mod:`._mincut`), a conjunction of per-process conditions to
Garg-Waldecker (:mod:`._conjunctive`), the rest to z3 (:mod:`._z3`), which
runs last and only when the cheap parts found nothing. ``definitely`` then
searches for a run that avoids violation (:mod:`._definitely`), after the
shortcuts: no violating cut means no, a violating bottom or top means yes.

Never a wrong "no violation": a window that is not whole, a name whose
values are not integers or booleans, a process that did not record, or a
solver that ran out of time give ``possibly=None`` with the reason. Every
witness is checked (consistent by the clocks, violating on its values)
before it is reported.

The cross-check: on windows of at most :data:`AUTO_CROSS_CHECK_EVENTS`
events, a violation decided by min-cut or Garg-Waldecker is also given to
z3 (a few milliseconds). If they disagree, a verified witness wins (so the
answer is still right) and ``notes`` says so: a disagreement is a bug in
one of them. ``cross_check=True`` (the tests) raises ``AssertionError``
instead, on any window; ``False`` turns it off.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cutwatch.predicates._conjunctive import find_conjunctive
from cutwatch.predicates._definitely import DEFAULT_BUDGET, definitely
from cutwatch.predicates._mincut import max_linear, min_linear
from cutwatch.predicates._symbolic import (
    BoolNode,
    Compare,
    Conjunctive,
    Const,
    General,
    Part,
    Relational,
    classify,
    evaluate,
    explain,
    formula_of,
    linear_form,
    processes_of,
    render,
    specialize,
    variables,
    violation_of,
)
from cutwatch.predicates._window import Frontier, Window
from cutwatch.predicates._z3 import ENCODINGS, SolverTimeout, solve

__all__ = ["AUTO_CROSS_CHECK_EVENTS", "DEFAULT_TIMEOUT", "LatticeAnswer", "decide"]

DEFAULT_TIMEOUT = 5.0
"""Seconds from the start of :func:`decide` by which z3 must have answered."""
AUTO_CROSS_CHECK_EVENTS = 64
"""Windows up to this many events get the cheap procedures' answers checked by z3 too."""

_ORDER = {Relational: 0, Conjunctive: 1, General: 2}


@dataclass(frozen=True)
class LatticeAnswer:
    """Whether some consistent cut of a window violates an invariant, and whether every run does.

    ``possibly``: True with ``witness`` (the cut, its values, the comparisons that fail), False
    when no consistent cut violates, None when it cannot be told (``reason``). ``definitely``:
    True when every run from the window's bottom to its top passes a violating cut, None when
    not decided (``notes`` says why). ``decided_by``: 'constant', 'min-cut', 'garg-waldecker',
    'z3:<encoding>', joined with '+' when several parts of a disjunction were decided.
    ``events`` and ``processes``: the window's size.
    """

    possibly: bool | None
    witness: dict[str, Any] | None
    definitely: bool | None
    decided_by: str
    reason: str = ""
    duration: float = 0.0
    events: int = 0
    processes: int = 0
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "possibly": self.possibly,
            "witness": self.witness,
            "definitely": self.definitely,
            "decided_by": self.decided_by,
            "reason": self.reason,
            "duration": self.duration,
            "events": self.events,
            "processes": self.processes,
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LatticeAnswer:
        def maybe(value: Any) -> bool | None:
            return None if value is None else bool(value)

        witness = doc.get("witness")
        return cls(
            possibly=maybe(doc.get("possibly")),
            witness=dict(witness) if witness is not None else None,
            definitely=maybe(doc.get("definitely")),
            decided_by=str(doc.get("decided_by", "")),
            reason=str(doc.get("reason", "")),
            duration=float(doc.get("duration", 0.0)),
            events=int(doc.get("events", 0)),
            processes=int(doc.get("processes", 0)),
            notes=tuple(str(n) for n in doc.get("notes", ())),
        )


def decide(
    window: Window,
    phi: object,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    definitely_budget: int = DEFAULT_BUDGET,
    cross_check: bool | None = None,
) -> LatticeAnswer:
    """Decide ``phi`` (what a lattice invariant returned on ``LatticeView.of_window(window)``) on
    every consistent cut of ``window``: possibly(not phi), with a witness, and definitely(not phi).

    ``timeout``: seconds from the call within which z3 must answer (the polynomial procedures run
    first and are not bounded); ``definitely_budget``: consistent cuts the definitely search may
    visit; ``cross_check``: see the module docstring (None: automatic on small windows).
    """
    started = time.perf_counter()
    base = LatticeAnswer(None, None, None, "", events=window.event_count(), processes=len(window))
    node = formula_of(phi)
    violation = violation_of(node)
    why = _undecidable(window, violation)
    if why:
        return replace(base, reason=why, duration=time.perf_counter() - started)
    spec = specialize(violation, window)
    classification = classify(spec)
    notes: list[str] = []
    methods: list[str] = []
    frontier: Frontier | None = None
    possibly: bool | None = False
    reason = ""
    if isinstance(spec, Const):
        methods.append("constant")
        frontier = window.bottom if spec.value else None
    else:
        deadline = started + timeout
        for part in sorted(classification.parts, key=lambda p: _ORDER[type(p)]):
            try:
                method, frontier = _possibly(window, part, deadline)
            except SolverTimeout as exc:
                methods.append("z3")
                possibly, reason = None, str(exc)
                break
            methods.append(method)
            if frontier is not None:
                break
    if frontier is not None:
        _verify(window, spec, frontier, "+".join(methods))
        possibly = True
    checking = cross_check if cross_check is not None else _auto_cross_check(window, methods)
    if checking and possibly is not None and not any(m.startswith("z3") for m in methods):
        frontier, possibly, note = _cross_check(window, spec, frontier, timeout, strict=bool(cross_check))
        notes += note
    answer = replace(
        base,
        possibly=possibly,
        witness=_witness(window, node, frontier) if frontier is not None else None,
        decided_by="+".join(dict.fromkeys(methods)),
        reason=reason,
    )
    deadline = time.monotonic() + max(0.0, timeout - (time.perf_counter() - started))
    certain, why_not = _definitely(window, spec, possibly, frontier, definitely_budget, deadline)
    if why_not:
        notes.append(why_not)
    return replace(answer, definitely=certain, notes=tuple(notes), duration=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------
def _undecidable(window: Window, violation: BoolNode) -> str:
    """Why the window cannot answer for this violation ("" when it can)."""
    if window.unknown:
        return f"the window is not whole: {window.unknown}"
    read = variables(violation)
    invalid = sorted({v.name for v in read} & set(window.invalid))
    if invalid:
        return "; ".join(
            f"state {name!r} is not an integer or a boolean: {window.invalid[name]}" for name in invalid
        )
    processes = {v.process for v in read}
    missing = [h for h in window.histories if h.missing and h.process in processes]
    return "; ".join(f"process {h.process!r} is not whole in this window: {h.missing}" for h in missing)


def _possibly(window: Window, part: Part, deadline: float) -> tuple[str, Frontier | None]:
    """One disjunct: the procedure that decided it and a cut where it holds (None: nowhere)."""
    if isinstance(part, Relational):
        return "min-cut", _extreme(window, dict(part.weights), part.op, part.bound)
    if isinstance(part, Conjunctive):
        local = {window.index(p): _local(window, window.index(p), f) for p, f in part.local}
        return "garg-waldecker", find_conjunctive(window, local)
    equality = _equality(part.formula)
    if equality is not None:  # sum == K: out of [min, max] there is nothing to search
        weights, bound = equality
        high, top = max_linear(window, weights)
        low, bottom = min_linear(window, weights)
        if not low <= bound <= high:
            return "min-cut", None
        if bound in (low, high):
            return "min-cut", bottom if bound == low else top
    solution = solve(window, part.formula, timeout=max(0.0, deadline - time.perf_counter()))
    return f"z3:{solution.encoding}", solution.frontier


def _extreme(window: Window, weights: dict[tuple[str, str], int], op: str, bound: int) -> Frontier | None:
    """A cut where ``sum(weights * values) op bound``: the sum's maximum or minimum, if it reaches."""
    if op in (">", ">="):
        value, frontier = max_linear(window, weights)
        return frontier if (value > bound if op == ">" else value >= bound) else None
    value, frontier = min_linear(window, weights)
    return frontier if (value < bound if op == "<" else value <= bound) else None


def _equality(formula: BoolNode) -> tuple[dict[tuple[str, str], int], int] | None:
    """``(weights, K)`` when ``formula`` is ``sum(weights * values) == K`` over several processes."""
    if not isinstance(formula, Compare) or formula.op != "==" or len(processes_of(formula)) < 2:
        return None
    linear = linear_form(formula.left)
    if linear is None or not linear[0]:
        return None
    return linear[0], -linear[1]


def _local(window: Window, i: int, formula: BoolNode) -> Callable[[int], bool]:
    """``formula`` (reading process ``i`` only) as a function of how many of ``i``'s events are in."""
    names = sorted({v.name for v in variables(formula)})
    process = window.processes[i]
    return lambda k: evaluate(formula, {(process, n): window.value(i, n, k) for n in names})


def _violates(window: Window, formula: BoolNode) -> Callable[[Frontier], bool]:
    """``formula`` as a function of a frontier, reading only the values it reads."""
    read = sorted({(v.process, v.name) for v in variables(formula)})
    where = [(p, n, window.index(p)) for p, n in read]
    return lambda f: evaluate(formula, {(p, n): window.value(i, n, f[i]) for p, n, i in where})


def _verify(window: Window, violation: BoolNode, frontier: Frontier, by: str) -> None:
    """A witness is reported only if it is a consistent cut where the violation holds."""
    window.check_witness(frontier)
    if not _violates(window, violation)(frontier):
        raise AssertionError(f"{by} reported the cut {frontier}, where {render(violation)} does not hold")


def _auto_cross_check(window: Window, methods: list[str]) -> bool:
    if window.event_count() > AUTO_CROSS_CHECK_EVENTS or methods == ["constant"]:
        return False
    return importlib.util.find_spec("z3") is not None


def _cross_check(
    window: Window, violation: BoolNode, frontier: Frontier | None, timeout: float, *, strict: bool
) -> tuple[Frontier | None, bool, list[str]]:
    """z3 on the whole violation, against what the cheap procedures said."""
    try:  # one encoding: the windows checked are small, and one context costs less than two
        solution = solve(window, violation, timeout=timeout, encodings=ENCODINGS[:1])
    except SolverTimeout:
        return frontier, frontier is not None, ["cross-check: z3 did not answer in time"]
    if (solution.frontier is None) == (frontier is None):
        return frontier, frontier is not None, []
    found = "found a" if solution.frontier is not None else "found no"
    said = f"z3:{solution.encoding} {found} violating cut"
    message = f"the decision procedures disagree ({said}); the verified witness stands: a bug, please report"
    if strict:
        raise AssertionError(f"{message}: {render(violation)} at {frontier or solution.frontier}")
    return frontier if frontier is not None else solution.frontier, True, [message]


def _witness(window: Window, phi: BoolNode, frontier: Frontier) -> dict[str, Any]:
    witness = window.describe(frontier)
    witness["explain"] = explain(phi, window.values_at(frontier))
    return witness


def _definitely(
    window: Window,
    violation: BoolNode,
    possibly: bool | None,
    frontier: Frontier | None,
    budget: int,
    deadline: float,
) -> tuple[bool | None, str]:
    """definitely(violation), with the shortcuts; a note when it stays undecided."""
    if possibly is None:
        return None, "definitely: not decided, possibly is unknown"
    if not possibly:
        return False, ""
    violates = _violates(window, violation)
    if frontier in (window.bottom, window.top) or violates(window.bottom) or violates(window.top):
        return True, ""  # every run starts at the bottom and ends at the top
    answer = definitely(window, violates, budget=budget, deadline=deadline)
    if answer is None:
        return None, (
            f"definitely: not decided within {budget} consistent cuts and the predicate's time; "
            "possibly is exact"
        )
    return answer, ""
