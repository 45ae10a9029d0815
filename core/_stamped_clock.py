"""A process's vector clock and the stamps that carry it: tick, encode, decode, merge.

Not thread-safe: the process event core calls it under its event lock. What
cannot be tracked (a missing or malformed stamp, a clock cut short, entries
refused or unresolved) is counted in the process's counters, never raised.
"""

from __future__ import annotations

import logging

from cutwatch.core._clock import LocalClock, VectorClock
from cutwatch.core._counters import Counters
from cutwatch.core._stamp import DecodedStamp, StampCodec, StampHeader
from cutwatch.core.errors import StampError

__all__ = ["StampedClock"]

_LOG = logging.getLogger("cutwatch.agent")


class StampedClock:
    """The clock of process ``owner`` with its stamp codec."""

    def __init__(
        self, owner: str, counters: Counters, *, max_stamp_bytes: int, max_clock_entries: int
    ) -> None:
        self._clock = LocalClock(owner)
        self._codec = StampCodec(owner, max_stamp_bytes=max_stamp_bytes, max_clock_entries=max_clock_entries)
        self._counters = counters

    def tick(self) -> None:
        self._clock.tick()

    def snapshot(self) -> VectorClock:
        return self._clock.snapshot()

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self._clock.names, self._clock.values, strict=True))

    def encode(self, peer: str | None, epoch: int, call_id: int, trace_id: bytes, span_id: bytes) -> bytes:
        """A stamp of the clock as it is now, for ``peer`` when known."""
        encoded = self._codec.encode(
            self._clock.names,
            self._clock.values,
            peer=peer,
            epoch=epoch,
            call_id=call_id,
            trace_id=trace_id,
            span_id=span_id,
        )
        if encoded.degraded:
            self._counters.stamps_degraded += 1
        return encoded.data

    def decode(self, raw: bytes | str | None) -> DecodedStamp | None:
        """Decode a stamp, counting what cannot be tracked (None: the message goes untracked)."""
        if raw is None:
            self._counters.untracked_missing += 1
            return None
        if not isinstance(raw, bytes):
            self._counters.untracked_malformed += 1
            return None
        try:
            return self._codec.decode(raw)
        except StampError as exc:
            self._counters.untracked_malformed += 1
            _LOG.debug("untracked message: %s", exc)
            return None

    def peek(self, raw: bytes) -> StampHeader | None:
        """A stamp's sender, epoch and call, learning nothing from it and counting nothing (a call that
        waits for a worker: :meth:`decode` reads it, and counts it, when its handler starts)."""
        try:
            return self._codec.peek(raw)
        except StampError:
            return None

    def receive(self, decoded: DecodedStamp | None) -> None:
        """The receive event: merge the sender's clock (if any) and tick."""
        if decoded is not None:
            # A peer cannot know more of us than we do: merge_peer ignores our own entry.
            self._counters.clock_entries_refused += self._clock.merge_peer(
                decoded.entries, self._codec.max_clock_entries
            )
            self._counters.unresolved_entries += decoded.unresolved
        self._clock.tick()
