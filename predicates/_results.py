"""Running one predicate on one cut: its result, its witness as JSON, its memory across cuts.

The engine runs predicates through :func:`run_invariant` in its worker
process; :func:`check` runs one in this process, for tests of predicate
files against hand-built cuts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cutwatch.core import Cut, InTransitMessage
from cutwatch.predicates._api import (
    ERROR,
    FAIL,
    INCONCLUSIVE,
    PASS,
    Holds,
    Invariant,
    Violation,
    _memory,
    invariants_of,
)

__all__ = [
    "DEFAULT_MAX_MEMORY_BYTES",
    "DEFAULT_MAX_WITNESS_BYTES",
    "PredicateResult",
    "check",
    "run_invariant",
]

DEFAULT_MAX_WITNESS_BYTES = 256 * 1024
"""A witness larger than this (as JSON) is replaced by a marker saying so: results stay bounded."""
DEFAULT_MAX_MEMORY_BYTES = 1024 * 1024
"""A predicate's memory larger than this (as JSON) makes that evaluation an ERROR."""
MAX_ERROR_CHARS = 4000
_MAX_DEPTH = 32


@dataclass(frozen=True)
class PredicateResult:
    """One predicate on one cut: what the collector stores and ``cutwatch check`` prints.

    ``witness`` is a JSON object: for FAIL what makes the predicate fail, for
    PASS optional evidence, for ERROR empty. ``error`` is the exception (with
    its traceback), or why the worker was killed, for ERROR only.
    """

    name: str
    status: str
    epoch: int
    witness: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    error: str = ""
    duration: float = 0.0
    """Seconds the predicate ran (for a timeout, until it was killed)."""

    @property
    def ok(self) -> bool:
        return self.status == PASS

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "epoch": self.epoch,
            "witness": dict(self.witness),
            "message": self.message,
            "error": self.error,
            "duration": self.duration,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PredicateResult:
        status = str(doc["status"])
        if status not in (PASS, FAIL, ERROR, INCONCLUSIVE):
            raise ValueError(f"not a predicate status: {status!r}")
        witness = doc.get("witness") or {}
        return cls(
            name=str(doc["name"]),
            status=status,
            epoch=int(doc.get("epoch", 0)),
            witness=dict(witness) if isinstance(witness, Mapping) else {"value": witness},
            message=str(doc.get("message", "")),
            error=str(doc.get("error", "")),
            duration=float(doc.get("duration", 0.0)),
        )


def to_json_value(value: Any, _depth: int = 0) -> Any:
    """``value`` as plain JSON data: messages and dataclasses as objects, sets as sorted lists,
    non-string keys and anything else unknown as text. Witnesses go through this, so a predicate
    can put what it has at hand (an ``InTransitMessage``, a tuple key) into one."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth >= _MAX_DEPTH:
        return "..."
    if isinstance(value, InTransitMessage):
        return to_json_value(value.to_json(), _depth + 1)
    if isinstance(value, Mapping):
        return {_key_text(k): to_json_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_json_value(v, _depth + 1) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value(dataclasses.asdict(value), _depth + 1)
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        try:
            rendered = to_json()
        except Exception as exc:  # a witness must never turn a FAIL into an ERROR
            return f"{value!r} (to_json failed: {exc!r})"
        return to_json_value(rendered, _depth + 1)
    return repr(value)


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key):
        return f"{key[0]} -> {key[1]}"  # a channel
    return str(key)


def _bounded_witness(witness: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    data = to_json_value(witness)
    text = json.dumps(data, sort_keys=True)
    if len(text) <= max_bytes:
        return dict(data)
    return {"cutwatch": "truncated", "bytes": len(text), "keys": sorted(data)[:50]}


def _error_text(exc: BaseException, skip_frames: int = 0) -> str:
    """The traceback as text, without the engine's own frames (``skip_frames``), tail-capped."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
    return text if len(text) <= MAX_ERROR_CHARS else "...\n" + text[-MAX_ERROR_CHARS:]


def run_invariant(
    spec: Invariant,
    cut: Cut,
    state: dict[str, Any] | None,
    *,
    max_witness_bytes: int = DEFAULT_MAX_WITNESS_BYTES,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> tuple[PredicateResult, dict[str, Any] | None]:
    """Run one predicate in this process: its result, and its new memory (None after an ERROR).

    The predicate works on a copy of ``state``, so an ERROR leaves the memory
    as it was. Exceptions (``SystemExit`` too) become an ERROR result. On a
    cut with untracked changes it does not run: INCONCLUSIVE, memory as it was.
    """
    if cut.untracked:
        changes = ", ".join(f"{process} ({count})" for process, count in sorted(cut.untracked.items()))
        message = (
            f"not run: state changed without a stamp during this snapshot at {changes}; the cut cannot "
            "place such changes, so what its states add up to is not exact"
        )
        return PredicateResult(spec.name, INCONCLUSIVE, cut.epoch, message=message), None
    mem: dict[str, Any] = copy.deepcopy(state) if state else {}
    token = _memory.set(mem)
    start = time.perf_counter()
    try:
        returned = spec.func(cut, mem) if spec.takes_memory else spec.func(cut)
    except (Exception, SystemExit) as exc:
        duration = time.perf_counter() - start
        failed = PredicateResult(spec.name, ERROR, cut.epoch, error=_error_text(exc, 1), duration=duration)
        return failed, None
    finally:
        _memory.reset(token)
    duration = time.perf_counter() - start

    def error(text: str) -> tuple[PredicateResult, None]:
        return PredicateResult(spec.name, ERROR, cut.epoch, error=text, duration=duration), None

    if isinstance(returned, bool):
        status, witness, message = (PASS, {}, "") if returned else (FAIL, {}, "returned False (no witness)")
    elif isinstance(returned, (Holds, Violation)):
        status = PASS if isinstance(returned, Holds) else FAIL
        raw: Any = returned.witness
        if not isinstance(raw, Mapping):
            return error(f"the witness must be a mapping, not {type(raw).__name__}")
        witness, message = _bounded_witness(returned.witness, max_witness_bytes), str(returned.message)
    else:
        hint = " (a missing return?)" if returned is None else ""
        return error(
            f"returned {type(returned).__name__}{hint}: a predicate returns True/False, "
            "holds(...) or violation(...)"
        )
    try:
        mem_text = json.dumps(mem, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return error(f"its memory is not JSON-serialisable: {exc}")
    if len(mem_text) > max_memory_bytes:
        return error(f"its memory is {len(mem_text)} bytes as JSON, over the limit of {max_memory_bytes}")
    result = PredicateResult(spec.name, status, cut.epoch, witness, message, duration=duration)
    return result, json.loads(mem_text)


def check(
    predicate: Callable[..., Any] | Invariant, cut: Cut, *, memory: dict[str, Any] | None = None
) -> PredicateResult:
    """Run a predicate on ``cut`` in this process, as the engine would (without the isolation).

    For tests of predicate files against hand-built cuts. ``memory`` (a dict
    the caller keeps between calls) is updated in place when the run ends in
    PASS or FAIL, like the engine's memory across cuts.
    """
    if isinstance(predicate, Invariant):
        spec = predicate
    else:
        specs = invariants_of(predicate)
        if len(specs) != 1:
            raise TypeError(
                f"{getattr(predicate, '__name__', predicate)!r} is declared {len(specs)} times with "
                "@invariant; pass one of invariants_of(func)"
                if specs
                else f"{getattr(predicate, '__name__', predicate)!r} is not decorated with @invariant"
            )
        spec = specs[0]
    result, new_memory = run_invariant(spec, cut, memory)
    if memory is not None and new_memory is not None:
        memory.clear()
        memory.update(new_memory)
    return result
