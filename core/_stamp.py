"""The stamp codec: vector clocks on the wire, a few bytes per entry.

Each agent numbers the process ids it knows in the order it learns them (its
dictionary, index 0 being itself) and sends clock values in that order as
packed varints, so an entry costs only its value once the receiver knows the
dictionary. The names themselves travel only until the peer acknowledges
them: each stamp carries, for the process it is addressed to, how much of
that process's dictionary the sender already holds. Acknowledgements may
arrive late or out of order; a stale one only causes names to be resent.

The codec is pure (no gRPC, no locking): the agent serialises access. The
bytes are the protobuf encoding of ``cutwatch.v1.Stamp`` (proto/stamp.proto),
written and parsed by ``_wire`` without building message objects.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cutwatch.core._wire import (
    StampFields,
    WireError,
    encode_with_prefix,
    parse_stamp,
    peer_tail,
    stamp_prefix,
)
from cutwatch.core.errors import StampError

STAMP_METADATA_KEY = "cutwatch-stamp-bin"
BOUNCED_STAMP_METADATA_KEY = "cutwatch-bounced-bin"
"""Where a server puts the stamp of its answer to a request that bounced (its handler failed before
consuming it): the client then reports the call failed although the answer is stamped."""
STAMP_VERSION = 1

DEFAULT_MAX_STAMP_BYTES = 4096
"""gRPC base64-encodes binary metadata (4/3) and by default refuses header
lists over 8 KiB, so a 4 KiB stamp leaves room for the application's own."""

DEFAULT_MAX_CLOCK_ENTRIES = 4096
DEFAULT_MAX_EPOCH_AHEAD = 256
"""A receiver takes a local snapshot for every epoch up to a stamp's before
delivering it, so a decoded epoch runs at most this many epochs past the
newest one the codec has seen: one forged epoch near 2^64 would otherwise
keep the agent taking snapshots forever. The stamp itself is still tracked;
a receiver far behind (one without a collector, say) catches up this many
epochs per message. Processes with a collector run a few epochs apart."""

MAX_PROCESS_ID_LENGTH = 256
_MAX_COUNTER = (1 << 63) - 1


def fingerprint(process_id: str) -> int:
    """A 32-bit fingerprint naming a process in acknowledgements."""
    return zlib.crc32(process_id.encode("utf-8"))


@dataclass(slots=True)
class DecodedStamp:
    """What a receiver learns from one stamp."""

    sender: str
    entries: tuple[tuple[str, int], ...]
    """Clock entries whose process ids the receiver could resolve."""
    epoch: int
    """The sender's epoch, cut to ``max_epoch_ahead`` past the newest the codec had seen."""
    call_id: int
    trace_id: bytes
    span_id: bytes
    unresolved: int
    """Entries dropped because their names were not known yet."""


class StampHeader(NamedTuple):
    """What a stamp says of its message without its clock (``StampCodec.peek``)."""

    sender: str
    epoch: int
    call_id: int
    trace_id: bytes
    span_id: bytes


@dataclass(frozen=True, slots=True)
class EncodedStamp:
    data: bytes
    entries_sent: int
    degraded: bool
    """True when the clock was cut to fit the size limit."""


class StampCodec:
    """Encodes and decodes stamps for one process; keeps the dictionary state.

    ``max_peers`` bounds both tables (what peers know of our names, and the
    names we know of each peer); the least recently used peer is forgotten,
    which costs at most a resend of its names. ``max_epoch_ahead`` bounds how
    far past the newest epoch this codec has encoded or decoded a decoded
    epoch may run.
    """

    def __init__(
        self,
        owner: str,
        *,
        max_stamp_bytes: int = DEFAULT_MAX_STAMP_BYTES,
        max_clock_entries: int = DEFAULT_MAX_CLOCK_ENTRIES,
        max_peers: int = 1024,
        max_epoch_ahead: int = DEFAULT_MAX_EPOCH_AHEAD,
    ) -> None:
        if not owner or len(owner) > MAX_PROCESS_ID_LENGTH:
            raise ValueError(f"process id must be 1..{MAX_PROCESS_ID_LENGTH} characters")
        self.owner = owner
        self.owner_fp = fingerprint(owner)
        self.max_stamp_bytes = max_stamp_bytes
        self.max_clock_entries = max_clock_entries
        self._max_peers = max_peers
        self.max_epoch_ahead = max_epoch_ahead
        self._newest_epoch = 0
        self._known_by: OrderedDict[str, int] = OrderedDict()
        self._peer_names: OrderedDict[str, list[str | None]] = OrderedDict()
        self._contiguous: dict[str, int] = {}
        self._fingerprints: dict[str, int] = {}
        self._prefix = stamp_prefix(STAMP_VERSION, owner)

    # Encoding ---------------------------------------------------------------
    def encode(
        self,
        names: Sequence[str],
        values: Sequence[int],
        *,
        peer: str | None,
        epoch: int = 0,
        call_id: int = 0,
        trace_id: bytes = b"",
        span_id: bytes = b"",
    ) -> EncodedStamp:
        """Encode our clock (``names``/``values`` in dictionary order) for ``peer``.

        ``peer`` is the process the message goes to, when known (responses
        always; requests once the channel has seen a response).
        """
        count = len(values)
        if epoch > self._newest_epoch:
            self._newest_epoch = epoch
        if peer is None:
            start, tail = 1, b""
        else:
            start = max(1, min(self._known_by.get(peer, 1), count))
            tail = peer_tail(self._fingerprint_of(peer), self._contiguous.get(peer, 0))
        prefix = self._prefix
        data = encode_with_prefix(
            prefix, values, start, names[start:count], epoch, call_id, tail, trace_id, span_id
        )
        if len(data) <= self.max_stamp_bytes:
            return EncodedStamp(data, count, False)

        def build(upto: int, first_name: int) -> bytes:
            return encode_with_prefix(
                prefix,
                values[:upto],
                first_name,
                names[first_name:upto],
                epoch,
                call_id,
                tail,
                trace_id,
                span_id,
            )

        return self._degrade(build, count, start)

    def _degrade(self, build: Callable[[int, int], bytes], count: int, start: int) -> EncodedStamp:
        """Send the longest prefix of the clock that fits.

        Dropping entries only makes the receiver learn less: its clock stays
        a valid lower bound, and no cut check can fail because of it. Each
        probe cuts from the original names start, so size grows with the
        prefix and a binary search finds the longest one.
        """
        low, high = 1, count
        best = b""
        best_count = 1
        while low <= high:
            mid = (low + high) // 2
            data = build(mid, max(1, min(start, mid)))
            if len(data) <= self.max_stamp_bytes:
                best, best_count = data, mid
                low = mid + 1
            else:
                high = mid - 1
        if not best:
            raise StampError("stamp does not fit its size limit even with one clock entry")
        return EncodedStamp(best, best_count, True)

    # Decoding ---------------------------------------------------------------
    def peek(self, data: bytes) -> StampHeader:
        """Who sent ``data``, in which epoch, for which call: checked as :meth:`decode` checks it, but
        learning nothing from it (no names, no epoch); raise ``StampError`` and nothing else."""
        message, epoch = self._checked(data)
        return StampHeader(message.sender, epoch, message.call_id, message.trace_id, message.span_id)

    def decode(self, data: bytes) -> DecodedStamp:
        """Decode a peer's stamp; raise ``StampError`` and nothing else."""
        message, epoch = self._checked(data)
        sender, values, start, names = message.sender, message.clock, message.names_start, message.names
        count = len(values)
        trace_id, span_id = message.trace_id, message.span_id
        table = self._table_for(sender)
        if names:
            if len(table) < start:
                table.extend([None] * (start - len(table)))
            for offset, name in enumerate(names):
                index = start + offset
                if index < len(table):
                    table[index] = name
                else:
                    table.append(name)
            self._contiguous[sender] = _contiguous(table)
        if message.peer_fp == self.owner_fp and message.peer_fp:
            self._remember_known_by(sender, message.peer_known)
        if epoch > self._newest_epoch:
            self._newest_epoch = epoch

        known = table[:count]
        entries: tuple[tuple[str, int], ...]
        unresolved = 0
        if len(known) == count and None not in known and (count < 2 or 0 not in values[1:]):
            # Steady state: every name known, no empty entries.
            entries = tuple(zip(known, values, strict=True))  # type: ignore[arg-type]
        else:
            resolved: list[tuple[str, int]] = []
            for index, value in enumerate(values):
                known_name = known[index] if index < len(known) else None
                if index == 0:
                    resolved.append((sender, value))
                elif known_name is None:
                    unresolved += 1
                elif value:
                    resolved.append((known_name, value))
            entries = tuple(resolved)
        return DecodedStamp(
            sender=sender,
            entries=entries,
            epoch=epoch,
            call_id=message.call_id,
            trace_id=trace_id,
            span_id=span_id,
            unresolved=unresolved,
        )

    def _checked(self, data: bytes) -> tuple[StampFields, int]:
        """The stamp's fields, checked, and its epoch as this codec takes it; raise ``StampError``."""
        if len(data) > self.max_stamp_bytes:
            raise StampError(f"stamp of {len(data)} bytes exceeds the {self.max_stamp_bytes}-byte limit")
        try:
            message = parse_stamp(data)
        except WireError as exc:
            raise StampError(f"stamp does not parse: {exc}") from None
        if message.version != STAMP_VERSION:
            raise StampError(f"unsupported stamp version {message.version}")
        sender = message.sender
        if not sender or len(sender) > MAX_PROCESS_ID_LENGTH:
            raise StampError("stamp has no valid sender")
        values = message.clock
        count = len(values)
        if count > self.max_clock_entries:
            raise StampError(f"stamp clock has {count} entries, over {self.max_clock_entries}")
        start = message.names_start
        names = message.names
        if names and (start < 1 or start + len(names) > count):
            raise StampError("stamp names do not match its clock")
        for name in names:
            if not name or len(name) > MAX_PROCESS_ID_LENGTH:
                raise StampError("stamp carries an invalid process id")
        if values and max(values) > _MAX_COUNTER:
            raise StampError("stamp clock value out of range")
        trace_id, span_id = message.trace_id, message.span_id
        if len(trace_id) not in (0, 16) or len(span_id) not in (0, 8):
            raise StampError("stamp trace or span id has the wrong length")
        return message, min(message.epoch, self._newest_epoch + self.max_epoch_ahead)

    # Dictionary bookkeeping ---------------------------------------------------
    def _table_for(self, sender: str) -> list[str | None]:
        table = self._peer_names.get(sender)
        if table is None:
            table = [sender]
            self._peer_names[sender] = table
            self._contiguous[sender] = 1
            if len(self._peer_names) > self._max_peers:
                evicted, _ = self._peer_names.popitem(last=False)
                self._contiguous.pop(evicted, None)
        else:
            self._peer_names.move_to_end(sender)
        return table

    def _fingerprint_of(self, peer: str) -> int:
        fp = self._fingerprints.get(peer)
        if fp is None:
            if len(self._fingerprints) >= self._max_peers:
                self._fingerprints.clear()
            fp = self._fingerprints[peer] = fingerprint(peer)
        return fp

    def _remember_known_by(self, peer: str, known: int) -> None:
        # The latest acknowledgement wins, even when lower: a peer that
        # forgot our names (restart, eviction) must get them again.
        self._known_by[peer] = known
        self._known_by.move_to_end(peer)
        if len(self._known_by) > self._max_peers:
            self._known_by.popitem(last=False)


def _contiguous(table: list[str | None]) -> int:
    for index, name in enumerate(table):
        if name is None:
            return index
    return len(table)
