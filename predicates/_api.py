"""The predicate API: ``@invariant`` and what a predicate returns.

A predicate is a plain function of a :class:`~cutwatch.core.Cut`
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
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "ERROR",
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "Holds",
    "Invariant",
    "Verdict",
    "Violation",
    "holds",
    "invariant",
    "invariants_of",
    "memory",
    "violation",
]

PASS = "PASS"  # noqa: S105 - a status, not a password
FAIL = "FAIL"
ERROR = "ERROR"
INCONCLUSIVE = "INCONCLUSIVE"
"""Not run: the cut's states hold changes it cannot place (``Cut.untracked``), so no sum over them is
exact, and a PASS or a FAIL would mean nothing."""

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
    lattice: bool = False
    """Written in the symbolic subset (``cutwatch.predicates.lattice``): checked on every cut and on
    every consistent cut between two cuts (see docs/lattice.md)."""


# Loading: registrations made while a source is imported land in the innermost collector list.
_collecting: list[list[Invariant]] = []
_INVARIANTS_ATTR = "__cutwatch_invariants__"


def invariant(name: str, *, timeout: float | None = None, lattice: bool = False) -> Callable[[F], F]:
    """Declare ``func(cut)`` (or ``func(cut, memory)``) an invariant called ``name``.

    The function is returned unchanged, so tests can call it directly. Names
    must be unique among everything one engine loads; ``timeout`` (seconds)
    overrides the engine's default for this predicate.

    ``lattice=True``: ``func(cut)`` is written in the symbolic subset (sums,
    counts and comparisons of integer and boolean states, ``& | ~``; see
    docs/lattice.md). It is checked on each cut, and on every consistent cut
    between two cuts, from the state changes agents record: a violation that
    no snapshot sampled is still found, with the cut where it happens. A
    function outside the subset is refused when the collector loads it.
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
            lattice=bool(lattice),
        )
        if spec.lattice and spec.takes_memory:
            raise TypeError(f"invariant {name!r}: a lattice invariant takes (cut) only, no memory")
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
