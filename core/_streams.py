"""Counting the messages of gRPC streams, at both ends, so that a cut can tell where each one is.

gRPC carries metadata only at a stream's start and end, so a stream message
has no stamp of its own. What every cut can still say is how many messages
each end had sent, and consumed, before its cut: a stream is FIFO, so the
i-th message consumed is the i-th sent. Each end of a tracked streaming call
keeps one :class:`StreamEnd`; every local snapshot lists the ends open at
that process (:class:`StreamCount`), and the cut assembler compares the two
ends of each call (:func:`place_streams`):

- as many consumed as sent before the cuts: nothing of the stream crosses;
- more sent than consumed: messages were in flight at the cut; the receiver
  records every message it takes after its cut (and those it took but had
  not applied at its cut), so the cut places them in transit;
- more consumed than sent: a message sent after its sender's cut was
  consumed before its receiver's, which no consistent cut allows.

Consumption follows the rule of requests: a message the application has
taken from the stream is consumed when the task that took it leaves its next
``atomic()`` block (or the handler ends). A message *sent* counts when the
application hands it to gRPC, or, when the code that produced it ran an
``atomic()`` block, when that block ended: a debit and the stream message
that carries the money are then on the same side of every cut.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from cutwatch.core._events import (
    REQUEST,
    RESPONSE,
    ChannelRecord,
    MsgKey,
    Payload,
    PendingStreamMessage,
    StreamCount,
)

__all__ = [
    "CLIENT",
    "PULLS",
    "SENDING",
    "SERVER",
    "Sending",
    "StreamCount",
    "StreamEnd",
    "StreamPlacement",
    "place_streams",
    "snapshot_waves",
    "stream_edges",
]

CLIENT: Final = "client"
SERVER: Final = "server"
Role = Literal["client", "server"]


class StreamEnd:
    """This process's end of one streaming call: what it sent, took and consumed so far.

    ``peer`` is the process at the other end when known (a client learns its
    server only from an answer); ``since`` the epoch of the call's start at
    the caller: the messages this end takes are recorded for the cuts after
    it. ``pending`` holds the messages taken and not applied yet, with their
    index in the stream and their payload.
    """

    __slots__ = (
        "call_id",
        "caller",
        "consumed",
        "method",
        "peer",
        "pending",
        "pulled",
        "role",
        "sent",
        "since",
    )

    def __init__(
        self, caller: str, call_id: int, role: Role, method: str = "", *, peer: str = "", since: int = 0
    ) -> None:
        self.caller = caller
        self.call_id = call_id
        self.role: Role = role
        self.method = method
        self.peer = peer
        self.since = since
        self.sent = 0
        self.pulled = 0
        """Messages the application took from the stream; ``consumed`` of them are applied."""
        self.consumed = 0
        self.pending: deque[tuple[int, Payload]] = deque()

    @property
    def kind(self) -> str:
        """The kind of the messages this end receives: requests at the server, responses at the client."""
        return REQUEST if self.role == SERVER else RESPONSE

    def key(self, index: int) -> MsgKey:
        """The identity of the ``index``-th message this end receives."""
        sender = self.caller if self.role == SERVER else self.peer
        return MsgKey(sender, self.call_id, 0, self.kind, index)

    def message(self, index: int, payload: Payload, receiver: str) -> PendingStreamMessage:
        """The ``index``-th message this end received, as a record needs it."""
        key = self.key(index)
        return PendingStreamMessage(key.sender, receiver, self.method, key, payload, self.since)

    def count(self) -> StreamCount:
        if self.role == CLIENT:
            return StreamCount(self.caller, self.call_id, self.role, self.method, self.sent, self.consumed)
        return StreamCount(self.caller, self.call_id, self.role, self.method, self.consumed, self.sent)


class Sending:
    """A message being produced for ``end`` (the application's iterator is running): an ``atomic()``
    block that ends meanwhile sends it."""

    __slots__ = ("counted", "end")

    def __init__(self, end: StreamEnd) -> None:
        self.end = end
        self.counted = False


SENDING: contextvars.ContextVar[Sending | None] = contextvars.ContextVar("cutwatch_sending", default=None)
"""The stream message the code running in this context is producing, if any."""
PULLS: contextvars.ContextVar[dict[StreamEnd, int] | None] = contextvars.ContextVar(
    "cutwatch_pulls", default=None
)
"""Stream messages the code running in this context took and has not consumed yet, by stream end."""


def stream_edges(counts: Iterable[StreamCount], process: str) -> set[tuple[str, str]]:
    """Who streams to whom, from the server ends ``process`` listed: (sender, receiver) pairs of the
    directions that carried messages (a client end does not know its server)."""
    edges: set[tuple[str, str]] = set()
    for count in counts:
        if count.role != SERVER or count.caller == process:
            continue
        if count.requests:
            edges.add((count.caller, process))
        if count.responses:
            edges.add((process, count.caller))
    return edges


def snapshot_waves(participants: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The order in which to ask for local snapshots so that a stream's receiver cuts before its
    sender: each wave holds the processes whose every receiver is in an earlier wave.

    A receiver that cuts first has consumed only messages sent before it cut, hence before their
    sender's cut: one-way streams can then never cross a cut backwards. Processes in a cycle of
    streams (a bidirectional stream, two streams opposite ways) go together in the last wave.
    """
    waiting = set(participants)
    receivers: dict[str, set[str]] = {p: set() for p in waiting}
    for sender, receiver in edges:
        if sender in waiting and receiver in waiting and sender != receiver:
            receivers[sender].add(receiver)
    waves: list[list[str]] = []
    while waiting:
        wave = sorted(p for p in waiting if not receivers[p] & waiting)
        if not wave:
            wave = sorted(waiting)  # a cycle: no order helps it
        waves.append(wave)
        waiting -= set(wave)
    return waves


@dataclass
class StreamPlacement:
    """Where a cut puts the messages of its streams: ``in_transit`` the records of those in flight;
    ``owed`` the ones in flight not recorded yet (the receiver records them as it takes them);
    ``reasons`` why the cut can never be COMPLETE."""

    in_transit: list[ChannelRecord] = field(default_factory=list)
    owed: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def place_streams(
    ends: Iterable[tuple[str, StreamCount]],
    started_after_cut: Collection[tuple[str, int]],
    records: Mapping[tuple[str, int, str], Mapping[int, ChannelRecord]],
) -> StreamPlacement:
    """Place the stream messages of a cut from its local snapshots' stream ends.

    ``ends`` pairs each listed end with the process that listed it;
    ``started_after_cut`` holds the calls whose request is in transit (their
    handler started after its server's cut, having consumed and sent nothing
    before it); ``records`` the stream messages receivers recorded, by
    (caller, call id, kind) and index. Per call and direction, with ``sent``
    the sender's count and ``consumed`` the receiver's: messages
    ``consumed+1 .. sent`` were in flight and must all be recorded; more
    consumed than sent is a message sent after its sender's cut and
    consumed before its receiver's. A lone end means that the other closed
    too long before its own cut to be listed, or that the server has not
    received the call yet: how far the other end got is unknown.
    """
    by_call: dict[tuple[str, int], dict[str, tuple[str, StreamCount]]] = {}
    for process, count in ends:
        by_call.setdefault((count.caller, count.call_id), {})[count.role] = (process, count)
    placement = StreamPlacement()
    for (caller, call_id), by_role in sorted(by_call.items()):
        client, server = by_role.get(CLIENT), by_role.get(SERVER)
        known = (client or server)[1]  # type: ignore[index]
        name = f"stream {known.method or 'call'} #{call_id} from {caller}"
        if client is not None and server is None and (caller, call_id) in started_after_cut:
            server = ("", StreamCount(caller, call_id, SERVER, known.method))
        if client is None or server is None:
            if known.requests or known.responses:
                side = "server" if client is None else "client"
                placement.reasons.append(
                    f"{name}: only its {side}'s end was open at its cut; how far the other end got is unknown"
                )
            continue
        server_process, server_count = server
        for kind, sent, consumed, sender, receiver in (
            (REQUEST, client[1].requests, server_count.requests, "client", "server"),
            (RESPONSE, server_count.responses, client[1].responses, "server", "client"),
        ):
            if consumed > sent:
                placement.reasons.append(
                    f"{name}: {consumed - sent} {kind} message(s) consumed before the {receiver}'s cut were "
                    f"sent after the {sender}'s cut"
                )
                continue
            recorded = records.get((caller, call_id, kind), {})
            missing = [index for index in range(consumed + 1, sent + 1) if index not in recorded]
            if missing:
                placement.owed.append(
                    f"{name}: {len(missing)} {kind} message(s) in flight at the cut not recorded yet "
                    f"(numbers {missing[0]}..{missing[-1]} of the stream)"
                )
                continue
            for index in range(consumed + 1, sent + 1):
                record = recorded[index]
                if kind == RESPONSE and not record.sender and server_process:
                    # The client took it before it knew its server; the server's end names it.
                    key = record.msg_key._replace(sender=server_process)
                    record = replace(record, sender=server_process, msg_key=key)
                placement.in_transit.append(record)
    return placement
