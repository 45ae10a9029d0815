"""Writing invariants over consistent cuts: ``@invariant``, verdicts, helpers and the built-ins.

Write an invariant as a function of a :class:`~cutwatch.core.Cut`::

    from cutwatch.predicates import conservation, invariant

    @invariant("bank.conservation")
    def conserved(cut):
        return conservation(cut, state="balance", payload="amount", methods=["/bank.Bank/Credit"])

Test it on a hand-built cut with :func:`check`. The collector runs such
files in an isolated worker process (:mod:`cutwatch.predicates.engine`,
what operators run). See docs/predicates.md.
"""

from cutwatch.predicates._api import (
    ERROR,
    FAIL,
    INCONCLUSIVE,
    PASS,
    Holds,
    Verdict,
    Violation,
    holds,
    invariant,
    memory,
    violation,
)
from cutwatch.predicates._deadlock import Deadlock, find_deadlocks, format_deadlocks
from cutwatch.predicates._helpers import (
    MISSING,
    as_number,
    at_most_one,
    conservation,
    lock_holders,
    lock_waiters,
    lookup,
    messages_by_channel,
    messages_by_method,
    service_of,
    state_values,
    states_by_service,
)
from cutwatch.predicates._results import PredicateResult, check
from cutwatch.predicates._symbolic import (
    Formula,
    LatticeView,
    SubsetError,
    Term,
    all_of,
    any_of,
    count,
    implies,
    total,
)

__all__ = [
    "ERROR",
    "FAIL",
    "INCONCLUSIVE",
    "MISSING",
    "PASS",
    "Deadlock",
    "Formula",
    "Holds",
    "LatticeView",
    "PredicateResult",
    "SubsetError",
    "Term",
    "Verdict",
    "Violation",
    "all_of",
    "any_of",
    "as_number",
    "at_most_one",
    "check",
    "conservation",
    "count",
    "find_deadlocks",
    "format_deadlocks",
    "holds",
    "implies",
    "invariant",
    "lock_holders",
    "lock_waiters",
    "lookup",
    "memory",
    "messages_by_channel",
    "messages_by_method",
    "service_of",
    "state_values",
    "states_by_service",
    "total",
    "violation",
]
