"""The stamp codec against a model of what each process can know.

Several codecs exchange stamps in random order, with drops, late
acknowledgements and misaddressed messages; every decoded stamp must give
exactly the sender's clock for the entries the receiver could name. The
decoder is then fed garbage and damaged stamps: it may only raise
``StampError``, and a rejected stamp leaves its state as it was.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cutwatch.core import MAX_PROCESS_ID_LENGTH, DecodedStamp, LocalClock, StampCodec, StampError
from cutwatch.core._stamp import fingerprint
from cutwatch.proto import stamp_pb2

PIDS = ("front:0a1b", "cart:2c3d", "pay:4e5f", "stock:6a7b")
EXTERNAL = tuple(f"ext-{i}:{i:04x}" for i in range(12))


def parse(data: bytes) -> stamp_pb2.Stamp:
    message = stamp_pb2.Stamp()
    message.ParseFromString(data)
    return message


def codec_state(codec: StampCodec) -> tuple[object, object]:
    return copy.deepcopy(list(codec._peer_names.items())), copy.deepcopy(list(codec._known_by.items()))


# A model of several processes exchanging stamps --------------------------------


@dataclass
class Sent:
    sender: str
    receiver: str
    data: bytes
    names: tuple[str, ...]
    values: tuple[int, ...]
    epoch: int
    call_id: int
    trace_id: bytes
    span_id: bytes


@dataclass
class Process:
    pid: str
    codec: StampCodec
    clock: LocalClock
    # Model: indexes of each sender's dictionary whose names reached us.
    known: dict[str, set[int]] = field(default_factory=dict)
    # Model: the latest acknowledgement delivered from each peer.
    acked: dict[str, int] = field(default_factory=dict)

    def contiguous_known(self, sender: str) -> int:
        indexes = self.known.get(sender)
        if indexes is None:
            return 0
        n = 0
        while n in indexes:
            n += 1
        return n


send_op = st.tuples(
    st.just("send"),
    st.integers(0, len(PIDS) - 1),  # sender
    st.integers(1, len(PIDS) - 1),  # receiver offset (never itself)
    st.sampled_from(["receiver", "receiver", "receiver", "none", "other"]),  # whom the stamp names
    st.integers(0, 2**64 - 1),  # epoch
    st.integers(0, 2**64 - 1),  # call id
    st.booleans(),  # with trace context
)
deliver_op = st.tuples(st.just("deliver"), st.integers(0, 10**6))
drop_op = st.tuples(st.just("drop"), st.integers(0, 10**6))
learn_op = st.tuples(
    st.just("learn"), st.integers(0, len(PIDS) - 1), st.sampled_from(EXTERNAL), st.integers(1, 2**40)
)
# A reply is delivery followed by a response addressed to the sender: the acknowledging pattern of RPC.
reply_op = st.tuples(st.just("reply"), st.integers(0, 10**6), st.integers(0, 2**64 - 1), st.booleans())
ops = st.lists(
    st.one_of(send_op, send_op, deliver_op, reply_op, reply_op, drop_op, learn_op), min_size=5, max_size=80
)


class Network:
    def __init__(self, max_peers: int, seed: int) -> None:
        self.exact = max_peers >= len(PIDS)
        # Epochs here are arbitrary 64-bit values, so no window on how far ahead they may run.
        self.procs = {
            pid: Process(pid, StampCodec(pid, max_peers=max_peers, max_epoch_ahead=2**64), LocalClock(pid))
            for pid in PIDS
        }
        self.in_flight: list[Sent] = []
        self.rng = random.Random(seed)
        self.unresolved = 0
        self.skipped_names = 0

    def send(self, src_i: int, dst_off: int, addressing: str, epoch: int, call_id: int, traced: bool) -> None:
        src = self.procs[PIDS[src_i]]
        dst = PIDS[(src_i + dst_off) % len(PIDS)]
        peer = {"receiver": dst, "none": None, "other": PIDS[(src_i + dst_off + 1) % len(PIDS)]}[addressing]
        if peer == src.pid:
            peer = None
        trace_id = self.rng.randbytes(16) if traced else b""
        span_id = self.rng.randbytes(8) if traced else b""
        src.clock.tick()
        encoded = src.codec.encode(
            src.clock.names,
            src.clock.values,
            peer=peer,
            epoch=epoch,
            call_id=call_id,
            trace_id=trace_id,
            span_id=span_id,
        )
        names, values = tuple(src.clock.names), tuple(src.clock.values)
        assert not encoded.degraded and encoded.entries_sent == len(values)
        message = parse(encoded.data)
        assert list(message.clock) == list(values)
        # Names travel from where the addressed peer's latest acknowledgement ends.
        if peer is not None and self.exact:
            expected_start = max(1, min(src.acked.get(peer, 1), len(values)))
            assert message.names_start == expected_start, (src.acked, peer)
            assert message.peer_fp == fingerprint(peer)
            assert message.peer_known == src.contiguous_known(peer)
        if peer is None:
            assert message.peer_fp == 0
            assert list(message.names) == list(names[1:])
        if message.names:
            assert list(message.names) == list(names[message.names_start : len(values)])
        self.skipped_names += max(0, min(message.names_start, len(values)) - 1)
        self.in_flight.append(
            Sent(src.pid, dst, encoded.data, names, values, epoch, call_id, trace_id, span_id)
        )

    def deliver(self, pick: int) -> None:
        if not self.in_flight:
            return
        sent = self.in_flight.pop(pick % len(self.in_flight))
        dst = self.procs[sent.receiver]
        decoded = dst.codec.decode(sent.data)
        self.unresolved += decoded.unresolved
        message = parse(sent.data)
        known = dst.known.setdefault(sent.sender, {0})
        known.update(range(message.names_start, message.names_start + len(message.names)))
        if message.peer_fp == fingerprint(dst.pid):
            dst.acked[sent.sender] = message.peer_known
        self.check(decoded, sent, known)
        # Merge like the agent does: never our own entry.
        dst.clock.merge((pid, value) for pid, value in decoded.entries if pid != dst.pid)
        dst.clock.tick()

    def check(self, decoded: DecodedStamp, sent: Sent, known: set[int]) -> None:
        assert decoded.sender == sent.sender
        assert (decoded.epoch, decoded.call_id) == (sent.epoch, sent.call_id)
        assert (decoded.trace_id, decoded.span_id) == (sent.trace_id, sent.span_id)
        assert all(sent.values), "the model only produces non-zero entries"
        # Resolved entries are exactly the sender's, in its dictionary order.
        sender_clock = dict(zip(sent.names, sent.values, strict=True))
        assert decoded.entries[0] == (sent.sender, sent.values[0])
        for pid, value in decoded.entries:
            assert sender_clock[pid] == value, (pid, value, sender_clock)
        order = [sent.names.index(pid) for pid, _ in decoded.entries]
        assert order == sorted(order)
        assert len(decoded.entries) + decoded.unresolved == len(sent.values)
        if self.exact:
            expected = tuple((sent.names[i], sent.values[i]) for i in range(len(sent.values)) if i in known)
            assert decoded.entries == expected

    def reply(self, pick: int, call_id: int, traced: bool) -> None:
        if not self.in_flight:
            return
        sent = self.in_flight[pick % len(self.in_flight)]
        self.deliver(pick)
        back = PIDS.index(sent.sender) - PIDS.index(sent.receiver)
        self.send(PIDS.index(sent.receiver), back % len(PIDS), "receiver", 0, call_id, traced)

    def drop(self, pick: int) -> None:
        if self.in_flight:
            self.in_flight.pop(pick % len(self.in_flight))

    def learn(self, proc_i: int, name: str, value: int) -> None:
        self.procs[PIDS[proc_i]].clock.merge([(name, value)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.sampled_from([1, 2, 1024]), st.integers(0, 2**32))
def test_random_exchanges_decode_exactly(script: list[tuple[object, ...]], max_peers: int, seed: int) -> None:
    net = Network(max_peers, seed)
    for op in script:
        kind, *args = op
        getattr(net, str(kind))(*args)
    # Deliver everything still in flight, in random order.
    while net.in_flight:
        net.deliver(net.rng.randrange(len(net.in_flight)))
    event(f"unresolved entries seen: {net.unresolved > 0}")
    event(f"names skipped thanks to an acknowledgement: {net.skipped_names > 0}")


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32),
    st.sampled_from([1, 2, 1024]),
    st.integers(2, len(PIDS)),
    st.floats(0.0, 0.4),  # drop rate
    st.floats(0.0, 1.0),  # how often delivery takes a random message rather than the oldest
)
def test_long_random_runs_decode_exactly(
    seed: int, max_peers: int, processes: int, drop_rate: float, disorder: float
) -> None:
    net = Network(max_peers, seed)
    rng = net.rng
    for _ in range(300):
        roll = rng.random()
        pick = rng.randrange(10**6) if rng.random() < disorder else 0
        src = rng.randrange(processes)
        if roll < 0.3:
            addressing = rng.choice(["receiver"] * 6 + ["none", "other"])
            net.send(
                src,
                rng.randrange(1, processes),
                addressing,
                rng.randrange(4),
                rng.randrange(2**20),
                rng.random() < 0.5,
            )
        elif roll < 0.3 + 0.6 * (1 - drop_rate):
            if rng.random() < 0.7:
                net.reply(pick, rng.randrange(2**20), rng.random() < 0.5)
            else:
                net.deliver(pick)
        elif roll < 0.9:
            net.drop(pick)
        else:
            net.learn(src, rng.choice(EXTERNAL), rng.randrange(1, 2**30))
    while net.in_flight:
        net.deliver(rng.randrange(len(net.in_flight)))
    event(f"unresolved entries seen: {net.unresolved > 0}")
    event(f"names skipped thanks to an acknowledgement: {net.skipped_names > 0}")


def _exchange(a: StampCodec, a_clock: LocalClock, b: StampCodec, b_clock: LocalClock) -> None:
    """A request a -> b and its response b -> a."""
    a_clock.tick()
    got = b.decode(a.encode(a_clock.names, a_clock.values, peer=b.owner).data)
    b_clock.merge(got.entries)
    b_clock.tick()
    back = a.decode(b.encode(b_clock.names, b_clock.values, peer=a.owner).data)
    a_clock.merge((pid, v) for pid, v in back.entries if pid != a.owner)
    assert got.unresolved == back.unresolved == 0


def test_acknowledged_names_are_not_sent_again() -> None:
    a, b = StampCodec("a:1"), StampCodec("b:2")
    a_clock, b_clock = LocalClock("a:1"), LocalClock("b:2")
    a_clock.merge([(f"x-{i}:0", i + 1) for i in range(20)])
    first = parse(a.encode(a_clock.names, a_clock.values, peer="b:2").data)
    assert list(first.names) == a_clock.names[1:]
    _exchange(a, a_clock, b, b_clock)
    # Only the name learnt from the response itself is still unacknowledged.
    assert a_clock.names[-1] == "b:2"
    after_one = parse(a.encode(a_clock.names, a_clock.values, peer="b:2").data)
    assert list(after_one.names) == ["b:2"] and after_one.names_start == len(a_clock.names) - 1
    _exchange(a, a_clock, b, b_clock)
    warm = parse(a.encode(a_clock.names, a_clock.values, peer="b:2").data)
    assert list(warm.names) == [] and warm.names_start == len(a_clock.names)
    # A new name is sent alone, then acknowledged too.
    a_clock.merge([("late:9", 3)])
    grown = parse(a.encode(a_clock.names, a_clock.values, peer="b:2").data)
    assert list(grown.names) == ["late:9"] and grown.names_start == len(a_clock.names) - 1
    _exchange(a, a_clock, b, b_clock)
    assert list(parse(a.encode(a_clock.names, a_clock.values, peer="b:2").data).names) == []
    # Another peer has acknowledged nothing: it gets every name.
    other = parse(a.encode(a_clock.names, a_clock.values, peer="c:3").data)
    assert list(other.names) == a_clock.names[1:]


def test_a_peer_that_forgot_us_gets_the_names_again() -> None:
    a, b = StampCodec("a:1"), StampCodec("b:2")
    a_clock, b_clock = LocalClock("a:1"), LocalClock("b:2")
    a_clock.merge([("x:1", 4), ("y:2", 5)])
    _exchange(a, a_clock, b, b_clock)
    _exchange(a, a_clock, b, b_clock)  # b also acknowledges its own name, learnt by a in the first
    assert list(parse(a.encode(a_clock.names, a_clock.values, peer="b:2").data).names) == []
    restarted = StampCodec("b:2")  # same id, empty tables
    reply = restarted.encode(["b:2"], [1], peer="a:1")
    assert parse(reply.data).peer_known == 0
    a.decode(reply.data)
    again = parse(a.encode(a_clock.names, a_clock.values, peer="b:2").data)
    assert list(again.names) == a_clock.names[1:] == ["x:1", "y:2", "b:2"]
    resent = restarted.decode(a.encode(a_clock.names, a_clock.values, peer="b:2").data)
    assert resent.entries == tuple(zip(a_clock.names, a_clock.values, strict=True)) and resent.unresolved == 0


def test_unknown_names_are_counted_not_guessed() -> None:
    a, b = StampCodec("a:1"), StampCodec("b:2")
    names, values = ["a:1", "x:1", "y:2"], [3, 4, 5]
    # b acknowledges names it never received (e.g. a table that was since evicted).
    fake_ack = stamp_pb2.Stamp(version=1, sender="b:2", clock=[1], peer_fp=fingerprint("a:1"), peer_known=3)
    a.decode(fake_ack.SerializeToString())
    decoded = b.decode(a.encode(names, values, peer="b:2").data)
    assert decoded.entries == (("a:1", 3),)
    assert decoded.unresolved == 2


# The decoder against garbage ---------------------------------------------------


def _valid_stamp(rng: random.Random) -> bytes:
    sender = StampCodec("sender:1")
    names = ["sender:1"] + [f"p{i}:{rng.randrange(16**4):04x}" for i in range(rng.randrange(0, 8))]
    values = [rng.randrange(1, 2**40) for _ in names]
    data = sender.encode(
        names,
        values,
        peer="victim:2",
        epoch=rng.randrange(2**64),
        call_id=rng.randrange(2**64),
        trace_id=rng.randbytes(16),
        span_id=rng.randbytes(8),
    ).data
    return data


def _decode_or_refuse(codec: StampCodec, data: bytes) -> DecodedStamp | None:
    before = codec_state(codec)
    try:
        return codec.decode(data)
    except StampError:
        assert codec_state(codec) == before, "a refused stamp must leave the codec as it was"
        return None


def _still_decodes_fresh_stamps(victim: StampCodec) -> None:
    """A later full stamp (names from index 1) decodes exactly, whatever came before."""
    sender = StampCodec("sender:1")
    names = ["sender:1", "p0:aaaa", "p1:bbbb", "zz:cccc"]
    values = [7, 8, 9, 10]
    decoded = victim.decode(sender.encode(names, values, peer=None, epoch=3, call_id=4).data)
    assert decoded.entries == tuple(zip(names, values, strict=True))
    assert (decoded.unresolved, decoded.epoch, decoded.call_id) == (0, 3, 4)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_stamp_error(data: bytes) -> None:
    victim = StampCodec("victim:2")
    _exchange_warmup(victim)
    _decode_or_refuse(victim, data)
    _still_decodes_fresh_stamps(victim)


def _exchange_warmup(victim: StampCodec) -> None:
    sender = StampCodec("sender:1")
    victim.decode(sender.encode(["sender:1", "w:1"], [1, 2], peer="victim:2").data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("overwrite"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    # A field with a huge or overlong varint: tag, then 10-11 bytes of continuation.
    st.tuples(
        st.just("varint"),
        st.sampled_from([0x08, 0x18, 0x20, 0x30, 0x38, 0x48]),
        st.sampled_from([b"\xff" * 9 + b"\x01", b"\xff" * 10 + b"\x01", b"\x80" * 10, b"\xff" * 20]),
    ),
    st.tuples(st.just("bigvalue"), st.integers(2**63, 2**64 - 1)),
    st.tuples(st.just("length"), st.sampled_from([0x12, 0x1A, 0x2A, 0x52, 0x5A]), st.integers(0, 2**35)),
)


def _mutate(data: bytes, mutation: tuple[Any, ...]) -> bytes:
    kind, *args = mutation
    if kind == "truncate":
        return data[: args[0] % (len(data) + 1)]
    if kind == "append":
        return data + args[0]
    if kind == "varint":
        return data + bytes([args[0]]) + args[1]
    if kind == "bigvalue":
        return data + b"\x18" + _varint(args[0])
    if kind == "length":
        return data + bytes([args[0]]) + _varint(args[1]) + b"xy"
    if not data:
        return data
    at = args[0] % len(data)
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << args[1])]) + data[at + 1 :]
    assert kind == "overwrite"
    return data[:at] + args[1] + data[at + len(args[1]) :]


@settings(max_examples=1500, deadline=None)
@given(st.lists(mutations, min_size=1, max_size=3), st.integers(0, 2**32))
def test_damaged_stamps_raise_only_stamp_error(chain: list[tuple[Any, ...]], seed: int) -> None:
    rng = random.Random(seed)
    victim = StampCodec("victim:2")
    _exchange_warmup(victim)
    data = _valid_stamp(rng)
    for mutation in chain:
        data = _mutate(data, mutation)
    decoded = _decode_or_refuse(victim, data)
    if decoded is not None:
        assert decoded.sender and len(decoded.sender) <= MAX_PROCESS_ID_LENGTH
        assert all(0 < value < 2**63 for _, value in decoded.entries[1:])
    _still_decodes_fresh_stamps(victim)


def _stamp(**fields: object) -> bytes:
    base: dict[str, object] = {
        "version": 1,
        "sender": "s:1",
        "clock": [1, 2],
        "names_start": 1,
        "names": ["x:1"],
    }
    base.update(fields)
    return stamp_pb2.Stamp(**base).SerializeToString()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_stamp(version=2), id="newer-version"),
        pytest.param(_stamp(version=0), id="no-version"),
        pytest.param(_stamp(sender=""), id="no-sender"),
        pytest.param(_stamp(sender="s" * (MAX_PROCESS_ID_LENGTH + 1)), id="long-sender"),
        pytest.param(_stamp(names_start=0), id="names-at-zero"),
        pytest.param(_stamp(names_start=2), id="names-past-clock"),
        pytest.param(_stamp(names=["x:1", "y:2"]), id="more-names-than-clock"),
        pytest.param(_stamp(names_start=2**32 - 1), id="huge-names-start"),
        pytest.param(_stamp(names=[""]), id="empty-name"),
        pytest.param(_stamp(names=["n" * (MAX_PROCESS_ID_LENGTH + 1)]), id="long-name"),
        pytest.param(_stamp(clock=[1, 2**63]), id="counter-out-of-range"),
        pytest.param(_stamp(clock=[1] * 5000, names=[]), id="too-many-entries"),
        pytest.param(_stamp(trace_id=b"x" * 15), id="short-trace-id"),
        pytest.param(_stamp(span_id=b"x" * 9), id="long-span-id"),
        pytest.param(b"\x12\x02\xff\xfe", id="sender-not-utf8"),
        pytest.param(b"\x18" + b"\xff" * 11, id="varint-too-long"),
        pytest.param(b"\x0b", id="start-group"),
        pytest.param(b"\x12\xff\xff\xff\xff\x0f", id="length-past-end"),
    ],
)
def test_malformed_stamps_are_refused(data: bytes) -> None:
    victim = StampCodec("victim:2", max_stamp_bytes=1 << 20)
    _exchange_warmup(victim)
    before = codec_state(victim)
    with pytest.raises(StampError):
        victim.decode(data)
    assert codec_state(victim) == before
    _still_decodes_fresh_stamps(victim)


# Size limits -----------------------------------------------------------------


def test_a_stamp_over_the_limit_is_refused() -> None:
    big = StampCodec("big:1", max_stamp_bytes=1 << 20)
    names = ["big:1"] + [f"name-{i}:{i:08d}" for i in range(100)]
    data = big.encode(names, [1] * len(names), peer=None).data
    small = StampCodec("small:2", max_stamp_bytes=len(data) - 1)
    before = codec_state(small)
    with pytest.raises(StampError, match="exceeds"):
        small.decode(data)
    assert codec_state(small) == before
    assert StampCodec("fits:3", max_stamp_bytes=len(data)).decode(data).unresolved == 0


@settings(max_examples=300, deadline=None)
@given(
    st.integers(2, 300),  # clock entries
    st.integers(40, 2000),  # size limit
    st.integers(0, 300),  # names the peer has acknowledged
    st.integers(1, 2**63 - 1),
    st.booleans(),
)
def test_encode_degrades_to_a_prefix_that_fits(
    count: int, limit: int, acked: int, top: int, traced: bool
) -> None:
    rng = random.Random(count * 7919 + limit)
    names = ["me:1"] + [f"service-{i}:{rng.randrange(16**8):08x}" for i in range(1, count)]
    values = [rng.randrange(1, top + 1) for _ in names]
    # The largest epoch makes the fixed fields as long as they get; no window on how far ahead it runs.
    receiver = StampCodec("you:2", max_stamp_bytes=1 << 20, max_epoch_ahead=2**64)
    ack = b""
    if acked:
        # The receiver learnt some names earlier (from an unlimited codec) and acknowledged them.
        unlimited = StampCodec("me:1", max_stamp_bytes=1 << 20)
        receiver.decode(unlimited.encode(names[:acked], values[:acked], peer=None).data)
        ack = receiver.encode(["you:2"], [1], peer="me:1").data

    def sender(max_stamp_bytes: int) -> StampCodec:
        codec = StampCodec("me:1", max_stamp_bytes=max_stamp_bytes)
        if ack:
            codec.decode(ack)
        return codec

    ids = {"trace_id": b"t" * 16, "span_id": b"s" * 8} if traced else {}
    fixed: dict[str, Any] = {"peer": "you:2", "epoch": 2**64 - 1, "call_id": 2**64 - 1, **ids}
    try:
        encoded = sender(limit).encode(names, values, **fixed)
    except StampError:
        # Only when the fixed fields alone leave no room for one entry.
        assert len(sender(1 << 20).encode(names[:1], values[:1], **fixed).data) > limit
        event("refused: not even one entry fits")
        return
    event("degraded" if encoded.degraded else "fits whole")
    assert len(encoded.data) <= limit
    n = encoded.entries_sent
    assert 1 <= n <= count
    assert encoded.degraded == (n < count)
    message = parse(encoded.data)
    assert list(message.clock) == values[:n]
    known = min(acked, count)
    # Acknowledged names are never spent on, even when cutting.
    assert message.names_start >= min(max(known, 1), n)
    if encoded.degraded:
        # The longest prefix that fits: one more entry (and its name, if unacknowledged) would not.
        assert len(sender(1 << 20).encode(names[: n + 1], values[: n + 1], **fixed).data) > limit
    decoded = receiver.decode(encoded.data)
    assert len(decoded.entries) + decoded.unresolved == n
    expected = dict(zip(names[:n], values[:n], strict=True))
    assert all(expected[pid] == value for pid, value in decoded.entries)


def test_encode_refuses_when_not_even_one_entry_fits() -> None:
    codec = StampCodec("me:1", max_stamp_bytes=8)
    with pytest.raises(StampError, match="one clock entry"):
        codec.encode(["me:1", "x:1"], [1, 1], peer=None)


def test_codec_rejects_bad_owner() -> None:
    with pytest.raises(ValueError):
        StampCodec("")
    with pytest.raises(ValueError):
        StampCodec("x" * (MAX_PROCESS_ID_LENGTH + 1))


def _warm_stamp(n: int, value: int, *, traced: bool) -> tuple[int, int]:
    """Size of a stamp of ``n`` entries once its names are acknowledged, and of the cold one."""
    me, peer = "checkout:7f3a9c21", "inventory:0b4e8d55"
    names: Sequence[str] = [me] + [f"svc{i:03d}:{i:08x}" for i in range(1, n)]
    values = [value] * n
    a, b = StampCodec(me), StampCodec(peer)
    ids = {"trace_id": bytes(range(16)), "span_id": bytes(range(8))} if traced else {}
    cold = a.encode(names, values, peer=peer, epoch=12, call_id=2**21 - 1, **ids)
    b.decode(cold.data)
    a.decode(b.encode([peer], [1], peer=me).data)
    warm = a.encode(names, values, peer=peer, epoch=12, call_id=2**21 - 1, **ids)
    decoded = b.decode(warm.data)
    assert decoded.unresolved == 0 and dict(decoded.entries) == dict(zip(names, values, strict=True))
    assert not parse(warm.data).names
    return len(warm.data), len(cold.data)


def test_steady_state_stamp_costs_at_most_three_bytes_per_entry() -> None:
    n = 100
    largest = 2**21 - 1  # the largest value of a 3-byte varint
    warm, cold = _warm_stamp(n, largest, traced=False)
    assert warm <= 3 * n + 64, warm
    assert cold > warm + 10 * n, "names must have been sent once, then dropped"
    rng = random.Random(5)
    a, b = StampCodec("a:1"), StampCodec("b:2")
    names = ["a:1"] + [f"n{i}:{i}" for i in range(1, n)]
    b.decode(a.encode(names, [1] * n, peer="b:2").data)
    a.decode(b.encode(["b:2"], [1], peer="a:1").data)
    for _ in range(50):
        values = [rng.randrange(1, 2**21) for _ in range(n)]
        assert len(a.encode(names, values, peer="b:2", epoch=2**32, call_id=2**32).data) <= 3 * n + 64
    # Trace context adds its ids (16 + 8 bytes and their tags) on top.
    traced, _ = _warm_stamp(n, largest, traced=True)
    assert traced <= 3 * n + 64 + 28, traced
