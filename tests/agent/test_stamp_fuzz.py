"""Fuzzed stamps through real gRPC: whatever a peer sends, the call succeeds and is counted.

Over ten thousand generated stamps (random bytes, damaged valid stamps, huge
clocks and varints, invalid UTF-8, repeated, unknown and mistyped fields,
oversize stamps) go through a real sync server and a real grpc.aio server
with the agent's interceptor, and come back as responses from a server
without cutwatch to a client with the agent's interceptor. Every call must
return the handler's answer, and every stamp must be counted exactly as a
second codec fed the same stamps in the same order predicts: tracked and
merged into the clock (taking the local snapshots its epoch calls for), or
untracked (malformed or missing). Calls are made one after another so that
the prediction holds: how far a stamp's epoch may move its receiver depends
on the stamps before it.

A raw HTTP/2 peer then sends stamps that are not base64 at all, which gRPC
itself answers before any interceptor runs.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_echo_service
import echo_service
import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from echo_service import APP_TRAILER, EchoServicer, EchoStub
from hpack import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

import cutwatch
from cutwatch.agent import STAMP_METADATA_KEY
from cutwatch.core import DEFAULT_MAX_STAMP_BYTES, DecodedStamp, StampCodec, StampError
from cutwatch.core._participant import DEFAULT_MAX_OPEN_EPOCHS
from cutwatch.core._stamp import DEFAULT_MAX_EPOCH_AHEAD
from cutwatch.proto import stamp_pb2

TIMEOUT = 30.0
# Oversize stamps must reach the agent, not be refused by gRPC's own 8 KiB header limit.
BIG_METADATA = [("grpc.max_metadata_size", 1 << 20), ("grpc.absolute_max_metadata_size", 1 << 20)]
AIO_MAX_STAMP_BYTES = 1 << 16
"""The aio agent accepts large stamps, so the clock-entry limit is reached before the size limit."""

# Protobuf wire format, written here from the encoding rules (not with the agent's codec) ----------


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def varint_field(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def bytes_field(number: int, data: bytes) -> bytes:
    return tag(number, 2) + varint(len(data)) + data


# Stamp generators ---------------------------------------------------------------------------------

PIDS = tuple(f"fuzz-{i}:{i:04x}" for i in range(24))
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
process_ids = st.one_of(
    st.sampled_from(PIDS),
    st.sampled_from(PIDS),
    st.text(max_size=10),
    # Around the 256-character limit, in characters that take 1 to 4 bytes.
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "€", "😀"]), st.sampled_from([255, 256, 257])),
)
counters = st.one_of(
    st.integers(1, 300),
    st.integers(1, 2**62),
    st.sampled_from([0, 2**63 - 2, 2**63 - 1, 2**63, 2**64 - 1]),
)
epochs = st.one_of(
    st.integers(0, 8),
    st.sampled_from([DEFAULT_MAX_EPOCH_AHEAD - 1, DEFAULT_MAX_EPOCH_AHEAD, DEFAULT_MAX_EPOCH_AHEAD + 1]),
    st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
    u64,
)
trace_ids = st.one_of(st.just(b""), st.binary(min_size=16, max_size=16), st.binary(max_size=20))
span_ids = st.one_of(st.just(b""), st.binary(min_size=8, max_size=8), st.binary(max_size=10))


@st.composite
def valid_messages(draw: st.DrawFn) -> stamp_pb2.Stamp:
    """A stamp the agent accepts.

    Its contents come from one seeded generator: the mutations and framings
    around it are what hypothesis explores, and drawing each field would cost
    more than the call that carries the stamp.
    """
    rng = random.Random(draw(st.binary(min_size=8, max_size=8)))
    count = rng.randint(1, 10)
    names_start = rng.randint(1, count) if count > 1 else 0
    names = [rng.choice(PIDS) for _ in range(rng.randint(0, count - names_start))] if names_start else []
    traced = rng.random() < 0.5
    return stamp_pb2.Stamp(
        version=1,
        sender=rng.choice(PIDS),
        clock=[rng.randint(1, 2 ** rng.randint(1, 40)) for _ in range(count)],
        names_start=names_start,
        names=names,
        epoch=rng.randint(0, 6),
        call_id=rng.getrandbits(64),
        peer_fp=rng.getrandbits(32),
        peer_known=rng.randint(0, 20),
        trace_id=rng.randbytes(16) if traced else b"",
        span_id=rng.randbytes(8) if traced else b"",
    )


valid_stamps = valid_messages().map(lambda m: m.SerializeToString())

any_messages = st.builds(
    stamp_pb2.Stamp,
    version=st.sampled_from([1, 1, 1, 0, 2, 2**32 - 1]),
    sender=process_ids,
    clock=st.lists(counters, max_size=12),
    names_start=st.one_of(st.integers(0, 40), u32),
    names=st.lists(process_ids, max_size=4),
    epoch=epochs,
    call_id=u64,
    peer_fp=u32,
    peer_known=u32,
    trace_id=trace_ids,
    span_id=span_ids,
).map(lambda m: m.SerializeToString())

junk = st.binary(min_size=1, max_size=40)


def _at(data: bytes, position: int) -> int:
    return position % (len(data) + 1)


def _flip(data: bytes, position: int, bit: int) -> bytes:
    if not data:
        return data
    at = position % len(data)
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]


def _truncate(data: bytes, length_class: str, position: int) -> bytes:
    cut = {
        "empty": 0,
        "first-byte": 1,
        "half": len(data) // 2,
        "all-but-one": max(0, len(data) - 1),
        "anywhere": _at(data, position),
    }[length_class]
    return data[:cut]


mutations: st.SearchStrategy[Callable[[bytes], bytes]] = st.one_of(
    st.builds(lambda p, b: lambda d: _flip(d, p, b), st.integers(0, 10**6), st.integers(0, 7)),
    st.builds(
        lambda c, p: lambda d: _truncate(d, c, p),
        st.sampled_from(["empty", "first-byte", "half", "all-but-one", "anywhere"]),
        st.integers(0, 10**6),
    ),
    st.builds(lambda j: lambda d: d + j, junk),
    st.builds(lambda p, j: lambda d: d[: _at(d, p)] + j + d[_at(d, p) :], st.integers(0, 10**6), junk),
    st.builds(
        lambda p, j: lambda d: d[: _at(d, p)] + j + d[_at(d, p) + len(j) :], st.integers(0, 10**6), junk
    ),
    st.just(lambda d: d + d),  # protobuf merges a repeated message: still a stamp
)


def _mutated(base: bytes, chain: list[Callable[[bytes], bytes]]) -> bytes:
    for mutation in chain:
        base = mutation(base)
    return base


mutated_stamps = st.builds(
    _mutated, st.one_of(valid_stamps, valid_stamps, any_messages), st.lists(mutations, min_size=1, max_size=3)
)

placements = st.sampled_from(["after", "before"])


def _place(base: bytes, extra: bytes, where: str) -> bytes:
    return {"after": base + extra, "before": extra + base, "twice": base + extra + extra}[where]


# Raw varint encodings a 64-bit parser must refuse or read with care.
odd_varints = st.sampled_from(
    [
        varint(2**63 - 1),
        varint(2**63),
        varint(2**64 - 1),
        varint(2**64),  # 10 bytes, past 64 bits
        varint(2**70),  # 11 bytes
        b"\xff" * 9 + b"\x01",
        b"\xff" * 10 + b"\x01",
        b"\x80" * 9 + b"\x00",  # overlong zero, 10 bytes: protobuf reads 0
        b"\x80" * 10 + b"\x00",  # overlong zero, 11 bytes
        b"\xff" * 5,  # never ends
    ]
)


def _huge_varint(base: bytes, number: int, raw: bytes, in_packed_clock: bool, where: str) -> bytes:
    if number == 3 and in_packed_clock:
        return _place(base, bytes_field(3, varint(1) + raw + varint(2)), where)
    return _place(base, tag(number, 0) + raw, where)


huge_varint_stamps = st.builds(
    _huge_varint, valid_stamps, st.sampled_from([1, 3, 4, 6, 7, 9]), odd_varints, st.booleans(), placements
)


def _huge_clock(count: int, width: int, seed: int, sender: str, packed: bool, call_id: int) -> bytes:
    value = max(seed % 128**width, 128 ** (width - 1), 1)
    head = varint_field(1, 1) + bytes_field(2, sender.encode())
    clock = bytes_field(3, varint(value) * count) if packed else (tag(3, 0) + varint(value)) * count
    return head + clock + varint_field(7, call_id)


huge_clock_stamps = st.builds(
    _huge_clock,
    st.sampled_from([1000, 2000, 4094, 4095, 4096, 4097, 5000, 20000, 40000]),
    st.sampled_from([1, 1, 2, 3]),
    st.integers(0, 2**21),
    st.sampled_from(PIDS),
    st.booleans(),
    u64,
)
"""Clocks of thousands of entries, around the size and entry limits of both agents."""

invalid_utf8 = st.sampled_from(
    [
        b"\xff",
        b"\xfe\xff",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"a\xe2\x82",
        b"\x80abc",
        b"ok:1\xf5",
        b"\xf4\x90\x80\x80",
    ]
)
invalid_utf8_stamps = st.builds(
    lambda base, number, prefix, cut, bad: base + bytes_field(number, prefix.encode()[:cut] + bad),
    valid_stamps,
    st.sampled_from([2, 5]),
    st.sampled_from(PIDS),
    st.integers(0, 6),
    invalid_utf8,
)

repeated_fields = st.one_of(
    st.builds(lambda v: varint_field(1, v), st.sampled_from([1, 1, 2, 0])),
    st.builds(lambda s: bytes_field(2, s.encode()), process_ids),
    st.builds(lambda v: varint_field(3, v), counters),
    st.builds(lambda v: varint_field(4, v), st.integers(0, 12)),
    st.builds(lambda s: bytes_field(5, s.encode()), process_ids),
    st.builds(lambda v: varint_field(6, v), epochs),
    st.builds(lambda v: varint_field(7, v), u64),
    st.builds(lambda v: tag(8, 5) + struct.pack("<I", v), u32),
    st.builds(lambda b: bytes_field(10, b), trace_ids),
    st.builds(lambda b: bytes_field(11, b), span_ids),
)
repeated_field_stamps = st.builds(
    _place, valid_stamps, repeated_fields, st.sampled_from(["after", "before", "twice"])
)
"""Singular fields given again (the last wins), the clock continued unpacked."""


def _unknown_field(base: bytes, number: int, wire_type: int, value: int, payload: bytes, where: str) -> bytes:
    body = {
        0: varint(value),
        1: value.to_bytes(8, "little"),
        2: varint(len(payload)) + payload,
        5: (value & 0xFFFFFFFF).to_bytes(4, "little"),
    }.get(wire_type, b"")
    return _place(base, tag(number, wire_type) + body, where)


unknown_field_stamps = st.builds(
    _unknown_field,
    valid_stamps,
    st.sampled_from([12, 15, 16, 100, 2047, 2**29 - 1, 0, 2**29]),
    st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]),
    u64,
    st.binary(max_size=30),
    placements,
)
"""Fields the schema does not have: skipped when well formed; groups, bad numbers and types refused."""

_WIRE_TYPE = {1: 0, 2: 2, 3: 2, 4: 0, 5: 2, 6: 0, 7: 0, 8: 5, 9: 0, 10: 2, 11: 2}
_BODY = {0: varint(7), 1: b"\x01" * 8, 2: varint(3) + b"abc", 5: b"\x01" * 4}


def _wrong_wire_type(base: bytes, number: int, pick: int, where: str) -> bytes:
    # The clock takes varints unpacked too, so a varint is not a wrong type for it.
    allowed = (0, 2) if number == 3 else (_WIRE_TYPE[number],)
    wrong = [t for t in _BODY if t not in allowed]
    wire_type = wrong[pick % len(wrong)]
    return _place(base, tag(number, wire_type) + _BODY[wire_type], where)


wrong_wire_type_stamps = st.builds(
    _wrong_wire_type, valid_stamps, st.integers(1, 11), st.integers(0, 2), placements
)


def _oversize(base: bytes, size: int, byte: int) -> bytes:
    for length_bytes in (1, 2, 3):
        pad = size - len(base) - 1 - length_bytes
        if len(varint(pad)) == length_bytes:
            return base + bytes_field(12, bytes([byte]) * pad)
    raise AssertionError(f"no padding makes {len(base)} bytes into {size}")


oversize_stamps = st.builds(
    _oversize,
    valid_stamps,
    st.sampled_from(
        [4095, 4096, 4097, 6000, AIO_MAX_STAMP_BYTES - 1, AIO_MAX_STAMP_BYTES, AIO_MAX_STAMP_BYTES + 1]
    ),
    st.integers(0, 255),
)
"""A valid stamp padded with an unknown field to just under, at and over each agent's limit."""

stamps: st.SearchStrategy[bytes] = st.one_of(
    valid_stamps,
    valid_stamps,
    st.binary(max_size=300),
    any_messages,
    mutated_stamps,
    mutated_stamps,
    huge_varint_stamps,
    huge_clock_stamps,
    invalid_utf8_stamps,
    repeated_field_stamps,
    unknown_field_stamps,
    wrong_wire_type_stamps,
    oversize_stamps,
)

framings = st.sampled_from(["one"] * 8 + ["none", "two"])
"""How many stamps a message carries: gRPC delivers repeated keys, and the agent reads the first."""


# Predicting what the agent makes of a stamp --------------------------------------------------------

MISSING = "missing"
MALFORMED = "malformed"


def predict(mirror: StampCodec, stamp: bytes | None) -> DecodedStamp | str:
    """What the agent's codec makes of ``stamp``, from a codec that has seen the same stamps in order."""
    if stamp is None:
        return MISSING
    try:
        return mirror.decode(stamp)
    except StampError:
        return MALFORMED


@dataclass
class Tally:
    """What went through one rig; ``distinct`` holds every stamp that reached the other side."""

    calls: int = 0
    tracked: int = 0
    malformed: int = 0
    missing: int = 0
    distinct: set[bytes] = field(default_factory=set)
    drawn: set[bytes] = field(default_factory=set)
    """Every generated stamp used so far, also those left out of their message."""

    def new_variants(self, stamp: bytes) -> list[bytes]:
        """``stamp``, cut short and with a bit flipped, minus those used before.

        Hypothesis spends more on a stamp than a call costs, so each drawn
        stamp also yields two cheap mutations; and it repeats parts of earlier
        examples on purpose, so stamps already used are left out.
        """
        found = [stamp]
        if stamp:
            rng = random.Random(zlib.crc32(stamp))
            found += [
                stamp[: rng.randrange(len(stamp))],
                _flip(stamp, rng.randrange(len(stamp)), rng.randrange(8)),
            ]
        fresh = [variant for variant in dict.fromkeys(found) if variant not in self.drawn]
        self.drawn.update(fresh)
        return fresh

    def count(self, outcome: DecodedStamp | str) -> None:
        self.calls += 1
        if outcome == MISSING:
            self.missing += 1
        elif outcome == MALFORMED:
            self.malformed += 1
        else:
            self.tracked += 1


BATCH = 32


def run_batches(
    tally: Tally, target: int, batches: st.SearchStrategy[list[Any]], call: Callable[..., None]
) -> None:
    """Make the calls hypothesis generates, a batch per example, until ``target`` distinct stamps are used.

    A batch per example, as hypothesis's own cost per example would
    otherwise outweigh the calls.
    """
    for _ in range(8):
        missing = target - len(tally.distinct)
        if missing <= 0:
            return

        @settings(max_examples=missing // (2 * BATCH) + 5, database=None)
        @given(batches)
        def calls(batch: list[Any]) -> None:
            for args in batch:
                if len(tally.distinct) >= target:
                    return
                call(*args)

        calls()
    raise AssertionError(f"only {len(tally.distinct)} distinct stamps after eight rounds")


def stamp_of(metadata: Any) -> bytes | None:
    return next((value for key, value in metadata or () if key == STAMP_METADATA_KEY), None)


def check_received(
    agent: cutwatch.Agent,
    before: cutwatch.AgentStats,
    epoch_before: int,
    outcome: DecodedStamp | str,
    *,
    received: str,
) -> None:
    """The agent counted one message exactly as predicted, and merged a tracked one's clock."""
    after = agent.stats()
    assert getattr(after, received) - getattr(before, received) == 1
    assert after.untracked_missing - before.untracked_missing == (outcome == MISSING)
    assert after.untracked_malformed - before.untracked_malformed == (outcome == MALFORMED)
    assert after.internal_errors == 0
    if isinstance(outcome, str):
        assert after.snapshots_taken == before.snapshots_taken
        return
    assert after.unresolved_entries - before.unresolved_entries == outcome.unresolved
    # A stamp ahead of us forces the local snapshots up to its epoch: the newest few of them, as
    # only those could be kept open.
    jump = max(0, outcome.epoch - epoch_before)
    assert after.snapshots_taken - before.snapshots_taken == min(jump, DEFAULT_MAX_OPEN_EPOCHS)
    clock = agent.clock
    for pid, value in outcome.entries:
        if pid != agent.process_id and (pid in clock or after.clock_entries_refused == 0):
            assert clock.get(pid) >= value, (pid, value)


# Server side: stamps in requests to an instrumented server ----------------------------------------

KINDS = ["unary_unary"] * 5 + ["unary_stream", "stream_unary", "stream_stream"]
batches = st.lists(
    st.tuples(stamps, framings, st.sampled_from(KINDS)),
    min_size=BATCH,
    max_size=BATCH,
    unique_by=lambda c: c[0],
)


class ServerSide:
    """A plain client calling an instrumented echo server, and the codec that predicts the agent."""

    def __init__(self, agent: cutwatch.Agent, address: str, servicer: Any, max_stamp_bytes: int) -> None:
        self.agent = agent
        self.servicer = servicer
        self.channel = grpc.insecure_channel(address, options=BIG_METADATA)
        self.stub = EchoStub(self.channel)
        self.mirror = StampCodec("mirror:0", max_stamp_bytes=max_stamp_bytes)
        self.tally = Tally()
        self.last = b""
        """The stamp sent before: the second one of messages that carry two."""

    def send(self, stamps: tuple[bytes, ...], kind: str) -> None:
        """One call carrying ``stamps``: it must succeed and be counted as predicted."""
        payload = b"p%d" % self.tally.calls
        metadata = tuple((STAMP_METADATA_KEY, stamp) for stamp in stamps)
        outcome = predict(self.mirror, stamps[0] if stamps else None)
        before, epoch_before = self.agent.stats(), self.agent.epoch
        kw: dict[str, Any] = {"metadata": metadata, "timeout": TIMEOUT}
        call: Any
        if kind == "unary_unary":
            response, call = self.stub.unary_unary.with_call(payload, **kw)
            assert response == payload
        elif kind == "unary_stream":
            call = self.stub.unary_stream(payload, **kw)
            assert list(call) == [payload] * 3
        elif kind == "stream_unary":
            response, call = self.stub.stream_unary.with_call(iter([payload, b"+", payload]), **kw)
            assert response == payload + b"+" + payload
        else:
            call = self.stub.stream_stream(iter([payload, payload]), **kw)
            assert list(call) == [payload, payload]
        check_received(self.agent, before, epoch_before, outcome, received="requests_received")
        # The handler saw the request metadata as sent; the response keeps the handler's trailer
        # and carries the server's stamp, naming the call when the request's stamp was tracked.
        seen = self.servicer.seen_metadata.pop()
        assert seen.get(STAMP_METADATA_KEY) == (stamps[-1] if stamps else None)
        trailing = call.trailing_metadata()
        assert (APP_TRAILER, "kept") in trailing
        answer = stamp_pb2.Stamp.FromString(stamp_of(trailing) or b"")
        assert answer.sender == self.agent.process_id
        assert answer.call_id == (0 if isinstance(outcome, str) else outcome.call_id)
        self.tally.count(outcome)
        self.tally.distinct.update(stamps)

    def fuzz(self, target: int) -> None:
        """Send generated stamps until ``target`` distinct ones have reached the server."""

        def call(drawn: bytes, framing: str, kind: str) -> None:
            for stamp in self.tally.new_variants(drawn):
                self.send({"none": (), "one": (stamp,), "two": (stamp, self.last)}[framing], kind)
                self.last = stamp

        run_batches(self.tally, target, batches, call)

    def canary(self, sender: str, value: int) -> None:
        """A valid stamp: after it, the server's clock holds the sender's counter."""
        self.send(
            (stamp_pb2.Stamp(version=1, sender=sender, clock=[value]).SerializeToString(),), "unary_unary"
        )
        assert self.agent.clock[sender] == value

    def close(self) -> None:
        self.channel.close()


def check_still_serving(agent: cutwatch.Agent, address: str, max_stamp_bytes: int) -> None:
    """A normal instrumented call after the fuzzing: answered, and both clocks move."""
    client = cutwatch.Agent("fuzz-check", max_stamp_bytes=max_stamp_bytes).start()
    try:
        channel = grpc.intercept_channel(grpc.insecure_channel(address), client.client_interceptor())
        with channel:
            assert EchoStub(channel).unary_unary(b"still here", timeout=TIMEOUT) == b"still here"
            assert EchoStub(channel).unary_unary(b"and here", timeout=TIMEOUT) == b"and here"
        assert client.clock.get(agent.process_id) > 0
        assert agent.clock.get(client.process_id) > 0
        assert client.stats().untracked == 0
    finally:
        client.close()


def report(what: str, tally: Tally, agent: cutwatch.Agent) -> None:
    stats = agent.stats()
    print(
        f"{what}: {tally.calls} calls, {len(tally.distinct)} distinct stamps, tracked {tally.tracked},"
        f" malformed {tally.malformed}, missing {tally.missing}; agent: untracked_malformed"
        f" {stats.untracked_malformed}, untracked_missing {stats.untracked_missing}, snapshots"
        f" {stats.snapshots_taken}, clock entries {len(agent.clock)}, internal errors {stats.internal_errors}"
    )


def check_totals(tally: Tally, agent: cutwatch.Agent, received: int) -> None:
    """Every message is either tracked or untracked, exactly as often as predicted."""
    stats = agent.stats()
    assert tally.tracked + tally.malformed + tally.missing == tally.calls
    assert stats.untracked_malformed == tally.malformed
    assert stats.untracked_missing == tally.missing
    assert received - stats.untracked == tally.tracked
    assert stats.internal_errors == 0
    # The generators are meant to reach every outcome, and plenty of merges.
    assert tally.tracked > tally.calls // 20 and tally.malformed > tally.calls // 10 and tally.missing > 0


def no_internal_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.name.startswith("cutwatch") and r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()


SYNC_TARGET = 6600
AIO_TARGET = 3600
CLIENT_TARGET = 2500


def test_fuzzed_request_stamps_through_a_sync_server(caplog: pytest.LogCaptureFixture) -> None:
    agent = cutwatch.Agent("fuzz-sync").start()
    servicer = EchoServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[agent.server_interceptor()],
        options=BIG_METADATA,
    )
    server.add_generic_rpc_handlers((echo_service.generic_handler(servicer),))
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    side = ServerSide(agent, address, servicer, DEFAULT_MAX_STAMP_BYTES)
    try:
        side.canary("canary:1", 5)
        side.fuzz(SYNC_TARGET)
        side.canary("canary:1", 9)
        report("sync server", side.tally, agent)
        check_totals(side.tally, agent, agent.stats().requests_received)
        check_still_serving(agent, address, DEFAULT_MAX_STAMP_BYTES)
        no_internal_errors(caplog)
    finally:
        side.close()
        server.stop(None).wait(TIMEOUT)
        agent.close()


class LoopThread:
    """An event loop in a thread of its own, for grpc.aio next to sync test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


@contextmanager
def aio_server(agent: cutwatch.Agent, servicer: aio_echo_service.AioEchoServicer) -> Iterator[str]:
    """An instrumented grpc.aio echo server on an event loop of its own thread; yields its address."""
    loop = LoopThread()
    try:

        async def start() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server(interceptors=[agent.aio_server_interceptor()], options=BIG_METADATA)
            server.add_generic_rpc_handlers((aio_echo_service.generic_handler(servicer),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        server, port = loop.run(start())
        try:
            yield f"127.0.0.1:{port}"
        finally:
            loop.run(server.stop(None))
    finally:
        loop.close()


def test_fuzzed_request_stamps_through_an_aio_server(caplog: pytest.LogCaptureFixture) -> None:
    agent = cutwatch.Agent("fuzz-aio", max_stamp_bytes=AIO_MAX_STAMP_BYTES).start()
    servicer = aio_echo_service.AioEchoServicer()
    try:
        with aio_server(agent, servicer) as address:
            side = ServerSide(agent, address, servicer, AIO_MAX_STAMP_BYTES)
            try:
                side.canary("canary:1", 5)
                side.fuzz(AIO_TARGET)
                side.canary("canary:1", 9)
                report("aio server", side.tally, agent)
                check_totals(side.tally, agent, agent.stats().requests_received)
                check_still_serving(agent, address, AIO_MAX_STAMP_BYTES)
            finally:
                side.close()
        no_internal_errors(caplog)
    finally:
        agent.close()


# Client side: stamps in responses from a server without cutwatch, to instrumented clients ----------

REPLY_SERVICE = "cutwatch.test.FuzzReply"
REPLY_UNARY = f"/{REPLY_SERVICE}/Unary"
REPLY_STREAM = f"/{REPLY_SERVICE}/Stream"
# Where the server puts the stamp it is given (the request's first byte).
TRAILING, MATCHED, INITIAL, BOTH, TWICE, NONE = b"t", b"=", b"i", b"b", b"2", b"n"
IN_TRAILERS = (TRAILING, MATCHED, BOTH, TWICE)


def _identity(data: bytes) -> bytes:
    return data


def _reply(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Send the requested stamp back where ``mode`` says; answer with the call id and the stamp sent.

    ``MATCHED`` gives the stamp the call id of the client's request stamp, so
    that the client can take it for the answer to its call and merge it.
    """
    mode, stamp = request[:1], request[1:]
    request_stamp = stamp_of(context.invocation_metadata())
    call_id = stamp_pb2.Stamp.FromString(request_stamp).call_id if request_stamp else 0
    if mode == MATCHED:
        message = stamp_pb2.Stamp.FromString(stamp)
        message.call_id = call_id
        stamp = message.SerializeToString()
    if mode in (INITIAL, BOTH):
        context.send_initial_metadata(((STAMP_METADATA_KEY, stamp),))
    trailing: list[tuple[str, str | bytes]] = [(APP_TRAILER, "kept")]
    if mode in IN_TRAILERS:
        trailing.insert(0, (STAMP_METADATA_KEY, stamp))
    if mode == TWICE:
        trailing.insert(1, (STAMP_METADATA_KEY, b"the agent reads the first"))
    context.set_trailing_metadata(tuple(trailing))
    return struct.pack(">Q", call_id) + stamp


def reply_handler() -> grpc.GenericRpcHandler:
    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        answer = _reply(request, context)
        yield answer
        yield answer

    kw: dict[str, Any] = {"request_deserializer": _identity, "response_serializer": _identity}
    return grpc.method_handlers_generic_handler(
        REPLY_SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_reply, **kw),
            "Stream": grpc.unary_stream_rpc_method_handler(stream, **kw),
        },
    )


CLIENT_KINDS = ["blocking", "with_call", "future", "stream"]
AIO_CLIENT_KINDS = ["aio_unary", "aio_stream"]


class ClientSide:
    """Instrumented clients (sync and grpc.aio) of a server that sends back whatever stamp it is told."""

    def __init__(self, agent: cutwatch.Agent, address: str, loop: LoopThread) -> None:
        self.agent = agent
        self.loop = loop
        raw = grpc.insecure_channel(address, options=BIG_METADATA)
        self.channel = grpc.intercept_channel(raw, agent.client_interceptor())
        kw: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}
        self.unary = self.channel.unary_unary(REPLY_UNARY, **kw)
        self.stream = self.channel.unary_stream(REPLY_STREAM, **kw)

        async def open_aio() -> grpc.aio.Channel:
            return grpc.aio.insecure_channel(
                address, options=BIG_METADATA, interceptors=agent.aio_client_interceptors()
            )

        self.aio_channel: grpc.aio.Channel = loop.run(open_aio())
        self.aio_unary = self.aio_channel.unary_unary(REPLY_UNARY, **kw)
        self.aio_stream = self.aio_channel.unary_stream(REPLY_STREAM, **kw)
        self.mirror = StampCodec("mirror:0")
        self.tally = Tally()

    def _call(self, request: bytes, kind: str) -> tuple[bytes, Any]:
        """The answer of one call of ``kind``, and its trailing metadata as the application sees it."""
        if kind == "blocking":
            return self.unary(request, timeout=TIMEOUT), None
        if kind == "with_call":
            answer, call = self.unary.with_call(request, timeout=TIMEOUT)
            return answer, call.trailing_metadata()
        if kind == "future":
            future = self.unary.future(request, timeout=TIMEOUT)
            return future.result(TIMEOUT), future.trailing_metadata()
        if kind == "stream":
            call = self.stream(request, timeout=TIMEOUT)
            answers = list(call)
            assert len(answers) == 2 and answers[0] == answers[1]
            return answers[0], call.trailing_metadata()

        async def aio_call() -> tuple[bytes, Any]:
            if kind == "aio_unary":
                call = self.aio_unary(request, timeout=TIMEOUT)
                return await call, await call.trailing_metadata()
            call = self.aio_stream(request, timeout=TIMEOUT)
            answers = [answer async for answer in call]
            assert len(answers) == 2 and answers[0] == answers[1]
            return answers[0], await call.trailing_metadata()

        return self.loop.run(aio_call())  # type: ignore[no-any-return]

    def receive(self, mode: bytes, stamp: bytes, kind: str) -> None:
        """One call whose response carries ``stamp``: it must succeed and be counted as predicted."""
        before, epoch_before = self.agent.stats(), self.agent.epoch
        answer, trailing = self._call(mode + stamp, kind)
        call_id, sent = struct.unpack(">Q", answer[:8])[0], answer[8:]
        assert mode == MATCHED or sent == stamp
        carried = sent if mode in IN_TRAILERS else None
        outcome = predict(self.mirror, carried)
        if isinstance(outcome, DecodedStamp) and outcome.call_id != call_id:
            outcome = MALFORMED  # a valid stamp, but not the answer to this call
        check_received(self.agent, before, epoch_before, outcome, received="responses_received")
        if trailing is not None:  # the application sees the response metadata as sent
            assert stamp_of(trailing) == carried and (APP_TRAILER, "kept") in tuple(trailing)
        self.tally.count(outcome)
        if mode != NONE:
            self.tally.distinct.add(sent)

    def fuzz(self, target: int) -> None:
        """Receive generated stamps until ``target`` distinct ones have reached the clients."""

        def call(reply: tuple[bytes, bytes], kind: str) -> None:
            mode, drawn = reply
            for stamp in self.tally.new_variants(drawn):
                # A cut or flipped stamp no longer parses, so it goes back as it is.
                self.receive(mode if stamp == drawn else TRAILING, stamp, kind)

        run_batches(self.tally, target, reply_batches, call)

    def canary(self, sender: str, value: int, kind: str) -> None:
        """A valid answer: after it, the client's clock holds the sender's counter."""
        self.receive(
            MATCHED, stamp_pb2.Stamp(version=1, sender=sender, clock=[value]).SerializeToString(), kind
        )
        assert self.agent.clock[sender] == value

    def close(self) -> None:
        self.channel.close()
        self.loop.run(self.aio_channel.close())


replies = st.one_of(
    st.tuples(st.sampled_from([TRAILING] * 4 + [INITIAL, BOTH, TWICE, NONE]), stamps),
    st.tuples(st.just(MATCHED), valid_stamps),
    st.tuples(st.just(MATCHED), any_messages),
)
reply_batches = st.lists(
    st.tuples(replies, st.sampled_from(CLIENT_KINDS * 3 + AIO_CLIENT_KINDS)),
    min_size=BATCH,
    max_size=BATCH,
    unique_by=lambda c: c[0][1],
)


def test_fuzzed_response_stamps_reach_instrumented_clients(caplog: pytest.LogCaptureFixture) -> None:
    agent = cutwatch.Agent("fuzz-client").start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=BIG_METADATA)
    server.add_generic_rpc_handlers((reply_handler(),))
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    loop = LoopThread()
    try:
        side = ClientSide(agent, address, loop)
        try:
            for step, kind in enumerate(CLIENT_KINDS + AIO_CLIENT_KINDS):
                side.canary("canary:1", step + 1, kind)
            side.fuzz(CLIENT_TARGET)
            side.canary("canary:1", 99, "blocking")
            report("clients", side.tally, agent)
            check_totals(side.tally, agent, agent.stats().responses_received)
        finally:
            side.close()
        no_internal_errors(caplog)
    finally:
        loop.close()
        server.stop(None).wait(TIMEOUT)
        agent.close()


# Stamps that are not base64 at all, from a raw HTTP/2 peer ---------------------------------------

NOT_BASE64 = [b"!!!notbase64***", b"A===", b"AAAAA", b"abc def", b"\xff\xfe\x80", b"Zm9v\x00"]
"""Bytes no base64 decoder takes: symbols, bad padding, a length of 4n+1, a space, non-ASCII, NUL."""
GRPC_INTERNAL = grpc.StatusCode.INTERNAL.value[0]


@dataclass
class RawResponse:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytes = b""
    reset: int | None = None
    ended: bool = False

    @property
    def grpc_status(self) -> int:
        """From the trailers, or from the headers of a trailers-only response."""
        return int((self.trailers or self.headers)[b"grpc-status"])

    @property
    def grpc_message(self) -> str:
        return (self.trailers or self.headers).get(b"grpc-message", b"").decode()


class RawH2Client:
    """One HTTP/2 connection (cleartext, prior knowledge) sending gRPC requests with any header bytes."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.address = address
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def call(
        self, path: str, stamp_value: bytes | None, message: bytes, *, indexed: bool = True
    ) -> RawResponse:
        """A unary call whose ``cutwatch-stamp-bin`` header carries ``stamp_value`` as it is.

        ``indexed=False`` keeps the header out of HPACK's dynamic table.
        """
        stream_id = self.conn.get_next_available_stream_id()
        headers: list[Any] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", self.address.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        if stamp_value is not None:
            key = STAMP_METADATA_KEY.encode()
            headers.append((key, stamp_value) if indexed else NeverIndexedHeaderTuple(key, stamp_value))
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, b"\x00" + struct.pack(">I", len(message)) + message, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        response = RawResponse()
        while not response.ended:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for event in self.conn.receive_data(data):
                if getattr(event, "stream_id", stream_id) != stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = dict(event.headers)
                elif isinstance(event, h2.events.TrailersReceived):
                    response.trailers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    response.data += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    response.reset, response.ended = event.error_code, True
                elif isinstance(event, h2.events.StreamEnded):
                    response.ended = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise AssertionError(f"the server ended the connection: {event.error_code}")
            self.sock.sendall(self.conn.data_to_send())
        return response

    def close(self) -> None:
        self.conn.close_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.sock.close()


@contextmanager
def instrumented_server(kind: str, agent: cutwatch.Agent, servicer: Any) -> Iterator[str]:
    if kind == "aio":
        with aio_server(agent, servicer) as address:
            yield address
        return
    server, address = echo_service.start_server(servicer, [agent.server_interceptor()])
    try:
        yield address
    finally:
        server.stop(None).wait(TIMEOUT)


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_a_stamp_that_is_not_base64_is_refused_by_grpc_before_the_agent(kind: str) -> None:
    """gRPC answers INTERNAL (a trailers-only response, after a fraction of a second; older
    releases reset the stream) and runs neither the agent nor the handler; the connection and the
    server carry on."""
    agent = cutwatch.Agent(f"raw-{kind}").start()
    servicer = EchoServicer() if kind == "sync" else aio_echo_service.AioEchoServicer()
    stamp = stamp_pb2.Stamp(version=1, sender="raw:1", clock=[4]).SerializeToString()
    unpadded = base64.b64encode(stamp).rstrip(b"=")
    answer = b"\x00\x00\x00\x00\x03raw"
    try:
        with instrumented_server(kind, agent, servicer) as address:
            for indexed in (True, False):
                raw = RawH2Client(address)
                handled = len(servicer.seen_metadata)
                try:
                    # Several in a row; gRPC takes a fraction of a second to answer each.
                    for value in NOT_BASE64 if indexed else NOT_BASE64[:3]:
                        before = agent.stats()
                        response = raw.call(echo_service.UNARY_UNARY, value, b"raw", indexed=indexed)
                        if response.reset is not None:  # older gRPC releases reset the stream instead
                            assert response.reset == h2.errors.ErrorCodes.INTERNAL_ERROR, response
                            assert response.data == b"" and not response.trailers
                        else:
                            assert response.data == b"" and not response.trailers
                            assert response.headers[b":status"] == b"200"
                            assert response.grpc_status == GRPC_INTERNAL, response
                            assert (
                                STAMP_METADATA_KEY in response.grpc_message
                                and "base64" in response.grpc_message
                            )
                        assert agent.stats() == before
                        assert len(servicer.seen_metadata) == handled
                    # The connection still carries calls.
                    response = raw.call(echo_service.UNARY_UNARY, None, b"raw")
                    assert response.grpc_status == 0 and response.data == answer
                    if not indexed:
                        # Kept out of HPACK's table, the bad values leave no trace: a good stamp
                        # (base64 without padding, as gRPC allows) arrives decoded and is merged.
                        # (gRPC remembers a bad value that entered the table: a later header that
                        # names that entry is refused too, whatever its value.)
                        response = raw.call(echo_service.UNARY_UNARY, unpadded, b"raw", indexed=False)
                        assert response.grpc_status == 0 and response.data == answer
                        assert servicer.seen_metadata[-1][STAMP_METADATA_KEY] == stamp
                        assert agent.clock["raw:1"] == 4
                finally:
                    raw.close()
            assert agent.stats().requests_received == 3 and agent.stats().untracked_missing == 2
            check_still_serving(agent, address, DEFAULT_MAX_STAMP_BYTES)
    finally:
        agent.close()


class RawH2Server:
    """A one-connection HTTP/2 server that answers every call with ``ok`` and the given stamp header."""

    def __init__(self, stamp_value: bytes) -> None:
        self.stamp_value = stamp_value
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="raw-h2-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            sock, _ = self.listener.accept()
            with sock:
                sock.settimeout(TIMEOUT)
                config = h2.config.H2Configuration(
                    client_side=False,
                    header_encoding=None,
                    validate_outbound_headers=False,
                    normalize_outbound_headers=False,
                )
                conn = h2.connection.H2Connection(config)
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.StreamEnded):
                            sid = event.stream_id
                            conn.send_headers(
                                sid, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                            )
                            conn.send_data(sid, b"\x00\x00\x00\x00\x02ok")
                            trailers = [
                                (b"grpc-status", b"0"),
                                (STAMP_METADATA_KEY.encode(), self.stamp_value),
                            ]
                            conn.send_headers(sid, trailers, end_stream=True)
                    sock.sendall(conn.data_to_send())
        except OSError:
            pass  # the client went away
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.listener.close()
        self._thread.join(TIMEOUT)
        assert self.error is None, self.error


@pytest.mark.parametrize("value", NOT_BASE64[:3])
def test_a_response_stamp_that_is_not_base64_fails_the_call_in_grpc(value: bytes) -> None:
    """On the way back gRPC fails the call itself (INTERNAL; older releases: the stream is reset,
    UNKNOWN) and hands on the stamp key with an
    empty value, which the agent counts as malformed."""
    agent = cutwatch.Agent("raw-client").start()
    server = RawH2Server(value)
    try:
        channel = grpc.intercept_channel(grpc.insecure_channel(server.address), agent.client_interceptor())
        with channel:
            call = channel.unary_unary(
                REPLY_UNARY, request_serializer=_identity, response_deserializer=_identity
            )
            with pytest.raises(grpc.RpcError) as failure:
                call(b"hi", timeout=TIMEOUT)
        error: Any = failure.value
        if error.code() == grpc.StatusCode.INTERNAL:
            assert STAMP_METADATA_KEY in error.details() and "base64" in error.details()
        else:  # older gRPC resets the stream instead
            assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, "Stream removed")
        assert stamp_of(error.trailing_metadata()) == b""
        stats = agent.stats()
        assert (stats.responses_received, stats.untracked_malformed, stats.internal_errors) == (1, 1, 0)
    finally:
        server.close()
        agent.close()


# Epochs far ahead -----------------------------------------------------------------------------------


def test_a_decoded_epoch_runs_at_most_a_window_past_the_newest_seen() -> None:
    codec = StampCodec("me:1")
    window = DEFAULT_MAX_EPOCH_AHEAD

    def epoch_of(epoch: int) -> int:
        return codec.decode(
            stamp_pb2.Stamp(version=1, sender="you:2", clock=[1], epoch=epoch).SerializeToString()
        ).epoch

    assert epoch_of(2**64 - 1) == window
    assert epoch_of(2**63) == 2 * window
    assert epoch_of(3) == 3  # behind: as sent
    codec.encode(["me:1"], [1], peer=None, epoch=10**6)  # our own epoch, e.g. joined from a collector
    assert epoch_of(10**6 + window) == 10**6 + window
    assert epoch_of(2**64 - 1) == 10**6 + 2 * window


def test_a_forged_epoch_costs_a_bounded_number_of_snapshots() -> None:
    """A stamp far ahead used to make the server take a local snapshot for every epoch up to its
    own, under the agent's lock (forever, for an epoch near 2^64): now it moves the server a
    bounded number of epochs, and is still tracked. The epochs here are small enough that
    without that bound the test fails rather than hangs."""
    agent = cutwatch.Agent("epoch").start()
    servicer = EchoServicer()
    server, address = echo_service.start_server(servicer, [agent.server_interceptor()])
    try:
        with grpc.insecure_channel(address) as channel:
            stub = EchoStub(channel)
            for n, epoch in enumerate([10**5, 10**5 + 5000, 3 * 10**5], start=1):
                stamp = stamp_pb2.Stamp(
                    version=1, sender="forger:1", clock=[n], epoch=epoch
                ).SerializeToString()
                assert (
                    stub.unary_unary(b"x", metadata=((STAMP_METADATA_KEY, stamp),), timeout=TIMEOUT) == b"x"
                )
                assert agent.epoch == n * DEFAULT_MAX_EPOCH_AHEAD
                assert agent.stats().snapshots_taken == n * DEFAULT_MAX_OPEN_EPOCHS
                assert agent.clock["forger:1"] == n  # still tracked
        check_still_serving(agent, address, DEFAULT_MAX_STAMP_BYTES)
    finally:
        server.stop(None).wait(TIMEOUT)
        agent.close()
