"""Limits: an agent over its rate or message size is cut off alone; an agent's queue is bounded in bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from ledger_service import Ledger
from polling import wait_until

from cutwatch.agent._control import ControlClient, ControlOptions, approximate_size
from cutwatch.collector import CollectorClient, CollectorServer, Cut
from cutwatch.collector._limits import AgentMeter, CollectorLimits
from cutwatch.core import ChannelRecord, MsgKey
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc

TIMEOUT = 30.0
REJOIN_GRACE = 1.0


def complete_cut_after_grace(client: CollectorClient) -> Cut:
    """An agent that was cut off is expected back for the rejoin grace; after it the rest complete alone."""
    wait_until(lambda: not client.status()["absent"], "the rejoin grace of the cut-off agent to end")
    cut = client.snapshot(timeout=TIMEOUT)
    assert cut.status == "COMPLETE", cut.reasons
    return cut


def flood(address: str, messages: Iterator[pb.AgentMessage]) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.CollectorStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stub.Control(messages, timeout=TIMEOUT):
                pass
        return caught.value


def registration(process: str) -> pb.AgentMessage:
    return pb.AgentMessage(register=pb.Registration(process_id=process, service="flood", protocol_version=1))


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[CollectorServer]:
    limits = CollectorLimits(agent_events_per_second=200.0, burst_seconds=1.0, max_message_bytes=256 * 1024)
    server = CollectorServer(
        tmp_path / "cuts.db", listen="127.0.0.1:0", limits=limits, rejoin_grace=REJOIN_GRACE
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_an_agent_over_its_message_rate_is_cut_off_and_the_others_are_not(limited: CollectorServer) -> None:
    a = Ledger("a", limited.address)
    b = Ledger("b", limited.address)
    try:
        assert a.agent.wait_registered(TIMEOUT) and b.agent.wait_registered(TIMEOUT)

        def heartbeats() -> Iterator[pb.AgentMessage]:
            yield registration("flood:1")
            for _ in range(100_000):
                yield pb.AgentMessage(heartbeat=pb.Heartbeat(unix_nanos=1))

        error = flood(limited.address, heartbeats())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "flood:1" in error.details() and "--agent-events-per-second" in error.details()
        a.transfer(a.stub(b), 3).result(TIMEOUT)
        with CollectorClient(limited.address) as client:
            cut = complete_cut_after_grace(client)
            assert set(cut.states) == {a.agent.process_id, b.agent.process_id}
            status = client.status()
        assert status["limits"]["agents_over_limit"] == 1
        assert status["limits"]["agent_events_per_second"] == 200.0
        assert sorted(agent["process"] for agent in status["agents"]) == sorted(cut.states)
    finally:
        a.close()
        b.close()


def test_a_message_over_the_size_limit_is_refused_by_grpc_and_others_go_on(limited: CollectorServer) -> None:
    a = Ledger("a", limited.address)
    try:
        assert a.agent.wait_registered(TIMEOUT)
        huge = pb.AgentMessage(seq=1, local_snapshot=pb.LocalSnapshot(epoch=1, state_json="x" * (512 * 1024)))
        error = flood(limited.address, iter([registration("big:1"), huge]))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with CollectorClient(limited.address) as client:
            assert set(complete_cut_after_grace(client).states) == {a.agent.process_id}
    finally:
        a.close()


def test_the_meter_allows_a_burst_then_the_sustained_rate() -> None:
    meter = AgentMeter(CollectorLimits(agent_events_per_second=1000.0, burst_seconds=0.01))
    admitted = 0
    while meter.admit(10) is None:
        admitted += 1
        assert admitted < 1000, "the burst never ended"
    assert admitted >= 9  # the burst: 10 messages, less what a slow clock refilled meanwhile
    bytes_meter = AgentMeter(CollectorLimits(agent_bytes_per_second=1024.0, burst_seconds=1.0))
    assert bytes_meter.admit(1024) is None
    refusal = bytes_meter.admit(1024)
    assert refusal is not None and "--agent-bytes-per-second" in refusal


def record(i: int, payload_bytes: int) -> ChannelRecord:
    return ChannelRecord(
        1, "peer:1", "me:1", '"' + "p" * payload_bytes + '"', MsgKey("peer:1", i, 0, "request")
    )


def test_the_agent_queue_is_bounded_in_bytes_and_counts_every_drop() -> None:
    """With no collector to send to, events pile up to the byte cap; the rest are dropped and counted."""
    cap = 1024 * 1024
    client = ControlClient(
        "127.0.0.1:9",  # the discard port: nothing listens there
        lambda: pb.Registration(process_id="me:1", service="me", protocol_version=1),
        lambda order: None,
        ControlOptions(queue_size=1_000_000, queue_bytes=cap, backoff_initial=5.0),
    )
    client.start()
    try:
        events = [record(i, 10_000) for i in range(500)]
        client.submit(events)
        stats = client.stats()
        per_event = approximate_size(events[0])
        assert per_event > 10_000
        assert stats.queue_bytes_peak <= cap
        assert stats.events_queued == cap // per_event
        assert stats.events_dropped == 500 - stats.events_queued
        assert stats.events_sent == 0
    finally:
        client.close(5.0)
