"""``cutwatch collector``: run a collector until interrupted."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable

import click

from cutwatch._logformat import LOG_FORMATS, configure_logging, json_line
from cutwatch._signals import set_on_signals
from cutwatch.cli._options import (
    AGENT_TOKEN_ENV,
    EXIT_START_FAILED,
    READER_TOKEN_ENV,
    duration,
    env_tokens,
)
from cutwatch.cli._prune import keep_cuts_option, keep_for_option, retention_of
from cutwatch.collector import DEFAULT_LISTEN, CollectorLimits, CollectorServer
from cutwatch.core import CutwatchError
from cutwatch.security import CollectorSecurity

__all__ = ["collector"]


@click.command()
@click.option(
    "--listen", default=DEFAULT_LISTEN, show_default=True, help="host:port to serve on (loopback by default)."
)
@click.option("--db", default="cutwatch.db", show_default=True, help="SQLite file that keeps the cuts.")
@click.option(
    "--every",
    callback=duration,
    default=None,
    metavar="DURATION",
    help="Take a snapshot this often (e.g. 5s); default: on demand.",
)
@click.option(
    "--snapshot-timeout",
    callback=duration,
    default="10s",
    metavar="DURATION",
    show_default=True,
    help="Give up on a snapshot after this long.",
)
@click.option(
    "--rejoin-grace",
    callback=duration,
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
    callback=duration,
    default="5s",
    show_default=True,
    metavar="DURATION",
    help="Longest a predicate may run on one cut before it is stopped and reported as an error.",
)
@keep_cuts_option
@keep_for_option
@click.option("-q", "--quiet", is_flag=True, help="Warnings only, and the line saying where it listens.")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text, or json: one JSON object per line (time, level, logger, message and the event's fields).",
)
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
    keep_cuts: int | None,
    keep_for: float | None,
    quiet: bool,
    log_format: str,
) -> None:
    """Run a collector until interrupted (Ctrl-C or SIGTERM).

    Without tokens or TLS it trusts every peer that can reach it, which is
    why it listens on loopback by default; see docs/security.md.
    """
    configure_logging(logging.WARNING if quiet else logging.INFO, log_format)
    say = _say(log_format, quiet)
    try:
        security = CollectorSecurity.from_files(
            agent_tokens=env_tokens(AGENT_TOKEN_ENV),
            reader_tokens=env_tokens(READER_TOKEN_ENV),
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
            retention=retention_of(keep_cuts, keep_for),
        ).start()
    except (OSError, CutwatchError, ValueError) as exc:
        say(f"cutwatch: cannot start the collector: {exc}", logging.ERROR)
        sys.exit(EXIT_START_FAILED)
    stop = threading.Event()
    set_on_signals(stop, signal.SIGINT, signal.SIGTERM)
    say(
        f"cutwatch collector listening on {server.address}, storing cuts in {db}",
        always=True,
        address=server.address,
    )
    on = [name.replace("_", " ") for name, enabled in security.describe().items() if enabled]
    say(f"security: {', '.join(on) or 'none (plaintext, no tokens)'}")
    if predicates:
        say(f"checking the predicates of {', '.join(predicates)} on every COMPLETE cut")
    if every:
        say(f"taking a snapshot every {every:g} s")
    if server.upkeep.retention is not None:
        say(f"keeping {server.upkeep.retention.describe()}")
    while not stop.wait(0.5):
        pass
    say("cutwatch collector stopping")
    server.stop()


def _say(log_format: str, quiet: bool = False) -> Callable[..., None]:
    """The command's own notes on stderr: as they are, or as JSON lines like the log's.

    ``quiet`` keeps WARNING and above, as for the log, and the note ``always``
    asks for: where the collector listens, which scripts read the address from.
    """

    def say(text: str, level: int = logging.INFO, always: bool = False, **extra: object) -> None:
        if quiet and level < logging.WARNING and not always:
            return
        click.echo(json_line(text, level, extra) if log_format == "json" else text, err=True)

    return say
