"""Calls given up, at both ends: the caller's failed calls, and the fences receivers hold for them.

A call that fails without a stamped answer (a deadline, a cancellation, a
lost connection) may still have its request in a server's queue or held by
a proxy. The caller keeps it among its open calls, marked failed
(:class:`FailedCalls`), until a snapshot *fences* it: in a flush round the
collector asks every participant to refuse the call from then on
(:class:`Fences`). A request that reached a participant before the fence is
in that participant's records or answering list; one that reaches it after
is refused before the application sees it, so no cut can miss it. Once
every participant has flushed the round, the collector closes the epoch and
the caller forgets the call.

Both sides are bounded. A caller that holds more than ``max_calls`` failed
calls, or one longer than ``keep_for`` (no snapshot fenced it in that time),
gives the oldest up and counts it: a late delivery of such a call is the one
thing a cut could then miss. A receiver forgets its oldest fences past
``max_fences``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from cutwatch.core._events import OpenCall

__all__ = ["FailedCall", "FailedCalls", "Fences"]


@dataclass(frozen=True)
class FailedCall:
    call_id: int
    method: str
    target: str
    why: str
    failed_at: float


class FailedCalls:
    """This process's calls that failed without a stamped answer and that no snapshot fenced yet."""

    def __init__(self, *, max_calls: int = 10_000, keep_for: float = 600.0) -> None:
        if max_calls < 1 or keep_for <= 0:
            raise ValueError("max_calls >= 1 and keep_for > 0 are required")
        self._max = max_calls
        self._keep_for = keep_for
        self._calls: OrderedDict[int, FailedCall] = OrderedDict()
        self.given_up = 0
        """Failed calls forgotten before a snapshot fenced them (too many, or kept too long)."""

    def add(self, call_id: int, method: str, target: str, why: str, now: float) -> None:
        self._calls[call_id] = FailedCall(call_id, method, target, why or "failed", now)
        while len(self._calls) > self._max:
            self._calls.popitem(last=False)
            self.given_up += 1

    def pop(self, call_id: int) -> FailedCall | None:
        """The call settles after all (its answer arrived late): it is no longer waiting for a fence."""
        return self._calls.pop(call_id, None)

    def open_calls(self, now: float) -> list[OpenCall]:
        """The calls a local snapshot lists as failed, after giving up those kept too long."""
        while self._calls:
            oldest = next(iter(self._calls.values()))
            if now - oldest.failed_at < self._keep_for:
                break
            self._calls.popitem(last=False)
            self.given_up += 1
        return [OpenCall(c.call_id, c.method, c.target, c.why) for c in self._calls.values()]

    def forget(self, call_ids: Iterable[int]) -> None:
        """Every participant fenced these: nothing of them can reach a cut unseen any more."""
        for call_id in call_ids:
            self._calls.pop(call_id, None)

    def __len__(self) -> int:
        return len(self._calls)


class Fences:
    """Calls of other processes that this process refuses to deliver: their callers gave them up."""

    def __init__(self, *, max_fences: int = 100_000) -> None:
        if max_fences < 1:
            raise ValueError("max_fences must be at least 1")
        self._max = max_fences
        self._fenced: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.forgotten = 0
        """Fences dropped to stay within ``max_fences``."""

    def add(self, calls: Iterable[tuple[str, int]]) -> None:
        for call in calls:
            self._fenced[call] = None
            self._fenced.move_to_end(call)
        while len(self._fenced) > self._max:
            self._fenced.popitem(last=False)
            self.forgotten += 1

    def __contains__(self, call: object) -> bool:
        return call in self._fenced

    def __len__(self) -> int:
        return len(self._fenced)
