"""Checking every finished cut: built-in deadlock detection and the operator's predicates.

Runs on a thread of its own behind a bounded queue, so that neither a slow
predicate nor a large cut holds up snapshots; a cut that arrives while the
queue is full pushes out the oldest one waiting, which is counted. Deadlock
detection runs on every cut, COMPLETE or not (a deadlock that an INCOMPLETE
cut proves is still reported, saying what it rests on); the operator's
predicates run on COMPLETE cuts only, in an isolated worker process (see
:mod:`cutwatch.predicates`). Every result is stored with the cut; failures
are handed to subscribers (the ``Watch`` RPC) and exported through the
OpenTelemetry API, linked to the traces of the tasks involved.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry import trace

from cutwatch.collector._checklog import DEADLOCK_CHECK, log_failures
from cutwatch.collector._recordings import RecordingLog
from cutwatch.collector._records import StoredCut, StoredResult, cut_from_stored
from cutwatch.collector._store import CutStore
from cutwatch.core import Cut, StorageError
from cutwatch.predicates import find_deadlocks, format_deadlocks
from cutwatch.predicates._deadlock_records import KEPT_TASKS
from cutwatch.predicates._window import Window

__all__ = ["DEADLOCK_CHECK", "CheckEvent", "CutChecker", "Subscription"]

_LOG = logging.getLogger("cutwatch.collector.checks")
_TRACER_NAME = "cutwatch.collector"
MAX_REPORTED_TASKS = KEPT_TASKS
"""Tasks listed per stored deadlock report; a bigger deadlock keeps its chain and a count (reports
already come capped so; see :class:`~cutwatch.predicates.Deadlock`)."""


T = TypeVar("T")


def put_dropping_oldest(bounded: queue.Queue[T], item: T) -> list[T]:
    """Put ``item`` without blocking, pushing out the oldest items while full; returns them."""
    pushed_out: list[T] = []
    while True:
        try:
            bounded.put_nowait(item)
            return pushed_out
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                pushed_out.append(bounded.get_nowait())


@dataclass(frozen=True)
class CheckEvent:
    """A failed check, as subscribers see it."""

    epoch: int
    name: str
    status: str
    message: str
    witness: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "witness": self.witness,
        }


@dataclass(eq=False)
class Subscription:
    """A subscriber's bounded queue of :class:`CheckEvent`; a slow reader loses the oldest (counted)."""

    events: queue.Queue[CheckEvent | None] = field(default_factory=lambda: queue.Queue(maxsize=1000))
    dropped: int = 0

    def put(self, event: CheckEvent) -> None:
        self.dropped += len(put_dropping_oldest(self.events, event))

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self.events.put_nowait(None)


class CutChecker:
    """Checks finished cuts on a background thread; ``engine`` runs the operator's predicates."""

    def __init__(
        self,
        store: CutStore,
        engine: Any = None,
        *,
        max_queue: int = 16,
        recordings: RecordingLog | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.recordings = recordings
        """The changes agents recorded for lattice invariants (None: no lattice invariant loaded)."""
        self._previous: Cut | None = None
        """The last complete cut checked: the bottom of the next lattice window."""
        self._queue: queue.Queue[StoredCut | None] = queue.Queue(maxsize=max_queue)
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._done: dict[int, threading.Event] = {}
        self.skipped = 0
        self.checked = 0
        self._outcomes: Counter[tuple[str, str]] = Counter()
        self._thread = threading.Thread(target=self._run, name="cutwatch-checks", daemon=True)
        self._thread.start()

    # Input --------------------------------------------------------------------------------------
    def submit(self, cut: StoredCut) -> None:
        """Queue a finished cut for checking; never blocks."""
        with self._lock:
            self._done.setdefault(cut.epoch, threading.Event())
            while len(self._done) > 256:
                oldest = min(self._done)
                self._done.pop(oldest).set()
        for skipped in put_dropping_oldest(self._queue, cut):
            if skipped is not None:
                self.skipped += 1
                _LOG.warning("checks fell behind: cut %d was not checked", skipped.epoch)
                self._finished(skipped.epoch)

    def wait_checked(self, epoch: int, timeout: float) -> bool:
        """Wait until the checks of ``epoch`` are stored (or skipped); False on timeout."""
        with self._lock:
            event = self._done.get(epoch)
        return True if event is None else event.wait(timeout)

    def subscribe(self) -> Subscription:
        subscription = Subscription()
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)
        subscription.close()

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        with self._lock:
            subscribers, self._subscribers = list(self._subscribers), set()
        for subscription in subscribers:
            subscription.close()
        if self.engine is not None:
            self.engine.close()

    # The work -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            stored = self._queue.get()
            if stored is None:
                return
            try:
                results = self.check(cut_from_stored(stored))
                self._account(results, stored.status)
                if results:
                    self.store.save_results(stored.epoch, results)
                self.checked += 1
                self._publish(results)
            except (StorageError, ValueError) as exc:
                _LOG.error("results of cut %d not stored: %s", stored.epoch, exc)
            except Exception:
                _LOG.exception("checking cut %d failed; the collector goes on", stored.epoch)
            finally:
                self._finished(stored.epoch)

    def outcomes(self) -> dict[tuple[str, str], int]:
        """How many results each check has had, by (check name, status)."""
        with self._lock:
            return dict(self._outcomes)

    def _account(self, results: Sequence[StoredResult], cut_status: str) -> None:
        """Count ``results`` and log the failed and erroring ones (before storing: a store that
        fails must not hide them)."""
        with self._lock:
            self._outcomes.update((r.name, r.status) for r in results)
        log_failures(results, cut_status)

    def check(self, cut: Cut) -> list[StoredResult]:
        """Every check's result on ``cut`` (deadlocks always; predicates on COMPLETE cuts)."""
        results: list[StoredResult] = []
        deadlock = self._deadlock_result(cut)
        if deadlock is not None:
            results.append(deadlock)
        if cut.complete and self.engine is not None:
            window = self._window(cut)
            evaluated = self.engine.evaluate(cut) if window is None else self.engine.evaluate(cut, window)
            if window is not None and self.recordings is not None:
                self.recordings.checked(cut)
                self._previous = cut
            for result in evaluated:
                results.append(
                    StoredResult(
                        epoch=cut.epoch,
                        name=result.name,
                        status=result.status,
                        message=result.message or result.error or "",
                        witness_json=json.dumps(result.witness, sort_keys=True, default=str),
                        duration=float(result.duration),
                    )
                )
        return results

    def _window(self, cut: Cut) -> Window | None:
        """The recorded changes between the previous complete cut and ``cut``, for lattice invariants."""
        reads: frozenset[str] = getattr(self.engine, "lattice_reads", frozenset())
        if self.recordings is None or not reads:
            return None
        return self.recordings.window(cut, self._previous, reads)

    def _deadlock_result(self, cut: Cut) -> StoredResult | None:
        started = time.perf_counter()
        try:
            deadlocks = find_deadlocks(cut)
        except Exception as exc:
            _LOG.exception("deadlock detection failed on cut %d", cut.epoch)
            return StoredResult(cut.epoch, DEADLOCK_CHECK, "ERROR", f"{type(exc).__name__}: {exc}"[:1000])
        duration = time.perf_counter() - started
        if not deadlocks:
            # Only a COMPLETE cut shows there is none; an INCOMPLETE one may miss some.
            return (
                StoredResult(cut.epoch, DEADLOCK_CHECK, "PASS", duration=duration) if cut.complete else None
            )
        witness = [_capped(d.to_json()) for d in deadlocks]
        message = format_deadlocks(deadlocks)
        if len(message) > 64 * 1024:
            message = message[: 64 * 1024] + f"\n... ({len(message)} characters in all)"
        return StoredResult(
            cut.epoch, DEADLOCK_CHECK, "FAIL", message, json.dumps(witness, sort_keys=True), duration
        )

    def _finished(self, epoch: int) -> None:
        with self._lock:
            event = self._done.get(epoch)
        if event is not None:
            event.set()

    def _publish(self, results: Sequence[StoredResult]) -> None:
        failures = [r for r in results if r.status in ("FAIL", "ERROR")]
        if not failures:
            return
        events = [CheckEvent(r.epoch, r.name, r.status, r.message, r.witness) for r in failures]
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            for event in events:
                subscription.put(event)
        for event in events:
            _export(event)


def _capped(report: dict[str, Any]) -> dict[str, Any]:
    """A deadlock report with at most :data:`MAX_REPORTED_TASKS` tasks (the cycle's own first)."""
    tasks = report.get("tasks")
    if not isinstance(tasks, list) or len(tasks) <= MAX_REPORTED_TASKS:
        return report
    on_cycle = [t for t in tasks if isinstance(t, dict) and t.get("on_cycle")]
    others = [t for t in tasks if not (isinstance(t, dict) and t.get("on_cycle"))]
    return {**report, "tasks": (on_cycle + others)[:MAX_REPORTED_TASKS], "tasks_total": len(tasks)}


def _export(event: CheckEvent) -> None:
    """One span per failed check, linked to the traces of the tasks it names (no-op without an SDK)."""
    try:
        tracer = trace.get_tracer(_TRACER_NAME)
        links = [trace.Link(context) for context in _span_contexts(event.witness)]
        with tracer.start_as_current_span(f"cutwatch {event.name}", links=links[:32]) as span:
            span.set_attribute("cutwatch.epoch", event.epoch)
            span.set_attribute("cutwatch.check", event.name)
            span.set_attribute("cutwatch.status", event.status)
            span.add_event(
                "cutwatch.violation" if event.status == "FAIL" else "cutwatch.error",
                {"message": event.message[:4000], "witness": json.dumps(event.witness, default=str)[:8000]},
            )
    except Exception:
        _LOG.exception("exporting a check result to OpenTelemetry failed")


def _span_contexts(witness: Any) -> Iterable[trace.SpanContext]:
    """Span contexts of every ``trace_id``/``span_id`` pair found in a witness."""
    seen: set[tuple[int, int]] = set()
    stack = [witness]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            trace_id, span_id = item.get("trace_id"), item.get("span_id")
            if isinstance(trace_id, str) and isinstance(span_id, str) and trace_id and span_id:
                try:
                    ids = (int(trace_id, 16), int(span_id, 16))
                except ValueError:
                    ids = (0, 0)
                if ids[0] and ids[1] and ids not in seen:
                    seen.add(ids)
                    yield trace.SpanContext(
                        ids[0], ids[1], is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
                    )
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
