"""One WARNING line per failed or erroring check, so that an operator reading the log sees it.

A deadlock names the processes along its cycle (``a -> b -> a``); an
invariant its name, its message's first line (an error's exception) and
the witness's size (the witness itself is stored with the result:
``cutwatch check``). Each line
also carries the facts as ``extra`` fields (``epoch``, ``check``,
``status``, ``cut_status``, ``witness_bytes``, and ``processes`` for a
deadlock), which ``--log-format json`` writes as keys of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cutwatch.collector._records import StoredResult
from cutwatch.core import shown

__all__ = ["log_failures", "summary"]

_LOG = logging.getLogger("cutwatch.collector.checks")
DEADLOCK_CHECK = "cutwatch.deadlock"
_MAX_CHAINS = 3
_MAX_STEPS = 8


def log_failures(results: Sequence[StoredResult], cut_status: str) -> None:
    """Log every FAIL and ERROR of ``results``; never raises (a log line must not lose a result)."""
    for result in results:
        if result.status not in ("FAIL", "ERROR"):
            continue
        try:
            text, extra = summary(result)
            _LOG.warning(
                "%s %s on cut %d (%s): %s",
                shown(result.name, 100),
                result.status,
                result.epoch,
                cut_status,
                text,
                extra={**extra, "cut_status": cut_status},
            )
        except Exception:
            _LOG.exception("logging the result of %s on cut %d failed", shown(result.name), result.epoch)


def summary(result: StoredResult) -> tuple[str, dict[str, Any]]:
    """The one-line text of a failed or erroring result, and its structured fields."""
    extra: dict[str, Any] = {
        "epoch": result.epoch,
        "check": result.name,
        "status": result.status,
        "witness_bytes": len(result.witness_json.encode()),
    }
    if result.name == DEADLOCK_CHECK and result.status == "FAIL":
        chains = _chains(result.witness)
        extra["processes"] = sorted(
            {process for chain in chains for process in chain} | _reported_processes(result.witness)
        )
        shown_chains = "; ".join(_chain_text(chain) for chain in chains[:_MAX_CHAINS])
        more = f"; and {len(chains) - _MAX_CHAINS} more" if len(chains) > _MAX_CHAINS else ""
        count = f"{len(chains)} deadlock{'s' if len(chains) != 1 else ''}"
        return f"{count}: {shown_chains}{more}", extra
    return f"{_one_line(result.message)} (witness: {extra['witness_bytes']} bytes)", extra


def _one_line(message: str) -> str:
    """A message's first line; a traceback's last (the exception, which says what went wrong)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    return shown(lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0], 300)


def _chains(witness: Any) -> list[list[str]]:
    """Per deadlock of a witness, the processes along its cycle, each run of one process once."""
    chains: list[list[str]] = []
    for report in witness if isinstance(witness, list) else []:
        if not isinstance(report, dict):
            continue
        # A cycle of more than 500 steps is stored as its first steps and its last two.
        cycle = [*(report.get("cycle") or []), *(report.get("cycle_end") or [])]
        steps = [str(step.get("process", "?")) for step in cycle if isinstance(step, dict)]
        chain = [p for i, p in enumerate(steps) if i == 0 or p != steps[i - 1]]
        if len(chain) > 1 and chain[-1] == chain[0]:
            chain.pop()
        if chain:
            chains.append(chain)
    return chains


def _reported_processes(witness: Any) -> set[str]:
    """Every process a deadlock report names, including those of the steps it leaves out."""
    found: set[str] = set()
    for report in witness if isinstance(witness, list) else []:
        names = report.get("processes") if isinstance(report, dict) else None
        found.update(str(name) for name in names or [] if isinstance(names, list))
    return found


def _chain_text(chain: list[str]) -> str:
    """``a -> b -> a``: the cycle back to where it starts, long ones shortened."""
    names = [shown(p, 100) for p in chain]
    if len(names) > _MAX_STEPS:
        names = [*names[: _MAX_STEPS - 2], f"... {len(names) - _MAX_STEPS + 1} more ...", names[-1]]
    return " -> ".join([*names, names[0]])
