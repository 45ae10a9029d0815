"""The protocol, pure: clocks, stamps, events, a process's event core, cuts and wait-for graphs.

Nothing here imports gRPC, protobuf or anything outside the standard
library, and nothing does I/O: the agent, the collector and the simulation
tests all drive this same code::

    from cutwatch.core import ChannelPeer, ProcessCore

    bank = ProcessCore("bank:1")
    bank.register_state("balance", lambda: 100)
    call, stamp = bank.begin_call("/bank.Bank/Credit", ChannelPeer())
    # ... the stamp travels in the request's metadata; the answer's stamp comes back:
    bank.end_call(call, answer_stamp)

See docs/architecture.md for the parts and the arrows between them.
"""

from cutwatch.core._assembly import (
    AssembledCut,
    AssemblyStatus,
    CutAssembler,
    DuplicateDelivery,
    UnsettledCall,
)
from cutwatch.core._calls import REFUSED, ChannelPeer, Inbound, Outbound, Refused
from cutwatch.core._clock import LocalClock, VectorClock
from cutwatch.core._control import (
    PROTOCOL_VERSION,
    AgentEvent,
    CloseEpoch,
    Flush,
    Goodbye,
    Heartbeat,
    Invalid,
    Order,
    Registered,
    Registration,
    TakeSnapshot,
)
from cutwatch.core._counters import ProcessStats
from cutwatch.core._cut import CUT_FORMAT, Cut, InTransitMessage
from cutwatch.core._events import (
    OUTCOME_FAILED,
    OUTCOME_UNSTAMPED,
    REASON_TOO_MANY_CALLS,
    REASON_TOO_MANY_OPEN,
    REASON_TRUNCATED,
    REQUEST,
    RESPONSE,
    STOPPED_REASONS,
    Answering,
    CallOutcome,
    Capture,
    ChannelRecord,
    Flushed,
    LocalSnapshot,
    MsgKey,
    OpenCall,
    Payload,
    RecordingStopped,
    SnapshotEvent,
)
from cutwatch.core._participant import Delivery, SnapshotParticipant, SnapshotStats
from cutwatch.core._process import REASON_ATOMIC_TIMEOUT, REASON_ATOMIC_WAIT, ProcessCore
from cutwatch.core._reduction import Reduction, reduce_graph
from cutwatch.core._stamp import (
    DEFAULT_MAX_CLOCK_ENTRIES,
    DEFAULT_MAX_STAMP_BYTES,
    MAX_PROCESS_ID_LENGTH,
    STAMP_METADATA_KEY,
    DecodedStamp,
    EncodedStamp,
    StampCodec,
)
from cutwatch.core._states import DEFAULT_MAX_STATE_BYTES
from cutwatch.core._streams import CLIENT, SENDING, SERVER, Sending, StreamCount, StreamEnd, stream_crossings
from cutwatch.core._tasks import OutboundCall, Task, TaskRegistry, TaskView
from cutwatch.core._text import shown
from cutwatch.core._waitfor import (
    NEED_CALL,
    NEED_LOCK,
    NEED_OTHER,
    NEED_WORKER,
    RES_LOCK,
    RES_OTHER,
    RES_POOL,
    QueuedCall,
    UncertainWait,
    WaitForGraph,
    build_graph,
    graph_from_cut,
    stopped_processes,
    unflushed_processes,
)
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
)

__all__ = [
    "CLIENT",
    "CUT_FORMAT",
    "DEFAULT_MAX_CLOCK_ENTRIES",
    "DEFAULT_MAX_STAMP_BYTES",
    "DEFAULT_MAX_STATE_BYTES",
    "MAX_PROCESS_ID_LENGTH",
    "NEED_CALL",
    "NEED_LOCK",
    "NEED_OTHER",
    "NEED_WORKER",
    "OUTCOME_FAILED",
    "OUTCOME_UNSTAMPED",
    "PROTOCOL_VERSION",
    "REASON_ATOMIC_TIMEOUT",
    "REASON_ATOMIC_WAIT",
    "REASON_TOO_MANY_CALLS",
    "REASON_TOO_MANY_OPEN",
    "REASON_TRUNCATED",
    "REFUSED",
    "REQUEST",
    "RESPONSE",
    "RES_LOCK",
    "RES_OTHER",
    "RES_POOL",
    "SENDING",
    "SERVER",
    "STAMP_METADATA_KEY",
    "STOPPED_REASONS",
    "AgentEvent",
    "AgentStateError",
    "Answering",
    "AssembledCut",
    "AssemblyError",
    "AssemblyStatus",
    "CallOutcome",
    "Capture",
    "ChannelPeer",
    "ChannelRecord",
    "CloseEpoch",
    "CollectorAuthError",
    "CollectorError",
    "CollectorUnavailableError",
    "Cut",
    "CutAssembler",
    "CutwatchError",
    "DecodedStamp",
    "Delivery",
    "DuplicateDelivery",
    "DuplicateEpochError",
    "EncodedStamp",
    "EventFormatError",
    "Flush",
    "Flushed",
    "Goodbye",
    "Heartbeat",
    "InTransitMessage",
    "Inbound",
    "InconsistentCutError",
    "Invalid",
    "LocalClock",
    "LocalSnapshot",
    "MsgKey",
    "NoAgentsError",
    "OpenCall",
    "Order",
    "Outbound",
    "OutboundCall",
    "Payload",
    "PredicateLoadError",
    "PredicateWorkerError",
    "ProcessCore",
    "ProcessStats",
    "ProtocolViolationError",
    "QueuedCall",
    "RecordingStopped",
    "Reduction",
    "Refused",
    "Registered",
    "Registration",
    "SecurityConfigError",
    "Sending",
    "SnapshotEvent",
    "SnapshotParticipant",
    "SnapshotStats",
    "StampCodec",
    "StampError",
    "StorageError",
    "StreamCount",
    "StreamEnd",
    "TakeSnapshot",
    "Task",
    "TaskRegistry",
    "TaskView",
    "UncertainWait",
    "UnsettledCall",
    "VectorClock",
    "WaitForGraph",
    "build_graph",
    "graph_from_cut",
    "reduce_graph",
    "shown",
    "stopped_processes",
    "stream_crossings",
    "unflushed_processes",
]
