"""Retries under gRPC's own ``retryPolicy``, over real gRPC: a request that bounces is never counted twice.

A handler that fails with ``UNAVAILABLE`` before it applies anything makes
the client's channel send the call again, as attempt 1 with the same stamp,
to the same server or (``round_robin``) to another. If the first attempt was
in transit at its server's cut, that server recorded it; the record must not
stay, or the cut would hold the money twice when the retry is applied
before the other server's cut. Each test puts the cut exactly there, and
shows the cut wrong with the protection switched off.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from stream_bank import TIMEOUT, StreamBank, assemble, money, stub

from cutwatch.core import AssembledCut, SnapshotParticipant


@pytest.fixture
def banks() -> Iterator[tuple[StreamBank, StreamBank, StreamBank]]:
    a, b1, b2 = StreamBank("a"), StreamBank("b1"), StreamBank("b2")
    b2.bounces, b2.attempts = b1.bounces, b1.attempts  # whichever server a call reaches takes the next bounce
    try:
        yield a, b1, b2
    finally:
        for bank in (a, b1, b2):
            bank.close()


def money_in(cut: AssembledCut) -> int:
    """Balances plus every amount in transit."""
    held = sum(int(state["balance"]) for state in cut.states.values())  # type: ignore[index]
    return held + sum(int(json.loads(r.payload_json).get("amount", 0)) for r in cut.in_transit)


def bounce_then_retry(a: StreamBank, servers: tuple[StreamBank, ...]) -> tuple[str, str]:
    """``a`` sends 10 to one of ``servers``; attempt 0 waits in its handler while ``a`` and that server
    take their cuts (its server records it in transit), then fails with UNAVAILABLE; the retry policy
    sends attempt 1, which a server applies before its own cut. Returns the two servers' names."""
    credit = stub(a.channel_to_any(*servers), "Credit", "unary_unary")
    for _ in range(2 * len(servers)):  # every subchannel ready: round_robin then alternates
        credit(money(0), timeout=TIMEOUT)
    arrivals = servers[0].attempts
    while not arrivals.empty():
        arrivals.get_nowait()
    release = threading.Event()
    servers[0].bounces.put(release)
    with a.core.atomic():
        a.balance -= 10
        answer = credit.future(money(10), timeout=TIMEOUT)
    first, attempt = arrivals.get(timeout=TIMEOUT)
    assert attempt == 0
    by_name = {server.name: server for server in servers}
    a.cut(1)
    by_name[first].cut(1)  # attempt 0 waits in its handler: recorded in transit
    release.set()
    assert isinstance(answer.result(timeout=TIMEOUT), Struct)
    second, attempt = arrivals.get(timeout=TIMEOUT)
    assert attempt == 1  # gRPC's retry, told apart by grpc-previous-rpc-attempts
    for server in servers:
        if server.name != first:
            server.cut(1)  # after it applied the retry (when it is another server)
    return first, second


def test_a_retry_to_another_server_is_counted_once(
    banks: tuple[StreamBank, StreamBank, StreamBank],
) -> None:
    a, b1, b2 = banks
    first, second = bounce_then_retry(a, (b1, b2))
    assert first != second  # round_robin sent the retry to the other server
    cut = assemble(1, a, b1, b2)
    assert cut.status == "COMPLETE", cut.reasons
    balances = {name: state["balance"] for name, state in cut.states.items()}  # type: ignore[index]
    assert balances == {"a": 90, first: 100, second: 110}
    # The answer to the call was sent before the second server's cut and taken after a's: in transit.
    assert [(r.kind, r.receiver) for r in cut.in_transit] == [("response", "a")]
    assert money_in(cut) == 300
    assert cut.duplicates == ()


def test_a_retry_to_the_same_server_is_counted_once(
    banks: tuple[StreamBank, StreamBank, StreamBank],
) -> None:
    a, b1, _ = banks
    bounce_then_retry(a, (b1,))
    cut = assemble(1, a, b1)
    assert cut.status == "COMPLETE", cut.reasons
    # Attempt 1 reached b1 after its cut: in transit, recorded; attempt 0's record was taken back.
    assert [(r.kind, r.msg_key.attempt) for r in cut.in_transit] == [("request", 1)]
    assert money_in(cut) == 200


def test_without_taking_the_bounced_record_back_the_cut_counts_the_money_twice(
    banks: tuple[StreamBank, StreamBank, StreamBank], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The protection switched off: the first attempt's record stays and settles the call, the retry was
    applied before the other server's cut, and a COMPLETE cut holds 10 that do not exist."""
    monkeypatch.setattr(SnapshotParticipant, "on_bounce", lambda self, delivery: None)
    a, b1, b2 = banks
    bounce_then_retry(a, (b1, b2))
    cut = assemble(1, a, b1, b2)
    assert cut.status == "COMPLETE"
    assert money_in(cut) == 310


def test_grpcio_sends_no_hedged_attempts(banks: tuple[StreamBank, StreamBank, StreamBank]) -> None:
    """gRPC's C core (under grpcio) does not implement ``hedgingPolicy``: a hedged call is sent once.
    docs/snapshots.md relies on this; if grpcio ever hedges, this test says so."""
    _, b1, b2 = banks
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "streams.Bank"}],
                "hedgingPolicy": {
                    "maxAttempts": 3,
                    "hedgingDelay": "0s",
                    "nonFatalStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
    with grpc.insecure_channel(f"ipv4:{b1.address},{b2.address}", options=options) as channel:
        credit = stub(channel, "Credit", "unary_unary")
        for _ in range(4):
            credit(money(1), timeout=TIMEOUT)
    arrivals = [b1.attempts.get(timeout=TIMEOUT) for _ in range(4)]
    assert all(attempt == 0 for _, attempt in arrivals)
    assert b1.attempts.empty()
    assert b1.balance + b2.balance == 204


def test_a_call_whose_last_attempt_bounces_keeps_its_record(
    banks: tuple[StreamBank, StreamBank, StreamBank],
) -> None:
    """Every attempt bounces (the policy allows three): the last one was in transit at the cut, and with
    no attempt after it, its record stands. The caller refunds the money after its cut, on the error."""
    a, b1, _ = banks
    credit = stub(a.channel_to_any(b1), "Credit", "unary_unary")
    credit(money(0), timeout=TIMEOUT)
    b1.attempts.get(timeout=TIMEOUT)
    early, last = threading.Event(), threading.Event()
    early.set()
    for release in (early, early, last):
        b1.bounces.put(release)
    with a.core.atomic():
        a.balance -= 10
        answer = credit.future(money(10), timeout=TIMEOUT)
    assert [b1.attempts.get(timeout=TIMEOUT)[1] for _ in range(3)] == [0, 1, 2]
    a.cut(1)
    b1.cut(1)  # the last attempt waits in its handler: recorded in transit
    last.set()
    with pytest.raises(grpc.RpcError) as failed:
        answer.result(timeout=TIMEOUT)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    with a.core.atomic():
        a.balance += 10  # the refund, after a's cut
    cut = assemble(1, a, b1)
    assert cut.status == "COMPLETE", cut.reasons
    assert [(r.kind, r.msg_key.attempt) for r in cut.in_transit] == [("request", 2)]
    assert money_in(cut) == 200
