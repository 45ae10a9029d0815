"""The sync interceptors over real gRPC: clocks across calls, metadata, aborts, fail-open, tasks, locks."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from echo_service import APP_KEY, APP_TRAILER, UNARY_UNARY, EchoServicer, EchoStub
from polling import wait_until

import cutwatch
from cutwatch.agent import STAMP_METADATA_KEY, StampCodec, StampError, VectorClock
from cutwatch.core import BOUNCED_STAMP_METADATA_KEY
from cutwatch.proto import stamp_pb2

TIMEOUT = 30.0
PAYLOADS = [b"a", b"bb", b"ccc"]


def call_kind(stub: EchoStub, kind: str, payload: bytes = b"ping") -> Any:
    """Make one call of ``kind``; returns the response(s) as plain values."""
    if kind == "unary_unary":
        return stub.unary_unary(payload, timeout=TIMEOUT)
    if kind == "unary_stream":
        return list(stub.unary_stream(payload, timeout=TIMEOUT))
    if kind == "stream_unary":
        return stub.stream_unary(iter(PAYLOADS), timeout=TIMEOUT)
    if kind == "stream_stream":
        return list(stub.stream_stream(iter(PAYLOADS), timeout=TIMEOUT))
    if kind == "unary_unary_future":
        return stub.unary_unary.future(payload, timeout=TIMEOUT).result(timeout=TIMEOUT)
    if kind == "stream_unary_future":
        return stub.stream_unary.future(iter(PAYLOADS), timeout=TIMEOUT).result(timeout=TIMEOUT)
    if kind == "unary_unary_with_call":
        response, _call = stub.unary_unary.with_call(payload, timeout=TIMEOUT)
        return response
    if kind == "stream_unary_with_call":
        response, _call = stub.stream_unary.with_call(iter(PAYLOADS), timeout=TIMEOUT)
        return response
    raise ValueError(kind)


CALL_KINDS = [
    "unary_unary",
    "unary_stream",
    "stream_unary",
    "stream_stream",
    "unary_unary_future",
    "stream_unary_future",
    "unary_unary_with_call",
    "stream_unary_with_call",
]
BASIC_KINDS = CALL_KINDS[:4]


def call_with_metadata(stub: EchoStub, kind: str, metadata: Any) -> tuple[Any, Any]:
    """One call of ``kind`` with request metadata; returns (result, trailing metadata)."""
    if kind == "unary_unary_with_call":
        response, call = stub.unary_unary.with_call(b"ping", timeout=TIMEOUT, metadata=metadata)
        return response, call.trailing_metadata()
    if kind == "stream_unary_with_call":
        response, call = stub.stream_unary.with_call(iter(PAYLOADS), timeout=TIMEOUT, metadata=metadata)
        return response, call.trailing_metadata()
    if kind == "unary_unary_future":
        future = stub.unary_unary.future(b"ping", timeout=TIMEOUT, metadata=metadata)
        return future.result(timeout=TIMEOUT), future.trailing_metadata()
    if kind == "unary_stream":
        stream = stub.unary_stream(b"ping", timeout=TIMEOUT, metadata=metadata)
        return list(stream), stream.trailing_metadata()
    if kind == "stream_stream":
        stream = stub.stream_stream(iter(PAYLOADS), timeout=TIMEOUT, metadata=metadata)
        return list(stream), stream.trailing_metadata()
    raise ValueError(kind)


def decode_sender(stamp: bytes) -> str:
    return StampCodec("probe:0").decode(stamp).sender


# Clocks ------------------------------------------------------------------------


def test_chain_carries_clocks_forward_and_back(make_agent: Any, serve: Any, open_channel: Any) -> None:
    a, b, c = make_agent("a"), make_agent("b"), make_agent("c")
    c_servicer = EchoServicer()
    c_seen: list[VectorClock] = []
    c_servicer.on_call = lambda: c_seen.append(c.clock)
    c_address = serve(c_servicer, c)
    to_c = EchoStub(open_channel(c_address, b))
    b_address = serve(EchoServicer(next_hop=lambda data: to_c.unary_unary(data, timeout=TIMEOUT)), b)
    to_b = EchoStub(open_channel(b_address, a))

    a_before = a.clock
    assert to_b.unary_unary(b"hop", timeout=TIMEOUT) == b"hop"
    a_after, b_after = a.clock, b.clock

    (c_at_handler,) = c_seen
    a_at_send = a_before.tick(a.process_id)
    assert a_before.happened_before(c_at_handler)
    assert a_at_send <= c_at_handler
    assert c_at_handler[b.process_id] >= 1
    assert c_at_handler.happened_before(a_after)
    assert b_after <= a_after
    assert b_after.happened_before(a_after)
    assert a_after[c.process_id] == c_at_handler[c.process_id] + 1  # C's response send event


def test_independent_clients_stay_concurrent(make_agent: Any, serve: Any, open_channel: Any) -> None:
    x, y, s = make_agent("x"), make_agent("y"), make_agent("s")
    address = serve(EchoServicer(), s)
    stubs = {x: EchoStub(open_channel(address, x)), y: EchoStub(open_channel(address, y))}
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    def call(agent: cutwatch.Agent) -> VectorClock:
        barrier.wait()
        assert (
            stubs[agent].unary_unary(agent.process_id.encode(), timeout=TIMEOUT) == agent.process_id.encode()
        )
        return agent.clock

    with futures.ThreadPoolExecutor(2) as pool:
        x_clock, y_clock = pool.map(call, [x, y])

    assert x_clock.concurrent(y_clock)
    assert not x_clock.happened_before(y_clock) and not y_clock.happened_before(x_clock)
    assert x_clock[s.process_id] >= 1 and y_clock[s.process_id] >= 1
    assert s.stats().requests_received == 2


# Call kinds -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", CALL_KINDS)
def test_every_call_kind_is_stamped_both_ways(
    kind: str, make_agent: Any, serve: Any, open_channel: Any
) -> None:
    client, server = make_agent("client"), make_agent("server")
    expected = call_kind(EchoStub(open_channel(serve(EchoServicer()))), kind)
    stub = EchoStub(open_channel(serve(EchoServicer(), server), client))

    assert call_kind(stub, kind) == expected

    server_stats, client_stats = server.stats(), client.stats()
    assert (server_stats.requests_received, server_stats.responses_sent, server_stats.untracked) == (1, 1, 0)
    assert (client_stats.requests_sent, client_stats.responses_received, client_stats.untracked) == (1, 1, 0)
    assert client_stats.internal_errors == server_stats.internal_errors == 0
    assert client.clock[server.process_id] == server.clock[server.process_id]
    assert server.clock[client.process_id] == 1
    assert client.tasks() == [] and server.tasks() == []


def test_repeated_calls_keep_counting(make_agent: Any, serve: Any, open_channel: Any) -> None:
    client, server = make_agent("client"), make_agent("server")
    stub = EchoStub(open_channel(serve(EchoServicer(), server), client))
    clocks = []
    for kind in BASIC_KINDS * 3:
        call_kind(stub, kind)
        clocks.append(client.clock)
    assert all(earlier.happened_before(later) for earlier, later in itertools.pairwise(clocks))
    assert client.stats().responses_received == server.stats().requests_received == 12
    assert client.stats().untracked == server.stats().untracked == 0


# Metadata -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        "unary_unary_with_call",
        "stream_unary_with_call",
        "unary_unary_future",
        "unary_stream",
        "stream_stream",
    ],
)
@pytest.mark.parametrize("container", [tuple, list])
def test_application_metadata_is_preserved_both_ways(
    kind: str, container: type, make_agent: Any, serve: Any, open_channel: Any
) -> None:
    client, server = make_agent("client"), make_agent("server")
    servicer = EchoServicer()
    stub = EchoStub(open_channel(serve(servicer, server), client))
    metadata = container([(APP_KEY, "token-1"), ("x-app-bin", b"\x00\xffraw")])
    before = list(metadata)

    _result, trailing = call_with_metadata(stub, kind, metadata)

    assert list(metadata) == before and len(metadata) == 2
    (seen,) = servicer.seen_metadata
    assert seen[APP_KEY] == "token-1"
    assert seen["x-app-bin"] == b"\x00\xffraw"
    assert decode_sender(seen[STAMP_METADATA_KEY]) == client.process_id
    trailers = dict(trailing)
    assert trailers[APP_TRAILER] == "kept"
    assert decode_sender(trailers[STAMP_METADATA_KEY]) == server.process_id
    assert [key for key, _ in trailing].count(STAMP_METADATA_KEY) == 1


# Aborts ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["blocking", "with_call", "future"])
def test_abort_keeps_status_and_stamp(path: str, make_agent: Any, serve: Any, open_channel: Any) -> None:
    client, server = make_agent("client"), make_agent("server")
    stub = EchoStub(open_channel(serve(EchoServicer(), server), client))

    with pytest.raises(grpc.RpcError) as info:
        if path == "blocking":
            stub.unary_unary(b"abort", timeout=TIMEOUT)
        elif path == "with_call":
            stub.unary_unary.with_call(b"abort", timeout=TIMEOUT)
        else:
            stub.unary_unary.future(b"abort", timeout=TIMEOUT).result(timeout=TIMEOUT)

    error: Any = info.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "asked to abort"
    trailers = dict(error.trailing_metadata())
    assert trailers[APP_TRAILER] == "kept"
    # Aborted before any atomic() block: the request bounced, and the stamp says so.
    assert decode_sender(trailers[BOUNCED_STAMP_METADATA_KEY]) == server.process_id
    assert STAMP_METADATA_KEY not in trailers
    stats = client.stats()
    assert (stats.responses_received, stats.untracked, stats.internal_errors) == (1, 0, 0)
    assert server.stats().responses_sent == 1
    assert client.clock[server.process_id] == server.clock[server.process_id]
    assert client.tasks() == [] and server.tasks() == []


# Fail-open ------------------------------------------------------------------------


def _valid_stamp() -> bytes:
    return StampCodec("raw:1").encode(["raw:1"], [7], peer=None, call_id=3).data


def _truncated_stamp() -> bytes:
    data = _valid_stamp()
    return data[: data.index(b"raw:1") + 2]  # cut inside the sender string


def _oversized_stamp() -> bytes:
    names = [f"raw-peer-{i:04d}:{'x' * 20}" for i in range(120)]
    data = StampCodec(names[0], max_stamp_bytes=1 << 20).encode(names, [1] * len(names), peer=None).data
    assert 4096 < len(data) < 6000
    return data


def _wrong_version_stamp() -> bytes:
    return stamp_pb2.Stamp(version=99, sender="raw:1", clock=[7], call_id=3).SerializeToString()


STAMP_CASES = {
    "missing": (lambda: None, "untracked_missing"),
    "truncated": (_truncated_stamp, "untracked_malformed"),
    "garbage": (lambda: b"\xff" * 32, "untracked_malformed"),
    "oversized": (_oversized_stamp, "untracked_malformed"),
    "wrong_version": (_wrong_version_stamp, "untracked_malformed"),
}


def test_stamp_cases_are_what_they_claim() -> None:
    """Guards the fail-open cases: each bad stamp really fails to decode, the valid one decodes."""
    assert StampCodec("probe:0").decode(_valid_stamp()).sender == "raw:1"
    for name in ("truncated", "garbage", "oversized", "wrong_version"):
        data = STAMP_CASES[name][0]()
        assert data is not None
        with pytest.raises(StampError):
            StampCodec("probe:0").decode(data)


@pytest.mark.parametrize("kind", BASIC_KINDS)
@pytest.mark.parametrize("case", list(STAMP_CASES))
def test_raw_client_with_bad_stamp_is_served_and_counted(
    case: str, kind: str, make_agent: Any, serve: Any, open_channel: Any
) -> None:
    server = make_agent("server")
    servicer = EchoServicer()
    stub = EchoStub(open_channel(serve(servicer, server)))
    expected = call_kind(EchoStub(open_channel(serve(EchoServicer()))), kind)
    build, counter = STAMP_CASES[case]
    stamp = build()
    metadata = (
        ((APP_KEY, "token-1"),) if stamp is None else ((APP_KEY, "token-1"), (STAMP_METADATA_KEY, stamp))
    )

    if kind == "unary_unary":
        result, call = stub.unary_unary.with_call(b"ping", timeout=TIMEOUT, metadata=metadata)
        trailing = call.trailing_metadata()
    elif kind == "stream_unary":
        result, call = stub.stream_unary.with_call(iter(PAYLOADS), timeout=TIMEOUT, metadata=metadata)
        trailing = call.trailing_metadata()
    else:
        method = stub.unary_stream if kind == "unary_stream" else stub.stream_stream
        stream = method(
            b"ping" if kind == "unary_stream" else iter(PAYLOADS), timeout=TIMEOUT, metadata=metadata
        )
        result, trailing = list(stream), stream.trailing_metadata()

    assert result == expected
    assert servicer.seen_metadata[0][APP_KEY] == "token-1"
    stats = server.stats()
    assert stats.requests_received == stats.responses_sent == 1
    assert getattr(stats, counter) == 1
    assert stats.untracked == 1
    assert stats.internal_errors == 0
    assert server.clock.get("raw:1") == 0  # nothing learnt from a bad stamp
    # The response still carries the server's stamp, addressed to nobody.
    assert decode_sender(dict(trailing)[STAMP_METADATA_KEY]) == server.process_id
    assert server.tasks() == []


@pytest.mark.parametrize("kind", CALL_KINDS)
def test_instrumented_client_with_raw_server(
    kind: str, make_agent: Any, serve: Any, open_channel: Any
) -> None:
    client = make_agent("client")
    servicer = EchoServicer()
    address = serve(servicer)
    expected = call_kind(EchoStub(open_channel(address)), kind)

    assert call_kind(EchoStub(open_channel(address, client)), kind) == expected

    stats = client.stats()
    assert (stats.requests_sent, stats.responses_received) == (1, 1)
    assert (stats.untracked_missing, stats.untracked_malformed, stats.internal_errors) == (1, 0, 0)
    assert STAMP_METADATA_KEY in servicer.seen_metadata[-1]
    assert set(client.clock) == {client.process_id}
    assert client.tasks() == []


class BadStampServicer(EchoServicer):
    """An uninstrumented server that answers with a stamp of its own making."""

    def __init__(self, stamp: bytes) -> None:
        super().__init__()
        self.stamp = stamp

    def _record(self, context: grpc.ServicerContext) -> None:
        super()._record(context)
        context.set_trailing_metadata(((APP_TRAILER, "kept"), (STAMP_METADATA_KEY, self.stamp)))


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize("case", [case for case in STAMP_CASES if case != "missing"])
def test_bad_response_stamp_is_delivered_and_counted(
    case: str, kind: str, make_agent: Any, serve: Any, open_channel: Any
) -> None:
    client = make_agent("client")
    stamp = STAMP_CASES[case][0]()
    assert stamp is not None
    address = serve(BadStampServicer(stamp))
    expected = call_kind(EchoStub(open_channel(address)), kind)

    assert call_kind(EchoStub(open_channel(address, client)), kind) == expected

    stats = client.stats()
    assert (stats.responses_received, stats.untracked_malformed, stats.untracked_missing) == (1, 1, 0)
    assert stats.internal_errors == 0
    assert set(client.clock) == {client.process_id}
    assert client.tasks() == []


# Tasks ----------------------------------------------------------------------------


@pytest.fixture
def blocked_chain(make_agent: Any, serve: Any, open_channel: Any) -> Iterator[dict[str, Any]]:
    """A -> B -> C where C's handler waits on ``release`` once ``block`` is set."""
    a, b, c = make_agent("a"), make_agent("b"), make_agent("c")
    entered, release, block = threading.Event(), threading.Event(), threading.Event()
    c_servicer = EchoServicer()

    def hold() -> None:
        if block.is_set():
            entered.set()
            assert release.wait(TIMEOUT)

    c_servicer.on_call = hold
    c_address = serve(c_servicer, c)
    to_c = EchoStub(open_channel(c_address, b))
    b_address = serve(EchoServicer(next_hop=lambda data: to_c.unary_unary(data, timeout=TIMEOUT)), b)
    rig = {
        "a": a,
        "b": b,
        "c": c,
        "entered": entered,
        "release": release,
        "block": block,
        "to_b": EchoStub(open_channel(b_address, a)),
        "to_c_from_a": EchoStub(open_channel(c_address, a)),
    }
    try:
        yield rig
    finally:
        release.set()


def test_blocked_handler_shows_server_task_waiting_on_callee(blocked_chain: dict[str, Any]) -> None:
    a, b, c = blocked_chain["a"], blocked_chain["b"], blocked_chain["c"]
    to_b = blocked_chain["to_b"]
    assert to_b.unary_unary(b"warm", timeout=TIMEOUT) == b"warm"  # B learns who C is
    assert a.tasks() == b.tasks() == c.tasks() == []

    blocked_chain["block"].set()
    with futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(to_b.unary_unary, b"held", timeout=TIMEOUT)
        assert blocked_chain["entered"].wait(TIMEOUT)

        (task,) = b.tasks()
        assert (task.kind, task.method, task.caller) == ("server", UNARY_UNARY, a.process_id)
        assert task.call_id > 0
        (outbound,) = task.outbound
        assert (outbound.method, outbound.blocking, outbound.target) == (UNARY_UNARY, True, c.process_id)
        assert task.held_locks == () and task.waiting_lock is None
        (caller_task,) = a.tasks()
        assert caller_task.kind == "app"
        (a_call,) = caller_task.outbound
        assert a_call.call_id == task.call_id and a_call.target == b.process_id
        (c_task,) = c.tasks()
        assert (c_task.kind, c_task.caller, c_task.call_id) == ("server", b.process_id, outbound.call_id)

        blocked_chain["release"].set()
        assert pending.result(timeout=TIMEOUT) == b"held"
    assert a.tasks() == b.tasks() == c.tasks() == []


def test_outbound_call_outside_handler_is_an_app_task(blocked_chain: dict[str, Any]) -> None:
    a, c = blocked_chain["a"], blocked_chain["c"]
    blocked_chain["block"].set()
    with futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(blocked_chain["to_c_from_a"].unary_unary, b"direct", timeout=TIMEOUT)
        assert blocked_chain["entered"].wait(TIMEOUT)
        (task,) = a.tasks()
        assert (task.kind, task.method, task.caller) == ("app", "", "")
        (outbound,) = task.outbound
        assert (outbound.method, outbound.blocking) == (UNARY_UNARY, True)
        blocked_chain["release"].set()
        assert pending.result(timeout=TIMEOUT) == b"direct"
    assert a.tasks() == [] and c.tasks() == []


def test_unawaited_future_is_not_blocking_until_result(blocked_chain: dict[str, Any]) -> None:
    a = blocked_chain["a"]
    blocked_chain["block"].set()
    future = blocked_chain["to_c_from_a"].unary_unary.future(b"later", timeout=TIMEOUT)
    try:
        assert blocked_chain["entered"].wait(TIMEOUT)
        (task,) = a.tasks()
        (outbound,) = task.outbound
        assert outbound.blocking is False
    finally:
        blocked_chain["release"].set()
    assert future.result(timeout=TIMEOUT) == b"later"
    wait_until(lambda: a.tasks() == [], "the app task to end")


def test_call_finished_by_callback_leaves_no_stale_task(blocked_chain: dict[str, Any]) -> None:
    """A future finished in gRPC's thread must not leave this thread bound to a dead task."""
    a = blocked_chain["a"]
    stub = blocked_chain["to_c_from_a"]
    first = stub.unary_unary.future(b"first", timeout=TIMEOUT)
    wait_until(lambda: first.done() and a.tasks() == [], "the done-callback to finish the first call")
    assert first.result(timeout=TIMEOUT) == b"first"

    blocked_chain["block"].set()
    second = stub.unary_unary.future(b"second", timeout=TIMEOUT)
    try:
        assert blocked_chain["entered"].wait(TIMEOUT)
        (task,) = a.tasks()
        assert task.kind == "app"
        (outbound,) = task.outbound
        assert outbound.method == UNARY_UNARY
    finally:
        blocked_chain["release"].set()
    assert second.result(timeout=TIMEOUT) == b"second"
    wait_until(lambda: a.tasks() == [], "the app task to end")


# Locks ----------------------------------------------------------------------------


def test_lock_records_holder_and_waiter(make_agent: Any) -> None:
    agent = make_agent("locks")
    lock = agent.lock("inventory:42")
    assert agent.lock("inventory:42") is lock
    assert agent.lock("inventory:43") is not lock
    held, go = threading.Event(), threading.Event()
    order: list[str] = []

    def holder() -> None:
        with lock:
            order.append("holder")
            held.set()
            assert go.wait(TIMEOUT)

    def waiter() -> None:
        with lock:
            order.append("waiter")

    with futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(holder)
        assert held.wait(TIMEOUT)
        second = pool.submit(waiter)
        wait_until(lambda: any(t.waiting_lock == "inventory:42" for t in agent.tasks()), "the waiter")
        tasks = agent.tasks()
        assert len(tasks) == 2
        (holding,) = [t for t in tasks if t.held_locks]
        (waiting,) = [t for t in tasks if t.waiting_lock]
        assert holding.held_locks == ("inventory:42",) and holding.waiting_lock is None
        assert waiting.waiting_lock == "inventory:42" and waiting.held_locks == ()
        assert lock.locked()
        go.set()
        first.result(TIMEOUT)
        second.result(TIMEOUT)
    assert order == ["holder", "waiter"]
    assert agent.tasks() == []
    assert not lock.locked()


def test_lock_names_of_cutwatch_s_own_are_refused(make_agent: Any) -> None:
    agent = make_agent("locks")
    for name in ("cutwatch:atomic()", "cutwatch:anything"):
        with pytest.raises(ValueError, match="cutwatch's own"):
            agent.lock(name)
    assert agent.lock("cutwatch-ish:1").name == "cutwatch-ish:1"


def test_lock_try_and_timeout_leave_no_waiter(make_agent: Any) -> None:
    agent = make_agent("locks")
    lock = agent.lock("inventory:42")
    held, go = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            assert go.wait(TIMEOUT)

    def contend() -> tuple[bool, bool, list[Any]]:
        tried = lock.acquire(blocking=False)
        timed = lock.acquire(timeout=0.05)
        return tried, timed, agent.tasks()

    with futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(holder)
        assert held.wait(TIMEOUT)
        tried, timed, tasks_after = pool.submit(contend).result(TIMEOUT)
        assert (tried, timed) == (False, False)
        (only,) = tasks_after
        assert only.held_locks == ("inventory:42",)
        assert all(t.waiting_lock is None for t in agent.tasks())
        go.set()
        first.result(TIMEOUT)
    assert agent.tasks() == []
    assert lock.acquire(blocking=False)
    lock.release()
    assert agent.tasks() == []
    with pytest.raises(RuntimeError):
        lock.release()


def test_lock_inside_handler_belongs_to_server_task(make_agent: Any, serve: Any, open_channel: Any) -> None:
    client, server = make_agent("client"), make_agent("server")
    lock = server.lock("ledger")
    seen: list[list[Any]] = []
    servicer = EchoServicer()

    def with_lock() -> None:
        with lock:
            seen.append(server.tasks())

    servicer.on_call = with_lock
    stub = EchoStub(open_channel(serve(servicer, server), client))
    assert stub.unary_unary(b"x", timeout=TIMEOUT) == b"x"
    ((task,),) = seen
    assert (task.kind, task.caller, task.held_locks) == ("server", client.process_id, ("ledger",))
    assert server.tasks() == []


def test_restarted_instance_gets_a_new_process_id() -> None:
    """Peers cache name tables by process id; a restart must not reuse one."""
    first = cutwatch.Agent("bank", instance_id="pod-7")
    again = cutwatch.Agent("bank", instance_id="pod-7")
    assert first.process_id.startswith("bank:pod-7.")
    assert again.process_id.startswith("bank:pod-7.")
    assert first.process_id != again.process_id
