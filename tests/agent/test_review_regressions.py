"""Regressions for races and gaps in the agent core, each over real gRPC where gRPC is involved."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from echo_service import APP_TRAILER, SERVICE, UNARY_UNARY, EchoServicer, EchoStub

import cutwatch
from cutwatch.agent import STAMP_METADATA_KEY, StampCodec

TIMEOUT = 30.0


def _identity(data: bytes) -> bytes:
    return data


def test_future_result_never_shows_its_call_still_in_flight(
    make_agent: Any, serve: Any, open_channel: Any
) -> None:
    """gRPC runs a future's done-callbacks after it wakes ``result()``; when the callback
    thread finishes the call first, ``result()`` must still wait until it is fully
    finished, or ``agent.tasks()`` lists a call whose response the caller holds."""
    a, b = make_agent("a"), make_agent("b")
    stub = EchoStub(open_channel(serve(EchoServicer(), b), a))
    main = threading.main_thread()
    remove_outbound = a._core.tasks.remove_outbound

    def slow_in_grpc_threads(task: Any, call_id: int) -> None:
        # Widen the window between the callback thread marking the call
        # finished and the task registry forgetting it.
        if threading.current_thread() is not main:
            time.sleep(0.05)
        remove_outbound(task, call_id)

    a._core.tasks.remove_outbound = slow_in_grpc_threads  # type: ignore[method-assign]
    stale = []
    for _ in range(10):
        future = stub.unary_unary.future(b"x", timeout=TIMEOUT)
        assert future.result(timeout=TIMEOUT) == b"x"
        stale.extend(call for task in a.tasks() for call in task.outbound)
    assert stale == []
    assert a.stats().responses_received == 10


def test_ending_an_inbound_call_from_another_context_keeps_that_context_binding(make_agent: Any) -> None:
    """A handler generator closed by the garbage collector ends its call in whatever
    context is running; that context's own task binding must survive."""
    agent = make_agent("a")
    core = agent._core
    inbound = contextvars.Context().run(core.begin_handler, UNARY_UNARY, None, 0, "server-1", "null")
    assert inbound is not None

    def other_handler() -> tuple[bool, bool]:
        own = core.begin_handler(UNARY_UNARY, None, 0, "server-1", "null")
        assert own is not None
        core.end_handler(inbound)  # the foreign generator's finally runs here
        still_bound = core.tasks.current() is own.task
        core.end_handler(own)
        return still_bound, core.tasks.current() is None

    still_bound, cleared_after = contextvars.Context().run(other_handler)
    assert still_bound
    assert cleared_after
    assert agent.tasks() == []


def test_sync_handler_on_aio_server_returns_a_stamp(make_agent: Any) -> None:
    """grpc.aio runs plain-function handlers with a context that has no
    ``trailing_metadata()``; the response stamp must still go out."""
    b = make_agent("b")
    servicer = EchoServicer()

    def unary_stream(request: bytes, context: Any) -> Iterator[bytes]:
        yield request
        yield request

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(
                servicer.unary_unary, request_deserializer=_identity, response_serializer=_identity
            ),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )

    async def scenario() -> tuple[list[Any], list[Any]]:
        pool = futures.ThreadPoolExecutor(max_workers=4)
        server = grpc.aio.server(pool, interceptors=[b.aio_server_interceptor()])
        try:
            server.add_generic_rpc_handlers((handler,))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            try:
                stub = EchoStub(channel)
                unary = stub.unary_unary(b"x", timeout=TIMEOUT)
                assert await unary == b"x"
                stream = stub.unary_stream(b"y", timeout=TIMEOUT)
                assert [r async for r in stream] == [b"y", b"y"]
                return list(await unary.trailing_metadata()), list(await stream.trailing_metadata())
            finally:
                await channel.close()
        finally:
            await server.stop(None)
            pool.shutdown(wait=True)

    unary_trailing, stream_trailing = asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))
    for trailing in (unary_trailing, stream_trailing):
        stamps = [value for key, value in trailing if key == STAMP_METADATA_KEY]
        assert len(stamps) == 1
        assert StampCodec("probe:0").decode(stamps[0]).sender == b.process_id
    assert (APP_TRAILER, "kept") in unary_trailing
    assert b.stats().internal_errors == 0
    assert b.stats().responses_sent == 2


def test_a_peer_cannot_grow_our_clock_past_its_limit() -> None:
    """Forged stamps naming ever new processes stop at max_clock_entries, counted."""
    agent = cutwatch.Agent("victim", max_clock_entries=5)
    for round_ in range(4):
        names = [f"forger:{round_}"] + [f"ghost:{round_}-{i}" for i in range(3)]
        stamp = StampCodec(names[0]).encode(names, [1, 2, 3, 4], peer=None).data
        inbound = agent._core.begin_handler("/x.Y/Z", stamp, 0, "server-1", "null")
        assert inbound is not None
        agent._core.end_handler(inbound)
    assert len(agent.clock) <= 5
    stats = agent.stats()
    assert stats.clock_entries_refused == 4 * 4 - 4  # own entry + 4 admitted, the rest refused
    assert stats.internal_errors == 0


def test_lock_hand_over_skips_a_waiter_whose_loop_is_closed() -> None:
    """Releasing to an asyncio waiter of a dead loop must not strand the lock."""
    agent = cutwatch.Agent("locks")
    lock = agent.lock("row")
    lock.acquire()
    loop = asyncio.new_event_loop()
    waiting = loop.create_task(lock.acquire_async())
    loop.run_until_complete(asyncio.sleep(0))  # the waiter is queued
    assert not waiting.done()
    loop.close()
    lock.release()  # must not raise, must not grant to the dead waiter
    assert lock.acquire(timeout=5)
    lock.release()
    assert agent.tasks() == [] or all(not t.held_locks for t in agent.tasks())
