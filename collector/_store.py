"""The store interface: what the collector needs from wherever cuts are kept.

Kept to what the collector uses, so that SQLite (the embedded default) and
PostgreSQL can both implement it. A cut is written once, whole or not at
all, and read back exactly; an epoch already stored is refused rather than
overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cutwatch.collector._records import CutStatus, CutSummary, StoredCut, StoredResult

__all__ = ["MAX_LIST_LIMIT", "MAX_META_KEY", "MAX_META_VALUE", "CutStore"]

MAX_LIST_LIMIT = 1000
MAX_META_KEY = 256
MAX_META_VALUE = 64 * 1024


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

    def close(self) -> None: ...
