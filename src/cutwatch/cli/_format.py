"""How the commands print cuts and check results for a person (``--json`` prints the documents)."""

from __future__ import annotations

import datetime
import json
from typing import Any

from cutwatch.collector import CheckResults, Cut
from cutwatch.core import shown

__all__ = ["format_cut", "format_results", "lattice_witness_lines", "short", "when"]


def when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def short(value: Any, width: int = 70) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_cut(cut: Cut) -> str:
    """A cut as a person reads it: status and why, states, messages in transit."""
    took = (cut.finished - cut.started) * 1000
    lines = [
        f"snapshot {cut.epoch}: {cut.status}  ({len(cut.states)} processes, "
        f"{len(cut.in_transit)} messages in transit, {took:.0f} ms, {when(cut.started)})"
    ]
    for reason in cut.reasons:
        lines.append(f"  why: {shown(reason, 2000)}")
    for other in cut.left_out:
        process, service, why = (shown(other.get(key, "")) for key in ("process", "service", "why"))
        lines.append(f"  left out: {process} ({service}): {why}")
    if cut.untracked:
        changes = ", ".join(f"{shown(p)} ({n})" for p, n in sorted(cut.untracked.items()))
        lines.append(
            f"  untracked: state changed without a stamp during the snapshot at {changes}; "
            "sums over the states are inconclusive"
        )
    if cut.states:
        lines.append("processes")
        width = max(len(shown(p)) for p in cut.states)
        for process, entry in sorted(cut.states.items()):
            tasks = len(cut.tasks.get(process, ()))
            service = shown(entry.get("service", ""))
            name = shown(process)
            lines.append(f"  {name:<{width}}  {service:<12} tasks {tasks:<3} {short(entry.get('state'))}")
    if cut.in_transit:
        lines.append("in transit")
        for m in cut.in_transit:
            what = f"{m.kind} {shown(m.method or '?')} #{m.call_id}"
            lines.append(f"  {shown(m.sender)} -> {shown(m.receiver)}  {what}  {short(m.payload, 50)}")
    if cut.duplicates:
        lines.append("duplicate deliveries (retries or hedging)")
        for d in cut.duplicates:
            lines.append(f"  call #{d['call_id']} from {shown(d['caller'])}: {shown(', '.join(d['where']))}")
    return "\n".join(lines)


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
            lines.extend(lattice_witness_lines(result.witness))
    return "\n".join(lines)


def lattice_witness_lines(witness: Any) -> list[str]:
    """The consistent cut where a lattice invariant fails, one line per process (none otherwise)."""
    window = witness.get("window") if isinstance(witness, dict) else None
    if not isinstance(window, dict) or not window.get("possibly"):
        return []
    found = window.get("witness")
    frontier = found.get("frontier") if isinstance(found, dict) else None
    if not isinstance(frontier, dict):
        return []
    lines = [f"  the consistent cut where it fails ({shown(str(window.get('decided_by', '?')))}):"]
    width = max((len(shown(p)) for p in frontier), default=0)
    for process, at in sorted(frontier.items()):
        if not isinstance(at, dict):
            continue
        seq = at.get("seq")
        where = "before any change in the window" if seq is None else f"after change #{seq}"
        values = " ".join(
            f"{shown(str(k))}={short(v, 30)}" for k, v in sorted(dict(at.get("values", {})).items())
        )
        lines.append(
            f"    {shown(process):<{width}}  {where:<32} {values}  clock {short(at.get('clock'), 60)}"
        )
    return lines
