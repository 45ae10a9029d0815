"""Deciding any violation with z3: is there a consistent cut of the window where it holds?

The cut is one integer per process, so the search is over frontiers
constrained by the clocks. Only what the formula reads matters: a process
whose read values never change is a constant, and within a process only the
events that change a read value are *levels*: a cut that stops between two
of them reads the same values as one that stops at the first (and the
down-closure of the chosen events is a consistent cut with those values,
because clocks are transitive), so ``t_i`` in ``0..levels_i`` replaces
``k_i`` in ``0..n_i``. Consistency is ``t_i >= s -> t_j >= r`` each time the
``s``-th level of ``i`` needs more levels of ``j``.

Two encodings of the values, raced (threads, one z3 context each; z3
releases the GIL): ``ite``, an integer ``t_i`` and each value a named
integer equal to an if-then-else chain over its levels, with its bounds
(z3's arithmetic core, through the plain ``smt`` tactic), and ``prefix``,
booleans ``b_{i,s} = t_i >= s`` with each comparison one pseudo-Boolean
constraint weighted by the value deltas (z3's SAT core, ``QF_FD``). Neither
wins everywhere: ``ite`` decides sums out of reach and large counts in
seconds where ``prefix`` times out, ``prefix`` finds a sum reached only
through the message order (money in flight) where ``ite`` times out. ``ite``
goes first and checks alone for :data:`_HEAD_START`, which decides most
windows at the cost of one encoding. Contexts are pooled: making one costs
more than solving a small window.

Every answer is checked: a witness must be consistent by the clocks and
violate the formula on its values, or it is a bug, never a result.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cutwatch.predicates._mincut import MISSING_IGRAPH
from cutwatch.predicates._symbolic import (
    And,
    BoolNode,
    Compare,
    Const,
    Linear,
    Not,
    Or,
    Var,
    effective_changes,
    evaluate,
    formula_of,
    specialize,
    variables,
)
from cutwatch.predicates._window import Frontier, Window

__all__ = [
    "ENCODINGS",
    "Edge",
    "Problem",
    "Solution",
    "SolverTimeout",
    "consistency_edges",
    "find_violation",
    "frontier_of",
    "problem_of",
    "solve",
]

ENCODINGS = ("ite", "prefix")
"""The value encodings, in the order they are raced."""

Edge = tuple[int, int, int, int]
"""``(i, s, j, r)``: a cut with ``s`` levels of process ``i`` has at least ``r`` levels of ``j``."""


class SolverTimeout(TimeoutError):
    """z3 found no answer in time (or gave up): the window is undecided, never "no violation"."""


def _z3() -> Any:
    try:
        import z3
    except ImportError:
        raise ImportError(MISSING_IGRAPH) from None
    return z3


# ---------------------------------------------------------------------------------------------------
# The problem: levels, values at each level, consistency between levels
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """A violation on a window, reduced to what it reads (shared by every encoding)."""

    window: Window
    violation: BoolNode
    """The violation with the values that never change in the window folded in."""
    points: dict[int, list[int]]
    """Per process read (window index), the events that change a read value, in order: its levels."""
    steps: dict[Var, list[tuple[int, int]]]
    """Per variable: its value at level 0, then ``(level, value)`` at each level it changes."""
    edges: list[Edge] = field(default_factory=list)

    def levels(self, i: int) -> int:
        return len(self.points[i])

    def size(self) -> int:
        return sum(map(len, self.points.values())) + len(self.edges)


def problem_of(window: Window, violation: object) -> Problem:
    """Reduce ``violation`` (a node or an invariant's return value) to levels on ``window``."""
    node = specialize(formula_of(violation), window)
    read: dict[int, list[Var]] = {}
    for var in sorted(variables(node), key=lambda v: (v.process, v.name)):
        read.setdefault(window.index(var.process), []).append(var)
    changes = {var: effective_changes(window, i, var.name) for i, vs in read.items() for var in vs}
    points = {i: sorted({m for var in vs for m, _ in changes[var]}) for i, vs in sorted(read.items())}
    steps: dict[Var, list[tuple[int, int]]] = {}
    for i, vs in read.items():
        for var in vs:
            start = window.value(i, var.name, 0)
            first = (0, int(start) if start is not None else 0)
            steps[var] = [first, *((bisect.bisect_left(points[i], m) + 1, v) for m, v in changes[var])]
    return Problem(window, node, points, steps, _edges(window, points))


def _edges(window: Window, points: dict[int, list[int]]) -> list[Edge]:
    """Consistency between levels, from the covering steps of the clocks, only where it grows."""
    edges: list[Edge] = []
    for i, mine in points.items():
        grown: dict[int, int] = {}
        at: dict[tuple[int, int], int] = {}
        for m, j, r in window.requirement_steps(i):
            s = bisect.bisect_left(mine, m) + 1  # the first level of i whose event includes event m
            if s > len(mine):
                break  # steps come in event order: none later reaches a level either
            theirs = points.get(j)
            if theirs is None:
                continue
            level = bisect.bisect_right(theirs, r)
            if level > grown.get(j, 0):
                grown[j] = level
                at[(s, j)] = level
        edges.extend((i, s, j, r) for (s, j), r in at.items())
    return edges


def consistency_edges(problem: Problem) -> list[Edge]:
    """The cross-process constraints every encoding adds (a seam for the test that weakens them)."""
    return problem.edges


def frontier_of(problem: Problem, levels: dict[int, int]) -> Frontier:
    """The cut the solver chose: the events up to each chosen level and everything they depend on,
    kept below the next level of each read process (so a wrong encoding shows as an inconsistent cut)."""
    window = problem.window
    frontier = [0] * len(window)
    chosen = {i: problem.points[i][t - 1] for i, t in levels.items() if t > 0}
    for j in range(len(window)):
        need = max((window.required(i, m, j) for i, m in chosen.items()), default=0)
        if j in problem.points:
            t, points = levels[j], problem.points[j]
            cap = points[t] - 1 if t < len(points) else len(window.histories[j].events)
            need = min(max(need, chosen.get(j, 0)), cap)
        frontier[j] = need
    return tuple(frontier)


# ---------------------------------------------------------------------------------------------------
# The encodings
# ---------------------------------------------------------------------------------------------------
class _Low:
    """z3's C API on raw ASTs: z3py's wrappers cost several times the calls themselves (type checks,
    coercions, a Python object per node). z3 keeps a new AST only until the next call unless it is
    referenced, so :meth:`keep` references each one, and :meth:`release` drops them all when the
    attempt ends (a context freed with references still held takes seconds; a clean one can be
    reused)."""

    def __init__(self, z3: Any, ctx: Any) -> None:
        self.z3, self.ctx, self.ref = z3, ctx, ctx.ref()
        self._kept: list[Any] = []
        self.int_sort = z3.Z3_mk_int_sort(self.ref)
        self.bool_sort = z3.Z3_mk_bool_sort(self.ref)
        self.keep(z3.Z3_sort_to_ast(self.ref, self.int_sort))
        self.keep(z3.Z3_sort_to_ast(self.ref, self.bool_sort))
        self.true = self.keep(z3.Z3_mk_true(self.ref))
        self.false = self.keep(z3.Z3_mk_false(self.ref))
        self._numbers: dict[int, Any] = {}

    def keep(self, ast: Any) -> Any:
        self.z3.Z3_inc_ref(self.ref, ast)
        self._kept.append(ast)
        return ast

    def release(self) -> None:
        kept, self._kept = self._kept, []
        with contextlib.suppress(Exception):  # never in the way of an answer: at worst, a slow free
            for ast in kept:
                self.z3.Z3_dec_ref(self.ref, ast)

    def number(self, value: int) -> Any:
        if value not in self._numbers:
            self._numbers[value] = self.keep(self.z3.Z3_mk_numeral(self.ref, str(value), self.int_sort))
        return self._numbers[value]

    def constant(self, name: str, sort: Any) -> Any:
        return self.keep(self.z3.Z3_mk_const(self.ref, self.z3.Z3_mk_string_symbol(self.ref, name), sort))

    def _array(self, items: Sequence[Any]) -> Any:
        return (self.z3.Ast * len(items))(*items)

    def all(self, items: Sequence[Any]) -> Any:
        if not items:
            return self.true
        return self.keep(self.z3.Z3_mk_and(self.ref, len(items), self._array(items)))

    def any(self, items: Sequence[Any]) -> Any:
        if not items:
            return self.false
        return self.keep(self.z3.Z3_mk_or(self.ref, len(items), self._array(items)))

    def implies(self, a: Any, b: Any) -> Any:
        return self.keep(self.z3.Z3_mk_implies(self.ref, a, b))

    def negate(self, a: Any) -> Any:
        return self.keep(self.z3.Z3_mk_not(self.ref, a))

    def equal(self, a: Any, b: Any) -> Any:
        return self.keep(self.z3.Z3_mk_eq(self.ref, a, b))

    def at_least(self, a: Any, value: int) -> Any:
        return self.keep(self.z3.Z3_mk_ge(self.ref, a, self.number(value)))

    def ite(self, condition: Any, then: Any, otherwise: Any) -> Any:
        return self.keep(self.z3.Z3_mk_ite(self.ref, condition, then, otherwise))

    def total(self, items: Sequence[Any]) -> Any:
        if not items:
            return self.number(0)
        return self.keep(self.z3.Z3_mk_add(self.ref, len(items), self._array(items)))

    def times(self, c: int, a: Any) -> Any:
        return a if c == 1 else self.keep(self.z3.Z3_mk_mul(self.ref, 2, self._array([self.number(c), a])))

    def compare(self, op: str, a: Any, b: Any) -> Any:
        if op == "!=":
            return self.negate(self.equal(a, b))
        z3 = self.z3
        make = {"<": z3.Z3_mk_lt, "<=": z3.Z3_mk_le, ">": z3.Z3_mk_gt, ">=": z3.Z3_mk_ge, "==": z3.Z3_mk_eq}
        return self.keep(make[op](self.ref, a, b))

    def pseudo_boolean(self, op: str, terms: Sequence[tuple[Any, int]], bound: int) -> Any:
        """``sum(w * literal) op bound``, weights positive (z3 takes C ints: larger ones are refused)."""
        if op == "!=":
            return self.any([self.pseudo_boolean("<", terms, bound), self.pseudo_boolean(">", terms, bound)])
        bound = {"<": bound - 1, ">": bound + 1}.get(op, bound)
        limit = 2**31 - 1
        if abs(bound) > limit or sum(w for _, w in terms) > limit:
            raise _Unsupported("a pseudo-Boolean weight or bound beyond 32 bits")
        literals = self._array([lit for lit, _ in terms])
        weights = (ctypes.c_int * len(terms))(*(w for _, w in terms))
        make = {"<": self.z3.Z3_mk_pble, "<=": self.z3.Z3_mk_pble, "==": self.z3.Z3_mk_pbeq}
        return self.keep(make.get(op, self.z3.Z3_mk_pbge)(self.ref, len(terms), literals, weights, bound))


class _Stopped(Exception):
    """Another encoding answered first."""


class _Unsupported(Exception):
    """This encoding cannot express the problem (the other one can)."""


Encoded = tuple[Any, Callable[[Any], dict[int, int]]]
"""A z3 solver holding the problem, and how to read each process's level off its model."""


class _Builder:
    """What both encodings share: the raw API, the stop flag, and the walk over the formula."""

    def __init__(self, z3: Any, ctx: Any, problem: Problem, stop: threading.Event) -> None:
        self.low = _Low(z3, ctx)
        self.problem, self.stop = problem, stop
        self._built = 0
        self.solver = self.make_solver(z3, ctx)

    def make_solver(self, z3: Any, ctx: Any) -> Any:
        raise NotImplementedError

    def add(self, ast: Any) -> None:
        self.low.z3.Z3_solver_assert(self.low.ref, self.solver.solver, ast)

    def tick(self) -> None:
        self._built += 1
        if self._built % 256 == 0 and self.stop.is_set():
            raise _Stopped

    def boolean(self, node: BoolNode) -> Any:
        self.tick()
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, And):
            return self.low.all([self.boolean(p) for p in node.parts])
        if isinstance(node, Or):
            return self.low.any([self.boolean(p) for p in node.parts])
        if isinstance(node, Not):
            return self.low.negate(self.boolean(node.part))
        return self.low.true if node.value else self.low.false

    def compare(self, node: Compare) -> Any:
        raise NotImplementedError

    def encode(self) -> Encoded:
        raise NotImplementedError


class _Ite(_Builder):
    """``t_i`` integers; values are if-then-else chains over the levels where they change.

    The plain ``smt`` tactic, not z3's default solver: its preprocessing (eliminating the named
    values, lifting the chains) made a sum out of reach take seconds instead of a bound conflict.
    """

    def make_solver(self, z3: Any, ctx: Any) -> Any:
        return z3.Tactic("smt", ctx=ctx).solver()

    def encode(self) -> Encoded:
        low, problem = self.low, self.problem
        self.t = {i: low.constant(f"t{i}", low.int_sort) for i in problem.points}
        for i, t in self.t.items():
            self.add(low.at_least(t, 0))
            self.add(low.compare("<=", t, low.number(problem.levels(i))))
        for i, s, j, r in consistency_edges(problem):
            self.tick()
            self.add(low.implies(low.at_least(self.t[i], s), low.at_least(self.t[j], r)))
        self.values: dict[Var, Any] = {}
        self.add(self.boolean(problem.violation))
        handles = {i: low.z3.ArithRef(t, low.ctx) for i, t in self.t.items()}

        def levels(model: Any) -> dict[int, int]:
            return {i: model.eval(t, model_completion=True).as_long() for i, t in handles.items()}

        return self.solver, levels

    def value(self, var: Var) -> Any:
        if var not in self.values:
            low = self.low
            steps = self.problem.steps[var]
            t = self.t[self.problem.window.index(var.process)]
            expr = low.number(steps[0][1])
            for level, v in steps[1:]:
                self.tick()
                expr = low.ite(low.at_least(t, level), low.number(v), expr)
            # A named value with its bounds: a sum out of reach fails on bounds, not case splits.
            value = low.constant(f"v{len(self.values)}", low.int_sort)
            self.add(low.equal(value, expr))
            self.add(low.at_least(value, min(v for _, v in steps)))
            self.add(low.compare("<=", value, low.number(max(v for _, v in steps))))
            self.values[var] = value
        return self.values[var]

    def compare(self, node: Compare) -> Any:
        low = self.low
        parts = [low.number(node.left.const)]
        for atom, c in node.left.terms:
            if isinstance(atom, Var):
                parts.append(low.times(c, self.value(atom)))
            else:
                one = low.ite(self.boolean(atom.formula), low.number(1), low.number(0))
                parts.append(low.times(c, one))
        return low.compare(node.op, low.total(parts), low.number(0))


class _Prefix(_Builder):
    """Booleans ``b_{i,s} = (t_i >= s)``; each comparison one pseudo-Boolean constraint over them."""

    def make_solver(self, z3: Any, ctx: Any) -> Any:
        return z3.SolverFor("QF_FD", ctx=ctx)  # the SAT core, with cardinality and PB constraints

    def encode(self) -> Encoded:
        low, problem = self.low, self.problem
        self.b = {
            i: [
                low.true,
                *(low.constant(f"b{i}_{s}", low.bool_sort) for s in range(1, problem.levels(i) + 1)),
            ]
            for i in problem.points
        }
        for bs in self.b.values():
            for s in range(2, len(bs)):
                self.tick()
                self.add(low.implies(bs[s], bs[s - 1]))
        for i, s, j, r in consistency_edges(problem):
            self.tick()
            self.add(low.implies(self.b[i][s], self.b[j][r]))
        self.fresh = 0
        self.add(self.boolean(problem.violation))
        handles = {i: [low.z3.BoolRef(b, low.ctx) for b in bs] for i, bs in self.b.items()}

        def levels(model: Any) -> dict[int, int]:
            out = {}
            for i, bs in handles.items():
                lo, hi = 0, len(bs) - 1  # the chain makes the true ones a prefix: binary search
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if low.z3.is_true(model.eval(bs[mid], model_completion=True)):
                        lo = mid
                    else:
                        hi = mid - 1
                out[i] = lo
            return out

        return self.solver, levels

    def compare(self, node: Compare) -> Any:
        low = self.low
        weights: dict[tuple[int, int], int] = {}  # (process, level) -> weight; (-1, n): auxiliaries
        literals: dict[tuple[int, int], Any] = {}
        const = node.left.const
        for atom, c in node.left.terms:
            if isinstance(atom, Var):
                i = self.problem.window.index(atom.process)
                steps = self.problem.steps[atom]
                const += c * steps[0][1]
                for (_, before), (level, v) in itertools.pairwise(steps):
                    self.tick()
                    weights[(i, level)] = weights.get((i, level), 0) + c * (v - before)
                    literals[(i, level)] = self.b[i][level]
            else:
                self.fresh += 1
                aux = low.constant(f"a{self.fresh}", low.bool_sort)
                self.add(low.equal(aux, self.boolean(atom.formula)))
                weights[(-1, self.fresh)] = c
                literals[(-1, self.fresh)] = aux
        terms = []
        for key, w in weights.items():
            if w > 0:
                terms.append((literals[key], w))
            elif w < 0:  # w*l = w + |w|*(not l): weights stay positive
                const += w
                terms.append((low.negate(literals[key]), -w))
        if not terms:
            return low.true if evaluate(Compare(node.op, Linear((), const)), {}) else low.false
        return low.pseudo_boolean(node.op, terms, -const)


_ENCODERS: dict[str, type[_Ite] | type[_Prefix]] = {"ite": _Ite, "prefix": _Prefix}


# ---------------------------------------------------------------------------------------------------
# Solving: the race
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Solution:
    """What z3 found: a violating cut (None: there is none), which encoding answered, and the size."""

    frontier: Frontier | None
    encoding: str
    duration: float
    processes: int
    """Processes with levels: the solver's variables are their levels."""
    levels: int
    edges: int


Turn = tuple["threading.Event | None", threading.Event]
"""When an encoding may start building (the previous one has built), and the event it sets when built."""

_HEAD_START = 0.2
"""Seconds the encoding before gets to check alone: most windows are decided within it, at the
cost of one encoding, and a hard one loses 0.2 s of the race."""
_REUSE_BELOW = 5_000
"""Contexts that held a problem smaller than this (levels and edges) go back to the pool."""


@dataclass
class _Lease:
    """A context lent to one attempt; the stopper interrupts it only while the attempt runs (an
    interrupt that landed after the context went back to the pool would stop someone else)."""

    ctx: Any
    active: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def interrupt(self) -> None:
        with self.lock, contextlib.suppress(Exception):  # "canceled": the error z3 set in that context
            if self.active:
                self.ctx.interrupt()

    def end(self) -> None:
        with self.lock:
            self.active = False


class _Pool:
    """Idle z3 contexts per encoding. Making one costs milliseconds, more than solving a small
    window; an idle one is clean (every AST released, interrupts do not linger)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[Any]] = {}
        self._pid = os.getpid()

    def take(self, z3: Any, name: str) -> Any:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: never share the parent's contexts
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(name)
            if idle:
                return idle.pop()
        return z3.Context()

    def give(self, name: str, ctx: Any) -> None:
        with self._lock:
            idle = self._idle.setdefault(name, [])
            if len(idle) < 2 and self._pid == os.getpid():
                idle.append(ctx)


_POOL = _Pool()


def _attempt(
    name: str,
    z3: Any,
    problem: Problem,
    deadline: float,
    stop: threading.Event,
    leases: dict[str, _Lease],
    turn: Turn,
) -> tuple[str, str, Any]:
    """One encoding, start to answer: (name, 'sat' | 'unsat' | 'unknown' | 'stopped', detail).

    Encodings build one after the other: building is Python and holds the GIL, so two at once only
    slow each other down, while one's ``check()`` (C, without the GIL) overlaps the next one's build.
    Each waits :data:`_HEAD_START` more before it starts.
    """
    after, built = turn
    try:
        if after is not None:
            while not after.wait(0.01) and not stop.is_set():
                pass
            stop.wait(_HEAD_START)
        if stop.is_set():
            return name, "stopped", None
        lease = leases[name] = _Lease(_POOL.take(z3, name))
        try:
            outcome = _run(name, z3, lease.ctx, problem, deadline, stop, built)
        finally:
            lease.end()
        # _run has returned: no object of the context is left to be freed later, in another thread.
        if problem.size() < _REUSE_BELOW:
            _POOL.give(name, lease.ctx)
        return outcome
    finally:
        built.set()


def _run(
    name: str,
    z3: Any,
    ctx: Any,
    problem: Problem,
    deadline: float,
    stop: threading.Event,
    built: threading.Event,
) -> tuple[str, str, Any]:
    """Build and check in ``ctx``; every z3 object made here is gone when it returns (not when it
    raises: a context whose attempt failed is not reused)."""
    builder = _ENCODERS[name](z3, ctx, problem, stop)
    try:
        try:
            solver, levels = builder.encode()
        finally:
            built.set()
        remaining = deadline - time.perf_counter()
        if remaining <= 0 or stop.is_set():
            return name, "unknown" if remaining <= 0 else "stopped", "timeout while encoding"
        solver.set("timeout", max(1, int(remaining * 1000)))
        result = solver.check()
        if result == z3.sat:
            return name, "sat", levels(solver.model())
        if result == z3.unsat:
            return name, "unsat", None
        return name, "unknown", solver.reason_unknown()
    except _Stopped:
        return name, "stopped", None
    except _Unsupported as exc:
        return name, "unknown", str(exc)
    except z3.Z3Exception:
        if stop.is_set():  # interrupted: z3 may say so with an exception ("canceled")
            return name, "stopped", None
        raise
    finally:
        builder.low.release()


_GRACE = 0.5
"""Seconds past the deadline before the caller stops waiting for z3 to honour its own timeout."""


def solve(
    window: Window, violation: object, *, timeout: float, encodings: Sequence[str] = ENCODINGS
) -> Solution:
    """Race ``encodings`` on whether some consistent cut of ``window`` satisfies ``violation``.

    Raises :class:`SolverTimeout` when none answers within ``timeout`` seconds (encoding included).
    """
    started = time.perf_counter()
    unknown = [e for e in encodings if e not in _ENCODERS]
    if unknown or not encodings:
        raise ValueError(f"unknown z3 encodings {unknown}; choose among {ENCODINGS}")
    problem = problem_of(window, violation)
    size = (len(problem.points), sum(map(len, problem.points.values())), len(problem.edges))
    if isinstance(problem.violation, Const):
        frontier = window.bottom if problem.violation.value else None
        return _checked(problem, violation, frontier, "constant", started, size)
    z3 = _z3()
    deadline = started + timeout
    stop = threading.Event()
    leases: dict[str, _Lease] = {}
    answers: queue.Queue[tuple[str, str, Any]] = queue.Queue()

    def run(name: str, turn: Turn) -> None:
        try:
            answers.put(_attempt(name, z3, problem, deadline, stop, leases, turn))
        except BaseException as exc:  # reported to the caller's thread
            answers.put((name, "error", exc))

    threads: list[threading.Thread] = []
    after: threading.Event | None = None
    for name in encodings:
        built = threading.Event()
        threads.append(threading.Thread(target=run, args=(name, (after, built)), daemon=True))
        after = built
    for thread in threads:
        thread.start()
    outcomes: list[tuple[str, str, Any]] = []
    while len(outcomes) < len(encodings):
        try:
            outcome = answers.get(timeout=max(0.0, deadline - time.perf_counter()) + _GRACE)
        except queue.Empty:
            break
        outcomes.append(outcome)
        if outcome[1] in ("sat", "unsat"):
            break
    _stop_the_others(stop, leases, threads)
    for name, status, detail in outcomes:
        if status == "sat":
            return _checked(problem, violation, frontier_of(problem, detail), name, started, size)
        if status == "unsat":
            return _checked(problem, violation, None, name, started, size)
    for _, status, detail in outcomes:
        if status == "error":
            raise detail
    said = "; ".join(f"{name}: {detail}" for name, _, detail in outcomes) or "no answer"
    raise SolverTimeout(f"z3 did not decide the violation within {timeout:g} s ({said})")


def _stop_the_others(
    stop: threading.Event, leases: dict[str, _Lease], threads: list[threading.Thread]
) -> None:
    """Interrupt the encodings still running, until they return (an interrupt that lands just
    before ``check()`` starts is lost, so it is repeated), without making the caller wait."""
    stop.set()

    def reap() -> None:
        while any(t.is_alive() for t in threads):
            for lease in list(leases.values()):
                lease.interrupt()
            time.sleep(0.01)

    if any(t.is_alive() for t in threads):
        threading.Thread(target=reap, daemon=True).start()


def _checked(
    problem: Problem,
    violation: object,
    frontier: Frontier | None,
    encoding: str,
    started: float,
    size: tuple[int, int, int],
) -> Solution:
    """A witness is used only once the clocks call it consistent and the formula holds on it."""
    if frontier is not None:
        problem.window.check_witness(frontier)
        if not evaluate(violation, problem.window.values_at(frontier)):
            raise AssertionError(f"z3 ({encoding}) chose the cut {frontier}, which does not violate")
    return Solution(frontier, encoding, time.perf_counter() - started, *size)


def find_violation(
    window: Window, violation_expr: object, *, timeout: float, encodings: Sequence[str] = ENCODINGS
) -> Frontier | None:
    """A consistent cut of ``window`` where ``violation_expr`` holds; None when there is none.

    Raises :class:`SolverTimeout` when z3 cannot tell within ``timeout`` seconds.
    """
    return solve(window, violation_expr, timeout=timeout, encodings=encodings).frontier
