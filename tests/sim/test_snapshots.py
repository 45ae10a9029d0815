"""Snapshots under arbitrary reordering, delayed consumption, duplicates and stuck channels.

Hypothesis drives the simulation's scheduler (``st.randoms``), so every
interleaving it finds is shrunk to a small one. The properties: a COMPLETE
cut conserves tokens exactly, records exactly the messages in transit, and
passes the vector-clock check; cuts finish COMPLETE once the network drains;
what cannot complete says which process, sender or channel is missing.
Requests may go through a load balancer (``balanced``): the caller counts
them without knowing the server, which the network picks at delivery.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from sim.harness import SimConfig, SimResult, conserved, record_truth, simulate, token_sum

from cutwatch.agent._clock import VectorClock
from cutwatch.agent._snapshot import (
    Capture,
    ChannelRecord,
    LocalSnapshot,
    MsgKey,
    RecordingStopped,
    SnapshotParticipant,
)
from cutwatch.collector._assembly import (
    AssembledCut,
    CutAssembler,
    InconsistentCutError,
    ProtocolViolationError,
)


def sim(examples: int) -> settings:
    """Hypothesis settings for a simulation property: no deadline, ``examples`` schedules."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
    )


RANDOMS = st.randoms(use_true_random=False)


@st.composite
def configs(draw: st.DrawFn, /, **fixed: object) -> SimConfig:
    values: dict[str, object] = {
        "n": draw(st.integers(2, 6)),
        "steps": draw(st.integers(0, 160)),
        "max_epochs": draw(st.integers(1, 5)),
        "snapshot_percent": draw(st.integers(1, 12)),
        "initial": draw(st.integers(1, 50)),
        "balanced": draw(st.booleans()),
    }
    for name, value in fixed.items():
        values[name] = draw(value) if isinstance(value, st.SearchStrategy) else value
    return SimConfig(**values)  # type: ignore[arg-type]


def assert_clocks_consistent(cut: AssembledCut) -> None:
    for p, clock in cut.clocks.items():
        for q, other in cut.clocks.items():
            assert clock.get(q) <= other.get(q), (p, q)


def assert_exact(result: SimResult, epoch: int) -> None:
    """A COMPLETE cut: conservation, clocks, and in-transit equal to the ground truth."""
    cut = result.cuts[epoch]
    assert cut.status == "COMPLETE"
    assert set(cut.states) == {f"p{i}" for i in range(result.config.n)}
    assert conserved(cut, result.total)
    assert_clocks_consistent(cut)
    keys = [record_truth(record) for record in cut.in_transit]
    assert len(keys) == len(set(keys))
    assert set(keys) == result.expected_in_transit[epoch]


# Properties --------------------------------------------------------------------------------
@sim(800)
@given(configs(), RANDOMS)
def test_every_snapshot_completes_exactly_once_the_network_drains(cfg: SimConfig, rng: random.Random) -> None:
    result = simulate(cfg, rng)
    assert len(result.cuts) == result.started
    for epoch in result.cuts:
        assert_exact(result, epoch)


@sim(300)
@given(configs(duplicate_percent=st.integers(5, 50)), RANDOMS)
def test_duplicate_deliveries_are_reported_and_never_counted(cfg: SimConfig, rng: random.Random) -> None:
    result = simulate(cfg, rng)
    assert result.duplicates_reported == result.duplicates_injected
    for epoch in result.cuts:
        assert_exact(result, epoch)


@st.composite
def stalled_configs(draw: st.DrawFn) -> SimConfig:
    cfg = draw(configs())
    pairs = [(a, b) for a in range(cfg.n) for b in range(cfg.n) if a != b]
    stalled = draw(st.frozensets(st.sampled_from(pairs), min_size=1, max_size=3))
    lazy = draw(st.frozensets(st.integers(0, cfg.n - 1), max_size=2))
    return SimConfig(**{**cfg.__dict__, "stalled": stalled, "lazy": lazy})


@sim(600)
@given(stalled_configs(), RANDOMS)
def test_stuck_channels_keep_cuts_incomplete_and_are_named(cfg: SimConfig, rng: random.Random) -> None:
    result = simulate(cfg, rng)
    for epoch, cut in result.cuts.items():
        requests: dict[str, int] = {}
        responses: dict[tuple[str, str], int] = {}
        for msg in result.stuck:
            if msg.epoch >= epoch:
                continue
            if msg.key.kind == "request":
                requests[msg.sender] = requests.get(msg.sender, 0) + 1
            else:
                channel = (msg.sender, msg.receiver)
                responses[channel] = responses.get(channel, 0) + 1
        if not requests and not responses:
            assert_exact(result, epoch)
            continue
        assert cut.status == "INCOMPLETE"
        assert cut.missing == ()
        assert {o.sender: o.owed - o.got for o in cut.owed_requests} == requests
        assert {(o.sender, o.receiver): o.owed - o.got for o in cut.owed} == responses
        for sender in requests:
            assert any(f"requests from {sender} (" in reason for reason in cut.reasons)
        for sender, receiver in responses:
            assert any(f"{sender} -> {receiver} (" in reason for reason in cut.reasons)


@sim(300)
@given(configs(lazy=st.just(frozenset({0}))), RANDOMS)
def test_a_handler_that_never_consumes_does_not_hold_cuts_up(cfg: SimConfig, rng: random.Random) -> None:
    # p0 delivers but never consumes: its messages are in transit, forever, and every cut still completes.
    result = simulate(cfg, rng)
    for epoch in result.cuts:
        assert_exact(result, epoch)


@sim(600)
@given(configs(max_records=st.integers(0, 3), max_open_epochs=st.integers(1, 3)), RANDOMS)
def test_bounded_recording_never_reports_a_truncated_cut_complete(cfg: SimConfig, rng: random.Random) -> None:
    result = simulate(cfg, rng)
    for epoch, cut in result.cuts.items():
        if cut.status == "COMPLETE":
            assert_exact(result, epoch)
        else:
            assert any(r.startswith(("recording truncated", "too many open epochs")) for r in cut.reasons)
            assert len(cut.in_transit) < len(result.expected_in_transit[epoch]) or cut.missing or cut.owed


# Load balancing: the caller never knows the server ----------------------------------------
@sim(400)
@given(configs(balanced=True, duplicate_percent=st.integers(0, 30)), RANDOMS)
def test_load_balanced_calls_complete_exactly_when_drained(cfg: SimConfig, rng: random.Random) -> None:
    result = simulate(cfg, rng)
    assert len(result.cuts) == result.started
    for epoch in result.cuts:
        assert_exact(result, epoch)


def random_balanced_config(rng: random.Random) -> SimConfig:
    """A load-balanced world, sometimes with duplicates, stuck channels, lazy handlers or small bounds."""
    n = rng.randint(2, 6)
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    stalled = (
        frozenset(rng.sample(pairs, rng.randint(1, min(3, len(pairs)))))
        if rng.random() < 0.3
        else frozenset()
    )
    lazy = frozenset(rng.sample(range(n), 1)) if rng.random() < 0.2 else frozenset()
    bounded = rng.random() < 0.2
    return SimConfig(
        n=n,
        steps=rng.randint(0, 160),
        initial=rng.randint(1, 50),
        max_epochs=rng.randint(1, 5),
        snapshot_percent=rng.randint(1, 12),
        duplicate_percent=rng.choice([0, 0, rng.randint(1, 40)]),
        stalled=stalled,
        lazy=lazy,
        max_records=rng.randint(0, 3) if bounded else 10_000,
        max_open_epochs=rng.randint(1, 3) if bounded else 8,
        balanced=True,
    )


def test_thousands_of_load_balanced_runs_never_report_a_false_complete() -> None:
    complete = spread = 0
    for seed in range(2500):
        rng = random.Random(seed)
        cfg = random_balanced_config(rng)
        result = simulate(cfg, rng)
        spread += result.balanced_deliveries
        for epoch, cut in result.cuts.items():
            if cut.status == "COMPLETE":
                complete += 1
                assert_exact(result, epoch)
        if not cfg.stalled and cfg.max_records == 10_000:
            assert len(result.cuts) == result.started, seed
            assert all(cut.status == "COMPLETE" for cut in result.cuts.values()), seed
    # The runs exercised what they claim: many COMPLETE cuts, many requests to multi-server channels.
    assert complete > 2000 and spread > 10_000, (complete, spread)


# The consumption rule matters -------------------------------------------------------------
def violates_conservation(result: SimResult) -> bool:
    return any(c.status == "COMPLETE" and not conserved(c, result.total) for c in result.cuts.values())


def test_without_the_consumption_rule_fixed_seeds_lose_tokens() -> None:
    cfg = SimConfig(n=3, steps=120, snapshot_percent=10, consumption_rule=False)
    violating = [seed for seed in range(20) if violates_conservation(simulate(cfg, random.Random(seed)))]
    assert violating
    # The same seeds with the rule on are exact.
    fixed = SimConfig(n=3, steps=120, snapshot_percent=10)
    for seed in violating:
        result = simulate(fixed, random.Random(seed))
        for epoch in result.cuts:
            assert_exact(result, epoch)


def test_without_the_consumption_rule_hypothesis_finds_a_complete_cut_that_loses_tokens() -> None:
    strategy = st.tuples(configs(consumption_rule=False), st.integers(0, 2**32 - 1))
    cfg, seed = find(
        strategy,
        lambda example: violates_conservation(simulate(example[0], random.Random(example[1]))),
        settings=settings(max_examples=2000, database=None, deadline=None),
        random=random.Random(0),
    )
    result = simulate(cfg, random.Random(seed))
    bad = [c for c in result.cuts.values() if c.status == "COMPLETE" and not conserved(c, result.total)]
    assert bad
    # The tokens are lost, not invented: credited after the cut, counted consumed before it.
    for cut in bad:
        assert token_sum(cut) < result.total
        assert_clocks_consistent(cut)


def test_ignoring_stamp_epochs_is_caught_by_the_collector() -> None:
    # An agent that delivers post-cut messages before taking its cut: counts or clocks expose it.
    from cutwatch.collector._assembly import AssemblyError

    def fails(example: tuple[SimConfig, int]) -> bool:
        try:
            simulate(example[0], random.Random(example[1]))
        except AssemblyError:
            return True
        return False

    find(
        st.tuples(configs(honour_stamp_epoch=False), st.integers(0, 2**32 - 1)),
        fails,
        settings=settings(max_examples=2000, database=None, deadline=None),
        random=random.Random(0),
    )


# Assembler and participant, by hand ----------------------------------------------------------
def key(sender: str, call: int, kind: str = "request") -> MsgKey:
    return MsgKey(sender, call, 1, kind)


def reply(sender: str, call: int) -> MsgKey:
    return key(sender, call, "response")


def local(
    epoch: int,
    process: str,
    clock: dict[str, int],
    *,
    requests_sent: int = 0,
    responses_sent: dict[str, int] | None = None,
    requests_consumed: dict[str, int] | None = None,
    responses_consumed: dict[str, int] | None = None,
) -> LocalSnapshot:
    return LocalSnapshot(
        epoch,
        process,
        VectorClock(clock),
        0,
        requests_sent=requests_sent,
        responses_sent=responses_sent or {},
        requests_consumed=requests_consumed or {},
        responses_consumed=responses_consumed or {},
    )


def test_a_receive_without_its_send_is_an_inconsistent_cut() -> None:
    assembler = CutAssembler(1, ["a", "b"])
    # a's cut is before its send (a: 1); b's cut is after receiving it (knows a: 2).
    assembler.add_local(local(1, "a", {"a": 1}))
    assembler.add_local(local(1, "b", {"a": 2, "b": 3}, requests_consumed={"a": 1}))
    with pytest.raises(InconsistentCutError, match="b knows a's event 2"):
        assembler.status()
    with pytest.raises(InconsistentCutError):
        assembler.finish()


def test_the_vector_clock_check_alone_rejects_a_cut_whose_counts_balance() -> None:
    assembler = CutAssembler(1, ["a", "b"])
    assembler.add_local(local(1, "a", {"a": 1}, requests_sent=1))
    assembler.add_local(local(1, "b", {"a": 4, "b": 2}))
    assembler.add_record(ChannelRecord(1, "a", "b", "1", key("a", 1)))
    with pytest.raises(InconsistentCutError):
        assembler.status()


def test_more_records_than_owed_is_a_protocol_violation() -> None:
    assembler = CutAssembler(1, ["a", "b", "c"])
    assembler.add_local(local(1, "a", {"a": 1}, requests_sent=2))
    assembler.add_local(local(1, "b", {"b": 1}, requests_consumed={"a": 1}))
    assembler.add_record(ChannelRecord(1, "a", "b", "1", key("a", 1)))
    # c has not reported, but two records of a's requests exceed the bound b alone sets.
    assembler.add_record(ChannelRecord(1, "a", "c", "1", key("a", 2)))
    with pytest.raises(ProtocolViolationError, match="2 records of requests from a, only 1"):
        assembler.status()
    with pytest.raises(ProtocolViolationError, match="recorded twice"):
        assembler.add_record(ChannelRecord(1, "a", "c", "1", key("a", 1)))

    responses = CutAssembler(1, ["a", "b"])
    responses.add_local(local(1, "a", {"a": 1}, responses_sent={"b": 1}))
    responses.add_local(local(1, "b", {"b": 1}, responses_consumed={"a": 1}))
    responses.add_record(ChannelRecord(1, "a", "b", "1", reply("a", 7)))
    with pytest.raises(ProtocolViolationError, match="1 response records on a -> b, only 0"):
        responses.status()


def test_consuming_more_requests_than_were_sent_is_a_protocol_violation() -> None:
    assembler = CutAssembler(1, ["a", "b", "c"])
    assembler.add_local(local(1, "a", {"a": 1}, requests_sent=1))
    assembler.add_local(local(1, "b", {"b": 1}, requests_consumed={"a": 1}))
    assert assembler.status() == "PENDING"
    assembler.add_local(local(1, "c", {"c": 1}, requests_consumed={"a": 1}))
    with pytest.raises(ProtocolViolationError, match="consumed 2 requests from a before their cuts"):
        assembler.status()


def test_requests_from_one_sender_may_be_recorded_at_any_receiver() -> None:
    assembler = CutAssembler(1, ["a", "b", "c"])
    assembler.add_local(local(1, "a", {"a": 5}, requests_sent=4, responses_consumed={"b": 1}))
    assembler.add_local(local(1, "b", {"b": 2}, requests_consumed={"a": 1}, responses_sent={"a": 1}))
    assembler.add_local(local(1, "c", {"c": 1}))
    assembler.add_record(ChannelRecord(1, "a", "b", "1", key("a", 2)))
    assert assembler.status() == "PENDING"
    assembler.add_record(ChannelRecord(1, "a", "c", "1", key("a", 3)))
    assembler.add_record(ChannelRecord(1, "a", "c", "1", key("a", 4)))
    assert assembler.status() == "COMPLETE"
    cut = assembler.finish()
    assert (cut.status, cut.owed, cut.owed_requests) == ("COMPLETE", (), ())
    assert [(r.receiver, r.kind, r.msg_key.call_id) for r in cut.in_transit] == [
        ("b", "request", 2), ("c", "request", 3), ("c", "request", 4),
    ]  # fmt: skip


def test_response_keys_are_per_receiver_request_keys_per_sender() -> None:
    # Two callers' call 1 to s: the same response key, on two channels. Not a duplicate.
    assembler = CutAssembler(1, ["a", "b", "s"])
    assembler.add_local(local(1, "s", {"s": 3}, responses_sent={"a": 1, "b": 1}))
    assembler.add_local(local(1, "a", {"a": 1}))
    assembler.add_local(local(1, "b", {"b": 1}))
    assembler.add_record(ChannelRecord(1, "s", "a", "0", reply("s", 1)))
    assembler.add_record(ChannelRecord(1, "s", "b", "0", reply("s", 1)))
    assert assembler.status() == "COMPLETE"


def test_finish_names_missing_processes_owed_senders_and_channels() -> None:
    assembler = CutAssembler(2, ["a", "b", "c"])
    assembler.add_local(local(2, "a", {"a": 3}, requests_sent=4, responses_sent={"b": 5}))
    assembler.add_local(local(2, "b", {"b": 1}, requests_consumed={"a": 1}, responses_consumed={"a": 2}))
    assembler.add_record(ChannelRecord(2, "a", "b", "7", reply("a", 4)))
    assembler.add_record(ChannelRecord(2, "a", "b", "7", key("a", 3)))
    assert assembler.status() == "PENDING"
    cut = assembler.finish()
    assert cut.status == "INCOMPLETE"
    assert cut.missing == ("c",)
    assert [(o.sender, o.receiver, o.owed, o.got) for o in cut.owed] == [("a", "b", 3, 1)]
    assert cut.owed_requests == ()  # c may have consumed some: the debt is not known yet
    assert set(cut.states) == {"a", "b"}
    assembler.add_local(local(2, "c", {"c": 1}, requests_consumed={"a": 1}))
    cut = assembler.finish()
    assert (cut.status, cut.missing) == ("INCOMPLETE", ())
    assert [(o.sender, o.owed, o.got) for o in cut.owed_requests] == [("a", 2, 1)]
    assert cut.reasons == (
        "requests still owe messages: requests from a (1/2)",
        "channels still owe messages: a -> b (1/3)",
    )


def test_participant_counts_requests_per_sender_and_responses_per_channel() -> None:
    part = SnapshotParticipant("s")
    with pytest.raises(ValueError, match="receiver"):
        part.on_send("response")
    with pytest.raises(ValueError, match="kind"):
        part.on_send("stream")
    assert part.on_send("request") == 0 and part.on_send("request") == 0
    part.on_send("response", "a")

    def capture() -> Capture:
        return Capture({}, 0)

    for delivery in (
        part.on_deliver("a", 0, "1", key("a", 1), capture),
        part.on_deliver("a", 0, "1", reply("a", 1), capture),
        part.on_deliver("b", 0, "1", key("b", 1), capture),
        part.on_deliver("a", 0, "1", key("a", 2), capture),
    ):
        part.on_consume(delivery)
    with pytest.raises(ValueError, match="kind"):
        part.on_deliver("a", 0, "1", key("a", 3, "stream"), capture)
    (snap,) = part.take_snapshot(1, Capture({}, 0))
    assert snap.requests_sent == 2 and snap.responses_sent == {"a": 1}
    assert snap.requests_consumed == {"a": 2, "b": 1} and snap.responses_consumed == {"a": 1}


def test_participant_counts_duplicates_once_and_jumps_epochs_with_one_capture() -> None:
    part = SnapshotParticipant("b")
    captures = 0

    def capture() -> Capture:
        nonlocal captures
        captures += 1
        return Capture({"b": 9}, {"balance": 5})

    first = part.on_deliver("a", 0, "1", key("a", 1), capture)
    again = part.on_deliver("a", 0, "1", key("a", 1), capture)
    assert again.duplicate and not first.duplicate
    later = part.on_deliver("a", 3, "2", key("a", 2), capture)
    assert captures == 1 and part.epoch == 3
    events = part.drain()
    snaps = [e for e in events if isinstance(e, LocalSnapshot)]
    assert [s.epoch for s in snaps] == [1, 2, 3]
    assert all(s.state == {"balance": 5} and s.clock == {"b": 9} for s in snaps)
    # first was pending at the cut: in transit for 1, 2 and 3; later is post-cut for all of them.
    records = [e for e in events if isinstance(e, ChannelRecord)]
    assert sorted((r.epoch, r.msg_key.call_id) for r in records) == [(1, 1), (2, 1), (3, 1)]
    for delivery in (first, again, first, later):
        part.on_consume(delivery)
    assert part.requests_consumed == {"a": 2} and part.responses_consumed == {}
    assert part.stats().duplicates == 1 and part.stats().recent_duplicates == [key("a", 1)]


def test_participant_bounds_records_and_open_epochs() -> None:
    part = SnapshotParticipant("b", max_records=1, max_open_epochs=2)
    part.take_snapshot(1, Capture({}, 0))
    for call in (1, 2, 3):
        part.on_deliver("a", 0, "1", key("a", call), lambda: Capture({}, 0))
    events = part.drain()
    assert [type(e).__name__ for e in events] == ["LocalSnapshot", "ChannelRecord", "RecordingStopped"]
    assert part.stats().records_dropped == 2
    part.close_epoch(3)  # closed before it was reached: no snapshot, no recording
    part.take_snapshot(4, Capture({}, 0))
    events = part.drain()
    assert [e.epoch for e in events if isinstance(e, LocalSnapshot)] == [2, 4]
    assert RecordingStopped(1, "b", "too many open epochs", 2) in events
    assert list(part.open_epochs) == [2, 4]
    part.close_epoch(2)
    assert list(part.open_epochs) == [4]
    assert part.take_snapshot(4, Capture({}, 0)) == []
