"""The largest and smallest value of a weighted sum of state values over a window's consistent cuts.

A linear predicate ``sum(c * value) <= bound`` fails at some consistent cut
exactly when the maximum of the sum exceeds the bound, and that maximum is
found in polynomial time (Chase & Garg, relational predicates): the sum at a
cut is its value at the bottom plus the weights of the events the cut
includes (an event weighs ``c * (new - previous)`` for each weighted name it
changes), and a consistent cut is a down-set of the events, so the maximum is
a maximum-weight closure: the total of the positive weights less a minimum
s-t cut, with an infinite edge from each event to each event it requires.

The graph is kept small, because its size, not the window's, sets the cost:

- only events of non-zero weight are nodes. Clocks are transitive, so an
  event that requires a dropped one requires, on each process, the last kept
  event at or below that requirement; an edge is added only where that
  target moves along the process, and only to the maximal targets that move
  at one event (one below another is implied);
- along a process, a stretch of events that neither require nor are required
  by another process collapses: a maximum that stops inside it stops at its
  best prefix, so the best prefix joins the event before and the rest joins
  the event after. Then a block that nothing requires and that does not gain
  joins the next block, and a block that requires nothing of other processes
  and does not lose joins the previous one (some maximum takes them
  together). Where messages are rarer than events most of each process folds
  away.

The clocks are read in C-level passes where possible (one sum per clock finds
the events that learned something from another process); only those events'
clocks are read entry by entry. The cost is linear in the window's clock
entries plus the graph's minimum cut: igraph's (compiled push-relabel).

Capacities in igraph are doubles, so the weights must total less than 2**53.
The value returned is recomputed in integers at the witness, a consistent cut
checked with :meth:`Window.check_witness`.
"""

from __future__ import annotations

import bisect
import gc
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate, compress, repeat
from operator import ge, mul, ne, sub
from typing import Any

from cutwatch.predicates._window import Frontier, Value, Window

__all__ = ["MISSING_IGRAPH", "max_linear", "min_linear"]

MISSING_IGRAPH = 'lattice predicates need the collector extra: pip install "cutwatch[collector]"'
"""What a collector without the solvers is told (igraph here, z3 in ``_z3``): one message for both."""

_NOTHING: Mapping[str, int] = {}

_EXACT = 2**53
"""Every integer below this is a double: igraph's flows are exact while the weights total less."""


def max_linear(window: Window, weights: Mapping[tuple[str, str], int]) -> tuple[int, Frontier]:
    """The largest ``sum(weights[(process, name)] * value)`` over the consistent cuts of ``window``, and
    a consistent cut that reaches it (the least cut including the events the minimum cut chose).

    Absent values count 0 and booleans 0 or 1; a weight for a process the window lacks weighs
    nothing."""
    igraph = _igraph()
    with _collection_paused():
        chains, base = _chains(window, weights)
        _connect(window, chains)
        graph = _Graph()
        for n, chain in enumerate(chains):
            _fold(n, chain, graph)
        taken = graph.closure(igraph)
    total = base + sum(chain.always_weight for chain in chains)
    last = {chain.process: chain.always_last for chain in chains if chain.always_last}
    for block in taken:
        total += graph.weight[block]
        process = graph.process[block]
        last[process] = max(last.get(process, 0), graph.last[block])
    frontier = _least_cut(window, last)
    window.check_witness(frontier)
    reached = _evaluate(window, weights, frontier)
    if reached != total:
        raise AssertionError(
            f"the witness {frontier} sums to {reached}, the closure it stands for to {total}"
        )
    return total, frontier


def min_linear(window: Window, weights: Mapping[tuple[str, str], int]) -> tuple[int, Frontier]:
    """The smallest ``sum(weights[(process, name)] * value)`` over the consistent cuts, and a cut with it."""
    value, frontier = max_linear(window, {key: -coef for key, coef in weights.items()})
    return -value, frontier


@contextmanager
def _collection_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: the work makes no reference cycles, only millions of
    short-lived tuples, and each full collection they set off walks the whole window's clocks
    (measured: a quarter of the time on 128 processes x 3,000 events)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _igraph() -> Any:
    """igraph, imported on first use (it ships no type information: mypy need not read it)."""
    try:
        return importlib.import_module("igraph")
    except ImportError:
        raise ImportError(MISSING_IGRAPH) from None


def _number(value: Value | None) -> int:
    return 0 if value is None else int(value)


def _evaluate(window: Window, weights: Mapping[tuple[str, str], int], frontier: Frontier) -> int:
    """The weighted sum at ``frontier``, read from the window's values: what the witness must reach."""
    total = 0
    for (process, name), coef in weights.items():
        if coef and process in window.processes:
            i = window.index(process)
            total += coef * _number(window.value(i, name, frontier[i]))
    return total


@dataclass
class _Chain:
    """One process's events of non-zero weight, in order, and the edges their clocks call for."""

    process: int
    events: list[int]
    """The kept events' indices (1-based) among the process's window events."""
    weights: list[int]
    targets: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """Kept event (position in ``events``) -> ``(chain, position)`` of the maximal kept events of
    other chains it requires and the previous kept event here did not."""
    required: set[int] = field(default_factory=set)
    """The positions of kept events that a kept event of another chain requires directly."""
    always_weight: int = 0
    always_last: int = 0
    """The chain's start that some maximum always includes (requires nothing elsewhere, does not
    lose): its weight, and its last event (0: none)."""


def _chains(window: Window, weights: Mapping[tuple[str, str], int]) -> tuple[list[_Chain], int]:
    """Each weighted process's kept events with their weights, and the sum at the bottom."""
    terms: dict[str, list[tuple[str, int]]] = {}
    for (process, name), coef in weights.items():
        if coef:
            terms.setdefault(process, []).append((name, coef))
    base = 0
    chains: list[_Chain] = []
    for i, history in enumerate(window.histories):
        steps: dict[int, int] = {}
        for name, coef in terms.get(history.process, ()):
            start = _number(window.value(i, name, 0))
            base += coef * start
            changes = window.changes(i, name)
            if not changes:
                continue
            at, values = zip(*changes, strict=True)
            numbers = list(map(int, values))
            deltas = map(mul, map(sub, numbers, [start, *numbers[:-1]]), repeat(coef))
            if not steps:
                steps = dict(zip(at, deltas, strict=True))
            else:
                for m, delta in zip(at, deltas, strict=True):
                    steps[m] = steps.get(m, 0) + delta
        kept = sorted(compress(steps, steps.values()))
        if kept:
            chains.append(_Chain(i, kept, list(map(steps.__getitem__, kept))))
    return chains, base


def _connect(window: Window, chains: Sequence[_Chain]) -> None:
    """Fill each chain's ``targets`` and ``required`` from the kept events' clocks.

    A kept event's requirement on another chain is the last kept event there that its clock
    covers. The sum of a clock's entries orders events along happened-before (an event's clock
    is above every clock it knows of): events whose sum less their own entry did not move learned
    nothing (entries only grow along a process), and among the targets that moved the one with
    the largest sum is maximal, and usually covers the rest (it is the event that sent the news)."""
    pids = [window.processes[c.process] for c in chains]
    clocks = [[window.histories[c.process].events[m - 1].clock for m in c.events] for c in chains]
    # Each clock's sum, and the kept events' own counters: an entry ``seen`` for chain k's process
    # covers its kept events up to bisect_right(threshold[k], seen). One pass, while each clock is
    # in the processor's cache.
    sums: list[list[int]] = []
    threshold: list[list[int]] = []
    for pid, row in zip(pids, clocks, strict=True):
        both = [(sum(clock.values()), clock.get(pid, 0)) for clock in row]
        sums.append([total for total, _ in both])
        threshold.append([mine for _, mine in both])
    # Per process of a chain: its chain, the memo (entry -> last kept event covered, -1: none), the
    # kept events' own counters and clock sums.
    known: dict[str, tuple[int, dict[int, int], list[int], list[int]]] = {
        pid: (k, {}, threshold[k], sums[k]) for k, pid in enumerate(pids)
    }
    about = known.get
    for n, c in enumerate(chains):
        row = clocks[n]
        learned = list(map(sub, sums[n], threshold[n]))
        current = [-1] * len(chains)
        for p in compress(range(len(row)), map(ne, learned, [0, *learned[:-1]])):
            clock = row[p]
            fresh_pids: list[str] = []
            fresh_needs: list[int] = []
            best = top_chain = top_position = -1
            before: Callable[[str], int | None] = (row[p - 1] if p else _NOTHING).get
            for pid, seen in clock.items():
                if seen == before(pid):
                    continue
                entry = about(pid)
                if entry is None or entry[0] == n:
                    continue
                k, memo, marks, keys = entry
                t = memo.get(seen)
                if t is None:
                    t = memo[seen] = bisect.bisect_right(marks, seen) - 1
                if t > current[k]:
                    current[k] = t
                    fresh_pids.append(pid)
                    fresh_needs.append(marks[t])
                    if keys[t] > best:
                        best, top_chain, top_position = keys[t], k, t
            if not fresh_pids:
                continue
            top_clock = clocks[top_chain][top_position]
            if all(map(ge, map(top_clock.get, fresh_pids, repeat(0)), fresh_needs)):
                c.targets[p] = [(top_chain, top_position)]
            else:
                fresh = []
                for pid, need in zip(fresh_pids, fresh_needs, strict=True):
                    k = known[pid][0]
                    fresh.append((k, bisect.bisect_left(threshold[k], need)))
                c.targets[p] = _maximal(fresh, sums, clocks, threshold, pids)
    for c in chains:
        for tops in c.targets.values():
            for k, t in tops:
                chains[k].required.add(t)


def _maximal(
    fresh: list[tuple[int, int]],
    sums: Sequence[Sequence[int]],
    clocks: Sequence[Sequence[Mapping[str, int]]],
    threshold: Sequence[Sequence[int]],
    pids: Sequence[str],
) -> list[tuple[int, int]]:
    """The targets ``(chain, position)`` in ``fresh`` below no other one (the rest are implied).

    In decreasing clock-sum order a target can only be below one seen before it, hence below one
    kept."""
    tops: list[tuple[int, int]] = []
    for k, t in sorted(fresh, key=lambda kt: sums[kt[0]][kt[1]], reverse=True):
        pid, need = pids[k], threshold[k][t]
        if not any(clocks[a][b].get(pid, 0) >= need for a, b in tops):
            tops.append((k, t))
    return tops


class _Graph:
    """The folded blocks of every chain and their requirement edges, as flat lists for igraph."""

    def __init__(self) -> None:
        self.weight: list[int] = []
        self.process: list[int] = []
        self.last: list[int] = []
        """The last window event (1-based) of each block on its process."""
        self.source: list[int] = []
        self.target: list[int] = []
        self.block_of: dict[tuple[int, int], int] = {}
        """(chain, position) of each required kept event -> its block."""
        self.pending: list[tuple[int, int, int]] = []
        """Cross edges, their targets not all folded yet: (block, chain, position)."""

    def closure(self, igraph: Any) -> list[int]:
        """The blocks of a maximum-weight closure, by minimum cut."""
        for block, other, position in self.pending:
            to = self.block_of[(other, position)]
            if to >= 0:  # -1: in its chain's always-taken start, so always there
                self.source.append(block)
                self.target.append(to)
        nodes = len(self.weight)
        positive = sum(w for w in self.weight if w > 0)
        if not positive:
            return []
        if positive - sum(w for w in self.weight if w < 0) >= _EXACT:
            raise ValueError("weights too large to decide exactly: their total must stay below 2**53")
        s, t = nodes, nodes + 1
        capacity = [float(positive + 1)] * len(self.source)  # infinite: more than any cut of s
        source, target = self.source, self.target
        for block, w in enumerate(self.weight):
            if w > 0:
                source.append(s)
                target.append(block)
                capacity.append(float(w))
            elif w < 0:
                source.append(block)
                target.append(t)
                capacity.append(float(-w))
        graph = igraph.Graph(n=nodes + 2, edges=list(zip(source, target, strict=True)), directed=True)
        cut = graph.mincut(s, t, capacity)
        return [v for v in cut.partition[0] if v != s]


@dataclass
class _Block:
    """Consecutive kept events of one chain that some maximum takes all or none of."""

    weight: int
    targets: bool
    """Whether it requires kept events of other chains directly."""
    required: bool
    """Whether kept events of other chains require it directly."""
    last: int
    """Its last position in the chain."""
    marked: list[int]
    """Its positions with cross edges."""


def _fold(n: int, chain: _Chain, graph: _Graph) -> None:
    """Fold chain ``n`` into blocks and add them, and their edges, to ``graph``.

    Only kept events with cross edges ("marked") stay apart. The unmarked stretch between two
    marked events splits at its best prefix: that joins the block before (or the chain's
    always-taken start), the rest the marked event after (or, at the end, is never taken). Then
    a block that nothing requires and that weighs <= 0 joins the next block, and one that
    requires nothing elsewhere and weighs >= 0 joins the previous one or the always-taken start;
    a last block that nothing requires and weighs <= 0 is never taken."""
    weights = chain.weights
    stack: list[_Block] = []
    always = _Block(0, False, False, -1, [])

    def settle() -> None:
        """Fold the top block into the one before while it requires nothing elsewhere and gains."""
        while stack and not stack[-1].targets and stack[-1].weight >= 0:
            top = stack.pop()
            below = stack[-1] if stack else always
            below.weight += top.weight
            below.required = below.required or top.required
            below.last = top.last
            below.marked.extend(top.marked)

    start = 0
    for position in [*sorted(chain.required.union(chain.targets)), len(weights)]:
        prefix = list(accumulate(weights[start:position], initial=0))
        best = max(prefix)
        before = stack[-1] if stack else always
        before.weight += best
        before.last = max(before.last, start + prefix.index(best) - 1)
        settle()
        if position == len(weights):
            break
        block = _Block(
            prefix[-1] - best + weights[position],
            position in chain.targets,
            position in chain.required,
            position,
            [position],
        )
        if stack and not stack[-1].required and stack[-1].weight <= 0:
            below = stack.pop()
            block.weight += below.weight
            block.targets = block.targets or below.targets
            block.marked = below.marked + block.marked
        stack.append(block)
        settle()
        start = position + 1
    if stack and not stack[-1].required and stack[-1].weight <= 0:
        stack.pop()  # nothing needs it and it does not gain: never taken
    chain.always_weight = always.weight
    chain.always_last = chain.events[always.last] if always.last >= 0 else 0
    for position in always.marked:
        graph.block_of[(n, position)] = -1  # always there: an edge to it is always met
    for number, block in enumerate(stack):
        node = len(graph.weight)
        graph.weight.append(block.weight)
        graph.process.append(chain.process)
        graph.last.append(chain.events[block.last])
        for position in block.marked:
            graph.block_of[(n, position)] = node
            for k, t in chain.targets.get(position, ()):
                graph.pending.append((node, k, t))
        if number:
            graph.source.append(node)
            graph.target.append(node - 1)


def _least_cut(window: Window, last: Mapping[int, int]) -> Frontier:
    """The least consistent cut that includes event ``last[i]`` of each process ``i``."""
    frontier = [0] * len(window)
    for i, m in last.items():
        frontier[i] = max(frontier[i], m)
        for j in range(len(window)):
            if j != i:
                frontier[j] = max(frontier[j], window.required(i, m, j))
    return tuple(frontier)
