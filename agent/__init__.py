"""The cutwatch agent: vector clocks, stamps, tasks and locks inside a service.

import cutwatch, grpc
agent = cutwatch.Agent(service="bank").start()
server = grpc.server(pool, interceptors=[agent.server_interceptor()])
channel = grpc.intercept_channel(grpc.insecure_channel(addr), agent.client_interceptor())
"""

from cutwatch.agent._agent import Agent, AgentStats
from cutwatch.agent._clock import VectorClock
from cutwatch.agent._eventlog import SHIVIZ_REGEX
from cutwatch.agent._lock import CutwatchLock
from cutwatch.agent._stamp import STAMP_METADATA_KEY, DecodedStamp, StampCodec
from cutwatch.agent._tasks import OutboundCall, TaskView
from cutwatch.agent.exceptions import AgentStateError, CutwatchError, StampError

__all__ = [
    "SHIVIZ_REGEX",
    "STAMP_METADATA_KEY",
    "Agent",
    "AgentStateError",
    "AgentStats",
    "CutwatchError",
    "CutwatchLock",
    "DecodedStamp",
    "OutboundCall",
    "StampCodec",
    "StampError",
    "TaskView",
    "VectorClock",
]
