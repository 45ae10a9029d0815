"""The invariant of `cutwatch demo`'s leader lease: at most one leader, at every consistent cut.

The lease (``cutwatch.demo.lease``) moves around a ring with a ``Take``
RPC; with the buggy handover the new leader starts in its handler and the
old one steps down only when the answer comes back, so for one round trip,
a millisecond or so, there are two leaders. A check of sampled cuts sees
that only when a snapshot happens to fall inside such a round trip, which
with a snapshot every few hundred milliseconds is almost never.

As a lattice invariant (``lattice=True``) it is checked twice for every
complete cut: on the cut itself, and on every consistent cut between the
previous complete cut and this one, from the ``leader`` changes the lease
processes record (``register_state("leader", ..., record=True)``) with
their vector clocks. The overlap is then found in every window the lease
moved in, with a cut where both lead; often all three processes lead there: a step-down sends
nothing, so it is concurrent with everything the others do until the lease
comes back, and a consistent cut may leave out two of them at once (the
min-cut procedure reports a cut with the most leaders). Processes of other
services hold no ``leader`` state: on their cuts the count is 0 and the
invariant holds.

The demo's collector loads this module by name
(``CollectorServer(..., predicates=["cutwatch.demo.lease_invariants"])``).
"""

from __future__ import annotations

from cutwatch.predicates import Formula, LatticeView, count, invariant

ONE_LEADER = "lease.one_leader"


@invariant(ONE_LEADER, lattice=True)
def one_leader(cut: LatticeView) -> Formula:
    """At most one process of the ``lease`` service leads."""
    return count(cut.values("leader", service="lease")) <= 1
