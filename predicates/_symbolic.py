"""The symbolic subset lattice invariants are written in: linear sums, counts and comparisons of state values.

A lattice invariant is not run once per cut: the collector asks whether
*some* consistent cut between two snapshots violates it, and there may be
exponentially many. So the function runs once, on a :class:`LatticeView`
whose values are symbols, and returns a formula the decision procedures
can read: ``count(cut.values("leader", service="lease")) <= 1``. The
operators build formulas (``+ - *`` by integers, comparisons, ``& | ~``);
what would need a concrete value (``and``, ``or``, ``not``, ``if``,
``bool()``, products of two values) raises :class:`SubsetError`, at load
time, on the :meth:`LatticeView.universal` view, saying what to write
instead.

A state value reads as an integer (a boolean as 0/1) and, used as a
boolean, as "is true / non-zero"; a process without a value reads as 0
and False.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from cutwatch.core.errors import SubsetError
from cutwatch.predicates._window import Window

__all__ = [
    "And",
    "BoolNode",
    "Classification",
    "Compare",
    "Conjunctive",
    "Const",
    "Expr",
    "Formula",
    "General",
    "Indicator",
    "LatticeView",
    "Linear",
    "Not",
    "Or",
    "Part",
    "Relational",
    "SubsetError",
    "Term",
    "Var",
    "all_of",
    "any_of",
    "classify",
    "count",
    "effective_changes",
    "evaluate",
    "explain",
    "formula_of",
    "implies",
    "linear_form",
    "processes_of",
    "render",
    "specialize",
    "substitute",
    "total",
    "variables",
    "violation_of",
]


_TRUTH = (
    "a lattice invariant builds a formula over every consistent cut, so `and`, `or`, `not`, `if`, "
    "`bool()` and chained comparisons (`0 <= x <= 9`) cannot look at its values: write `a & b` "
    "for `a and b`, `a | b` for `a or b`, `~a` for `not a`, `all_of(...)` / `any_of(...)` for "
    "all() / any(), `implies(a, b)` for `if a: ... b`, and `(0 <= x) & (x <= 9)` (with parentheses: "
    "`&` binds tighter than comparisons)"
)
_LINEAR = "lattice invariants are linear: multiply state values by integer constants only"


# ---------------------------------------------------------------------------------------------------
# The nodes: immutable, hashable, compared by structure
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Var:
    """The value of state ``name`` at ``process``; ``boolean``: every recorded value is a bool."""

    process: str
    name: str
    boolean: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Indicator:
    """1 when ``formula`` holds, 0 otherwise: what ``count`` adds up."""

    formula: BoolNode


Atom: TypeAlias = "Var | Indicator"


@dataclass(frozen=True)
class Linear:
    """``sum(coefficient * atom) + const``; atoms distinct, coefficients non-zero."""

    terms: tuple[tuple[Atom, int], ...] = ()
    const: int = 0


@dataclass(frozen=True)
class Compare:
    """``left op 0``, ``op`` one of ``< <= > >= == !=``."""

    op: str
    left: Linear


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class And:
    parts: tuple[BoolNode, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[BoolNode, ...]


@dataclass(frozen=True)
class Not:
    part: BoolNode


BoolNode: TypeAlias = "Const | Compare | And | Or | Not"

_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_HOLDS: dict[str, Callable[[int], bool]] = {
    "<": lambda v: v < 0,
    "<=": lambda v: v <= 0,
    ">": lambda v: v > 0,
    ">=": lambda v: v >= 0,
    "==": lambda v: v == 0,
    "!=": lambda v: v != 0,
}
TRUE = Const(True)
FALSE = Const(False)


def _linear(parts: Iterable[tuple[Atom, int]], const: int) -> Linear:
    merged: dict[Atom, int] = {}
    for atom, c in parts:
        merged[atom] = merged.get(atom, 0) + c
    return Linear(tuple((a, c) for a, c in merged.items() if c), const)


def _add(a: Linear, b: Linear, scale: int = 1) -> Linear:
    return _linear([*a.terms, *((atom, c * scale) for atom, c in b.terms)], a.const + scale * b.const)


def _scale(a: Linear, k: int) -> Linear:
    return Linear(tuple((atom, c * k) for atom, c in a.terms), a.const * k) if k else Linear()


def _compare(op: str, left: Linear) -> BoolNode:
    return Const(_HOLDS[op](left.const)) if not left.terms else Compare(op, left)


def _and(parts: Iterable[BoolNode]) -> BoolNode:
    flat: list[BoolNode] = []
    for p in parts:
        if isinstance(p, Const):
            if not p.value:
                return FALSE
        elif isinstance(p, And):
            flat.extend(p.parts)
        else:
            flat.append(p)
    return TRUE if not flat else flat[0] if len(flat) == 1 else And(tuple(flat))


def _or(parts: Iterable[BoolNode]) -> BoolNode:
    flat: list[BoolNode] = []
    for p in parts:
        if isinstance(p, Const):
            if p.value:
                return TRUE
        elif isinstance(p, Or):
            flat.extend(p.parts)
        else:
            flat.append(p)
    return FALSE if not flat else flat[0] if len(flat) == 1 else Or(tuple(flat))


def _not(p: BoolNode) -> BoolNode:
    if isinstance(p, Const):
        return Const(not p.value)
    return p.part if isinstance(p, Not) else Not(p)


def _indicator(f: BoolNode) -> Linear:
    if isinstance(f, Const):
        return Linear((), int(f.value))
    return Linear(((Indicator(f), 1),), 0)


# ---------------------------------------------------------------------------------------------------
# What predicates handle: Term (an integer expression) and Formula (a boolean one)
# ---------------------------------------------------------------------------------------------------
def _as_linear(value: object, what: str = "operand") -> Linear:
    if isinstance(value, Term):
        return value.node
    if isinstance(value, Formula):
        return _indicator(value.node)
    if isinstance(value, int):
        return Linear((), int(value))
    raise SubsetError(
        f"{what} {value!r} ({type(value).__name__}): lattice invariants compute with integer and "
        "boolean state values and integer constants only"
    )


def _as_bool(value: object) -> BoolNode:
    if isinstance(value, Formula):
        return value.node
    if isinstance(value, bool):
        return Const(value)
    if isinstance(value, Term):
        node = value.node
        if not node.terms:
            return Const(bool(node.const))
        if len(node.terms) == 1 and node.const == 0 and isinstance(node.terms[0][0], Var):
            return Compare("!=", Linear(node.terms[:1]))
        raise SubsetError(
            f"{value!r} is a number, not a condition: compare it (`(...) != 0`, `(...) > 0`) to use it "
            "with `& | ~`, all_of, any_of, count or implies"
        )
    if isinstance(value, int):
        return Const(bool(value))
    raise SubsetError(
        f"{value!r} ({type(value).__name__}) is not a condition: use comparisons of state values, "
        "boolean state values and True/False"
    )


class Term:
    """An integer expression over state values: ``+ - *`` by integers, comparisons give a :class:`Formula`.

    A single state value also works as a condition (``cut.value(p, "leader") & ...``): true when
    it is true or non-zero.
    """

    __slots__ = ("node",)

    def __init__(self, node: Linear) -> None:
        self.node = node

    def __add__(self, other: object) -> Term:
        return Term(_add(self.node, _as_linear(other)))

    def __radd__(self, other: object) -> Term:
        return Term(_add(_as_linear(other), self.node))

    def __sub__(self, other: object) -> Term:
        return Term(_add(self.node, _as_linear(other), -1))

    def __rsub__(self, other: object) -> Term:
        return Term(_add(_as_linear(other), self.node, -1))

    def __mul__(self, other: object) -> Term:
        factor = _as_linear(other, "factor")
        if factor.terms and self.node.terms:
            raise SubsetError(f"{self!r} * {other!r}: a product of two state values; {_LINEAR}")
        if factor.terms:
            return Term(_scale(factor, self.node.const))
        return Term(_scale(self.node, factor.const))

    __rmul__ = __mul__

    def __neg__(self) -> Term:
        return Term(_scale(self.node, -1))

    def __pos__(self) -> Term:
        return self

    def _refuse(self, *_: object) -> Any:
        raise SubsetError(f"only + - and * by an integer work on {self!r}; {_LINEAR}")

    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _refuse
    __pow__ = __rpow__ = __lshift__ = __rshift__ = __abs__ = __divmod__ = __rdivmod__ = _refuse

    def __lt__(self, other: object) -> Formula:
        return Formula(_compare("<", _add(self.node, _as_linear(other), -1)))

    def __le__(self, other: object) -> Formula:
        return Formula(_compare("<=", _add(self.node, _as_linear(other), -1)))

    def __gt__(self, other: object) -> Formula:
        return Formula(_compare(">", _add(self.node, _as_linear(other), -1)))

    def __ge__(self, other: object) -> Formula:
        return Formula(_compare(">=", _add(self.node, _as_linear(other), -1)))

    def __eq__(self, other: object) -> Formula:  # type: ignore[override]
        return Formula(_compare("==", _add(self.node, _as_linear(other), -1)))

    def __ne__(self, other: object) -> Formula:  # type: ignore[override]
        return Formula(_compare("!=", _add(self.node, _as_linear(other), -1)))

    __hash__ = None  # type: ignore[assignment]

    def __and__(self, other: object) -> Formula:
        return Formula(_and([_as_bool(self), _as_bool(other)]))

    def __rand__(self, other: object) -> Formula:
        return Formula(_and([_as_bool(other), _as_bool(self)]))

    def __or__(self, other: object) -> Formula:
        return Formula(_or([_as_bool(self), _as_bool(other)]))

    def __ror__(self, other: object) -> Formula:
        return Formula(_or([_as_bool(other), _as_bool(self)]))

    def __xor__(self, other: object) -> Formula:
        return _xor(_as_bool(self), _as_bool(other))

    def __rxor__(self, other: object) -> Formula:
        return _xor(_as_bool(other), _as_bool(self))

    def __invert__(self) -> Formula:
        return Formula(_not(_as_bool(self)))

    def __bool__(self) -> bool:
        raise SubsetError(_TRUTH)

    def __index__(self) -> int:
        raise SubsetError(f"{self!r} has no value until a cut is chosen; {_TRUTH}")

    __int__ = __float__ = __complex__ = __index__

    def __repr__(self) -> str:
        return f"Term({_render_linear(self.node)})"


class Formula:
    """A condition over state values: combine with ``& | ^ ~``, ``all_of``, ``any_of``, ``implies``.

    Like a Python bool it is also a number (1 or 0) in sums and comparisons.
    """

    __slots__ = ("node",)

    def __init__(self, node: BoolNode) -> None:
        self.node = node

    def __and__(self, other: object) -> Formula:
        return Formula(_and([self.node, _as_bool(other)]))

    def __rand__(self, other: object) -> Formula:
        return Formula(_and([_as_bool(other), self.node]))

    def __or__(self, other: object) -> Formula:
        return Formula(_or([self.node, _as_bool(other)]))

    def __ror__(self, other: object) -> Formula:
        return Formula(_or([_as_bool(other), self.node]))

    def __xor__(self, other: object) -> Formula:
        return _xor(self.node, _as_bool(other))

    def __rxor__(self, other: object) -> Formula:
        return _xor(_as_bool(other), self.node)

    def __invert__(self) -> Formula:
        return Formula(_not(self.node))

    def _number(self) -> Term:
        return Term(_indicator(self.node))

    def __add__(self, other: object) -> Term:
        return self._number() + other

    def __radd__(self, other: object) -> Term:
        return other + self._number()

    def __sub__(self, other: object) -> Term:
        return self._number() - other

    def __rsub__(self, other: object) -> Term:
        return other - self._number()

    def __mul__(self, other: object) -> Term:
        return self._number() * other

    __rmul__ = __mul__

    def __neg__(self) -> Term:
        return -self._number()

    def _refuse(self, *_: object) -> Any:
        raise SubsetError(f"only + - and * by an integer work on {self!r} (1 or 0); {_LINEAR}")

    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _refuse
    __pow__ = __rpow__ = __lshift__ = __rshift__ = __abs__ = __divmod__ = __rdivmod__ = _refuse

    def __index__(self) -> int:
        raise SubsetError(f"{self!r} has no value until a cut is chosen; {_TRUTH}")

    __int__ = __float__ = __complex__ = __index__

    def __lt__(self, other: object) -> Formula:
        return self._number() < other

    def __le__(self, other: object) -> Formula:
        return self._number() <= other

    def __gt__(self, other: object) -> Formula:
        return self._number() > other

    def __ge__(self, other: object) -> Formula:
        return self._number() >= other

    def __eq__(self, other: object) -> Formula:  # type: ignore[override]
        return self._number() == other

    def __ne__(self, other: object) -> Formula:  # type: ignore[override]
        return self._number() != other

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        raise SubsetError(_TRUTH)

    def __repr__(self) -> str:
        return f"Formula({render(self.node)})"


def _xor(a: BoolNode, b: BoolNode) -> Formula:
    return Formula(_or([_and([a, _not(b)]), _and([_not(a), b])]))


Expr: TypeAlias = "Formula | Term | bool"
"""What a lattice invariant may return: a formula, a single boolean state value, or a constant."""


def _items(items: tuple[object, ...]) -> Iterable[object]:
    """``f(a, b, c)`` or ``f(iterable)``."""
    if len(items) == 1 and not isinstance(items[0], (Term, Formula, int)):
        only = items[0]
        if isinstance(only, Iterable) and not isinstance(only, (str, bytes)):
            return only
    return items


def total(*terms: object) -> Term:
    """The sum of integer terms (``total(cut.values("balance"))``); Python's ``sum`` works too."""
    linear = [_as_linear(item) for item in _items(terms)]
    return Term(_linear([t for lin in linear for t in lin.terms], sum(lin.const for lin in linear)))


def count(*conditions: object) -> Term:
    """How many of ``conditions`` hold (``count(cut.values("leader"))``: how many leaders)."""
    return total(Term(_indicator(_as_bool(c))) for c in _items(conditions))


def all_of(*conditions: object) -> Formula:
    """Every condition holds: ``all_of(v >= 0 for v in cut.values("balance"))``; ``all()`` cannot."""
    return Formula(_and(_as_bool(c) for c in _items(conditions)))


def any_of(*conditions: object) -> Formula:
    """Some condition holds; ``any()`` cannot, it needs a truth value."""
    return Formula(_or(_as_bool(c) for c in _items(conditions)))


def implies(premise: object, conclusion: object) -> Formula:
    """``~premise | conclusion``: what ``if premise: return conclusion`` means in a formula."""
    return Formula(_or([_not(_as_bool(premise)), _as_bool(conclusion)]))


def formula_of(returned: object) -> BoolNode:
    """The formula a lattice invariant returned (a :class:`Formula`, a state term or a bool)."""
    if isinstance(returned, (Formula, Term, bool)):
        return _as_bool(returned)
    if isinstance(returned, (Const, Compare, And, Or, Not)):
        return returned
    raise SubsetError(
        f"a lattice invariant returned {type(returned).__name__} {returned!r}: return a comparison of "
        "state values (`count(...) <= 1`, `total(...) == 300`), a combination of them with `& | ~`, "
        "all_of, any_of or implies, or True/False"
    )


# ---------------------------------------------------------------------------------------------------
# The view a lattice invariant reads
# ---------------------------------------------------------------------------------------------------
_VIEW_API = (
    "cut.values(name, service=None), cut.value(process, name), cut.processes(service=None) and cut.services()"
)
_UNIVERSAL_SERVICE = "*"


class LatticeView:
    """The cut a lattice invariant sees: symbolic state values, one :class:`Term` per process and name.

    Build it with :meth:`of_cut` (a sampled cut's states), :meth:`of_window`
    (every consistent cut of a window at once) or :meth:`universal` (load-time
    validation: any service and name has two processes). ``names_read``
    collects the state names the invariant asked for: what agents must record.
    """

    def __init__(
        self,
        services: Mapping[str, str],
        has: Callable[[str, str], bool],
        boolean: Callable[[str, str], bool],
        *,
        universal: bool = False,
    ) -> None:
        self._service = dict(sorted(services.items()))
        self._has = has
        self._boolean = boolean
        self._universal = universal
        self.names_read: set[str] = set()

    # Construction --------------------------------------------------------------------------------
    @classmethod
    def of_cut(cls, states: Mapping[str, Mapping[str, Any]]) -> LatticeView:
        """The view of one cut: ``states`` as in ``Cut.states`` (``{pid: {"service", "state"}}``)."""
        services: dict[str, str] = {}
        values: dict[str, Mapping[str, Any]] = {}
        for pid, entry in states.items():
            services[str(pid)] = str(entry.get("service", "")) if isinstance(entry, Mapping) else ""
            state = entry.get("state") if isinstance(entry, Mapping) else None
            values[str(pid)] = state if isinstance(state, Mapping) else {}
        return cls(
            services,
            lambda p, n: n in values.get(p, {}),
            lambda p, n: isinstance(values.get(p, {}).get(n), bool),
        )

    @classmethod
    def of_window(cls, window: Window) -> LatticeView:
        """The view of every consistent cut of ``window``; a process whose history is not whole
        counts as having every name, so a formula over it reads it and the window is undecided."""
        names = {h.process: (h.names(), bool(h.missing)) for h in window.histories}
        booleans: dict[tuple[str, str], bool] = {}

        def boolean(p: str, n: str) -> bool:
            if (p, n) not in booleans:
                booleans[(p, n)] = _all_bool(window, window.index(p), n)
            return booleans[(p, n)]

        return cls(
            {h.process: h.service for h in window.histories},
            lambda p, n: n in names[p][0] or names[p][1],
            lambda p, n: p in names and boolean(p, n),
        )

    @classmethod
    def universal(cls) -> LatticeView:
        """A view where every service and every name has two processes: load-time validation."""
        return cls({}, lambda p, n: True, lambda p, n: False, universal=True)

    # What invariants call ------------------------------------------------------------------------
    def services(self) -> list[str]:
        """The services of the cut's processes, sorted."""
        if self._universal:
            return [_UNIVERSAL_SERVICE]
        return sorted(set(self._service.values()))

    def processes(self, service: str | None = None) -> list[str]:
        """The processes (of ``service``), sorted."""
        if self._universal:
            return [f"{service or _UNIVERSAL_SERVICE}#{k}" for k in (1, 2)]
        return [p for p, s in self._service.items() if service is None or s == service]

    def values(self, name: str, service: str | None = None) -> list[Term]:
        """One term per process (of ``service``) that has state ``name``, in process order."""
        self.names_read.add(str(name))
        return [self._term(p, name) for p in self.processes(service) if self._has(p, name)]

    def value(self, process: str, name: str) -> Term:
        """Process ``process``'s state ``name`` (0 / False while it has none)."""
        self.names_read.add(str(name))
        if not self._universal and process not in self._service:
            raise KeyError(f"no process {process!r} in this cut (its processes: {', '.join(self._service)})")
        return self._term(process, name)

    def _term(self, process: str, name: str) -> Term:
        return Term(Linear(((Var(process, name, self._boolean(process, name)), 1),), 0))

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        raise SubsetError(
            f"cut.{attribute}: a lattice invariant reads integer and boolean state values only, "
            f"through {_VIEW_API}"
        )


def _all_bool(window: Window, i: int, name: str) -> bool:
    start = window.histories[i].start.get(name)
    return (start is None or isinstance(start, bool)) and all(
        isinstance(v, bool) for _, v in window.changes(i, name)
    )


# ---------------------------------------------------------------------------------------------------
# Reading formulas: variables, concrete evaluation, rendering, explanation
# ---------------------------------------------------------------------------------------------------
def _walk_atoms(node: BoolNode) -> Iterator[Atom]:
    stack: list[BoolNode] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Compare):
            for atom, _ in n.left.terms:
                yield atom
                if isinstance(atom, Indicator):
                    stack.append(atom.formula)
        elif isinstance(n, (And, Or)):
            stack.extend(n.parts)
        elif isinstance(n, Not):
            stack.append(n.part)


def variables(node: BoolNode) -> set[Var]:
    """The state values a formula reads."""
    return {a for a in _walk_atoms(node) if isinstance(a, Var)}


def processes_of(node: BoolNode) -> set[str]:
    return {v.process for v in variables(node)}


Values = Mapping[tuple[str, str], object]


def _reader(values: Values) -> Callable[[Var], int]:
    def read(var: Var) -> int:
        value = values.get((var.process, var.name))
        if value is None:
            return 0
        if isinstance(value, int):
            return int(value)
        raise ValueError(
            f"process {var.process!r}: state {var.name!r} is {type(value).__name__} {value!r}; a lattice "
            "invariant reads integer and boolean values only"
        )

    return read


def _int(lin: Linear, read: Callable[[Var], int]) -> int:
    value = lin.const
    for atom, c in lin.terms:
        value += c * (read(atom) if isinstance(atom, Var) else int(_bool(atom.formula, read)))
    return value


def _bool(node: BoolNode, read: Callable[[Var], int]) -> bool:
    if isinstance(node, Compare):
        return _HOLDS[node.op](_int(node.left, read))
    if isinstance(node, And):
        return all(_bool(p, read) for p in node.parts)
    if isinstance(node, Or):
        return any(_bool(p, read) for p in node.parts)
    if isinstance(node, Not):
        return not _bool(node.part, read)
    return node.value


def evaluate(expr: object, values: Values) -> bool:
    """``expr`` (what an invariant returned, or a node) with ``values[(process, name)]``; absent: 0/False.

    A value read that is not an int or a bool raises ``ValueError`` naming the process and name.
    """
    return _bool(formula_of(expr), _reader(values))


def _render_atom(atom: Atom) -> str:
    return f"{atom.process}.{atom.name}" if isinstance(atom, Var) else render(atom.formula)


def _render_linear(lin: Linear, *, with_const: bool = True) -> str:
    pieces: list[tuple[int, str]] = [(c, _render_atom(a)) for a, c in lin.terms if isinstance(a, Var)]
    counted = [_render_atom(a) for a, c in lin.terms if isinstance(a, Indicator) and c == 1]
    if counted:
        pieces.append((1, f"count({', '.join(counted)})"))
    pieces += [(c, f"count({_render_atom(a)})") for a, c in lin.terms if isinstance(a, Indicator) and c != 1]
    if with_const and lin.const:
        pieces.append((lin.const, ""))
    text = ""
    for c, body in pieces:
        magnitude = abs(c)
        piece = str(magnitude) if not body else body if magnitude == 1 else f"{magnitude}*{body}"
        text += (" - " if c < 0 else " + ") + piece if text else ("-" if c < 0 else "") + piece
    return text or "0"


def render(node: BoolNode) -> str:
    """A formula as readable text: ``count(p1.leader, p2.leader) <= 1``."""
    if isinstance(node, Compare):
        only = node.left.terms[0][0] if len(node.left.terms) == 1 else None
        plain = isinstance(only, Var) and only.boolean and node.left == Linear(((only, 1),))
        if plain and node.op in ("!=", "=="):
            return ("~" if node.op == "==" else "") + _render_atom(node.left.terms[0][0])
        return f"{_render_linear(node.left, with_const=False)} {node.op} {-node.left.const}"
    if isinstance(node, (And, Or)):
        glue = " & " if isinstance(node, And) else " | "
        return glue.join(f"({render(p)})" if isinstance(p, (And, Or)) else render(p) for p in node.parts)
    if isinstance(node, Not):
        return f"~({render(node.part)})"
    return str(node.value)


_MAX_ATOMS = 16
_MAX_VALUES = 64
_MAX_TEXT = 400


def _deciding(node: BoolNode, read: Callable[[Var], int], out: list[Compare]) -> None:
    """The comparisons that make ``node`` come out as it does (for a false ``&``: its false parts)."""
    if len(out) >= _MAX_ATOMS:
        return
    if isinstance(node, Compare):
        out.append(node)
    elif isinstance(node, (And, Or)):
        outcome = _bool(node, read)
        every = outcome == isinstance(node, And)  # a true & or a false |: every part decides
        for p in node.parts if every else [p for p in node.parts if _bool(p, read) == outcome]:
            _deciding(p, read, out)
    elif isinstance(node, Not):
        _deciding(node.part, read, out)


def explain(expr: object, values: Values) -> dict[str, Any]:
    """A short JSON witness: whether ``expr`` holds, the comparisons that decide it (with the value
    of their left side) and the state values they read (true / non-zero ones first)."""
    node = formula_of(expr)
    read = _reader(values)
    atoms: list[Compare] = []
    _deciding(node, read, atoms)
    shown = []
    seen: dict[Var, int] = {}
    for atom in atoms:
        text = render(atom)
        shown.append(
            {
                "expr": text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…",
                "value": _int(Linear(atom.left.terms), read),
                "bound": -atom.left.const,
                "holds": _bool(atom, read),
            }
        )
        for var in sorted(variables(atom), key=lambda v: (v.process, v.name)):
            seen.setdefault(var, read(var))
    ordered = sorted(seen, key=lambda v: (seen[v] == 0, v.process, v.name))
    listed: dict[str, dict[str, Any]] = {}
    for var in ordered[:_MAX_VALUES]:
        raw = values.get((var.process, var.name))
        listed.setdefault(var.process, {})[var.name] = raw
    out: dict[str, Any] = {"holds": _bool(node, read), "atoms": shown, "values": listed}
    if len(ordered) > _MAX_VALUES:
        out["values_omitted"] = len(ordered) - _MAX_VALUES
    return out


# ---------------------------------------------------------------------------------------------------
# Rewriting: negation normal form, substitution of known values
# ---------------------------------------------------------------------------------------------------
def _nnf(node: BoolNode, negate: bool) -> BoolNode:
    if isinstance(node, Const):
        return Const(node.value != negate)
    if isinstance(node, Compare):
        left = _map_indicators(node.left, lambda f: _nnf(f, False))
        return _compare(_NEGATED[node.op] if negate else node.op, left)
    if isinstance(node, Not):
        return _nnf(node.part, not negate)
    parts = [_nnf(p, negate) for p in node.parts]
    return _or(parts) if isinstance(node, And) == negate else _and(parts)


def _map_indicators(lin: Linear, f: Callable[[BoolNode], BoolNode]) -> Linear:
    if all(isinstance(a, Var) for a, _ in lin.terms):
        return lin
    parts: list[tuple[Atom, int]] = []
    const = lin.const
    for atom, c in lin.terms:
        if isinstance(atom, Var):
            parts.append((atom, c))
            continue
        inner = f(atom.formula)
        if isinstance(inner, Const):
            const += c * int(inner.value)
        else:
            parts.append((Indicator(inner), c))
    return _linear(parts, const)


def violation_of(expr: object) -> BoolNode:
    """``not expr`` in negation normal form (no ``Not`` left: negated comparisons flip)."""
    return _nnf(formula_of(expr), True)


def substitute(node: BoolNode, resolve: Callable[[Var], Var | int]) -> BoolNode:
    """``node`` with each variable replaced by what ``resolve`` gives (a constant folds away)."""
    if isinstance(node, Const):
        return node
    if isinstance(node, Compare):
        parts: list[tuple[Atom, int]] = []
        const = node.left.const
        for atom, c in node.left.terms:
            if isinstance(atom, Var):
                got = resolve(atom)
                if isinstance(got, Var):
                    parts.append((got, c))
                else:
                    const += c * int(got)
            else:
                inner = substitute(atom.formula, resolve)
                if isinstance(inner, Const):
                    const += c * int(inner.value)
                else:
                    parts.append((Indicator(inner), c))
        return _compare(node.op, _linear(parts, const))
    if isinstance(node, Not):
        return _not(substitute(node.part, resolve))
    parts_b = [substitute(p, resolve) for p in node.parts]
    return _and(parts_b) if isinstance(node, And) else _or(parts_b)


def effective_changes(window: Window, i: int, name: str) -> list[tuple[int, int]]:
    """``(m, value)`` for each event of process ``i`` that changes what ``name`` reads as (None: 0)."""
    start = window.histories[i].start.get(name)
    previous = _number(window, i, name, start)
    out = []
    for m, value in window.changes(i, name):
        now = _number(window, i, name, value)
        if now != previous:
            out.append((m, now))
            previous = now
    return out


def _number(window: Window, i: int, name: str, value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return int(value)
    raise ValueError(
        f"process {window.processes[i]!r}: state {name!r} is {type(value).__name__} {value!r}; a lattice "
        "invariant reads integer and boolean values only"
    )


def specialize(node: BoolNode, window: Window) -> BoolNode:
    """``node`` on ``window``: values that never change there become constants (a process not in it
    reads as absent), and each remaining variable says whether all its values are booleans."""
    cache: dict[Var, Var | int] = {}

    def resolve(var: Var) -> Var | int:
        if var not in cache:
            if var.process not in window.processes:
                cache[var] = 0
            else:
                i = window.index(var.process)
                if effective_changes(window, i, var.name):
                    cache[var] = Var(var.process, var.name, _all_bool(window, i, var.name))
                else:
                    cache[var] = _number(window, i, var.name, window.histories[i].start.get(var.name))
        return cache[var]

    return substitute(node, resolve)


# ---------------------------------------------------------------------------------------------------
# Classification of a violation: which decision procedure can decide "some consistent cut satisfies it"
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Relational:
    """``sum(weights[(process, name)] * value) op bound`` (``op`` in ``< <= > >=``): min-cut decides it."""

    weights: tuple[tuple[tuple[str, str], int], ...]
    op: str
    bound: int
    formula: BoolNode


@dataclass(frozen=True)
class Conjunctive:
    """A conjunction of conditions each on one process (``local[process]``): Garg-Waldecker decides it."""

    local: tuple[tuple[str, BoolNode], ...]
    formula: BoolNode


@dataclass(frozen=True)
class General:
    """Anything else: an SMT solver decides it."""

    formula: BoolNode


Part: TypeAlias = "Relational | Conjunctive | General"


@dataclass(frozen=True)
class Classification:
    """A violation split into disjuncts, each decided on its own: possibly(A | B) = possibly(A) or
    possibly(B). General disjuncts are merged into one (one solver call)."""

    violation: BoolNode
    parts: tuple[Part, ...]

    @property
    def kind(self) -> str:
        """'constant'; 'relational', 'conjunctive' or 'general' when every part is of that kind;
        'disjunction' when they differ."""
        if isinstance(self.violation, Const):
            return "constant"
        kinds = {type(p).__name__.lower() for p in self.parts}
        return kinds.pop() if len(kinds) == 1 else "disjunction"


def _boolean_function(f: BoolNode) -> tuple[Var, int, int] | None:
    """For a condition on one boolean variable ``v``: ``(v, a, b)`` with ``[f] = a + b * v``."""
    found = variables(f)
    if len(found) != 1:
        return None
    var = next(iter(found))
    if not var.boolean:
        return None
    at0 = int(_bool(f, lambda _: 0))
    at1 = int(_bool(f, lambda _: 1))
    return var, at0, at1 - at0


def linear_form(lin: Linear) -> tuple[dict[tuple[str, str], int], int] | None:
    """``lin`` as ``sum(w * value) + const`` when it is linear in the values (counts of booleans too)."""
    weights: dict[tuple[str, str], int] = {}
    const = lin.const
    for atom, c in lin.terms:
        if isinstance(atom, Indicator):
            linear = _boolean_function(atom.formula)
            if linear is None:
                return None
            atom, a, b = linear
            const += c * a
            c *= b
        key = (atom.process, atom.name)
        weights[key] = weights.get(key, 0) + c
    return {k: w for k, w in weights.items() if w}, const


def _relational(node: BoolNode) -> list[Relational] | None:
    if not isinstance(node, Compare) or len(processes_of(node)) < 2:
        return None
    linear = linear_form(node.left)
    if linear is None:
        return None
    weights, const = linear
    if not weights:
        return None
    ops = {"!=": ("<", ">"), "==": ()}.get(node.op, (node.op,))
    items = tuple(sorted(weights.items()))
    return [Relational(items, op, -const, _compare(op, node.left)) for op in ops] or None


def _conjunctive(node: BoolNode) -> Conjunctive | None:
    local: dict[str, list[BoolNode]] = {}
    for part in node.parts if isinstance(node, And) else (node,):
        procs = processes_of(part)
        if len(procs) != 1:
            return None
        local.setdefault(procs.pop(), []).append(part)
    return Conjunctive(tuple((p, _and(parts)) for p, parts in sorted(local.items())), node)


def classify(violation: BoolNode) -> Classification:
    """Split a violation (see :func:`violation_of`) into parts for min-cut, Garg-Waldecker and z3.

    Rules, per disjunct of the top-level ``|``: a comparison ``< <= > >=`` of a linear sum over two
    or more processes (counts of boolean values are linear) is relational; ``!=`` of such a sum is
    two relational parts (``<`` or ``>``); a conjunction of conditions each reading one process is
    conjunctive; everything else (``==`` over several processes, mixed structure) is general.
    """
    if isinstance(violation, Const):
        return Classification(violation, ())
    parts: list[Part] = []
    general: list[BoolNode] = []
    for disjunct in violation.parts if isinstance(violation, Or) else (violation,):
        relational = _relational(disjunct)
        if relational is not None:
            parts.extend(relational)
            continue
        conjunctive = _conjunctive(disjunct)
        if conjunctive is not None:
            parts.append(conjunctive)
        else:
            general.append(disjunct)
    if general:
        parts.append(General(_or(general)))
    return Classification(violation, tuple(parts))
