"""The standard gRPC health service on a real collector: SERVING while it runs, NOT_SERVING from the
moment it stops or its store refuses writes; open to probes without a token, and nothing more."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from cutwatch.collector import CollectorAuthError, CollectorClient, CollectorServer
from cutwatch.collector._health import COLLECTOR_SERVICE
from cutwatch.security import CollectorCredentials, CollectorSecurity

TIMEOUT = 30.0
READER_TOKEN = "reader-token-0123456789abcdef"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[CollectorServer]:
    security = CollectorSecurity(
        agent_tokens=("agent-token-0123456789abcdef",), reader_tokens=(READER_TOKEN,)
    )
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", security=security).start()
    try:
        yield server
    finally:
        server.stop()


def check(address: str, service: str, metadata: tuple[tuple[str, str], ...] = ()) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=TIMEOUT)
        return int(reply.status)


def test_both_names_are_serving_and_others_are_not_found(collector: CollectorServer) -> None:
    assert check(collector.address, "") == SERVING
    assert check(collector.address, COLLECTOR_SERVICE) == SERVING
    assert COLLECTOR_SERVICE == "cutwatch.v1.Collector"
    with pytest.raises(grpc.RpcError) as caught:
        check(collector.address, "cutwatch.v1.Secret")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_check_needs_no_token_while_queries_and_watch_still_do(secured: CollectorServer) -> None:
    assert check(secured.address, "") == SERVING
    assert check(secured.address, COLLECTOR_SERVICE) == SERVING
    with CollectorClient(secured.address, timeout=TIMEOUT) as client, pytest.raises(CollectorAuthError):
        client.list_cuts()
    reader = CollectorCredentials(token=READER_TOKEN)
    with CollectorClient(secured.address, timeout=TIMEOUT, credentials=reader) as client:
        assert client.list_cuts() == []
    # Watch holds a stream (it counts against the server's bound on calls): readers only.
    with grpc.insecure_channel(secured.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            next(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        watch = stub.Watch(
            health_pb2.HealthCheckRequest(service=""),
            metadata=(("authorization", f"Bearer {READER_TOKEN}"),),
            timeout=TIMEOUT,
        )
        try:
            assert next(watch).status == SERVING
        finally:
            watch.cancel()


def test_an_unwritable_store_turns_the_collector_not_serving_but_not_the_process(
    collector: CollectorServer,
) -> None:
    collector.health.store(False)
    assert check(collector.address, COLLECTOR_SERVICE) == NOT_SERVING
    assert check(collector.address, "") == SERVING
    collector.health.store(True)
    assert check(collector.address, COLLECTOR_SERVICE) == SERVING


def test_a_watcher_sees_not_serving_when_the_collector_stops(tmp_path: Path) -> None:
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0").start()
    stopper = threading.Thread(target=server.stop)
    stopping = False
    try:
        with grpc.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=COLLECTOR_SERVICE), timeout=TIMEOUT
            )
            try:
                assert next(watch).status == SERVING
                stopper.start()
                stopping = True
                assert next(watch).status == NOT_SERVING
            finally:
                watch.cancel()
    finally:
        if stopping:
            stopper.join(TIMEOUT)
        else:
            server.stop()
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as caught:
        check(server.address, "")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_without_the_collector_extra_the_collector_runs_and_says_probes_need_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """grpcio-health-checking is not in the base install: its absence costs the health service only."""
    from cutwatch.collector import _health

    for name in ("health", "health_pb2", "health_pb2_grpc"):
        monkeypatch.setattr(_health, name, None)
    with caplog.at_level("INFO", logger="cutwatch.collector"):
        server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0").start()
    try:
        assert not server.health.available
        assert any('pip install "cutwatch[collector]"' in r.getMessage() for r in caplog.records)
        server.health.store(False)  # the upkeep's calls still work, and change nothing
        with pytest.raises(grpc.RpcError) as caught:
            check(server.address, "")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with CollectorClient(server.address, timeout=TIMEOUT) as client:
            assert client.list_cuts() == []
    finally:
        server.stop()
