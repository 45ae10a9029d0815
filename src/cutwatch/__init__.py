"""cutwatch: see a whole gRPC system at once, while it keeps running.

An agent inside every service piggybacks vector clocks on each RPC::

    import cutwatch
    agent = cutwatch.Agent(service="bank").start()
    server = grpc.server(pool, interceptors=[agent.server_interceptor()])
    channel = grpc.intercept_channel(grpc.insecure_channel(addr), agent.client_interceptor())

The names below load on first use (PEP 562): ``import cutwatch`` alone
imports neither gRPC nor the collector, its store or the predicate engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Agent": "cutwatch.agent",
    "AgentStats": "cutwatch.agent",
    "CutwatchLock": "cutwatch.agent",
    "CollectorClient": "cutwatch.collector",
    "CollectorServer": "cutwatch.collector",
    "CollectorCredentials": "cutwatch.security",
    "CollectorSecurity": "cutwatch.security",
    "Cut": "cutwatch.core",
    "InTransitMessage": "cutwatch.core",
    "TaskView": "cutwatch.core",
    "VectorClock": "cutwatch.core",
    "AgentStateError": "cutwatch.core.errors",
    "AssemblyError": "cutwatch.core.errors",
    "CollectorAuthError": "cutwatch.core.errors",
    "CollectorError": "cutwatch.core.errors",
    "CollectorUnavailableError": "cutwatch.core.errors",
    "CutwatchError": "cutwatch.core.errors",
    "DuplicateEpochError": "cutwatch.core.errors",
    "EventFormatError": "cutwatch.core.errors",
    "InconsistentCutError": "cutwatch.core.errors",
    "NoAgentsError": "cutwatch.core.errors",
    "PredicateLoadError": "cutwatch.core.errors",
    "PredicateWorkerError": "cutwatch.core.errors",
    "ProtocolViolationError": "cutwatch.core.errors",
    "SecurityConfigError": "cutwatch.core.errors",
    "StampError": "cutwatch.core.errors",
    "StorageError": "cutwatch.core.errors",
    "SubsetError": "cutwatch.core.errors",
    "at_most_one": "cutwatch.predicates",
    "conservation": "cutwatch.predicates",
    "holds": "cutwatch.predicates",
    "invariant": "cutwatch.predicates",
    "violation": "cutwatch.predicates",
}

__all__ = [
    "Agent",
    "AgentStateError",
    "AgentStats",
    "AssemblyError",
    "CollectorAuthError",
    "CollectorClient",
    "CollectorCredentials",
    "CollectorError",
    "CollectorSecurity",
    "CollectorServer",
    "CollectorUnavailableError",
    "Cut",
    "CutwatchError",
    "CutwatchLock",
    "DuplicateEpochError",
    "EventFormatError",
    "InTransitMessage",
    "InconsistentCutError",
    "NoAgentsError",
    "PredicateLoadError",
    "PredicateWorkerError",
    "ProtocolViolationError",
    "SecurityConfigError",
    "StampError",
    "StorageError",
    "SubsetError",
    "TaskView",
    "VectorClock",
    "__version__",
    "at_most_one",
    "conservation",
    "holds",
    "invariant",
    "violation",
]

if TYPE_CHECKING:
    from cutwatch.agent import Agent, AgentStats, CutwatchLock
    from cutwatch.collector import CollectorClient, CollectorServer
    from cutwatch.core import Cut, InTransitMessage, TaskView, VectorClock
    from cutwatch.core.errors import (
        AgentStateError,
        AssemblyError,
        CollectorAuthError,
        CollectorError,
        CollectorUnavailableError,
        CutwatchError,
        DuplicateEpochError,
        EventFormatError,
        InconsistentCutError,
        NoAgentsError,
        PredicateLoadError,
        PredicateWorkerError,
        ProtocolViolationError,
        SecurityConfigError,
        StampError,
        StorageError,
        SubsetError,
    )
    from cutwatch.predicates import at_most_one, conservation, holds, invariant, violation
    from cutwatch.security import CollectorCredentials, CollectorSecurity


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cutwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
