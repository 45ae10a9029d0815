"""Hand-written encoder and parser for the ``Stamp`` message of stamp.proto.

The bytes are exactly what protobuf produces for ``cutwatch.v1.Stamp`` (a test
checks both directions against the generated code), so any protobuf library
can read a stamp. The agent does not use the generated class on the RPC
path: building and parsing a message object per call costs several times
more than these few lines once gRPC's own work has pushed it out of the CPU
caches (see docs/benchmarks.md).

The parser accepts what a protobuf parser accepts for this schema (fields in
any order, repeated singular fields with the last one winning, the clock
packed or not, unknown fields skipped) and raises ``WireError`` on anything
else; it never raises another exception on any input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_MAX_FIELD = (1 << 29) - 1


class WireError(ValueError):
    """The bytes are not a well-formed Stamp message."""


class StampFields(NamedTuple):
    version: int
    sender: str
    clock: list[int]
    names_start: int
    names: list[str]
    epoch: int
    call_id: int
    peer_fp: int
    peer_known: int
    trace_id: bytes
    span_id: bytes


def _varint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _length_delimited(tag: int, data: bytes, out: bytearray) -> None:
    out.append(tag)
    _varint(len(data), out)
    out += data


def stamp_prefix(version: int, sender: str) -> bytes:
    """Fields 1 and 2, the same in every stamp of one sender: computed once."""
    out = bytearray()
    if version:
        out.append(0x08)
        _varint(version, out)
    if sender:
        _length_delimited(0x12, sender.encode("utf-8"), out)
    return bytes(out)


def peer_tail(peer_fp: int | None, peer_known: int) -> bytes:
    """Fields 8 and 9, the acknowledgement for the addressee."""
    out = bytearray()
    if peer_fp:
        out.append(0x45)
        out += peer_fp.to_bytes(4, "little")
    if peer_known:
        out.append(0x48)
        _varint(peer_known, out)
    return bytes(out)


def encode_with_prefix(
    prefix: bytes,
    clock: Sequence[int],
    names_start: int,
    names: Sequence[str],
    epoch: int,
    call_id: int,
    tail: bytes,
    trace_id: bytes,
    span_id: bytes,
) -> bytes:
    """The per-message part, positional and branch-light: the RPC path's encoder."""
    out = bytearray(prefix)
    if clock:
        packed = bytearray()
        for value in clock:
            while value > 0x7F:
                packed.append((value & 0x7F) | 0x80)
                value >>= 7
            packed.append(value)
        out.append(0x1A)
        _varint(len(packed), out)
        out += packed
    if names_start:
        out.append(0x20)
        _varint(names_start, out)
    for name in names:
        _length_delimited(0x2A, name.encode("utf-8"), out)
    if epoch:
        out.append(0x30)
        _varint(epoch, out)
    if call_id:
        out.append(0x38)
        _varint(call_id, out)
    out += tail
    if trace_id:
        _length_delimited(0x52, trace_id, out)
    if span_id:
        _length_delimited(0x5A, span_id, out)
    return bytes(out)


def encode_stamp(
    *,
    version: int,
    sender: str,
    clock: Sequence[int],
    names_start: int,
    names: Sequence[str],
    epoch: int,
    call_id: int,
    peer_fp: int | None,
    peer_known: int,
    trace_id: bytes,
    span_id: bytes,
) -> bytes:
    """Serialise like protobuf: field-number order, proto3 defaults omitted."""
    return encode_with_prefix(
        stamp_prefix(version, sender),
        clock,
        names_start,
        names,
        epoch,
        call_id,
        peer_tail(peer_fp, peer_known),
        trace_id,
        span_id,
    )


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > _U64:
                raise WireError("varint overflows 64 bits")
            return value, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def _read_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    length, pos = _read_varint(data, pos, end)
    if length > end - pos:
        raise WireError("length-delimited field runs past the end")
    return pos + length, pos


def _text(data: bytes, start: int, stop: int) -> str:
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("string field is not valid UTF-8") from None


def _u32(value: int) -> int:
    if value > _U32:
        raise WireError("uint32 field out of range")
    return value


def parse_stamp(data: bytes) -> StampFields:
    """Parse a Stamp; raise ``WireError`` on malformed input, nothing else."""
    version = 0
    sender = ""
    clock: list[int] = []
    names_start = 0
    names: list[str] = []
    epoch = call_id = peer_fp = peer_known = 0
    trace_id = span_id = b""
    pos, end = 0, len(data)
    read_varint = _read_varint
    while pos < end:
        key, pos = read_varint(data, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 0 or field > _MAX_FIELD:
            raise WireError("field number out of range")
        if wire_type == 0:
            value, pos = read_varint(data, pos, end)
            if field == 3:
                clock.append(value)
            elif field == 1:
                version = _u32(value)
            elif field == 4:
                names_start = _u32(value)
            elif field == 6:
                epoch = value
            elif field == 7:
                call_id = value
            elif field == 9:
                peer_known = _u32(value)
            elif field in (2, 5, 8, 10, 11):
                raise WireError(f"field {field} has the wrong wire type")
        elif wire_type == 2:
            stop, pos = _read_length(data, pos, end)
            if field == 3:
                while pos < stop:
                    value, pos = read_varint(data, pos, stop)
                    clock.append(value)
            elif field == 2:
                sender = _text(data, pos, stop)
            elif field == 5:
                names.append(_text(data, pos, stop))
            elif field == 10:
                trace_id = data[pos:stop]
            elif field == 11:
                span_id = data[pos:stop]
            elif field in (1, 4, 6, 7, 8, 9):
                raise WireError(f"field {field} has the wrong wire type")
            pos = stop
        elif wire_type == 5:
            if end - pos < 4:
                raise WireError("truncated fixed32")
            if field == 8:
                peer_fp = int.from_bytes(data[pos : pos + 4], "little")
            elif field <= 11:
                raise WireError(f"field {field} has the wrong wire type")
            pos += 4
        elif wire_type == 1:
            if end - pos < 8:
                raise WireError("truncated fixed64")
            if field <= 11:
                raise WireError(f"field {field} has the wrong wire type")
            pos += 8
        else:
            raise WireError(f"unsupported wire type {wire_type}")
    return StampFields(
        version, sender, clock, names_start, names, epoch, call_id, peer_fp, peer_known, trace_id, span_id
    )
