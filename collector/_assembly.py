"""Assembling one snapshot epoch from the pieces the agents send, and deciding if it is complete.

Pure code. A cut is COMPLETE only when every participant reported its local
snapshot, nobody stopped recording, every channel ``q -> p`` between
participants has exactly ``sent_before_q[p] - consumed_before_p[q]`` records,
and the vector clocks agree that the cut is consistent
(``VC_p[q] <= VC_q[q]`` for all p, q). Anything that can only come from a
protocol bug (more records than owed, a negative count, one message recorded
twice, clocks that contradict the cut) raises instead of producing a cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from cutwatch.agent._clock import VectorClock
from cutwatch.agent._snapshot import ChannelRecord, LocalSnapshot, MsgKey, RecordingStopped
from cutwatch.agent.exceptions import CutwatchError

__all__ = [
    "AssembledCut",
    "AssemblyError",
    "AssemblyStatus",
    "CutAssembler",
    "InconsistentCutError",
    "OwedChannel",
    "ProtocolViolationError",
]

AssemblyStatus = Literal["COMPLETE", "PENDING", "INCOMPLETE"]


class AssemblyError(CutwatchError):
    """A snapshot's pieces contradict each other; the cut is rejected."""


class InconsistentCutError(AssemblyError):
    """The vector clocks show a process knowing of events after another's cut."""


class ProtocolViolationError(AssemblyError):
    """Message counts or records that a correct participant cannot produce."""


@dataclass(frozen=True)
class OwedChannel:
    """Channel ``sender -> receiver`` still owes records: ``got`` of ``owed`` arrived."""

    sender: str
    receiver: str
    owed: int
    got: int


@dataclass(frozen=True)
class AssembledCut:
    """The result for one epoch. ``states``/``clocks`` hold only processes that reported."""

    epoch: int
    status: Literal["COMPLETE", "INCOMPLETE"]
    states: Mapping[str, object]
    clocks: Mapping[str, VectorClock]
    in_transit: tuple[ChannelRecord, ...]
    missing: tuple[str, ...]
    owed: tuple[OwedChannel, ...]
    reasons: tuple[str, ...]


class CutAssembler:
    """Collects the local snapshots and channel records of epoch ``epoch`` for fixed participants.

    Pieces may arrive in any order. Records on channels with a non-participant
    end cannot be accounted for and are counted in ``foreign_records`` only.
    """

    def __init__(self, epoch: int, participants: Iterable[str]) -> None:
        self.epoch = epoch
        self.participants: tuple[str, ...] = tuple(sorted(set(participants)))
        if not self.participants:
            raise ValueError("a snapshot needs at least one participant")
        self._members = frozenset(self.participants)
        self._locals: dict[str, LocalSnapshot] = {}
        self._records: dict[tuple[str, str], list[ChannelRecord]] = {}
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
        key = (record.receiver, record.msg_key)
        if key in self._keys:
            raise ProtocolViolationError(
                f"epoch {self.epoch}: message {record.msg_key} recorded twice on "
                f"{record.sender} -> {record.receiver}"
            )
        self._keys.add(key)
        self._records.setdefault((record.sender, record.receiver), []).append(record)

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
        owed = self._verify()
        if self._stopped:
            return "INCOMPLETE"
        if len(self._locals) < len(self.participants) or owed:
            return "PENDING"
        return "COMPLETE"

    def finish(self) -> AssembledCut:
        """The cut as it stands: COMPLETE if it is, else INCOMPLETE with what is missing and why."""
        owed = self._verify()
        missing = tuple(p for p in self.participants if p not in self._locals)
        reasons: list[str] = []
        if missing:
            reasons.append("no local snapshot from " + ", ".join(missing))
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
        )

    # Checks -----------------------------------------------------------------------------
    def _check_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            raise ProtocolViolationError(f"piece of epoch {epoch} given to the assembler of {self.epoch}")

    def _verify(self) -> list[OwedChannel]:
        """Vector-clock consistency and counting; returns channels still owed records."""
        locals_ = self._locals
        for p, snap in locals_.items():
            for q, other in locals_.items():
                if p != q and snap.clock.get(q) > other.clock.get(q):
                    raise InconsistentCutError(
                        f"epoch {self.epoch}: {p} knows {q}'s event {snap.clock.get(q)} but {q}'s cut "
                        f"is at {other.clock.get(q)}"
                    )
        owed_channels: list[OwedChannel] = []
        for q in self.participants:
            for p in self.participants:
                if p == q:
                    continue
                got = len(self._records.get((q, p), ()))
                receiver = locals_.get(p)
                if receiver is None:
                    continue
                sender = locals_.get(q)
                if sender is None:
                    # p's records can be checked only against a bound p knows: nothing yet.
                    continue
                owed = sender.sent_before.get(p, 0) - receiver.consumed_before.get(q, 0)
                if owed < 0:
                    raise ProtocolViolationError(
                        f"epoch {self.epoch}: {p} consumed {receiver.consumed_before.get(q, 0)} messages "
                        f"from {q} before its cut, {q} sent only {sender.sent_before.get(p, 0)}"
                    )
                if got > owed:
                    raise ProtocolViolationError(
                        f"epoch {self.epoch}: {got} records on {q} -> {p}, only {owed} in transit"
                    )
                if got < owed:
                    owed_channels.append(OwedChannel(q, p, owed, got))
        return owed_channels
