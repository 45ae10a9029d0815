"""``cutwatch cuts prune`` and the retention options that ``cutwatch collector`` shares with it.

Pruning opens the store file itself rather than asking the collector: it
works with the collector stopped, and with it running SQLite's WAL lets both
write, each batch waiting its turn (the store's busy timeout) for the
other's short transactions.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import click

from cutwatch.cli._options import EXIT_REFUSED, give_up, json_option, parse_duration
from cutwatch.collector import PruneReport, Retention, SqliteCutStore, prune_store
from cutwatch.core import StorageError

__all__ = ["age", "keep_cuts_option", "keep_for_option", "parse_age", "prune", "retention_of"]

_DAYS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(d|w)\s*$")
_DAY = 86400.0


def parse_age(text: str) -> float:
    """Seconds in an age: a duration (``90s``, ``30m``, ``12h``) or days and weeks (``7d``, ``2w``)."""
    match = _DAYS.match(text)
    if match is None:
        try:
            return parse_duration(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an age (try 7d, 12h, 30m, 2w)") from None
    seconds = float(match.group(1)) * (_DAY if match.group(2) == "d" else 7 * _DAY)
    if seconds <= 0:
        raise ValueError("an age must be positive")
    return seconds


def age(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: an age option's seconds (None stays None)."""
    if value is None:
        return None
    try:
        return parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


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
    callback=age,
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
        with SqliteCutStore(db) as store:
            report = prune_store(store, retention, now=time.time(), dry_run=dry_run)
    except StorageError as exc:
        give_up("refused", f"cannot prune: {exc}", EXIT_REFUSED, as_json)
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
