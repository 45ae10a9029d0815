"""Lattice invariants through a real collector and real gRPC: the violation between two snapshots.

Two processes of a ``lease`` service pass a lease with a ``Take`` RPC. The
unsafe handover (the new leader starts in the handler, the old one steps
down when the answer comes back) has two leaders for a round trip: no
snapshot taken before or after sees it, the lattice check of the window
between them must, with the consistent cut where it happens. The safe
handover (step down first) must pass.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cli_runner import cli_runner
from google.protobuf.struct_pb2 import Struct
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from polling import wait_until

import cutwatch
from cutwatch.cli import main as cli_main
from cutwatch.collector import CheckResult, CollectorClient, CollectorServer
from cutwatch.core import PredicateLoadError

TIMEOUT = 30.0
TAKE = "/lease.Lease/Take"
NAME = "lease.one_leader"

PREDICATES = textwrap.dedent(
    """
    from cutwatch.predicates import count, invariant

    @invariant("lease.one_leader", lattice=True)
    def one_leader(cut):
        return count(cut.values("leader", service="lease")) <= 1
    """
)


class Lease:
    """One process holding (or not) the lease, recording ``leader`` for lattice invariants."""

    def __init__(
        self, name: str, collector: str, leader: bool, *, record: bool = True, **options: Any
    ) -> None:
        self.agent = cutwatch.Agent("lease", collector=collector, instance_id=name, **options).start()
        self.leader = leader
        self.agent.register_state("leader", lambda: self.leader, record=record)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2),
            interceptors=[self.agent.server_interceptor(max_workers=2)],
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self._take, request_deserializer=Struct.FromString, response_serializer=Struct.SerializeToString
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("lease.Lease", {"Take": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channels: list[grpc.Channel] = []

    def _take(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        with self.agent.atomic():
            self.leader = True
        return Struct()

    def hand_over(self, to: Lease, *, safe: bool) -> None:
        channel = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{to.port}"), self.agent.client_interceptor()
        )
        self.channels.append(channel)
        take = channel.unary_unary(
            TAKE, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString
        )
        if safe:
            with self.agent.atomic():
                self.leader = False
            take(Struct(), timeout=TIMEOUT)
        else:
            take(Struct(), timeout=TIMEOUT)
            with self.agent.atomic():
                self.leader = False

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop(None)
        self.agent.close()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorServer]:
    path = tmp_path / "lease_checks.py"
    path.write_text(PREDICATES)
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", predicates=[str(path)]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def leases(collector: CollectorServer) -> Iterator[list[Lease]]:
    made: list[Lease] = []
    try:
        yield made
    finally:
        for lease in made:
            lease.close()


def _result(client: CollectorClient, epoch: int) -> CheckResult:
    checked = client.results(epoch, name=NAME)
    assert checked is not None and len(checked.results) == 1, checked
    return checked.results[0]


def _snapshot(client: CollectorClient) -> int:
    cut = client.snapshot(timeout=TIMEOUT)
    assert cut.status == "COMPLETE", cut.reasons
    return cut.epoch


def _start(collector: CollectorServer, leases: list[Lease], **options: Any) -> tuple[Lease, Lease]:
    a = Lease("a", collector.address, True, **options)
    leases.append(a)
    b = Lease("b", collector.address, False, **options)
    leases.append(b)
    assert a.agent.wait_registered(TIMEOUT) and b.agent.wait_registered(TIMEOUT)
    return a, b


def test_the_overlap_between_two_snapshots_is_found_with_the_cut_where_it_happens(
    collector: CollectorServer, leases: list[Lease], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr("cutwatch.collector._checks.trace.get_tracer", provider.get_tracer)
    a, b = _start(collector, leases)
    with CollectorClient(collector.address) as client:
        first = _snapshot(client)
        assert _result(client, first).status == "PASS"
        a.hand_over(b, safe=False)
        second = _snapshot(client)
        result = _result(client, second)
    assert result.status == "FAIL", result.message
    witness = result.witness
    assert witness["cut"]["holds"] is True, "the snapshot itself sees one leader: sampling misses it"
    window = witness["window"]
    assert window["possibly"] is True and window["between"] == [first, second]
    assert window["decided_by"]
    frontier = window["witness"]["frontier"]
    assert {p: at["values"]["leader"] for p, at in frontier.items()} == {
        a.agent.process_id: True,
        b.agent.process_id: True,
    }
    # The cut is consistent: b's change saw a's request, and a's side is before a stepped down.
    b_clock = frontier[b.agent.process_id]["clock"]
    assert b_clock.get(a.agent.process_id, 0) >= 1
    assert "consistent cut no snapshot sampled" in result.message

    printed = cli_runner().invoke(
        cli_main, ["check", "--collector", collector.address, "--epoch", str(second)]
    )
    assert printed.exit_code == 1, printed.output
    assert "FAIL   lease.one_leader" in printed.output
    assert "the consistent cut where it fails" in printed.output
    witness_lines = [line for line in printed.output.splitlines() if "leader=true" in line]
    assert len(witness_lines) == 2 and any(b.agent.process_id in line for line in witness_lines)

    # Exported like every failed check: one span, the witness cut in its event.
    def exported() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.name == f"cutwatch {NAME}"]

    wait_until(exported, "the failed check's span")
    (span,) = exported()
    assert span.attributes is not None and span.attributes["cutwatch.epoch"] == second
    (event,) = span.events
    assert event.attributes is not None and '"possibly": true' in str(event.attributes["witness"])


def test_the_safe_handover_passes_every_window(collector: CollectorServer, leases: list[Lease]) -> None:
    a, b = _start(collector, leases)
    with CollectorClient(collector.address) as client:
        _snapshot(client)
        a.hand_over(b, safe=True)
        b.hand_over(a, safe=True)
        epoch = _snapshot(client)
        result = _result(client, epoch)
    assert result.status == "PASS", result.message
    assert result.witness["window"]["possibly"] is False


def test_a_process_that_does_not_record_makes_the_window_unknown_not_passing(
    collector: CollectorServer, leases: list[Lease]
) -> None:
    a, b = _start(collector, leases, record=False)
    with CollectorClient(collector.address) as client:
        a.hand_over(b, safe=False)
        result = _result(client, _snapshot(client))
    assert result.status == "INCONCLUSIVE", result.message
    assert "record=True" in result.message


def test_changes_dropped_at_a_full_agent_buffer_make_the_window_unknown(
    collector: CollectorServer, leases: list[Lease]
) -> None:
    a, b = _start(collector, leases, max_recorded_events=2)
    with CollectorClient(collector.address) as client:
        _snapshot(client)
        for _ in range(3):
            a.hand_over(b, safe=False)
            b.hand_over(a, safe=False)
        result = _result(client, _snapshot(client))
    assert result.status in ("INCONCLUSIVE", "FAIL"), result.message
    window = result.witness["window"]
    if result.status == "INCONCLUSIVE":
        assert window["possibly"] is None and "changes_dropped" in window["reason"]
    else:  # a violation found in what did arrive is still a violation
        assert window["possibly"] is True
    assert a.agent.stats().changes_dropped + b.agent.stats().changes_dropped > 0
    with CollectorClient(collector.address) as client:
        checks = client.status()["checks"]
    assert checks["changes_dropped"] == 0 and checks["changes_waiting"] >= 0, checks


def test_a_lattice_invariant_outside_the_subset_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text(
        textwrap.dedent(
            """
            from cutwatch.predicates import invariant

            @invariant("lease.bad", lattice=True)
            def bad(cut):
                a, b = cut.values("leader", service="lease")[:2]
                return not (a and b)
            """
        )
    )
    with pytest.raises(PredicateLoadError) as info:
        CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", predicates=[str(path)])
    assert info.value.source.endswith("bad.py") and info.value.line
    assert "symbolic subset" in str(info.value)
