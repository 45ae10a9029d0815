"""What operators run: the engine that loads predicate sources and evaluates them in a worker process.

The collector uses it for ``cutwatch collector --predicates``; use it
directly to run predicates outside a collector::

    from cutwatch.predicates.engine import PredicateEngine

    with PredicateEngine(["checks/bank.py"], timeout=5.0) as engine:
        for result in engine.evaluate(cut):
            print(result.name, result.status)
"""

from cutwatch.core import PredicateLoadError, PredicateWorkerError
from cutwatch.predicates._api import Invariant, invariants_of
from cutwatch.predicates._engine import PredicateEngine, PredicateInfo
from cutwatch.predicates._loader import Source, resolve_source
from cutwatch.predicates._results import run_invariant

__all__ = [
    "Invariant",
    "PredicateEngine",
    "PredicateInfo",
    "PredicateLoadError",
    "PredicateWorkerError",
    "Source",
    "invariants_of",
    "resolve_source",
    "run_invariant",
]
