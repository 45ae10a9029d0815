"""At most one leader per term, for a replicated service with leader election (Raft-like).

Every replica (service ``kv``) registers its role and term::

    agent.register_state("raft", lambda: {"role": node.role, "term": node.term})

Two leaders in one term is split brain. Two leaders in different terms can
happen for a while (a deposed leader that has not heard of the new term
yet), so the invariant groups the replicas by term. Check it with::

    cutwatch collector --predicates examples/predicates/leader.py
"""

from __future__ import annotations

from cutwatch.collector import Cut
from cutwatch.predicates import Verdict, at_most_one, invariant


@invariant("kv.one_leader_per_term")
def one_leader_per_term(cut: Cut) -> Verdict:
    """A violation names the leaders of each crowded term, with their services."""
    return at_most_one(cut, state="raft.role", value="leader", per="raft.term", services="kv")
