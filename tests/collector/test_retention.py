"""Retention on real SQLite files: which cuts go, that all their rows go with them, the newest
COMPLETE cut stays; the collector's periodic pass; ``cutwatch cuts prune``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import click
import pytest
from cli_runner import cli_runner
from polling import wait_until

from cutwatch.cli import main
from cutwatch.collector import (
    CollectorServer,
    CutStore,
    Retention,
    SqliteCutStore,
    StoredChannelState,
    StoredCut,
    StoredLocalState,
    StoredResult,
    prune_store,
)
from cutwatch.collector._health import CollectorHealth
from cutwatch.collector._sqlite import _MIGRATIONS, SCHEMA_VERSION
from cutwatch.collector._store import MAX_PRUNE_LIMIT
from cutwatch.collector._upkeep import Upkeep
from cutwatch.core import StorageError
from cutwatch.security import DEPRECATED_READER_TOKEN_ENV, READER_TOKEN_ENV

T0 = 1_700_000_000.0
DAY = 86400.0


def cut(epoch: int, *, finished: float | None = None, complete: bool = False) -> StoredCut:
    """A cut with rows in every table keyed by epoch: two states and a message in transit."""
    finished = T0 + epoch if finished is None else finished
    return StoredCut(
        epoch=epoch,
        status="COMPLETE" if complete else "INCOMPLETE",
        started=finished - 1.0,
        finished=finished,
        reasons=() if complete else ("no local snapshot from b",),
        missing=(),
        unsettled=(),
        duplicates=(),
        states=tuple(
            StoredLocalState(process, "bank", {process: epoch}, '{"balance": 1}', "[]", {}, {})
            for process in ("a", "b")
        ),
        in_transit=(StoredChannelState("a", "b", "/bank.Bank/Credit", "request", epoch, 0, "{}"),),
    )


def fill(store: CutStore, epochs: range, *, complete: Collection[int] = (), **kw: float) -> None:
    for epoch in epochs:
        store.save_cut(cut(epoch, complete=epoch in complete, **kw))
        store.save_results(epoch, [StoredResult(epoch, "cutwatch.deadlock", "PASS")])


def stored(store: CutStore) -> list[int]:
    return sorted(summary.epoch for summary in store.list_cuts(limit=1000))


def rows_by_epoch(db: Path) -> dict[str, frozenset[int]]:
    """Every table with an ``epoch`` column (today's and any added later), and the epochs in it."""
    conn = sqlite3.connect(db)
    try:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        keyed = [
            t for t in tables if any(col[1] == "epoch" for col in conn.execute(f'PRAGMA table_info("{t}")'))
        ]
        return {
            t: frozenset(int(e) for (e,) in conn.execute(f'SELECT DISTINCT epoch FROM "{t}"')) for t in keyed
        }
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cuts.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteCutStore]:
    opened = SqliteCutStore(db)
    try:
        yield opened
    finally:
        opened.close()


# The store's prune --------------------------------------------------------------------------


def test_keep_cuts_removes_the_oldest_and_every_row_of_their_epochs(db: Path, store: SqliteCutStore) -> None:
    fill(store, range(1, 11), complete={9})
    assert set(rows_by_epoch(db)) >= {"cuts", "local_states", "channel_states", "results"}
    pruned = store.prune(keep_cuts=3)
    assert pruned.epochs == (1, 2, 3, 4, 5, 6, 7)
    assert (pruned.more, pruned.stored) == (0, 3)
    assert stored(store) == [8, 9, 10]
    assert set(rows_by_epoch(db).values()) == {frozenset({8, 9, 10})}
    assert store.prune(keep_cuts=3).epochs == ()


def test_the_newest_complete_cut_and_the_newest_cut_are_never_removed(store: SqliteCutStore) -> None:
    fill(store, range(1, 8), complete={2, 4})
    pruned = store.prune(keep_cuts=1)
    assert pruned.epochs == (1, 2, 3, 5, 6)
    assert stored(store) == [4, 7]
    newest_complete = store.latest("COMPLETE")
    assert newest_complete is not None and newest_complete.epoch == 4
    # Everything past the age bound, yet the two stay: epochs keep rising across restarts.
    assert store.prune(finished_before=T0 + 10 * DAY).epochs == ()
    assert store.next_epoch() == 8


def test_without_any_complete_cut_only_the_newest_stays(store: SqliteCutStore) -> None:
    fill(store, range(1, 5))
    assert store.prune(finished_before=T0 + DAY).epochs == (1, 2, 3)
    assert stored(store) == [4]


def test_age_with_an_injected_now_and_both_bounds_together(store: SqliteCutStore) -> None:
    for epoch, days_ago in [(1, 9), (2, 8), (3, 6), (4, 2), (5, 1), (6, 0)]:
        store.save_cut(cut(epoch, finished=T0 - days_ago * DAY, complete=epoch == 6))
    week = Retention(keep_for=7 * DAY)
    assert prune_store(store, week, now=T0, dry_run=True).epochs == ((1, 2),)
    assert stored(store) == [1, 2, 3, 4, 5, 6], "a dry run removes nothing"
    report = prune_store(store, week, now=T0)
    assert (report.removed, report.epochs, report.stored) == (2, ((1, 2),), 4)
    # Both: a cut stays only within both bounds (the newest two, and within a week).
    report = prune_store(store, Retention(keep_cuts=2, keep_for=7 * DAY), now=T0)
    assert report.epochs == ((3, 4),)
    assert stored(store) == [5, 6]


def test_batches_are_bounded_and_a_whole_prune_takes_them_all(store: SqliteCutStore) -> None:
    fill(store, range(1, 26), complete={25})
    first = store.prune(keep_cuts=5, limit=4)
    assert (first.epochs, first.more, first.stored) == ((1, 2, 3, 4), 16, 21)
    dry = store.prune(keep_cuts=5, limit=4, dry_run=True)
    assert (dry.epochs, dry.more, dry.stored) == ((5, 6, 7, 8), 12, 17)
    one_pass = prune_store(store, Retention(keep_cuts=5), now=T0, batch=4, max_batches=1)
    assert (one_pass.removed, one_pass.more) == (4, 12)
    whole = prune_store(store, Retention(keep_cuts=5), now=T0, batch=4)
    assert (whole.removed, whole.epochs, whole.more, whole.stored) == (12, ((9, 20),), 0, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "keep_cuts, finished_before or both"),
        ({"keep_cuts": 0}, "keep_cuts"),
        ({"keep_cuts": True}, "keep_cuts"),
        ({"finished_before": float("nan")}, "finished_before"),
        ({"keep_cuts": 1, "limit": 0}, "limit"),
        ({"keep_cuts": 1, "limit": MAX_PRUNE_LIMIT + 1}, "limit"),
    ],
)
def test_bad_rules_are_refused_before_touching_the_store(
    store: SqliteCutStore, kwargs: dict[str, object], match: str
) -> None:
    fill(store, range(1, 4))
    with pytest.raises(ValueError, match=match):
        store.prune(**kwargs)  # type: ignore[arg-type]
    assert stored(store) == [1, 2, 3]


@pytest.mark.parametrize(
    ("keep_cuts", "keep_for"), [(None, None), (0, None), (None, 0.0), (None, float("inf")), (None, -1.0)]
)
def test_bad_retention_rules_are_refused(keep_cuts: int | None, keep_for: float | None) -> None:
    with pytest.raises(ValueError):
        Retention(keep_cuts, keep_for)


# The collector's periodic pass --------------------------------------------------------------


class Writes:
    """Stands in for the coordinator's counters: cuts it tried to store, and failures."""

    def __init__(self) -> None:
        self.tried = self.failed = 0

    def __call__(self) -> tuple[int, int]:
        return self.tried, self.failed


def test_an_upkeep_round_prunes_by_age_with_an_injected_clock_in_bounded_steps(store: SqliteCutStore) -> None:
    fill(store, range(1, 8), complete={7})
    now = [T0]
    retention = Retention(keep_for=DAY)
    upkeep = Upkeep(
        store,
        CollectorHealth(),
        Writes(),
        retention=retention,
        clock=lambda: now[0],
        prune_every=0.0,
        batch=2,
    )
    upkeep.run_once()
    assert stored(store) == list(range(1, 8)), "nothing is a day old yet"
    now[0] = T0 + DAY + 4.5  # epochs 1..4 finished more than a day ago
    upkeep.run_once()
    assert stored(store) == [3, 4, 5, 6, 7], "at most one batch per round"
    upkeep.run_once()
    assert stored(store) == [5, 6, 7]
    assert upkeep.removed == 4
    upkeep.run_once()
    assert stored(store) == [5, 6, 7]


def test_upkeep_tells_health_whether_the_store_takes_writes(store: SqliteCutStore) -> None:
    health, writes = CollectorHealth(), Writes()
    upkeep = Upkeep(store, health, writes)
    writes.tried, writes.failed = 3, 1
    upkeep.run_once()
    assert not health.store_writable
    upkeep.run_once()
    assert not health.store_writable, "no new writes: no news"
    writes.tried = 4
    upkeep.run_once()
    assert health.store_writable


def test_a_failing_prune_marks_the_store_unwritable_and_the_collector_goes_on(db: Path) -> None:
    opened = SqliteCutStore(db)
    fill(opened, range(1, 4))
    health = CollectorHealth()
    upkeep = Upkeep(opened, health, Writes(), retention=Retention(keep_cuts=1))
    opened.close()  # every call now raises StorageError
    upkeep.run_once()
    assert not health.store_writable


def test_a_running_collector_prunes_its_store(db: Path) -> None:
    with SqliteCutStore(db) as before:
        fill(before, range(1, 21), complete={5})
    server = CollectorServer(db, listen="127.0.0.1:0", retention=Retention(keep_cuts=3))
    try:
        server.start()
        wait_until(lambda: server.upkeep.removed == 16, "the first retention pass")
        assert stored(server.store) == [5, 18, 19, 20]
    finally:
        server.stop()
    assert rows_by_epoch(db)["results"] == {5, 18, 19, 20}


# cutwatch cuts prune ----------------------------------------------------------------------


def test_cuts_prune_dry_run_then_for_real_with_json(db: Path) -> None:
    with SqliteCutStore(db) as store:
        fill(store, range(1, 11), complete={10})
    runner = cli_runner()
    dry = runner.invoke(main, ["cuts", "prune", "--db", str(db), "--keep-cuts", "4", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("would remove 6 cuts (epochs 1-6); 4 stored"), dry.output
    with SqliteCutStore(db) as store:
        assert len(stored(store)) == 10
    real = runner.invoke(main, ["cuts", "prune", "--db", str(db), "--keep-cuts", "4", "--json"])
    assert real.exit_code == 0, real.output
    assert json.loads(real.output) == {
        "dry_run": False,
        "removed": 6,
        "epochs": [[1, 6]],
        "stored": 4,
        "more": 0,
        "keep_cuts": 4,
        "keep_for_seconds": None,
    }
    assert set(rows_by_epoch(db).values()) == {frozenset({7, 8, 9, 10})}
    again = runner.invoke(main, ["cuts", "prune", "--db", str(db), "--keep-cuts", "4"])
    assert again.exit_code == 0 and again.output.startswith("removed 0 cuts; 4 stored"), again.output


def test_cuts_prune_by_age_against_a_running_collector(db: Path) -> None:
    with SqliteCutStore(db) as store:
        fill(store, range(1, 6), finished=T0)  # long ago
        store.save_cut(cut(6, finished=T0 + 10_000 * DAY, complete=True))  # far ahead
    server = CollectorServer(db, listen="127.0.0.1:0").start()
    try:
        result = cli_runner().invoke(main, ["cuts", "prune", "--db", str(db), "--keep-for", "7d"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("removed 5 cuts (epochs 1-5); 1 stored"), result.output
        assert [info.epoch for info in server.store.list_cuts()] == [6]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "say what to keep"),
        (["--keep-for", "0d"], "a duration must be positive"),
        (["--keep-for", "soon"], "is not a duration"),
        (["--keep-cuts", "0"], "--keep-cuts"),
    ],
)
def test_cuts_prune_refuses_bad_usage_with_exit_2(db: Path, args: list[str], message: str) -> None:
    SqliteCutStore(db).close()
    result = cli_runner().invoke(main, ["cuts", "prune", "--db", str(db), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_cuts_prune_never_creates_a_store_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    result = cli_runner().invoke(main, ["cuts", "prune", "--db", str(missing), "--keep-cuts", "1"])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not missing.exists()
    with pytest.raises(StorageError, match="no such file"):
        SqliteCutStore.open_existing(missing)
    assert not missing.exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, clearly" * 100)
    result = cli_runner().invoke(main, ["cuts", "prune", "--db", str(junk), "--keep-cuts", "1"])
    assert result.exit_code == 2 and "not an SQLite database" in result.stderr, result.output
    as_json = cli_runner().invoke(main, ["cuts", "prune", "--db", str(junk), "--keep-cuts", "1", "--json"])
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["error"]["kind"] == "usage"


def schema_of(db: Path) -> list[tuple[str, str]]:
    """Every table, index and its SQL, and the schema version if there is one: what a migration changes."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT name, COALESCE(sql, '') FROM sqlite_master ORDER BY name").fetchall()
        if any(name == "schema_version" for name, _ in rows):
            rows += [("version", str(v)) for (v,) in conn.execute("SELECT version FROM schema_version")]
        return [(str(a), str(b)) for a, b in rows]
    finally:
        conn.close()


def older_store(db: Path, version: int) -> None:
    """A store as the cutwatch of schema ``version`` left it."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for number, statements in _MIGRATIONS:
            if number <= version:
                for statement in statements:
                    conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    finally:
        conn.close()


def foreign_file(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.close()


def newer_store(db: Path) -> None:
    SqliteCutStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda db: db.write_bytes(b""), "holds no tables"),
        (foreign_file, "it has tables invoices but not cuts, meta, schema_version"),
        (lambda db: older_store(db, SCHEMA_VERSION - 1), f"schema version {SCHEMA_VERSION - 1}"),
        (lambda db: older_store(db, 1), "start this cutwatch's collector on it once to upgrade it"),
        (
            newer_store,
            f"schema version {SCHEMA_VERSION + 1}, and this cutwatch reads version {SCHEMA_VERSION}",
        ),
    ],
    ids=["empty file", "foreign file", "older schema", "oldest schema", "newer schema"],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry", "real"])
def test_cuts_prune_refuses_a_file_that_is_not_a_store_of_this_version_and_leaves_it_as_it_was(
    db: Path, make: Callable[[Path], object], says: str, dry_run: bool
) -> None:
    make(db)
    before = (db.read_bytes(), schema_of(db) if db.stat().st_size else [])
    args = ["cuts", "prune", "--db", str(db), "--keep-cuts", "1", "--json", *(["--dry-run"] * dry_run)]
    result = cli_runner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert says in result.stderr, result.stderr
    assert json.loads(result.stdout)["error"]["kind"] == "usage"
    assert (db.read_bytes(), schema_of(db) if db.stat().st_size else []) == before


def journal_mode(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_a_dry_run_opens_the_store_read_only_and_no_prune_converts_its_journal(db: Path) -> None:
    with SqliteCutStore(db) as store:
        fill(store, range(1, 6), complete={5})
    with sqlite3.connect(db) as conn:  # a store a tool switched back to a rollback journal
        conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    content, mtime = db.read_bytes(), db.stat().st_mtime_ns
    dry = cli_runner().invoke(main, ["cuts", "prune", "--db", str(db), "--keep-cuts", "1", "--dry-run"])
    assert dry.exit_code == 0 and dry.output.startswith("would remove 4 cuts"), dry.output
    assert (db.read_bytes(), db.stat().st_mtime_ns, journal_mode(db)) == (content, mtime, "delete")
    with (
        SqliteCutStore.open_existing(db, read_only=True) as store,
        pytest.raises(StorageError, match="readonly"),
    ):
        store.prune(keep_cuts=1)
    real = cli_runner().invoke(main, ["cuts", "prune", "--db", str(db), "--keep-cuts", "1"])
    assert real.exit_code == 0 and real.output.startswith("removed 4 cuts"), real.output
    assert journal_mode(db) == "delete", "the prune left the journal as it found it"


@pytest.mark.parametrize(
    "env",
    [
        {READER_TOKEN_ENV: "short"},
        {DEPRECATED_READER_TOKEN_ENV: "short"},
        {DEPRECATED_READER_TOKEN_ENV: "reader-" + "r" * 26},
    ],
    ids=["bad token", "bad token under the old name", "old name"],
)
def test_cuts_prune_reads_no_reader_credentials(
    db: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqliteCutStore(db) as store:
        fill(store, range(1, 4))
    monkeypatch.delenv(READER_TOKEN_ENV, raising=False)
    monkeypatch.delenv(DEPRECATED_READER_TOKEN_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = cli_runner().invoke(main, ["cuts", "prune", "--db", str(db), "--keep-cuts", "1"])
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert result.stdout.startswith("removed 2 cuts")
    if READER_TOKEN_ENV in env:  # listing cuts does read them, and refuses a bad token
        listing = cli_runner().invoke(main, ["cuts", "--collector", "127.0.0.1:1"])
        assert listing.exit_code == 2 and "token must be" in listing.stderr, listing.output


def test_retention_options_have_help_with_their_defaults() -> None:
    cuts, collector = main.commands["cuts"], main.commands["collector"]
    assert isinstance(cuts, click.Group), "cuts is a group: cuts prune"
    prune = cuts.commands["prune"]
    for command in (prune, collector):
        assert [p.name for p in command.params if not (getattr(p, "help", "") or "").strip()] == []
    for args in (["cuts", "prune", "--help"], ["collector", "--help"]):
        shown = " ".join(cli_runner().invoke(main, args).output.split())
        assert "[default: (all); x>=1]" in shown and "[default: (forever)]" in shown, shown
    listing = cli_runner().invoke(main, ["cuts", "--help"])
    assert listing.exit_code == 0 and "prune" in listing.output
