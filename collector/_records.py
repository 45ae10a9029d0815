"""Cuts as a store keeps them, and the views built from them.

A finished cut becomes a :class:`StoredCut` (:func:`stored_from_assembled`)
that every store writes and reads back exactly; readers get the cut model,
:class:`cutwatch.core.Cut` (:func:`cut_from_stored`). Everything is portable:
JSON as text (``json.dumps(sort_keys=True)`` in, ``json.loads`` out),
integers within 64 bits, timestamps as floats.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cutwatch.core import (
    REASON_TRUNCATED,
    AssembledCut,
    Cut,
    DuplicateDelivery,
    InTransitMessage,
    LocalSnapshot,
    TaskView,
    UnsettledCall,
    shown,
)

__all__ = [
    "ANY_RECEIVER",
    "CutStatus",
    "CutSummary",
    "LeftOut",
    "ResultStatus",
    "StoredChannelState",
    "StoredCut",
    "StoredLocalState",
    "StoredResult",
    "cut_from_stored",
    "dumps",
    "stored_from_assembled",
    "summary_to_json",
]

_LOG = logging.getLogger("cutwatch.collector")
CutStatus = Literal["COMPLETE", "INCOMPLETE"]
ResultStatus = Literal["PASS", "FAIL", "ERROR"]


@dataclass(frozen=True)
class StoredLocalState:
    """One process's local snapshot; ``*_json`` fields are JSON text."""

    process: str
    service: str
    clock: Mapping[str, int]
    state_json: str
    tasks_json: str
    sent: Mapping[str, int]
    consumed: Mapping[str, int]
    truncated: bool = False
    pools: Mapping[str, int] = field(default_factory=dict)
    """Worker capacity of each server of the process (0: unknown)."""

    @property
    def state(self) -> Any:
        return json.loads(self.state_json)

    @property
    def tasks(self) -> Any:
        return json.loads(self.tasks_json)


@dataclass(frozen=True)
class StoredChannelState:
    """One message in transit on ``sender -> receiver`` at the cut."""

    sender: str
    receiver: str
    method: str
    kind: str
    call_id: int
    attempt: int
    payload_json: str
    index: int = 0
    """0 for a call's own request or response; n >= 1 for the n-th message of its stream that way."""

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)


@dataclass(frozen=True)
class LeftOut:
    """A process the collector knew of that a cut does not cover, and why."""

    process: str
    service: str
    why: str


@dataclass(frozen=True)
class StoredCut:
    """A finished cut as stored; ``states`` sorted by process, ``in_transit`` in recorded order."""

    epoch: int
    status: CutStatus
    started: float
    finished: float
    reasons: tuple[str, ...]
    missing: tuple[str, ...]
    unsettled: tuple[UnsettledCall, ...]
    states: tuple[StoredLocalState, ...]
    in_transit: tuple[StoredChannelState, ...]
    duplicates: tuple[DuplicateDelivery, ...] = ()
    covers: tuple[str, ...] = ()
    """The processes the snapshot was taken of (its participants); empty for cuts stored before it was
    kept, whose coverage is their states and ``missing``."""
    left_out: tuple[LeftOut, ...] = ()
    untracked: Mapping[str, int] = field(default_factory=dict)
    """As :attr:`cutwatch.core.Cut.untracked`."""

    def __post_init__(self) -> None:
        # The order a store reads back in, so that what is saved compares equal to what is read.
        object.__setattr__(self, "states", tuple(sorted(self.states, key=lambda state: state.process)))
        for name in ("reasons", "missing", "unsettled", "in_transit", "duplicates", "covers", "left_out"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class StoredResult:
    """One predicate's verdict on one cut: ``witness_json`` says why it failed (JSON text)."""

    epoch: int
    name: str
    status: ResultStatus
    message: str = ""
    witness_json: str = "null"
    duration: float = 0.0

    @property
    def witness(self) -> Any:
        return json.loads(self.witness_json)


@dataclass(frozen=True)
class CutSummary:
    """A cut without its contents, for listings."""

    epoch: int
    status: CutStatus
    started: float
    finished: float
    processes: int
    in_transit: int
    missing: tuple[str, ...]
    reasons: tuple[str, ...]


def dumps(value: object) -> str:
    """Canonical, standard JSON (no NaN), so that every store and reader agrees on the text."""
    return json.dumps(value, sort_keys=True, allow_nan=False)


def stored_from_assembled(
    cut: AssembledCut,
    started: float,
    finished: float,
    *,
    services: Mapping[str, str] | None = None,
    left_out: Sequence[LeftOut] = (),
) -> StoredCut:
    """The storable form of an assembled cut.

    States, tasks and counters come from the cut's local snapshots; a state
    that is not JSON-serialisable is refused here, before anything is
    written. ``sent`` holds responses per receiver and requests under
    ``"*"`` (a caller does not know which server a request reaches);
    ``consumed`` the messages of both kinds per sender. A process is marked
    truncated when the cut's reasons say its recording was truncated.
    """
    services = services or {}
    snapshots = cut.locals or {}
    truncated = {reason for reason in cut.reasons if reason.startswith(REASON_TRUNCATED + " at ")}
    states: list[StoredLocalState] = []
    for process in sorted(cut.states):
        snap = snapshots.get(process)
        states.append(
            StoredLocalState(
                process=process,
                service=services.get(process, process.partition(":")[0]),
                clock=dict(cut.clocks.get(process, {})),
                state_json=dumps(cut.states[process]),
                tasks_json=dumps([task.to_json() for task in snap.tasks] if snap is not None else []),
                sent=_sent_counters(snap) if snap else {},
                consumed=_consumed_counters(snap) if snap else {},
                truncated=f"{REASON_TRUNCATED} at {process}" in truncated,
                pools=dict(snap.worker_pools) if snap else {},
            )
        )
    in_transit = tuple(
        StoredChannelState(
            sender=record.sender,
            receiver=record.receiver,
            method=record.method,
            kind=record.msg_key.kind,
            call_id=record.msg_key.call_id,
            attempt=record.msg_key.attempt,
            payload_json=dumps(json.loads(record.payload_json)),
            index=record.msg_key.position,
        )
        for record in cut.in_transit
    )
    return StoredCut(
        epoch=cut.epoch,
        status=cut.status,
        started=started,
        finished=finished,
        reasons=cut.reasons,
        missing=cut.missing,
        unsettled=cut.unsettled,
        states=tuple(states),
        in_transit=in_transit,
        duplicates=cut.duplicates,
        covers=cut.covers,
        left_out=tuple(left_out),
        untracked=dict(cut.untracked),
    )


ANY_RECEIVER = "*"


def _sent_counters(snap: LocalSnapshot) -> dict[str, int]:
    sent = dict(snap.responses_sent)
    if snap.requests_sent:
        sent[ANY_RECEIVER] = snap.requests_sent
    return sent


def _consumed_counters(snap: LocalSnapshot) -> dict[str, int]:
    consumed = dict(snap.requests_consumed)
    for sender, count in snap.responses_consumed.items():
        consumed[sender] = consumed.get(sender, 0) + count
    return consumed


def cut_from_stored(stored: StoredCut) -> Cut:
    return Cut(
        epoch=stored.epoch,
        status=stored.status,
        started=stored.started,
        finished=stored.finished,
        reasons=stored.reasons,
        missing=stored.missing,
        unsettled=tuple(
            {
                "caller": u.caller,
                "call_id": u.call_id,
                "method": u.method,
                "target": u.target,
                "failed": u.failed,
            }
            for u in stored.unsettled
        ),
        duplicates=tuple(
            {"caller": d.caller, "call_id": d.call_id, "where": list(d.where)} for d in stored.duplicates
        ),
        covers=stored.covers or tuple(sorted({*(s.process for s in stored.states), *stored.missing})),
        left_out=tuple({"process": o.process, "service": o.service, "why": o.why} for o in stored.left_out),
        untracked=dict(stored.untracked),
        states={s.process: {"service": s.service, "state": s.state} for s in stored.states},
        clocks={s.process: dict(s.clock) for s in stored.states},
        tasks={s.process: _tasks(s) for s in stored.states},
        counters={s.process: {"sent": dict(s.sent), "consumed": dict(s.consumed)} for s in stored.states},
        pools={s.process: dict(s.pools) for s in stored.states},
        in_transit=tuple(
            InTransitMessage(c.sender, c.receiver, c.method, c.kind, c.call_id, c.attempt, c.payload, c.index)
            for c in stored.in_transit
        ),
    )


def summary_to_json(summary: CutSummary) -> dict[str, Any]:
    return {
        "epoch": summary.epoch,
        "status": summary.status,
        "started": summary.started,
        "finished": summary.finished,
        "processes": summary.processes,
        "in_transit": summary.in_transit,
        "missing": list(summary.missing),
        "reasons": list(summary.reasons),
    }


def _tasks(state: StoredLocalState) -> tuple[TaskView, ...]:
    """The tasks of a stored local state; one an older collector kept unchecked that is not a task is
    left out, and logged."""
    tasks = state.tasks
    out: list[TaskView] = []
    for task in tasks if isinstance(tasks, list) else ():
        try:
            out.append(TaskView.from_json(task))
        except ValueError as exc:
            _LOG.warning("a stored task of %s is not one, left out of the cut: %s", shown(state.process), exc)
    return tuple(out)
