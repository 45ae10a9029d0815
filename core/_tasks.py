"""Tasks: what each server handler or application thread is doing.

A task is one inbound call's handler execution, or an application thread or
coroutine that made an outbound call or took a cutwatch lock outside any
handler. Each task records the outbound calls it waits on and the locks it
holds or waits for; these are the wait-for edges that deadlock detection
reads from a cut. The current task travels in a context variable of the
registry (one per agent, so several agents in one OS process never see each
other's tasks), which follows threads (set by the handler wrapper) and
asyncio tasks alike.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class OutboundCall:
    """An outbound call in flight from a task."""

    call_id: int
    method: str
    target: str
    """Process id of the callee when known (a response came back before)."""
    blocking: bool = True
    """False while the caller holds a future it is not waiting on."""
    time_left: float | None = None
    """Seconds until the call's deadline, as of the view (None: it has none); in views only."""
    deadline: float | None = None
    """When the call's deadline passes, on this process's monotonic clock (None: never); not sent."""


@dataclass(slots=True)
class Task:
    task_id: int
    kind: str
    """"server" for a handler execution, "app" for an application thread."""
    method: str = ""
    caller: str = ""
    call_id: int = 0
    trace_id: bytes = b""
    span_id: bytes = b""
    held_locks: list[str] = field(default_factory=list)
    waiting_lock: str | None = None
    lock_deadline: float | None = None
    """When the wait for ``waiting_lock`` gives up (``acquire(timeout=...)``), on the registry's clock."""
    time_remaining: Callable[[], object] | None = None
    """A server task's: how long its call has left, in seconds, as its server context says (gRPC's
    ``context.time_remaining()``), read when a view is made."""
    ends_at_deadline: bool = False
    """The handler is cancelled when its deadline passes (grpc.aio), which ends its waits; a sync
    handler's thread goes on."""
    outbound: dict[int, OutboundCall] = field(default_factory=dict)
    live: bool = True
    """False once ended or released; a context may still hold it (see ``current_or_app_task``)."""
    pool: str = ""
    """The worker pool (server interceptor) a server task runs in."""
    delivery: Any = None
    """The snapshot participant's handle of the request a server task handles (None: untracked)."""
    untracked: bool = False
    """A server task whose request came without a (valid) stamp: each of its ``atomic()`` blocks is a
    state change no cut can place, and is counted."""

    def is_idle(self) -> bool:
        return not self.outbound and not self.held_locks and self.waiting_lock is None


@dataclass(frozen=True, slots=True)
class TaskView:
    """A read-only copy of a task: the typed task record of local snapshots, cuts and ``agent.tasks()``."""

    task_id: int
    kind: str
    method: str
    caller: str
    call_id: int
    trace_id: str
    span_id: str
    held_locks: tuple[str, ...]
    waiting_lock: str | None
    outbound: tuple[OutboundCall, ...]
    pool: str = ""
    queued: bool = False
    """The call has reached the server and waits for a worker of ``pool`` (it holds none)."""
    lock_time_left: float | None = None
    """Seconds until the wait for ``waiting_lock`` gives up, as of the view (None: it never does)."""
    time_left: float | None = None
    """A server task's: seconds until its caller's deadline passes, as of the view (None: none)."""
    ends_at_deadline: bool = False
    """Its handler is cancelled at that deadline (grpc.aio), which ends every wait of the task."""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TaskView:
        """The task in a JSON object of :meth:`to_json`'s form; raises ``ValueError`` on wrong types.

        Missing fields take their defaults, unknown ones are ignored, so
        that agents and collectors of neighbouring versions understand each
        other.
        """
        if not isinstance(doc, Mapping):
            raise ValueError("a task is a JSON object")
        outbound = doc.get("outbound") or []
        if not isinstance(outbound, list):
            raise ValueError("a task's outbound calls are a list")
        waiting = doc.get("waiting_lock")
        queued = doc.get("queued", False)
        if not isinstance(queued, bool):
            raise ValueError("a task's queued is true or false")
        lock_time_left = _seconds(doc.get("lock_time_left"), "lock_time_left")
        ends_at_deadline = doc.get("ends_at_deadline", False)
        if not isinstance(ends_at_deadline, bool):
            raise ValueError("a task's ends_at_deadline is true or false")
        return cls(
            task_id=_int(doc, "task_id"),
            kind=_text(doc, "kind"),
            method=_text(doc, "method"),
            caller=_text(doc, "caller"),
            call_id=_int(doc, "call_id"),
            trace_id=_text(doc, "trace_id"),
            span_id=_text(doc, "span_id"),
            held_locks=_texts(doc.get("held_locks") or [], "held_locks"),
            waiting_lock=None if waiting is None else _text(doc, "waiting_lock"),
            outbound=tuple(_outbound(call) for call in outbound),
            pool=_text(doc, "pool"),
            queued=queued,
            lock_time_left=lock_time_left,
            time_left=_seconds(doc.get("time_left"), "time_left"),
            ends_at_deadline=ends_at_deadline,
        )

    def to_json(self) -> dict[str, Any]:
        """The task as a JSON object, as it travels in a local snapshot."""
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "method": self.method,
            "caller": self.caller,
            "call_id": self.call_id,
            "pool": self.pool,
            "queued": self.queued,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "held_locks": list(self.held_locks),
            "waiting_lock": self.waiting_lock,
            "lock_time_left": self.lock_time_left,
            "time_left": self.time_left,
            "ends_at_deadline": self.ends_at_deadline,
            "outbound": [
                {
                    "call_id": c.call_id,
                    "method": c.method,
                    "target": c.target,
                    "blocking": c.blocking,
                    "time_left": c.time_left,
                }
                for c in self.outbound
            ],
        }


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"a task's {key} is an integer, not {type(value).__name__}")
    return value


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"a task's {key} is a string, not {type(value).__name__}")
    return value


def _texts(values: object, key: str) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError(f"a task's {key} is a list of strings")
    return tuple(values)


def _seconds(value: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"a task's {key} is a number of seconds or null")
    return max(float(value), 0.0)


def _outbound(doc: object) -> OutboundCall:
    if not isinstance(doc, Mapping):
        raise ValueError("a task's outbound call is a JSON object")
    blocking = doc.get("blocking", True)
    if not isinstance(blocking, bool):
        raise ValueError("an outbound call's blocking is true or false")
    time_left = _seconds(doc.get("time_left"), "outbound call's time_left")
    return OutboundCall(_int(doc, "call_id"), _text(doc, "method"), _text(doc, "target"), blocking, time_left)


class TaskRegistry:
    """The live tasks of one agent; thread-safe. Deadlines are kept on ``monotonic``'s clock."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.now = monotonic
        self._lock = threading.Lock()
        self._tasks: dict[int, Task] = {}
        self._ids = itertools.count(1)
        self._current: contextvars.ContextVar[Task | None] = contextvars.ContextVar(
            "cutwatch_current_task", default=None
        )

    def current(self) -> Task | None:
        return self._current.get()

    def bind(self, task: Task | None) -> contextvars.Token[Task | None]:
        return self._current.set(task)

    def unbind(self, token: contextvars.Token[Task | None], task: Task | None = None) -> None:
        """Undo ``bind``; a token from another context (a generator closed
        by the garbage collector) clears the slot only if it holds ``task``:
        that context may be running a handler of its own."""
        try:
            self._current.reset(token)
        except ValueError:
            if self._current.get() is task:
                self._current.set(None)

    def _revive(self, task: Task) -> None:
        """Register again an application task released by another thread; holds ``_lock``."""
        if not task.live and task.kind == "app":
            task.live = True
            self._tasks[task.task_id] = task

    def add_outbound(self, task: Task, call: OutboundCall, trace_id: bytes, span_id: bytes) -> None:
        with self._lock:
            self._revive(task)
            task.outbound[call.call_id] = call
            if trace_id:
                task.trace_id, task.span_id = trace_id, span_id

    def remove_outbound(self, task: Task, call_id: int) -> None:
        with self._lock:
            task.outbound.pop(call_id, None)
        self.release_if_idle(task)

    def start(
        self,
        kind: str,
        *,
        method: str = "",
        caller: str = "",
        call_id: int = 0,
        pool: str = "",
        task_id: int | None = None,
    ) -> Task:
        """A new live task; ``task_id`` one taken with :meth:`new_id` before (a call's id while it was
        queued), or a new one."""
        task = Task(
            task_id=next(self._ids) if task_id is None else task_id,
            kind=kind,
            method=method,
            caller=caller,
            call_id=call_id,
            pool=pool,
        )
        with self._lock:
            self._tasks[task.task_id] = task
        return task

    def new_id(self) -> int:
        """A task id no other task has (taking one needs no lock)."""
        return next(self._ids)

    def end(self, task: Task) -> None:
        with self._lock:
            task.live = False
            self._tasks.pop(task.task_id, None)

    @contextmanager
    def mutate(self, task: Task | None = None) -> Iterator[None]:
        """Hold the registry lock while changing a task's fields.

        An application task released meanwhile by another thread (a call
        finished by gRPC's done-callback) is registered again, so what is
        about to be recorded on it stays visible.
        """
        with self._lock:
            if task is not None:
                self._revive(task)
            yield

    def current_or_app_task(self) -> Task:
        """The running task, or a new application task bound to this context.

        A task that has ended is not reused: a context may still hold an
        application task that another thread released (its last call was
        finished by a done-callback), or one of an agent closed since.
        """
        task = self._current.get()
        if task is None or not task.live:
            task = self.start("app")
            self._current.set(task)
        return task

    def release_if_idle(self, task: Task) -> None:
        """Forget an application task once it waits on and holds nothing."""
        if task.kind != "app":
            return
        with self._lock:
            if not task.is_idle():
                return
            task.live = False
            self._tasks.pop(task.task_id, None)
        if self._current.get() is task:
            self._current.set(None)

    def views(self) -> list[TaskView]:
        now = self.now()
        with self._lock:
            return [_view(t, now) for t in self._tasks.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)


MAX_DEADLINE = 1e9
"""Seconds: a deadline further away is none (grpcio reports no deadline as about 9e18 s)."""


def _remaining(read: Callable[[], object]) -> float | None:
    """Seconds left by a server context's clock; None when it has no deadline or says nothing usable."""
    try:
        left = read()
    except Exception:
        return None
    if isinstance(left, bool) or not isinstance(left, int | float) or not 0 <= left <= MAX_DEADLINE:
        return None
    return round(float(left), 3)


def _left(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else round(max(deadline - now, 0.0), 3)


def _view(t: Task, now: float) -> TaskView:
    return TaskView(
        task_id=t.task_id,
        kind=t.kind,
        method=t.method,
        caller=t.caller,
        call_id=t.call_id,
        trace_id=t.trace_id.hex(),
        span_id=t.span_id.hex(),
        held_locks=tuple(t.held_locks),
        waiting_lock=t.waiting_lock,
        outbound=tuple(
            OutboundCall(c.call_id, c.method, c.target, c.blocking, _left(c.deadline, now))
            for c in t.outbound.values()
        ),
        pool=t.pool,
        lock_time_left=_left(t.lock_deadline, now) if t.waiting_lock else None,
        time_left=_remaining(t.time_remaining) if t.time_remaining is not None else None,
        ends_at_deadline=t.ends_at_deadline,
    )
