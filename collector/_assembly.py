"""Assembling one snapshot epoch from the pieces the agents send, and deciding if it is complete.

Pure code. A cut is COMPLETE only when every participant reported its local
snapshot, nobody stopped recording, the counts balance and the vector clocks
agree that the cut is consistent (``VC_p[q] <= VC_q[q]`` for all p, q).
Requests are counted per sender (a client does not know which server a
request reaches): each participant ``q`` must have exactly
``requests_sent_q - sum_p requests_consumed_p[q]`` request records at any
receiver. Responses are counted per channel: each ``q -> p`` must have
exactly ``responses_sent_q[p] - responses_consumed_p[q]`` response records.
Anything that can only come from a protocol bug (more records than owed, a
negative count, one message recorded twice, clocks that contradict the cut)
raises instead of producing a cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from cutwatch.agent._clock import VectorClock
from cutwatch.agent._snapshot import REQUEST, ChannelRecord, LocalSnapshot, MsgKey, RecordingStopped
from cutwatch.agent.exceptions import CutwatchError

__all__ = [
    "ANY_RECEIVER",
    "AssembledCut",
    "AssemblyError",
    "AssemblyStatus",
    "CutAssembler",
    "InconsistentCutError",
    "OwedChannel",
    "OwedRequests",
    "ProtocolViolationError",
]

ANY_RECEIVER = "*"
"""The receiver named for requests owed by a sender, which may be at any participant."""

AssemblyStatus = Literal["COMPLETE", "PENDING", "INCOMPLETE"]


class AssemblyError(CutwatchError):
    """A snapshot's pieces contradict each other; the cut is rejected."""


class InconsistentCutError(AssemblyError):
    """The vector clocks show a process knowing of events after another's cut."""


class ProtocolViolationError(AssemblyError):
    """Message counts or records that a correct participant cannot produce."""


@dataclass(frozen=True)
class OwedChannel:
    """Channel ``sender -> receiver`` still owes response records: ``got`` of ``owed`` arrived."""

    sender: str
    receiver: str
    owed: int
    got: int


@dataclass(frozen=True)
class OwedRequests:
    """Requests from ``sender`` still owe records (at any receiver): ``got`` of ``owed`` arrived."""

    sender: str
    owed: int
    got: int

    def as_channel(self) -> OwedChannel:
        """The same debt as an :class:`OwedChannel` to :data:`ANY_RECEIVER`, for flat listings."""
        return OwedChannel(self.sender, ANY_RECEIVER, self.owed, self.got)


@dataclass(frozen=True)
class AssembledCut:
    """The result for one epoch. ``states``/``clocks`` hold only processes that reported.

    ``owed`` lists response channels still owed records, ``owed_requests``
    the senders whose requests are.
    """

    epoch: int
    status: Literal["COMPLETE", "INCOMPLETE"]
    states: Mapping[str, object]
    clocks: Mapping[str, VectorClock]
    in_transit: tuple[ChannelRecord, ...]
    missing: tuple[str, ...]
    owed: tuple[OwedChannel, ...]
    reasons: tuple[str, ...]
    owed_requests: tuple[OwedRequests, ...] = ()


class CutAssembler:
    """Collects the local snapshots and channel records of epoch ``epoch`` for fixed participants.

    Pieces may arrive in any order. Records on channels with a non-participant
    end cannot be accounted for and are counted in ``foreign_records`` only.
    A participant's requests to a process outside the snapshot are owed
    forever: only participants may be reachable through its channels.
    """

    def __init__(self, epoch: int, participants: Iterable[str]) -> None:
        self.epoch = epoch
        self.participants: tuple[str, ...] = tuple(sorted(set(participants)))
        if not self.participants:
            raise ValueError("a snapshot needs at least one participant")
        self._members = frozenset(self.participants)
        self._locals: dict[str, LocalSnapshot] = {}
        self._records: dict[tuple[str, str], list[ChannelRecord]] = {}
        self._request_records: dict[str, int] = {}
        self._response_records: dict[tuple[str, str], int] = {}
        self._keys: set[tuple[str, MsgKey]] = set()
        self._stopped: list[RecordingStopped] = []
        self.foreign_records = 0

    # Input ------------------------------------------------------------------------------
    def add_local(self, snap: LocalSnapshot) -> None:
        self._check_epoch(snap.epoch)
        if snap.process not in self._members:
            raise ProtocolViolationError(
                f"epoch {self.epoch}: local snapshot from non-participant {snap.process}"
            )
        if snap.process in self._locals:
            raise ProtocolViolationError(f"epoch {self.epoch}: two local snapshots from {snap.process}")
        self._locals[snap.process] = snap

    def add_record(self, record: ChannelRecord) -> None:
        self._check_epoch(record.epoch)
        if record.sender not in self._members or record.receiver not in self._members:
            self.foreign_records += 1
            return
        request = record.kind == REQUEST
        # A request's key is unique per sender, wherever it went; a response's only per receiver.
        key = ("", record.msg_key) if request else (record.receiver, record.msg_key)
        if key in self._keys:
            raise ProtocolViolationError(
                f"epoch {self.epoch}: message {record.msg_key} recorded twice, at {record.receiver}"
            )
        self._keys.add(key)
        self._records.setdefault((record.sender, record.receiver), []).append(record)
        if request:
            self._request_records[record.sender] = self._request_records.get(record.sender, 0) + 1
        else:
            channel = (record.sender, record.receiver)
            self._response_records[channel] = self._response_records.get(channel, 0) + 1

    def add_stopped(self, notice: RecordingStopped) -> None:
        self._check_epoch(notice.epoch)
        self._stopped.append(notice)

    def add(self, event: LocalSnapshot | ChannelRecord | RecordingStopped) -> None:
        """Dispatch any event a participant emits."""
        if isinstance(event, LocalSnapshot):
            self.add_local(event)
        elif isinstance(event, ChannelRecord):
            self.add_record(event)
        else:
            self.add_stopped(event)

    # Output -----------------------------------------------------------------------------
    def status(self) -> AssemblyStatus:
        """COMPLETE, PENDING (may still complete) or INCOMPLETE (never can: recording stopped).

        Raises :class:`AssemblyError` when what has arrived is contradictory.
        """
        owed_requests, owed = self._verify()
        if self._stopped:
            return "INCOMPLETE"
        if len(self._locals) < len(self.participants) or owed_requests or owed:
            return "PENDING"
        return "COMPLETE"

    def finish(self) -> AssembledCut:
        """The cut as it stands: COMPLETE if it is, else INCOMPLETE with what is missing and why."""
        owed_requests, owed = self._verify()
        missing = tuple(p for p in self.participants if p not in self._locals)
        reasons: list[str] = []
        if missing:
            reasons.append("no local snapshot from " + ", ".join(missing))
        if owed_requests:
            reasons.append(
                "requests still owe messages: "
                + ", ".join(f"requests from {o.sender} ({o.got}/{o.owed})" for o in owed_requests)
            )
        if owed:
            reasons.append(
                "channels still owe messages: "
                + ", ".join(f"{o.sender} -> {o.receiver} ({o.got}/{o.owed})" for o in owed)
            )
        for notice in self._stopped:
            reasons.append(f"{notice.reason} at {notice.process}")
        in_transit = tuple(record for channel in sorted(self._records) for record in self._records[channel])
        return AssembledCut(
            epoch=self.epoch,
            status="INCOMPLETE" if reasons else "COMPLETE",
            states={p: snap.state for p, snap in sorted(self._locals.items())},
            clocks={p: snap.clock for p, snap in sorted(self._locals.items())},
            in_transit=in_transit,
            missing=missing,
            owed=tuple(owed),
            reasons=tuple(reasons),
            owed_requests=tuple(owed_requests),
        )

    # Checks -----------------------------------------------------------------------------
    def _check_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            raise ProtocolViolationError(f"piece of epoch {epoch} given to the assembler of {self.epoch}")

    def _verify(self) -> tuple[list[OwedRequests], list[OwedChannel]]:
        """Vector-clock consistency and counting; returns the request and response debts left."""
        locals_ = self._locals
        for p, snap in locals_.items():
            for q, other in locals_.items():
                if p != q and snap.clock.get(q) > other.clock.get(q):
                    raise InconsistentCutError(
                        f"epoch {self.epoch}: {p} knows {q}'s event {snap.clock.get(q)} but {q}'s cut "
                        f"is at {other.clock.get(q)}"
                    )
        return self._verify_requests(), self._verify_responses()

    def _verify_requests(self) -> list[OwedRequests]:
        """Requests from q: sent once, consumed or recorded at any participant.

        With receivers missing, ``sent - consumed so far`` is an upper bound of
        what is owed, so too many records are caught early; a debt is reported
        only when every participant's count is in.
        """
        locals_ = self._locals
        owed_requests: list[OwedRequests] = []
        for q in self.participants:
            sender = locals_.get(q)
            if sender is None:
                continue
            consumed = sum(snap.requests_consumed.get(q, 0) for snap in locals_.values())
            owed = sender.requests_sent - consumed
            got = self._request_records.get(q, 0)
            if owed < 0:
                raise ProtocolViolationError(
                    f"epoch {self.epoch}: participants consumed {consumed} requests from {q} before "
                    f"their cuts, {q} sent only {sender.requests_sent}"
                )
            if got > owed:
                raise ProtocolViolationError(
                    f"epoch {self.epoch}: {got} records of requests from {q}, only {owed} in transit"
                )
            if got < owed and len(locals_) == len(self.participants):
                owed_requests.append(OwedRequests(q, owed, got))
        return owed_requests

    def _verify_responses(self) -> list[OwedChannel]:
        """Responses on q -> p: both ends know the channel."""
        locals_ = self._locals
        owed_channels: list[OwedChannel] = []
        for q in self.participants:
            for p in self.participants:
                got = self._response_records.get((q, p), 0)
                receiver = locals_.get(p)
                if receiver is None:
                    continue
                sender = locals_.get(q)
                if sender is None:
                    # p's records can be checked only against a bound p knows: nothing yet.
                    continue
                sent = sender.responses_sent.get(p, 0)
                consumed = receiver.responses_consumed.get(q, 0)
                owed = sent - consumed
                if owed < 0:
                    raise ProtocolViolationError(
                        f"epoch {self.epoch}: {p} consumed {consumed} responses from {q} before its cut, "
                        f"{q} sent only {sent}"
                    )
                if got > owed:
                    raise ProtocolViolationError(
                        f"epoch {self.epoch}: {got} response records on {q} -> {p}, only {owed} in transit"
                    )
                if got < owed:
                    owed_channels.append(OwedChannel(q, p, owed, got))
        return owed_channels
