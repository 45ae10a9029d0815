"""What the commands share: exit codes, durations, how to reach a collector, --json, failing."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from cutwatch.collector import DEFAULT_LISTEN, CollectorError, CollectorUnavailableError
from cutwatch.security import TOKEN_ENV, CollectorCredentials, SecurityConfigError

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
    default=lambda: os.environ.get(ENV_COLLECTOR, DEFAULT_LISTEN),
    show_default=f"${ENV_COLLECTOR} or {DEFAULT_LISTEN}",
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


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (stable format) instead of text."
)


def fail(exc: CollectorError) -> NoReturn:
    click.echo(f"cutwatch: {exc}", err=True)
    sys.exit(EXIT_UNREACHABLE if isinstance(exc, CollectorUnavailableError) else EXIT_REFUSED)


def env_tokens(name: str) -> tuple[str, ...]:
    value = os.environ.get(name, "").strip()
    return (value,) if value else ()
