"""Stream messages and cuts, over real gRPC with the sync interceptors, in exactly chosen orders.

Every message of a stream counts at both ends; a cut that a stream message
crosses backwards (sent after its sender's cut, consumed before its
receiver's) or that leaves one in flight is never COMPLETE, and says which
stream. The orders are the ones that made COMPLETE cuts wrong before: see
:mod:`stream_bank` for the service.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest
from google.protobuf.struct_pb2 import Struct
from polling import wait_until
from stream_bank import TIMEOUT, StreamBank, assemble, balances, in_transit, money, stub, total


@pytest.fixture
def banks() -> Iterator[tuple[StreamBank, StreamBank]]:
    a, b = StreamBank("a"), StreamBank("b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def deposit(a: StreamBank, b: StreamBank) -> tuple[queue.Queue[int | None], object]:
    """A client stream from a to b; each amount put in the queue is debited at a and sent."""
    amounts: queue.Queue[int | None] = queue.Queue()
    call = stub(a.channel_to(b), "Deposit", "stream_unary").future(a.transfers(amounts), timeout=TIMEOUT)
    return amounts, call


def test_a_client_stream_message_sent_after_the_senders_cut_and_consumed_before_the_receivers(
    banks: tuple[StreamBank, StreamBank],
) -> None:
    """The review's case: message 1 sent and consumed; a's cut; a debits 10 and yields message 2; b
    credits it and then takes its cut. It was COMPLETE with 210 where 200 is right."""
    a, b = banks
    amounts, call = deposit(a, b)
    amounts.put(10)
    assert b.taken.get(timeout=TIMEOUT) == 10
    a.cut(1)
    amounts.put(10)
    assert b.taken.get(timeout=TIMEOUT) == 10
    b.cut(1)
    amounts.put(None)
    call.result(TIMEOUT)  # type: ignore[attr-defined]
    cut = assemble(1, a, b)
    assert balances(cut) == [90, 120]  # wrong...
    assert cut.status == "INCOMPLETE"  # ...and not COMPLETE
    assert any(
        "/streams.Bank/Deposit" in reason
        and "1 request message(s) consumed before the server's cut were sent after the client's cut" in reason
        for reason in cut.reasons
    ), cut.reasons


def test_a_client_stream_message_in_flight_at_the_cut_is_recorded(
    banks: tuple[StreamBank, StreamBank],
) -> None:
    """b's cut, then a sends message 2 and cuts: the message was on its way; b records it as it takes
    it, after its cut, and the cut places it in transit."""
    a, b = banks
    amounts, call = deposit(a, b)
    amounts.put(10)
    assert b.taken.get(timeout=TIMEOUT) == 10
    b.cut(1)
    amounts.put(10)
    assert b.taken.get(timeout=TIMEOUT) == 10
    a.cut(1)
    amounts.put(None)
    call.result(TIMEOUT)  # type: ignore[attr-defined]
    cut = assemble(1, a, b)
    assert (cut.status, cut.reasons) == ("COMPLETE", ())
    assert balances(cut) == [80, 110] and in_transit(cut) == [("request", 2, 10)] and total(cut) == 200


def test_a_cut_between_stream_messages_is_complete_and_exact(banks: tuple[StreamBank, StreamBank]) -> None:
    a, b = banks
    amounts, call = deposit(a, b)
    for _ in range(3):
        amounts.put(5)
        assert b.taken.get(timeout=TIMEOUT) == 5
    a.cut(1)
    b.cut(1)
    amounts.put(5)
    assert b.taken.get(timeout=TIMEOUT) == 5
    amounts.put(None)
    call.result(TIMEOUT)  # type: ignore[attr-defined]
    cut = assemble(1, a, b)
    assert (cut.status, cut.reasons) == ("COMPLETE", ())
    assert balances(cut) == [85, 115]


def test_a_server_stream_message_taken_but_not_yet_applied_is_in_transit(
    banks: tuple[StreamBank, StreamBank],
) -> None:
    """The consumption rule, for stream messages: a message the client took is consumed when its next
    atomic() block ends. A cut between the two must not count it consumed (its money would be in
    neither balance); it is recorded in transit instead."""
    a, b = banks
    responses = stub(a.channel_to(b), "Payout", "unary_stream")(money(0), timeout=TIMEOUT)
    b.payouts.put(7)
    first = next(responses)
    a._credit(int(first["amount"]))
    b.payouts.put(7)
    second = next(responses)  # taken, not applied yet
    a.cut(1)
    b.cut(1)
    a._credit(int(second["amount"]))
    b.payouts.put(None)
    assert list(responses) == []
    cut = assemble(1, a, b)
    assert (cut.status, cut.reasons) == ("COMPLETE", ())
    # 7 taken by a, not applied: on its way, as far as the cut goes.
    assert balances(cut) == [107, 86] and in_transit(cut) == [("response", 2, 7)] and total(cut) == 200


def test_a_stream_whose_server_end_closed_before_its_cut_is_placed_by_its_final_counts(
    banks: tuple[StreamBank, StreamBank],
) -> None:
    """The handler returned (its end closed) before the server's cut, while its last message was still
    on its way to the client: the server's end is listed with its final counts, so the message is in
    transit, not a stream whose other end the cut cannot see."""
    a, b = banks
    responses = stub(a.channel_to(b), "Payout", "unary_stream")(money(0), timeout=TIMEOUT)
    credited = a.receive(responses)
    b.payouts.put(7)
    assert next(credited) == 7
    b.payouts.put(7)
    b.payouts.put(None)
    wait_until(lambda: b.core.stats().stream_ends_closed == 1, "the handler to return", TIMEOUT)
    b.cut(1)
    a.cut(1)
    assert list(credited) == [7]
    cut = assemble(1, a, b)
    assert (cut.status, cut.reasons) == ("COMPLETE", ())
    assert balances(cut) == [107, 86] and in_transit(cut) == [("response", 2, 7)] and total(cut) == 200


def test_a_server_stream_message_sent_after_the_servers_cut_and_applied_before_the_clients(
    banks: tuple[StreamBank, StreamBank],
) -> None:
    a, b = banks
    responses = stub(a.channel_to(b), "Payout", "unary_stream")(money(0), timeout=TIMEOUT)
    credited = a.receive(responses)
    b.payouts.put(7)
    assert next(credited) == 7
    b.cut(1)
    b.payouts.put(7)
    assert next(credited) == 7
    a.cut(1)
    b.payouts.put(None)
    assert list(credited) == []
    cut = assemble(1, a, b)
    assert balances(cut) == [114, 93]
    assert cut.status == "INCOMPLETE"
    assert any(
        "1 response message(s) consumed before the client's cut were sent after the server's cut" in reason
        for reason in cut.reasons
    ), cut.reasons


def test_a_bidirectional_stream_is_checked_both_ways(banks: tuple[StreamBank, StreamBank]) -> None:
    a, b = banks
    amounts: queue.Queue[int | None] = queue.Queue()
    refunds = a.receive(stub(a.channel_to(b), "Swap", "stream_stream")(a.transfers(amounts), timeout=TIMEOUT))
    amounts.put(10)
    assert next(refunds) == 5  # b credited 10 - 5 and sent 5 back; a credited it
    a.cut(1)
    b.cut(1)
    amounts.put(10)
    assert next(refunds) == 5
    amounts.put(None)
    assert list(refunds) == []
    quiet = assemble(1, a, b)
    assert (quiet.status, balances(quiet)) == ("COMPLETE", [95, 105])
    amounts2: queue.Queue[int | None] = queue.Queue()
    refunds2 = a.receive(
        stub(a.channel_to(b), "Swap", "stream_stream")(a.transfers(amounts2), timeout=TIMEOUT)
    )
    amounts2.put(10)
    assert next(refunds2) == 5
    b.cut(2)  # b has consumed one request and sent one refund
    amounts2.put(10)
    assert next(refunds2) == 5  # a sent its second request after b's cut...
    a.cut(2)  # ...and applied b's second refund, sent after b's cut, before its own
    amounts2.put(None)
    assert list(refunds2) == []
    crossed = assemble(2, a, b)
    assert crossed.status == "INCOMPLETE"
    (reason,) = crossed.reasons  # a's second request is in transit, recorded; b's refund crossed
    assert "1 response message(s) consumed before the client's cut were sent after the server's cut" in reason


def test_a_message_produced_after_an_atomic_block_is_sent_with_it(
    banks: tuple[StreamBank, StreamBank],
) -> None:
    """The generator debits in a block, then yields: the message counts as sent when the block ends,
    not when gRPC takes it, so a cut in between sees the debit and the message on their way together
    (without that, this cut was COMPLETE with 10 in neither balance nor anywhere else)."""
    a, b = banks
    produced, cut_taken = threading.Event(), threading.Event()

    def requests() -> Iterator[Struct]:
        with a.core.atomic():
            a.balance -= 10
        produced.set()
        assert cut_taken.wait(TIMEOUT)
        yield money(10)

    call = stub(a.channel_to(b), "Deposit", "stream_unary").future(requests(), timeout=TIMEOUT)
    assert produced.wait(TIMEOUT)
    a.cut(1)
    b.cut(1)
    cut_taken.set()
    assert b.taken.get(timeout=TIMEOUT) == 10
    call.result(TIMEOUT)
    cut = assemble(1, a, b)
    assert (cut.status, cut.reasons) == ("COMPLETE", ())
    assert balances(cut) == [90, 100] and in_transit(cut) == [("request", 1, 10)] and total(cut) == 200


@pytest.fixture
def enveloped() -> Iterator[tuple[StreamBank, StreamBank]]:
    a, b = StreamBank("a", envelope=True), StreamBank("b", envelope=True)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_with_the_envelope_the_receiver_cuts_before_it_takes_a_later_message(
    enveloped: tuple[StreamBank, StreamBank],
) -> None:
    """The review's order again, with messages that carry a stamp (the envelope): b takes message 2,
    stamped after a's cut, only after its own cut, so the cut is COMPLETE and exact."""
    a, b = enveloped
    amounts: queue.Queue[int | None] = queue.Queue()
    call = stub(a.channel_to(b), "Deposit", "stream_unary", a.message).future(
        a.transfers(amounts), timeout=TIMEOUT
    )
    amounts.put(10)
    assert b.taken.get(timeout=TIMEOUT) == 10
    a.cut(1)
    amounts.put(10)
    assert b.taken.get(timeout=TIMEOUT) == 10
    assert b.core.epoch == 1  # message 2's stamp made b cut first
    b.cut(1)
    amounts.put(None)
    call.result(TIMEOUT)
    cut = assemble(1, a, b)
    assert (cut.status, cut.reasons) == ("COMPLETE", ())
    assert balances(cut) == [90, 110] and total(cut) == 200
    assert b.core.clock.get(a.name) > cut.clocks[b.name].get(a.name)  # b merged a's stream clocks


def test_with_the_envelope_a_server_stream_cannot_cross_the_cut(
    enveloped: tuple[StreamBank, StreamBank],
) -> None:
    a, b = enveloped
    credited = a.receive(
        stub(a.channel_to(b), "Payout", "unary_stream", a.message)(money(0, True), timeout=TIMEOUT)
    )
    b.payouts.put(7)
    assert next(credited) == 7
    b.cut(1)
    b.payouts.put(7)
    assert next(credited) == 7  # stamped after b's cut: a cut before taking it
    a.cut(1)
    b.payouts.put(None)
    assert list(credited) == []
    cut = assemble(1, a, b)
    assert (cut.status, cut.reasons) == ("COMPLETE", ())
    assert balances(cut) == [107, 93] and total(cut) == 200
