from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Registration(_message.Message):
    __slots__ = ("process_id", "service", "protocol_version", "worker_pools", "epoch", "dropped", "untracked_changes")
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
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    UNTRACKED_CHANGES_FIELD_NUMBER: _ClassVar[int]
    process_id: str
    service: str
    protocol_version: int
    worker_pools: _containers.ScalarMap[str, int]
    epoch: int
    dropped: int
    untracked_changes: int
    def __init__(self, process_id: _Optional[str] = ..., service: _Optional[str] = ..., protocol_version: _Optional[int] = ..., worker_pools: _Optional[_Mapping[str, int]] = ..., epoch: _Optional[int] = ..., dropped: _Optional[int] = ..., untracked_changes: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "local_snapshot", "channel_record", "call_outcome", "recording_stopped", "flushed", "goodbye", "bounced", "seq")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_RECORD_FIELD_NUMBER: _ClassVar[int]
    CALL_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RECORDING_STOPPED_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    BOUNCED_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    register: Registration
    heartbeat: Heartbeat
    local_snapshot: LocalSnapshot
    channel_record: ChannelRecord
    call_outcome: CallOutcome
    recording_stopped: RecordingStopped
    flushed: Flushed
    goodbye: Goodbye
    bounced: Bounced
    seq: int
    def __init__(self, register: _Optional[_Union[Registration, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., local_snapshot: _Optional[_Union[LocalSnapshot, _Mapping]] = ..., channel_record: _Optional[_Union[ChannelRecord, _Mapping]] = ..., call_outcome: _Optional[_Union[CallOutcome, _Mapping]] = ..., recording_stopped: _Optional[_Union[RecordingStopped, _Mapping]] = ..., flushed: _Optional[_Union[Flushed, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., bounced: _Optional[_Union[Bounced, _Mapping]] = ..., seq: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("registered", "take_snapshot", "close_epoch", "flush")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    TAKE_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CLOSE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    take_snapshot: TakeSnapshot
    close_epoch: CloseEpoch
    flush: Flush
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., take_snapshot: _Optional[_Union[TakeSnapshot, _Mapping]] = ..., close_epoch: _Optional[_Union[CloseEpoch, _Mapping]] = ..., flush: _Optional[_Union[Flush, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("unix_nanos", "dropped")
    UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    unix_nanos: int
    dropped: int
    def __init__(self, unix_nanos: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class TakeSnapshot(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class CloseEpoch(_message.Message):
    __slots__ = ("epoch", "forget")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    forget: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, epoch: _Optional[int] = ..., forget: _Optional[_Iterable[int]] = ...) -> None: ...

class CallRef(_message.Message):
    __slots__ = ("caller", "call_id")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    caller: str
    call_id: int
    def __init__(self, caller: _Optional[str] = ..., call_id: _Optional[int] = ...) -> None: ...

class Flush(_message.Message):
    __slots__ = ("epoch", "round", "fence")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    round: int
    fence: _containers.RepeatedCompositeFieldContainer[CallRef]
    def __init__(self, epoch: _Optional[int] = ..., round: _Optional[int] = ..., fence: _Optional[_Iterable[_Union[CallRef, _Mapping]]] = ...) -> None: ...

class Flushed(_message.Message):
    __slots__ = ("epoch", "round", "untracked_changes")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    UNTRACKED_CHANGES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    round: int
    untracked_changes: int
    def __init__(self, epoch: _Optional[int] = ..., round: _Optional[int] = ..., untracked_changes: _Optional[int] = ...) -> None: ...

class Bounced(_message.Message):
    __slots__ = ("epoch", "sender", "call_id", "attempt")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    sender: str
    call_id: int
    attempt: int
    def __init__(self, epoch: _Optional[int] = ..., sender: _Optional[str] = ..., call_id: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class OpenCall(_message.Message):
    __slots__ = ("call_id", "method", "target", "failed")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    method: str
    target: str
    failed: str
    def __init__(self, call_id: _Optional[int] = ..., method: _Optional[str] = ..., target: _Optional[str] = ..., failed: _Optional[str] = ...) -> None: ...

class Answering(_message.Message):
    __slots__ = ("caller", "call_id")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    caller: str
    call_id: int
    def __init__(self, caller: _Optional[str] = ..., call_id: _Optional[int] = ...) -> None: ...

class StreamCount(_message.Message):
    __slots__ = ("caller", "call_id", "role", "method", "requests", "responses")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    caller: str
    call_id: int
    role: str
    method: str
    requests: int
    responses: int
    def __init__(self, caller: _Optional[str] = ..., call_id: _Optional[int] = ..., role: _Optional[str] = ..., method: _Optional[str] = ..., requests: _Optional[int] = ..., responses: _Optional[int] = ...) -> None: ...

class LocalSnapshot(_message.Message):
    __slots__ = ("epoch", "process_id", "clock", "state_json", "tasks_json", "open_calls", "answering", "requests_sent", "responses_sent", "requests_consumed", "responses_consumed", "worker_pools", "untracked_changes", "streams", "state_missing", "recorded", "recorded_through")
    class ClockEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ResponsesSentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RequestsConsumedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ResponsesConsumedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class WorkerPoolsEntry(_message.Message):
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
    TASKS_JSON_FIELD_NUMBER: _ClassVar[int]
    OPEN_CALLS_FIELD_NUMBER: _ClassVar[int]
    ANSWERING_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_SENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_SENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    WORKER_POOLS_FIELD_NUMBER: _ClassVar[int]
    UNTRACKED_CHANGES_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    STATE_MISSING_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    RECORDED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    process_id: str
    clock: _containers.ScalarMap[str, int]
    state_json: str
    tasks_json: str
    open_calls: _containers.RepeatedCompositeFieldContainer[OpenCall]
    answering: _containers.RepeatedCompositeFieldContainer[Answering]
    requests_sent: int
    responses_sent: _containers.ScalarMap[str, int]
    requests_consumed: _containers.ScalarMap[str, int]
    responses_consumed: _containers.ScalarMap[str, int]
    worker_pools: _containers.ScalarMap[str, int]
    untracked_changes: int
    streams: _containers.RepeatedCompositeFieldContainer[StreamCount]
    state_missing: str
    recorded: _containers.RepeatedCompositeFieldContainer[RecordedEvent]
    recorded_through: int
    def __init__(self, epoch: _Optional[int] = ..., process_id: _Optional[str] = ..., clock: _Optional[_Mapping[str, int]] = ..., state_json: _Optional[str] = ..., tasks_json: _Optional[str] = ..., open_calls: _Optional[_Iterable[_Union[OpenCall, _Mapping]]] = ..., answering: _Optional[_Iterable[_Union[Answering, _Mapping]]] = ..., requests_sent: _Optional[int] = ..., responses_sent: _Optional[_Mapping[str, int]] = ..., requests_consumed: _Optional[_Mapping[str, int]] = ..., responses_consumed: _Optional[_Mapping[str, int]] = ..., worker_pools: _Optional[_Mapping[str, int]] = ..., untracked_changes: _Optional[int] = ..., streams: _Optional[_Iterable[_Union[StreamCount, _Mapping]]] = ..., state_missing: _Optional[str] = ..., recorded: _Optional[_Iterable[_Union[RecordedEvent, _Mapping]]] = ..., recorded_through: _Optional[int] = ...) -> None: ...

class RecordedEvent(_message.Message):
    __slots__ = ("seq", "clock", "values_json")
    class ClockEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    VALUES_JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    clock: _containers.ScalarMap[str, int]
    values_json: str
    def __init__(self, seq: _Optional[int] = ..., clock: _Optional[_Mapping[str, int]] = ..., values_json: _Optional[str] = ...) -> None: ...

class ChannelRecord(_message.Message):
    __slots__ = ("epoch", "sender", "receiver", "method", "kind", "payload_json", "call_id", "attempt", "index")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    sender: str
    receiver: str
    method: str
    kind: str
    payload_json: str
    call_id: int
    attempt: int
    index: int
    def __init__(self, epoch: _Optional[int] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., method: _Optional[str] = ..., kind: _Optional[str] = ..., payload_json: _Optional[str] = ..., call_id: _Optional[int] = ..., attempt: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class CallOutcome(_message.Message):
    __slots__ = ("epoch", "call_id", "outcome", "detail")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    call_id: int
    outcome: str
    detail: str
    def __init__(self, epoch: _Optional[int] = ..., call_id: _Optional[int] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RecordingStopped(_message.Message):
    __slots__ = ("epoch", "reason", "dropped")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    reason: str
    dropped: int
    def __init__(self, epoch: _Optional[int] = ..., reason: _Optional[str] = ..., dropped: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("timeout_seconds",)
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    timeout_seconds: float
    def __init__(self, timeout_seconds: _Optional[float] = ...) -> None: ...

class CutQuery(_message.Message):
    __slots__ = ("epoch", "status")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    status: str
    def __init__(self, epoch: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class CutReply(_message.Message):
    __slots__ = ("found", "cut_json")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    CUT_JSON_FIELD_NUMBER: _ClassVar[int]
    found: bool
    cut_json: str
    def __init__(self, found: bool = ..., cut_json: _Optional[str] = ...) -> None: ...

class ListQuery(_message.Message):
    __slots__ = ("status", "since", "until", "limit")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    status: str
    since: float
    until: float
    limit: int
    def __init__(self, status: _Optional[str] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class CutList(_message.Message):
    __slots__ = ("cuts_json",)
    CUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    cuts_json: str
    def __init__(self, cuts_json: _Optional[str] = ...) -> None: ...

class ResultsQuery(_message.Message):
    __slots__ = ("epoch", "name")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    name: str
    def __init__(self, epoch: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class ResultsReply(_message.Message):
    __slots__ = ("found", "epoch", "cut_status", "results_json")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CUT_STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_JSON_FIELD_NUMBER: _ClassVar[int]
    found: bool
    epoch: int
    cut_status: str
    results_json: str
    def __init__(self, found: bool = ..., epoch: _Optional[int] = ..., cut_status: _Optional[str] = ..., results_json: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("event_json",)
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    event_json: str
    def __init__(self, event_json: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status_json",)
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    status_json: str
    def __init__(self, status_json: _Optional[str] = ...) -> None: ...
