"""The commands that read a collector: snapshot, cuts, status, check, deadlocks."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

import click

from cutwatch.cli._format import format_cut, format_results, when
from cutwatch.cli._options import (
    EXIT_CHECK_ERROR,
    EXIT_NEGATIVE,
    EXIT_NO_CUT,
    client_options,
    collector_option,
    duration,
    emit,
    fail,
    give_up,
    json_option,
)
from cutwatch.collector import CheckResults, CollectorClient, CollectorError
from cutwatch.core import Cut, shown
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
        cut = _take(client, timeout, as_json)
    if as_json:
        emit(cut.to_json())
    else:
        click.echo(format_cut(cut))
    sys.exit(0 if cut.complete else EXIT_NEGATIVE)


def _take(client: CollectorClient, timeout: float, as_json: bool) -> Cut:
    try:
        return client.snapshot(timeout=timeout)
    except CollectorError as exc:
        fail(exc, as_json, snapshot_of=client)


def _listing_only(group: Callable[..., None]) -> Callable[..., None]:
    """Runs a group's own command, and what its decorators do first, only when no subcommand is named.

    ``cuts prune`` works on a file and needs no collector, so the reader credentials
    (token files, certificates, token variables) must not be read, let alone refused, for it.
    """

    @functools.wraps(group)
    def run(**kwargs: Any) -> None:
        if click.get_current_context().invoked_subcommand is None:
            group(**kwargs)

    return run


@click.group(invoke_without_command=True)
@_listing_only
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
    """List stored cuts, newest first (or show one with --epoch); 'cuts prune' removes old ones."""
    with CollectorClient(address, credentials=credentials) as client:
        try:
            if epoch is not None:
                cut = client.get(epoch)
                if cut is None:
                    give_up("no_cut", f"no cut with epoch {epoch} is stored", EXIT_NO_CUT, as_json)
                if as_json:
                    emit(cut.to_json())
                else:
                    click.echo(format_cut(cut))
                return
            infos = client.list_cuts(status=status_, limit=limit)
        except CollectorError as exc:
            fail(exc, as_json)
    if not infos:
        what = "no cut" if status_ is None else f"no {status_} cut"
        give_up("no_cut", f"{what} is stored yet", EXIT_NO_CUT, as_json)
    if as_json:
        emit([info.__dict__ for info in infos])
        return
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
            fail(exc, as_json)
    if as_json:
        emit(doc)
        return
    agents: list[Mapping[str, Any]] = doc["agents"]
    click.echo(f"{len(agents)} agents registered; snapshots running: {doc['running'] or 'none'}")
    if not agents and not doc.get("absent"):
        click.echo("  none: a snapshot has nothing to take until an agent connects")
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
            missing = None if checked is not None else _not_checked(client, epoch)
        except CollectorError as exc:
            fail(exc, as_json)
        if follow:  # one line per event follows: no document for the first answer's absence
            if checked is None:
                click.echo(f"cutwatch: {missing}", err=True)
            elif as_json:
                emit(checked.to_json(), indent=None)
            else:
                click.echo(format_results(checked))
            _follow(client, as_json)
            return
    if checked is None:
        give_up("no_cut", missing or "no cut has been checked yet", EXIT_NO_CUT, as_json)
    if as_json:
        emit(checked.to_json())
    else:
        click.echo(format_results(checked))
    sys.exit(_check_exit(checked))


def _not_checked(client: CollectorClient, epoch: int | None, what: str = "checked") -> str:
    """Why there are no results to show, naming the newest cut when it is INCOMPLETE."""
    if epoch is not None:
        return f"cut {epoch} has no check results (no such cut, or it is INCOMPLETE and proves nothing)"
    newest = client.list_cuts(limit=1)
    if newest and newest[0].status != "COMPLETE":
        return (
            f"no cut has been {what} yet: the newest, {newest[0].epoch}, is {newest[0].status} "
            "(predicates run on COMPLETE cuts; an INCOMPLETE one has results only when it proves a deadlock)"
        )
    return f"no cut has been {what} yet"


def _follow(client: CollectorClient, as_json: bool) -> None:
    if not as_json:
        click.echo("following failed checks (Ctrl-C to stop)", err=True)
    try:
        for event in client.watch():
            if as_json:
                emit(event, indent=None)
            else:
                click.echo(f"snapshot {event['epoch']}: {event['name']} {event['status']}")
                click.echo("\n".join("  " + line for line in str(event["message"]).splitlines()))
    except CollectorError as exc:
        fail(exc, as_json)
    except KeyboardInterrupt:
        return


@click.command()
@collector_option
@client_options
@click.option("--now", is_flag=True, help="Take a snapshot first instead of reading the newest checked cut.")
@click.option(
    "--timeout",
    type=str,
    callback=duration,
    default="10s",
    metavar="DURATION",
    show_default=True,
    help="With --now: how long to wait for the cut.",
)
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
                taken = _take(client, timeout, as_json)
                checked = client.results(epoch=taken.epoch, name="cutwatch.deadlock")
            else:
                checked = client.results(name="cutwatch.deadlock")
                if checked is None or not checked.results:
                    missing = _not_checked(client, None, "checked for deadlocks")
                    give_up("no_cut", f"{missing} (take one with --now)", EXIT_NO_CUT, as_json)
        except CollectorError as exc:
            fail(exc, as_json)
    reasons = {"reasons": list(taken.reasons)} if taken is not None else {}
    if checked is None or not checked.results:
        # An INCOMPLETE cut that proves no deadlock: it cannot show there is none either.
        assert taken is not None
        message = (
            f"snapshot {taken.epoch} is INCOMPLETE and proves no deadlock; it cannot rule one out"
            if not taken.complete
            else f"snapshot {taken.epoch} has no deadlock result yet (its checks are still running)"
        )
        if as_json:
            emit(_deadlocks_doc(taken.epoch, taken.status, "INCONCLUSIVE", message, [], reasons))
        else:
            click.echo(f"{message}:")
            click.echo("\n".join(f"  why: {reason}" for reason in taken.reasons))
        sys.exit(EXIT_CHECK_ERROR)
    (result,) = checked.results
    found = list(result.witness or []) if result.status == "FAIL" else []
    if as_json:
        emit(_deadlocks_doc(checked.epoch, checked.cut_status, result.status, result.message, found, reasons))
    elif result.status == "ERROR":
        click.echo(
            f"cutwatch: deadlock detection failed on snapshot {checked.epoch}: {result.message}", err=True
        )
    elif found:
        click.echo(f"snapshot {checked.epoch} ({checked.cut_status}): {len(found)} deadlock(s)")
        click.echo(result.message)
    else:
        click.echo(f"snapshot {checked.epoch} ({checked.cut_status}): no deadlock")
    if result.status in ("ERROR", "INCONCLUSIVE"):
        sys.exit(EXIT_CHECK_ERROR)
    sys.exit(EXIT_NEGATIVE if found else 0)


def _deadlocks_doc(
    epoch: int, cut_status: str, status: str, message: str, found: list[Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """``deadlocks --json``: the cut, the detection's verdict (``status``) and the reports."""
    return {
        "epoch": epoch,
        "cut_status": cut_status,
        "status": status,
        "message": message,
        "deadlocks": found,
        **extra,
    }
