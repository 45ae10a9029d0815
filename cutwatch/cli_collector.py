"""The collector commands of the ``cutwatch`` command line: run one, snapshot, list, status."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any, NoReturn

import click

from cutwatch.collector import (
    DEFAULT_LISTEN,
    CollectorClient,
    CollectorError,
    CollectorServer,
    CollectorUnavailableError,
    Cut,
)

EXIT_NEGATIVE = 1
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
ENV_COLLECTOR = "CUTWATCH_COLLECTOR"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``5s``, ``500ms``, ``2m``, ``1h`` or a plain number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (try 5s, 500ms, 2m)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: a duration option's seconds (None stays None)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


_collector_option = click.option(
    "--collector",
    "address",
    default=lambda: os.environ.get(ENV_COLLECTOR, DEFAULT_LISTEN),
    show_default=f"${ENV_COLLECTOR} or {DEFAULT_LISTEN}",
    help="The collector's host:port.",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (stable format) instead of text."
)


def _fail(exc: CollectorError) -> NoReturn:
    click.echo(f"cutwatch: {exc}", err=True)
    sys.exit(EXIT_UNREACHABLE if isinstance(exc, CollectorUnavailableError) else EXIT_REFUSED)


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def _short(value: Any, width: int = 70) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_cut(cut: Cut) -> str:
    """A cut as a person reads it: status and why, states, messages in transit."""
    took = (cut.finished - cut.started) * 1000
    lines = [
        f"snapshot {cut.epoch}: {cut.status}  ({len(cut.states)} processes, "
        f"{len(cut.in_transit)} messages in transit, {took:.0f} ms, {_when(cut.started)})"
    ]
    for reason in cut.reasons:
        lines.append(f"  why: {reason}")
    if cut.states:
        lines.append("processes")
        width = max(len(p) for p in cut.states)
        for process, entry in sorted(cut.states.items()):
            tasks = len(cut.tasks.get(process, ()))
            service = entry.get("service", "")
            lines.append(f"  {process:<{width}}  {service:<12} tasks {tasks:<3} {_short(entry.get('state'))}")
    if cut.in_transit:
        lines.append("in transit")
        for m in cut.in_transit:
            what = f"{m.kind} {m.method or '?'} #{m.call_id}"
            lines.append(f"  {m.sender} -> {m.receiver}  {what}  {_short(m.payload, 50)}")
    if cut.duplicates:
        lines.append("duplicate deliveries (retries or hedging)")
        for d in cut.duplicates:
            lines.append(f"  call #{d['call_id']} from {d['caller']}: {', '.join(d['where'])}")
    return "\n".join(lines)


def register_collector_commands(main: click.Group) -> None:
    main.add_command(collector)
    main.add_command(snapshot)
    main.add_command(cuts)
    main.add_command(status)


@click.command()
@click.option(
    "--listen", default=DEFAULT_LISTEN, show_default=True, help="host:port to serve on (loopback by default)."
)
@click.option("--db", default="cutwatch.db", show_default=True, help="SQLite file that keeps the cuts.")
@click.option(
    "--every",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="Take a snapshot this often (e.g. 5s); default: on demand.",
)
@click.option(
    "--snapshot-timeout",
    callback=_duration,
    default="10s",
    metavar="DURATION",
    show_default=True,
    help="Give up on a snapshot after this long.",
)
@click.option("--max-agents", type=click.IntRange(1, 10_000), default=256, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Log warnings only.")
def collector(
    listen: str, db: str, every: float | None, snapshot_timeout: float, max_agents: int, quiet: bool
) -> None:
    """Run a collector until interrupted (Ctrl-C or SIGTERM)."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        server = CollectorServer(
            db, listen=listen, every=every, snapshot_timeout=snapshot_timeout, max_agents=max_agents
        ).start()
    except (OSError, CollectorError, ValueError) as exc:
        click.echo(f"cutwatch: cannot start the collector: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    click.echo(f"cutwatch collector listening on {server.address}, storing cuts in {db}", err=True)
    if every:
        click.echo(f"taking a snapshot every {every:g} s", err=True)
    while not stop.wait(0.5):
        pass
    click.echo("cutwatch collector stopping", err=True)
    server.stop()


@click.command()
@_collector_option
@click.option(
    "--timeout",
    callback=_duration,
    default="10s",
    metavar="DURATION",
    show_default=True,
    help="How long to wait for the cut.",
)
@_json_option
def snapshot(address: str, timeout: float, as_json: bool) -> None:
    """Take a snapshot now and print its cut; exit 0 when it is COMPLETE."""
    with CollectorClient(address) as client:
        try:
            cut = client.snapshot(timeout=timeout)
        except CollectorError as exc:
            _fail(exc)
    click.echo(json.dumps(cut.to_json(), indent=2, sort_keys=True) if as_json else format_cut(cut))
    sys.exit(0 if cut.complete else EXIT_NEGATIVE)


@click.command()
@_collector_option
@click.option("--status", "status_", type=click.Choice(["COMPLETE", "INCOMPLETE"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--epoch", type=click.IntRange(1), default=None, help="Show this cut in full.")
@_json_option
def cuts(address: str, status_: str | None, limit: int, epoch: int | None, as_json: bool) -> None:
    """List stored cuts, newest first (or show one with --epoch)."""
    with CollectorClient(address) as client:
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
            _fail(exc)
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2, sort_keys=True))
        return
    if not infos:
        click.echo("no cuts stored yet")
    for info in infos:
        why = f"  {info.reasons[0]}" if info.reasons else ""
        click.echo(
            f"{info.epoch:>6}  {info.status:<10}  {_when(info.started)}  {info.processes} processes, "
            f"{info.in_transit} in transit{why}"
        )


@click.command()
@_collector_option
@_json_option
def status(address: str, as_json: bool) -> None:
    """Show the agents registered with the collector and its counters."""
    with CollectorClient(address) as client:
        try:
            doc = client.status()
        except CollectorError as exc:
            _fail(exc)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    agents: list[Mapping[str, Any]] = doc["agents"]
    click.echo(f"{len(agents)} agents registered; snapshots running: {doc['running'] or 'none'}")
    for agent in agents:
        click.echo(f"  {agent['process']:<30} {agent['service']:<16} since {_when(agent['connected_at'])}")
    stats = doc["stats"]
    click.echo(
        f"snapshots: {stats['snapshots_started']} started, {stats['complete']} complete, "
        f"{stats['incomplete']} incomplete, {stats['rejected']} rejected"
    )
