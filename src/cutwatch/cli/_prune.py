"""``cutwatch cuts prune`` and the retention options that ``cutwatch collector`` shares with it.

Pruning opens the store file itself rather than asking the collector: it
works with the collector stopped, and with it running SQLite's WAL lets both
write, each batch waiting its turn (the store's busy timeout) for the
other's short transactions. It opens the file as it is: never creating,
converting or upgrading a store (an older collector still using the file
would refuse it afterwards), and a dry run read-only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cutwatch.cli._options import EXIT_REFUSED, EXIT_USAGE, duration, give_up, json_option
from cutwatch.collector import PruneReport, Retention, SqliteCutStore, prune_store
from cutwatch.core import StorageError

__all__ = ["BUSY_TIMEOUT", "keep_cuts_option", "keep_for_option", "prune", "retention_of"]

BUSY_TIMEOUT = 10.0
"""Seconds a batch waits for another writer's transaction (a running collector's) before giving up."""


def retention_of(keep_cuts: int | None, keep_for: float | None) -> Retention | None:
    return None if keep_cuts is None and keep_for is None else Retention(keep_cuts, keep_for)


keep_cuts_option = click.option(
    "--keep-cuts",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    show_default="all",
    help="Keep the newest N cuts, remove older ones. The newest COMPLETE cut is always kept.",
)
keep_for_option = click.option(
    "--keep-for",
    callback=duration,
    default=None,
    metavar="AGE",
    show_default="forever",
    help="Keep the cuts finished within AGE (7d, 12h, 30m, 2w), remove older ones. "
    "With --keep-cuts a cut must be within both to stay.",
)


@click.command()
@click.option(
    "--db",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default="cutwatch.db",
    show_default=True,
    help="The collector's SQLite file (a running collector may keep using it).",
)
@keep_cuts_option
@keep_for_option
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@json_option
def prune(db: Path, keep_cuts: int | None, keep_for: float | None, dry_run: bool, as_json: bool) -> None:
    """Remove old cuts from the store file (--keep-cuts, --keep-for), with all their rows.

    Never the newest cut nor the newest COMPLETE one. Prints how many were removed.
    """
    retention = retention_of(keep_cuts, keep_for)
    if retention is None:
        raise click.UsageError("say what to keep: --keep-cuts N, --keep-for AGE or both")
    try:
        store = SqliteCutStore.open_existing(db, read_only=dry_run, timeout=BUSY_TIMEOUT)
    except StorageError as exc:  # not a store of this version: the file named is the mistake
        give_up("usage", f"cannot prune {exc}", EXIT_USAGE, as_json)
    with store:
        try:
            report = prune_store(store, retention, now=time.time(), dry_run=dry_run)
        except StorageError as exc:
            give_up("refused", f"the store refused the prune: {exc}", EXIT_REFUSED, as_json)
    if as_json:
        doc = report.to_json() | {"keep_cuts": keep_cuts, "keep_for_seconds": keep_for}
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(_describe(report, retention))


def _describe(report: PruneReport, retention: Retention) -> str:
    verb = "would remove" if report.dry_run else "removed"
    text = f"{verb} {report.removed} cut{'s' if report.removed != 1 else ''}"
    if report.epochs:
        text += f" (epochs {_spans(report)})"
    text += f"; {report.stored} stored, keeping {retention.describe()}"
    if report.more:
        text += f"; {report.more} more beyond this dry run's reach"
    return text


def _spans(report: PruneReport, shown: int = 10) -> str:
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in report.epochs[:shown]]
    if len(report.epochs) > shown:
        parts.append(f"and {len(report.epochs) - shown} more ranges")
    return ", ".join(parts)
