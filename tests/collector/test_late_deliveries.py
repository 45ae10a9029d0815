"""A request held by a proxy past its caller's deadline, over real gRPC: a snapshot fences its call.

The caller's call fails; the snapshot that follows lists it failed and has
every participant fence it, so the cut is COMPLETE without waiting for a
request that may never come, and when the proxy lets the request go at last
the server refuses it instead of changing state the cut says never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc_proxy import ForwardingProxy
from ledger_service import CREDIT, Ledger, amount_request
from polling import wait_until

from cutwatch.collector import CollectorClient, CollectorServer, Cut

TIMEOUT = 30.0


@pytest.fixture
def world(collector: CollectorServer) -> Iterator[tuple[Ledger, Ledger, ForwardingProxy, Callable[..., Any]]]:
    a, b = Ledger("a", collector.address), Ledger("b", collector.address)
    proxy = ForwardingProxy(b.address)
    channel = grpc.intercept_channel(grpc.insecure_channel(proxy.address), a.agent.client_interceptor())
    stub = channel.unary_unary(
        CREDIT, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
    )
    try:
        assert a.agent.wait_registered(TIMEOUT) and b.agent.wait_registered(TIMEOUT)
        yield a, b, proxy, stub
    finally:
        channel.close()
        proxy.close()
        a.close()
        b.close()


def balances(cut: Cut, *ledgers: Ledger) -> list[int]:
    return [int(cut.state_of(ledger.agent.process_id)["balance"]) for ledger in ledgers]


def send_and_give_up(a: Ledger, stub: Any, amount: int) -> None:
    """Debit and send in one atomic block; the call's deadline passes while the proxy holds it."""
    with a.agent.atomic():
        a.balance -= amount
        future = stub.future(amount_request(amount), timeout=0.5)
    with pytest.raises(grpc.RpcError) as failed:
        future.result(TIMEOUT)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]


def test_a_request_held_past_its_callers_failure_is_fenced_and_refused(
    collector: CollectorServer, world: tuple[Ledger, Ledger, ForwardingProxy, Any]
) -> None:
    a, b, proxy, stub = world
    proxy.hold(lambda request: True)
    send_and_give_up(a, stub, 10)
    assert proxy.held == 1
    with CollectorClient(collector.address) as client:
        cut = client.snapshot(timeout=TIMEOUT)
        # The failed call is fenced at b: the cut need not wait for a request that may never come.
        assert cut.status == "COMPLETE", cut.reasons
        assert balances(cut, a, b) == [90, 100] and cut.in_transit == ()
        proxy.release()
        wait_until(lambda: b.agent.stats().requests_refused == 1, "b to refuse the late request")
        after = client.snapshot(timeout=TIMEOUT)
    assert after.status == "COMPLETE", after.reasons
    assert balances(after, a, b) == [90, 100]  # the cut above was right: the request never took effect
    assert b.balance == 100 and b.agent.stats().internal_errors == 0
    assert a.agent.stats().requests_refused == 0


def test_without_a_snapshot_in_between_the_late_request_is_delivered(
    collector: CollectorServer, world: tuple[Ledger, Ledger, ForwardingProxy, Any]
) -> None:
    a, b, proxy, stub = world
    proxy.hold(lambda request: True)
    send_and_give_up(a, stub, 10)
    proxy.release()  # no cut said it was lost: nothing to refuse
    wait_until(lambda: b.balance == 110, "b to apply the late request")
    with CollectorClient(collector.address) as client:
        cut = client.snapshot(timeout=TIMEOUT)
    assert cut.status == "COMPLETE", cut.reasons
    assert balances(cut, a, b) == [90, 110]
    assert b.agent.stats().requests_refused == 0
