"""Where finished cuts live: a small store interface and its SQLite implementation.

A cut is written once, whole or not at all, and read back exactly: the cut
row, its local states and its channel states go in one transaction, and an
epoch already stored is refused rather than overwritten. The interface
(:class:`CutStore`) is kept to what the collector needs, so that a
PostgreSQL store can implement it too; everything it stores is portable:
JSON as TEXT (``json.dumps(sort_keys=True)`` in, ``json.loads`` out, nothing
else ever parses it), integers within 64 bits, timestamps as floats.

Every statement is parameterised; no text from a cut is ever part of SQL.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cutwatch.agent._snapshot import REASON_TRUNCATED, LocalSnapshot
from cutwatch.agent.exceptions import CutwatchError
from cutwatch.collector._assembly import AssembledCut, DuplicateDelivery, UnsettledCall

__all__ = [
    "SCHEMA_VERSION",
    "CutStatus",
    "CutStore",
    "CutSummary",
    "DuplicateEpochError",
    "SqliteCutStore",
    "StorageError",
    "StoredChannelState",
    "StoredCut",
    "StoredLocalState",
    "StoredResult",
    "stored_from_assembled",
]

CutStatus = Literal["COMPLETE", "INCOMPLETE"]
_STATUSES: frozenset[str] = frozenset(("COMPLETE", "INCOMPLETE"))
SCHEMA_VERSION = 2
MAX_LIST_LIMIT = 1000
MAX_META_KEY = 256
MAX_META_VALUE = 64 * 1024
_I64_MAX = 2**63 - 1
_U64 = 2**64


class StorageError(CutwatchError):
    """The store cannot do what was asked: closed, corrupt, newer schema, or a failed write."""


class DuplicateEpochError(StorageError):
    """A cut with this epoch is already stored; epochs are unique and cuts are never overwritten."""


# What is stored and read back ----------------------------------------------------------


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

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)


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

    def __post_init__(self) -> None:
        # The order a store reads back in, so that what is saved compares equal to what is read.
        object.__setattr__(self, "states", tuple(sorted(self.states, key=lambda state: state.process)))
        for name in ("reasons", "missing", "unsettled", "in_transit", "duplicates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


ResultStatus = Literal["PASS", "FAIL", "ERROR"]
_RESULT_STATUSES: frozenset[str] = frozenset(("PASS", "FAIL", "ERROR"))


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


def _dumps(value: object) -> str:
    """Canonical, standard JSON (no NaN), so that every store and reader agrees on the text."""
    return json.dumps(value, sort_keys=True, allow_nan=False)


def stored_from_assembled(
    cut: AssembledCut, started: float, finished: float, *, services: Mapping[str, str] | None = None
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
                state_json=_dumps(cut.states[process]),
                tasks_json=_dumps(snap.tasks if snap is not None else []),
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
            payload_json=_dumps(json.loads(record.payload_json)),
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


# The interface ---------------------------------------------------------------------------


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


# SQLite ----------------------------------------------------------------------------------

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
)
assert _MIGRATIONS[-1][0] == SCHEMA_VERSION

_SELECT_CUT = (
    "SELECT epoch, status, started, finished, reasons_json, missing_json, unsettled_json, duplicates_json "
    "FROM cuts "
)


class SqliteCutStore:
    """:class:`CutStore` on one SQLite file in WAL mode, one connection guarded by a lock.

    Opening migrates the schema to :data:`SCHEMA_VERSION`; a file written by a
    newer version is refused rather than misread.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            self._setup()
        except sqlite3.Error as exc:
            self.close()
            raise StorageError(f"{self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

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
        _check_cut(cut)
        with self._locked("IMMEDIATE", f"cut {cut.epoch} not stored: ") as conn:
            if conn.execute("SELECT 1 FROM cuts WHERE epoch = ?", (cut.epoch,)).fetchone():
                raise DuplicateEpochError(f"a cut with epoch {cut.epoch} is already stored")
            conn.execute(
                "INSERT INTO cuts (epoch, status, started, finished, reasons_json, missing_json, "
                "unsettled_json, duplicates_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cut.epoch,
                    cut.status,
                    cut.started,
                    cut.finished,
                    _dumps(list(cut.reasons)),
                    _dumps(list(cut.missing)),
                    _dumps([[u.caller, u.call_id, u.method, u.target, u.failed] for u in cut.unsettled]),
                    _dumps([[d.caller, d.call_id, list(d.where)] for d in cut.duplicates]),
                ),
            )
            for state in cut.states:
                conn.execute(
                    "INSERT INTO local_states (epoch, process, service, clock_json, state_json, "
                    "tasks_json, sent_json, consumed_json, truncated, pools_json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _local_row(cut.epoch, state),
                )
            for seq, channel in enumerate(cut.in_transit):
                conn.execute(
                    "INSERT INTO channel_states (epoch, seq, sender, receiver, method, kind, call_id, "
                    "attempt, payload_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _channel_row(cut.epoch, seq, channel),
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

    def save_results(self, epoch: int, results: Sequence[StoredResult]) -> None:
        """Store results; a message's lone surrogates (from names in a cut's JSON) are kept as escapes.

        SQLite text is UTF-8 only, and a verdict refused for its wording would read as no verdict.
        """
        rows = []
        for result in results:
            if result.epoch != epoch or result.status not in _RESULT_STATUSES or not _is_utf8(result.name):
                raise ValueError(f"result {result.name!r} is not a valid result of cut {epoch}")
            if not math.isfinite(result.duration):
                raise ValueError("a result's duration must be finite")
            rows.append(
                (
                    epoch,
                    result.name,
                    result.status,
                    _utf8_text(result.message),
                    _checked_json(result.witness_json),
                    result.duration,
                )
            )
        if not _storable_epoch(epoch):
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
        if not _storable_epoch(epoch):
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
        if not _storable_epoch(epoch):
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
                status=_status(raw_status),
                started=float(started),
                finished=float(finished),
                processes=int(processes),
                in_transit=int(in_transit),
                missing=_strings(missing),
                reasons=_strings(reasons),
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
        epoch, status, started, finished, reasons, missing, unsettled, duplicates = row
        states = tuple(
            StoredLocalState(
                process=str(process),
                service=str(service),
                clock=_counters(clock),
                state_json=str(state),
                tasks_json=str(tasks),
                sent=_counters(sent),
                consumed=_counters(consumed),
                truncated=bool(truncated),
                pools=_counters(pools),
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
                call_id=_from_i64(call_id),
                attempt=_from_i64(attempt),
                payload_json=str(payload),
            )
            for sender, receiver, method, kind, call_id, attempt, payload in conn.execute(
                "SELECT sender, receiver, method, kind, call_id, attempt, payload_json FROM channel_states "
                "WHERE epoch = ? ORDER BY seq",
                (epoch,),
            )
        )
        return StoredCut(
            epoch=int(epoch),
            status=_status(status),
            started=float(started),
            finished=float(finished),
            reasons=_strings(reasons),
            missing=_strings(missing),
            unsettled=_unsettled(unsettled),
            duplicates=_duplicates(duplicates),
            states=states,
            in_transit=in_transit,
        )


if TYPE_CHECKING:  # SqliteCutStore implements the whole interface
    _CHECK: CutStore = SqliteCutStore(":memory:")


# Checks and conversions -------------------------------------------------------------------


def _storable_epoch(epoch: int) -> bool:
    """Whether a cut can have ``epoch`` (SQL BIGINT); SQLite raises OverflowError on a bigger one."""
    return 1 <= epoch <= _I64_MAX


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8_text(text: str) -> str:
    """``text`` as SQLite can store it: lone surrogates become ``\\udXXX`` escapes."""
    return text if _is_utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_cut(cut: StoredCut) -> None:
    """Reject what no store could hold faithfully, before anything is written."""
    if not _storable_epoch(cut.epoch):
        raise ValueError(f"epoch {cut.epoch} is out of range")
    if cut.status not in _STATUSES:
        raise ValueError(f"status must be COMPLETE or INCOMPLETE, not {cut.status!r}")
    if not (math.isfinite(cut.started) and math.isfinite(cut.finished)) or cut.finished < cut.started:
        raise ValueError(f"cut {cut.epoch}: started/finished must be finite and in order")


def _local_row(epoch: int, state: StoredLocalState) -> tuple[object, ...]:
    return (
        epoch,
        state.process,
        state.service,
        _dumps(_checked_counters(state.clock)),
        _checked_json(state.state_json),
        _checked_json(state.tasks_json),
        _dumps(_checked_counters(state.sent)),
        _dumps(_checked_counters(state.consumed)),
        int(bool(state.truncated)),
        _dumps(_checked_counters(state.pools)),
    )


def _channel_row(epoch: int, seq: int, channel: StoredChannelState) -> tuple[object, ...]:
    return (
        epoch,
        seq,
        channel.sender,
        channel.receiver,
        channel.method,
        channel.kind,
        _to_i64(channel.call_id),
        _to_i64(channel.attempt),
        _checked_json(channel.payload_json),
    )


def _checked_json(text: str) -> str:
    """JSON text is stored as given, but only if it is JSON."""
    try:
        json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON text: {exc}") from None
    return text


def _checked_counters(counters: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in counters.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"counters map str to int >= 0, got {key!r}: {value!r}")
        out[key] = value
    return out


def _to_i64(value: int) -> int:
    """Unsigned 64-bit ids (call ids come from the wire) as SQL BIGINT, bit for bit."""
    if isinstance(value, bool) or not 0 <= value < _U64:
        raise ValueError(f"{value!r} is not an unsigned 64-bit integer")
    return value - _U64 if value > _I64_MAX else value


def _from_i64(value: int) -> int:
    return value + _U64 if value < 0 else value


def _loads(text: object) -> Any:
    try:
        return json.loads(str(text))
    except ValueError as exc:
        raise StorageError(f"corrupt JSON in the store: {exc}") from None


def _strings(text: object) -> tuple[str, ...]:
    value = _loads(text)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise StorageError("corrupt store: expected a list of strings")
    return tuple(value)


def _counters(text: object) -> dict[str, int]:
    value = _loads(text)
    if not isinstance(value, dict):
        raise StorageError("corrupt store: expected an object of counters")
    try:
        return _checked_counters(value)
    except ValueError as exc:
        raise StorageError(f"corrupt store: {exc}") from None


def _unsettled(text: object) -> tuple[UnsettledCall, ...]:
    value = _loads(text)
    if not isinstance(value, list) or not all(_is_unsettled(item) for item in value):
        raise StorageError(
            "corrupt store: expected unsettled calls as [caller, call_id, method, target, failed]"
        )
    return tuple(UnsettledCall(*item) for item in value)


def _is_unsettled(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 5
        and isinstance(item[1], int)
        and not isinstance(item[1], bool)
        and all(isinstance(part, str) for part in (item[0], *item[2:]))
    )


def _duplicates(text: object) -> tuple[DuplicateDelivery, ...]:
    value = _loads(text)
    if not isinstance(value, list) or not all(_is_duplicate(item) for item in value):
        raise StorageError("corrupt store: expected duplicates as [caller, call_id, [where, ...]]")
    return tuple(DuplicateDelivery(item[0], item[1], tuple(item[2])) for item in value)


def _is_duplicate(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 3
        and isinstance(item[0], str)
        and isinstance(item[1], int)
        and not isinstance(item[1], bool)
        and isinstance(item[2], list)
        and all(isinstance(part, str) for part in item[2])
    )


def _status(value: object) -> CutStatus:
    if value == "COMPLETE":
        return "COMPLETE"
    if value == "INCOMPLETE":
        return "INCOMPLETE"
    raise StorageError(f"corrupt store: unknown status {value!r}")
