"""Views over a cut and the helpers that make common invariants one-liners with witnesses.

The views group what a :class:`~cutwatch.core.Cut` holds the ways
invariants read it: states by service, in-transit messages by channel and
by RPC method, lock holders and waiters. The helpers (:func:`conservation`,
:func:`at_most_one`) return :class:`Holds`/:class:`Violation`, so a
predicate is ``return conservation(cut, state="balance", payload="amount")``
and a failure already names the processes, messages and values involved.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cutwatch.core import Cut, InTransitMessage
from cutwatch.predicates._api import Holds, Violation
from cutwatch.predicates._api import memory as _current_memory

__all__ = [
    "as_number",
    "at_most_one",
    "conservation",
    "lock_holders",
    "lock_waiters",
    "lookup",
    "messages_by_channel",
    "messages_by_method",
    "service_of",
    "state_values",
    "states_by_service",
]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""What :func:`lookup` returns for a path that is not there (when no default is given)."""


# Views ---------------------------------------------------------------------------------------------
def lookup(value: Any, path: str, default: Any = MISSING) -> Any:
    """The value at a dotted ``path`` in nested mappings (``"account.balance"``); a number in the
    path indexes a list (``"replicas.0.role"``). ``default`` (or :data:`MISSING`) when absent."""
    current = value
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return default
            current = current[part]
        elif isinstance(current, Sequence) and not isinstance(current, (str, bytes)) and part.isdigit():
            index = int(part)
            if index >= len(current):
                return default
            current = current[index]
        else:
            return default
    return current


def service_of(cut: Cut, process: str) -> str:
    """The service name of ``process`` ("" when the cut does not know it)."""
    entry = cut.states.get(process)
    return str(entry.get("service", "")) if isinstance(entry, Mapping) else ""


def states_by_service(cut: Cut) -> dict[str, dict[str, Mapping[str, Any]]]:
    """``{service: {process: {provider: value}}}``."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for process in sorted(cut.states):
        out.setdefault(service_of(cut, process), {})[process] = cut.state_of(process)
    return out


def state_values(cut: Cut, path: str, *, services: Iterable[str] | str | None = None) -> dict[str, Any]:
    """``{process: value}`` of the state at ``path`` (``"balance"``, ``"raft.role"``), for the
    processes that have it, optionally only those of ``services``."""
    wanted = _names(services)
    out: dict[str, Any] = {}
    for process in sorted(cut.states):
        if wanted is not None and service_of(cut, process) not in wanted:
            continue
        value = lookup(cut.state_of(process), path)
        if value is not MISSING:
            out[process] = value
    return out


def messages_by_channel(cut: Cut) -> dict[tuple[str, str], list[InTransitMessage]]:
    """In-transit messages by channel ``(sender, receiver)``."""
    out: dict[tuple[str, str], list[InTransitMessage]] = {}
    for message in cut.in_transit:
        out.setdefault((message.sender, message.receiver), []).append(message)
    return out


def messages_by_method(cut: Cut) -> dict[str, list[InTransitMessage]]:
    """In-transit messages by full RPC method name (``"/bank.Bank/Credit"``)."""
    out: dict[str, list[InTransitMessage]] = {}
    for message in cut.in_transit:
        out.setdefault(message.method, []).append(message)
    return out


def _tasks_by_lock(cut: Cut, holding: bool) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for process in sorted(cut.tasks):
        for task in cut.tasks[process]:
            if holding:
                names: tuple[str, ...] = task.held_locks
            else:
                names = (task.waiting_lock,) if task.waiting_lock else ()
            for name in names:
                out.setdefault((process, name), []).append(task.task_id)
    return out


def lock_holders(cut: Cut) -> dict[tuple[str, str], list[int]]:
    """``{(process, lock): [task ids holding it]}``; cutwatch locks belong to one process each."""
    return _tasks_by_lock(cut, holding=True)


def lock_waiters(cut: Cut) -> dict[tuple[str, str], list[int]]:
    """``{(process, lock): [task ids waiting for it]}``."""
    return _tasks_by_lock(cut, holding=False)


def as_number(value: Any, what: str = "value") -> int | float:
    """``value`` as a number to add up: an int or float, a numeric string (protobuf's JSON renders
    64-bit integers as strings), or a mapping/list of those (summed). Raises ``TypeError``."""
    if isinstance(value, bool):
        raise TypeError(f"{what} is a bool ({value!r}), not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{what} is {value!r}, not a finite number")
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return as_number(float(value), what)
        except ValueError:
            raise TypeError(f"{what} is the text {value[:40]!r}, not a number") from None
    if isinstance(value, Mapping):
        return sum((as_number(v, f"{what}[{k!r}]") for k, v in value.items()), 0)
    if isinstance(value, (list, tuple)):
        return sum((as_number(v, f"{what}[{i}]") for i, v in enumerate(value)), 0)
    raise TypeError(f"{what} is a {type(value).__name__}, not a number")


def _names(values: Iterable[str] | str | None) -> frozenset[str] | None:
    if values is None:
        return None
    return frozenset([values] if isinstance(values, str) else (str(v) for v in values))


def _method_matches(method: str, wanted: frozenset[str]) -> bool:
    """``/bank.Bank/Credit`` matches itself, ``bank.Bank/Credit`` and ``Credit``."""
    return method in wanted or any(method.endswith("/" + w.lstrip("/")) for w in wanted)


def _is_marker(payload: Any) -> bool:
    """A payload the agent did not capture (a stream, too large, unrenderable)."""
    return isinstance(payload, Mapping) and len(payload) <= 3 and isinstance(payload.get("cutwatch"), str)


def _message_ref(message: InTransitMessage) -> dict[str, Any]:
    return {
        "sender": message.sender,
        "receiver": message.receiver,
        "method": message.method,
        "kind": message.kind,
        "call_id": message.call_id,
        "attempt": message.attempt,
    }


def _close(a: float, b: float, tolerance: float) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)


# Conservation --------------------------------------------------------------------------------------
def conservation(
    cut: Cut,
    *,
    state: str,
    payload: str | None = None,
    total: float | None = None,
    services: Iterable[str] | str | None = None,
    methods: Iterable[str] | str | None = None,
    kinds: Iterable[str] | str | None = None,
    tolerance: float = 1e-9,
    key: str | None = None,
    memory: dict[str, Any] | None = None,
) -> Holds | Violation:
    """A quantity is conserved: the sum of ``state`` over the processes plus the sum of ``payload``
    over the in-transit messages equals ``total`` or, with ``total=None``, the previous cut's sum.

    ``state`` and ``payload`` are dotted paths (``"balance"``, ``"account.balance"``); a value
    may be a number, a numeric string or a mapping/list of numbers (summed: ``{"acct1": 5,
    "acct2": 7}``). Processes without ``state`` and messages without ``payload`` are not
    counted; a call's message counts once however many of its attempts are in transit (a retry
    recorded at two servers). ``services`` keeps the processes of those services (and messages *to* them);
    ``methods`` (``"/bank.Bank/Credit"`` or ``"Credit"``) and ``kinds`` (``"request"``,
    ``"response"``) select messages. A message of a selected method whose payload the agent did
    not capture (a stream, a truncated payload) makes the result unknowable: ``ValueError``.

    With ``total=None`` the first cut sets the baseline; each later cut compares with the one
    before it (a leak is reported once, at the first cut that shows it). The previous sum lives
    in the predicate's memory under ``key`` (derived from the arguments when None); pass
    ``memory=`` to call this outside a running predicate.
    """
    wanted_services = _names(services)
    wanted_methods = _names(methods)
    wanted_kinds = _names(kinds)

    per_process: dict[str, int | float] = {}
    without: list[str] = []
    for process in sorted(cut.states):
        if wanted_services is not None and service_of(cut, process) not in wanted_services:
            continue
        value = lookup(cut.state_of(process), state)
        if value is MISSING or value is None:
            without.append(process)
            continue
        per_process[process] = as_number(value, f"state {state!r} of {process}")
    if not per_process:
        where = f" of services {sorted(wanted_services)}" if wanted_services is not None else ""
        raise ValueError(
            f"no process{where} has the state {state!r} ({len(cut.states)} processes in the cut): "
            "a misspelt provider name would make the sum 0 and the check meaningless"
        )

    counted: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []
    once: set[tuple[str, int, str, int]] = set()
    if payload is not None:
        for message in cut.in_transit:
            # Two attempts of one call in transit (a retry recorded at two servers, a hedge): the call
            # carries its value once, so its message counts once.
            caller = message.sender if message.kind == "request" else message.receiver
            call = (caller, message.call_id, message.kind, message.index)
            if call in once:
                continue
            once.add(call)
            if wanted_methods is not None and not _method_matches(message.method, wanted_methods):
                continue
            if wanted_kinds is not None and message.kind not in wanted_kinds:
                continue
            if wanted_services is not None and service_of(cut, message.receiver) not in wanted_services:
                continue
            if _is_marker(message.payload):
                ref = _message_ref(message) | {"payload": message.payload}
                if wanted_methods is not None:
                    raise ValueError(
                        f"the payload of an in-transit {message.method} {message.kind} was not captured "
                        f"({message.payload}), so the sum cannot be known: {ref}"
                    )
                unreadable.append(ref)
                continue
            value = lookup(message.payload, payload)
            if value is MISSING or value is None:
                continue
            where = f"payload {payload!r} of {message.method} {message.kind} "
            where += f"{message.sender} -> {message.receiver}"
            counted.append(_message_ref(message) | {"value": as_number(value, where)})

    states_sum = sum(per_process.values(), 0)
    transit_sum = sum((m["value"] for m in counted), 0)
    actual = states_sum + transit_sum
    described = f"{state} over {len(per_process)} processes"
    if payload is not None:
        described += f" plus {payload} over {len(counted)} in-transit messages"

    previous: Mapping[str, Any] | None = None
    if total is None:
        store = memory if memory is not None else _memory_or_explain()
        selection = [sorted(wanted_services or ()), sorted(wanted_methods or ()), sorted(wanted_kinds or ())]
        slot = key or "conservation:" + json.dumps([state, payload, *selection])
        found = store.get(slot)
        store[slot] = {"epoch": cut.epoch, "sum": actual}
        if not isinstance(found, Mapping) or not isinstance(found.get("sum"), (int, float)):
            return Holds(
                {"sum": actual, "states_sum": states_sum, "in_transit_sum": transit_sum, "baseline": True},
                f"first cut: {described} is {actual}; later cuts must keep it",
            )
        previous = found
        expected: int | float = found["sum"]
    else:
        expected = total

    summary: dict[str, Any] = {
        "expected": expected,
        "sum": actual,
        "states_sum": states_sum,
        "in_transit_sum": transit_sum,
    }
    if previous is not None:
        summary["previous_epoch"] = previous.get("epoch")
    if _close(actual, expected, tolerance):
        return Holds(summary | {"processes": len(per_process), "messages": len(counted)})

    since = f" as at epoch {previous.get('epoch')}" if previous is not None else ""
    witness = summary | {
        "difference": actual - expected,
        "state": state,
        "payload": payload,
        "processes": per_process,
        "messages": counted,
    }
    if without:
        witness["without_state"] = without
    if unreadable:
        witness["unreadable_messages"] = unreadable
    return Violation(
        witness, f"{described} is {actual}, expected {expected}{since} (difference {actual - expected:+})"
    )


def _memory_or_explain() -> dict[str, Any]:
    try:
        return _current_memory()
    except RuntimeError:
        raise RuntimeError(
            "conservation(total=None) compares with the previous cut, which needs the predicate's "
            "memory: run it through the engine or check(), or pass memory="
        ) from None


# At most one ---------------------------------------------------------------------------------------
def _same(found: Any, value: Any) -> bool:
    """Equality where ``True`` is not ``1``: a leader flag compares with booleans only."""
    if isinstance(value, bool) or isinstance(found, bool):
        return isinstance(value, bool) and isinstance(found, bool) and found is value
    return bool(found == value)


def _group_name(group: Any) -> str:
    return group if isinstance(group, str) else json.dumps(group, sort_keys=True, default=str)


def at_most_one(
    cut: Cut,
    *,
    state: str,
    value: Any = True,
    services: Iterable[str] | str | None = None,
    per: str | None = None,
) -> Holds | Violation:
    """At most one process has ``state == value`` (``state="leader"``, or ``state="raft.role",
    value="leader"``); with ``per="raft.term"``, at most one in each group of processes with the
    same value at ``per``. A violation names every such process with its service (and group)."""
    wanted = _names(services)
    groups: dict[str, dict[str, str]] = {}
    group_values: dict[str, Any] = {}
    for process in sorted(cut.states):
        service = service_of(cut, process)
        if wanted is not None and service not in wanted:
            continue
        local = cut.state_of(process)
        if not _same(lookup(local, state), value):
            continue
        group = lookup(local, per, None) if per is not None else None
        name = _group_name(group)
        group_values[name] = group
        groups.setdefault(name, {})[process] = service

    holders = sorted(p for members in groups.values() for p in members)
    crowded = {name: members for name, members in groups.items() if len(members) > 1}
    if not crowded:
        return Holds({"state": state, "value": value, "holders": holders})
    if per is None:
        members = crowded[_group_name(None)]
        return Violation(
            {"state": state, "value": value, "count": len(members), "processes": members},
            f"{len(members)} processes have {state} == {value!r}: {', '.join(members)}",
        )
    parts = [
        f"{len(members)} with {per} == {group_values[name]!r} ({', '.join(members)})"
        for name, members in sorted(crowded.items())
    ]
    return Violation(
        {
            "state": state,
            "value": value,
            "per": per,
            "groups": {
                name: {"per_value": group_values[name], "processes": members}
                for name, members in crowded.items()
            },
        },
        f"more than one process has {state} == {value!r}: " + "; ".join(parts),
    )
