"""A hop that strips cutwatch's stamps between two agents, over real gRPC and a real collector.

The proxy (``ForwardingProxy(strip=True)``) forwards calls as an L7 proxy
that drops headers it does not know. The credit it carries reaches b without
a stamp: no cut can place it, b counts it, and the collector leaves the cut
whose window it falls in INCOMPLETE, saying why; the cuts after it are
COMPLETE again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc_proxy import ForwardingProxy
from ledger_service import CREDIT, Ledger

from cutwatch.collector import CollectorClient, CollectorServer, Cut

TIMEOUT = 30.0


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorServer]:
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", snapshot_timeout=10.0).start()
    try:
        yield server
    finally:
        server.stop()


def balances(cut: Cut, *ledgers: Ledger) -> list[int]:
    return [int(cut.state_of(ledger.agent.process_id)["balance"]) for ledger in ledgers]


def test_a_credit_whose_stamp_a_proxy_dropped_shows_on_the_cut(collector: CollectorServer) -> None:
    a, b = Ledger("a", collector.address), Ledger("b", collector.address)
    proxy = ForwardingProxy(b.address, strip=True)
    channel = grpc.intercept_channel(grpc.insecure_channel(proxy.address), a.agent.client_interceptor())
    stub = channel.unary_unary(
        CREDIT, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
    )
    try:
        assert a.agent.wait_registered(TIMEOUT) and b.agent.wait_registered(TIMEOUT)
        with CollectorClient(collector.address) as client:
            before = client.snapshot(timeout=TIMEOUT)
            assert before.status == "COMPLETE", before.reasons
            a.transfer(stub, 10).result(TIMEOUT)
            assert proxy.forwarded == 1
            assert b.agent.stats().untracked_changes == 1  # b's credit, from a request without a stamp
            assert a.agent.stats().untracked_changes == 0  # a's channel never answered with a stamp
            flagged = client.snapshot(timeout=TIMEOUT)
            after = client.snapshot(timeout=TIMEOUT)
    finally:
        channel.close()
        proxy.close()
        a.close()
        b.close()
    assert flagged.status == "INCOMPLETE"
    (reason,) = flagged.reasons
    assert reason.startswith(f"state changed without a stamp during the snapshot at {b.agent.process_id} (1)")
    # The credit came before this snapshot started, but the collector last heard b's count before it:
    # it cannot tell. The next cut starts from the count this one read, and is COMPLETE and right.
    assert after.status == "COMPLETE", after.reasons
    assert balances(after, a, b) == [90, 110]
