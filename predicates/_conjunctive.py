"""The least consistent cut where a conjunction of local predicates holds (Garg & Waldecker).

A conjunctive predicate (one condition per process, each reading only that
process's values) holds on a set of cuts closed under intersection, so when
it holds anywhere it holds at a least consistent cut. Garg and Waldecker find
it without enumerating the lattice: start every process at its first index
where its condition holds; whenever a candidate event requires more of
another process than that process's candidate includes, that process must
move forward (to its next index where its condition holds, or exactly as far
as required when it has no condition). Candidates only move forward, so this
takes at most one move per event, each costing one pass over a clock.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterator, Mapping

from cutwatch.predicates._window import Frontier, InconsistentWitness, Window

__all__ = ["find_conjunctive"]


def find_conjunctive(window: Window, local: Mapping[int, Callable[[int], bool]]) -> Frontier | None:
    """The least consistent cut where ``local[i](k_i)`` holds for every process index ``i`` in
    ``local`` (``k_i``: how many of its window events the cut includes), or None when there is none.

    Processes not in ``local`` are free: they include what the others require, no more."""
    sizes = window.sizes()
    holds: dict[int, list[int]] = {}
    for i, predicate in local.items():
        if not 0 <= i < len(sizes):
            raise IndexError(f"no process {i} in a window of {len(sizes)}")
        holds[i] = [k for k in range(sizes[i] + 1) if predicate(k)]
        if not holds[i]:
            return None
    frontier = [0] * len(sizes)
    for i, indices in holds.items():
        frontier[i] = indices[0]
    forced = _Requirements(window)
    queue = deque(i for i, k in enumerate(frontier) if k)
    queued = [bool(k) for k in frontier]
    while queue:
        i = queue.popleft()
        queued[i] = False
        for j, need in forced.grown(i, frontier[i]):
            if need <= frontier[j]:
                continue
            true_at = holds.get(j)
            if true_at is not None:
                at = bisect.bisect_left(true_at, need)
                if at == len(true_at):
                    return None  # j's condition never holds as far as it must go
                need = true_at[at]
            frontier[j] = need
            if not queued[j]:
                queued[j] = True
                queue.append(j)
    witness = tuple(frontier)
    window.check_witness(witness)
    for i, true_at in holds.items():
        at = bisect.bisect_left(true_at, witness[i])
        if at == len(true_at) or true_at[at] != witness[i]:
            raise InconsistentWitness(f"the condition of process {i} fails at {witness}")
    return witness


class _Requirements:
    """What a process's event requires of the others, read from its clock.

    Only entries that grew since the last event looked at on the same process are read: those
    are the only requirements that can have grown (clocks only grow along a process)."""

    def __init__(self, window: Window) -> None:
        self._window = window
        self._index = {pid: j for j, pid in enumerate(window.processes)}
        self._own: dict[int, list[int]] = {}
        """Each process's own counters at its events, read when first needed."""
        self._last: list[Mapping[str, int]] = [{} for _ in window.processes]

    def grown(self, i: int, k: int) -> Iterator[tuple[int, int]]:
        """``(j, r)``: event ``k`` of process ``i`` requires ``r`` events of process ``j`` (at least
        each requirement that grew since the last call for ``i``)."""
        if k <= 0:
            return
        clock = self._window.histories[i].events[k - 1].clock
        before = self._last[i].get
        self._last[i] = clock
        for pid, seen in clock.items():
            if seen == before(pid):
                continue
            j = self._index.get(pid)
            if j is not None and j != i:
                own = self._own.get(j)
                if own is None:
                    pid_j = self._window.processes[j]
                    own = self._own[j] = [e.clock.get(pid_j, 0) for e in self._window.histories[j].events]
                yield j, bisect.bisect_right(own, seen)
