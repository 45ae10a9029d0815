"""The cutwatch agent: vector clocks, stamps, tasks and locks inside a service.

import cutwatch, grpc
agent = cutwatch.Agent(service="bank").start()
server = grpc.server(pool, interceptors=[agent.server_interceptor()])
channel = grpc.intercept_channel(grpc.insecure_channel(addr), agent.client_interceptor())
"""

from cutwatch.agent._agent import Agent, AgentStats
from cutwatch.agent._control import ControlOptions
from cutwatch.agent._eventlog import SHIVIZ_REGEX
from cutwatch.agent._instrument import instrument, uninstrument
from cutwatch.agent._lock import CutwatchLock
from cutwatch.core import (
    STAMP_METADATA_KEY,
    AgentStateError,
    CutwatchError,
    DecodedStamp,
    OutboundCall,
    StampCodec,
    StampError,
    TaskView,
    VectorClock,
)

__all__ = [
    "SHIVIZ_REGEX",
    "STAMP_METADATA_KEY",
    "Agent",
    "AgentStateError",
    "AgentStats",
    "ControlOptions",
    "CutwatchError",
    "CutwatchLock",
    "DecodedStamp",
    "OutboundCall",
    "StampCodec",
    "StampError",
    "TaskView",
    "VectorClock",
    "instrument",
    "uninstrument",
]
