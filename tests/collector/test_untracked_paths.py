"""A hop that strips cutwatch's stamps between two agents, over real gRPC and a real collector.

The proxy (``ForwardingProxy(strip=True)``) forwards calls as an L7 proxy
that drops headers it does not know. The credit it carries reaches b without
a stamp: no cut can place it. b counts the change, a counts the answer that
came back without a stamp, and the collector flags the cut whose window they
fall in (``Cut.untracked``): COMPLETE for its tasks, INCONCLUSIVE for the
predicates that add up its states. The cuts after it are exact again.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc_proxy import ForwardingProxy
from ledger_service import CREDIT, Ledger

from cutwatch.collector import CollectorClient, CollectorServer, Cut

TIMEOUT = 30.0
PREDICATES = textwrap.dedent(
    """
    from cutwatch.predicates import conservation, invariant

    @invariant("ledger.conservation")
    def conserved(cut):
        return conservation(cut, state="balance", payload="amount", services="ledger", total=200)
    """
)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorServer]:
    path = tmp_path / "ledger_checks.py"
    path.write_text(PREDICATES)
    server = CollectorServer(
        tmp_path / "cuts.db", listen="127.0.0.1:0", snapshot_timeout=10.0, predicates=[str(path)]
    ).start()
    try:
        yield server
    finally:
        server.stop()


def balances(cut: Cut, *ledgers: Ledger) -> list[int]:
    return [int(cut.state_of(ledger.agent.process_id)["balance"]) for ledger in ledgers]


def statuses(client: CollectorClient, epoch: int) -> dict[str, str]:
    results = client.results(epoch=epoch)
    assert results is not None
    return {result.name: result.status for result in results.results}


def test_a_credit_whose_stamp_a_proxy_dropped_flags_the_cut(collector: CollectorServer) -> None:
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
            assert before.conclusive, (before.reasons, before.untracked)
            a.transfer(stub, 10).result(TIMEOUT)
            assert proxy.forwarded == 1
            assert b.agent.stats().untracked_changes == 1  # b's credit, from a request without a stamp
            assert a.agent.stats().untracked_changes == 1  # the answer, without a stamp
            flagged = client.snapshot(timeout=TIMEOUT)
            after = client.snapshot(timeout=TIMEOUT)
            assert collector.checker.wait_checked(after.epoch, TIMEOUT)
            flagged_results = statuses(client, flagged.epoch)
            after_results = statuses(client, after.epoch)
    finally:
        channel.close()
        proxy.close()
        a.close()
        b.close()
    # The changes came before this snapshot started, but the collector last heard the counts before
    # them: it cannot tell, and flags the cut. Its tasks are exact (deadlock detection ran); its sums
    # are not known to be, so the conservation predicate did not run.
    assert flagged.complete and not flagged.conclusive and flagged.reasons == ()
    assert flagged.untracked == {a.agent.process_id: 1, b.agent.process_id: 1}
    assert flagged_results == {"cutwatch.deadlock": "PASS", "ledger.conservation": "INCONCLUSIVE"}
    # The next cut starts from the counts this one read: exact, and conserving.
    assert after.conclusive, (after.reasons, after.untracked)
    assert balances(after, a, b) == [90, 110]
    assert after_results == {"cutwatch.deadlock": "PASS", "ledger.conservation": "PASS"}
