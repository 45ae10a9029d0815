"""The symbolic subset of lattice invariants: operators, what is refused and why, views, evaluation, shapes.

The reference for evaluation is plain Python: a random expression tree is
read twice, once through the DSL (on a view) and once with Python's own
``and``/``or``/``not``/``sum`` on concrete values, and the two must agree.
The trees (:func:`trees`, :func:`dsl`, :func:`python`) are also what the z3
and dispatcher tests draw their general formulas from.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cutwatch.predicates import Holds
from cutwatch.predicates._symbolic import (
    And,
    Compare,
    Conjunctive,
    Const,
    Formula,
    General,
    LatticeView,
    Or,
    Relational,
    SubsetError,
    Term,
    Var,
    all_of,
    any_of,
    classify,
    count,
    evaluate,
    explain,
    formula_of,
    implies,
    render,
    specialize,
    total,
    variables,
    violation_of,
)
from cutwatch.predicates._window import Event, History, Window

Tree = tuple[Any, ...]
Values = dict[tuple[str, str], int | bool]

OPS: dict[str, Callable[[int, int], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_INT_TAGS = {"x", "k", "+", "-", "*", "neg", "count", "total"}


# ---------------------------------------------------------------------------------------------------
# Random expression trees, read through the DSL and through plain Python
# ---------------------------------------------------------------------------------------------------
@functools.cache
def trees(processes: tuple[str, ...], max_leaves: int = 10) -> st.SearchStrategy[Tree]:
    """Expressions over ``x`` (int) and ``leader`` (bool) of ``processes``: every operator of the
    subset, integer and boolean nodes mixed (each read as the other where needed, as Python does).
    Cached: a strategy built anew for each example would be drawn from without hypothesis' caches."""
    procs = st.sampled_from(processes)
    base = st.one_of(
        st.tuples(st.just("x"), procs),
        st.tuples(st.just("leader"), procs),
        st.tuples(st.just("k"), st.integers(-4, 4)),
        st.tuples(st.just("B"), st.booleans()),
    )

    def extend(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
        two = st.sampled_from(["+", "-", "&", "|", "^", "implies"])
        many = st.sampled_from(["count", "total", "all", "any"])
        return st.one_of(
            st.tuples(two, children, children),
            st.tuples(st.just("cmp"), st.sampled_from(sorted(OPS)), children, children),
            st.tuples(st.just("*"), st.integers(-3, 3), children),
            st.tuples(st.sampled_from(["neg", "~"]), children),
            st.tuples(many, st.lists(children, max_size=3)),
        )

    return st.recursive(base, extend, max_leaves=max_leaves)


def _is_int(tree: Tree) -> bool:
    return tree[0] in _INT_TAGS


def dsl(tree: Tree, view: LatticeView) -> Any:
    """``tree`` built with the DSL on ``view``: a Term, a Formula, or a Python constant."""
    return _dsl_bool(tree, view)


def _dsl_int(tree: Tree, view: LatticeView) -> Any:
    tag = tree[0]
    if not _is_int(tree) and tag != "leader":
        return _dsl_bool(tree, view) + 0  # a condition in a sum: 1 or 0, as a Python bool is
    if tag in ("x", "leader"):
        return view.value(tree[1], tag)
    if tag == "k":
        return tree[1]
    if tag == "+":
        return _dsl_int(tree[1], view) + _dsl_int(tree[2], view)
    if tag == "-":
        return _dsl_int(tree[1], view) - _dsl_int(tree[2], view)
    if tag == "*":
        return tree[1] * _dsl_int(tree[2], view)
    if tag == "neg":
        return -_dsl_int(tree[1], view)
    if tag == "count":
        return count(_dsl_bool(t, view) for t in tree[1])
    items = [_dsl_int(t, view) for t in tree[1]]
    return sum(items) if len(items) % 2 else total(items)  # builtin sum goes through __radd__


def _dsl_bool(tree: Tree, view: LatticeView) -> Any:
    tag = tree[0]
    if tag in ("x", "leader"):
        return view.value(tree[1], tag)  # a state value used as a condition: true / non-zero
    if _is_int(tree):
        value = _dsl_int(tree, view)
        return all_of(value != 0) if isinstance(value, int) else value != 0
    if tag == "B":
        return all_of(tree[1])  # a Formula: `~True` on a Python bool would be -2
    if tag == "cmp":
        result = OPS[tree[1]](_dsl_int(tree[2], view), _dsl_int(tree[3], view))
        return all_of(result) if isinstance(result, bool) else result
    if tag == "~":
        return ~_dsl_bool(tree[1], view)
    if tag == "all":
        return all_of(_dsl_bool(t, view) for t in tree[1])
    if tag == "any":
        return any_of(*(_dsl_bool(t, view) for t in tree[1]))
    a, b = _dsl_bool(tree[1], view), _dsl_bool(tree[2], view)
    if tag == "implies":
        return implies(a, b)
    return {"&": operator.and_, "|": operator.or_, "^": operator.xor}[tag](a, b)


def python(tree: Tree, values: Mapping[tuple[str, str], int | bool]) -> bool:
    """``tree`` evaluated with plain Python on concrete values (absent: 0 / False)."""
    return _py_bool(tree, values)


def _py_int(tree: Tree, values: Mapping[tuple[str, str], int | bool]) -> int:
    tag = tree[0]
    if tag in ("x", "leader"):
        return int(values.get((tree[1], tag), 0))
    if not _is_int(tree):
        return int(_py_bool(tree, values))
    if tag == "k":
        return int(tree[1])
    if tag == "+":
        return _py_int(tree[1], values) + _py_int(tree[2], values)
    if tag == "-":
        return _py_int(tree[1], values) - _py_int(tree[2], values)
    if tag == "*":
        return int(tree[1]) * _py_int(tree[2], values)
    if tag == "neg":
        return -_py_int(tree[1], values)
    if tag == "count":
        return sum(1 for t in tree[1] if _py_bool(t, values))
    return sum(_py_int(t, values) for t in tree[1])


def _py_bool(tree: Tree, values: Mapping[tuple[str, str], int | bool]) -> bool:
    tag = tree[0]
    if tag in ("x", "leader"):
        return bool(values.get((tree[1], tag), False))
    if _is_int(tree):
        return _py_int(tree, values) != 0
    if tag == "B":
        return bool(tree[1])
    if tag == "cmp":
        return OPS[tree[1]](_py_int(tree[2], values), _py_int(tree[3], values))
    if tag == "~":
        return not _py_bool(tree[1], values)
    if tag == "all":
        return all(_py_bool(t, values) for t in tree[1])
    if tag == "any":
        return any(_py_bool(t, values) for t in tree[1])
    a, b = _py_bool(tree[1], values), _py_bool(tree[2], values)
    return {"&": a and b, "|": a or b, "^": a != b, "implies": (not a) or b}[tag]


PROCESSES = ("a", "b", "c")


@st.composite
def assignments(draw: st.DrawFn) -> Values:
    """Values of x and leader at PROCESSES, some absent."""
    values: Values = {}
    for p in PROCESSES:
        if draw(st.booleans()):
            values[(p, "x")] = draw(st.integers(-3, 3))
        if draw(st.booleans()):
            values[(p, "leader")] = draw(st.booleans())
    return values


def view_of(values: Values, processes: Sequence[str] = PROCESSES) -> LatticeView:
    states: dict[str, dict[str, Any]] = {p: {"service": "svc", "state": {}} for p in processes}
    for (p, name), value in values.items():
        states[p]["state"][name] = value
    return LatticeView.of_cut(states)


def cut_view() -> LatticeView:
    return LatticeView.of_cut(
        {
            "lease-1": {"service": "lease", "state": {"leader": True, "term": 3}},
            "lease-2": {"service": "lease", "state": {"leader": False}},
            "bank-1": {"service": "bank", "state": {"balance": 100, "name": "alice"}},
            "bank-2": {"service": "bank", "state": {"balance": -5}},
        }
    )


# ---------------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------------
def test_terms_are_linear_expressions() -> None:
    view = cut_view()
    a, b = view.values("balance")
    values = {("bank-1", "balance"): 100, ("bank-2", "balance"): -5}
    cases: list[tuple[Any, bool]] = [
        (a + b == 95, True),
        (a - b == 105, True),
        (2 * a + b * 3 == 185, True),
        (-a < 0, True),
        (+a >= 100, True),
        (1 + a > 100, True),
        (200 - a == 100, True),
        (a <= b, False),
        (a != b, True),
        (sum([a, b]) == 95, True),
        (total(a, b, 5) == 100, True),
        (total([a, b]) == total(iter([b, a])), True),
        (operator.eq(3, a - 97), True),  # reflected: int == Term
    ]
    for expr, expected in cases:
        assert isinstance(expr, Formula)
        assert evaluate(expr, values) is expected, render(expr.node)


def test_conditions_combine_with_the_bitwise_operators() -> None:
    view = cut_view()
    one, two = view.values("leader", service="lease")
    values = {("lease-1", "leader"): True, ("lease-2", "leader"): False}
    assert evaluate(one & ~two, values)
    assert not evaluate(one & two, values)
    assert evaluate(one | two, values)
    assert evaluate(one ^ two, values)
    assert not evaluate(~one, values)
    assert evaluate(True & one, values)  # reflected, with a constant
    assert evaluate(False | one, values)
    assert evaluate(implies(two, one), values)
    assert not evaluate(implies(one, two), values)
    assert evaluate(all_of(one, ~two), values)
    assert evaluate(any_of([one, two]), values)
    assert evaluate(all_of([]), values)
    assert not evaluate(any_of(), values)
    assert evaluate(count(one, two) == 1, values)
    assert evaluate(count([one, two, True]) == 2, values)
    assert evaluate((one > 0) + (two > 0) == 1, values)  # a condition counts as 1 or 0, like a bool
    assert evaluate(sum(v > 0 for v in (one, two)) == 1, values)
    assert evaluate(((one > 0) == (two > 0)) == 0, values)


def test_a_single_state_value_is_a_condition_and_a_predicate_may_return_it_or_a_bool() -> None:
    view = cut_view()
    leader = view.value("lease-1", "leader")
    assert evaluate(leader, {("lease-1", "leader"): True})
    assert not evaluate(leader, {})
    assert evaluate(True, {}) and not evaluate(False, {})
    term = view.value("lease-1", "term")
    assert evaluate(term & leader, {("lease-1", "term"): 3, ("lease-1", "leader"): True})


@pytest.mark.parametrize(
    ("write", "hint"),
    [
        (lambda a, b: (a >= 0) and (b >= 0), "&"),
        (lambda a, b: (a >= 0) or (b >= 0), "|"),
        (lambda a, b: not (a >= 0), "~"),
        (lambda a, b: 1 if a > b else 0, "implies"),
        (lambda a, b: bool(a == b), "all_of"),
        (lambda a, b: all(v >= 0 for v in (a, b)), "all_of"),
        (lambda a, b: any([a > 0, b > 0]), "any_of"),
        (lambda a, b: 0 <= a <= 9, "(0 <= x) & (x <= 9)"),
        (lambda a, b: a and b, "&"),
        (lambda a, b: max(a, b), "any_of"),
    ],
)
def test_python_truth_is_refused_with_what_to_write(write: Callable[[Term, Term], Any], hint: str) -> None:
    a, b = LatticeView.universal().values("balance")
    with pytest.raises(SubsetError) as caught:
        write(a, b)
    message = str(caught.value)
    for needed in ("`&`", "`|`", "`~`", "all_of", "any_of"):
        assert needed.strip("`") in message
    assert hint in message
    assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (lambda a, b: a * b, "product of two state values"),
        (lambda a, b: (a + 1) * (b - 1), "product of two state values"),
        (lambda a, b: a * (b > 0), "product of two state values"),
        (lambda a, b: a / 2, "only \\+ - and \\* by an integer"),
        (lambda a, b: a // 2, "only \\+ - and \\* by an integer"),
        (lambda a, b: a % 2, "only \\+ - and \\* by an integer"),
        (lambda a, b: a**2, "only \\+ - and \\* by an integer"),
        (lambda a, b: abs(a), "only \\+ - and \\* by an integer"),
        (lambda a, b: a + 0.5, "integer and boolean state values and integer constants only"),
        (lambda a, b: a == "leader", "integer and boolean state values and integer constants only"),
        (lambda a, b: a < None, "integer and boolean state values and integer constants only"),
        (lambda a, b: 1.5 * a, "integer and boolean state values and integer constants only"),
        (lambda a, b: (a + b) & (a > 0), "is a number, not a condition"),
        (lambda a, b: ~(a - 1), "is a number, not a condition"),
        (lambda a, b: all_of(a > 0, "yes"), "is not a condition"),
        (lambda a, b: int(a), "has no value until a cut is chosen"),
        (lambda a, b: [1, 2][a], "has no value until a cut is chosen"),
        (lambda a, b: (a > 0) / 2, "only \\+ - and \\* by an integer"),
        (lambda a, b: int(a > b), "has no value until a cut is chosen"),
    ],
)
def test_what_is_outside_the_subset_is_refused(write: Callable[[Term, Term], Any], match: str) -> None:
    a, b = LatticeView.universal().values("balance")
    with pytest.raises(SubsetError, match=match):
        write(a, b)


def test_a_predicate_must_return_a_formula_a_state_value_or_a_bool() -> None:
    for returned in (None, Holds(), "ok", 1.0):
        with pytest.raises(SubsetError, match="return a comparison"):
            formula_of(returned)
    formula_of(True)
    with pytest.raises(SubsetError, match="is a number, not a condition"):
        formula_of(LatticeView.universal().value("p", "x") + 1)


def test_terms_and_formulas_are_not_hashable() -> None:
    """Their ``==`` builds a formula, so hashing them would be a trap (a dict lookup calls ``==``)."""
    a = LatticeView.universal().value("p", "x")
    with pytest.raises(TypeError):
        hash(a)
    with pytest.raises(TypeError):
        hash(a > 0)


# ---------------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------------
def test_the_view_of_a_cut() -> None:
    view = cut_view()
    assert view.services() == ["bank", "lease"]
    assert view.processes() == ["bank-1", "bank-2", "lease-1", "lease-2"]
    assert view.processes("lease") == ["lease-1", "lease-2"]
    assert [repr(t) for t in view.values("leader")] == ["Term(lease-1.leader)", "Term(lease-2.leader)"]
    assert [repr(t) for t in view.values("term", service="lease")] == ["Term(lease-1.term)"]
    assert view.values("balance", service="lease") == []
    assert repr(view.value("lease-2", "term")) == "Term(lease-2.term)"  # no value yet: 0
    with pytest.raises(KeyError, match="no process 'lease-9'"):
        view.value("lease-9", "leader")
    assert view.names_read == {"leader", "term", "balance"}
    with pytest.raises(
        SubsetError, match=re.escape("cut.states: a lattice invariant reads integer and boolean")
    ):
        _ = view.states
    with pytest.raises(AttributeError):
        _ = view.__wrapped__


def test_non_integer_values_fail_evaluation_naming_the_process_and_the_name() -> None:
    view = cut_view()
    names = view.values("name")
    values = {("bank-1", "name"): "alice"}
    with pytest.raises(ValueError, match=re.escape("process 'bank-1': state 'name' is str 'alice'")):
        evaluate(count(names) <= 1, values)
    with pytest.raises(ValueError, match=re.escape("process 'p': state 'x' is float 1.5")):
        evaluate(LatticeView.universal().value("p", "x") > 0, {("p", "x"): 1.5})
    assert evaluate(count(names) <= 1, {("bank-2", "balance"): "unread"})  # only what is read counts


def test_the_universal_view_validates_at_load_time() -> None:
    view = LatticeView.universal()
    assert view.services() == ["*"]
    assert view.processes("lease") == ["lease#1", "lease#2"]
    assert len(view.values("anything", service="any")) == 2
    assert view.value("whoever", "x") is not None

    def one_leader(cut: LatticeView) -> Any:
        return count(cut.values("leader", service="lease")) <= 1

    def uses_and(cut: LatticeView) -> Any:
        a, b = cut.values("leader", service="lease")
        return a and b

    def uses_if(cut: LatticeView) -> Any:
        for balance in cut.values("balance"):  # noqa: SIM110 - the `if` is the point
            if balance < 0:
                return False
        return True

    def reads_the_messages(cut: LatticeView) -> Any:
        return len(cut.in_transit) == 0

    fresh = LatticeView.universal()
    evaluate(one_leader(fresh), {})
    assert fresh.names_read == {"leader"}
    for refused in (uses_and, uses_if, reads_the_messages):
        with pytest.raises(SubsetError):
            refused(LatticeView.universal())


def test_the_view_of_a_window_lists_a_process_that_did_not_record_under_every_name() -> None:
    window = Window(
        [
            History("p0", "svc", {"x": 1}, (Event({"p0": 1}, {"x": 2}),)),
            History("p1", "svc", {}, (), missing="records none"),
            History("p2", "other", {"leader": True}),
        ]
    )
    view = LatticeView.of_window(window)
    assert [repr(t) for t in view.values("x")] == ["Term(p0.x)", "Term(p1.x)"]
    assert [repr(t) for t in view.values("leader")] == ["Term(p1.leader)", "Term(p2.leader)"]
    (leader,) = view.values("leader", service="other")
    assert leader.node.terms[0][0] == Var("p2", "leader")
    assert isinstance(leader.node.terms[0][0], Var) and leader.node.terms[0][0].boolean


# ---------------------------------------------------------------------------------------------------
# Evaluation against plain Python, rewriting, classification
# ---------------------------------------------------------------------------------------------------
@settings(max_examples=1500, deadline=None)
@given(trees(PROCESSES), assignments())
def test_evaluation_matches_python(tree: Tree, values: Values) -> None:
    expr = dsl(tree, view_of(values))
    expected = python(tree, values)
    assert evaluate(expr, values) is expected
    node = formula_of(expr)
    assert evaluate(violation_of(expr), values) is (not expected)
    assert "Not(" not in repr(violation_of(expr)), "negation normal form has no Not left"
    explained = explain(expr, values)
    assert explained["holds"] is expected
    json.dumps(explained)
    render(node)
    parts = classify(violation_of(expr)).parts
    if not isinstance(violation_of(expr), Const):
        # possibly(A | B) = possibly(A) or possibly(B): the parts cover the violation exactly.
        assert any(evaluate(p.formula, values) for p in parts) is (not expected)
        for part in parts:
            if isinstance(part, Conjunctive):
                assert all(evaluate(f, values) for _, f in part.local) is evaluate(part.formula, values)


def shape(text: str) -> Callable[[LatticeView], Any]:
    """A predicate from source text, over ``cut`` (a LatticeView)."""
    names = {"count": count, "total": total, "all_of": all_of, "any_of": any_of, "implies": implies}
    return lambda cut: eval(text, {**names, "cut": cut})  # the test's own literals


def window_view() -> LatticeView:
    """Three processes whose x (int) and leader (bool) both change: nothing folds away."""
    histories = [
        History(
            f"p{i}",
            "svc" if i < 2 else "other",
            {"x": 0, "leader": False},
            (Event({f"p{i}": 1}, {"x": 1, "leader": True}),),
        )
        for i in range(3)
    ]
    return LatticeView.of_window(Window(histories))


@pytest.mark.parametrize(
    ("predicate", "kinds"),
    [
        ("True", "constant"),
        ("count(cut.values('leader')) <= 1", "relational"),
        ("count(~l for l in cut.values('leader')) >= 1", "relational"),
        ("total(cut.values('x')) == 3", "relational relational"),  # != splits into < and >
        ("total(cut.values('x')) != 3", "general"),  # violation: sum == 3
        ("2 * cut.value('p0', 'x') - cut.value('p1', 'x') < 7", "relational"),
        ("cut.value('p0', 'x') + cut.value('p1', 'leader') >= 0", "relational"),
        ("all_of(x >= 0 for x in cut.values('x'))", "conjunctive conjunctive conjunctive"),
        ("any_of(x > 0 for x in cut.values('x'))", "conjunctive"),
        ("any_of(cut.values('leader'))", "conjunctive"),
        ("cut.value('p0', 'x') + 2 * cut.value('p0', 'x') == 4", "conjunctive"),  # one process: local
        ("implies(cut.value('p0', 'leader'), cut.value('p1', 'x') > 0)", "conjunctive"),
        ("any_of((x == 1) | (x == 2) for x in cut.values('x'))", "conjunctive"),
        ("count(x > 0 for x in cut.values('x')) <= 1", "general"),  # a count of int conditions
        ("cut.value('p0', 'x') == cut.value('p1', 'x')", "relational relational"),
        ("cut.value('p0', 'x') != cut.value('p1', 'x')", "general"),
        ("(total(cut.values('x')) >= 0) & any_of(cut.values('leader'))", "relational conjunctive"),
        ("(total(cut.values('x')) >= 0) | (count(cut.values('leader')) <= 1)", "general"),
        ("~((cut.value('p0', 'x') > 0) & (cut.value('p1', 'x') > 0))", "conjunctive"),
        ("(cut.value('p0','x') == 1) | (cut.value('p1','x') + cut.value('p2','x') == 2)", "general"),
    ],
)
def test_classification(predicate: str, kinds: str) -> None:
    view = window_view()
    violation = violation_of(shape(predicate)(view))
    found = classify(violation)
    names = " ".join(type(p).__name__.lower() for p in found.parts) or found.kind
    assert names == kinds, render(violation)


def test_relational_parts_carry_weights_and_bound() -> None:
    view = window_view()
    (part,) = classify(violation_of(count(view.values("leader")) <= 1)).parts
    assert isinstance(part, Relational)
    assert part.weights == ((("p0", "leader"), 1), (("p1", "leader"), 1), (("p2", "leader"), 1))
    assert (part.op, part.bound) == (">", 1)
    (part,) = classify(violation_of(count(~v for v in view.values("leader")) >= 2)).parts
    assert isinstance(part, Relational)  # count of not-leaders = 3 - sum(leader)
    assert part.weights == ((("p0", "leader"), -1), (("p1", "leader"), -1), (("p2", "leader"), -1))
    assert (part.op, part.bound) == ("<", -1)


def test_a_disjunction_of_general_parts_is_one_solver_call() -> None:
    view = window_view()
    x0, x1, x2 = view.values("x")
    phi = all_of(x0 + x1 != 1, x1 + x2 != 1, x0 + x2 != 2)
    found = classify(violation_of(phi))
    assert found.kind == "general"
    (part,) = found.parts
    assert isinstance(part, General) and isinstance(part.formula, Or) and len(part.formula.parts) == 3


def test_specialize_folds_what_never_changes() -> None:
    window = Window(
        [
            History("p0", "svc", {"x": 5, "leader": True}, (Event({"p0": 1}, {"leader": True}),)),
            History("p1", "svc", {"x": 1}, (Event({"p1": 1}, {"x": 2}), Event({"p1": 2}, {"x": 2}))),
        ]
    )
    view = LatticeView.of_window(window)
    x0, x1 = view.values("x")
    node = specialize(
        formula_of(x0 + x1 + view.value("p0", "leader") + view.value("p1", "leader") > 7), window
    )
    assert isinstance(node, Compare)
    assert variables(node) == {Var("p1", "x")}
    assert node.left.const == 5 + 1 + 0 - 7
    assert specialize(formula_of((x0 == 5) & (view.value("p0", "leader") > 0)), window) == Const(True)
    assert isinstance(specialize(formula_of((x0 == 5) & (x1 > 0)), window), Compare)
    assert isinstance(formula_of(all_of(x0 > 0, x1 > 0)), And)


def test_explain_names_the_leaders_and_the_count() -> None:
    view = cut_view()
    phi = count(view.values("leader", service="lease")) <= 1
    values = {("lease-1", "leader"): True, ("lease-2", "leader"): True}
    assert explain(phi, values) == {
        "holds": False,
        "atoms": [
            {"expr": "count(lease-1.leader, lease-2.leader) <= 1", "value": 2, "bound": 1, "holds": False}
        ],
        "values": {"lease-1": {"leader": True}, "lease-2": {"leader": True}},
    }
    bank = view.values("balance")
    phi = all_of(b >= 0 for b in bank) & (total(bank) == 95)
    explained = explain(phi, {("bank-1", "balance"): 100, ("bank-2", "balance"): -5})
    assert explained["holds"] is False
    assert explained["atoms"] == [{"expr": "bank-2.balance >= 0", "value": -5, "bound": 0, "holds": False}]
    assert explained["values"] == {"bank-2": {"balance": -5}}
