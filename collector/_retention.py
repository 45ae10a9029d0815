"""Retention: which stored cuts to keep, and pruning the rest in bounded batches.

A rule keeps the newest ``keep_cuts`` cuts, the cuts that finished within
``keep_for`` seconds, or (both given) only cuts inside both bounds. The store
never removes its newest cut nor its newest COMPLETE one (see
:meth:`CutStore.prune`). Each batch is one short transaction, so a running
collector's writes interleave with a long prune instead of waiting for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cutwatch.collector._store import MAX_PRUNE_LIMIT, CutStore, check_keep_cuts

__all__ = ["PruneReport", "Retention", "prune_store"]


@dataclass(frozen=True)
class Retention:
    """Keep the newest ``keep_cuts`` cuts and/or the cuts finished in the last ``keep_for`` seconds."""

    keep_cuts: int | None = None
    keep_for: float | None = None

    def __post_init__(self) -> None:
        if self.keep_cuts is None and self.keep_for is None:
            raise ValueError("a retention rule needs keep_cuts, keep_for or both")
        check_keep_cuts(self.keep_cuts)
        if self.keep_for is not None and not (math.isfinite(self.keep_for) and self.keep_for > 0):
            raise ValueError("keep_for must be a positive number of seconds")

    def finished_before(self, now: float) -> float | None:
        """Cuts that finished before this time (Unix seconds) are past the age bound."""
        return None if self.keep_for is None else now - self.keep_for

    def describe(self) -> str:
        """What is kept, for people: ``the newest 1000 cuts, none older than 7d``."""
        if self.keep_for is None:
            return "the newest cut" if self.keep_cuts == 1 else f"the newest {self.keep_cuts} cuts"
        if self.keep_cuts is None:
            return f"the cuts of the last {_seconds(self.keep_for)}"
        newest = Retention(keep_cuts=self.keep_cuts).describe()
        return f"{newest}, none older than {_seconds(self.keep_for)}"


@dataclass(frozen=True)
class PruneReport:
    """What a prune removed (or, dry, would remove): counts and the epochs as ranges."""

    dry_run: bool
    removed: int
    """Cuts removed (dry: that would be)."""
    epochs: tuple[tuple[int, int], ...]
    """The removed epochs as inclusive ``(first, last)`` ranges, oldest first."""
    stored: int
    """Cuts stored afterwards (dry: that would be)."""
    more: int = 0
    """Cuts matching the rule beyond what this call covered (a bounded pass, or a dry run past its reach)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": self.removed,
            "epochs": [list(span) for span in self.epochs],
            "stored": self.stored,
            "more": self.more,
        }


def prune_store(
    store: CutStore,
    retention: Retention,
    *,
    now: float,
    dry_run: bool = False,
    batch: int = 1000,
    max_batches: int | None = None,
) -> PruneReport:
    """Prune what ``retention`` does not keep at time ``now``, ``batch`` cuts per transaction.

    ``max_batches`` bounds the work of one call (the collector's periodic pass); what
    is left then is counted in ``more``. A dry run looks at up to
    :data:`MAX_PRUNE_LIMIT` cuts in one read and removes nothing.
    """
    before = retention.finished_before(now)
    if dry_run:
        pruned = store.prune(retention.keep_cuts, before, limit=MAX_PRUNE_LIMIT, dry_run=True)
        return PruneReport(True, len(pruned.epochs), _ranges(pruned.epochs), pruned.stored, pruned.more)
    spans: list[tuple[int, int]] = []
    removed = stored = more = passes = 0
    while True:
        pruned = store.prune(retention.keep_cuts, before, limit=batch)
        removed += len(pruned.epochs)
        stored, more, passes = pruned.stored, pruned.more, passes + 1
        spans.extend(_ranges(pruned.epochs))
        # Each pass removes what it found, so ``more`` shrinks; new cuts arrive far slower.
        if not pruned.epochs or more == 0 or (max_batches is not None and passes >= max_batches):
            break
    # A later batch can reach below an earlier one: the newest COMPLETE cut loses its protection
    # when a newer one is stored.
    return PruneReport(False, removed, _coalesce(sorted(spans)), stored, more)


def _ranges(epochs: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return _coalesce([(epoch, epoch) for epoch in epochs])


def _coalesce(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint ranges, adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for first, last in spans:
        if out and out[-1][1] + 1 == first:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return tuple(out)


def _seconds(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
