"""Predicates over consistent cuts: user invariants, conservation, deadlocks.

Write an invariant as a function of a :class:`~cutwatch.collector.Cut`::

    from cutwatch.predicates import conservation, invariant

    @invariant("bank.conservation")
    def conserved(cut):
        return conservation(cut, state="balance", payload="amount", methods=["/bank.Bank/Credit"])

:class:`PredicateEngine` loads such files or modules (named by the operator,
never fetched) and evaluates them in a worker process that it can kill, so a
predicate that raises, hangs or crashes is an ERROR result, not a collector
down. See docs/predicates.md.
"""

from cutwatch.predicates._api import (
    ERROR,
    FAIL,
    PASS,
    Holds,
    Invariant,
    PredicateResult,
    Verdict,
    Violation,
    check,
    holds,
    invariant,
    invariants_of,
    memory,
    violation,
)
from cutwatch.predicates._deadlock import Deadlock, find_deadlocks, format_deadlocks
from cutwatch.predicates._engine import PredicateEngine, PredicateInfo, PredicateWorkerError
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
from cutwatch.predicates._loader import PredicateLoadError, Source, resolve_source

__all__ = [
    "ERROR",
    "FAIL",
    "MISSING",
    "PASS",
    "Deadlock",
    "Holds",
    "Invariant",
    "PredicateEngine",
    "PredicateInfo",
    "PredicateLoadError",
    "PredicateResult",
    "PredicateWorkerError",
    "Source",
    "Verdict",
    "Violation",
    "as_number",
    "at_most_one",
    "check",
    "conservation",
    "find_deadlocks",
    "format_deadlocks",
    "holds",
    "invariant",
    "invariants_of",
    "lock_holders",
    "lock_waiters",
    "lookup",
    "memory",
    "messages_by_channel",
    "messages_by_method",
    "resolve_source",
    "service_of",
    "state_values",
    "states_by_service",
    "violation",
]
