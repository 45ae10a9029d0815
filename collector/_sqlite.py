"""The SQLite store: :class:`~cutwatch.collector.CutStore` on one file, the embedded default.

Every statement is parameterised; no text from a cut is ever part of SQL.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cutwatch.collector._records import (
    CutStatus,
    CutSummary,
    StoredChannelState,
    StoredCut,
    StoredLocalState,
    StoredResult,
    dumps,
)
from cutwatch.collector._rows import (
    channel_row,
    check_cut,
    checked_counters,
    checked_json,
    counters_from,
    duplicates_from,
    from_i64,
    is_utf8,
    left_out_from,
    local_row,
    status_from,
    storable_epoch,
    strings_from,
    unsettled_from,
    utf8_text,
)
from cutwatch.collector._store import (
    MAX_LIST_LIMIT,
    MAX_META_KEY,
    MAX_META_VALUE,
    CutStore,
    Pruned,
    check_prune,
)
from cutwatch.core import DuplicateEpochError, StorageError

__all__ = ["SCHEMA_VERSION", "SqliteCutStore"]

SCHEMA_VERSION = 4
_RESULT_STATUSES: frozenset[str] = frozenset(("PASS", "FAIL", "ERROR", "INCONCLUSIVE"))


_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE cuts (
                epoch INTEGER PRIMARY KEY CHECK (epoch >= 1),
                status TEXT NOT NULL CHECK (status IN ('COMPLETE', 'INCOMPLETE')),
                started REAL NOT NULL,
                finished REAL NOT NULL,
                reasons_json TEXT NOT NULL,
                missing_json TEXT NOT NULL,
                unsettled_json TEXT NOT NULL,
                duplicates_json TEXT NOT NULL
            )""",
            "CREATE INDEX cuts_by_finished ON cuts (finished)",
            "CREATE INDEX cuts_by_status ON cuts (status, epoch)",
            """CREATE TABLE local_states (
                epoch INTEGER NOT NULL REFERENCES cuts (epoch) ON DELETE CASCADE,
                process TEXT NOT NULL,
                service TEXT NOT NULL,
                clock_json TEXT NOT NULL,
                state_json TEXT NOT NULL,
                tasks_json TEXT NOT NULL,
                sent_json TEXT NOT NULL,
                consumed_json TEXT NOT NULL,
                truncated INTEGER NOT NULL CHECK (truncated IN (0, 1)),
                pools_json TEXT NOT NULL,
                PRIMARY KEY (epoch, process)
            )""",
            """CREATE TABLE channel_states (
                epoch INTEGER NOT NULL REFERENCES cuts (epoch) ON DELETE CASCADE,
                seq INTEGER NOT NULL,
                sender TEXT NOT NULL,
                receiver TEXT NOT NULL,
                method TEXT NOT NULL,
                kind TEXT NOT NULL,
                call_id INTEGER NOT NULL,
                attempt INTEGER NOT NULL,
                payload_json TEXT NOT NULL,
                PRIMARY KEY (epoch, seq)
            )""",
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
    (
        2,
        (
            """CREATE TABLE results (
                epoch INTEGER NOT NULL REFERENCES cuts (epoch) ON DELETE CASCADE,
                name TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('PASS', 'FAIL', 'ERROR')),
                message TEXT NOT NULL,
                witness_json TEXT NOT NULL,
                duration REAL NOT NULL,
                PRIMARY KEY (epoch, name)
            )""",
            "CREATE INDEX results_by_status ON results (status, epoch)",
        ),
    ),
    (
        3,
        (
            # Which processes a cut covers and which it left out, and the untracked changes in its
            # states; cuts stored before have none.
            "ALTER TABLE cuts ADD COLUMN covers_json TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE cuts ADD COLUMN left_out_json TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE cuts ADD COLUMN untracked_json TEXT NOT NULL DEFAULT '{}'",
            # A predicate on a cut with untracked changes is INCONCLUSIVE: a CHECK is rebuilt, not altered.
            """CREATE TABLE results_3 (
                epoch INTEGER NOT NULL REFERENCES cuts (epoch) ON DELETE CASCADE,
                name TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('PASS', 'FAIL', 'ERROR', 'INCONCLUSIVE')),
                message TEXT NOT NULL,
                witness_json TEXT NOT NULL,
                duration REAL NOT NULL,
                PRIMARY KEY (epoch, name)
            )""",
            "INSERT INTO results_3 SELECT epoch, name, status, message, witness_json, duration FROM results",
            "DROP TABLE results",
            "ALTER TABLE results_3 RENAME TO results",
            "CREATE INDEX results_by_status ON results (status, epoch)",
        ),
    ),
    (
        4,
        # The number of a stream message in its stream (0: a call's own request or response).
        ("ALTER TABLE channel_states ADD COLUMN stream_index INTEGER NOT NULL DEFAULT 0",),
    ),
)
assert _MIGRATIONS[-1][0] == SCHEMA_VERSION

_EPOCH_TABLES = ("results", "channel_states", "local_states")
"""Every table keyed by a cut's epoch but ``cuts`` itself: a pruned cut leaves nothing in any."""
_TABLES = ("cuts", "meta", *_EPOCH_TABLES)


# The cuts a prune rule matches: beyond the :keep newest, or finished before :before; never the
# newest cut nor the newest COMPLETE one. A NULL rule matches nothing.
_PRUNABLE = (
    "FROM cuts WHERE ("
    "(:keep IS NOT NULL AND epoch < COALESCE("
    "(SELECT epoch FROM cuts ORDER BY epoch DESC LIMIT 1 OFFSET COALESCE(:keep, 1) - 1), 0)) "
    "OR (:before IS NOT NULL AND finished < :before)) "
    "AND epoch < (SELECT MAX(epoch) FROM cuts) "
    "AND epoch IS NOT (SELECT MAX(epoch) FROM cuts WHERE status = 'COMPLETE')"
)

_SELECT_CUT = (
    "SELECT epoch, status, started, finished, reasons_json, missing_json, unsettled_json, duplicates_json, "
    "covers_json, left_out_json, untracked_json "
    "FROM cuts "
)


class SqliteCutStore:
    """:class:`CutStore` on one SQLite file in WAL mode, one connection guarded by a lock.

    Opening migrates the schema to :data:`SCHEMA_VERSION`; a file written by a
    newer version is refused rather than misread. Tools that work on a
    collector's file use :meth:`open_existing` instead, which changes nothing
    about the file but the cuts it is asked to remove.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        migrate: bool = True,
        read_only: bool = False,
    ) -> None:
        """``migrate=False``: open only an existing store at :data:`SCHEMA_VERSION`, creating,
        converting and upgrading nothing (:class:`StorageError` otherwise); ``read_only`` also
        opens the file read-only."""
        if read_only and migrate:
            raise ValueError("a read-only store cannot be migrated: pass migrate=False")
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            if migrate:
                conn = sqlite3.connect(
                    self.path, timeout=timeout, isolation_level=None, check_same_thread=False
                )
            else:
                # mode=rw never creates the file, as a plain path would.
                uri = f"{Path(self.path).resolve().as_uri()}?mode={'ro' if read_only else 'rw'}"
                conn = sqlite3.connect(
                    uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as exc:
            if migrate:
                raise StorageError(f"{self.path}: {exc}") from exc
            missing = "" if os.path.exists(self.path) else "no such file, "
            raise StorageError(f"{self.path}: cannot open it ({missing}{exc})") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            if migrate:
                self._setup()
            else:
                self._check_schema()
        except sqlite3.Error as exc:
            self.close()
            raise StorageError(f"{self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    @classmethod
    def open_existing(
        cls, path: str | os.PathLike[str], *, read_only: bool = False, timeout: float = 10.0
    ) -> SqliteCutStore:
        """A collector's store as it is, for tools beside the collector (``cutwatch cuts prune``).

        Migrating would lock out an older collector still using the file, and creating tables
        would turn any file named by mistake into an empty store; so neither happens here.
        """
        return cls(path, timeout=timeout, migrate=False, read_only=read_only)

    # Setup ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        conn = self._require()
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal" and self.path != ":memory:":
            raise StorageError(f"{self.path}: cannot use WAL journal mode (got {mode})")
        with self._transaction(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0]) if row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path}: schema version {current} is newer than this cutwatch ({SCHEMA_VERSION})"
                )
            for version, statements in _MIGRATIONS:
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    def _check_schema(self) -> None:
        """Refuse, saying what was found and what to do, a file that is not a store of this version."""
        conn = self._require()
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        except sqlite3.OperationalError:
            raise  # locked, an I/O error: the file may well be a store
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"{self.path}: not a cutwatch store: not an SQLite database (check the file name)"
            ) from exc
        tables = {str(name) for (name,) in rows}
        if not tables:
            raise StorageError(
                f"{self.path}: not a cutwatch store: the file holds no tables "
                "(a collector creates its store: cutwatch collector --db FILE)"
            )
        lacking = sorted({"schema_version", "cuts", "meta"} - tables)  # every version's
        if lacking:
            found = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StorageError(
                f"{self.path}: not a cutwatch store: it has tables {found} but not {', '.join(lacking)} "
                "(check the file name)"
            )
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
        if versions != [SCHEMA_VERSION]:
            version = max((v for v in versions if isinstance(v, int)), default=0)
            advice = "use the cutwatch that wrote it"
            if version < SCHEMA_VERSION:
                advice = "start this cutwatch's collector on it once to upgrade it, or " + advice
            raise StorageError(
                f"{self.path}: a cutwatch store of schema version {version}, and this cutwatch reads "
                f"version {SCHEMA_VERSION} only: {advice}"
            )
        if not tables >= set(_TABLES):
            lost = ", ".join(sorted(set(_TABLES) - tables))
            raise StorageError(f"{self.path}: a damaged cutwatch store: its tables {lost} are gone")
        conn.execute("PRAGMA foreign_keys = ON")

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"{self.path}: store is closed")
        return self._conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
        """One explicit transaction; anything raised inside rolls all of it back."""
        conn.execute("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN DEFERRED")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _locked(self, mode: str, failing: str = "") -> Iterator[sqlite3.Connection]:
        """The connection, alone and in a transaction; SQLite's own errors surface as StorageError."""
        with self._lock:
            conn = self._require()
            try:
                with self._transaction(conn, mode):
                    yield conn
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: {failing}{exc}") from exc

    # Writes --------------------------------------------------------------------------------
    def save_cut(self, cut: StoredCut) -> None:
        check_cut(cut)
        with self._locked("IMMEDIATE", f"cut {cut.epoch} not stored: ") as conn:
            if conn.execute("SELECT 1 FROM cuts WHERE epoch = ?", (cut.epoch,)).fetchone():
                raise DuplicateEpochError(f"a cut with epoch {cut.epoch} is already stored")
            conn.execute(
                "INSERT INTO cuts (epoch, status, started, finished, reasons_json, missing_json, "
                "unsettled_json, duplicates_json, covers_json, left_out_json, untracked_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cut.epoch,
                    cut.status,
                    cut.started,
                    cut.finished,
                    dumps(list(cut.reasons)),
                    dumps(list(cut.missing)),
                    dumps([[u.caller, u.call_id, u.method, u.target, u.failed] for u in cut.unsettled]),
                    dumps([[d.caller, d.call_id, list(d.where)] for d in cut.duplicates]),
                    dumps(list(cut.covers)),
                    dumps([[o.process, o.service, o.why] for o in cut.left_out]),
                    dumps(checked_counters(cut.untracked)),
                ),
            )
            for state in cut.states:
                conn.execute(
                    "INSERT INTO local_states (epoch, process, service, clock_json, state_json, "
                    "tasks_json, sent_json, consumed_json, truncated, pools_json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    local_row(cut.epoch, state),
                )
            for seq, channel in enumerate(cut.in_transit):
                conn.execute(
                    "INSERT INTO channel_states (epoch, seq, sender, receiver, method, kind, call_id, "
                    "attempt, payload_json, stream_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    channel_row(cut.epoch, seq, channel),
                )

    def put_meta(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("metadata keys and values are str")
        if len(key) > MAX_META_KEY or len(value) > MAX_META_VALUE:
            raise ValueError(
                f"metadata is small: key <= {MAX_META_KEY}, value <= {MAX_META_VALUE} characters"
            )
        with self._locked("IMMEDIATE") as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def prune(
        self,
        keep_cuts: int | None = None,
        finished_before: float | None = None,
        *,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> Pruned:
        check_prune(keep_cuts, finished_before, limit)
        rule = {"keep": keep_cuts, "before": finished_before}
        with self._locked("DEFERRED" if dry_run else "IMMEDIATE", "cuts not pruned: ") as conn:
            epochs = tuple(
                int(epoch)
                for (epoch,) in conn.execute(
                    f"SELECT epoch {_PRUNABLE} ORDER BY epoch LIMIT :limit",
                    {**rule, "limit": limit},
                )
            )
            (matched,) = conn.execute(f"SELECT COUNT(*) {_PRUNABLE}", rule).fetchone()
            (stored,) = conn.execute("SELECT COUNT(*) FROM cuts").fetchone()
            if not dry_run and epochs:
                # Table by table, not by ON DELETE CASCADE alone: that holds only where a
                # connection turned foreign keys on, and a pruned epoch must leave no row anywhere.
                keys = [(epoch,) for epoch in epochs]
                for table in _EPOCH_TABLES:
                    conn.executemany(f"DELETE FROM {table} WHERE epoch = ?", keys)  # noqa: S608
                conn.executemany("DELETE FROM cuts WHERE epoch = ?", keys)
        return Pruned(epochs=epochs, more=int(matched) - len(epochs), stored=int(stored) - len(epochs))

    def save_results(self, epoch: int, results: Sequence[StoredResult]) -> None:
        """Store results; a message's lone surrogates (from names in a cut's JSON) are kept as escapes.

        SQLite text is UTF-8 only, and a verdict refused for its wording would read as no verdict.
        """
        rows = []
        for result in results:
            if result.epoch != epoch or result.status not in _RESULT_STATUSES or not is_utf8(result.name):
                raise ValueError(f"result {result.name!r} is not a valid result of cut {epoch}")
            if not math.isfinite(result.duration):
                raise ValueError("a result's duration must be finite")
            rows.append(
                (
                    epoch,
                    result.name,
                    result.status,
                    utf8_text(result.message),
                    checked_json(result.witness_json),
                    result.duration,
                )
            )
        if not storable_epoch(epoch):
            raise StorageError(f"no cut with epoch {epoch} to attach results to")
        with self._locked("IMMEDIATE", f"results of cut {epoch} not stored: ") as conn:
            if not conn.execute("SELECT 1 FROM cuts WHERE epoch = ?", (epoch,)).fetchone():
                raise StorageError(f"no cut with epoch {epoch} to attach results to")
            conn.executemany(
                "INSERT INTO results (epoch, name, status, message, witness_json, duration) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (epoch, name) DO UPDATE SET status = excluded.status, "
                "message = excluded.message, witness_json = excluded.witness_json, "
                "duration = excluded.duration",
                rows,
            )

    # Reads ---------------------------------------------------------------------------------
    def results(self, epoch: int) -> list[StoredResult]:
        if not storable_epoch(epoch):
            return []
        with self._locked("DEFERRED") as conn:
            rows = conn.execute(
                "SELECT name, status, message, witness_json, duration FROM results WHERE epoch = ? "
                "ORDER BY name",
                (epoch,),
            ).fetchall()
        out: list[StoredResult] = []
        for name, status, message, witness, duration in rows:
            if status not in _RESULT_STATUSES:
                raise StorageError(f"corrupt store: unknown result status {status!r}")
            out.append(StoredResult(epoch, str(name), status, str(message), str(witness), float(duration)))
        return out

    def latest_results_epoch(self, name: str | None = None) -> int | None:
        with self._locked("DEFERRED") as conn:
            (epoch,) = conn.execute(
                "SELECT MAX(epoch) FROM results WHERE (? IS NULL OR name = ?)", (name, name)
            ).fetchone()
        return None if epoch is None else int(epoch)

    def get_cut(self, epoch: int) -> StoredCut | None:
        if not storable_epoch(epoch):
            return None  # asked for from the network, say: no cut can have it
        with self._locked("DEFERRED") as conn:
            row = conn.execute(_SELECT_CUT + "WHERE epoch = ?", (epoch,)).fetchone()
            return None if row is None else self._read_cut(conn, row)

    def latest(self, status: CutStatus | None = None) -> StoredCut | None:
        with self._locked("DEFERRED") as conn:
            row = conn.execute(
                _SELECT_CUT + "WHERE (? IS NULL OR status = ?) ORDER BY epoch DESC LIMIT 1",
                (status, status),
            ).fetchone()
            return None if row is None else self._read_cut(conn, row)

    def list_cuts(
        self,
        status: CutStatus | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[CutSummary]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        with self._locked("DEFERRED") as conn:
            rows = conn.execute(
                "SELECT c.epoch, c.status, c.started, c.finished, "
                "(SELECT COUNT(*) FROM local_states l WHERE l.epoch = c.epoch), "
                "(SELECT COUNT(*) FROM channel_states s WHERE s.epoch = c.epoch), "
                "c.missing_json, c.reasons_json FROM cuts c "
                "WHERE (? IS NULL OR c.status = ?) AND (? IS NULL OR c.finished >= ?) "
                "AND (? IS NULL OR c.finished < ?) ORDER BY c.epoch DESC LIMIT ?",
                (status, status, since, since, until, until, limit),
            ).fetchall()
        return [
            CutSummary(
                epoch=int(epoch),
                status=status_from(raw_status),
                started=float(started),
                finished=float(finished),
                processes=int(processes),
                in_transit=int(in_transit),
                missing=strings_from(missing),
                reasons=strings_from(reasons),
            )
            for epoch, raw_status, started, finished, processes, in_transit, missing, reasons in rows
        ]

    def next_epoch(self) -> int:
        with self._locked("DEFERRED") as conn:
            (highest,) = conn.execute("SELECT MAX(epoch) FROM cuts").fetchone()
        return 1 if highest is None else int(highest) + 1

    def get_meta(self, key: str) -> str | None:
        with self._locked("DEFERRED") as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> SqliteCutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_cut(self, conn: sqlite3.Connection, row: Sequence[Any]) -> StoredCut:
        epoch, status, started, finished, reasons, missing, unsettled, duplicates, covers, left_out = row[:10]
        untracked = row[10]
        states = tuple(
            StoredLocalState(
                process=str(process),
                service=str(service),
                clock=counters_from(clock),
                state_json=str(state),
                tasks_json=str(tasks),
                sent=counters_from(sent),
                consumed=counters_from(consumed),
                truncated=bool(truncated),
                pools=counters_from(pools),
            )
            for process, service, clock, state, tasks, sent, consumed, truncated, pools in conn.execute(
                "SELECT process, service, clock_json, state_json, tasks_json, sent_json, consumed_json, "
                "truncated, pools_json FROM local_states WHERE epoch = ? ORDER BY process",
                (epoch,),
            )
        )
        in_transit = tuple(
            StoredChannelState(
                sender=str(sender),
                receiver=str(receiver),
                method=str(method),
                kind=str(kind),
                call_id=from_i64(call_id),
                attempt=from_i64(attempt),
                payload_json=str(payload),
                index=from_i64(index),
            )
            for sender, receiver, method, kind, call_id, attempt, payload, index in conn.execute(
                "SELECT sender, receiver, method, kind, call_id, attempt, payload_json, stream_index "
                "FROM channel_states WHERE epoch = ? ORDER BY seq",
                (epoch,),
            )
        )
        return StoredCut(
            epoch=int(epoch),
            status=status_from(status),
            started=float(started),
            finished=float(finished),
            reasons=strings_from(reasons),
            missing=strings_from(missing),
            unsettled=unsettled_from(unsettled),
            duplicates=duplicates_from(duplicates),
            states=states,
            in_transit=in_transit,
            covers=strings_from(covers),
            left_out=left_out_from(left_out),
            untracked=counters_from(untracked),
        )


if TYPE_CHECKING:  # SqliteCutStore implements the whole interface
    _CHECK: CutStore = SqliteCutStore(":memory:")
