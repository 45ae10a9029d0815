from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Stamp(_message.Message):
    __slots__ = ("version", "sender", "clock", "names_start", "names", "epoch", "call_id", "peer_fp", "peer_known", "trace_id", "span_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    NAMES_START_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FP_FIELD_NUMBER: _ClassVar[int]
    PEER_KNOWN_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    sender: str
    clock: _containers.RepeatedScalarFieldContainer[int]
    names_start: int
    names: _containers.RepeatedScalarFieldContainer[str]
    epoch: int
    call_id: int
    peer_fp: int
    peer_known: int
    trace_id: bytes
    span_id: bytes
    def __init__(self, version: _Optional[int] = ..., sender: _Optional[str] = ..., clock: _Optional[_Iterable[int]] = ..., names_start: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., epoch: _Optional[int] = ..., call_id: _Optional[int] = ..., peer_fp: _Optional[int] = ..., peer_known: _Optional[int] = ..., trace_id: _Optional[bytes] = ..., span_id: _Optional[bytes] = ...) -> None: ...
