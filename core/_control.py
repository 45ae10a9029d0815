"""What an agent and its collector say to each other, as plain records.

An agent registers, then sends numbered messages: the snapshot events its
participant emits, heartbeats, and a goodbye when it shuts down. The
collector answers with orders: registered (from which epoch on to count),
take a snapshot, flush, close an epoch. ``cutwatch.proto`` carries these
over the collector's gRPC stream; the coordinator and the process event core
see only these records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cutwatch.core._events import SnapshotEvent

__all__ = [
    "PROTOCOL_VERSION",
    "AgentEvent",
    "CloseEpoch",
    "Flush",
    "Goodbye",
    "Heartbeat",
    "Invalid",
    "Order",
    "Registered",
    "Registration",
    "TakeSnapshot",
]

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Registration:
    """The first message of an agent's stream: who it is, its pools, and where its numbering is."""

    process_id: str
    service: str
    protocol_version: int = PROTOCOL_VERSION
    worker_pools: Mapping[str, int] = field(default_factory=dict)
    epoch: int = 0
    dropped: int = 0
    """Events the agent dropped so far (its queue to the collector overflowed)."""
    untracked_changes: int = 0
    """State changes so far that no cut can place (the baseline of the next snapshot's count)."""


@dataclass(frozen=True)
class Heartbeat:
    """The agent is alive and has nothing to send; ``dropped`` as in :class:`Registration`."""

    dropped: int = 0


@dataclass(frozen=True)
class Goodbye:
    """The agent shuts down on purpose: forget it at once rather than expect it back."""


@dataclass(frozen=True)
class Invalid:
    """A message that no correct agent sends; ``reason`` says what is wrong with it."""

    reason: str


AgentEvent = SnapshotEvent | Heartbeat | Goodbye | Invalid
"""The body of one numbered message on an agent's stream."""


@dataclass(frozen=True)
class Registered:
    """The collector took the registration; count snapshots from ``epoch`` on."""

    epoch: int


@dataclass(frozen=True)
class TakeSnapshot:
    epoch: int


@dataclass(frozen=True)
class Flush:
    """Refuse the calls in ``fence`` (their callers gave them up), then send a flush marker of round
    ``round`` of ``epoch`` behind everything sent so far."""

    epoch: int
    round: int = 0
    fence: tuple[tuple[str, int], ...] = ()
    """(caller, call id) of each call to refuse from now on."""


@dataclass(frozen=True)
class CloseEpoch:
    """The collector is done with ``epoch``; ``forget`` lists this agent's failed calls that every
    participant has fenced."""

    epoch: int
    forget: tuple[int, ...] = ()


Order = Registered | TakeSnapshot | Flush | CloseEpoch
"""What the collector tells one agent."""
