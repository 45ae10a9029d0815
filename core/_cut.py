"""The cut model: what ``CollectorClient`` returns, predicates read and ``--json`` prints.

A :class:`Cut` is built from a stored cut and travels as one JSON document
(the ``cut_json`` of the collector's replies); its layout is the stable,
documented ``--json`` format of ``cutwatch snapshot`` (docs/collector.md).
Fields are only ever added to it, never renamed or removed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cutwatch.core._tasks import TaskView

__all__ = ["CUT_FORMAT", "Cut", "InTransitMessage"]

CUT_FORMAT = 1


@dataclass(frozen=True)
class InTransitMessage:
    """A message sent before its sender's cut and consumed after its receiver's."""

    sender: str
    receiver: str
    method: str
    kind: str
    """``request`` or ``response``."""
    call_id: int
    attempt: int
    payload: Any
    index: int = 0
    """0 for the call's own request or response; n >= 1 for the n-th message of its stream that way."""

    def to_json(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "receiver": self.receiver,
            "method": self.method,
            "kind": self.kind,
            "call_id": self.call_id,
            "attempt": self.attempt,
            "index": self.index,
            "payload": self.payload,
        }


@dataclass(frozen=True)
class Cut:
    """A consistent cut of the whole system (when ``status`` is ``COMPLETE``).

    ``states`` maps each process to ``{"service": ..., "state": {provider:
    value}}``; ``in_transit`` lists the messages in the channels; ``clocks``
    the vector clock of each process at its cut; ``tasks`` what each process
    was doing (what each task waits for, which locks it holds). An
    INCOMPLETE cut says why in ``reasons``, names the processes that did not
    report in ``missing`` and the calls nobody accounted for in ``unsettled``.
    """

    epoch: int
    status: str
    started: float
    finished: float
    states: Mapping[str, Mapping[str, Any]]
    in_transit: tuple[InTransitMessage, ...]
    clocks: Mapping[str, Mapping[str, int]]
    tasks: Mapping[str, tuple[TaskView, ...]] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unsettled: tuple[Mapping[str, Any], ...] = ()
    duplicates: tuple[Mapping[str, Any], ...] = ()
    counters: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)
    pools: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Worker capacity of each server (interceptor) of each process; 0 when unknown."""
    covers: tuple[str, ...] = ()
    """The processes the cut is of: those that reported (``states``) and those that did not
    (``missing``)."""
    left_out: tuple[Mapping[str, Any], ...] = ()
    """Processes the collector knew of that the cut does not cover: ``{"process", "service", "why"}``
    (registered after the snapshot started, or gone without a goodbye and not back). A COMPLETE cut is
    complete for what it covers."""
    untracked: Mapping[str, int] = field(default_factory=dict)
    """Processes whose state changed, during the snapshot, by requests that came without a stamp (a
    hop that strips stamps, a client without an agent), and how many times. Such a change cannot be
    placed on either side of the cut: the cut is consistent for every message that kept its stamp,
    and its tasks are exact, but a sum over its states is inconclusive."""

    @property
    def complete(self) -> bool:
        return self.status == "COMPLETE"

    @property
    def conclusive(self) -> bool:
        """COMPLETE, and no state change in it that it cannot place (``untracked`` is empty): what
        its states and messages in transit add up to is exact."""
        return self.complete and not self.untracked

    @property
    def processes(self) -> tuple[str, ...]:
        return tuple(sorted(self.states))

    def services(self) -> dict[str, list[str]]:
        """Process ids by service name."""
        out: dict[str, list[str]] = {}
        for process, entry in sorted(self.states.items()):
            out.setdefault(str(entry.get("service", "")), []).append(process)
        return out

    def state_of(self, process: str) -> Mapping[str, Any]:
        """The ``{provider: value}`` state of one process."""
        state = self.states[process].get("state", {})
        return state if isinstance(state, Mapping) else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CUT_FORMAT,
            "epoch": self.epoch,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "reasons": list(self.reasons),
            "missing": list(self.missing),
            "unsettled": [dict(u) for u in self.unsettled],
            "duplicates": [dict(d) for d in self.duplicates],
            "states": {p: dict(v) for p, v in self.states.items()},
            "clocks": {p: dict(v) for p, v in self.clocks.items()},
            "tasks": {p: [t.to_json() for t in v] for p, v in self.tasks.items()},
            "counters": {p: {k: dict(c) for k, c in v.items()} for p, v in self.counters.items()},
            "pools": {p: dict(v) for p, v in self.pools.items()},
            "in_transit": [m.to_json() for m in self.in_transit],
            "covers": list(self.covers),
            "left_out": [dict(o) for o in self.left_out],
            "untracked": dict(self.untracked),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Cut:
        """The cut in a JSON document of this format; raises ``ValueError`` on anything else."""
        try:
            return cls(
                epoch=int(doc["epoch"]),
                status=str(doc["status"]),
                started=float(doc["started"]),
                finished=float(doc["finished"]),
                reasons=tuple(str(r) for r in doc.get("reasons", ())),
                missing=tuple(str(m) for m in doc.get("missing", ())),
                unsettled=tuple(dict(u) for u in doc.get("unsettled", ())),
                duplicates=tuple(dict(d) for d in doc.get("duplicates", ())),
                states={str(p): dict(v) for p, v in doc["states"].items()},
                clocks={str(p): {str(q): int(n) for q, n in v.items()} for p, v in doc["clocks"].items()},
                tasks={
                    str(p): tuple(TaskView.from_json(t) for t in v) for p, v in doc.get("tasks", {}).items()
                },
                counters={
                    str(p): {str(k): {str(q): int(n) for q, n in c.items()} for k, c in v.items()}
                    for p, v in doc.get("counters", {}).items()
                },
                pools={
                    str(p): {str(k): int(n) for k, n in v.items()} for p, v in doc.get("pools", {}).items()
                },
                covers=tuple(str(p) for p in doc.get("covers", ())),
                left_out=tuple(dict(o) for o in doc.get("left_out", ())),
                untracked={str(p): int(n) for p, n in doc.get("untracked", {}).items()},
                in_transit=tuple(
                    InTransitMessage(
                        sender=str(m["sender"]),
                        receiver=str(m["receiver"]),
                        method=str(m.get("method", "")),
                        kind=str(m["kind"]),
                        call_id=int(m.get("call_id", 0)),
                        attempt=int(m.get("attempt", 0)),
                        payload=m.get("payload"),
                        index=int(m.get("index", 0)),
                    )
                    for m in doc["in_transit"]
                ),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a cutwatch cut document: {exc!r}") from None

    @classmethod
    def loads(cls, text: str) -> Cut:
        return cls.from_json(json.loads(text))
