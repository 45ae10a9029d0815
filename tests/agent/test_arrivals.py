"""Calls recorded as they arrive, over real gRPC: queued calls, the pool's size, gRPC's refusals, deadlines.

A sync server's interceptor runs on gRPC's polling thread as each call
arrives, before the call waits for a worker; these tests hold every worker
busy and look at what the callee's agent then knows. Every server is
stopped and every blocked handler released at teardown, also on failure.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from echo_service import EchoServicer, EchoStub, generic_handler
from polling import wait_until

import cutwatch
from cutwatch.core import ChannelPeer, Inbound, LocalSnapshot, ProcessCore

TIMEOUT = 60.0


@dataclass
class Blocked:
    """A server whose handlers wait on ``release``; a client agent calling it."""

    client: cutwatch.Agent
    server_agent: cutwatch.Agent
    stub: EchoStub
    release: threading.Event
    running: list[int] = field(default_factory=list)


@contextmanager
def _serve(
    server_agent: cutwatch.Agent,
    executor: futures.ThreadPoolExecutor,
    *,
    max_workers: int | None = None,
    maximum_concurrent_rpcs: int | None = None,
) -> Iterator[Blocked]:
    release = threading.Event()
    servicer = EchoServicer()
    state = Blocked(cutwatch.Agent(service="caller", collector=None), server_agent, None, release)  # type: ignore[arg-type]

    def block() -> None:
        state.running.append(1)
        release.wait(TIMEOUT)

    servicer.on_call = block
    server = grpc.server(
        executor,
        interceptors=[server_agent.server_interceptor(max_workers)],
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers((generic_handler(servicer),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{port}"), state.client.client_interceptor()
    )
    state.stub = EchoStub(channel)
    try:
        yield state
    finally:
        release.set()
        channel.close()
        server.stop(None)
        executor.shutdown(wait=False, cancel_futures=True)
        state.client.close()
        server_agent.close()


@pytest.fixture
def one_worker() -> Iterator[Blocked]:
    """One worker, its size not told to cutwatch."""
    with _serve(cutwatch.Agent(service="till", collector=None), futures.ThreadPoolExecutor(1)) as blocked:
        yield blocked


def queued(agent: cutwatch.Agent) -> list[Any]:
    return [t for t in agent.tasks() if t.queued]


def _running(agent: cutwatch.Agent) -> list[Any]:
    return [t for t in agent.tasks() if not t.queued]


def test_calls_waiting_for_a_worker_are_listed_as_queued_on_a_fresh_channel(one_worker: Blocked) -> None:
    """The very first calls on a channel: the callee is a fact of its own records, its pool known."""
    calls = [one_worker.stub.unary_unary.future(b"x", timeout=TIMEOUT) for _ in range(3)]
    try:
        # The worker may have taken the first call a moment before its handler's task exists.
        wait_until(
            lambda: len(queued(one_worker.server_agent)) == 2 and len(_running(one_worker.server_agent)) == 1,
            "two calls queued and one running",
        )
        assert one_worker.server_agent.worker_pools == {"server-1": 1}
        running = _running(one_worker.server_agent)
        assert len(running) == 1 and running[0].caller == one_worker.client.process_id
        for task in queued(one_worker.server_agent):
            assert task.kind == "server" and task.pool == "server-1" and not task.outbound
            assert task.caller == one_worker.client.process_id
            assert task.method == "/cutwatch.test.Echo/UnaryUnary"
        assert {t.call_id for t in queued(one_worker.server_agent)} < {
            c.call_id for t in one_worker.client.tasks() for c in t.outbound
        }
    finally:
        one_worker.release.set()
    assert [call.result(timeout=TIMEOUT) for call in calls] == [b"x"] * 3
    wait_until(lambda: one_worker.server_agent.tasks() == [], "the server's tasks to end")
    stats = one_worker.server_agent.stats()
    # The first call found its worker free: only the two that had to wait were filed.
    assert stats.calls_queued == 2 and stats.queued_calls_dropped == 0


def test_a_call_cancelled_while_queued_stops_being_listed(one_worker: Blocked) -> None:
    first = one_worker.stub.unary_unary.future(b"x", timeout=TIMEOUT)
    wait_until(lambda: one_worker.running, "the first call to run")
    doomed = one_worker.stub.unary_unary.future(b"x", timeout=TIMEOUT)
    wait_until(lambda: queued(one_worker.server_agent), "the second call to queue")
    doomed.cancel()
    # A third call on the same connection: once the server has it, it has read the cancellation that
    # the client sent before it.
    third = one_worker.stub.unary_unary.future(b"y", timeout=TIMEOUT)
    wait_until(lambda: len(queued(one_worker.server_agent)) == 2, "the third call to queue")
    one_worker.release.set()
    assert first.result(timeout=TIMEOUT) == b"x" and third.result(timeout=TIMEOUT) == b"y"
    # gRPC dropped the cancelled call without running a handler; the third call, taken after it,
    # stopped it being listed.
    assert len(one_worker.running) == 2
    wait_until(lambda: one_worker.server_agent.tasks() == [], "no task left")
    assert one_worker.server_agent.stats().queued_calls_dropped == 1


def test_the_pool_size_is_read_from_the_server_as_the_first_call_arrives() -> None:
    """``ThreadPoolExecutor()`` without ``max_workers``: its size depends on the machine."""
    executor = futures.ThreadPoolExecutor()
    cpus = (os.process_cpu_count() if hasattr(os, "process_cpu_count") else os.cpu_count()) or 1
    expected = min(32, cpus + 4)
    agent = cutwatch.Agent(service="till", collector=None)
    with _serve(agent, executor) as blocked:
        assert agent.worker_pools == {"server-1": 0}  # nothing is known before a call arrives
        calls = [blocked.stub.unary_unary.future(b"x", timeout=TIMEOUT) for _ in range(expected + 1)]
        wait_until(lambda: len(queued(agent)) == 1, "one call queued behind the full pool")
        assert agent.worker_pools == {"server-1": expected}
        blocked.release.set()
        assert all(call.result(timeout=TIMEOUT) == b"x" for call in calls)


def test_a_pool_size_given_to_the_interceptor_wins() -> None:
    agent = cutwatch.Agent(service="till", collector=None)
    with _serve(agent, futures.ThreadPoolExecutor(2), max_workers=5) as blocked:
        assert agent.worker_pools == {"server-1": 5}
        blocked.release.set()
        assert blocked.stub.unary_unary(b"x", timeout=TIMEOUT) == b"x"
        assert agent.worker_pools == {"server-1": 5}


def test_calls_grpc_turns_away_for_maximum_concurrent_rpcs_are_not_listed() -> None:
    """One worker, at most two calls: the third is refused with RESOURCE_EXHAUSTED, never queued."""
    agent = cutwatch.Agent(service="till", collector=None)
    with _serve(agent, futures.ThreadPoolExecutor(1), maximum_concurrent_rpcs=2) as blocked:
        calls = [blocked.stub.unary_unary.future(b"x", timeout=TIMEOUT) for _ in range(2)]
        wait_until(lambda b=blocked: len(queued(agent)) == 1 and b.running, "one call running, one queued")
        with pytest.raises(grpc.RpcError) as refused:
            blocked.stub.unary_unary(b"x", timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(queued(agent)) == 1 and agent.stats().calls_queued == 1
        blocked.release.set()
        assert [call.result(timeout=TIMEOUT) for call in calls] == [b"x"] * 2
        wait_until(lambda: agent.tasks() == [], "no task left")


def test_callers_tasks_carry_their_calls_deadlines(one_worker: Blocked) -> None:
    call = one_worker.stub.unary_unary.future(b"x", timeout=TIMEOUT)
    try:
        wait_until(lambda: one_worker.running, "the call to run")
        ((outbound,),) = [t.outbound for t in one_worker.client.tasks()]
        assert outbound.time_left is not None and 0 < outbound.time_left <= TIMEOUT
        (handler,) = one_worker.server_agent.tasks()
        # The server reads the same deadline; a sync handler's thread goes on past it.
        assert handler.time_left is not None and 0 < handler.time_left <= TIMEOUT + 1
        assert not handler.ends_at_deadline
    finally:
        one_worker.release.set()
    assert call.result(timeout=TIMEOUT) == b"x"


def test_calls_without_deadlines_say_so(one_worker: Blocked) -> None:
    call = one_worker.stub.unary_unary.future(b"x")
    try:
        wait_until(lambda: one_worker.running, "the call to run")
        ((outbound,),) = [t.outbound for t in one_worker.client.tasks()]
        (handler,) = one_worker.server_agent.tasks()
        assert outbound.time_left is None and handler.time_left is None
    finally:
        one_worker.release.set()
    assert call.result(timeout=TIMEOUT) == b"x"


def test_a_lock_wait_with_a_timeout_carries_it() -> None:
    agent = cutwatch.Agent(service="till", collector=None)
    lock = agent.lock("drawer")
    lock.acquire()
    waited = threading.Thread(target=lambda: lock.acquire(timeout=TIMEOUT) and lock.release())
    waited.start()
    try:
        waiter = wait_until(
            lambda: next((t for t in agent.tasks() if t.waiting_lock == "drawer"), None), "the waiter"
        )
        assert waiter.lock_time_left is not None and 0 < waiter.lock_time_left <= TIMEOUT
        (holder,) = [t for t in agent.tasks() if t.held_locks]
        assert holder.lock_time_left is None
    finally:
        lock.release()
        waited.join(TIMEOUT)
        agent.close()


def test_local_snapshots_list_a_queued_call_only_in_cuts_after_its_send() -> None:
    """A request sent after its caller's cut ``e`` is not in cut ``e``, queued or not."""
    emitted: list[Any] = []
    caller, server = ProcessCore("a:1"), ProcessCore("b:1", emit=emitted.extend)
    pool = server.register_pool(1)
    started = caller.begin_call("/svc/Early", _peer())
    assert started is not None
    early = server.arrive("/svc/Early", started[1], 0, pool)
    assert early is not None
    caller.take_snapshot(1)
    late_call = caller.begin_call("/svc/Late", _peer())
    assert late_call is not None
    late = server.arrive("/svc/Late", late_call[1], 0, pool)
    assert late is not None
    server.take_snapshot(1)
    (snap,) = [e for e in emitted if isinstance(e, LocalSnapshot)]
    assert [(t.method, t.queued) for t in snap.tasks] == [("/svc/Early", True)]
    # The late one's handler starts: it takes its queued task, and is no longer queued.
    inbound = server.begin_handler("/svc/Late", late_call[1], 0, pool, "null", late)
    assert isinstance(inbound, Inbound) and inbound.task.task_id == late.task_id
    # Workers take calls in arrival order: a later call running means that gRPC dropped the earlier one.
    server.take_snapshot(2)
    snap2 = [e for e in emitted if isinstance(e, LocalSnapshot)][-1]
    assert [(t.method, t.queued) for t in snap2.tasks] == [("/svc/Late", False)]
    assert server.stats().queued_calls_dropped == 1


def _peer() -> ChannelPeer:
    return ChannelPeer()
