"""A stateful test of snapshots under the real collector: crashes, restarts, broken streams, repeats.

Hypothesis drives a :class:`sim.cluster.Cluster` step by step: transfers,
deliveries in any order, lost messages, requests repeated by the transport,
handlers that apply and answer, reports and orders on the agents' streams,
snapshots, processes that crash or shut down, streams that break, a
collector that restarts (cleanly or not) and agents that reconnect to it.
After every step, each cut the collector finished in it is checked against
the ground truth the cluster keeps:

- a COMPLETE cut holds exactly the processes registered when it started and
  passes the vector-clock check, every message a process applied before its
  cut was sent before its sender's cut, its tokens equal the truth exactly
  and its channels hold exactly the messages in transit;
- no cut, COMPLETE or not, shows a deadlock (the cluster has no wait cycles)
  or was rejected as inconsistent, and nothing failed to store;
- a cut finished while one of its processes was dead is INCOMPLETE and names
  it; a snapshot started while the collector expects a process back (its
  stream broke less than the rejoin grace before) ends INCOMPLETE at once,
  naming it; no snapshot outlives its deadline, and every one ends stored
  unless a collector crash took it; a new snapshot is numbered above every
  stored cut and every epoch its processes registered with.

Repeats are the transport's (same call id and attempt): the agent recognises
them by key and counts and records the first only, while the handler runs
again; it applies the tokens again or not as drawn, and the truth counts
what it applies. A new attempt of a call (a gRPC retry or hedge) is another
message to the agent, and whether its tokens are real depends on the
handler, which no cut can know: it is not modelled here.

Hypothesis switches rules off for whole examples, so many of its worlds are
quiet; :func:`test_seeded_walks_exercise_every_rule` runs the same machine
and checks over seeded walks that favour work and snapshots, and counts what
they exercised. The last tests show the checks catch broken protocols and
name what the collector does not guarantee yet.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sim.cluster import MAX_RUNNING, Cluster, Finished, Run

from cutwatch.collector._coordinator import (
    REASON_ABSENT,
    REASON_DISCONNECTED,
    REASON_EVENTS_LOST,
    REASON_REJECTED,
    REASON_UNREGISTERED,
)
from cutwatch.collector._records import cut_from_stored
from cutwatch.predicates import find_deadlocks

EXAMPLES = 300
STEPS = 100
WALKS = 600
INDEX = st.integers(0, 2**16)
SEED = st.integers(0, 2**32 - 1)
RESTARTS = 2
"""Collector restarts per run: each ends every running snapshot, so more would leave few to check."""
CAUSES = {
    REASON_DISCONNECTED: "disconnected",
    REASON_ABSENT: "a process may be reconnecting",
    REASON_EVENTS_LOST: "events lost",
    "the collector stopped": "collector stopped",
    "no local snapshot from": "a process did not report",
    "no flush marker from": "a process did not flush",
    "calls in flight at the cut not accounted for": "calls unsettled",
    REASON_UNREGISTERED: "took part unregistered",
    "too many snapshots running at once": "too many running",
}
SEEN: Counter[str] = Counter()
"""What the checks saw, over every run of the machine in this process (for the coverage test)."""


def check(done: Finished, rejoin: int) -> None:
    """One cut the collector finished, against the ground truth taken at that moment.

    ``rejoin`` is the collector's rejoin grace, in steps.
    """
    cut, run, truth = done.cut, done.run, done.truth
    assert not any(reason.startswith(REASON_REJECTED) for reason in cut.reasons), f"rejected: {cut.reasons}"
    assert find_deadlocks(cut_from_stored(cut)) == [], f"cut {cut.epoch}: a deadlock that is not there"
    assert set(cut.missing) <= run.members | run.absent
    assert {state.process for state in cut.states} <= run.members
    SEEN["cuts"] += 1
    if run.absent:
        # A process that may be reconnecting is part of the system: no cut without it is complete.
        assert cut.status == "INCOMPLETE" and set(cut.missing) >= run.absent
        assert {f"{REASON_ABSENT} at {process}" for process in run.absent} <= set(cut.reasons)
    if done.crashed:
        assert cut.status == "INCOMPLETE"
        for process in done.crashed:
            assert f"{REASON_DISCONNECTED} at {process}" in cut.reasons
        SEEN["incomplete: a process crashed"] += 1
    if cut.status == "INCOMPLETE":
        SEEN["incomplete"] += 1
        for reason in cut.reasons:
            SEEN["incomplete: " + next((c for r, c in CAUSES.items() if reason.startswith(r)), reason)] += 1
        return
    states = {state.process: state for state in cut.states}
    assert set(states) == run.members and cut.missing == () and cut.unsettled == ()
    # A live process away for less than the rejoin grace may be reconnecting; the collector expects
    # back only those whose stream ended under it and those of the newest stored cut when it started.
    SEEN["complete without a process away for less than the rejoin grace"] += any(
        ago < rejoin for _, ago in run.away
    )
    # Consistent: no process knows more of another than that one's own cut, and nothing
    # applied before a cut was sent after its sender's.
    for p, state in states.items():
        for q, other in states.items():
            assert state.clock.get(q, 0) <= other.clock.get(q, 0), f"cut {cut.epoch}: {p} knows more of {q}"
    for sender, receiver, epoch, tick in truth.receipts:
        assert epoch < cut.epoch, f"cut {cut.epoch}: {receiver} applied what {sender} sent after its cut"
        assert tick <= states[sender].clock.get(sender, 0), f"cut {cut.epoch}: {sender}'s clock misses a send"
    # Exact: tokens and channels.
    in_transit = Counter(
        (
            c.kind,
            c.sender if c.kind == "request" else c.receiver,
            c.call_id,
            c.sender,
            c.receiver,
            c.payload,
        )
        for c in cut.in_transit
    )
    assert in_transit == truth.in_transit, f"cut {cut.epoch}: channels differ from the truth"
    assert all(c.attempt == 0 for c in cut.in_transit)
    tokens = sum(state.state["balance"] for state in cut.states) + sum(c.payload for c in cut.in_transit)
    assert tokens == truth.tokens, f"cut {cut.epoch}: tokens not conserved ({tokens}, truth {truth.tokens})"
    assert cut.duplicates == ()  # a repeat is never recorded, so no call is settled twice
    SEEN["complete"] += 1
    SEEN["complete, with messages in transit"] += bool(cut.in_transit)
    SEEN["complete, with messages applied before the cut"] += bool(truth.receipts)
    SEEN["complete, with tokens that crossed its border"] += truth.crossed > 0
    SEEN["complete, with a request applied twice"] += truth.minted > 0
    SEEN["complete, after a collector restart"] += run.generation > 0
    SEEN["complete, with several processes"] += len(run.members) > 1
    SEEN["messages in transit checked"] += len(cut.in_transit)
    SEEN["messages applied before a cut checked"] += len(truth.receipts)


class ClusterMachine(RuleBasedStateMachine):
    """The rules; each is one step of time. ``options`` breaks the cluster for the failure checks."""

    options: ClassVar[Mapping[str, bool]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Cluster | None = None
        self.checked = 0
        self.ahead: set[tuple[int, int]] = set()

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None
        return self.cluster

    def pick(self, index: int, candidates: list[str]) -> str:
        return candidates[index % len(candidates)]

    def alive(self) -> list[str]:
        return [pid for pid, node in self.c.nodes.items() if node.alive]

    @initialize(
        n=st.integers(2, 5),
        initial=st.integers(1, 30),
        deadline=st.integers(5, 60),
        rejoin=st.integers(0, 40),
        silent=st.integers(3, 30),
    )
    def boot(self, n: int, initial: int, deadline: int, rejoin: int, silent: int) -> None:
        self.cluster = Cluster(n, initial, deadline=deadline, rejoin=rejoin, silent=silent, **self.options)
        SEEN["runs"] += 1

    def teardown(self) -> None:
        if self.cluster is not None:
            self.cluster.close()

    # Application ---------------------------------------------------------------------------
    @rule(src=INDEX, dst=INDEX, amount=st.integers(0, 4), notice=st.integers(1, 5))
    def send(self, src: int, dst: int, amount: int, notice: int) -> None:
        self.c.tick()
        sender = self.pick(src, self.alive())
        others = [pid for pid in self.c.pids if pid != sender]
        self.c.transfer(sender, self.pick(dst, others), amount, notice)

    @precondition(lambda self: self.c.network)
    @rule(index=INDEX)
    def reorder(self, index: int) -> None:
        """Deliver any message on the network, not the oldest."""
        self.c.tick()
        self.c.deliver(index)

    @precondition(lambda self: self.c.network)
    @rule(index=INDEX, notice=st.integers(1, 20))
    def lose(self, index: int, notice: int) -> None:
        """A message is lost for good; its caller's deadline comes ``notice`` steps later."""
        self.c.tick()
        if self.c.lose(index, notice) is not None:
            SEEN["messages lost"] += 1

    @precondition(lambda self: self.c.network)
    @rule(index=INDEX, notice=st.integers(1, 20), delay=st.integers(1, 40))
    def hold(self, index: int, notice: int, delay: int) -> None:
        """A proxy holds a request past its caller's failure; it comes back ``delay`` steps later."""
        self.c.tick()
        before = (self.c.refused, self.c.late_delivered)
        if self.c.hold(index, notice, delay) is not None:
            SEEN["requests held past their caller's failure"] += 1
        assert (self.c.refused, self.c.late_delivered) == before

    @rule(index=INDEX, applies=st.booleans())
    def duplicate(self, index: int, applies: bool) -> None:
        self.c.tick()
        if self.c.duplicate(index, applies) is not None:
            SEEN["duplicates"] += 1
            SEEN["duplicates applied again"] += applies

    @rule(process=INDEX, index=INDEX)
    def consume(self, process: int, index: int) -> None:
        self.c.tick()
        self.c.consume(self.pick(process, self.alive()), index)

    @rule(process=INDEX, index=INDEX, refund=st.integers(0, 4))
    def respond(self, process: int, index: int, refund: int) -> None:
        self.c.tick()
        self.c.respond(self.pick(process, self.alive()), index, refund)

    # Collector and streams -------------------------------------------------------------------
    @precondition(lambda self: len(self.c.coordinator.running()) < MAX_RUNNING)
    @rule()
    def start_snapshot(self) -> None:
        self.c.tick()
        self.snapshot_started(self.c.start_snapshot())

    def snapshot_started(self, run: Run | None) -> None:
        """Numbered above every stored cut and every epoch the agents registered with; taken by exactly
        the live agents registered now; ended at once, INCOMPLETE, while a process may be reconnecting."""
        if run is None:
            return
        SEEN["snapshots"] += 1
        generation = [f for f in self.c.finished if f.run.generation == self.c.generation]
        assert run.epoch > max((f.cut.epoch for f in self.c.finished if f.run is not run), default=0)
        assert all(run.epoch > self.c.nodes[pid].registered for pid in run.members)
        assert run.members == {s.process for s in self.c.coordinator.sessions() if not s.closed}
        assert all(self.c.nodes[pid].alive for pid in run.members)
        assert any(f.run is run for f in generation) == bool(run.absent)
        # The collector expects back exactly the processes the model says it must.
        assert run.absent == {p for p, _, _ in self.c.coordinator.absent()} - run.members
        SEEN["snapshots while a process may be reconnecting"] += bool(run.absent)
        if any(self.c.nodes[pid].process.epoch >= run.epoch for pid in run.members):
            self.ahead.add((run.generation, run.epoch))

    @rule(process=INDEX)
    def report(self, process: int) -> None:
        """The collector receives the next event of one agent's stream."""
        self.c.tick()
        self.c.report(self.pick(process, self.c.pids))

    @rule(process=INDEX)
    def order(self, process: int) -> None:
        """One agent carries out the collector's next order."""
        self.c.tick()
        self.c.order(self.pick(process, self.c.pids))

    @rule()
    def sync(self) -> None:
        """The collector and every connected agent catch up with each other."""
        self.c.tick()
        self.c.sync()

    @rule(seed=SEED, actions=st.integers(1, 12))
    def traffic(self, seed: int, actions: int) -> None:
        """A burst of transfers, deliveries and handlers, in an order ``seed`` picks."""
        self.c.tick()
        self.c.traffic(random.Random(seed), actions)

    @rule(seed=SEED, snapshot=st.booleans())
    def settle(self, seed: int, snapshot: bool) -> None:
        """The network, the handlers and the streams run until all is quiet; with ``snapshot``, a
        snapshot starts first, so that its cuts fall anywhere in what runs."""
        self.c.tick()
        if snapshot and len(self.c.coordinator.running()) < MAX_RUNNING:
            self.snapshot_started(self.c.start_snapshot())
        self.c.settle(random.Random(seed))

    @rule(steps=st.integers(1, 30))
    def wait(self, steps: int) -> None:
        self.c.tick(steps)

    # Failures -----------------------------------------------------------------------------------
    @precondition(lambda self: len(self.alive()) > 1)
    @rule(process=INDEX, notice=st.integers(0, 10), goodbye=st.booleans())
    def crash(self, process: int, notice: int, goodbye: bool) -> None:
        """A process dies (or, with ``goodbye``, shuts down and says so): it never comes back."""
        self.c.tick()
        pid = self.pick(process, self.alive())
        connected = self.c.nodes[pid].connected
        running = {
            e for e in self.c.coordinator.running() if pid in self.c.runs[(self.c.generation, e)].members
        }
        self.c.crash(pid, notice, goodbye)
        SEEN["processes that said goodbye" if goodbye else "crashes"] += 1
        # Its stream ended: every snapshot it was in is over, and no later one counts it, though
        # one without a goodbye is expected back for the rejoin grace (see check()).
        assert not running & set(self.c.coordinator.running())
        assert pid not in {s.process for s in self.c.coordinator.sessions()}
        if connected:
            expected = {p for p, _, _ in self.c.coordinator.absent()}
            assert (pid in expected) == (not goodbye and self.c.rejoin > 0)

    @rule(process=INDEX, in_flight=st.integers(0, 3))
    def disconnect(self, process: int, in_flight: int) -> None:
        """One agent's stream breaks, losing what was on the wire; the agent reconnects later."""
        self.c.tick()
        if self.c.disconnect(self.pick(process, self.c.pids), in_flight):
            SEEN["streams broken"] += 1

    @precondition(lambda self: self.c.generation < RESTARTS)
    @rule(clean=st.booleans(), in_flight=st.lists(st.integers(0, 3), max_size=5))
    def restart_collector(self, clean: bool, in_flight: list[int]) -> None:
        self.c.tick()
        running = self.c.coordinator.running()
        lost = self.c.restart_collector(clean, in_flight)
        SEEN["collector restarts"] += 1
        SEEN["snapshots lost with the collector"] += len(lost)
        if clean:
            stopped = [f for f in self.c.finished if f.run.generation == self.c.generation - 1]
            assert {f.cut.epoch for f in stopped} >= set(running)
            assert all(f.cut.status == "INCOMPLETE" for f in stopped if f.cut.epoch in running)
        else:
            assert {run.epoch for run in lost} == set(running)

    @precondition(lambda self: any(n.alive and not n.connected for n in self.c.nodes.values()))
    @rule(process=INDEX)
    def reconnect(self, process: int) -> None:
        self.c.tick()
        self.c.reconnect(
            self.pick(process, [p for p, n in self.c.nodes.items() if n.alive and not n.connected])
        )
        SEEN["reconnections"] += 1

    # Checks ---------------------------------------------------------------------------------------
    @invariant()
    def finished_cuts_are_exact(self) -> None:
        for done in self.c.finished[self.checked :]:
            check(done, self.c.rejoin)
            if (done.run.generation, done.run.epoch) in self.ahead:
                SEEN[f"started at an epoch a participant had passed, ended {done.cut.status}"] += 1
        self.checked = len(self.c.finished)

    @invariant()
    def nothing_rejected_or_lost_in_storage(self) -> None:
        stats = self.c.coordinator.stats()
        assert (stats.rejected, stats.store_errors) == (0, 0)

    @invariant()
    def snapshots_end_by_their_deadline(self) -> None:
        """None runs past its deadline; every other one ended stored, unless a collector crash took it."""
        running = {(self.c.generation, epoch) for epoch in self.c.coordinator.running()}
        for key in running:
            assert self.c.now < self.c.runs[key].started + self.c.deadline
        ended = {(f.run.generation, f.run.epoch) for f in self.c.finished}
        lost = {(run.generation, run.epoch) for run in self.c.lost_runs}
        assert set(self.c.runs) == running | ended | lost
        assert not (running & ended or running & lost or ended & lost)


def machine_settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
    )


def test_cuts_stay_exact_through_crashes_restarts_and_repeats() -> None:
    """The machine, then proof that it exercised what it claims to check."""
    before = SEEN.copy()
    # Derandomized, so that the coverage it must show below does not depend on the luck of a run.
    fixed = settings(machine_settings(EXAMPLES, STEPS), derandomize=True, database=None)
    run_state_machine_as_test(ClusterMachine, settings=fixed)
    seen = SEEN - before
    # Derandomized is not the same walk everywhere: hypothesis' engine chose differently after unrelated
    # modules were imported (from about the 240th rule on), and rare cases (a collector restart before a
    # complete cut) went from hundreds to a handful. So this run asserts only that it checked many cuts;
    # test_seeded_walks_exercise_every_rule, whose walks depend on their seeds alone, asserts that every
    # case, rare ones included, was exercised.
    minimum = {"complete": 200, "complete, with several processes": 100}
    assert all(seen[what] >= least for what, least in minimum.items()), seen


WEIGHTS = {
    "send": 3.0,
    "traffic": 2.0,
    "reorder": 3.0,
    "lose": 0.5,
    "hold": 0.5,
    "duplicate": 1.0,
    "consume": 3.0,
    "respond": 3.0,
    "start_snapshot": 2.0,
    "report": 3.0,
    "order": 3.0,
    "sync": 2.0,
    "settle": 2.0,
    "wait": 1.0,
    "crash": 0.3,
    "disconnect": 0.5,
    "restart_collector": 0.3,
    "reconnect": 2.0,
}
"""How often a walk picks each rule: mostly work and snapshots, now and then a failure."""


def walk(machine: ClusterMachine, rng: random.Random, steps: int) -> None:
    """``steps`` rules of ``machine``, drawn by :data:`WEIGHTS` among those enabled, with random
    arguments; the invariants after each. Seeded, so every run exercises the same worlds (hypothesis
    may switch rules off for a whole example, which keeps many of its worlds quiet)."""

    def index() -> int:
        return rng.randrange(1 << 16)

    machine.boot(
        rng.randint(2, 5), rng.randint(1, 30), rng.randint(5, 60), rng.randint(0, 40), rng.randint(3, 30),
    )  # fmt: skip
    c = machine.c
    for _ in range(steps):
        alive = [n for n in c.nodes.values() if n.alive]
        weights = dict(WEIGHTS)
        if not c.network:
            del weights["reorder"], weights["lose"], weights["hold"]
        if len(c.coordinator.running()) >= MAX_RUNNING:
            del weights["start_snapshot"]
        if len(alive) < 2:
            del weights["crash"]
        if c.generation >= RESTARTS:
            del weights["restart_collector"]
        if all(n.connected for n in alive):
            del weights["reconnect"]
        (rule,) = rng.choices(list(weights), list(weights.values()))
        if rule == "send":
            machine.send(index(), index(), rng.randrange(5), rng.randint(1, 5))
        elif rule in ("reorder", "report", "order", "reconnect"):
            getattr(machine, rule)(index())
        elif rule in ("sync", "start_snapshot"):
            getattr(machine, rule)()
        elif rule == "lose":
            machine.lose(index(), rng.randint(1, 20))
        elif rule == "hold":
            machine.hold(index(), rng.randint(1, 20), rng.randint(1, 40))
        elif rule == "duplicate":
            machine.duplicate(index(), rng.random() < 0.5)
        elif rule == "consume":
            machine.consume(index(), index())
        elif rule == "respond":
            machine.respond(index(), index(), rng.randrange(5))
        elif rule == "traffic":
            machine.traffic(index(), rng.randint(1, 12))
        elif rule == "settle":
            machine.settle(index(), rng.random() < 0.5)
        elif rule == "wait":
            machine.wait(rng.randint(1, 30))
        elif rule == "crash":
            machine.crash(index(), rng.randint(0, 10), rng.random() < 0.5)
        elif rule == "disconnect":
            machine.disconnect(index(), rng.randint(0, 3))
        else:
            assert rule == "restart_collector"
            machine.restart_collector(
                rng.random() < 0.5, [rng.randint(0, 3) for _ in range(rng.randint(0, 5))]
            )
        machine.finished_cuts_are_exact()
        machine.nothing_rejected_or_lost_in_storage()
        machine.snapshots_end_by_their_deadline()


def test_seeded_walks_exercise_every_rule() -> None:
    """The same machine and checks over seeded walks, counting that every case was exercised."""
    before = SEEN.copy()
    for seed in range(WALKS):
        machine = ClusterMachine()
        try:
            walk(machine, random.Random(seed), STEPS)
            SEEN["late requests refused"] += machine.c.refused
            SEEN["late requests delivered before any fence"] += machine.c.late_delivered
        finally:
            machine.teardown()
    seen = SEEN - before
    minimum = {
        "complete": 300,
        "complete, with several processes": 200,
        "complete, with messages in transit": 30,
        "complete, with messages applied before the cut": 100,
        "complete, with tokens that crossed its border": 30,
        "complete, with a request applied twice": 10,
        "complete, after a collector restart": 30,
        "incomplete: a process crashed": 20,
        "incomplete: a process may be reconnecting": 50,
        "incomplete: calls unsettled": 20,
        "incomplete: collector stopped": 5,
        "snapshots lost with the collector": 5,
        "duplicates": 100,
        "messages lost": 50,
        "requests held past their caller's failure": 50,
        "late requests refused": 10,
        "late requests delivered before any fence": 10,
        "streams broken": 50,
    }
    assert all(seen[what] >= least for what, least in minimum.items()), seen


class WithoutConsumptionRule(ClusterMachine):
    options: ClassVar[Mapping[str, bool]] = {"consumption_rule": False}


class IgnoringStampEpochs(ClusterMachine):
    options: ClassVar[Mapping[str, bool]] = {"honour_stamp_epoch": False}


@pytest.mark.parametrize("machine", [WithoutConsumptionRule, IgnoringStampEpochs])
def test_the_machine_catches_a_broken_protocol(machine: type[ClusterMachine]) -> None:
    """The same machine over an agent that counts requests consumed at delivery, or one that ignores
    the epoch in stamps: hypothesis finds a cut that is wrong or that the collector rejects."""
    fast = settings(
        machine_settings(300, STEPS),
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        report_multiple_bugs=False,
        print_blob=False,
    )
    with pytest.raises(AssertionError, match=r"tokens not conserved|channels differ|rejected"):
        run_state_machine_as_test(machine, settings=fast)


# Collector crashes: numbering and who is expected back ---------------------------------------------
def test_a_snapshot_is_numbered_above_an_epoch_an_agent_reported_after_a_collector_crash() -> None:
    cluster = Cluster(3, 10, deadline=10, rejoin=5)
    try:
        cluster.tick()
        cluster.start_snapshot()
        cluster.tick()
        cluster.order("p2")  # p2 takes its cut for 1 and stamps its next message 1
        cluster.tick()
        cluster.transfer("p2", "p0", 3)
        cluster.tick()
        assert cluster.restart_collector(clean=False, in_flight=[])  # snapshot 1 dies with the collector
        cluster.tick()
        cluster.crash("p2", 1)
        cluster.reconnect("p0")
        cluster.reconnect("p1")
        cluster.sync()
        cluster.tick()
        cluster.deliver(0)  # p0 takes its cut for 1 before it delivers: the new collector hears of it
        cluster.sync()
        assert cluster.nodes["p0"].process.epoch == 1
        cluster.tick(cluster.rejoin)  # p2, registered before the crash, is expected back until now
        run = cluster.start_snapshot()
        assert run is not None
        cluster.sync()
        cluster.tick(cluster.deadline)
        (done,) = [f for f in cluster.finished if f.run is run]
        assert run.epoch > 1 and done.cut.status == "COMPLETE", done.cut.reasons
    finally:
        cluster.close()


def test_no_complete_cut_while_a_process_of_an_earlier_cut_reconnects() -> None:
    cluster = Cluster(3, 10, deadline=10, rejoin=5)
    try:
        cluster.tick()
        cluster.start_snapshot()
        cluster.sync()
        assert cluster.finished[-1].cut.status == "COMPLETE"  # p0, p1 and p2
        cluster.tick()
        cluster.disconnect("p2", 0)
        cluster.tick()
        cluster.start_snapshot()  # INCOMPLETE at once, naming p2 as not connected
        assert cluster.finished[-1].cut.reasons == (f"{REASON_ABSENT} at p2",)
        cluster.tick()
        cluster.restart_collector(clean=False, in_flight=[])
        cluster.reconnect("p0")
        cluster.reconnect("p2")
        cluster.sync()
        cluster.tick()  # p1 has been away one step; the grace is five
        run = cluster.start_snapshot()
        assert run is not None
        cluster.sync()
        cut = cluster.finished[-1].cut
        assert cut.status == "INCOMPLETE" and "p1" in cut.missing, cut
    finally:
        cluster.close()


def test_without_the_flush_barrier_a_late_record_is_missed() -> None:
    """A directed world, since random runs rarely hit it: p0's call to p1 fails (the answer is lost)
    before p0's cut, which lists it failed, so the collector fences it; p1 recorded the request, but
    its record is still behind p1's local snapshot when p0's arrives. Only the flush markers make the
    collector wait for it rather than settle the call as delivered nowhere."""
    for barrier in (False, True):
        cluster = Cluster(2, 10, deadline=30, rejoin=5, silent=20, flush_barrier=barrier)
        try:
            cluster.tick()
            cluster.transfer("p0", "p1", 3)
            cluster.tick()
            cluster.start_snapshot()
            for step in ("order p1", "deliver", "consume p1", "respond p1", "lose", "", "wait", "order p0"):
                cluster.tick(3 if step == "wait" else 1)  # p0 learns of the failure before its cut
                if step.startswith("order"):
                    assert cluster.order(step.split()[1])
                elif step == "deliver":
                    assert cluster.deliver(0) is not None  # after p1's cut: recorded
                elif step.startswith("consume"):
                    assert cluster.consume("p1", 0) is not None
                elif step.startswith("respond"):
                    assert cluster.respond("p1", 0, 2) is not None
                elif step == "lose":
                    assert cluster.lose(0, 1) is not None  # the answer
            assert cluster.report("p1")  # p1's local snapshot; its record follows
            assert cluster.report("p0")
            if not barrier:
                (done,) = cluster.finished
                with pytest.raises(AssertionError, match="channels differ"):
                    check(done, cluster.rejoin)
                continue
            assert cluster.finished == []  # p1's marker comes behind its record
            cluster.sync()
            (done,) = cluster.finished
            check(done, cluster.rejoin)
            assert done.cut.status == "COMPLETE" and len(done.cut.in_transit) == 1
        finally:
            cluster.close()
