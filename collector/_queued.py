"""Finishing a snapshot at once when all it waits for are calls queued behind deadlocked workers.

A call its server lists as queued at the cut is in transit, and its
request is recorded when a worker takes it: the cut waits for that record.
When every call the cut still waits for is queued in a pool whose workers
the cut itself proves deadlocked (a stable property), no worker will ever
take it, and the cut can only end INCOMPLETE at its timeout. Finishing it
now reports the deadlock a snapshot period after it formed rather than a
snapshot timeout later; a cut that waits for any call that may still run
keeps waiting.
"""

from __future__ import annotations

from cutwatch.collector._records import cut_from_stored, stored_from_assembled
from cutwatch.core import AssembledCut, graph_from_cut, reduce_graph

__all__ = ["queued_calls_stuck"]


def queued_calls_stuck(cut: AssembledCut, started: float) -> bool:
    """Whether every call ``cut`` still waits for is queued at a server and stuck in a deadlock.

    ``cut`` is the assembler's cut as it stands (see
    ``CutAssembler.waits_only_on_queued_calls``).
    """
    if not cut.unsettled:
        return False
    view = cut_from_stored(stored_from_assembled(cut, started, started))
    graph = graph_from_cut(view)
    stuck = {
        (graph.task_process[t], info.caller, info.call_id)
        for t in reduce_graph(graph).deadlocked
        if (info := graph.task_info[t]) is not None and info.queued
    }
    stuck_calls = {(caller, call_id) for _, caller, call_id in stuck}
    return all((call.caller, call.call_id) in stuck_calls for call in cut.unsettled)
