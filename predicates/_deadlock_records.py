"""The deadlock report's records: plain named tuples and one frozen dataclass, with their JSON.

Report records are named tuples of plain values: immutable, cheap to make,
and left alone by the garbage collector, which matters when one deadlock
names 10^5 tasks. The JSON keys are documented in
:mod:`cutwatch.predicates._deadlock` and only ever added to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from cutwatch.core import ATOMIC_LOCK

__all__ = ["KEPT_STEPS", "KEPT_TASKS", "CycleStep", "Deadlock", "DeadlockedTask", "Wait", "lock_words"]

KEPT_TASKS = 500
"""Tasks a report lists: a bigger deadlock lists those on its cycle first, and counts the others."""
KEPT_STEPS = 500
"""Steps of its cycle a report keeps: a longer cycle keeps its first 498 and its last two, and counts."""


def lock_words(name: str) -> str:
    """A lock as a report names it: cutwatch's own snapshot lock in words, the others by name."""
    return "the atomic() snapshot lock" if name == ATOMIC_LOCK else f"lock {name}"


class Wait(NamedTuple):
    """One unmet wait of a deadlocked task.

    Report records are named tuples of plain values: immutable, cheap to make, and left alone by
    the garbage collector, which matters when one deadlock names 10^5 tasks.
    """

    kind: str
    """``call`` (a handler runs it, or its server has it queued), ``queued`` (a queued call waits for a
    worker, as its server recorded), ``worker`` (a call assumed queued for a worker) or ``lock``."""
    text: str
    method: str = ""
    call_id: int | None = None
    target: str = ""
    """The process it waits on: the callee of a call, the lock's process."""
    lock: str = ""
    pools: tuple[str, ...] = ()
    waits_on: tuple[tuple[str, int], ...] = ()
    """(process, task_id) of the tasks it waits on: handler, lock holder, busy workers."""
    assumption: str | None = None
    times_out_in: float | None = None
    """Seconds from the cut until this wait ends by itself (the call's deadline, the lock wait's timeout);
    None when it never does."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            "method": self.method,
            "call_id": self.call_id,
            "target": self.target,
            "lock": self.lock,
            "pools": list(self.pools),
            "waits_on": [{"process": p, "task_id": t} for p, t in self.waits_on],
            "assumption": self.assumption,
            "times_out_in": self.times_out_in,
        }


class DeadlockedTask(NamedTuple):
    process: str
    service: str
    task_id: int
    kind: str
    method: str
    pool: str
    caller: str
    call_id: int
    trace_id: str
    span_id: str
    held_locks: tuple[str, ...]
    waits_for: tuple[Wait, ...]
    on_cycle: bool
    queued: bool = False
    """A call its server has queued for a worker: no handler runs it yet."""
    caller_gives_up_in: float | None = None
    """A server task's: seconds from the cut until its caller's deadline passes (None: none). A sync
    handler goes on past it; a grpc.aio handler is cancelled then."""

    @property
    def label(self) -> str:
        return f"{self.process}#{self.task_id}"

    @property
    def times_out_in(self) -> float | None:
        """When the first of its waits ends by itself, in seconds from the cut (None: none does)."""
        known = [w.times_out_in for w in self.waits_for if w.times_out_in is not None]
        return min(known) if known else None

    @property
    def holds(self) -> tuple[str, ...]:
        out = [lock_words(name) for name in self.held_locks]
        if self.kind == "server" and self.pool and not self.queued:
            out.append(f"a worker of pool {self.pool}")
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "service": self.service,
            "task_id": self.task_id,
            "kind": self.kind,
            "method": self.method,
            "pool": self.pool,
            "caller": self.caller,
            "call_id": self.call_id,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "held_locks": list(self.held_locks),
            "holds": list(self.holds),
            "waits_for": [w.to_json() for w in self.waits_for],
            "on_cycle": self.on_cycle,
            "queued": self.queued,
            "times_out_in": self.times_out_in,
            "caller_gives_up_in": self.caller_gives_up_in,
        }


class CycleStep(NamedTuple):
    process: str
    task_id: int
    task: str
    """The task in brief (method, held locks)."""
    edge: str
    """How this task waits for the next step (the last one's for the first)."""


@dataclass(frozen=True)
class Deadlock:
    """One group of deadlocked tasks (connected through what they wait for), with a cycle inside it.

    A deadlock of more than :data:`KEPT_TASKS` tasks lists that many (those on its cycle first) and
    counts the others (``tasks_left_out``); a cycle of more than :data:`KEPT_STEPS` steps keeps its first
    498 (``cycle``) and its last two (``cycle_end``) and counts the steps between (``steps_left_out``).
    Counts, processes, ``rests_on`` and ``breaks_in`` are always those of the whole deadlock.
    """

    epoch: int
    cut_status: str
    tasks: tuple[DeadlockedTask, ...]
    cycle: tuple[CycleStep, ...]
    rests_on: tuple[str, ...] = ()
    breaks_in: float | None = None
    """Seconds from the cut until the first deadline on its cycle passes, which ends one of its waits
    (None: no wait on the cycle has a deadline, so it lasts until someone intervenes)."""
    tasks_left_out: int = 0
    """Deadlocked tasks that ``tasks`` does not list (a deadlock of more than :data:`KEPT_TASKS`)."""
    cycle_end: tuple[CycleStep, ...] = ()
    """The cycle's last steps, when steps between them and ``cycle`` are left out."""
    steps_left_out: int = 0
    """Steps of the cycle between ``cycle`` and ``cycle_end`` that the report leaves out."""
    involved: tuple[str, ...] = ()
    """The processes of every deadlocked task, sorted (empty: those of ``tasks``)."""

    @property
    def permanent(self) -> bool:
        return self.breaks_in is None

    @property
    def task_count(self) -> int:
        """How many tasks are deadlocked, listed or not."""
        return len(self.tasks) + self.tasks_left_out

    @property
    def cycle_length(self) -> int:
        """How many steps the cycle has, kept or not."""
        return len(self.cycle) + self.steps_left_out + len(self.cycle_end)

    def lasts(self) -> str:
        """How long it lasts, in words."""
        if self.breaks_in is None:
            return "permanent: no wait on its cycle has a deadline; stuck until someone intervenes"
        return (
            f"a deadline on its cycle passes about {self.breaks_in:.1f} s after the cut, failing that call "
            f"and ending this cycle"
        )

    @property
    def processes(self) -> tuple[str, ...]:
        return self.involved or tuple(sorted({t.process for t in self.tasks}))

    def summary(self) -> str:
        processes = self.processes
        where = ", ".join(processes[:5]) + (f" and {len(processes) - 5} more" if len(processes) > 5 else "")
        count = self.task_count
        return (
            f"deadlock of {count} task{'s' if count != 1 else ''} in "
            f"{len(processes)} process{'es' if len(processes) != 1 else ''} ({where})"
        )

    def chain(self, limit: int | None = None) -> str:
        """The cycle as one readable line; ``limit`` shows only that many steps of a long one."""
        steps = self.cycle
        if not steps:
            return ""
        length = self.cycle_length
        parts: list[str] = []
        shown = steps if limit is None or length <= limit else steps[: limit - 3]
        for step in shown:
            parts.append(f"{step.process}#{step.task_id} [{step.task}]")
            parts.append(step.edge)
        if len(shown) < length:
            end = self.cycle_end or steps[-2:]
            parts.append(f"... {length - len(shown) - len(end)} more steps ...")
            for step in end:
                parts.append(f"{step.process}#{step.task_id} [{step.task}]")
                parts.append(step.edge)
        first = steps[0]
        parts.append(f"{first.process}#{first.task_id}")
        return " -> ".join(parts)

    def to_json(self) -> dict[str, Any]:
        doc = {
            "epoch": self.epoch,
            "cut_status": self.cut_status,
            "summary": self.summary(),
            "processes": list(self.processes),
            "tasks": [t.to_json() for t in self.tasks],
            "cycle": _steps_json(self.cycle),
            "chain": self.chain(),
            "rests_on": list(self.rests_on),
            "breaks_in": self.breaks_in,
            "permanent": self.permanent,
        }
        if self.tasks_left_out:
            doc["tasks_total"] = self.task_count
        if self.cycle_end:
            doc["cycle_end"] = _steps_json(self.cycle_end)
            doc["cycle_length"] = self.cycle_length
        return doc


def _steps_json(steps: tuple[CycleStep, ...]) -> list[dict[str, Any]]:
    return [{"process": s.process, "task_id": s.task_id, "task": s.task, "edge": s.edge} for s in steps]
