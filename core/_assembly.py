"""Assembling one snapshot epoch from the pieces the agents send, and deciding if it is complete.

Pure code. A cut is COMPLETE only when every participant reported its local
snapshot and then its flush marker of the latest flush round, nobody
stopped recording, every call open at a caller's cut is settled (see
:mod:`cutwatch.core._participant`: a request or response record, the server
still answering it, an answer without a stamp, or, for a call that failed
at its caller, a fence every participant has acknowledged) and the vector
clocks agree that the cut is consistent (``VC_p[q] <= VC_q[q]`` for all p,
q). The clock check is what catches a protocol bug; a cut that fails it
raises instead of producing a cut.

Flush rounds: once every local snapshot is in, :meth:`CutAssembler.next_flush`
asks for round 1, fencing every failed call still unsettled; a call that
fails later (its caller's :class:`CallOutcome` arrives) asks for another
round. Only the markers of the latest round count.

Untracked changes: each agent counts the state changes no cut can place
(a request without a stamp that changed state; an answer without a stamp on a
channel that led to an agent). The assembler starts from each participant's
count as last seen before the snapshot started and takes the highest count
its local snapshot and flush markers report; a cut over which any count
grew is flagged with those counts (:attr:`AssembledCut.untracked`): it is
consistent for every message that kept its stamp, and its task graph is
exact, but its states may hold the far end of a message it does not see, so
sums over them are inconclusive. An answer without a stamp to a call open at
the cut asks for one more flush round, so that the count of the server that
handled it is read after it did.

Queued calls: a server lists the calls that reached it and wait for a
worker (queued tasks). Such a call is in transit at the cut, and its
request's record comes when a worker takes it; until then the cut waits,
and if it finishes first, its reasons say where each call was queued
rather than that nobody accounted for it.

Bounced requests: a request recorded in transit whose handler then failed
without consuming it is taken back by its receiver (:class:`Bounced`); its
record leaves the cut and its call waits again, for the attempt a retry
policy sends next. If the call fails at its caller with the error answer
of an attempt that bounced (no attempt left), the record stands: the request
was in transit at the cut, and its value goes back to the caller with the
failure; a flush round after that outcome reads the error answer's own
record, which comes behind it. A call that fails without such an answer (a
deadline, a lost answer) may have had a later attempt applied elsewhere, so
its bounced record says nothing and it is settled as failed by a fence.

States not captured: a local snapshot taken while an ``atomic()`` block
held the snapshot lock past the agent's timeout has no state
(:attr:`LocalSnapshot.state_missing` says why) but everything else: its
calls and records settle as usual and its tasks are in the cut, so that
deadlock detection sees who holds and who waits for the lock. Such a cut is
assembled as far as it goes, then INCOMPLETE, never COMPLETE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from cutwatch.core._clock import VectorClock
from cutwatch.core._events import (
    OUTCOME_BOUNCED,
    OUTCOME_FAILED,
    OUTCOME_UNSTAMPED,
    REQUEST,
    Bounced,
    CallOutcome,
    ChannelRecord,
    Flushed,
    LocalSnapshot,
    MsgKey,
    RecordingStopped,
    SnapshotEvent,
)
from cutwatch.core._streams import StreamPlacement, place_streams
from cutwatch.core.errors import AssemblyError, InconsistentCutError, ProtocolViolationError

__all__ = [
    "AssembledCut",
    "AssemblyError",
    "AssemblyStatus",
    "CutAssembler",
    "DuplicateDelivery",
    "InconsistentCutError",
    "ProtocolViolationError",
    "UnsettledCall",
]

AssemblyStatus = Literal["COMPLETE", "PENDING", "INCOMPLETE"]
REASON_RECOUNT = "no flush round read the untracked changes after an answer without a stamp"
REASON_REREAD = "no flush round came after a failed call's bounced request was kept"
REASON_NAME_LIMIT = 200
"""Characters of each name (method, target, failure) that a reason repeats from an unsettled call."""


@dataclass(frozen=True)
class UnsettledCall:
    """A call open at ``caller``'s cut whose messages nobody accounted for (yet).

    ``failed`` is set when the caller saw the call fail without a stamped
    answer: its request may or may not have reached a handler.
    """

    caller: str
    call_id: int
    method: str = ""
    target: str = ""
    failed: str = ""

    def describe(self, limit: int | None = None) -> str:
        """The call in words; ``limit`` caps each name in it (the fields themselves stay whole)."""
        method, target, caller, failed = (
            _capped(text, limit) for text in (self.method, self.target, self.caller, self.failed)
        )
        where = f" to {target}" if target else ""
        what = f"{method or 'call'} #{self.call_id} from {caller}{where}"
        return f"{what} (failed: {failed})" if failed else what


def _capped(text: str, limit: int | None) -> str:
    return text if limit is None or len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass(frozen=True)
class DuplicateDelivery:
    """One call's request was accounted for more than once (retries, hedging): ``where`` lists how."""

    caller: str
    call_id: int
    where: tuple[str, ...]


@dataclass(frozen=True)
class AssembledCut:
    """The result for one epoch. ``states``/``clocks``/``tasks`` hold only processes that reported."""

    epoch: int
    status: Literal["COMPLETE", "INCOMPLETE"]
    states: Mapping[str, object]
    clocks: Mapping[str, VectorClock]
    in_transit: tuple[ChannelRecord, ...]
    missing: tuple[str, ...]
    unsettled: tuple[UnsettledCall, ...]
    reasons: tuple[str, ...]
    duplicates: tuple[DuplicateDelivery, ...] = ()
    locals: Mapping[str, LocalSnapshot] | None = None
    covers: tuple[str, ...] = ()
    """The participants: every process the cut is of, whether it reported or not."""
    untracked: Mapping[str, int] = field(default_factory=dict)
    """Participants whose untracked state changes grew during the snapshot, and by how many: the
    cut's states may hold changes it cannot place (see the module docstring)."""

    @classmethod
    def incomplete(cls, epoch: int, missing: Iterable[str], reasons: Iterable[str]) -> AssembledCut:
        """An INCOMPLETE cut with nothing in it: every participant ``missing``, for ``reasons``."""
        participants = tuple(missing)
        return cls(
            epoch=epoch,
            status="INCOMPLETE",
            states={},
            clocks={},
            in_transit=(),
            missing=participants,
            unsettled=(),
            reasons=tuple(reasons),
            covers=participants,
        )

    def with_reason(self, reason: str) -> AssembledCut:
        """This cut, INCOMPLETE for one more reason (what it holds stays)."""
        return replace(self, status="INCOMPLETE", reasons=(*self.reasons, reason))


class CutAssembler:
    """Collects the pieces of epoch ``epoch`` for fixed participants, in any order.

    Records on channels with a non-participant end are counted in
    ``foreign_records`` and left out: only participants' calls are settled.
    """

    def __init__(
        self, epoch: int, participants: Iterable[str], untracked_before: Mapping[str, int] | None = None
    ) -> None:
        self.epoch = epoch
        self.participants: tuple[str, ...] = tuple(sorted(set(participants)))
        if not self.participants:
            raise ValueError("a snapshot needs at least one participant")
        self._members = frozenset(self.participants)
        self._locals: dict[str, LocalSnapshot] = {}
        # The first ``_clocks_checked`` local snapshots (in arrival order) are known to agree
        # pairwise; each check adds only the newcomers, so a cut costs O(n^2) comparisons in all
        # rather than O(n^2) for every piece that arrives.
        self._clocks_checked = 0
        self._records: list[ChannelRecord] = []
        self._record_keys: set[tuple[str, MsgKey]] = set()
        # (caller, call id) -> how it was settled, for calls settled by records or outcomes.
        self._settled: dict[tuple[str, int], list[str]] = {}
        # Open calls of the local snapshots in so far that nothing settled yet: status() asks only
        # whether any is left, for every piece that arrives, so that must not rescan every call.
        self._waiting: set[tuple[str, int]] = set()
        self._failures: dict[tuple[str, int], str] = {}
        self._stopped: list[RecordingStopped] = []
        self._round = 0
        """The latest flush round asked for (0: none yet)."""
        self._flushed: set[str] = set()
        """Participants whose marker of round ``_round`` is in."""
        self._fenced: dict[tuple[str, int], int] = {}
        """Failed calls fenced, and in which round."""
        self._acked = 0
        """The latest round every participant has flushed."""
        self._untracked_before = dict(untracked_before or {})
        """Each participant's untracked changes before the snapshot started (missing: 0)."""
        self._untracked_now: dict[str, int] = {}
        """The highest count each participant reported since."""
        self._round_due = ""
        """Why another flush round is due since the latest was asked ("" when none is): an answer
        without a stamp came (its server's count must be read again), or a failed call's bounced
        record was kept (the error answer's own record comes behind the outcome)."""
        self._started_after_cut: set[tuple[str, int]] = set()
        """Calls whose request is in transit: their handlers started after their server's cut."""
        self._last_bounced: set[tuple[str, int]] = set()
        """Calls that failed with the error answer of an attempt that bounced (no attempt after it)."""
        self._bounced: dict[tuple[str, int], ChannelRecord] = {}
        """The record taken back of each call whose latest recorded attempt bounced."""
        self._stream_records: dict[tuple[str, int, str], dict[int, ChannelRecord]] = {}
        """Stream messages the receivers recorded, by (caller, call id, kind) and index."""
        self._queued: dict[tuple[str, int], tuple[str, str]] = {}
        """Calls a server listed as queued for a worker at its cut: (server, pool) by (caller, call id)."""
        self.foreign_records = 0

    # Input ---------------------------------------------------------------------------------
    def add_local(self, snap: LocalSnapshot) -> None:
        self._check_epoch(snap.epoch)
        if snap.process not in self._members:
            raise ProtocolViolationError(
                f"epoch {self.epoch}: local snapshot from non-participant {snap.process}"
            )
        if snap.process in self._locals:
            raise ProtocolViolationError(f"epoch {self.epoch}: two local snapshots from {snap.process}")
        self._locals[snap.process] = snap
        self._see_untracked(snap.process, snap.untracked_changes)
        for call in snap.open_calls:
            key = (snap.process, call.call_id)
            if call.failed:
                self._failures.setdefault(key, call.failed)
            if key not in self._settled:
                self._waiting.add(key)
        for caller, call_id in snap.answering:
            self._settle(caller, call_id, f"handler at {snap.process}")
        for task in snap.tasks:
            if task.queued:
                self._queued[(task.caller, task.call_id)] = (snap.process, task.pool)

    def add_record(self, record: ChannelRecord) -> None:
        self._check_epoch(record.epoch)
        stream = record.msg_key.position > 0
        # A client may take a message of its response stream before it knows its server: sender "".
        known_sender = record.sender in self._members or (stream and not record.sender)
        if not known_sender or record.receiver not in self._members:
            self.foreign_records += 1
            return
        key = (record.receiver, record.msg_key)
        if key in self._record_keys:
            raise ProtocolViolationError(
                f"epoch {self.epoch}: message {tuple(record.msg_key)} recorded twice at {record.receiver}"
            )
        self._record_keys.add(key)
        if stream:
            # Placed (or not) by the stream counts of the two ends, in finish(); it settles no call.
            self._stream_records.setdefault((record.caller, record.msg_key.call_id, record.kind), {})[
                record.msg_key.position
            ] = record
            return
        self._keep(record)

    def add_bounced(self, notice: Bounced) -> None:
        """A recorded request was turned away unapplied. If its caller still waits for the call, a retry
        may carry it elsewhere: its record neither settles the call nor counts in transit, and the call
        waits for its next attempt. If the call failed with the error answer of an attempt that bounced
        (``OUTCOME_BOUNCED``: no attempt follows), now or later, the record stands: at the cut the
        request was where the record says, and its value goes back to its caller with the failure. A
        call that failed without such an answer (a deadline) may have had a later attempt applied
        elsewhere: the record goes, and the call is fenced as failed."""
        self._check_epoch(notice.epoch)
        key = notice.msg_key
        call = (key.sender, key.call_id)
        if call in self._last_bounced:
            return
        kept: list[ChannelRecord] = []
        removed: list[ChannelRecord] = []
        for record in self._records:
            (removed if record.receiver == notice.process and record.msg_key == key else kept).append(record)
        if not removed:
            return  # a record this assembler left out (a non-participant's), or a stream's
        self._records = kept
        self._bounced[call] = removed[0]
        how = self._settled.get(call, [])
        where = _in_transit(removed[0])
        if where in how:
            how.remove(where)
        if how:
            return
        self._settled.pop(call, None)
        if not any(
            r.msg_key.kind == REQUEST and (r.caller, r.msg_key.call_id) == call for r in self._records
        ):
            self._started_after_cut.discard(call)
        snap = self._locals.get(key.sender)
        if snap is not None and any(c.call_id == key.call_id for c in snap.open_calls):
            self._waiting.add(call)
            fenced_in = self._fenced.get(call)
            if fenced_in is not None and fenced_in <= self._acked:
                # A failed call every participant fenced already, delivered before its fence and turned
                # away unapplied: delivered nowhere after all.
                self._settle(*call, "failed at its caller; fenced, delivered nowhere")

    def add_outcome(self, outcome: CallOutcome) -> None:
        self._check_epoch(outcome.epoch)
        if outcome.outcome == OUTCOME_UNSTAMPED:
            self._settle(outcome.process, outcome.call_id, "answered by an uninstrumented server")
            # Or by a participant, through a hop that strips stamps: its count must be read again.
            self._ask_again(REASON_RECOUNT)
        elif outcome.outcome in (OUTCOME_FAILED, OUTCOME_BOUNCED):
            call = (outcome.process, outcome.call_id)
            self._failures[call] = outcome.detail or "failed"
            if outcome.outcome == OUTCOME_FAILED:
                # No answer told what became of it: a later attempt may have been applied somewhere
                # (its answer lost) or lost itself. A record of an attempt that bounced says nothing
                # then; the call is fenced and settled as failed (see next_flush).
                return
            self._last_bounced.add(call)
            record = self._bounced.pop(call, None)
            if record is not None and call not in self._settled:
                # No attempt follows the one that bounced: its record stands (see add_bounced).
                self._keep(record)
                # The caller learnt of the failure from an error answer, whose own record comes behind
                # this outcome on the caller's stream: a round after it reads that record too.
                self._ask_again(REASON_REREAD)

    def add_stopped(self, notice: RecordingStopped) -> None:
        self._check_epoch(notice.epoch)
        self._stopped.append(notice)

    def add_flushed(self, marker: Flushed) -> None:
        self._check_epoch(marker.epoch)
        if marker.process in self._members:
            self._see_untracked(marker.process, marker.untracked_changes)
        if marker.process not in self._members or marker.round != self._round or self._round == 0:
            return  # a marker of an earlier round: the participant has more to say
        self._flushed.add(marker.process)
        if len(self._flushed) == len(self.participants) and self._acked < self._round:
            # Every participant applied the fences of this round and of all before it, and sent every
            # record it made before: a fenced call still waiting was delivered nowhere, and never will be.
            self._acked = self._round
            for key, fenced_in in self._fenced.items():
                if fenced_in <= self._acked and key in self._waiting:
                    self._settle(*key, "failed at its caller; fenced, delivered nowhere")

    def next_flush(self) -> tuple[int, tuple[tuple[str, int], ...]] | None:
        """The flush round to ask for now, with the calls to fence in it; None when none is due.

        The first round is due once every local snapshot is in; another one
        whenever a call that is still unsettled has failed since, or an answer
        without a stamp has settled a call since the latest round. Each round
        fences every call fenced so far, so that a marker of round r says that
        all of them are fenced at its sender, whatever the order in which the
        rounds reached it.
        """
        if len(self._locals) < len(self.participants):
            return None
        new = [k for k in self._waiting if k in self._failures and k not in self._fenced]
        if self._round and not new and not self._round_due:
            return None
        self._round += 1
        self._round_due = ""
        self._flushed = set()
        for key in new:
            self._fenced[key] = self._round
        return self._round, tuple(sorted(self._fenced))

    def fenced(self) -> dict[str, tuple[int, ...]]:
        """The calls of each caller that every participant has fenced (the callers may forget them)."""
        out: dict[str, list[int]] = {}
        for (caller, call_id), fenced_in in sorted(self._fenced.items()):
            if fenced_in <= self._acked:
                out.setdefault(caller, []).append(call_id)
        return {caller: tuple(ids) for caller, ids in out.items()}

    def add(self, event: SnapshotEvent) -> None:
        """Dispatch any event a participant emits."""
        if isinstance(event, Flushed):
            self.add_flushed(event)
        elif isinstance(event, LocalSnapshot):
            self.add_local(event)
        elif isinstance(event, ChannelRecord):
            self.add_record(event)
        elif isinstance(event, CallOutcome):
            self.add_outcome(event)
        elif isinstance(event, Bounced):
            self.add_bounced(event)
        else:
            self.add_stopped(event)

    @property
    def reported(self) -> tuple[str, ...]:
        """Participants whose local snapshot has arrived."""
        return tuple(sorted(self._locals))

    # Output --------------------------------------------------------------------------------
    def status(self) -> AssemblyStatus:
        """COMPLETE, PENDING (may still complete) or INCOMPLETE (never can: recording stopped, or once
        all is in, a state not captured).

        Raises :class:`AssemblyError` when what has arrived is contradictory.
        """
        self._check_clocks()
        if self._stopped:
            return "INCOMPLETE"
        if len(self._locals) < len(self.participants) or self._waiting:
            return "PENDING"
        if self._round == 0 or self._round_due or len(self._flushed) < len(self.participants):
            return "PENDING"
        streams = self._place_streams()
        if streams.reasons:
            return "INCOMPLETE"
        if streams.owed:
            return "PENDING"
        return "INCOMPLETE" if self._states_missing() else "COMPLETE"

    def waits_only_on_queued_calls(self) -> bool:
        """Whether all that keeps the cut PENDING is calls queued for a worker at their servers.

        Their requests are recorded when a worker takes them. If those
        workers are deadlocked, no worker ever does: the cut can only end
        INCOMPLETE, and whoever runs the assembler may finish it at once
        rather than at its timeout (see ``collector._queued``).
        """
        if self._stopped or not self._waiting or len(self._locals) < len(self.participants):
            return False
        if self._round == 0 or self._round_due or len(self._flushed) < len(self.participants):
            return False
        if any(key not in self._queued for key in self._waiting):
            return False
        streams = self._place_streams()
        return not streams.reasons and not streams.owed

    def finish(self) -> AssembledCut:
        """The cut as it stands: COMPLETE if it is, else INCOMPLETE with what is missing and why."""
        self._check_clocks()
        unsettled = self._unsettled()
        missing = tuple(p for p in self.participants if p not in self._locals)
        reasons: list[str] = []
        if missing:
            reasons.append("no local snapshot from " + ", ".join(missing))
        unflushed = [p for p in self.participants if p in self._locals and p not in self._flushed]
        if unflushed and not missing:
            reasons.append("no flush marker from " + ", ".join(unflushed))
        elif self._round_due:
            reasons.append(self._round_due)
        streams = self._place_streams() if not missing else StreamPlacement()
        reasons += streams.reasons + streams.owed
        queued = [call for call in unsettled if (call.caller, call.call_id) in self._queued]
        if queued:
            shown = ", ".join(self._describe_queued(call) for call in queued[:10])
            more = f" and {len(queued) - 10} more" if len(queued) > 10 else ""
            reasons.append(
                f"calls queued for a worker at their server at the cut, not taken by one yet (a request is "
                f"recorded when a worker takes it): {shown}{more}"
            )
        lost = [call for call in unsettled if (call.caller, call.call_id) not in self._queued]
        if lost:
            # A summary: an agent's megabyte method name or failure is kept once, in ``unsettled``.
            shown = ", ".join(call.describe(REASON_NAME_LIMIT) for call in lost[:10])
            more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
            reasons.append(f"calls in flight at the cut not accounted for: {shown}{more}")
        for notice in self._stopped:
            reasons.append(f"{notice.reason} at {notice.process}")
        reasons += self._states_missing()
        in_transit = tuple(
            sorted(
                [*self._records, *streams.in_transit],
                key=lambda r: (r.sender, r.receiver, r.msg_key.call_id, r.msg_key.kind, r.msg_key.position),
            )
        )
        return AssembledCut(
            epoch=self.epoch,
            status="INCOMPLETE" if reasons else "COMPLETE",
            states={p: snap.state for p, snap in sorted(self._locals.items())},
            clocks={p: snap.clock for p, snap in sorted(self._locals.items())},
            in_transit=in_transit,
            missing=missing,
            unsettled=tuple(unsettled),
            reasons=tuple(reasons),
            duplicates=self._duplicates(),
            locals=dict(sorted(self._locals.items())),
            covers=self.participants,
            untracked=self.untracked(),
        )

    def _describe_queued(self, call: UnsettledCall) -> str:
        server, pool = self._queued[(call.caller, call.call_id)]
        what = _capped(call.method, REASON_NAME_LIMIT) or "call"
        return f"{what} #{call.call_id} from {_capped(call.caller, REASON_NAME_LIMIT)} at {server} ({pool})"

    def untracked(self) -> dict[str, int]:
        """Participants whose untracked changes grew since the snapshot started, and by how many."""
        grown = {p: n - self._untracked_before.get(p, 0) for p, n in sorted(self._untracked_now.items())}
        return {p: n for p, n in grown.items() if n > 0}

    # Checks --------------------------------------------------------------------------------
    def _check_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            raise ProtocolViolationError(f"piece of epoch {epoch} given to the assembler of {self.epoch}")

    def _place_streams(self) -> StreamPlacement:
        ends = [(process, count) for process, snap in self._locals.items() for count in snap.streams]
        if not ends:
            return StreamPlacement()
        return place_streams(ends, self._started_after_cut, self._stream_records)

    def _states_missing(self) -> list[str]:
        """Why the state of a process that reported is not in the cut, for each such process."""
        return [
            f"state of {process} not captured: {_capped(snap.state_missing, REASON_NAME_LIMIT)}"
            for process, snap in sorted(self._locals.items())
            if snap.state_missing
        ]

    def _ask_again(self, why: str) -> None:
        """Another flush round is due (once any was asked), for ``why`` (the first reason stands)."""
        if self._round > 0 and not self._round_due:
            self._round_due = why

    def _see_untracked(self, process: str, count: int) -> None:
        if count > self._untracked_now.get(process, 0):
            self._untracked_now[process] = count

    def _keep(self, record: ChannelRecord) -> None:
        """A call's request or response in transit at the cut: kept in the cut, and its call settled."""
        self._records.append(record)
        if record.msg_key.kind == REQUEST:
            self._started_after_cut.add((record.caller, record.msg_key.call_id))
        self._settle(record.caller, record.msg_key.call_id, _in_transit(record))

    def _settle(self, caller: str, call_id: int, how: str) -> None:
        self._settled.setdefault((caller, call_id), []).append(how)
        self._waiting.discard((caller, call_id))

    def _check_clocks(self) -> None:
        """``VC_p[q] <= VC_q[q]`` for every pair; raises again on every call once it failed."""
        if self._clocks_checked == len(self._locals):
            return
        arrived = list(self._locals.values())
        for index in range(self._clocks_checked, len(arrived)):
            new = arrived[index]
            for old in arrived[:index]:
                self._check_pair(new, old)
                self._check_pair(old, new)
            self._clocks_checked = index + 1

    def _check_pair(self, snap: LocalSnapshot, other: LocalSnapshot) -> None:
        q = other.process
        if snap.clock.get(q) > other.clock.get(q):
            raise InconsistentCutError(
                f"epoch {self.epoch}: {snap.process} knows {q}'s event {snap.clock.get(q)} but {q}'s cut "
                f"is at {other.clock.get(q)}"
            )

    def _unsettled(self) -> list[UnsettledCall]:
        out: list[UnsettledCall] = []
        for caller, snap in sorted(self._locals.items()):
            for call in snap.open_calls:
                key = (caller, call.call_id)
                if key not in self._settled:
                    failed = call.failed or self._failures.get(key, "")
                    out.append(UnsettledCall(caller, call.call_id, call.method, call.target, failed))
        return out

    def _duplicates(self) -> tuple[DuplicateDelivery, ...]:
        return tuple(
            DuplicateDelivery(caller, call_id, tuple(how))
            for (caller, call_id), how in sorted(self._settled.items())
            if len(how) > 1
        )


def _in_transit(record: ChannelRecord) -> str:
    """How a record settles its call, as ``duplicates`` lists it."""
    return f"{record.kind} in transit to {record.receiver}"
