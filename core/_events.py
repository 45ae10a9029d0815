"""The records of the snapshot protocol: what a process emits and what the collector assembles.

Plain, typed values with no behaviour of their own. A participant
(:mod:`cutwatch.core._participant`) emits them; ``cutwatch.proto`` turns them
into protobuf messages and back; the cut assembler (:mod:`cutwatch.core._assembly`)
reads them. The words (epoch, cut, in transit, settled) are those of
docs/snapshot-design.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from cutwatch.core._clock import VectorClock
from cutwatch.core._recording import RecordedEvent
from cutwatch.core._tasks import TaskView

__all__ = [
    "OUTCOME_BOUNCED",
    "OUTCOME_FAILED",
    "OUTCOME_UNSTAMPED",
    "REASON_TOO_MANY_CALLS",
    "REASON_TOO_MANY_OPEN",
    "REASON_TRUNCATED",
    "REQUEST",
    "RESPONSE",
    "STOPPED_REASONS",
    "Answering",
    "Bounced",
    "CallOutcome",
    "Capture",
    "ChannelRecord",
    "Flushed",
    "LocalSnapshot",
    "MsgKey",
    "OpenCall",
    "Payload",
    "PendingStreamMessage",
    "RecordingStopped",
    "SnapshotEvent",
    "StreamCount",
]

REQUEST: Final = "request"
RESPONSE: Final = "response"
REASON_TRUNCATED: Final = "recording truncated"
REASON_TOO_MANY_OPEN: Final = "too many open epochs"
REASON_TOO_MANY_CALLS: Final = "too many calls in flight at the cut"
STOPPED_REASONS: Final = (REASON_TRUNCATED, REASON_TOO_MANY_OPEN, REASON_TOO_MANY_CALLS)
"""Why a participant stops recording an epoch on its own: its records of that epoch are partial."""
OUTCOME_UNSTAMPED: Final = "unstamped"
"""The call was answered without a stamp: the server is not instrumented, nothing can be recorded."""
OUTCOME_FAILED: Final = "failed"
"""The call failed without a stamped answer: whether its request reached a handler is unknown."""
OUTCOME_BOUNCED: Final = "bounced"
"""The call failed with the error answer of an attempt that bounced: no attempt followed that one."""

Payload = str | Callable[[], str]
"""A message's payload as JSON, or a function that renders it (only called when it is recorded)."""


class MsgKey(NamedTuple):
    """Identity of one stamped message; equal keys are the same message delivered again.

    ``call_id`` is the caller's: a request and its response share it.
    """

    sender: str
    call_id: int
    attempt: int
    kind: str
    position: int = 0
    """0 for a call's own request or response; n >= 1 for the n-th message of its stream that way."""


@dataclass(frozen=True)
class StreamCount:
    """One end of a streaming call at a cut: ``requests`` and ``responses`` are the client's messages
    sent and the server's consumed (requests), the server's sent and the client's consumed (responses).
    """

    caller: str
    call_id: int
    role: str
    method: str = ""
    requests: int = 0
    responses: int = 0


@dataclass(frozen=True)
class PendingStreamMessage:
    """A stream message the application took and has not applied at the cut (recorded in transit
    for the epochs after ``since``, the epoch its stream started in at its sender's side)."""

    sender: str
    receiver: str
    method: str
    key: MsgKey
    payload: Payload
    since: int


class Capture(NamedTuple):
    """What a process captured for a local snapshot, under its snapshot lock."""

    clock: Mapping[str, int]
    state: object
    tasks: tuple[TaskView, ...] = ()
    pools: Mapping[str, int] = {}
    state_bytes: int = 0
    """The state's size as JSON, measured where it was serialised (for the agent's queue bound)."""
    untracked_changes: int = 0
    """State changes so far that no cut can place (see ``ProcessStats.untracked_changes``)."""
    streams: tuple[StreamCount, ...] = ()
    """The streaming calls open at this process, with their counts (see ``core._streams``)."""
    stream_pending: tuple[PendingStreamMessage, ...] = ()
    """Stream messages taken and not applied yet: in transit for the cut."""
    queued: tuple[tuple[int, TaskView], ...] = ()
    """Server tasks whose calls arrived and wait for a worker, each with the epoch its request was sent
    in: a snapshot of epoch ``e`` lists those sent before ``e`` (see ``TaskRegistry.capture``)."""
    state_missing: str = ""
    """Why ``state`` was not captured (an ``atomic()`` block was half done); "" when it was."""
    recorded: tuple[RecordedEvent, ...] = ()
    """State changes recorded for lattice predicates since the last local snapshot (``core._recording``)."""
    recorded_through: int = 0
    """How many state changes this process recorded (or dropped) so far; 0 when it records none."""


class OpenCall(NamedTuple):
    """A call in flight at the caller's cut; ``failed`` says why it ended without an answer."""

    call_id: int
    method: str = ""
    target: str = ""
    failed: str = ""


class Answering(NamedTuple):
    """A request ``caller``/``call_id`` consumed before the server's cut and not yet answered."""

    caller: str
    call_id: int


@dataclass(frozen=True)
class LocalSnapshot:
    """Process ``process``'s local snapshot for ``epoch``.

    ``open_calls`` and ``answering`` settle calls; the counters (cumulative,
    per peer where the peer is known) are for reading.
    """

    epoch: int
    process: str
    clock: VectorClock
    state: object
    tasks: tuple[TaskView, ...] = ()
    open_calls: tuple[OpenCall, ...] = ()
    answering: tuple[Answering, ...] = ()
    requests_sent: int = 0
    responses_sent: Mapping[str, int] = field(default_factory=dict)
    requests_consumed: Mapping[str, int] = field(default_factory=dict)
    responses_consumed: Mapping[str, int] = field(default_factory=dict)
    worker_pools: Mapping[str, int] = field(default_factory=dict)
    """Capacity of each server's worker pool (0: unknown), for deadlock detection."""
    untracked_changes: int = 0
    """State changes so far, at this process, that no cut can place: made by requests without a stamp."""
    streams: tuple[StreamCount, ...] = ()
    """This process's ends of the streaming calls open at its cut, with their messages counted."""
    state_bytes: int = field(default=0, compare=False)
    """The state's size as JSON, from :attr:`Capture.state_bytes`; not part of what is sent."""
    state_missing: str = ""
    """Why the application state was not captured ("" when it was): the snapshot was taken while an
    ``atomic()`` block was half done, with ``state`` empty and everything else as usual."""
    recorded: tuple[RecordedEvent, ...] = ()
    """The state changes recorded for lattice predicates since the process's last local snapshot."""
    recorded_through: int = 0
    """How many state changes the process recorded (or dropped) before this snapshot: the events of
    the window that ends at this cut are those numbered below it (0: the process records none)."""


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
        return self.msg_key.kind

    @property
    def caller(self) -> str:
        """The process that made the call this message belongs to."""
        return self.sender if self.msg_key.kind == REQUEST else self.receiver


@dataclass(frozen=True)
class CallOutcome:
    """How ``process``'s call ``call_id``, open at its cut for ``epoch``, ended without a stamped answer."""

    epoch: int
    process: str
    call_id: int
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class RecordingStopped:
    """``process`` stopped recording ``epoch`` before it was closed: the cut cannot be complete."""

    epoch: int
    process: str
    reason: str
    dropped: int


@dataclass(frozen=True)
class Flushed:
    """``process`` has sent everything it emitted before the collector asked it to flush ``epoch``.

    Agents send events to the collector in order, so every record emitted
    before this marker has arrived when the marker does. The collector asks
    for it once all local snapshots of ``epoch`` are in; see
    :mod:`cutwatch.core._participant` for why completion waits for it.
    """

    epoch: int
    process: str
    round: int = 0
    """Which flush round of ``epoch`` this marker answers (each round may fence more calls)."""
    untracked_changes: int = 0
    """The process's untracked state changes so far, as at its local snapshot."""


@dataclass(frozen=True)
class Bounced:
    """``process`` recorded request ``msg_key`` for ``epoch`` and then turned it away unapplied.

    Its handler ended with an error before it consumed the request (it never
    finished an ``atomic()`` block): the request changed nothing there, and
    gRPC may send it again, as a new attempt, to this server or another. The
    record must not settle the call nor count in transit. Emitted before the
    error goes back to the caller, so it reaches the collector before any
    flush marker that a retry's effect could precede.
    """

    epoch: int
    process: str
    msg_key: MsgKey


SnapshotEvent = LocalSnapshot | ChannelRecord | CallOutcome | RecordingStopped | Flushed | Bounced
"""Everything a participant emits for the collector, in the order it emits it."""
