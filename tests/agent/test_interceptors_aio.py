"""The asyncio interceptors over real grpc.aio: clocks, metadata, aborts, fail-open, tasks, locks.

Each test drives its own event loop with ``asyncio.run``; servers and channels
live in an ``AioRig`` that closes them on the way out, also on failure.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from aio_echo_service import AioEchoServicer, AioEchoStub, AioRig
from echo_service import APP_KEY, APP_TRAILER, UNARY_STREAM, UNARY_UNARY

import cutwatch
from cutwatch.agent import STAMP_METADATA_KEY, StampCodec, VectorClock
from cutwatch.core import BOUNCED_STAMP_METADATA_KEY
from cutwatch.proto import stamp_pb2

TIMEOUT = 30.0
PAYLOADS = [b"a", b"bb", b"ccc"]


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def requests() -> AsyncIterator[bytes]:
    for payload in PAYLOADS:
        yield payload


async def read_all(call: Any) -> list[bytes]:
    """Read a response stream with ``read()`` until EOF."""
    responses = []
    while (message := await call.read()) is not grpc.aio.EOF:
        responses.append(message)
    return responses


async def call_kind(
    stub: AioEchoStub, kind: str, payload: bytes = b"ping", metadata: Any = None
) -> tuple[Any, Any]:
    """One call of ``kind``; returns (response(s) as plain values, trailing metadata)."""
    kw: dict[str, Any] = {"timeout": TIMEOUT}
    if metadata is not None:
        kw["metadata"] = metadata
    call: Any
    if kind == "unary_unary":
        call = stub.unary_unary(payload, **kw)
        result: Any = await call
    elif kind == "unary_stream":
        call = stub.unary_stream(payload, **kw)
        result = [r async for r in call]
    elif kind == "unary_stream_read":
        call = stub.unary_stream(payload, **kw)
        result = await read_all(call)
    elif kind == "unary_stream_write":  # the handler writes with context.write()
        call = stub.unary_stream_write(payload, **kw)
        result = [r async for r in call]
    elif kind == "stream_unary":
        call = stub.stream_unary(requests(), **kw)
        result = await call
    elif kind == "stream_unary_write":  # the client writes with call.write()
        call = stub.stream_unary(**kw)
        for item in PAYLOADS:
            await call.write(item)
        await call.done_writing()
        result = await call
    elif kind == "stream_stream":
        call = stub.stream_stream(requests(), **kw)
        result = [r async for r in call]
    elif kind == "stream_stream_read":
        call = stub.stream_stream(**kw)
        result = []
        for item in PAYLOADS:
            await call.write(item)
            result.append(await call.read())
        await call.done_writing()
        result.extend(await read_all(call))
    else:
        raise ValueError(kind)
    return result, await call.trailing_metadata()


CALL_KINDS = [
    "unary_unary",
    "unary_stream",
    "unary_stream_read",
    "unary_stream_write",
    "stream_unary",
    "stream_unary_write",
    "stream_stream",
    "stream_stream_read",
]
BASIC_KINDS = ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


def decode_sender(stamp: bytes) -> str:
    return StampCodec("probe:0").decode(stamp).sender


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))


# Clocks ------------------------------------------------------------------------


def test_chain_carries_clocks_forward_and_back(make_agent: Any) -> None:
    a, b, c = make_agent("a"), make_agent("b"), make_agent("c")
    c_seen: list[VectorClock] = []

    async def scenario() -> None:
        async with AioRig() as rig:
            c_servicer = AioEchoServicer()

            async def capture() -> None:
                c_seen.append(c.clock)

            c_servicer.on_call = capture
            to_c = rig.stub(await rig.serve(c_servicer, c), b)

            async def hop(data: bytes) -> bytes:
                return await to_c.unary_unary(data, timeout=TIMEOUT)  # type: ignore[no-any-return]

            to_b = rig.stub(await rig.serve(AioEchoServicer(next_hop=hop), b), a)
            a_before = a.clock
            assert await to_b.unary_unary(b"hop", timeout=TIMEOUT) == b"hop"
            a_after, b_after = a.clock, b.clock

            (c_at_handler,) = c_seen
            assert a_before.happened_before(c_at_handler)
            assert a_before.tick(a.process_id) <= c_at_handler
            assert c_at_handler[b.process_id] >= 1
            assert c_at_handler.happened_before(a_after)
            assert b_after <= a_after
            assert b_after.happened_before(a_after)
            assert a_after[c.process_id] == c_at_handler[c.process_id] + 1

    run(scenario)


def test_independent_clients_stay_concurrent(make_agent: Any) -> None:
    x, y, s = make_agent("x"), make_agent("y"), make_agent("s")

    async def scenario() -> None:
        async with AioRig() as rig:
            address = await rig.serve(AioEchoServicer(), s)

            async def call(agent: cutwatch.Agent) -> VectorClock:
                payload = agent.process_id.encode()
                assert await rig.stub(address, agent).unary_unary(payload, timeout=TIMEOUT) == payload
                return agent.clock

            x_clock, y_clock = await asyncio.gather(call(x), call(y))
            assert x_clock.concurrent(y_clock)
            assert not x_clock.happened_before(y_clock) and not y_clock.happened_before(x_clock)
            assert x_clock[s.process_id] >= 1 and y_clock[s.process_id] >= 1
            assert s.stats().requests_received == 2

    run(scenario)


# Call kinds -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", CALL_KINDS)
def test_every_call_kind_is_stamped_both_ways(kind: str, make_agent: Any) -> None:
    client, server = make_agent("client"), make_agent("server")

    async def scenario() -> None:
        async with AioRig() as rig:
            expected, _ = await call_kind(rig.stub(await rig.serve(AioEchoServicer())), kind)
            stub = rig.stub(await rig.serve(AioEchoServicer(), server), client)

            result, trailing = await call_kind(stub, kind)

            assert result == expected
            assert decode_sender(dict(list(trailing))[STAMP_METADATA_KEY]) == server.process_id
            server_stats, client_stats = server.stats(), client.stats()
            assert (server_stats.requests_received, server_stats.responses_sent, server_stats.untracked) == (
                1,
                1,
                0,
            )
            assert (client_stats.requests_sent, client_stats.responses_received, client_stats.untracked) == (
                1,
                1,
                0,
            )
            assert client_stats.internal_errors == server_stats.internal_errors == 0
            assert client.clock[server.process_id] == server.clock[server.process_id]
            assert server.clock[client.process_id] == 1
            assert client.tasks() == [] and server.tasks() == []

    run(scenario)


def test_repeated_calls_keep_counting(make_agent: Any) -> None:
    client, server = make_agent("client"), make_agent("server")

    async def scenario() -> None:
        async with AioRig() as rig:
            stub = rig.stub(await rig.serve(AioEchoServicer(), server), client)
            clocks = []
            for kind in CALL_KINDS * 2:
                await call_kind(stub, kind)
                clocks.append(client.clock)
            assert all(earlier.happened_before(later) for earlier, later in itertools.pairwise(clocks))
            assert client.stats().responses_received == server.stats().requests_received == 16
            assert client.stats().untracked == server.stats().untracked == 0

    run(scenario)


# Metadata -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*BASIC_KINDS, "unary_stream_write", "stream_stream_read"])
@pytest.mark.parametrize("container", ["tuple", "list", "aio_metadata"])
def test_application_metadata_is_preserved_both_ways(kind: str, container: str, make_agent: Any) -> None:
    client, server = make_agent("client"), make_agent("server")
    pairs = [(APP_KEY, "token-1"), ("x-app-bin", b"\x00\xffraw")]
    metadata: Any = {"tuple": tuple, "list": list, "aio_metadata": lambda p: grpc.aio.Metadata(*p)}[
        container
    ](pairs)

    async def scenario() -> None:
        async with AioRig() as rig:
            servicer = AioEchoServicer()
            stub = rig.stub(await rig.serve(servicer, server), client)

            _result, trailing = await call_kind(stub, kind, metadata=metadata)

            assert list(metadata) == pairs
            (seen,) = servicer.seen_metadata
            assert seen[APP_KEY] == "token-1"
            assert seen["x-app-bin"] == b"\x00\xffraw"
            assert decode_sender(seen[STAMP_METADATA_KEY]) == client.process_id
            assert trailing[APP_TRAILER] == "kept"
            assert decode_sender(trailing[STAMP_METADATA_KEY]) == server.process_id
            assert [key for key, _ in trailing].count(STAMP_METADATA_KEY) == 1

    run(scenario)


# Aborts ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["await", "trailing_first"])
def test_abort_keeps_status_and_stamp(path: str, make_agent: Any) -> None:
    client, server = make_agent("client"), make_agent("server")

    async def scenario() -> None:
        async with AioRig() as rig:
            stub = rig.stub(await rig.serve(AioEchoServicer(), server), client)
            call = stub.unary_unary(b"abort", timeout=TIMEOUT)
            if path == "trailing_first":
                assert await call.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            error = info.value
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error.details() == "asked to abort"
            trailing = error.trailing_metadata()
            assert trailing[APP_TRAILER] == "kept"
            # Aborted before any atomic() block: the request bounced, and the stamp says so.
            assert decode_sender(trailing[BOUNCED_STAMP_METADATA_KEY]) == server.process_id
            assert STAMP_METADATA_KEY not in trailing
            stats = client.stats()
            assert (stats.responses_received, stats.untracked, stats.internal_errors) == (1, 0, 0)
            assert server.stats().responses_sent == 1
            assert server.stats().internal_errors == 0
            assert client.clock[server.process_id] == server.clock[server.process_id]
            assert client.tasks() == [] and server.tasks() == []

    run(scenario)


# Fail-open ------------------------------------------------------------------------


def _valid_stamp() -> bytes:
    return StampCodec("raw:1").encode(["raw:1"], [7], peer=None, call_id=3).data


def _oversized_stamp() -> bytes:
    names = [f"raw-peer-{i:04d}:{'x' * 20}" for i in range(120)]
    data = StampCodec(names[0], max_stamp_bytes=1 << 20).encode(names, [1] * len(names), peer=None).data
    assert 4096 < len(data) < 6000
    return data


STAMP_CASES: dict[str, tuple[Callable[[], bytes | None], str]] = {
    "missing": (lambda: None, "untracked_missing"),
    "truncated": (lambda: _valid_stamp()[: _valid_stamp().index(b"raw:1") + 2], "untracked_malformed"),
    "garbage": (lambda: b"\xff" * 32, "untracked_malformed"),
    "oversized": (_oversized_stamp, "untracked_malformed"),
    "wrong_version": (
        lambda: stamp_pb2.Stamp(version=99, sender="raw:1", clock=[7]).SerializeToString(),
        "untracked_malformed",
    ),
}


@pytest.mark.parametrize("kind", BASIC_KINDS)
@pytest.mark.parametrize("case", list(STAMP_CASES))
def test_raw_client_with_bad_stamp_is_served_and_counted(case: str, kind: str, make_agent: Any) -> None:
    server = make_agent("server")
    build, counter = STAMP_CASES[case]
    stamp = build()
    metadata = (
        ((APP_KEY, "token-1"),) if stamp is None else ((APP_KEY, "token-1"), (STAMP_METADATA_KEY, stamp))
    )

    async def scenario() -> None:
        async with AioRig() as rig:
            expected, _ = await call_kind(rig.stub(await rig.serve(AioEchoServicer())), kind)
            servicer = AioEchoServicer()
            stub = rig.stub(await rig.serve(servicer, server))

            result, trailing = await call_kind(stub, kind, metadata=metadata)

            assert result == expected
            assert servicer.seen_metadata[0][APP_KEY] == "token-1"
            stats = server.stats()
            assert stats.requests_received == stats.responses_sent == 1
            assert getattr(stats, counter) == 1
            assert stats.untracked == 1
            assert stats.internal_errors == 0
            assert server.clock.get("raw:1") == 0
            assert decode_sender(trailing[STAMP_METADATA_KEY]) == server.process_id
            assert server.tasks() == []

    run(scenario)


@pytest.mark.parametrize("kind", CALL_KINDS)
def test_instrumented_client_with_raw_server(kind: str, make_agent: Any) -> None:
    client = make_agent("client")

    async def scenario() -> None:
        async with AioRig() as rig:
            servicer = AioEchoServicer()
            address = await rig.serve(servicer)
            expected, _ = await call_kind(rig.stub(address), kind)

            result, trailing = await call_kind(rig.stub(address, client), kind)

            assert result == expected
            assert trailing[APP_TRAILER] == "kept"
            stats = client.stats()
            assert (stats.requests_sent, stats.responses_received) == (1, 1)
            assert (stats.untracked_missing, stats.untracked_malformed, stats.internal_errors) == (1, 0, 0)
            assert STAMP_METADATA_KEY in servicer.seen_metadata[-1]
            assert set(client.clock) == {client.process_id}
            assert client.tasks() == []

    run(scenario)


class BadStampServicer(AioEchoServicer):
    """An uninstrumented server that answers with a stamp of its own making."""

    def __init__(self, stamp: bytes) -> None:
        super().__init__()
        self.stamp = stamp

    async def _record(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await super()._record(context)
        context.set_trailing_metadata(((APP_TRAILER, "kept"), (STAMP_METADATA_KEY, self.stamp)))


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize("case", [case for case in STAMP_CASES if case != "missing"])
def test_bad_response_stamp_is_delivered_and_counted(case: str, kind: str, make_agent: Any) -> None:
    client = make_agent("client")
    stamp = STAMP_CASES[case][0]()
    assert stamp is not None

    async def scenario() -> None:
        async with AioRig() as rig:
            address = await rig.serve(BadStampServicer(stamp))
            expected, _ = await call_kind(rig.stub(address), kind)

            result, trailing = await call_kind(rig.stub(address, client), kind)

            assert result == expected
            assert trailing[APP_TRAILER] == "kept"
            stats = client.stats()
            assert (stats.responses_received, stats.untracked_malformed, stats.untracked_missing) == (1, 1, 0)
            assert stats.internal_errors == 0
            assert set(client.clock) == {client.process_id}
            assert client.tasks() == []

    run(scenario)


# Tasks ----------------------------------------------------------------------------


class BlockedChain:
    """A -> B -> C where C's handler waits on ``release`` once ``block`` is set."""

    def __init__(self, a: cutwatch.Agent, b: cutwatch.Agent, c: cutwatch.Agent) -> None:
        self.a, self.b, self.c = a, b, c
        self.block = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self) -> None:
        if self.block:
            self.entered.set()
            await asyncio.wait_for(self.release.wait(), TIMEOUT)

    async def build(self, rig: AioRig) -> None:
        c_servicer = AioEchoServicer()
        c_servicer.on_call = self.hold
        c_address = await rig.serve(c_servicer, self.c)
        to_c = rig.stub(c_address, self.b)

        async def hop(data: bytes) -> bytes:
            return await to_c.unary_unary(data, timeout=TIMEOUT)  # type: ignore[no-any-return]

        self.to_b = rig.stub(await rig.serve(AioEchoServicer(next_hop=hop), self.b), self.a)
        self.to_c_from_a = rig.stub(c_address, self.a)


def test_blocked_handler_shows_server_task_waiting_on_callee(make_agent: Any) -> None:
    a, b, c = make_agent("a"), make_agent("b"), make_agent("c")

    async def scenario() -> None:
        chain = BlockedChain(a, b, c)
        async with AioRig() as rig:
            await chain.build(rig)
            try:
                assert await chain.to_b.unary_unary(b"warm", timeout=TIMEOUT) == b"warm"
                assert a.tasks() == b.tasks() == c.tasks() == []

                chain.block = True
                pending = asyncio.ensure_future(chain.to_b.unary_unary(b"held", timeout=TIMEOUT))
                await asyncio.wait_for(chain.entered.wait(), TIMEOUT)
                await wait_until(
                    lambda: [o.blocking for t in b.tasks() for o in t.outbound] == [True],
                    "B's handler to block on its call to C",
                )
                (task,) = b.tasks()
                assert (task.kind, task.method, task.caller) == ("server", UNARY_UNARY, a.process_id)
                (outbound,) = task.outbound
                assert (outbound.method, outbound.blocking, outbound.target) == (
                    UNARY_UNARY,
                    True,
                    c.process_id,
                )
                assert task.held_locks == () and task.waiting_lock is None
                (caller_task,) = a.tasks()
                assert caller_task.kind == "app"
                (a_call,) = caller_task.outbound
                assert a_call.call_id == task.call_id and a_call.target == b.process_id
                (c_task,) = c.tasks()
                assert (c_task.kind, c_task.caller, c_task.call_id) == (
                    "server",
                    b.process_id,
                    outbound.call_id,
                )

                chain.release.set()
                assert await asyncio.wait_for(pending, TIMEOUT) == b"held"
                assert a.tasks() == b.tasks() == c.tasks() == []
            finally:
                chain.release.set()

    run(scenario)


@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream"])
def test_outbound_call_outside_handler_is_an_app_task(kind: str, make_agent: Any) -> None:
    a, b, c = make_agent("a"), make_agent("b"), make_agent("c")
    method = UNARY_UNARY if kind == "unary_unary" else UNARY_STREAM

    async def scenario() -> None:
        chain = BlockedChain(a, b, c)
        async with AioRig() as rig:
            await chain.build(rig)
            try:
                chain.block = True
                pending = asyncio.ensure_future(call_kind(chain.to_c_from_a, kind, b"direct"))
                await asyncio.wait_for(chain.entered.wait(), TIMEOUT)
                await wait_until(
                    lambda: [o.blocking for t in a.tasks() for o in t.outbound] == [True], "A to block on C"
                )
                (task,) = a.tasks()
                assert (task.kind, task.method, task.caller) == ("app", "", "")
                (outbound,) = task.outbound
                assert (outbound.method, outbound.blocking) == (method, True)
                chain.release.set()
                result, _ = await asyncio.wait_for(pending, TIMEOUT)
                assert result in (b"direct", [b"direct"] * 3)
                assert a.tasks() == [] and c.tasks() == []
            finally:
                chain.release.set()

    run(scenario)


def test_unawaited_call_is_not_blocking_until_awaited(make_agent: Any) -> None:
    a, b, c = make_agent("a"), make_agent("b"), make_agent("c")

    async def scenario() -> None:
        chain = BlockedChain(a, b, c)
        async with AioRig() as rig:
            await chain.build(rig)
            try:
                chain.block = True
                call = chain.to_c_from_a.unary_unary(b"later", timeout=TIMEOUT)
                await asyncio.wait_for(chain.entered.wait(), TIMEOUT)
                await wait_until(lambda: len(a.tasks()) == 1, "A's app task")
                (task,) = a.tasks()
                (outbound,) = task.outbound
                assert outbound.blocking is False
                chain.release.set()
                assert await call == b"later"
                assert a.tasks() == []
            finally:
                chain.release.set()

    run(scenario)


# Locks ----------------------------------------------------------------------------


def test_lock_records_holder_and_waiter(make_agent: Any) -> None:
    agent = make_agent("locks")
    lock = agent.lock("inventory:42")
    assert agent.lock("inventory:42") is lock

    async def scenario() -> None:
        held, go = asyncio.Event(), asyncio.Event()
        order: list[str] = []

        async def holder() -> None:
            async with lock:
                order.append("holder")
                held.set()
                await asyncio.wait_for(go.wait(), TIMEOUT)

        async def waiter() -> None:
            async with lock:
                order.append("waiter")

        first = asyncio.create_task(holder())
        await asyncio.wait_for(held.wait(), TIMEOUT)
        second = asyncio.create_task(waiter())
        await wait_until(lambda: any(t.waiting_lock == "inventory:42" for t in agent.tasks()), "the waiter")
        tasks = agent.tasks()
        assert len(tasks) == 2
        (holding,) = [t for t in tasks if t.held_locks]
        (waiting,) = [t for t in tasks if t.waiting_lock]
        assert holding.held_locks == ("inventory:42",) and holding.waiting_lock is None
        assert waiting.waiting_lock == "inventory:42" and waiting.held_locks == ()
        go.set()
        await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT)
        assert order == ["holder", "waiter"]
        assert agent.tasks() == []
        assert not lock.locked()

    run(scenario)


def test_cancelled_waiter_leaves_lock_usable(make_agent: Any) -> None:
    agent = make_agent("locks")
    lock = agent.lock("inventory:42")

    async def scenario() -> None:
        held, go = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with lock:
                held.set()
                await asyncio.wait_for(go.wait(), TIMEOUT)

        async def waiter() -> None:
            async with lock:
                raise AssertionError("a cancelled waiter must not get the lock")

        first = asyncio.create_task(holder())
        await asyncio.wait_for(held.wait(), TIMEOUT)
        second = asyncio.create_task(waiter())
        await wait_until(lambda: any(t.waiting_lock for t in agent.tasks()), "the waiter")
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        (only,) = agent.tasks()
        assert only.held_locks == ("inventory:42",) and only.waiting_lock is None
        go.set()
        await asyncio.wait_for(first, TIMEOUT)
        assert agent.tasks() == [] and not lock.locked()
        await asyncio.wait_for(lock.acquire_async(), TIMEOUT)
        assert lock.locked()
        lock.release()
        assert agent.tasks() == []

    run(scenario)


@pytest.mark.parametrize("settle", [False, True])
def test_waiter_cancelled_while_lock_is_handed_over(settle: bool, make_agent: Any) -> None:
    """Cancellation racing the hand-over: before or after the grant is delivered, the lock ends free."""
    agent = make_agent("locks")
    lock = agent.lock("inventory:42")

    async def scenario() -> None:
        held, go = asyncio.Event(), asyncio.Event()
        got: list[str] = []
        waiters: list[asyncio.Task[None]] = []

        async def holder() -> None:
            await lock.acquire_async()
            held.set()
            await asyncio.wait_for(go.wait(), TIMEOUT)
            lock.release()
            if settle:
                await asyncio.sleep(0)  # let the grant be delivered first
            waiters[0].cancel()

        async def waiter() -> None:
            async with lock:
                got.append("waiter")

        first = asyncio.create_task(holder())
        await asyncio.wait_for(held.wait(), TIMEOUT)
        waiters.append(asyncio.create_task(waiter()))
        await wait_until(lambda: any(t.waiting_lock for t in agent.tasks()), "the waiter")
        go.set()
        await asyncio.wait_for(first, TIMEOUT)
        with pytest.raises(asyncio.CancelledError):
            await waiters[0]
        assert got == []
        await wait_until(lambda: not lock.locked(), "the lock to be free")
        assert agent.tasks() == []
        await asyncio.wait_for(lock.acquire_async(), TIMEOUT)
        lock.release()
        assert agent.tasks() == [] and not lock.locked()

    run(scenario)


def test_asyncio_and_thread_waiters_share_one_lock(make_agent: Any) -> None:
    agent = make_agent("locks")
    lock = agent.lock("inventory:42")

    async def scenario() -> None:
        await lock.acquire_async()
        # run_in_executor, unlike to_thread, does not copy this task's context (and its cutwatch task).
        thread_waiter = asyncio.get_running_loop().run_in_executor(
            None, lambda: lock.acquire(timeout=TIMEOUT)
        )
        await wait_until(lambda: any(t.waiting_lock for t in agent.tasks()), "the thread to wait")
        assert lock.acquire(blocking=False) is False  # held: a try fails
        lock.release()
        assert await asyncio.wait_for(thread_waiter, TIMEOUT) is True
        (task,) = agent.tasks()
        assert task.held_locks == ("inventory:42",)
        lock.release()
        assert agent.tasks() == [] and not lock.locked()

    run(scenario)
