"""The hand-written stamp codec speaks exactly protobuf's ``cutwatch.v1.Stamp``."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cutwatch.core._stamp import WireError, parse_stamp
from cutwatch.core._wire import encode_stamp
from cutwatch.proto import stamp_pb2

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=20)

fields = st.fixed_dictionaries(
    {
        "version": u32,
        "sender": text,
        "clock": st.lists(u64, max_size=20),
        "names_start": u32,
        "names": st.lists(text, max_size=5),
        "epoch": u64,
        "call_id": u64,
        "peer_fp": u32,
        "peer_known": u32,
        "trace_id": st.binary(max_size=20),
        "span_id": st.binary(max_size=10),
    }
)


def _as_dict(message: stamp_pb2.Stamp) -> dict[str, object]:
    return {
        "version": message.version,
        "sender": message.sender,
        "clock": list(message.clock),
        "names_start": message.names_start,
        "names": list(message.names),
        "epoch": message.epoch,
        "call_id": message.call_id,
        "peer_fp": message.peer_fp,
        "peer_known": message.peer_known,
        "trace_id": message.trace_id,
        "span_id": message.span_id,
    }


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields)
def test_encoding_is_byte_for_byte_protobufs(values: dict[str, object]) -> None:
    ours = encode_stamp(**values)  # type: ignore[arg-type]
    theirs = stamp_pb2.Stamp(**values).SerializeToString()  # type: ignore[arg-type]
    assert ours == theirs
    assert parse_stamp(ours)._asdict() == values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields)
def test_unpacked_clock_and_unknown_fields_parse_like_protobuf(values: dict[str, object]) -> None:
    message = stamp_pb2.Stamp(**values)  # type: ignore[arg-type]
    data = message.SerializeToString()
    # The clock sent unpacked (one tag per value) and an unknown field of each wire type.
    unpacked = b"".join(
        b"\x18" + stamp_pb2.Stamp(epoch=v).SerializeToString()[1:] for v in message.clock if v
    )
    unknown = b"\xa0\x06\x05" + b"\xa9\x06" + bytes(8) + b"\xb2\x06\x02hi" + b"\xbd\x06" + bytes(4)
    mutated = data + unknown + unpacked
    expected = stamp_pb2.Stamp.FromString(mutated)
    assert parse_stamp(mutated)._asdict() == _as_dict(expected)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_parser_raises_only_wire_error_and_never_accepts_what_protobuf_rejects(data: bytes) -> None:
    try:
        ours = parse_stamp(data)
    except WireError:
        return
    try:
        theirs = stamp_pb2.Stamp.FromString(data)
    except DecodeError:  # pragma: no cover - a difference we want to hear about
        pytest.fail(f"parse_stamp accepted bytes protobuf rejects: {data!r}")
    assert ours._asdict() == _as_dict(theirs)


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # truncated varint
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint over 10 bytes
        b"\x12\x05ab",  # string runs past the end
        b"\x12\x02\xff\xfe",  # invalid UTF-8
        b"\x00\x01",  # field number 0
        b"\x0b",  # group start: unsupported wire type
        b"\x45\x01\x02",  # truncated fixed32
        b"\x10\x01",  # sender as a varint: wrong wire type
    ],
)
def test_malformed_inputs_are_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        parse_stamp(data)
