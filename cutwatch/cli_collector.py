"""The collector commands of `cutwatch`: run one, snapshot, cuts, status, check, deadlocks."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, NoReturn

import click

from cutwatch.agent.exceptions import CutwatchError
from cutwatch.collector import (
    DEFAULT_LISTEN,
    CheckResults,
    CollectorClient,
    CollectorError,
    CollectorServer,
    CollectorUnavailableError,
    Cut,
)
from cutwatch.collector._limits import CollectorLimits
from cutwatch.security import TOKEN_ENV, CollectorCredentials, CollectorSecurity, SecurityConfigError, shown

EXIT_NEGATIVE = 1
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_CHECK_ERROR = 5
ENV_COLLECTOR = "CUTWATCH_COLLECTOR"
AGENT_TOKEN_ENV = "CUTWATCH_AGENT_TOKEN"  # noqa: S105 - variables' names, not secrets
READER_TOKEN_ENV = "CUTWATCH_READER_TOKEN"  # noqa: S105
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


def _client_options(command: Callable[..., None]) -> Callable[..., None]:
    """Adds the options that say how to reach a collector that demands credentials.

    The command then receives ``credentials`` instead of the separate options.
    """

    @functools.wraps(command)
    def run(
        token_file: str | None,
        ca_cert: str | None,
        cert: str | None,
        key: str | None,
        server_name: str | None,
        **kwargs: Any,
    ) -> None:
        token = None if token_file is not None else (os.environ.get(TOKEN_ENV) or None)
        try:
            credentials = CollectorCredentials.from_files(
                token=token,
                token_file=token_file,
                ca_file=ca_cert,
                cert_file=cert,
                key_file=key,
                server_name=server_name,
            )
        except SecurityConfigError as exc:
            raise click.UsageError(str(exc)) from None
        command(credentials=credentials, **kwargs)

    options = [
        click.option(
            "--token-file",
            type=click.Path(dir_okay=False),
            help=f"A file holding the reader token (default: ${TOKEN_ENV}, if set).",
        ),
        click.option("--ca-cert", type=click.Path(dir_okay=False), help="PEM CA certificate: use TLS."),
        click.option("--cert", type=click.Path(dir_okay=False), help="PEM client certificate (mutual TLS)."),
        click.option("--key", type=click.Path(dir_okay=False), help="PEM private key of --cert."),
        click.option("--server-name", help="Name to check the collector's certificate against."),
    ]
    for option in reversed(options):
        run = option(run)
    return run


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
        lines.append(f"  why: {shown(reason, 2000)}")
    if cut.states:
        lines.append("processes")
        width = max(len(shown(p)) for p in cut.states)
        for process, entry in sorted(cut.states.items()):
            tasks = len(cut.tasks.get(process, ()))
            service = shown(entry.get("service", ""))
            name = shown(process)
            lines.append(f"  {name:<{width}}  {service:<12} tasks {tasks:<3} {_short(entry.get('state'))}")
    if cut.in_transit:
        lines.append("in transit")
        for m in cut.in_transit:
            what = f"{m.kind} {shown(m.method or '?')} #{m.call_id}"
            lines.append(f"  {shown(m.sender)} -> {shown(m.receiver)}  {what}  {_short(m.payload, 50)}")
    if cut.duplicates:
        lines.append("duplicate deliveries (retries or hedging)")
        for d in cut.duplicates:
            lines.append(f"  call #{d['call_id']} from {shown(d['caller'])}: {shown(', '.join(d['where']))}")
    return "\n".join(lines)


def _env_tokens(name: str) -> tuple[str, ...]:
    value = os.environ.get(name, "").strip()
    return (value,) if value else ()


def register_collector_commands(main: click.Group) -> None:
    main.add_command(collector)
    main.add_command(snapshot)
    main.add_command(cuts)
    main.add_command(status)
    main.add_command(check)
    main.add_command(deadlocks)


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
@click.option(
    "--rejoin-grace",
    callback=_duration,
    default="10s",
    metavar="DURATION",
    show_default=True,
    help="How long a process whose stream broke is expected back; snapshots meanwhile are INCOMPLETE.",
)
@click.option(
    "--max-agents",
    type=click.IntRange(1, 10_000),
    default=CollectorLimits.max_agents,
    show_default=True,
    help="Agents' control streams served at once; more are refused (RESOURCE_EXHAUSTED) and retry.",
)
@click.option(
    "--agent-events-per-second",
    type=click.FloatRange(min=1.0),
    default=CollectorLimits.agent_events_per_second,
    show_default=True,
    help="Sustained messages per second one agent may send (bursts of 5 s); past it its stream is ended.",
)
@click.option(
    "--agent-bytes-per-second",
    type=click.FloatRange(min=1024.0),
    default=CollectorLimits.agent_bytes_per_second,
    show_default=True,
    help="Sustained bytes per second one agent may send (bursts of 5 s).",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(64 * 1024),
    default=CollectorLimits.max_message_bytes,
    show_default=True,
    help="Largest single message from an agent (a local snapshot with its states).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate chain: serve TLS only.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert.")
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False),
    help="PEM CA: require every agent and reader to present a certificate it signed (mutual TLS).",
)
@click.option(
    "--agent-token-file",
    multiple=True,
    type=click.Path(dir_okay=False),
    help=f"A file holding a token agents must present (repeatable; also ${AGENT_TOKEN_ENV}).",
)
@click.option(
    "--reader-token-file",
    multiple=True,
    type=click.Path(dir_okay=False),
    help=f"A file holding a token readers (snapshot, cuts, check...) must present (repeatable; "
    f"also ${READER_TOKEN_ENV}).",
)
@click.option(
    "--predicates",
    multiple=True,
    metavar="FILE_OR_MODULE",
    help="A local file or module of @cutwatch.invariant predicates, checked on every COMPLETE cut "
    "(repeatable).",
)
@click.option(
    "--predicate-timeout",
    callback=_duration,
    default="5s",
    metavar="DURATION",
    help="Longest a predicate may run on one cut before it is stopped and reported as an error.",
)
@click.option("-q", "--quiet", is_flag=True, help="Log warnings only.")
def collector(
    listen: str,
    db: str,
    every: float | None,
    snapshot_timeout: float,
    rejoin_grace: float,
    max_agents: int,
    agent_events_per_second: float,
    agent_bytes_per_second: float,
    max_message_bytes: int,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    agent_token_file: tuple[str, ...],
    reader_token_file: tuple[str, ...],
    predicates: tuple[str, ...],
    predicate_timeout: float,
    quiet: bool,
) -> None:
    """Run a collector until interrupted (Ctrl-C or SIGTERM).

    Without tokens or TLS it trusts every peer that can reach it, which is
    why it listens on loopback by default; see docs/security.md.
    """
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        security = CollectorSecurity.from_files(
            agent_tokens=_env_tokens(AGENT_TOKEN_ENV),
            reader_tokens=_env_tokens(READER_TOKEN_ENV),
            agent_token_files=agent_token_file,
            reader_token_files=reader_token_file,
            cert_file=tls_cert,
            key_file=tls_key,
            client_ca_file=tls_client_ca,
        )
        limits = CollectorLimits(
            max_agents=max_agents,
            max_message_bytes=max_message_bytes,
            agent_events_per_second=agent_events_per_second,
            agent_bytes_per_second=agent_bytes_per_second,
        )
        server = CollectorServer(
            db,
            listen=listen,
            every=every,
            snapshot_timeout=snapshot_timeout,
            rejoin_grace=rejoin_grace,
            limits=limits,
            security=security,
            predicates=predicates,
            predicate_timeout=predicate_timeout,
        ).start()
    except (OSError, CutwatchError, ValueError) as exc:
        click.echo(f"cutwatch: cannot start the collector: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    click.echo(f"cutwatch collector listening on {server.address}, storing cuts in {db}", err=True)
    on = [name.replace("_", " ") for name, enabled in security.describe().items() if enabled]
    click.echo(f"security: {', '.join(on) or 'none (plaintext, no tokens: loopback use only)'}", err=True)
    if predicates:
        click.echo(f"checking the predicates of {', '.join(predicates)} on every COMPLETE cut", err=True)
    if every:
        click.echo(f"taking a snapshot every {every:g} s", err=True)
    while not stop.wait(0.5):
        pass
    click.echo("cutwatch collector stopping", err=True)
    server.stop()


@click.command()
@_collector_option
@_client_options
@click.option(
    "--timeout",
    callback=_duration,
    default="10s",
    metavar="DURATION",
    show_default=True,
    help="How long to wait for the cut.",
)
@_json_option
def snapshot(address: str, credentials: CollectorCredentials, timeout: float, as_json: bool) -> None:
    """Take a snapshot now and print its cut; exit 0 when it is COMPLETE."""
    with CollectorClient(address, credentials=credentials) as client:
        try:
            cut = client.snapshot(timeout=timeout)
        except CollectorError as exc:
            _fail(exc)
    click.echo(json.dumps(cut.to_json(), indent=2, sort_keys=True) if as_json else format_cut(cut))
    sys.exit(0 if cut.complete else EXIT_NEGATIVE)


@click.command()
@_collector_option
@_client_options
@click.option("--status", "status_", type=click.Choice(["COMPLETE", "INCOMPLETE"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--epoch", type=click.IntRange(1), default=None, help="Show this cut in full.")
@_json_option
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
@_client_options
@_json_option
def status(address: str, credentials: CollectorCredentials, as_json: bool) -> None:
    """Show the agents registered with the collector and its counters."""
    with CollectorClient(address, credentials=credentials) as client:
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
        name, service = shown(agent["process"]), shown(agent["service"])
        click.echo(f"  {name:<30} {service:<16} since {_when(agent['connected_at'])}")
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


def format_results(checked: CheckResults) -> str:
    """Check results as a person reads them: one line each, the failures' messages below."""
    lines = [f"checks of snapshot {checked.epoch} ({checked.cut_status})"]
    for result in checked.results:
        lines.append(f"  {result.status:<5}  {result.name}")
    for result in checked.results:
        if result.status != "PASS" and result.message:
            lines.append("")
            lines.append(f"{result.name}: {result.status}")
            lines.extend("  " + line for line in result.message.splitlines())
    return "\n".join(lines)


def _check_exit(checked: CheckResults) -> int:
    if checked.failed:
        return EXIT_NEGATIVE
    return EXIT_CHECK_ERROR if checked.errors else 0


@click.command()
@_collector_option
@_client_options
@click.option(
    "--epoch", type=click.IntRange(1), default=None, help="The results of this cut (default: the newest)."
)
@click.option(
    "--follow", is_flag=True, help="Then print every failed check as it is found, until interrupted."
)
@_json_option
def check(
    address: str, credentials: CollectorCredentials, epoch: int | None, follow: bool, as_json: bool
) -> None:
    """Predicate and deadlock results of the newest checked cut; exit 0 when every check holds."""
    with CollectorClient(address, credentials=credentials) as client:
        try:
            checked = client.results(epoch)
        except CollectorError as exc:
            _fail(exc)
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
        _fail(exc)
    except KeyboardInterrupt:
        return


@click.command()
@_collector_option
@_client_options
@click.option("--now", is_flag=True, help="Take a snapshot first instead of reading the newest checked cut.")
@click.option("--timeout", type=str, callback=_duration, default="10s", metavar="DURATION", help="For --now.")
@_json_option
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
            _fail(exc)
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
