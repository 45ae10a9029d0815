"""Whether every run through a window passes a violating cut ("definitely"), and the reference search.

A run is a path of consistent cuts from the window's bottom to its top, one
event at a time; the system took one of them, and the clocks cannot say
which. ``definitely(not phi)`` holds when every run passes a cut where phi
fails, so the violation happened whatever the real order was. It is decided
by searching for a run that avoids violation: from the bottom, through
non-violating cuts only, toward the top. The search is exact, but the
lattice it walks can hold up to the product of the processes' event counts
(exponential in the number of processes), hence the budget: beyond it the
answer is None, not a guess.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cutwatch.predicates._window import Frontier, Window

__all__ = ["DEFAULT_BUDGET", "definitely", "possibly_brute_force"]

DEFAULT_BUDGET = 200_000
"""Consistent cuts :func:`definitely` may look at before it gives up (the visited set's size)."""
_CLOCK_EVERY = 256
"""Cuts visited between two looks at the clock."""


def definitely(
    window: Window,
    violates: Callable[[Frontier], bool],
    *,
    budget: int = DEFAULT_BUDGET,
    deadline: float | None = None,
) -> bool | None:
    """True when every run from ``window.bottom`` to ``window.top`` passes a cut where ``violates``
    holds (the bottom and the top count), False when some run avoids it, None when telling would
    take looking at more than ``budget`` cuts, or go past ``deadline`` (``time.monotonic()``)."""
    bottom, top = window.bottom, window.top
    if violates(bottom):
        return True
    if bottom == top:
        return False
    seen = {bottom}
    stack = [bottom]
    while stack:
        for cut in window.successors(stack.pop()):
            if cut in seen:
                continue
            if len(seen) >= budget:
                return None
            if deadline is not None and len(seen) % _CLOCK_EVERY == 1 and time.monotonic() > deadline:
                return None
            seen.add(cut)
            if violates(cut):
                continue
            if cut == top:
                return False
            stack.append(cut)
    return True


def possibly_brute_force(window: Window, violates: Callable[[Frontier], bool]) -> Frontier | None:
    """The first consistent cut, in :meth:`Window.consistent_cuts` order, where ``violates`` holds:
    the reference every decision procedure is checked against (exponential: small windows only)."""
    for cut in window.consistent_cuts():
        if violates(cut):
            return cut
    return None
