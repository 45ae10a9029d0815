"""The predicate API: ``@invariant``, what a predicate returns, and its result.

A predicate is a plain function of a :class:`~cutwatch.collector.Cut`
decorated with ``@invariant(name)``. It returns ``True``/``False``, or
:func:`holds`/:func:`violation` to say *why*: the witness (the processes,
messages and values that make it fail) is stored with the result, so an
operator sees what broke, not only that something did.

A predicate may also keep a small JSON memory across cuts (``def p(cut,
memory)``, or :func:`memory` from inside a helper): the engine keeps it in
the collector's process, so a killed and restarted worker does not lose it.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import inspect
import json
import math
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cutwatch.collector import Cut, InTransitMessage

__all__ = [
    "ERROR",
    "FAIL",
    "PASS",
    "Holds",
    "Invariant",
    "PredicateResult",
    "Verdict",
    "Violation",
    "check",
    "holds",
    "invariant",
    "invariants_of",
    "memory",
    "violation",
]

PASS = "PASS"  # noqa: S105 - a status, not a password
FAIL = "FAIL"
ERROR = "ERROR"

DEFAULT_MAX_WITNESS_BYTES = 256 * 1024
"""A witness larger than this (as JSON) is replaced by a marker saying so: results stay bounded."""
DEFAULT_MAX_MEMORY_BYTES = 1024 * 1024
"""A predicate's memory larger than this (as JSON) makes that evaluation an ERROR."""
MAX_ERROR_CHARS = 4000
_MAX_DEPTH = 32

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Holds:
    """The invariant holds; ``witness`` is optional evidence (e.g. the sum that was checked)."""

    witness: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class Violation:
    """The invariant fails; ``witness`` names the processes, messages and values that make it fail."""

    witness: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""

    def __bool__(self) -> bool:
        return False


Verdict = bool | Holds | Violation
"""What a predicate may return. ``Holds`` is truthy and ``Violation`` falsy, so helpers compose
with ``and``: ``return conservation(...) and at_most_one(...)`` returns the first violation."""


def holds(message: str = "", /, **witness: Any) -> Holds:
    """``return holds("sum is 1000", sum=1000)``: a pass with evidence."""
    return Holds(witness, message)


def violation(message: str = "", /, **witness: Any) -> Violation:
    """``return violation("negative balance", processes={"bank:1": -5})``: a failure and its witness."""
    return Violation(witness, message)


@dataclass(frozen=True)
class Invariant:
    """One registered predicate: what the loader finds and the engine runs."""

    name: str
    func: Callable[..., Any]
    timeout: float | None
    """Seconds this predicate may take per cut; None: the engine's default."""
    source: str
    line: int
    takes_memory: bool


# Loading: registrations made while a source is imported land in the innermost collector list.
_collecting: list[list[Invariant]] = []
_INVARIANTS_ATTR = "__cutwatch_invariants__"


def invariant(name: str, *, timeout: float | None = None) -> Callable[[F], F]:
    """Declare ``func(cut)`` (or ``func(cut, memory)``) an invariant called ``name``.

    The function is returned unchanged, so tests can call it directly. Names
    must be unique among everything one engine loads; ``timeout`` (seconds)
    overrides the engine's default for this predicate.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(
            "@invariant needs a name: @cutwatch.invariant('bank.conservation'), not a bare @invariant"
        )
    if name != name.strip() or len(name) > 200:
        raise ValueError(f"invariant name {name!r}: no surrounding spaces, at most 200 characters")
    valid = isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0
    if timeout is not None and not valid:
        raise ValueError(f"invariant {name!r}: timeout must be a positive number of seconds, not {timeout!r}")

    def register(func: F) -> F:
        if not callable(func):
            raise TypeError(f"@invariant({name!r}) decorates a function, not {type(func).__name__}")
        spec = Invariant(
            name=name,
            func=func,
            timeout=None if timeout is None else float(timeout),
            source=_source_file(func),
            line=_source_line(func),
            takes_memory=_takes_memory(name, func),
        )
        specs = list(getattr(func, _INVARIANTS_ATTR, ()))
        specs.append(spec)
        # A builtin or slotted callable cannot carry it: the loader still sees it through the registry.
        with contextlib.suppress(AttributeError, TypeError):
            setattr(func, _INVARIANTS_ATTR, tuple(specs))
        if _collecting:
            _collecting[-1].append(spec)
        return func

    return register


def invariants_of(func: Callable[..., Any]) -> tuple[Invariant, ...]:
    """The invariants declared on ``func`` with ``@invariant`` (empty when none)."""
    specs = getattr(func, _INVARIANTS_ATTR, ())
    return tuple(s for s in specs if isinstance(s, Invariant))


@contextmanager
def collecting() -> Iterator[list[Invariant]]:
    """Gather the invariants declared while the block runs (the loader imports sources in one)."""
    found: list[Invariant] = []
    _collecting.append(found)
    try:
        yield found
    finally:
        for index in range(len(_collecting) - 1, -1, -1):
            if _collecting[index] is found:  # by identity: lists compare by content
                del _collecting[index]
                break


def _source_file(func: Callable[..., Any]) -> str:
    code = getattr(func, "__code__", None)
    return str(code.co_filename) if code is not None else str(getattr(func, "__module__", "?"))


def _source_line(func: Callable[..., Any]) -> int:
    code = getattr(func, "__code__", None)
    return int(code.co_firstlineno) if code is not None else 0


def _takes_memory(name: str, func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is inspect.Parameter.empty]
    if len(required) not in (1, 2):
        raise TypeError(f"invariant {name!r}: a predicate takes (cut) or (cut, memory), not {len(required)}")
    return len(required) == 2


# Memory --------------------------------------------------------------------------------------------
_memory: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "cutwatch_predicate_memory", default=None
)


def memory() -> dict[str, Any]:
    """The running predicate's memory: a dict kept across cuts (JSON values only).

    Changes are kept only when the evaluation ends in PASS or FAIL; after an
    ERROR the next cut sees the memory as it was before.
    """
    current = _memory.get()
    if current is None:
        raise RuntimeError(
            "no predicate is running: memory() works inside a predicate run by the engine or by "
            "cutwatch.predicates.check(); pass memory= to helpers to call them elsewhere"
        )
    return current


# Results -------------------------------------------------------------------------------------------
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
        if status not in (PASS, FAIL, ERROR):
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
    as it was. Exceptions (``SystemExit`` too) become an ERROR result.
    """
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
