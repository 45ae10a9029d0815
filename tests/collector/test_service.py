"""The collector service with real agents over real gRPC on loopback, in one OS process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cli_runner import cli_runner
from ledger_service import Ledger, amount_request
from polling import wait_until

import cutwatch
from cutwatch.cli import main as cli_main
from cutwatch.collector import CollectorClient, CollectorError, CollectorServer, Cut
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc

TIMEOUT = 30.0


@pytest.fixture
def ledgers(collector: CollectorServer) -> Iterator[Callable[..., Ledger]]:
    made: list[Ledger] = []

    def make(name: str, **options: Any) -> Ledger:
        ledger = Ledger(name, collector.address, **options)
        made.append(ledger)
        assert ledger.agent.wait_registered(TIMEOUT), "agent did not register"
        return ledger

    try:
        yield make
    finally:
        for ledger in made:
            ledger.close()


def total(cut: Cut) -> int:
    held = sum(int(cut.state_of(p)["balance"]) for p in cut.states)
    return held + sum(int(m.payload["amount"]) for m in cut.in_transit if m.kind == "request")


def test_a_quiet_system_gives_a_complete_cut_of_every_state(
    collector: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    a, b = ledgers("a"), ledgers("b")
    for _ in range(3):
        a.transfer(a.stub(b), 5).result(TIMEOUT)
    with CollectorClient(collector.address) as client:
        cut = client.snapshot(timeout=TIMEOUT)
        assert cut.status == "COMPLETE", cut.reasons
        assert cut.state_of(a.agent.process_id) == {"balance": 85}
        assert cut.state_of(b.agent.process_id) == {"balance": 115}
        assert cut.states[a.agent.process_id]["service"] == "ledger"
        assert cut.pools[b.agent.process_id] == {"server-1": 4}  # for deadlock detection
        assert cut.in_transit == ()
        # b's clock at its cut knows a's sends; a's cut is at least that far.
        assert (
            cut.clocks[b.agent.process_id][a.agent.process_id]
            <= cut.clocks[a.agent.process_id][a.agent.process_id]
        )
        assert client.latest() == cut
        assert client.get(cut.epoch) == cut
        assert [info.epoch for info in client.list_cuts()] == [cut.epoch]


def test_a_request_held_before_its_atomic_block_is_in_the_channel(
    collector: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    a, b = ledgers("a"), ledgers("b")
    b.hold.clear()
    future = a.transfer(a.stub(b), 30)
    assert b.entered.wait(TIMEOUT)
    with CollectorClient(collector.address) as client:
        cut = client.snapshot(timeout=TIMEOUT)
        assert cut.status == "COMPLETE", cut.reasons
        assert [(m.sender, m.receiver, m.kind, m.method, m.payload) for m in cut.in_transit] == [
            (a.agent.process_id, b.agent.process_id, "request", "/ledger.Ledger/Credit", {"amount": 30})
        ]
        assert total(cut) == 200
        b.hold.set()
        future.result(TIMEOUT)
        after = client.snapshot(timeout=TIMEOUT)
    assert after.status == "COMPLETE" and after.in_transit == () and total(after) == 200
    assert after.epoch > cut.epoch


def test_concurrent_transfers_give_conserving_cuts(
    collector: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    banks = [ledgers(f"n{i}") for i in range(3)]
    stop = threading.Event()
    failures: list[BaseException] = []

    def work(me: Ledger) -> None:
        stubs = [me.stub(peer) for peer in banks if peer is not me]
        i = 0
        while not stop.is_set():
            i += 1
            try:
                me.transfer(stubs[i % len(stubs)], 1).result(TIMEOUT)
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=work, args=(bank,)) for bank in banks for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        with CollectorClient(collector.address) as client:
            cuts = [client.snapshot(timeout=TIMEOUT) for _ in range(8)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
    assert not failures
    assert [cut.status for cut in cuts] == ["COMPLETE"] * 8, [cut.reasons for cut in cuts]
    assert [total(cut) for cut in cuts] == [300] * 8
    assert collector.coordinator.stats().rejected == 0


def test_a_state_provider_that_raises_is_reported_in_the_state(
    collector: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    a = ledgers("a")

    def broken() -> object:
        raise RuntimeError("boom")

    a.agent.register_state("broken", broken)
    a.agent.register_state("not_json", lambda: object())
    with CollectorClient(collector.address) as client:
        cut = client.snapshot(timeout=TIMEOUT)
    assert cut.status == "COMPLETE"
    state = cut.state_of(a.agent.process_id)
    assert state["broken"] == {"cutwatch_error": "RuntimeError: boom"}
    assert "cutwatch_error" in state["not_json"]
    assert a.agent.stats().state_errors == 2


def test_an_agent_lost_during_a_snapshot_makes_it_incomplete_naming_it(
    collector: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    a, b = ledgers("a"), ledgers("slow")
    in_provider = threading.Event()

    def slow() -> int:
        in_provider.set()
        time.sleep(1.0)
        return 0

    b.agent.register_state("slow", slow)
    results: list[Cut] = []
    with CollectorClient(collector.address) as client:
        thread = threading.Thread(target=lambda: results.append(client.snapshot(timeout=TIMEOUT)))
        thread.start()
        assert in_provider.wait(TIMEOUT)
        # The link breaks before b's local snapshot goes out (an agent close would wait for it).
        control = b.agent._control
        assert control is not None
        control.close(timeout=0.1)
        thread.join(TIMEOUT)
        (cut,) = results
        assert cut.status == "INCOMPLETE"
        assert any(b.agent.process_id in reason for reason in cut.reasons), cut.reasons
        wait_until(lambda: len(client.status()["agents"]) == 1, "the closed agent to leave")
        nxt = client.snapshot(timeout=TIMEOUT)
    assert nxt.status == "COMPLETE" and list(nxt.states) == [a.agent.process_id]


def test_no_agents_is_a_clear_answer(collector: CollectorServer) -> None:
    with (
        CollectorClient(collector.address) as client,
        pytest.raises(CollectorError, match="no agent is registered"),
    ):
        client.snapshot(timeout=1.0)
    result = cli_runner().invoke(cli_main, ["snapshot", "--collector", collector.address, "--timeout", "1s"])
    assert result.exit_code == 7, result.output  # nothing to answer from, as `cutwatch status` shows
    assert "no agent is registered" in result.output


def test_the_command_line_prints_cuts_and_exits_by_status(
    collector: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    a, b = ledgers("a"), ledgers("b")
    a.transfer(a.stub(b), 7).result(TIMEOUT)
    runner = cli_runner()
    text = runner.invoke(cli_main, ["snapshot", "--collector", collector.address])
    assert text.exit_code == 0, text.output
    assert "COMPLETE" in text.output and a.agent.process_id in text.output and '"balance": 93' in text.output
    as_json = runner.invoke(cli_main, ["snapshot", "--collector", collector.address, "--json"])
    assert as_json.exit_code == 0
    doc = json.loads(as_json.output)
    assert doc["status"] == "COMPLETE" and doc["format"] == 1
    assert Cut.from_json(doc).state_of(b.agent.process_id) == {"balance": 107}
    listed = runner.invoke(cli_main, ["cuts", "--collector", collector.address, "--json"])
    assert [c["epoch"] for c in json.loads(listed.output)] == [doc["epoch"], doc["epoch"] - 1]
    shown = runner.invoke(cli_main, ["cuts", "--collector", collector.address, "--epoch", str(doc["epoch"])])
    assert shown.exit_code == 0 and f"snapshot {doc['epoch']}: COMPLETE" in shown.output
    status = runner.invoke(cli_main, ["status", "--collector", collector.address])
    assert "2 agents registered" in status.output


def test_periodic_snapshots_and_a_restart_keep_numbering_and_cuts(tmp_path: Path) -> None:
    db = tmp_path / "cuts.db"
    first = CollectorServer(db, listen="127.0.0.1:0", every=0.1).start()
    address = first.address
    a = Ledger("a", address)
    try:
        assert a.agent.wait_registered(TIMEOUT)
        with CollectorClient(address) as client:
            wait_until(lambda: len(client.list_cuts(status="COMPLETE")) >= 3, "periodic snapshots")
            before = {info.epoch: client.get(info.epoch) for info in client.list_cuts()}
        first.stop()
        second = CollectorServer(db, listen=address).start()
        try:
            with CollectorClient(address) as client:
                assert {epoch: client.get(epoch) for epoch in before} == before
                wait_until(lambda: len(client.status()["agents"]) == 1, "the agent to reconnect")
                cut = client.snapshot(timeout=TIMEOUT)
            assert cut.status == "COMPLETE" and cut.epoch > max(before)
            # The application never noticed: a transfer still works (to itself, through its server).
            a.transfer(a.stub(a), 1).result(TIMEOUT)
        finally:
            second.stop()
    finally:
        a.close()


def test_applications_do_not_notice_a_missing_collector() -> None:
    a = Ledger("a", "127.0.0.1:1", event_queue=2)
    b = Ledger("b", None)
    try:
        for _ in range(5):
            a.transfer(a.stub(b), 1).result(TIMEOUT)
        assert b.balance == 105
        # Orders would come from the collector; given directly, their events queue and overflow.
        for epoch in range(1, 6):
            a.agent._core.take_snapshot(epoch)
        stats = a.agent.stats()
        assert stats.snapshots_taken == 5
        assert not stats.collector_connected
        assert stats.collector_events_dropped == 3
        assert stats.internal_errors == 0
    finally:
        a.close()
        b.close()


def test_a_message_from_a_newer_epoch_forces_the_snapshot_before_delivery() -> None:
    a, b = Ledger("a", None), Ledger("b", None)
    seen: list[int] = []
    b.on_credit = lambda: seen.append(b.agent.epoch)
    try:
        a.agent._core.take_snapshot(3)
        assert (a.agent.epoch, b.agent.epoch) == (3, 0)
        a.transfer(a.stub(b), 1).result(TIMEOUT)
        assert seen == [3]
        assert b.agent.stats().snapshots_taken == 3  # epochs 1..3 at one instant
    finally:
        a.close()
        b.close()


def test_a_snapshot_past_a_long_atomic_block_goes_without_the_state_and_the_application_goes_on() -> None:
    a = Ledger("a", None, atomic_timeout=0.2)
    inside, release = threading.Event(), threading.Event()

    def long_block() -> None:
        with a.agent.atomic():
            inside.set()
            release.wait(TIMEOUT)

    thread = threading.Thread(target=long_block)
    thread.start()
    try:
        assert inside.wait(TIMEOUT)
        a.agent._core.take_snapshot(1)
        stats = a.agent.stats()
        assert (stats.snapshots_taken, stats.snapshots_without_state, stats.snapshots_skipped) == (1, 1, 0)
        assert a.agent.epoch == 1
        release.set()
        thread.join(TIMEOUT)
        a.agent._core.take_snapshot(2)
        assert a.agent.stats().snapshots_without_state == 1  # the block is over: the state is back
    finally:
        release.set()
        thread.join(TIMEOUT)
        a.close()


def test_waiting_for_a_newer_response_inside_atomic_gives_the_snapshot_up_without_deadlock() -> None:
    a, b = Ledger("a", None), Ledger("b", None)
    try:
        b.agent._core.take_snapshot(2)
        stub = a.stub(b)
        with a.agent.atomic():
            a.balance -= 1
            stub(amount_request(1), timeout=TIMEOUT)  # the response is stamped with epoch 2
        stats = a.agent.stats()
        assert (stats.snapshots_taken, stats.snapshots_skipped, a.agent.epoch) == (0, 2, 2)
        assert b.balance == 101
    finally:
        a.close()
        b.close()


def test_invalid_agent_messages_are_counted_and_dropped(
    collector: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    a = ledgers("a")
    with grpc.insecure_channel(collector.address) as channel:
        stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
        messages = [
            pb.AgentMessage(register=pb.Registration(process_id="rogue:1", service="rogue")),
            # A local snapshot claiming to be another process, and a record with a payload that is not JSON.
            pb.AgentMessage(seq=1, local_snapshot=pb.LocalSnapshot(epoch=1, process_id=a.agent.process_id)),
            pb.AgentMessage(
                seq=2,
                channel_record=pb.ChannelRecord(
                    epoch=1, receiver="rogue:1", kind="request", payload_json="{nope"
                ),
            ),
            pb.AgentMessage(goodbye=pb.Goodbye()),  # it leaves for good, not expected back
        ]
        call = stub.Control(iter(messages))
        first = next(call)
        assert first.WhichOneof("body") == "registered"
        wait_until(lambda: collector.coordinator.stats().events_invalid == 2, "invalid events to be counted")
        assert list(call) == []  # after its goodbye the collector ends the stream
    with CollectorClient(collector.address) as client:
        wait_until(lambda: len(client.status()["agents"]) == 1, "the rogue stream to end")
        assert client.snapshot(timeout=TIMEOUT).status == "COMPLETE"


def test_the_public_names_are_exported() -> None:
    assert cutwatch.CollectorClient is CollectorClient
    assert cutwatch.Cut is Cut


class _HungCollector(pb_grpc.CollectorServicer):
    """Accepts control streams and then never reads or answers: a collector stuck for good."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.streams = 0

    def Control(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        self.streams += 1
        self.release.wait(TIMEOUT)
        return iter(())


def test_an_agent_closes_promptly_and_serves_on_while_its_collector_hangs() -> None:
    from concurrent import futures

    hung = _HungCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CollectorServicer_to_server(hung, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    a = Ledger("a", f"127.0.0.1:{port}")
    b = Ledger("b", None)
    try:
        wait_until(lambda: hung.streams >= 1, "the agent to open its stream")
        for _ in range(3):
            a.transfer(a.stub(b), 1).result(TIMEOUT)
        assert b.balance == 103
        assert not a.agent.stats().collector_connected
        closing = threading.Thread(target=a.agent.close, kwargs={"timeout": 1.0})
        started = time.monotonic()
        closing.start()
        closing.join(TIMEOUT)
        assert not closing.is_alive(), "agent.close() hung on a hung collector"
        # Bounded, not timed: far below the test's own patience, whatever the machine's load.
        assert time.monotonic() - started < TIMEOUT / 2
    finally:
        hung.release.set()
        a.close()
        b.close()
        server.stop(0).wait(5)


def test_an_agent_that_closes_says_goodbye_and_one_that_vanishes_is_expected_back(
    collector: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    a, b = ledgers("a"), ledgers("b")
    b.agent.close()  # on purpose: the collector forgets it at once
    with CollectorClient(collector.address) as client:
        wait_until(lambda: len(client.status()["agents"]) == 1, "b to leave")
        assert client.status()["absent"] == []
        cut = client.snapshot(timeout=TIMEOUT)
        assert cut.status == "COMPLETE" and list(cut.states) == [a.agent.process_id], cut.reasons
        with grpc.insecure_channel(collector.address) as channel:
            stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
            registration = pb.Registration(process_id="vanishing:1", service="vanishing", protocol_version=1)
            call = stub.Control(iter([pb.AgentMessage(register=registration)]))
            assert next(call).WhichOneof("body") == "registered"
            call.cancel()  # no goodbye: a reset, a partition or a crash look the same
        wait_until(lambda: len(client.status()["agents"]) == 1, "the vanished stream to end")
        assert [gone["process"] for gone in client.status()["absent"]] == ["vanishing:1"]
        cut = client.snapshot(timeout=TIMEOUT)
        assert cut.status == "INCOMPLETE"
        assert "vanishing:1" in cut.missing
        assert any("vanishing:1" in reason and "reconnecting" in reason for reason in cut.reasons)
