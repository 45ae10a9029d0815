"""Algebra laws of vector clocks, checked on random clocks over a few process ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cutwatch.core import LocalClock as LocalClock
from cutwatch.core import VectorClock

PIDS = ("a:1", "b:2", "c:3", "d:4")
pids = st.sampled_from(PIDS)
# Small values make equal entries (and so comparable clocks) common.
clocks = st.dictionaries(pids, st.integers(min_value=0, max_value=4)).map(VectorClock)
FAST = settings(max_examples=1000, deadline=None)


def _entrywise_le(a: VectorClock, b: VectorClock) -> bool:
    return all(a.get(p) <= b.get(p) for p in PIDS)


@FAST
@given(clocks, clocks)
def test_merge_is_commutative(a: VectorClock, b: VectorClock) -> None:
    assert a.merge(b) == b.merge(a)


@FAST
@given(clocks, clocks, clocks)
def test_merge_is_associative(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@FAST
@given(clocks)
def test_merge_is_idempotent(a: VectorClock) -> None:
    assert a.merge(a) == a
    assert a.merge(VectorClock()) == a


@FAST
@given(clocks, clocks, clocks)
def test_merge_is_the_least_upper_bound(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    joined = a.merge(b)
    assert a <= joined and b <= joined
    assert all(joined.get(p) == max(a.get(p), b.get(p)) for p in PIDS)
    if a <= c and b <= c:
        assert joined <= c
    else:
        assert not joined <= c


@FAST
@given(clocks, pids)
def test_tick_strictly_increases_only_its_own_entry(a: VectorClock, pid: str) -> None:
    ticked = a.tick(pid)
    assert a.happened_before(ticked)
    assert a < ticked and ticked > a
    assert not ticked.happened_before(a)
    assert ticked[pid] == a.get(pid) + 1
    assert all(ticked.get(p) == a.get(p) for p in PIDS if p != pid)
    assert a.tick(pid) == ticked, "tick must not mutate the clock it was called on"


@FAST
@given(clocks, clocks)
def test_le_is_the_entrywise_order(a: VectorClock, b: VectorClock) -> None:
    assert (a <= b) == _entrywise_le(a, b)
    assert (a >= b) == _entrywise_le(b, a)
    assert a.happened_before(b) == (_entrywise_le(a, b) and any(a.get(p) != b.get(p) for p in PIDS))


@FAST
@given(clocks)
def test_happened_before_is_irreflexive(a: VectorClock) -> None:
    assert not a.happened_before(a)
    assert not a < a
    assert not a.concurrent(a)


@FAST
@given(clocks, clocks, clocks)
def test_happened_before_is_transitive(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    if a.happened_before(b) and b.happened_before(c):
        assert a.happened_before(c)
    # Random triples rarely chain; build a chain that is sure to.
    lower, upper = a.merge(b).tick("a:1"), a.merge(b).merge(c).tick("a:1").tick("b:2")
    assert a.happened_before(lower) and lower.happened_before(upper) and a.happened_before(upper)


@FAST
@given(clocks, clocks)
def test_happened_before_is_asymmetric(a: VectorClock, b: VectorClock) -> None:
    assert not (a.happened_before(b) and b.happened_before(a))


@FAST
@given(clocks, clocks)
def test_exactly_one_relation_holds(a: VectorClock, b: VectorClock) -> None:
    relations = [a == b, a.happened_before(b), b.happened_before(a), a.concurrent(b)]
    assert relations.count(True) == 1, (a, b, relations)
    assert a.concurrent(b) == b.concurrent(a)


def test_concurrent_clocks_exist_and_are_recognised() -> None:
    a, b = VectorClock({"a:1": 1}), VectorClock({"b:2": 1})
    assert a.concurrent(b) and b.concurrent(a)
    assert not a <= b and not b <= a and a != b


@FAST
@given(st.dictionaries(pids, st.integers(min_value=0, max_value=4)))
def test_zero_entries_equal_missing_ones(raw: dict[str, int]) -> None:
    clock = VectorClock(raw)
    nonzero = {p: v for p, v in raw.items() if v}
    assert dict(clock) == nonzero
    assert clock == VectorClock(nonzero) and clock == raw and clock == nonzero
    assert hash(clock) == hash(VectorClock(nonzero))
    assert all(clock.get(p) == raw.get(p, 0) for p in PIDS)
    assert len(clock) == len(nonzero)
    assert clock <= raw and clock >= raw and not clock.happened_before(raw)


@FAST
@given(st.dictionaries(pids, st.integers(min_value=0, max_value=4)), pids, st.integers(max_value=-1))
def test_negative_values_are_rejected(raw: dict[str, int], pid: str, negative: int) -> None:
    raw[pid] = negative
    with pytest.raises(ValueError, match="negative"):
        VectorClock(raw)
    with pytest.raises(ValueError, match="negative"):
        VectorClock(list(raw.items()))


def test_vector_clock_is_a_read_only_mapping() -> None:
    clock = VectorClock({"a:1": 2})
    with pytest.raises(TypeError):
        clock["a:1"] = 3  # type: ignore[index]
    with pytest.raises(KeyError):
        clock["b:2"]
    assert clock.get("b:2") == 0
    assert repr(clock) == "VectorClock({'a:1': 2})"


# LocalClock ------------------------------------------------------------------

merges = st.lists(st.lists(st.tuples(pids, st.integers(min_value=0, max_value=6)), max_size=6), max_size=8)


@FAST
@given(merges, st.lists(st.booleans(), max_size=8))
def test_local_clock_merge_matches_vector_clock(
    batches: list[list[tuple[str, int]]], ticks: list[bool]
) -> None:
    owner = "a:1"
    local = LocalClock(owner)
    model = VectorClock()
    first_seen: list[str] = [owner]
    for i, batch in enumerate(batches):
        names_before = list(local.names)
        local.merge(batch)
        for pid, value in batch:
            model = model.merge({pid: value})
            if pid not in first_seen:
                first_seen.append(pid)
        if i < len(ticks) and ticks[i]:
            local.tick()
            model = model.tick(owner)
        # The dictionary only grows at the end: indexes already handed out never move.
        assert local.names[: len(names_before)] == names_before
        assert local.snapshot() == model
    assert local.names == first_seen
    assert len(local) == len(local.names) == len(local.values)
    assert all(local.index_of(pid) == i for i, pid in enumerate(first_seen))
    assert local.names == first_seen, "looking up known ids must not add entries"


def test_local_clock_owner_is_index_zero_and_ticks() -> None:
    local = LocalClock("me:1")
    assert local.index_of("me:1") == 0
    assert local.snapshot() == VectorClock()
    local.tick()
    local.tick()
    assert local.snapshot() == VectorClock({"me:1": 2})
    assert local.index_of("other:2") == 1
    assert local.snapshot() == VectorClock({"me:1": 2}), "a new entry starts at zero"
