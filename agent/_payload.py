"""Messages as JSON, for the payloads of in-transit records.

Rendered only when a message is recorded (lazily, off the common path), and
capped: a payload larger than the limit is replaced by a marker that says
so, rather than growing the collector's memory and the store without bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
STREAM_PAYLOAD = json.dumps({"cutwatch": "stream"})
"""The payload of a streaming call's request or response: its messages are not captured."""


def message_json(message: Any, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """``message`` (usually a protobuf message) as JSON text of at most about ``max_bytes``."""
    try:
        if isinstance(message, Message):
            value: Any = MessageToDict(message, preserving_proto_field_name=True)
        elif message is None or isinstance(message, (str, int, float, bool, list, dict)):
            value = message
        else:
            value = {"cutwatch": "unrenderable", "type": type(message).__name__}
        text = json.dumps(value, sort_keys=True, allow_nan=False, default=str)
    except (TypeError, ValueError) as exc:
        return json.dumps({"cutwatch": "unrenderable", "error": str(exc)[:200]})
    if len(text) > max_bytes:
        return json.dumps({"cutwatch": "truncated", "bytes": len(text)})
    return text


def lazy_message_json(message: Any, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Callable[[], str]:
    """A function rendering ``message`` when a record needs it; streams get :data:`STREAM_PAYLOAD`."""
    if not isinstance(message, Message) and (hasattr(message, "__next__") or hasattr(message, "__aiter__")):
        return lambda: STREAM_PAYLOAD
    return lambda: message_json(message, max_bytes)


def render_later(
    response: Callable[[], object], max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Callable[[], str]:
    """A function rendering the message ``response()`` returns, when a record needs it.

    A response that cannot be read any more (its call failed) renders as a
    marker instead of failing the record.
    """

    def render() -> str:
        try:
            message = response()
        except Exception as exc:
            return json.dumps({"cutwatch": "unrenderable", "error": type(exc).__name__})
        return message_json(message, max_bytes)

    return render
