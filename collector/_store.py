"""The store interface: what the collector needs from wherever cuts are kept.

Kept to what the collector uses, so that SQLite (the embedded default) and
PostgreSQL can both implement it. A cut is written once, whole or not at
all, and read back exactly; an epoch already stored is refused rather than
overwritten.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cutwatch.collector._records import CutStatus, CutSummary, StoredCut, StoredResult

__all__ = [
    "MAX_LIST_LIMIT",
    "MAX_META_KEY",
    "MAX_META_VALUE",
    "MAX_PRUNE_LIMIT",
    "CutStore",
    "Pruned",
    "check_keep_cuts",
    "check_prune",
]

MAX_LIST_LIMIT = 1000
MAX_META_KEY = 256
MAX_META_VALUE = 64 * 1024
MAX_PRUNE_LIMIT = 100_000
"""The most cuts one :meth:`CutStore.prune` call removes (or lists, dry): one transaction's worth."""


@dataclass(frozen=True)
class Pruned:
    """What one :meth:`CutStore.prune` call removed (or, dry, would remove)."""

    epochs: tuple[int, ...]
    """The cuts removed, oldest first; at most the call's ``limit``."""
    more: int
    """Cuts the rule also matches, left for a later call because of the limit."""
    stored: int
    """Cuts stored after the call (dry: that would be)."""


def check_keep_cuts(keep_cuts: int | None) -> None:
    """Refuse a ``keep_cuts`` that is not a whole number of at least 1 (None: no such bound).

    The one check for a retention rule and for a store's prune call alike.
    """
    if keep_cuts is not None and (
        isinstance(keep_cuts, bool) or not isinstance(keep_cuts, int) or keep_cuts < 1
    ):
        raise ValueError("keep_cuts must be a whole number of at least 1")


def check_prune(keep_cuts: int | None, finished_before: float | None, limit: int) -> None:
    """Refuse a prune rule that is empty or malformed, the same way in every store."""
    if keep_cuts is None and finished_before is None:
        raise ValueError("prune needs keep_cuts, finished_before or both")
    check_keep_cuts(keep_cuts)
    if finished_before is not None and not math.isfinite(finished_before):
        raise ValueError("finished_before must be a finite time")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PRUNE_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_PRUNE_LIMIT}")


class CutStore(Protocol):
    """What the collector needs from a store. Implementations are safe to call from many threads."""

    def save_cut(self, cut: StoredCut) -> None:
        """Store the whole cut or nothing; :class:`DuplicateEpochError` if its epoch exists."""

    def get_cut(self, epoch: int) -> StoredCut | None: ...

    def latest(self, status: CutStatus | None = None) -> StoredCut | None:
        """The cut with the highest epoch (of that status)."""

    def list_cuts(
        self,
        status: CutStatus | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[CutSummary]:
        """Summaries, newest first, of cuts finished in ``[since, until)``."""

    def next_epoch(self) -> int:
        """One more than the highest stored epoch (1 when empty)."""

    def put_meta(self, key: str, value: str) -> None: ...

    def get_meta(self, key: str) -> str | None: ...

    def save_results(self, epoch: int, results: Sequence[StoredResult]) -> None:
        """Store the predicate results of a stored cut (replacing earlier results of the same names)."""

    def results(self, epoch: int) -> list[StoredResult]:
        """The results of one cut, by name."""

    def latest_results_epoch(self, name: str | None = None) -> int | None:
        """The newest epoch that has results (of the check called ``name``)."""

    def prune(
        self,
        keep_cuts: int | None = None,
        finished_before: float | None = None,
        *,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> Pruned:
        """Remove, oldest first and in one transaction, up to ``limit`` cuts that are not among the
        ``keep_cuts`` newest (by epoch) or that finished before ``finished_before`` (Unix time).

        A removed cut takes everything stored under its epoch with it (states, channels,
        results). The newest cut and the newest COMPLETE cut are never removed: the first
        keeps :meth:`next_epoch` from handing out an epoch again, the second is what
        :meth:`latest` readers rely on. ``dry_run`` removes nothing and reports the same.
        :func:`check_prune` says which arguments are refused (``ValueError``).
        """

    def close(self) -> None: ...
