"""Reading and writing the stamp in gRPC metadata without touching the rest.

Metadata arrives as tuples of (key, value), ``grpc.aio.Metadata`` or
``_Metadatum`` objects; every helper copies, none mutates what it was given.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cutwatch.core import BOUNCED_STAMP_METADATA_KEY, STAMP_METADATA_KEY

MetadataPairs = tuple[tuple[str, str | bytes], ...]


def find_stamp(metadata: Iterable[Any] | None) -> bytes | str | None:
    """The stamp value in ``metadata``, or None when it carries none."""
    if not metadata:
        return None
    for item in metadata:
        key, value = item[0], item[1]
        if key == STAMP_METADATA_KEY:
            return value  # type: ignore[no-any-return]
    return None


def find_answer_stamp(metadata: Iterable[Any] | None) -> tuple[bytes | str | None, bool]:
    """The stamp of an answer, and whether its server says the request bounced."""
    if not metadata:
        return None, False
    for item in metadata:
        key = item[0]
        if key == STAMP_METADATA_KEY:
            return item[1], False
        if key == BOUNCED_STAMP_METADATA_KEY:
            return item[1], True
    return None, False


def without_stamp(metadata: Iterable[Any] | None) -> MetadataPairs:
    """A copy of ``metadata`` as pairs, minus any stamp."""
    if not metadata:
        return ()
    return tuple(
        (item[0], item[1])
        for item in metadata
        if item[0] != STAMP_METADATA_KEY and item[0] != BOUNCED_STAMP_METADATA_KEY
    )


def with_stamp(metadata: Iterable[Any] | None, stamp: bytes, key: str = STAMP_METADATA_KEY) -> MetadataPairs:
    """A copy of ``metadata`` with our stamp added under ``key`` (replacing a stale one)."""
    return (*without_stamp(metadata), (key, stamp))


def method_name(method: str | bytes) -> str:
    return method.decode("utf-8", "replace") if isinstance(method, bytes) else method


def call_timeout(details: Any) -> float | None:
    """The deadline a client call was given, in seconds from now (None: none, or not a number)."""
    timeout = getattr(details, "timeout", None)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        return None
    return max(float(timeout), 0.0) if timeout < 1e9 else None


ATTEMPT_METADATA_KEY = "grpc-previous-rpc-attempts"


def find_stamp_and_attempt(metadata: Iterable[Any] | None) -> tuple[bytes | str | None, int]:
    """:func:`find_stamp` and :func:`find_attempt` in one pass (on the server's polling thread)."""
    stamp: bytes | str | None = None
    attempt = 0
    if not metadata:
        return stamp, attempt
    for item in metadata:
        key = item[0]
        if key == STAMP_METADATA_KEY:
            stamp = item[1]
        elif key == ATTEMPT_METADATA_KEY:
            attempt = _attempt(item[1])
    return stamp, attempt


def find_attempt(metadata: Iterable[Any] | None) -> int:
    """Which attempt of a retried or hedged call this is (0 for the first), from gRPC's own header."""
    if not metadata:
        return 0
    for item in metadata:
        if item[0] == ATTEMPT_METADATA_KEY:
            return _attempt(item[1])
    return 0


def _attempt(value: object) -> int:
    if not isinstance(value, str | bytes | int):
        return 0
    try:
        return max(0, min(int(value), 1 << 16))
    except ValueError:
        return 0
