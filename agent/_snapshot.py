"""One process's part in non-FIFO snapshots: Mattern/Lai-Yang colouring with message counting.

Pure state machine, no I/O and no locking: the agent calls it under the lock
that also guards ``atomic()`` blocks and hands out what it emits (local
snapshots, channel records, recording-stopped notices) from :meth:`drain`.

The rules, for snapshot (epoch) ``k`` at process ``p``:

- Every stamped message carries the sender's epoch at the send. A message
  with epoch < k was sent before its sender's cut for k.
- ``p`` takes its local snapshot for k when the control message for k
  arrives, or just before delivering a message stamped with epoch >= k,
  whichever is first. Several epochs may be taken at the same instant; they
  then have identical content.
- Requests are counted per sender, responses per channel: a gRPC client
  does not know which process a request reaches (a channel may balance
  over several servers, and its server is known only from a response),
  while a server always knows its caller. So ``requests_sent`` is one
  count, ``responses_sent[p]`` counts responses to ``p``, and the receiver
  counts ``requests_consumed[q]`` and ``responses_consumed[q]`` for
  messages from ``q`` whose effect is applied (the handler left its first
  ``atomic()`` block or returned). A local snapshot copies all four.
- In transit for k from ``q``: messages with epoch < k that were not
  consumed before their receiver's cut. They are recorded when that is
  known for certain: at the cut for messages already delivered but not yet
  consumed, and at delivery for messages delivered after the cut. Recording
  at delivery rather than at consumption means a handler that never reaches
  ``atomic()`` (a deadlocked one, typically) cannot hold a snapshot up: the
  message's payload is known, and it is logically still in the channel.
- The collector expects ``requests_sent_q - sum_p requests_consumed_p[q]``
  request records from ``q`` at any receiver, and
  ``responses_sent_q[p] - responses_consumed_p[q]`` response records on
  ``q -> p``; a message stamped >= k forces its receiver's cut before its
  delivery, so everything consumed before a cut was sent before the
  sender's cut.

Duplicates: a message is identified by ``MsgKey(sender, call_id, attempt,
kind)``. The sender counts one send per key it stamps. When the transport
delivers one stamped message more than once (gRPC retries and hedging reuse
the metadata of the call), the first delivery counts and the others are
reported as duplicates, never counted as consumed and never recorded. A
response written by the handler of a duplicate request shares its key with
the first handler's response; the agent counts a send only for the first.
Duplicates are recognised per receiver: a retry that a load balancer sends
to another server is counted there again (an open question, see
docs/snapshot-design.md).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from cutwatch.agent._clock import VectorClock

__all__ = [
    "REQUEST",
    "RESPONSE",
    "Capture",
    "ChannelRecord",
    "Delivery",
    "LocalSnapshot",
    "MsgKey",
    "RecordingStopped",
    "SnapshotEvent",
    "SnapshotParticipant",
    "SnapshotStats",
]

REQUEST: Final = "request"
RESPONSE: Final = "response"
_KINDS = frozenset((REQUEST, RESPONSE))
REASON_TRUNCATED = "recording truncated"
REASON_TOO_MANY_OPEN = "too many open epochs"


class MsgKey(NamedTuple):
    """Identity of one stamped message; equal keys are the same message delivered again."""

    sender: str
    call_id: int
    attempt: int
    kind: str


class Capture(NamedTuple):
    """What the caller captured for a local snapshot, under its lock: the clock and the state."""

    clock: Mapping[str, int]
    state: object


@dataclass(frozen=True)
class LocalSnapshot:
    """Process ``process``'s local snapshot for ``epoch``; counters are cumulative.

    Requests sent are one count (their receiver is not known to the sender);
    responses sent are per receiver; consumed messages are per sender.
    """

    epoch: int
    process: str
    clock: VectorClock
    state: object
    requests_sent: int = 0
    responses_sent: Mapping[str, int] = field(default_factory=dict)
    requests_consumed: Mapping[str, int] = field(default_factory=dict)
    responses_consumed: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelRecord:
    """One message in transit on ``sender -> receiver`` in snapshot ``epoch``."""

    epoch: int
    sender: str
    receiver: str
    payload_json: str
    msg_key: MsgKey
    method: str = ""

    @property
    def kind(self) -> str:
        """``request`` or ``response``: requests are accounted per sender, responses per channel."""
        return self.msg_key.kind


@dataclass(frozen=True)
class RecordingStopped:
    """``process`` stopped recording ``epoch`` before it was closed: the cut cannot be complete."""

    epoch: int
    process: str
    reason: str
    dropped: int


SnapshotEvent = LocalSnapshot | ChannelRecord | RecordingStopped


@dataclass(eq=False)
class Delivery:
    """A delivered message, kept by the caller until the message is consumed."""

    sender: str
    msg_epoch: int
    payload_json: str
    msg_key: MsgKey
    method: str = ""
    duplicate: bool = False
    consumed: bool = False


@dataclass
class SnapshotStats:
    """Counters a participant exposes; ``recent_duplicates`` is bounded."""

    duplicates: int = 0
    recent_duplicates: list[MsgKey] = field(default_factory=list)
    records_dropped: int = 0
    epochs_evicted: int = 0
    seen_keys_evicted: int = 0


@dataclass
class _OpenEpoch:
    records: int = 0
    dropped: int = 0


class SnapshotParticipant:
    """The snapshot state machine of one process; not thread-safe, the caller locks.

    ``max_records`` bounds the channel records per epoch (payloads past it are
    dropped and the epoch reported truncated), ``max_open_epochs`` the epochs
    recorded at once (the oldest is stopped), ``max_seen_keys`` the window in
    which duplicate deliveries are recognised.
    """

    def __init__(
        self,
        process: str,
        *,
        max_records: int = 10_000,
        max_open_epochs: int = 8,
        max_seen_keys: int = 100_000,
        max_recent_duplicates: int = 100,
    ) -> None:
        if max_records < 0 or max_open_epochs < 1 or max_seen_keys < 1:
            raise ValueError("max_records >= 0, max_open_epochs >= 1 and max_seen_keys >= 1 are required")
        self.process = process
        self.epoch = 0
        self.requests_sent = 0
        self.responses_sent: dict[str, int] = {}
        self.requests_consumed: dict[str, int] = {}
        self.responses_consumed: dict[str, int] = {}
        self._max_records = max_records
        self._max_open = max_open_epochs
        self._max_seen = max_seen_keys
        self._open: OrderedDict[int, _OpenEpoch] = OrderedDict()
        self._closed_ahead: set[int] = set()
        self._pending: dict[int, Delivery] = {}
        self._seen: OrderedDict[MsgKey, None] = OrderedDict()
        self._outbox: list[SnapshotEvent] = []
        self._recent_dups: deque[MsgKey] = deque(maxlen=max_recent_duplicates)
        self._stats = SnapshotStats()

    # Messages ---------------------------------------------------------------------
    def on_send(self, kind: str, receiver: str = "") -> int:
        """Count one stamped message; returns the epoch for its stamp.

        A request is counted without a receiver (the client cannot know which
        server gets it); a response is counted for ``receiver``, the caller.
        """
        if kind == REQUEST:
            self.requests_sent += 1
        elif kind == RESPONSE:
            if not receiver:
                raise ValueError("a response is counted for its receiver; none given")
            self.responses_sent[receiver] = self.responses_sent.get(receiver, 0) + 1
        else:
            raise ValueError(f"unknown message kind {kind!r}")
        return self.epoch

    def on_deliver(
        self,
        sender: str,
        msg_epoch: int,
        payload_json: str,
        msg_key: MsgKey,
        capture: Callable[[], Capture],
        *,
        method: str = "",
    ) -> Delivery:
        """A message is about to reach the application; keep the handle until it is consumed.

        ``capture`` is called (at most once) when the message forces local
        snapshots first, i.e. when its epoch is ahead of ours.
        """
        if msg_key.kind not in _KINDS:
            raise ValueError(f"unknown message kind {msg_key.kind!r}")
        if msg_epoch > self.epoch:
            self.take_snapshot(msg_epoch, capture())
        delivery = Delivery(sender, msg_epoch, payload_json, msg_key, method)
        if msg_key in self._seen:
            delivery.duplicate = True
            self._stats.duplicates += 1
            self._recent_dups.append(msg_key)
            return delivery
        self._remember(msg_key)
        self._pending[id(delivery)] = delivery
        for k in range(msg_epoch + 1, self.epoch + 1):
            self._record(k, delivery)
        return delivery

    def on_consume(self, delivery: Delivery) -> None:
        """The message's effect is applied. Idempotent; duplicates are not counted."""
        if delivery.consumed:
            return
        delivery.consumed = True
        if delivery.duplicate:
            return
        self._pending.pop(id(delivery), None)
        counts = self.requests_consumed if delivery.msg_key.kind == REQUEST else self.responses_consumed
        counts[delivery.sender] = counts.get(delivery.sender, 0) + 1

    # Snapshots --------------------------------------------------------------------
    def take_snapshot(self, k: int, capture: Capture) -> list[LocalSnapshot]:
        """Take local snapshots epoch+1..k now (control message for k); no-op when k <= epoch."""
        taken: list[LocalSnapshot] = []
        if k <= self.epoch:
            return taken
        clock = VectorClock(capture.clock)
        requests_consumed, responses_consumed = dict(self.requests_consumed), dict(self.responses_consumed)
        responses_sent = dict(self.responses_sent)
        for epoch in range(self.epoch + 1, k + 1):
            self.epoch = epoch
            if epoch in self._closed_ahead:
                self._closed_ahead.discard(epoch)
                continue
            snap = LocalSnapshot(
                epoch,
                self.process,
                clock,
                capture.state,
                requests_sent=self.requests_sent,
                responses_sent=responses_sent,
                requests_consumed=requests_consumed,
                responses_consumed=responses_consumed,
            )
            taken.append(snap)
            self._outbox.append(snap)
            self._open_epoch(epoch)
            for delivery in self._pending.values():
                self._record(epoch, delivery)
        return taken

    def close_epoch(self, k: int) -> None:
        """The collector is done with ``k`` (complete or given up): stop recording it, free it."""
        if k > self.epoch:
            self._closed_ahead.add(k)
            while len(self._closed_ahead) > self._max_open:
                self._closed_ahead.discard(min(self._closed_ahead))
            return
        if self._open.pop(k, None) is not None:
            self._outbox = [event for event in self._outbox if event.epoch != k]

    @property
    def open_epochs(self) -> tuple[int, ...]:
        return tuple(self._open)

    def drain(self) -> list[SnapshotEvent]:
        """Everything emitted since the last drain, in order, for the collector."""
        out, self._outbox = self._outbox, []
        return out

    def pending(self) -> list[Delivery]:
        """Delivered, not yet consumed messages (oldest first)."""
        return list(self._pending.values())

    def stats(self) -> SnapshotStats:
        stats = self._stats
        return SnapshotStats(
            duplicates=stats.duplicates,
            recent_duplicates=list(self._recent_dups),
            records_dropped=stats.records_dropped,
            epochs_evicted=stats.epochs_evicted,
            seen_keys_evicted=stats.seen_keys_evicted,
        )

    # Internals ----------------------------------------------------------------------
    def _remember(self, key: MsgKey) -> None:
        self._seen[key] = None
        if len(self._seen) > self._max_seen:
            self._seen.popitem(last=False)
            self._stats.seen_keys_evicted += 1

    def _open_epoch(self, epoch: int) -> None:
        self._open[epoch] = _OpenEpoch()
        while len(self._open) > self._max_open:
            oldest, state = self._open.popitem(last=False)
            self._stats.epochs_evicted += 1
            self._outbox.append(RecordingStopped(oldest, self.process, REASON_TOO_MANY_OPEN, state.dropped))

    def _record(self, epoch: int, delivery: Delivery) -> None:
        state = self._open.get(epoch)
        if state is None:
            return
        if state.records >= self._max_records:
            if not state.dropped:
                self._outbox.append(RecordingStopped(epoch, self.process, REASON_TRUNCATED, 1))
            state.dropped += 1
            self._stats.records_dropped += 1
            return
        state.records += 1
        self._outbox.append(
            ChannelRecord(
                epoch, delivery.sender, self.process, delivery.payload_json, delivery.msg_key, delivery.method
            )
        )
