"""Protocol buffers of cutwatch: the .proto files, their generated code, and the one conversion.

``stamp.proto`` is the wire stamp (written and parsed by hand on the RPC
path, see ``cutwatch.core._wire``); ``collector.proto`` is the collector
service: agents' control streams, snapshots, queries and check results.
:mod:`cutwatch.proto._convert` turns its messages into the records of
:mod:`cutwatch.core` and back; nothing else handles them but the gRPC edges,
which share the typing shims of gRPC's interceptor bases kept here too.
Regenerate the code with ``python scripts/generate_proto.py``.
"""

from cutwatch.proto._convert import (
    MAX_JSON_DEPTH,
    MAX_WORKER_POOLS,
    agent_message_from_pb,
    event_from_message,
    event_to_message,
    heartbeat_to_pb,
    order_from_pb,
    order_to_pb,
    registration_from_pb,
    registration_to_pb,
)
from cutwatch.proto._grpc import (
    AioServerInterceptorBase,
    AioStreamStreamClientBase,
    AioStreamUnaryClientBase,
    AioUnaryStreamClientBase,
    AioUnaryUnaryClientBase,
    ServerInterceptorBase,
    StreamStreamClientBase,
    StreamUnaryClientBase,
    UnaryStreamClientBase,
    UnaryUnaryClientBase,
    rpc_error_parts,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_WORKER_POOLS",
    "AioServerInterceptorBase",
    "AioStreamStreamClientBase",
    "AioStreamUnaryClientBase",
    "AioUnaryStreamClientBase",
    "AioUnaryUnaryClientBase",
    "ServerInterceptorBase",
    "StreamStreamClientBase",
    "StreamUnaryClientBase",
    "UnaryStreamClientBase",
    "UnaryUnaryClientBase",
    "agent_message_from_pb",
    "event_from_message",
    "event_to_message",
    "heartbeat_to_pb",
    "order_from_pb",
    "order_to_pb",
    "registration_from_pb",
    "registration_to_pb",
    "rpc_error_parts",
]
