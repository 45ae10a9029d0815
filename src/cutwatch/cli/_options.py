"""What the commands share: exit codes, durations, how to reach a collector, --json, failing.

The exit codes and the ``--json`` documents form one contract, tabulated in
docs/collector.md ("The command-line contract") and tested against that table.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from cutwatch._environment import COLLECTOR_ENV, env_value
from cutwatch.collector import (
    DEFAULT_LISTEN,
    CollectorAuthError,
    CollectorClient,
    CollectorError,
    CollectorUnavailableError,
)
from cutwatch.security import (
    AGENT_TOKEN_ENV,
    DEPRECATED_READER_TOKEN_ENV,
    READER_TOKEN_ENV,
    CollectorCredentials,
    SecurityConfigError,
    deprecated_token_notice,
    reader_token_from_env,
)

__all__ = [
    "AGENT_TOKEN_ENV",
    "COLLECTOR_ENV",
    "EXIT_CHECK_ERROR",
    "EXIT_NEGATIVE",
    "EXIT_NO_CUT",
    "EXIT_REFUSED",
    "EXIT_START_FAILED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "READER_TOKEN_ENV",
    "client_options",
    "collector_option",
    "duration",
    "emit",
    "env_tokens",
    "error_document",
    "fail",
    "give_up",
    "json_option",
    "parse_duration",
]

EXIT_NEGATIVE = 1
"""The answer is negative: an INCOMPLETE cut, a violation, a deadlock."""
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
"""The collector cannot be reached (nothing listens, or the TLS handshake fails)."""
EXIT_REFUSED = 4
"""The collector refused the request (a missing or wrong token, or another error status); for
``cuts prune``, the store file refused the prune (locked by another writer, not writable)."""
EXIT_CHECK_ERROR = 5
"""No conclusion: a check raised, timed out or is INCONCLUSIVE, or an INCOMPLETE cut cannot rule out
a deadlock."""
EXIT_START_FAILED = 6
"""``cutwatch collector`` could not start (address taken, store unusable, predicates that do not load)."""
EXIT_NO_CUT = 7
"""Nothing to answer from: no cut (checked) yet, no cut of that epoch, or no agent to take one of."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``500ms``, ``5s``, ``2m``, ``12h``, ``7d``, ``2w`` or a plain number of seconds.

    The one parser of every duration option, timeouts and retention ages alike.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (try 500ms, 5s, 2m, 12h, 7d, 2w)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds < float("inf"):
        raise ValueError("a duration must be positive and finite")
    return seconds


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: a duration option's seconds (None stays None)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


collector_option = click.option(
    "--collector",
    "address",
    default=lambda: env_value(COLLECTOR_ENV) or DEFAULT_LISTEN,
    show_default=f"${COLLECTOR_ENV} or {DEFAULT_LISTEN}",
    help="The collector's host:port.",
)


def client_options(command: Callable[..., None]) -> Callable[..., None]:
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
        token = None
        if token_file is None:
            token, source = reader_token_from_env()
            if source == DEPRECATED_READER_TOKEN_ENV:
                click.echo(f"cutwatch: {deprecated_token_notice(source)}", err=True)
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
            help=f"A file holding the reader token (default: the token in ${READER_TOKEN_ENV}, if set).",
        ),
        click.option("--ca-cert", type=click.Path(dir_okay=False), help="PEM CA certificate: use TLS."),
        click.option("--cert", type=click.Path(dir_okay=False), help="PEM client certificate (mutual TLS)."),
        click.option("--key", type=click.Path(dir_okay=False), help="PEM private key of --cert."),
        click.option("--server-name", help="Name to check the collector's certificate against."),
    ]
    for option in reversed(options):
        run = option(run)
    return run


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document on stdout (stable format; errors too) instead of text.",
)


def error_document(kind: str, message: str, exit_code: int) -> str:
    """The one JSON document a command prints with ``--json`` when it has no answer."""
    return json.dumps({"error": {"kind": kind, "message": message, "exit_code": exit_code}}, sort_keys=True)


def emit(doc: Any, *, indent: int | None = 2) -> None:
    """Print an answer's JSON document on stdout."""
    click.echo(json.dumps(doc, indent=indent, sort_keys=True))


def give_up(kind: str, message: str, exit_code: int, as_json: bool) -> NoReturn:
    """End a command that has no answer: the message on stderr, with ``--json`` its error document
    on stdout too, and the exit code that says why."""
    click.echo(f"cutwatch: {message}", err=True)
    if as_json:
        click.echo(error_document(kind, message, exit_code))
    sys.exit(exit_code)


def fail(exc: CollectorError, as_json: bool, snapshot_of: CollectorClient | None = None) -> NoReturn:
    """End a command whose call to the collector failed; ``snapshot_of``: the call was its snapshot.

    A snapshot that finds no agent to take is told apart from other refusals by asking the
    collector whom it knows, so that the answer agrees with ``cutwatch status``.
    """
    if isinstance(exc, CollectorUnavailableError):
        give_up("unreachable", str(exc), EXIT_UNREACHABLE, as_json)
    if snapshot_of is not None and not isinstance(exc, CollectorAuthError):
        try:
            known = snapshot_of.status()
        except CollectorError:
            known = None
        if known is not None and not known.get("agents") and not known.get("absent"):
            message = "no agent is registered with the collector, so there is no cut to take"
            give_up("no_agent", message, EXIT_NO_CUT, as_json)
    give_up("refused", str(exc), EXIT_REFUSED, as_json)


def env_tokens(name: str) -> tuple[str, ...]:
    """The token in the variable ``name`` (read as the agent reads it), as the collector takes tokens."""
    value = env_value(name)
    return (value,) if value is not None else ()
