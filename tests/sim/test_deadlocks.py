"""Deadlock detection on the cuts of random executions of services that call each other (sim.waits).

Hypothesis explores schedules, pool sizes and call plans, with channels
that lead to two servers behind a load balancer and calls made on channels
that never answered before. The properties, against the world's ground
truth (the tasks that never finish once nothing can happen):

- every deadlock reported on any cut, COMPLETE or not, is real: each task
  it names never finishes;
- the cut taken once nothing can happen reports every stuck task, calls
  queued for a worker included, resting on nothing but the cut;
- a snapshot that the collector would finish early, because all it waits
  for are calls queued behind deadlocked workers, waits for calls that no
  worker ever takes.

Switched off, the servers' record of arriving calls is what the second
property needs: hypothesis then finds a deadlock that no cut reports. And an
early finish that skipped its deadlock check would give up on queued calls
that busy workers take later.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from sim import waits
from sim.waits import WaitConfig, run_world

from cutwatch.predicates import find_deadlocks

configs = st.builds(
    WaitConfig,
    processes=st.integers(2, 4),
    pool_sizes=st.sampled_from([(1, 2), (2, 3), (1, 2, 3)]),
    calls=st.integers(1, 8),
    depth=st.integers(1, 3),
    balanced=st.booleans(),
    snapshots=st.integers(1, 6),
)


def reported(cut: object) -> set[tuple[str, int]]:
    return {(task.process, task.task_id) for deadlock in find_deadlocks(cut) for task in deadlock.tasks}  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, rng=st.randoms(use_true_random=False))
def test_every_deadlock_reported_is_real_and_the_last_cut_reports_every_stuck_task(
    config: WaitConfig, rng: random.Random
) -> None:
    world, cuts, final = run_world(config, rng)
    stuck = world.stuck()
    for epoch, cut in sorted(cuts.items()):
        phantom = reported(cut) - stuck
        assert not phantom, f"cut {epoch} ({cut.status}) reports tasks that finish later: {sorted(phantom)}"
    assert reported(final) == stuck
    for epoch, calls in world.said_stuck.items():
        assert calls <= world.still_queued(), (
            f"cut {epoch}: called stuck, but a worker took {calls - world.still_queued()}"
        )
    for deadlock in find_deadlocks(final):
        assert all("INCOMPLETE" in item for item in deadlock.rests_on), deadlock.rests_on


def test_the_worlds_deadlock_and_also_queue_without_deadlocking() -> None:
    """The properties above are not vacuous: seeded worlds deadlock through queued calls, and others
    take cuts with calls queued behind busy workers that then go on."""
    deadlocked = live_queues = early = 0
    for seed in range(60):
        world, cuts, final = run_world(WaitConfig(calls=6, pool_sizes=(1, 2, 3)), random.Random(seed))
        stuck = world.stuck()
        if stuck and any(server.queue for server in world.servers.values()):
            deadlocked += 1
            assert reported(final) == stuck
        for cut in cuts.values():
            queued = any(task.queued for tasks in cut.tasks.values() for task in tasks)
            live_queues += queued and not reported(cut)
        early += bool(world.said_stuck)
    assert deadlocked >= 3 and live_queues >= 10 and early >= 3, (deadlocked, live_queues, early)


def test_without_the_record_of_arriving_calls_hypothesis_finds_a_deadlock_no_cut_reports() -> None:
    def missed(example: tuple[WaitConfig, int]) -> bool:
        config, seed = example
        world, _, final = run_world(config, random.Random(seed))
        return reported(final) != world.stuck()

    config, _ = find(
        st.tuples(
            st.builds(WaitConfig, record_arrivals=st.just(False), calls=st.integers(2, 8)),
            st.integers(0, 10**6),
        ),
        missed,
        settings=settings(max_examples=2000, deadline=None, database=None),
    )
    assert not config.record_arrivals


def test_an_early_finish_without_the_deadlock_check_would_give_up_on_calls_that_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finishing a snapshot whenever it waits only on queued calls is wrong: busy pools take them later."""
    monkeypatch.setattr(waits, "queued_calls_stuck", lambda cut, started: bool(cut.unsettled))

    def gave_up_too_early(seed: int) -> bool:
        world, _, _ = run_world(WaitConfig(calls=6, pool_sizes=(1, 2, 3)), random.Random(seed))
        return any(not calls <= world.still_queued() for calls in world.said_stuck.values())

    assert any(gave_up_too_early(seed) for seed in range(200))
