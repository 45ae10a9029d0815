"""The collector's housekeeping thread: store health for the health service, and retention.

Both stay off the snapshot path: the coordinator's threads never wait for
them. Each round reads the coordinator's write counters (in memory, no I/O)
to tell whether the store takes writes; a retention pass removes at most
``batch`` cuts in one transaction, once a minute, and again the next round
while more are due, so a backlog (a first start with a long history) drains
in steps that snapshots interleave with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cutwatch.collector._health import CollectorHealth
from cutwatch.collector._retention import Retention, prune_store
from cutwatch.collector._store import CutStore
from cutwatch.core import StorageError

__all__ = ["Upkeep"]

_LOG = logging.getLogger("cutwatch.collector")

WriteCounts = Callable[[], tuple[int, int]]
"""Cuts the collector has tried to store so far, and how many of those writes failed."""


class Upkeep:
    """Rounds of housekeeping, on a thread of its own (``start``/``stop``) or one by one (``run_once``)."""

    def __init__(
        self,
        store: CutStore,
        health: CollectorHealth,
        writes: WriteCounts,
        *,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        round_every: float = 1.0,
        prune_every: float = 60.0,
        batch: int = 100,
    ) -> None:
        self.store = store
        self.health = health
        self.retention = retention
        self._writes = writes
        self._clock = clock
        self._round_every = round_every
        self._prune_every = prune_every
        self._batch = batch
        self._seen = (0, 0)
        self._next_prune = 0.0
        self._backlog = False
        self.removed = 0
        """Cuts removed by retention since the collector started."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cutwatch-collector-upkeep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def _run(self) -> None:
        while not self._stopping.wait(self._round_every):
            try:
                self.run_once()
            except Exception:
                _LOG.exception("the collector's upkeep failed; it keeps going")

    def run_once(self) -> None:
        """One round: the store's health from the latest writes, then a retention pass if one is due."""
        tried, failed = self._writes()
        seen_tried, seen_failed = self._seen
        self._seen = (tried, failed)
        if failed > seen_failed:
            self.health.store(False)
        elif tried > seen_tried:
            self.health.store(True)
        if self.retention is None or not (self._backlog or time.monotonic() >= self._next_prune):
            return
        self._next_prune = time.monotonic() + self._prune_every
        try:
            report = prune_store(
                self.store, self.retention, now=self._clock(), batch=self._batch, max_batches=1
            )
        except StorageError as exc:
            self._backlog = False
            self.health.store(False)
            _LOG.error("retention: cuts not pruned: %s", exc)
            return
        self._backlog = report.more > 0
        if report.removed:
            self.health.store(True)
            self.removed += report.removed
            _LOG.info("retention: %d cuts removed, %d stored", report.removed, report.stored)
