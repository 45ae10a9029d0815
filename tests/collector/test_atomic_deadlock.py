"""A handler inside ``atomic()`` that calls its own server, over real gRPC and a real collector.

The nested handler waits for ``atomic()``, the outer block waits for the
nested call: the process hangs until the call's deadline. The snapshot lock
is a lock of the wait-for graph, so the cut shows the deadlock instead of
missing the process, and the agent logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from echo_service import UNARY_UNARY, EchoServicer, EchoStub, start_server
from polling import TIMEOUT, wait_until

import cutwatch
from cutwatch.collector import CollectorClient, CollectorServer
from cutwatch.core import ATOMIC_LOCK


class CallsItself(EchoServicer):
    """``outer``: inside ``atomic()``, waits on a call of ``inner`` to this very server, whose
    handler needs ``atomic()`` too. The calls it makes are kept, to be cancelled at teardown."""

    def __init__(self, agent: cutwatch.Agent) -> None:
        super().__init__()
        self.agent = agent
        self.stub: EchoStub | None = None
        self.calls: list[grpc.Future] = []

    def unary_unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"inner":
            with self.agent.atomic():
                return b"inner done"
        assert self.stub is not None
        with self.agent.atomic():
            call = self.stub.unary_unary.future(b"inner", timeout=TIMEOUT)
            self.calls.append(call)
            try:
                return call.result(timeout=TIMEOUT)  # never inside atomic(): this is the bug shown
            except (grpc.RpcError, grpc.FutureCancelledError):
                return b"inner gave up"


@pytest.fixture
def self_calling(collector: CollectorServer) -> Iterator[tuple[cutwatch.Agent, CallsItself, EchoStub]]:
    agent = cutwatch.Agent("selfcall", collector=collector.address, atomic_timeout=0.5).start()
    agent.register_state("answers", lambda: 42)
    servicer = CallsItself(agent)
    server = channel = None
    try:
        server, address = start_server(servicer, [agent.server_interceptor()], workers=4)
        channel = grpc.intercept_channel(grpc.insecure_channel(address), agent.client_interceptor())
        servicer.stub = EchoStub(channel)
        assert agent.wait_registered(TIMEOUT)
        yield agent, servicer, servicer.stub
    finally:
        for call in servicer.calls:
            call.cancel()
        if server is not None:
            server.stop(grace=None).wait(TIMEOUT)
        if channel is not None:
            channel.close()
        agent.close()


def test_a_handler_inside_atomic_calling_its_own_server_is_a_deadlock_of_the_cut(
    collector: CollectorServer,
    self_calling: tuple[cutwatch.Agent, CallsItself, EchoStub],
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent, servicer, stub = self_calling
    outer = stub.unary_unary.future(b"outer", timeout=TIMEOUT)
    try:
        wait_until(
            lambda: any(t.method == UNARY_UNARY and t.caller for t in agent.tasks()), "the outer handler"
        )
        wait_until(lambda: len([t for t in agent.tasks() if t.kind == "server"]) == 2, "the inner handler")
        with (
            caplog.at_level(logging.WARNING, logger="cutwatch.agent"),
            CollectorClient(collector.address) as client,
        ):
            cut = client.snapshot(timeout=TIMEOUT)
            assert cut.status == "INCOMPLETE"
            process = agent.process_id
            why = "an atomic() block held the snapshot lock for more than 0.5 s"
            assert cut.reasons == (f"state of {process} not captured: {why}",)
            assert cut.state_of(process) == {}
            held = [t for t in cut.tasks[process] if ATOMIC_LOCK in t.held_locks]
            waiting = [t for t in cut.tasks[process] if t.waiting_lock == ATOMIC_LOCK]
            assert len(held) == 1 and len(waiting) == 1
            deadlocks = wait_until(client.deadlocks, "the deadlock report")
        (deadlock,) = deadlocks
        assert deadlock["epoch"] == cut.epoch and deadlock["cut_status"] == "INCOMPLETE"
        on_cycle = sorted(t["task_id"] for t in deadlock["tasks"] if t["on_cycle"])
        assert on_cycle == sorted([held[0].task_id, waiting[0].task_id])
        assert "waits for the atomic() snapshot lock held by" in deadlock["chain"]
        stuck = [r.getMessage() for r in caplog.records if "has held atomic()" in r.getMessage()]
        assert len(stuck) == 1 and UNARY_UNARY in stuck[0]
    finally:
        for call in servicer.calls:
            call.cancel()
        outer.cancel()
    # Once the inner call is given up, the outer block ends and the process goes on.
    wait_until(lambda: not [t for t in agent.tasks() if t.kind == "server"], "both handlers to return")
    with CollectorClient(collector.address) as client:
        after = client.snapshot(timeout=TIMEOUT)
    assert after.state_of(agent.process_id) == {"answers": 42}
    assert not [reason for reason in after.reasons if "not captured" in reason]
