from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Registration(_message.Message):
    __slots__ = ("process_id", "service", "protocol_version", "worker_pools")
    class WorkerPoolsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROCESS_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_POOLS_FIELD_NUMBER: _ClassVar[int]
    process_id: str
    service: str
    protocol_version: int
    worker_pools: _containers.ScalarMap[str, int]
    def __init__(self, process_id: _Optional[str] = ..., service: _Optional[str] = ..., protocol_version: _Optional[int] = ..., worker_pools: _Optional[_Mapping[str, int]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "local_snapshot", "channel_record", "seq")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_RECORD_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    register: Registration
    heartbeat: Heartbeat
    local_snapshot: LocalSnapshot
    channel_record: ChannelRecord
    seq: int
    def __init__(self, register: _Optional[_Union[Registration, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., local_snapshot: _Optional[_Union[LocalSnapshot, _Mapping]] = ..., channel_record: _Optional[_Union[ChannelRecord, _Mapping]] = ..., seq: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("registered", "take_snapshot")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    TAKE_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    take_snapshot: TakeSnapshot
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., take_snapshot: _Optional[_Union[TakeSnapshot, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("unix_nanos",)
    UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    unix_nanos: int
    def __init__(self, unix_nanos: _Optional[int] = ...) -> None: ...

class TakeSnapshot(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class TaskState(_message.Message):
    __slots__ = ("task_id", "kind", "method", "caller", "call_id", "held_locks", "waiting_lock", "outbound", "trace_id", "span_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_LOCKS_FIELD_NUMBER: _ClassVar[int]
    WAITING_LOCK_FIELD_NUMBER: _ClassVar[int]
    OUTBOUND_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    kind: str
    method: str
    caller: str
    call_id: int
    held_locks: _containers.RepeatedScalarFieldContainer[str]
    waiting_lock: str
    outbound: _containers.RepeatedCompositeFieldContainer[OutboundCall]
    trace_id: bytes
    span_id: bytes
    def __init__(self, task_id: _Optional[int] = ..., kind: _Optional[str] = ..., method: _Optional[str] = ..., caller: _Optional[str] = ..., call_id: _Optional[int] = ..., held_locks: _Optional[_Iterable[str]] = ..., waiting_lock: _Optional[str] = ..., outbound: _Optional[_Iterable[_Union[OutboundCall, _Mapping]]] = ..., trace_id: _Optional[bytes] = ..., span_id: _Optional[bytes] = ...) -> None: ...

class OutboundCall(_message.Message):
    __slots__ = ("call_id", "method", "target", "blocking")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    method: str
    target: str
    blocking: bool
    def __init__(self, call_id: _Optional[int] = ..., method: _Optional[str] = ..., target: _Optional[str] = ..., blocking: _Optional[bool] = ...) -> None: ...

class LocalSnapshot(_message.Message):
    __slots__ = ("epoch", "process_id", "clock", "state_json", "tasks", "sent", "consumed", "truncated")
    class ClockEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ConsumedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PROCESS_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    process_id: str
    clock: _containers.ScalarMap[str, int]
    state_json: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskState]
    sent: _containers.ScalarMap[str, int]
    consumed: _containers.ScalarMap[str, int]
    truncated: bool
    def __init__(self, epoch: _Optional[int] = ..., process_id: _Optional[str] = ..., clock: _Optional[_Mapping[str, int]] = ..., state_json: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskState, _Mapping]]] = ..., sent: _Optional[_Mapping[str, int]] = ..., consumed: _Optional[_Mapping[str, int]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ChannelRecord(_message.Message):
    __slots__ = ("epoch", "sender", "receiver", "method", "kind", "payload_json", "call_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    sender: str
    receiver: str
    method: str
    kind: str
    payload_json: str
    call_id: int
    def __init__(self, epoch: _Optional[int] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., method: _Optional[str] = ..., kind: _Optional[str] = ..., payload_json: _Optional[str] = ..., call_id: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("timeout_seconds",)
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    timeout_seconds: float
    def __init__(self, timeout_seconds: _Optional[float] = ...) -> None: ...

class CutSummary(_message.Message):
    __slots__ = ("epoch", "status", "cut_json")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CUT_JSON_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    status: str
    cut_json: str
    def __init__(self, epoch: _Optional[int] = ..., status: _Optional[str] = ..., cut_json: _Optional[str] = ...) -> None: ...
