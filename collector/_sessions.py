"""The coordinator's view of agents: their streams, those that may come back, and its clock."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cutwatch.collector._records import LeftOut
from cutwatch.collector._store import MAX_META_VALUE, CutStore
from cutwatch.core import Order, Registration, StorageError

__all__ = [
    "EXPECTED_KEY",
    "AgentSession",
    "Clock",
    "CoordinatorStats",
    "Departed",
    "Roster",
    "check_registration",
    "expected_after_restart",
    "left_out",
]

_LOG = logging.getLogger("cutwatch.collector")

EXPECTED_KEY = "expected_processes"
"""The store's metadata key under which the coordinator writes down who is registered."""


class Clock(Protocol):
    """Where the coordinator reads time: ``monotonic()`` for deadlines and graces, ``time()`` for
    the timestamps of stored cuts. The :mod:`time` module is one."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


@dataclass(eq=False)
class AgentSession:
    """One agent's control stream, from registration until it ends."""

    process: str
    service: str
    worker_pools: Mapping[str, int]
    epoch: int
    connected_at: float
    last_seen: float
    outbox: queue.Queue[Order | None] = field(default_factory=queue.Queue)
    last_seq: int = 0
    dropped: int = 0
    invalid: int = 0
    untracked_seen: int = 0
    """The agent's latest count of untracked state changes (see ``LocalSnapshot``): a snapshot
    started now counts the changes beyond it."""
    closed: bool = False
    said_goodbye: bool = False

    def send(self, message: Order) -> None:
        if not self.closed:
            self.outbox.put(message)

    def close(self) -> None:
        self.closed = True
        self.outbox.put(None)


@dataclass(frozen=True)
class Departed:
    """A process whose stream ended without a goodbye: it may come back."""

    service: str
    at: float
    last_seq: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class CoordinatorStats:
    agents: int
    snapshots_started: int
    complete: int
    incomplete: int
    rejected: int
    events: int
    events_invalid: int
    events_late: int
    events_foreign: int
    """Snapshot pieces from agents that were not participants of that snapshot (they joined later)."""
    store_errors: int
    finished_early: int = 0
    """Snapshots finished before their timeout: all they waited for were calls queued behind deadlocked
    workers (see ``collector._queued``)."""

    @classmethod
    def of(cls, agents: int, counts: Mapping[str, int]) -> CoordinatorStats:
        """The stats from the coordinator's counts by short name."""
        return cls(
            agents=agents,
            snapshots_started=counts.get("started", 0),
            complete=counts.get("complete", 0),
            incomplete=counts.get("incomplete", 0),
            rejected=counts.get("rejected", 0),
            events=counts.get("events", 0),
            events_invalid=counts.get("invalid", 0),
            events_late=counts.get("late", 0),
            events_foreign=counts.get("foreign", 0),
            store_errors=counts.get("store_errors", 0),
            finished_early=counts.get("finished_early", 0),
        )


def expected_after_restart(store: CutStore, now: float) -> dict[str, Departed]:
    """After a restart, the processes registered before it, and those of the newest cut, are
    expected back for a while."""
    expected: dict[str, Departed] = {}
    newest = store.latest()
    if newest is not None:
        expected = {state.process: Departed(state.service, now) for state in newest.states}
        for process in newest.missing:
            expected.setdefault(process, Departed("", now))
    try:
        registered = json.loads(store.get_meta(EXPECTED_KEY) or "{}")
    except ValueError:
        registered = {}
    if isinstance(registered, dict):
        for process, service in registered.items():
            expected[str(process)] = Departed(str(service), now)
    return expected


class Roster:
    """Writes down in the store who is registered or expected back, for a collector's next start.

    Written outside the coordinator's lock, one writer at a time, and only when it changed; a
    roster too large for the store's metadata is not written (the newest cut still names them).
    """

    def __init__(self, store: CutStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._written = ""

    def write(self, expected: Callable[[], dict[str, str]]) -> None:
        """Write what ``expected()`` returns (process -> service), read under this writer's lock."""
        with self._lock:
            text = json.dumps(expected(), sort_keys=True)
            if len(text) > MAX_META_VALUE or text == self._written:
                return
            try:
                self._store.put_meta(EXPECTED_KEY, text)
                self._written = text
            except (StorageError, ValueError) as exc:
                _LOG.error("could not write down the registered processes: %s", exc)


def left_out(
    covers: Mapping[str, str], sessions: Mapping[str, AgentSession], gone: Mapping[str, Departed], now: float
) -> list[LeftOut]:
    """The processes the collector knows of that a cut covering ``covers`` leaves out, and why."""
    out = [
        LeftOut(process, session.service, "registered after the snapshot started")
        for process, session in sorted(sessions.items())
        if process not in covers
    ]
    out += [
        LeftOut(
            process,
            departed.service,
            f"its stream ended {now - departed.at:.0f} s ago without a goodbye and it did not come back "
            "within the rejoin grace (dead, or cut off from the collector)",
        )
        for process, departed in sorted(gone.items())
        if process not in covers and process not in sessions
    ]
    return out


def check_registration(registration: Registration, max_epoch: int) -> None:
    """Refuse, with ``ValueError``, a registration no collector can keep (all of it is the peer's word)."""
    if not registration.process_id or len(registration.process_id) > 256:
        raise ValueError("a registration needs a process id of at most 256 characters")
    if registration.epoch > max_epoch:
        raise ValueError(
            f"epoch {registration.epoch} is beyond any this collector numbers (at most {max_epoch})"
        )
    if len(registration.service) > 256:
        raise ValueError("a service name has at most 256 characters")
    if len(registration.worker_pools) > 64 or any(len(name) > 256 for name in registration.worker_pools):
        raise ValueError("a registration names at most 64 worker pools, of at most 256 characters each")
