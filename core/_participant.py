"""One process's part in non-FIFO snapshots: Mattern/Lai-Yang colouring, settled call by call.

Pure state machine, no I/O and no locking: the process event core
(:mod:`cutwatch.core._process`) calls it under the lock that also guards
``atomic()`` blocks, and hands out what it emits (local snapshots, channel
records, call outcomes, recording-stopped notices) from :meth:`drain`.

The rules, for snapshot (epoch) ``k`` at process ``p``:

- Every stamped message carries the sender's epoch at the send. A message
  with epoch < k was sent before its sender's cut for k.
- ``p`` takes its local snapshot for k when the control message for k
  arrives, or just before delivering a message stamped with epoch >= k,
  whichever is first. Several epochs may be taken at the same instant; they
  then have identical content.
- A request is *consumed* when its handler leaves its first ``atomic()``
  block or returns; a response when the caller receives it.
- In transit for k: messages with epoch < k not consumed before their
  receiver's cut. The receiver records them when that is certain: at the cut
  for messages delivered but not consumed, at delivery for messages
  delivered after the cut. Recording at delivery rather than at consumption
  means a handler that never reaches ``atomic()`` (a deadlocked one,
  typically) cannot hold a snapshot up.

Completion is settled call by call rather than by counting messages, because
gRPC loses messages in ordinary operation (a deadline, a cancelled call, a
server that goes away) and cumulative counts never recover from one loss.
At its cut the caller lists its *open calls*: sent before the cut, no
response received before it. A call whose response arrived before the
caller's cut has nothing in transit (that response was sent before the
server's cut, so the request was consumed before it too). Every open call
must be *settled* by one of:

- a record of its request at some receiver (load balancers may pick any);
- a record of its response at the caller;
- the server's local snapshot, which lists the calls it consumed but has not
  answered yet (``answering``);
- the caller learning that the server is not instrumented (an answer
  without a stamp): nothing of the call can be recorded.

A call that fails without a stamped answer (deadline, cancellation, lost
connection) is *not* settled by the failure: its request may still be in a
server's queue or held by a proxy. It stays in the caller's open calls,
marked failed, until a snapshot *fences* it (:mod:`cutwatch.core._fences`):
in the flush round, once all local snapshots are in, the collector asks
each participant to refuse the call from then on and to send a
:class:`Flushed` marker, which travels behind every event that participant
emitted before it. A request that reached a participant before the fence is
in its records or its answering list, and those arrive before its marker;
one that reaches a participant after the fence is refused before the
application sees it. So once every marker of the round is in, a fenced call
is settled either way, and the caller forgets it when the epoch closes. A
call that fails after its caller's cut is fenced by another round.

The per-peer message counters are kept and reported in every local
snapshot, for reading; completion never depends on them.

Duplicates: a message is identified by ``MsgKey(sender, call_id, attempt,
kind)``. When the transport delivers one stamped message more than once
(gRPC retries and hedging reuse the metadata of the call), the first
delivery counts and the others are reported as duplicates, never consumed
and never recorded.

Bounced requests: a handler that fails before it consumes its request
(``UNAVAILABLE`` from a server shutting down, a redirect to a leader) changed
nothing, and gRPC's retry policy may send the call again, as a new attempt,
to another server. If the request was recorded in transit, its record would
settle the call although its value travels on in the next attempt, which
the next server may apply before its own cut. So the participant takes the
record back (:class:`Bounced`) before the error goes out: the retry can only
start after that, so the collector has the notice before any flush marker
that the retry's effect could precede, and the call waits for its next
attempt.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from cutwatch.core._clock import VectorClock
from cutwatch.core._events import (
    OUTCOME_BOUNCED,
    OUTCOME_FAILED,
    REASON_TOO_MANY_CALLS,
    REASON_TOO_MANY_OPEN,
    REASON_TRUNCATED,
    REQUEST,
    RESPONSE,
    Answering,
    Bounced,
    CallOutcome,
    Capture,
    ChannelRecord,
    Flushed,
    LocalSnapshot,
    MsgKey,
    OpenCall,
    Payload,
    PendingStreamMessage,
    RecordingStopped,
    SnapshotEvent,
)
from cutwatch.core._fences import FailedCalls, Fences

__all__ = ["DEFAULT_MAX_OPEN_EPOCHS", "Delivery", "SnapshotParticipant", "SnapshotStats"]

_KINDS = frozenset((REQUEST, RESPONSE))
_MAX_SKIP_NOTICES: Final = 1024
"""Epochs skipped in one jump that still get a notice; a collector runs far fewer at once."""
DEFAULT_MAX_OPEN_EPOCHS: Final = 8
"""Epochs recorded at once: a collector runs at most eight snapshots at a time."""


@dataclass(eq=False)
class Delivery:
    """A delivered message, kept by the caller until the message is consumed (and answered)."""

    sender: str
    msg_epoch: int
    payload: Payload
    msg_key: MsgKey
    method: str = ""
    duplicate: bool = False
    refused: bool = False
    """Its caller gave the call up and a snapshot fenced it: it must not reach the application."""
    consumed: bool = False
    answered: bool = False
    recorded_in: list[int] = field(default_factory=list)
    """The epochs whose records hold this request (to take back if it bounces)."""

    @classmethod
    def of_stream(cls, message: PendingStreamMessage) -> Delivery:
        """A stream message taken by the application, as a record needs it."""
        return cls(message.sender, message.since, message.payload, message.key, message.method)

    @property
    def payload_json(self) -> str:
        """The payload as JSON, rendered once (at the first record that needs it)."""
        if not isinstance(self.payload, str):
            self.payload = self.payload()
        return self.payload


@dataclass
class SnapshotStats:
    """Counters a participant exposes; ``recent_duplicates`` is bounded."""

    duplicates: int = 0
    recent_duplicates: list[MsgKey] = field(default_factory=list)
    records_dropped: int = 0
    epochs_evicted: int = 0
    seen_keys_evicted: int = 0
    calls_failed: int = 0
    calls_given_up: int = 0
    """Failed calls forgotten before a snapshot fenced them (a late delivery of one could go unseen)."""
    requests_refused: int = 0
    """Requests refused because their caller gave them up and a snapshot fenced them."""


@dataclass
class _OpenEpoch:
    records: int = 0
    dropped: int = 0


@dataclass
class _Call:
    call_id: int
    method: str
    target: str
    sent_epoch: int


class SnapshotParticipant:
    """The snapshot state machine of one process; not thread-safe, the caller locks.

    ``max_records`` bounds the channel records per epoch (past it the epoch
    is reported truncated) and the calls listed in one local snapshot (past
    it the epoch is reported stopped and no local snapshot is sent: lists
    cut short must never let a cut complete),
    ``max_open_epochs`` the epochs recorded at once (the oldest is stopped),
    ``max_seen_keys`` the window in which duplicate deliveries are
    recognised, ``abandoned_grace`` how long at most a failed call waits for a
    snapshot to fence it (in the units of the ``now`` passed in, seconds for
    the agent), ``max_abandoned`` how many failed calls wait at most.
    """

    def __init__(
        self,
        process: str,
        *,
        max_records: int = 10_000,
        max_open_epochs: int = DEFAULT_MAX_OPEN_EPOCHS,
        max_seen_keys: int = 100_000,
        max_recent_duplicates: int = 100,
        abandoned_grace: float = 600.0,
        max_abandoned: int = 10_000,
        max_fences: int = 100_000,
    ) -> None:
        if max_records < 0 or max_open_epochs < 1 or max_seen_keys < 1 or abandoned_grace <= 0:
            raise ValueError(
                "max_records >= 0, max_open_epochs >= 1, max_seen_keys >= 1 and abandoned_grace > 0 "
                "are required"
            )
        self.process = process
        self.epoch = 0
        self.requests_sent = 0
        self.responses_sent: dict[str, int] = {}
        self.requests_consumed: dict[str, int] = {}
        self.responses_consumed: dict[str, int] = {}
        self._max_records = max_records
        self._max_open = max_open_epochs
        self._max_seen = max_seen_keys
        self._calls: dict[int, _Call] = {}
        self._failed = FailedCalls(max_calls=max_abandoned, keep_for=abandoned_grace)
        self._fences = Fences(max_fences=max_fences)
        self._open: OrderedDict[int, _OpenEpoch] = OrderedDict()
        self._closed_ahead: set[int] = set()
        self._pending: dict[int, Delivery] = {}
        self._answering: dict[tuple[str, int], Delivery] = {}
        self._seen: OrderedDict[MsgKey, None] = OrderedDict()
        self._outbox: list[SnapshotEvent] = []
        self._recent_dups: deque[MsgKey] = deque(maxlen=max_recent_duplicates)
        self._stats = SnapshotStats()

    # Calls made by this process ------------------------------------------------------------
    def on_call(self, call_id: int, method: str = "", target: str = "") -> int:
        """A request goes out; returns the epoch for its stamp. ``target`` is a hint for reports."""
        self.requests_sent += 1
        self._calls[call_id] = _Call(call_id, method, target, self.epoch)
        return self.epoch

    def on_call_ended(self, call_id: int, outcome: str, detail: str = "", *, now: float = 0.0) -> None:
        """The call ended without a stamped answer (``OUTCOME_UNSTAMPED`` or ``OUTCOME_FAILED``).

        A call answered with a stamp ends when its response is consumed
        instead. The collector learns the outcome for every open epoch whose
        cut the call spans; a failed call also stays open until a snapshot
        fences it.
        """
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        for epoch in self._open:
            if call.sent_epoch < epoch:
                self._outbox.append(CallOutcome(epoch, self.process, call_id, outcome, detail))
        if outcome == OUTCOME_FAILED:
            self._stats.calls_failed += 1
            self._failed.add(call_id, call.method, call.target, detail, now)

    # Messages received ---------------------------------------------------------------------
    def on_deliver(
        self,
        sender: str,
        msg_epoch: int,
        payload: Payload,
        msg_key: MsgKey,
        capture: Callable[[], Capture],
        *,
        method: str = "",
        now: float = 0.0,
    ) -> Delivery:
        """A message is about to reach the application; keep the handle until it is consumed.

        ``capture`` is called (at most once) when the message forces local
        snapshots first, i.e. when its epoch is ahead of ours.
        """
        if msg_key.kind not in _KINDS:
            raise ValueError(f"unknown message kind {msg_key.kind!r}")
        if msg_key.kind == REQUEST and (sender, msg_key.call_id) in self._fences:
            self._stats.requests_refused += 1
            return Delivery(sender, msg_epoch, payload, msg_key, method, refused=True)
        if msg_epoch > self.epoch:
            self.take_snapshot(msg_epoch, capture(), now=now)
        delivery = Delivery(sender, msg_epoch, payload, msg_key, method)
        if msg_key in self._seen:
            delivery.duplicate = True
            self._stats.duplicates += 1
            self._recent_dups.append(msg_key)
            return delivery
        self._remember(msg_key)
        self._pending[id(delivery)] = delivery
        self._record_crossing(msg_epoch, delivery)
        return delivery

    def on_response(
        self,
        sender: str,
        msg_epoch: int,
        payload: Payload,
        call_id: int,
        capture: Callable[[], Capture],
        *,
        method: str = "",
        now: float = 0.0,
        failure: str = "",
    ) -> None:
        """The answer to our call ``call_id`` is delivered and consumed at once (what a gRPC client does).

        The same as :meth:`on_deliver` then :meth:`on_consume`, without the
        bookkeeping a separate consumption needs: a call gets one answer, so
        an answer to a call that is no longer open is a duplicate.

        ``failure``: the answer is the error of an attempt that bounced, with
        no attempt after it. The collector learns that the call failed (for
        every open epoch whose cut it spans), and keeps the record the bounce
        took back.
        """
        if msg_epoch > self.epoch:
            self.take_snapshot(msg_epoch, capture(), now=now)
        calls = self._calls
        call = calls.pop(call_id, None)
        if call is None and self._failed.pop(call_id) is None:
            self._stats.duplicates += 1
            self._recent_dups.append(MsgKey(sender, call_id, 0, RESPONSE))
            return
        if failure and call is not None:
            for epoch in self._open:
                if call.sent_epoch < epoch:
                    self._outbox.append(CallOutcome(epoch, self.process, call_id, OUTCOME_BOUNCED, failure))
        self.responses_consumed[sender] = self.responses_consumed.get(sender, 0) + 1
        if msg_epoch < self.epoch:  # sent before the sender's cut, consumed after ours: in transit
            delivery = Delivery(sender, msg_epoch, payload, MsgKey(sender, call_id, 0, RESPONSE), method)
            self._record_crossing(msg_epoch, delivery)

    def on_consume(self, delivery: Delivery) -> None:
        """The message's effect is applied. Idempotent; duplicates are not counted."""
        if delivery.consumed:
            return
        delivery.consumed = True
        if delivery.duplicate:
            return
        self._pending.pop(id(delivery), None)
        sender = delivery.sender
        if delivery.msg_key.kind == REQUEST:
            self.requests_consumed[sender] = self.requests_consumed.get(sender, 0) + 1
            if not delivery.answered:
                self._answering[(sender, delivery.msg_key.call_id)] = delivery
        else:
            self.responses_consumed[sender] = self.responses_consumed.get(sender, 0) + 1
            call_id = delivery.msg_key.call_id
            self._calls.pop(call_id, None)
            self._failed.pop(call_id)

    def on_bounce(self, delivery: Delivery) -> bool:
        """The handler of a delivered request failed: if it had not consumed it, the request changed
        nothing here and may come again as a new attempt, here or elsewhere. Takes back its records of
        the epochs still open, so that they neither settle its call nor count in transit; returns
        whether the request bounced."""
        if delivery.consumed or delivery.duplicate or delivery.msg_key.kind != REQUEST:
            return False
        for epoch in delivery.recorded_in:
            if epoch in self._open:
                self._outbox.append(Bounced(epoch, self.process, delivery.msg_key))
        delivery.recorded_in.clear()
        return True

    def on_reply(self, delivery: Delivery) -> int:
        """The handler of a delivered request answers (consuming it if it had not); returns the epoch."""
        self.on_consume(delivery)
        if not delivery.answered:
            delivery.answered = True
            if not delivery.duplicate:
                self._answering.pop((delivery.sender, delivery.msg_key.call_id), None)
                self.responses_sent[delivery.sender] = self.responses_sent.get(delivery.sender, 0) + 1
        return self.epoch

    def on_stream_message(self, message: PendingStreamMessage) -> None:
        """A stream message is taken: recorded for every open epoch after its stream started (whether
        it is in transit for one depends on its sender's count at that cut, which the collector has)."""
        epochs = [epoch for epoch in self._open if epoch > message.since]
        if epochs:
            delivery = Delivery.of_stream(message)
            for epoch in epochs:
                self._record(epoch, delivery)

    # Snapshots -----------------------------------------------------------------------------
    def join(self, epoch: int) -> None:
        """Start numbering at ``epoch`` without taking part in it (a process that joins late)."""
        if epoch > self.epoch:
            self.epoch = epoch

    def take_snapshot(self, k: int, capture: Capture, *, now: float = 0.0) -> list[LocalSnapshot]:
        """Take local snapshots epoch+1..k now (control message for k); no-op when k <= epoch."""
        taken: list[LocalSnapshot] = []
        if k <= self.epoch:
            return taken
        clock = VectorClock(capture.clock)
        calls = [OpenCall(c.call_id, c.method, c.target) for c in self._calls.values()]
        calls += self._failed.open_calls(now)
        answering = [Answering(*key) for key in self._answering]
        overflow = len(calls) + len(answering) > self._max_records
        requests_consumed, responses_consumed = dict(self.requests_consumed), dict(self.responses_consumed)
        responses_sent = dict(self.responses_sent)
        # Only the newest max_open epochs could stay open (epochs closed ahead take no slot); older
        # ones would be stopped at once. Say so for those a collector may still be running, and
        # skip the rest: a forged jump of 2^64 epochs costs what a jump of a thousand does.
        taking: list[int] = []
        below = k
        while below > self.epoch and len(taking) < self._max_open:
            if below not in self._closed_ahead:
                taking.append(below)
            below -= 1
        for skipped in range(max(self.epoch + 1, below + 1 - _MAX_SKIP_NOTICES), below + 1):
            if skipped not in self._closed_ahead:
                self._stop(skipped, REASON_TOO_MANY_OPEN, 0)
        self._closed_ahead = {e for e in self._closed_ahead if e > k}
        self.epoch = k
        for epoch in reversed(taking):
            if overflow:
                # Lists cut short could let the collector call the cut COMPLETE before this notice
                # arrives (pieces arrive in any order), so the notice goes alone, without a snapshot.
                self._stop(epoch, REASON_TOO_MANY_CALLS, len(calls) + len(answering) - self._max_records)
                continue
            snap = LocalSnapshot(
                epoch,
                self.process,
                clock,
                capture.state,
                capture.tasks + tuple([view for sent, view in capture.queued if sent < epoch]),
                open_calls=tuple(calls),
                answering=tuple(answering),
                requests_sent=self.requests_sent,
                responses_sent=responses_sent,
                requests_consumed=requests_consumed,
                responses_consumed=responses_consumed,
                worker_pools=dict(capture.pools),
                untracked_changes=capture.untracked_changes,
                streams=capture.streams,
                state_bytes=capture.state_bytes,
                state_missing=capture.state_missing,
                recorded=capture.recorded,
                recorded_through=capture.recorded_through,
            )
            taken.append(snap)
            self._outbox.append(snap)
            self._open_epoch(epoch)
            for delivery in self._pending.values():
                self._record(epoch, delivery)
            for message in capture.stream_pending:
                if epoch > message.since:
                    self._record(epoch, Delivery.of_stream(message))
        return taken

    def flush(
        self, k: int, round_: int = 0, fence: Iterable[tuple[str, int]] = (), untracked_changes: int = 0
    ) -> None:
        """Refuse the calls in ``fence`` from now on, then emit the :class:`Flushed` marker of round
        ``round_`` of ``k`` behind everything emitted so far (with the untracked changes so far)."""
        self._fences.add(fence)
        self._outbox.append(Flushed(k, self.process, round_, untracked_changes))

    def close_epoch(self, k: int, forget: Iterable[int] = ()) -> None:
        """The collector is done with ``k`` (complete or given up): stop recording it, free it, and
        forget the failed calls of ours that every participant fenced (``forget``)."""
        self._failed.forget(forget)
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

    @property
    def has_events(self) -> bool:
        return bool(self._outbox)

    @property
    def calls_in_flight(self) -> int:
        return len(self._calls)

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
            calls_failed=stats.calls_failed,
            calls_given_up=self._failed.given_up,
            requests_refused=stats.requests_refused,
        )

    # Internals -----------------------------------------------------------------------------
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

    def _stop(self, epoch: int, reason: str, dropped: int) -> None:
        self._outbox.append(RecordingStopped(epoch, self.process, reason, dropped))

    def _record_crossing(self, msg_epoch: int, delivery: Delivery) -> None:
        """Record ``delivery`` in every open epoch whose cut it crossed (sent before it, delivered after)."""
        for epoch in [e for e in self._open if e > msg_epoch]:
            self._record(epoch, delivery)

    def _record(self, epoch: int, delivery: Delivery) -> None:
        state = self._open.get(epoch)
        if state is None:
            return
        if state.records >= self._max_records:
            if not state.dropped:
                self._stop(epoch, REASON_TRUNCATED, 1)
            state.dropped += 1
            self._stats.records_dropped += 1
            return
        state.records += 1
        if delivery.msg_key.kind == REQUEST and delivery.msg_key.position == 0:
            delivery.recorded_in.append(epoch)
        self._outbox.append(
            ChannelRecord(
                epoch, delivery.sender, self.process, delivery.payload_json, delivery.msg_key, delivery.method
            )
        )
