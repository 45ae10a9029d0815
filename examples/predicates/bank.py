"""Invariants of a bank: money is neither made nor lost, and no account is overdrawn.

Every bank process (service ``bank``) registers its balance as a state
provider and moves money with a ``Credit`` RPC whose request carries the
``amount`` (src/cutwatch/demo/bank.py, the bank of ``cutwatch demo``, is such a bank)::

    agent.register_state("balance", lambda: self.balance)

Check these on every COMPLETE cut::

    cutwatch collector --predicates examples/predicates/bank.py
"""

from __future__ import annotations

from cutwatch.collector import Cut
from cutwatch.predicates import Verdict, conservation, invariant, state_values, violation

CREDIT = "/bank.Bank/Credit"


@invariant("bank.conservation")
def money_is_conserved(cut: Cut) -> Verdict:
    """Balances plus the Credit requests still in flight add up to the same sum at every cut.

    Without ``total=`` the first cut sets the sum and each later one is compared
    with the cut before it; a bank that knows its money would pass ``total=``.
    """
    return conservation(cut, state="balance", payload="amount", services="bank", methods=[CREDIT])


@invariant("bank.no_overdraft")
def no_overdraft(cut: Cut) -> Verdict:
    """No balance is negative; a violation lists the overdrawn processes and their balances."""
    overdrawn = {p: b for p, b in state_values(cut, "balance", services="bank").items() if b < 0}
    if overdrawn:
        return violation(f"{len(overdrawn)} overdrawn: {', '.join(sorted(overdrawn))}", balances=overdrawn)
    return True
