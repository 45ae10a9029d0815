"""A stored cut as portable row values, and back: what any SQL store writes and reads.

JSON as text in its canonical form, integers within 64 signed bits (an
unsigned 64-bit counter is stored two's-complement), text that is valid
UTF-8. A value that cannot be kept exactly is refused before anything is
written; a value read back that is not what was written is an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from cutwatch.collector._records import (
    CutStatus,
    LeftOut,
    StoredChannelState,
    StoredCut,
    StoredLocalState,
    dumps,
)
from cutwatch.core import DuplicateDelivery, StorageError, UnsettledCall

__all__ = [
    "channel_row",
    "check_cut",
    "checked_counters",
    "checked_json",
    "counters_from",
    "duplicates_from",
    "from_i64",
    "is_duplicate",
    "is_unsettled",
    "is_utf8",
    "json_from",
    "left_out_from",
    "local_row",
    "status_from",
    "storable_epoch",
    "strings_from",
    "to_i64",
    "unsettled_from",
    "utf8_text",
]

STATUSES: frozenset[str] = frozenset(("COMPLETE", "INCOMPLETE"))
_I64_MAX = 2**63 - 1
_U64 = 2**64


def storable_epoch(epoch: int) -> bool:
    """Whether a cut can have ``epoch`` (SQL BIGINT); SQLite raises OverflowError on a bigger one."""
    return 1 <= epoch <= _I64_MAX


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_text(text: str) -> str:
    """``text`` as SQLite can store it: lone surrogates become ``\\udXXX`` escapes."""
    return text if is_utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_cut(cut: StoredCut) -> None:
    """Reject what no store could hold faithfully, before anything is written."""
    if not storable_epoch(cut.epoch):
        raise ValueError(f"epoch {cut.epoch} is out of range")
    if cut.status not in STATUSES:
        raise ValueError(f"status must be COMPLETE or INCOMPLETE, not {cut.status!r}")
    if not (math.isfinite(cut.started) and math.isfinite(cut.finished)) or cut.finished < cut.started:
        raise ValueError(f"cut {cut.epoch}: started/finished must be finite and in order")


def local_row(epoch: int, state: StoredLocalState) -> tuple[object, ...]:
    return (
        epoch,
        state.process,
        state.service,
        dumps(checked_counters(state.clock)),
        checked_json(state.state_json),
        checked_json(state.tasks_json),
        dumps(checked_counters(state.sent)),
        dumps(checked_counters(state.consumed)),
        int(bool(state.truncated)),
        dumps(checked_counters(state.pools)),
    )


def channel_row(epoch: int, seq: int, channel: StoredChannelState) -> tuple[object, ...]:
    return (
        epoch,
        seq,
        channel.sender,
        channel.receiver,
        channel.method,
        channel.kind,
        to_i64(channel.call_id),
        to_i64(channel.attempt),
        checked_json(channel.payload_json),
        to_i64(channel.index),
    )


def checked_json(text: str) -> str:
    """JSON text is stored as given, but only if it is JSON."""
    try:
        json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON text: {exc}") from None
    return text


def checked_counters(counters: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in counters.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"counters map str to int >= 0, got {key!r}: {value!r}")
        out[key] = value
    return out


def to_i64(value: int) -> int:
    """Unsigned 64-bit ids (call ids come from the wire) as SQL BIGINT, bit for bit."""
    if isinstance(value, bool) or not 0 <= value < _U64:
        raise ValueError(f"{value!r} is not an unsigned 64-bit integer")
    return value - _U64 if value > _I64_MAX else value


def from_i64(value: int) -> int:
    return value + _U64 if value < 0 else value


def json_from(text: object) -> Any:
    try:
        return json.loads(str(text))
    except ValueError as exc:
        raise StorageError(f"corrupt JSON in the store: {exc}") from None


def strings_from(text: object) -> tuple[str, ...]:
    value = json_from(text)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise StorageError("corrupt store: expected a list of strings")
    return tuple(value)


def counters_from(text: object) -> dict[str, int]:
    value = json_from(text)
    if not isinstance(value, dict):
        raise StorageError("corrupt store: expected an object of counters")
    try:
        return checked_counters(value)
    except ValueError as exc:
        raise StorageError(f"corrupt store: {exc}") from None


def unsettled_from(text: object) -> tuple[UnsettledCall, ...]:
    value = json_from(text)
    if not isinstance(value, list) or not all(is_unsettled(item) for item in value):
        raise StorageError(
            "corrupt store: expected unsettled calls as [caller, call_id, method, target, failed]"
        )
    return tuple(UnsettledCall(*item) for item in value)


def is_unsettled(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 5
        and isinstance(item[1], int)
        and not isinstance(item[1], bool)
        and all(isinstance(part, str) for part in (item[0], *item[2:]))
    )


def left_out_from(text: object) -> tuple[LeftOut, ...]:
    value = json_from(text)
    if not isinstance(value, list) or not all(
        isinstance(item, list) and len(item) == 3 and all(isinstance(part, str) for part in item)
        for item in value
    ):
        raise StorageError("corrupt store: expected left-out processes as [process, service, why]")
    return tuple(LeftOut(*item) for item in value)


def duplicates_from(text: object) -> tuple[DuplicateDelivery, ...]:
    value = json_from(text)
    if not isinstance(value, list) or not all(is_duplicate(item) for item in value):
        raise StorageError("corrupt store: expected duplicates as [caller, call_id, [where, ...]]")
    return tuple(DuplicateDelivery(item[0], item[1], tuple(item[2])) for item in value)


def is_duplicate(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 3
        and isinstance(item[0], str)
        and isinstance(item[1], int)
        and not isinstance(item[1], bool)
        and isinstance(item[2], list)
        and all(isinstance(part, str) for part in item[2])
    )


def status_from(value: object) -> CutStatus:
    if value == "COMPLETE":
        return "COMPLETE"
    if value == "INCOMPLETE":
        return "INCOMPLETE"
    raise StorageError(f"corrupt store: unknown status {value!r}")
