"""The predicates of examples/predicates/ (shown in docs/predicates.md) do what the docs say."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cutwatch.collector import Cut, InTransitMessage
from cutwatch.predicates import ERROR, FAIL, PASS, check
from cutwatch.predicates.engine import PredicateEngine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "predicates"
CREDIT = "/bank.Bank/Credit"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_predicates_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cut(
    states: dict[str, tuple[str, dict[str, Any]]],
    in_transit: tuple[InTransitMessage, ...] = (),
    epoch: int = 1,
) -> Cut:
    return Cut(
        epoch=epoch,
        status="COMPLETE",
        started=0.0,
        finished=1.0,
        states={p: {"service": s, "state": v} for p, (s, v) in states.items()},
        in_transit=in_transit,
        clocks={p: {p: 1} for p in states},
    )


def banks(balances: dict[str, int], flying: tuple[tuple[str, str, float], ...] = (), epoch: int = 1) -> Cut:
    """Bank processes plus a frontend that is not a bank; ``flying`` are Credit requests in transit."""
    states = {p: ("bank", {"balance": b}) for p, b in balances.items()}
    states["web:1"] = ("frontend", {"sessions": 12})
    messages = tuple(
        # The agent renders a protobuf Struct's numbers as JSON floats.
        InTransitMessage(s, r, CREDIT, "request", n, 0, {"amount": float(a)})
        for n, (s, r, a) in enumerate(flying, start=1)
    )
    return cut(states, messages, epoch)


def test_bank_money_is_conserved_while_it_moves() -> None:
    bank = load("bank")
    memory: dict[str, Any] = {}
    assert check(bank.money_is_conserved, banks({"bank:a": 500, "bank:b": 500}), memory=memory).status == PASS
    moving = banks({"bank:a": 490, "bank:b": 497}, (("bank:a", "bank:b", 10), ("bank:b", "bank:a", 3)), 2)
    result = check(bank.money_is_conserved, moving, memory=memory)
    assert result.status == PASS and result.witness["in_transit_sum"] == 13


def test_bank_conservation_names_the_cut_that_lost_money() -> None:
    bank = load("bank")
    memory: dict[str, Any] = {}
    check(bank.money_is_conserved, banks({"bank:a": 500, "bank:b": 500}), memory=memory)
    # A Credit was applied twice (a retried request, say): bank:b holds 10 too many.
    lost = banks({"bank:a": 490, "bank:b": 520}, (("bank:a", "bank:b", 10),), epoch=2)
    result = check(bank.money_is_conserved, lost, memory=memory)
    assert result.status == FAIL
    assert result.witness["difference"] == 20 and result.witness["previous_epoch"] == 1
    assert result.witness["processes"] == {"bank:a": 490, "bank:b": 520}  # the frontend is not a bank
    assert [(m["sender"], m["receiver"], m["value"]) for m in result.witness["messages"]] == [
        ("bank:a", "bank:b", 10.0)
    ]


def test_bank_no_overdraft() -> None:
    bank = load("bank")
    assert check(bank.no_overdraft, banks({"bank:a": 0, "bank:b": 5})).status == PASS
    result = check(bank.no_overdraft, banks({"bank:a": -3, "bank:b": 5, "bank:c": -1}))
    assert result.status == FAIL and result.witness == {"balances": {"bank:a": -3, "bank:c": -1}}
    assert result.message == "2 overdrawn: bank:a, bank:c"


def replicas(*roles: tuple[str, int]) -> Cut:
    states = {
        f"kv:{i}": ("kv", {"raft": {"role": role, "term": term}}) for i, (role, term) in enumerate(roles)
    }
    states["web:1"] = ("frontend", {"raft": {"role": "leader", "term": 3}})  # not a replica
    return cut(states)


def test_one_leader_per_term() -> None:
    leader = load("leader")
    assert check(leader.one_leader_per_term, replicas(("leader", 3), ("follower", 3))).status == PASS
    # A deposed leader that has not heard of term 4 yet is not split brain.
    assert check(leader.one_leader_per_term, replicas(("leader", 3), ("leader", 4))).status == PASS
    split = check(leader.one_leader_per_term, replicas(("leader", 4), ("leader", 4), ("follower", 4)))
    assert split.status == FAIL
    assert split.witness["groups"] == {"4": {"per_value": 4, "processes": {"kv:0": "kv", "kv:1": "kv"}}}


def test_the_examples_load_and_run_in_the_engine() -> None:
    sources = [str(EXAMPLES / "bank.py"), str(EXAMPLES / "leader.py")]
    with PredicateEngine(sources, timeout=30) as engine:
        assert engine.names == ("bank.conservation", "bank.no_overdraft", "kv.one_leader_per_term")
        mixed = cut(
            {
                "bank:a": ("bank", {"balance": 100}),
                "kv:0": ("kv", {"raft": {"role": "leader", "term": 2}}),
                "kv:1": ("kv", {"raft": {"role": "leader", "term": 2}}),
            }
        )
        statuses = {r.name: r.status for r in engine.evaluate(mixed)}
        assert statuses == {
            "bank.conservation": PASS,
            "bank.no_overdraft": PASS,
            "kv.one_leader_per_term": FAIL,
        }
        # A leader example on a cut with no replicas at all passes; no bank at all is an ERROR
        # (conservation refuses a sum over nothing), and says why.
        empty = {r.name: r for r in engine.evaluate(cut({"web:1": ("frontend", {})}, epoch=2))}
        assert empty["kv.one_leader_per_term"].status == PASS
        assert empty["bank.conservation"].status == ERROR
        assert "no process of services ['bank'] has the state 'balance'" in empty["bank.conservation"].error


@pytest.mark.parametrize("name", ["bank", "leader"])
def test_the_docs_show_the_example_code(name: str) -> None:
    """docs/predicates.md quotes each example's predicates as they are in the file."""
    docs = (ROOT / "docs" / "predicates.md").read_text(encoding="utf-8")
    source = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
    for block in re.findall(r"```python\n# examples/predicates/" + name + r"\.py\n(.*?)```", docs, re.DOTALL):
        assert block.strip() in source
        break
    else:
        pytest.fail(f"docs/predicates.md quotes no block from examples/predicates/{name}.py")
