"""The ``cutwatch`` command line.

``cutwatch collector`` runs a collector; ``cutwatch snapshot``, ``cuts``,
``status``, ``check`` and ``deadlocks`` talk to one; ``cutwatch decode-stamp`` turns a
``cutwatch-stamp-bin`` value copied from a log or a packet capture back into
something a person can read; ``cutwatch demo`` runs a small bank, a shop and a leader
lease under cutwatch as real processes and checks what it sees.

Exit codes (stable, see docs/collector.md): 0 success (``snapshot``: the cut
is COMPLETE; ``check``: every check holds; ``deadlocks``: none), 1 the
answer is negative (an INCOMPLETE cut, a violation, a deadlock), 2 bad
usage, 3 the collector cannot be reached, 4 the collector refused the
request, 5 a check could not run or conclude (a predicate raised or timed out,
or is INCONCLUSIVE on a cut with untracked changes).
"""

from __future__ import annotations

import click

import cutwatch
from cutwatch.cli._collector import collector
from cutwatch.cli._reading import check, cuts, deadlocks, snapshot, status
from cutwatch.cli._stamp import decode_stamp, describe_stamp, format_stamp, parse_stamp_text
from cutwatch.demo.run import demo

__all__ = ["describe_stamp", "format_stamp", "main", "parse_stamp_text"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(cutwatch.__version__, prog_name="cutwatch")
def main() -> None:
    """cutwatch: vector clocks and consistent cuts for gRPC services."""


@main.command()
def version() -> None:
    """Print the installed cutwatch version."""
    click.echo(f"cutwatch {cutwatch.__version__}")


for command in (collector, snapshot, cuts, status, check, deadlocks, decode_stamp, demo):
    main.add_command(command)
