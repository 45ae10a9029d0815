"""Thousands of processes in one clock: stamps stay under their limit, calls keep succeeding."""

from __future__ import annotations

from typing import Any

from echo_service import EchoServicer, EchoStub

from cutwatch.agent import STAMP_METADATA_KEY, StampCodec
from cutwatch.core import DEFAULT_MAX_STAMP_BYTES

TIMEOUT = 30.0
SENDERS = 20
PEERS_PER_SENDER = 200


def test_a_clock_of_thousands_of_processes_degrades_its_stamps_and_no_call_fails(
    make_agent: Any, serve: Any, open_channel: Any
) -> None:
    middle = make_agent("middle")
    sink = make_agent("sink")
    sink_servicer = EchoServicer()
    middle_stub = EchoStub(open_channel(serve(EchoServicer(), middle)))
    onward = EchoStub(open_channel(serve(sink_servicer, sink), middle))
    # Raw senders each bring 201 process ids: the middle's clock grows past 4000 entries.
    for s in range(SENDERS):
        sender = f"sender-{s}:1"
        names = [sender, *(f"worker-{s}-{i}:1" for i in range(PEERS_PER_SENDER))]
        stamp = StampCodec(sender).encode(names, [1] * len(names), peer=None)
        assert not stamp.degraded
        assert (
            middle_stub.unary_unary(b"x", timeout=TIMEOUT, metadata=((STAMP_METADATA_KEY, stamp.data),))
            == b"x"
        )
    learnt = sum(1 for name in middle.clock if name.startswith(("worker-", "sender-")))
    assert learnt == SENDERS * (PEERS_PER_SENDER + 1)
    # Calls from the middle now carry a clock that cannot fit whole: cut to a prefix, never failed.
    for _ in range(20):
        assert onward.unary_unary(b"y", timeout=TIMEOUT) == b"y"
    stats = middle.stats()
    assert stats.stamps_degraded >= 20
    assert stats.internal_errors == 0
    sizes = [len(seen[STAMP_METADATA_KEY]) for seen in sink_servicer.seen_metadata]
    assert len(sizes) == 20 and max(sizes) <= DEFAULT_MAX_STAMP_BYTES
    sink_stats = sink.stats()
    assert sink_stats.untracked == 0 and sink_stats.requests_received == 20
    assert sink.clock[middle.process_id] >= 1
