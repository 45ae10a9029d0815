"""cutwatch: see a whole gRPC system at once, while it keeps running.

An agent inside every service piggybacks vector clocks on each RPC::

    import cutwatch
    agent = cutwatch.Agent(service="bank").start()
    server = grpc.server(pool, interceptors=[agent.server_interceptor()])
    channel = grpc.intercept_channel(grpc.insecure_channel(addr), agent.client_interceptor())
"""

from cutwatch.agent import (
    Agent,
    AgentStateError,
    AgentStats,
    CutwatchError,
    CutwatchLock,
    StampError,
    TaskView,
    VectorClock,
)
from cutwatch.collector import (
    CollectorAuthError,
    CollectorClient,
    CollectorError,
    CollectorServer,
    CollectorUnavailableError,
    Cut,
    InTransitMessage,
)
from cutwatch.predicates import at_most_one, conservation, holds, invariant, violation
from cutwatch.security import CollectorCredentials, CollectorSecurity

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentStateError",
    "AgentStats",
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
    "InTransitMessage",
    "StampError",
    "TaskView",
    "VectorClock",
    "__version__",
    "at_most_one",
    "conservation",
    "holds",
    "invariant",
    "violation",
]
