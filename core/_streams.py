"""Counting the messages of gRPC streams, at both ends, so that a cut can tell where each one is.

gRPC carries metadata only at a stream's start and end, so a stream message
has no stamp of its own. What every cut can still say is how many messages
each end had sent, and consumed, before its cut: a stream is FIFO, so the
i-th message consumed is the i-th sent. Each end of a tracked streaming call
keeps one :class:`StreamEnd`; every local snapshot lists the ends open at
that process (:class:`StreamCount`), and the cut assembler compares the two
ends of each call (:func:`stream_crossings`):

- as many consumed as sent before the cuts: nothing of the stream crosses;
- more sent than consumed: messages were in flight at the cut (their
  payloads are not recorded, so the cut cannot be COMPLETE);
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
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "CLIENT",
    "PULLS",
    "SENDING",
    "SERVER",
    "Sending",
    "StreamCount",
    "StreamEnd",
    "snapshot_waves",
    "stream_crossings",
    "stream_edges",
]

CLIENT: Final = "client"
SERVER: Final = "server"
Role = Literal["client", "server"]


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


class StreamEnd:
    """This process's end of one streaming call: what it sent, took and consumed so far."""

    __slots__ = ("call_id", "caller", "closed", "consumed", "method", "pulled", "role", "sent")

    def __init__(self, caller: str, call_id: int, role: Role, method: str = "") -> None:
        self.caller = caller
        self.call_id = call_id
        self.role: Role = role
        self.method = method
        self.sent = 0
        self.pulled = 0
        """Messages the application took from the stream; ``consumed`` of them are applied."""
        self.consumed = 0
        self.closed = False

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


def stream_crossings(
    counts: Iterable[StreamCount], server_started_after_cut: Collection[tuple[str, int]]
) -> list[str]:
    """Why the stream counts of a cut's local snapshots do not let it be COMPLETE (empty: they do).

    ``counts`` are every stream end the cut's local snapshots list.
    ``server_started_after_cut`` says, for a call whose client end is listed
    alone, whether its server's handler started after the server's cut (its
    request is recorded in transit): then the server had consumed and sent
    nothing before its cut. Otherwise a lone end means the other one closed
    before its own cut, and how far it got is unknown.
    """
    ends: dict[tuple[str, int], dict[str, StreamCount]] = {}
    for count in counts:
        ends.setdefault((count.caller, count.call_id), {})[count.role] = count
    reasons: list[str] = []
    for (caller, call_id), by_role in sorted(ends.items()):
        client, server = by_role.get(CLIENT), by_role.get(SERVER)
        known = client or server
        assert known is not None
        name = f"stream {known.method or 'call'} #{call_id} from {caller}"
        if client is not None and server is None and (caller, call_id) in server_started_after_cut:
            server = StreamCount(caller, call_id, SERVER, client.method)
        if client is None or server is None:
            if known.requests or known.responses:
                side = "server" if client is None else "client"
                reasons.append(
                    f"{name}: only its {side}'s end was open at its cut; how far the other end got is unknown"
                )
            continue
        for kind, sent, consumed, sender, receiver in (
            ("request", client.requests, server.requests, "client", "server"),
            ("response", server.responses, client.responses, "server", "client"),
        ):
            if consumed > sent:
                reasons.append(
                    f"{name}: {consumed - sent} {kind} message(s) consumed before the {receiver}'s cut were "
                    f"sent after the {sender}'s cut"
                )
            elif sent > consumed:
                reasons.append(
                    f"{name}: {sent - consumed} {kind} message(s) in flight at the cut (stream messages are "
                    "not recorded)"
                )
    return reasons
