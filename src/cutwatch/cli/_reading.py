"""The commands that read a collector: snapshot, cuts, status, check, deadlocks."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import click

from cutwatch.cli._format import format_cut, format_results, when
from cutwatch.cli._options import (
    EXIT_CHECK_ERROR,
    EXIT_NEGATIVE,
    client_options,
    collector_option,
    duration,
    fail,
    json_option,
)
from cutwatch.collector import CheckResults, CollectorClient, CollectorError
from cutwatch.core import shown
from cutwatch.security import CollectorCredentials

__all__ = ["check", "cuts", "deadlocks", "snapshot", "status"]


@click.command()
@collector_option
@client_options
@click.option(
    "--timeout",
    callback=duration,
    default="10s",
    metavar="DURATION",
    show_default=True,
    help="How long to wait for the cut.",
)
@json_option
def snapshot(address: str, credentials: CollectorCredentials, timeout: float, as_json: bool) -> None:
    """Take a snapshot now and print its cut; exit 0 when it is COMPLETE."""
    with CollectorClient(address, credentials=credentials) as client:
        try:
            cut = client.snapshot(timeout=timeout)
        except CollectorError as exc:
            fail(exc)
    click.echo(json.dumps(cut.to_json(), indent=2, sort_keys=True) if as_json else format_cut(cut))
    sys.exit(0 if cut.complete else EXIT_NEGATIVE)


@click.command()
@collector_option
@client_options
@click.option(
    "--status",
    "status_",
    type=click.Choice(["COMPLETE", "INCOMPLETE"]),
    default=None,
    help="Only the cuts of this status (default: both).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="How many cuts to list, newest first.",
)
@click.option("--epoch", type=click.IntRange(1), default=None, help="Show this cut in full.")
@json_option
def cuts(
    address: str,
    credentials: CollectorCredentials,
    status_: str | None,
    limit: int,
    epoch: int | None,
    as_json: bool,
) -> None:
    """List stored cuts, newest first (or show one with --epoch)."""
    with CollectorClient(address, credentials=credentials) as client:
        try:
            if epoch is not None:
                cut = client.get(epoch)
                if cut is None:
                    click.echo(f"cutwatch: no cut with epoch {epoch}", err=True)
                    sys.exit(EXIT_NEGATIVE)
                click.echo(
                    json.dumps(cut.to_json(), indent=2, sort_keys=True) if as_json else format_cut(cut)
                )
                return
            infos = client.list_cuts(status=status_, limit=limit)
        except CollectorError as exc:
            fail(exc)
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2, sort_keys=True))
        return
    if not infos:
        click.echo("no cuts stored yet")
    for info in infos:
        why = f"  {info.reasons[0]}" if info.reasons else ""
        click.echo(
            f"{info.epoch:>6}  {info.status:<10}  {when(info.started)}  {info.processes} processes, "
            f"{info.in_transit} in transit{why}"
        )


@click.command()
@collector_option
@client_options
@json_option
def status(address: str, credentials: CollectorCredentials, as_json: bool) -> None:
    """Show the agents registered with the collector and its counters."""
    with CollectorClient(address, credentials=credentials) as client:
        try:
            doc = client.status()
        except CollectorError as exc:
            fail(exc)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    agents: list[Mapping[str, Any]] = doc["agents"]
    click.echo(f"{len(agents)} agents registered; snapshots running: {doc['running'] or 'none'}")
    for agent in agents:
        name, service = shown(agent["process"]), shown(agent["service"])
        click.echo(f"  {name:<30} {service:<16} since {when(agent['connected_at'])}")
    for gone in doc.get("absent", []):
        name, service = shown(gone["process"]), shown(gone["service"])
        click.echo(
            f"  {name:<30} {service:<16} disconnected {gone['seconds_ago']:.1f} s ago; "
            "expected back (snapshots are INCOMPLETE until it returns or the rejoin grace ends)"
        )
    stats = doc["stats"]
    click.echo(
        f"snapshots: {stats['snapshots_started']} started, {stats['complete']} complete, "
        f"{stats['incomplete']} incomplete, {stats['rejected']} rejected"
    )


def _check_exit(checked: CheckResults) -> int:
    if checked.failed:
        return EXIT_NEGATIVE
    return EXIT_CHECK_ERROR if checked.errors or checked.inconclusive else 0


@click.command()
@collector_option
@client_options
@click.option(
    "--epoch", type=click.IntRange(1), default=None, help="The results of this cut (default: the newest)."
)
@click.option(
    "--follow", is_flag=True, help="Then print every failed check as it is found, until interrupted."
)
@json_option
def check(
    address: str, credentials: CollectorCredentials, epoch: int | None, follow: bool, as_json: bool
) -> None:
    """Predicate and deadlock results of the newest checked cut; exit 0 when every check holds."""
    with CollectorClient(address, credentials=credentials) as client:
        try:
            checked = client.results(epoch)
        except CollectorError as exc:
            fail(exc)
        if checked is None:
            click.echo(
                "no cut has been checked yet" if epoch is None else f"no results for cut {epoch}", err=True
            )
        elif as_json:
            click.echo(json.dumps(checked.to_json(), indent=None if follow else 2, sort_keys=True))
        else:
            click.echo(format_results(checked))
        if follow:
            _follow(client, as_json)
            return
    sys.exit(EXIT_NEGATIVE if checked is None else _check_exit(checked))


def _follow(client: CollectorClient, as_json: bool) -> None:
    if not as_json:
        click.echo("following failed checks (Ctrl-C to stop)", err=True)
    try:
        for event in client.watch():
            if as_json:
                click.echo(json.dumps(event, sort_keys=True))
            else:
                click.echo(f"snapshot {event['epoch']}: {event['name']} {event['status']}")
                click.echo("\n".join("  " + line for line in str(event["message"]).splitlines()))
    except CollectorError as exc:
        fail(exc)
    except KeyboardInterrupt:
        return


@click.command()
@collector_option
@client_options
@click.option("--now", is_flag=True, help="Take a snapshot first instead of reading the newest checked cut.")
@click.option("--timeout", type=str, callback=duration, default="10s", metavar="DURATION", help="For --now.")
@json_option
def deadlocks(
    address: str, credentials: CollectorCredentials, now: bool, timeout: float, as_json: bool
) -> None:
    """Deadlocks on the newest checked cut; exit 0 when there are none, 1 when there are.

    With --now, on a snapshot taken now; exit 5 when that cut is INCOMPLETE and proves none.
    """
    taken = None
    with CollectorClient(address, credentials=credentials) as client:
        try:
            if now:
                taken = client.snapshot(timeout=timeout)
                checked = client.results(epoch=taken.epoch, name="cutwatch.deadlock")
            else:
                checked = client.results(name="cutwatch.deadlock")
        except CollectorError as exc:
            fail(exc)
    if taken is not None and checked is None:
        # An INCOMPLETE cut that proves no deadlock: it cannot show there is none either.
        if as_json:
            doc = {
                "epoch": taken.epoch,
                "cut_status": taken.status,
                "deadlocks": [],
                "reasons": list(taken.reasons),
            }
            click.echo(json.dumps(doc, indent=2, sort_keys=True))
        else:
            click.echo(
                f"snapshot {taken.epoch} is INCOMPLETE and proves no deadlock; it cannot rule one out:"
            )
            click.echo("\n".join(f"  why: {reason}" for reason in taken.reasons))
        sys.exit(EXIT_CHECK_ERROR)
    if checked is None or not checked.results:
        if as_json:
            click.echo(json.dumps({"epoch": None, "cut_status": None, "deadlocks": []}, indent=2))
        else:
            click.echo("no cut has been checked for deadlocks yet (take one with --now)")
        return
    (result,) = checked.results
    if result.status == "ERROR":
        click.echo(
            f"cutwatch: deadlock detection failed on snapshot {checked.epoch}: {result.message}", err=True
        )
        sys.exit(EXIT_CHECK_ERROR)
    found = list(result.witness or []) if result.status == "FAIL" else []
    if as_json:
        doc = {"epoch": checked.epoch, "cut_status": checked.cut_status, "deadlocks": found}
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    elif found:
        click.echo(f"snapshot {checked.epoch} ({checked.cut_status}): {len(found)} deadlock(s)")
        click.echo(result.message)
    else:
        click.echo(f"snapshot {checked.epoch} ({checked.cut_status}): no deadlock")
    sys.exit(EXIT_NEGATIVE if found else 0)
