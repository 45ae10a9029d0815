"""The opt-in envelope of stream messages: a stamp in a field of the application's own messages.

gRPC carries metadata only at a stream's start and end. A message type that
declares a ``bytes`` field named as the agent's ``stream_stamp_field``
(``cutwatch_stamp`` by default) gets a stamp in it from the sending agent
and gives it to the receiving one, so that each stream message is a stamped
message of its own: its receiver takes its cut before taking a message sent
after its sender's cut, and stream cuts are exact. Other types, and
messages that are not protobuf messages, go as they are.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from cutwatch.core import ProcessCore, StreamEnd

__all__ = ["read_stamp", "write_stamp"]

_FIELDS: dict[tuple[Any, str], bool] = {}
"""Whether a message type (its descriptor) has the envelope field, by descriptor and field name."""


_LABEL_REPEATED = 3  # FieldDescriptor.LABEL_REPEATED, gone from protobuf's newer type stubs


def _repeated(field: FieldDescriptor) -> bool:
    # ``is_repeated`` arrived in protobuf 5.x and ``label`` is deprecated after it; 4.25 has only ``label``.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(getattr(field, "label", None) == _LABEL_REPEATED)


def _has_field(message: Any, name: str) -> bool:
    descriptor = getattr(message, "DESCRIPTOR", None)
    if descriptor is None:
        return False
    key = (descriptor, name)
    found = _FIELDS.get(key)
    if found is None:
        field = getattr(descriptor, "fields_by_name", {}).get(name)
        found = field is not None and field.type == FieldDescriptor.TYPE_BYTES and not _repeated(field)
        if len(_FIELDS) < 4096:
            _FIELDS[key] = found
    return found


def write_stamp(core: ProcessCore, end: StreamEnd, message: Any) -> None:
    """Put a stamp in ``message`` for ``end``, if its type has the envelope field."""
    name = core.stream_stamp_field
    if not name or not _has_field(message, name):
        return
    stamp = core.stream_stamp(end)
    if stamp is not None:
        try:
            setattr(message, name, stamp)
        except Exception:
            core.internal_error("writing a stream message's stamp")


def read_stamp(core: ProcessCore, message: Any) -> bytes | None:
    """The stamp in ``message``, if its type has the envelope field and the field is set."""
    name = core.stream_stamp_field
    if not name or not _has_field(message, name):
        return None
    value = getattr(message, name, b"")
    return bytes(value) if value else None
