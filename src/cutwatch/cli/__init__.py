"""The ``cutwatch`` command line.

``cutwatch collector`` runs a collector; ``cutwatch snapshot``, ``cuts``,
``status``, ``check`` and ``deadlocks`` talk to one; ``cutwatch cuts prune``
removes old cuts from its store file; ``cutwatch decode-stamp`` turns a
``cutwatch-stamp-bin`` value copied from a log or a packet capture back into
something a person can read; ``cutwatch demo`` runs a small bank, a shop and a leader
lease under cutwatch as real processes and checks what it sees.

Exit codes (stable; the tables of every command against every state are in
docs/collector.md, "The command-line contract"): 0 success (``snapshot``: the
cut is COMPLETE; ``check``: every check holds; ``deadlocks``: none; ``cuts
prune``: the prune ran, even if nothing was due), 1 the answer is negative (an
INCOMPLETE cut, a violation, a deadlock), 2 bad usage (``cuts prune``: also a
``--db`` file that is missing or not a cutwatch store of this version), 3 the
collector cannot be reached, 4 the request was refused (by the collector: a
missing or wrong token; ``cuts prune``: by the store file, locked by another
writer past the busy timeout or unwritable), 5 no conclusion (a check raised,
timed out or is INCONCLUSIVE; ``deadlocks --now`` on an INCOMPLETE cut that
proves none), 6 the collector could not start, 7 nothing to answer from (no
cut yet, no such cut, no agent to take one of). With ``--json`` every outcome
prints exactly one JSON document on stdout, ``{"error": {"kind", "message",
"exit_code"}}`` when there is no answer; the one exception is ``check --follow
--json``, which prints one document per line (the newest results, then each
failed check as it is found). Messages for people go to stderr.
"""

from __future__ import annotations

from typing import Any

import click

import cutwatch
from cutwatch.cli import _options
from cutwatch.cli._collector import collector
from cutwatch.cli._prune import prune
from cutwatch.cli._reading import check, cuts, deadlocks, snapshot, status
from cutwatch.cli._stamp import decode_stamp, describe_stamp, format_stamp, parse_stamp_text
from cutwatch.demo.run import demo

__all__ = ["describe_stamp", "format_stamp", "main", "parse_stamp_text"]


class _Main(click.Group):
    """The command group that keeps ``--json``'s promise for bad usage too.

    Click reports a bad option on stderr before a command runs; a command
    given ``--json`` also gets its error document on stdout.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            argv: list[str] = ctx.meta.get(_ARGV, [])
            command = self.commands.get(next((a for a in argv if not a.startswith("-")), ""))
            if "--json" in argv and command is not None and _has_json(command):
                click.echo(_options.error_document("usage", exc.format_message(), _options.EXIT_USAGE))
            raise


_ARGV = "cutwatch.argv"


def _has_json(command: click.Command) -> bool:
    return any(param.name == "as_json" for param in command.params)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(cutwatch.__version__, prog_name="cutwatch")
def main() -> None:
    """cutwatch: vector clocks and consistent cuts for gRPC services."""


@main.command()
def version() -> None:
    """Print the installed cutwatch version."""
    click.echo(f"cutwatch {cutwatch.__version__}")


for command in (collector, snapshot, cuts, status, check, deadlocks, decode_stamp, demo):
    main.add_command(command)
cuts.add_command(prune)
