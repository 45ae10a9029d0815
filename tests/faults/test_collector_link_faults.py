"""Agents' control streams through a faulty network: the application never notices, cuts stay honest.

Four ledgers move money between each other while the collector takes a
snapshot every 150 ms; each agent reaches the collector through its own
proxy link. After a fault-free window, one fault runs on the links: added
latency, a rate limit, periodic resets, or clogs of one agent after another
restored in another order (every choice seeded). Whatever the fault: no
transfer fails, every snapshot ends (COMPLETE or INCOMPLETE) within its
timeout and a margin, nothing stays in progress, and every COMPLETE cut
holds every process, conserves the money and passes the vector-clock check.
Application latency is printed next to the fault-free window's, never
asserted (see benchmarks/fault_injection.py).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cutwatch.collector import Cut, InTransitMessage
from faults.cluster import FAULTS, LATENCY, Bank, consistency_errors, no_fault
from faults.proxy import FaultProxy

SEED = 7
WARM_UP = 0.3
FAULT_FREE = 2.5
FAULTED = 3.2
"""Clogs: 0.4 s between steps, so the first link stays clogged 1.6 s or more, past the snapshot timeout."""
SNAPSHOT_TIMEOUT = 1.0
MARGIN = 5.0
"""How late past its deadline a snapshot may end: the collector checks deadlines every 50 ms; load."""


@pytest.fixture
def bank(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Bank]:
    seed = SEED + list(FAULTS).index(request.node.callspec.params["scenario"])
    with Bank(tmp_path, seed=seed, snapshot_timeout=SNAPSHOT_TIMEOUT) as made:
        yield made
    assert not any(t.name == "fault-proxy" for t in threading.enumerate()), "the proxy's thread outlived it"


@pytest.mark.parametrize("scenario", list(FAULTS))
def test_faults_on_the_control_links_break_neither_the_application_nor_a_cut(
    bank: Bank, scenario: str
) -> None:
    bank.start()
    bank.run("warm-up", no_fault, WARM_UP)
    bank.run("fault-free", no_fault, FAULT_FREE)
    before = [link.stats() for link in bank.links]
    bank.run(scenario, FAULTS[scenario], FAULTED)
    during = [link.stats() for link in bank.links]
    bank.recover()  # every agent back, and a COMPLETE cut after the fault
    bank.stop()
    figures = bank.figures()
    assert bank.app is not None
    app = bank.app.results()
    clean, faulted = figures["fault-free"], figures[scenario]
    ratio = faulted.p(0.5) / clean.p(0.5) if clean.latencies else float("nan")
    print(
        f"\n{scenario} (seed {bank.seed}): transfer p50 {faulted.p(0.5):.2f} ms vs {clean.p(0.5):.2f} ms "
        f"fault-free (x{ratio:.2f}), p99 {faulted.p(0.99):.2f} vs {clean.p(0.99):.2f} ms; snapshots "
        f"{faulted.complete} COMPLETE, {faulted.incomplete} INCOMPLETE of {faulted.started}, longest "
        f"{faulted.max_terminal:.2f} s; registrations {app.connects}"
    )

    assert app.failures == [], app.failures[:5]
    assert clean.calls > 0 and faulted.calls > 0
    assert bank.client.status()["running"] == []
    for name, window in figures.items():
        assert window.started == window.complete + window.incomplete, (name, window.reasons)
        assert window.max_terminal <= SNAPSHOT_TIMEOUT + MARGIN, name
        assert window.inconsistent == [], (name, window.inconsistent[:5])
        assert window.partial == [], (name, window.partial[:5])
    assert clean.complete > 0, clean.reasons
    assert bank.collector.coordinator.stats().rejected == 0

    # The fault really happened, and did what it says.
    if scenario == "latency":
        # Order down, local snapshot up, flush down, marker up: four crossings at least (the median:
        # a snapshot started just before the links were restored has fewer).
        assert faulted.complete > 0
        assert faulted.median_complete >= 4 * LATENCY * 0.95, faulted.complete_durations
    elif scenario == "throttle":
        assert all(d.delayed > b.delayed for b, d in zip(before, during, strict=True)), during
    elif scenario == "reset":
        assert all(d.resets > b.resets for b, d in zip(before, during, strict=True)), during
        assert all(n >= 2 for n in app.connects), app.connects
    else:
        assert faulted.incomplete > 0, "clogged links held no snapshot up"
        assert any("no local snapshot" in r for r in faulted.reasons), faulted.reasons


def _echo_server() -> tuple[socket.socket, str]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    return server, f"127.0.0.1:{server.getsockname()[1]}"


def _round_trip(conn: socket.socket, data: bytes) -> float:
    started = time.monotonic()
    conn.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = conn.recv(65536)
        assert chunk, "the proxy closed the connection"
        got += chunk
    assert got == data
    return time.monotonic() - started


def test_the_proxy_delays_paces_holds_and_resets() -> None:
    server, upstream = _echo_server()
    try:
        with FaultProxy() as proxy:
            link = proxy.link(upstream)
            host, port = link.address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=30) as conn:
                _round_trip(conn, b"hello")
                link.latency(0.1)
                assert _round_trip(conn, b"x") >= 0.19  # 0.1 s each way
                link.restore()
                link.throttle(20_000)
                assert _round_trip(conn, b"y" * 10_000) >= 0.45  # 10 kB at 20 kB/s, both ways at once
                link.restore()
                link.clog()
                conn.sendall(b"held")
                conn.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    conn.recv(16)
                conn.settimeout(30)
                link.restore()
                assert conn.recv(16) == b"held"  # held, not lost
                assert link.reset() == 1
                with pytest.raises(ConnectionResetError):
                    conn.recv(16)
            with socket.create_connection((host, int(port)), timeout=30) as again:
                _round_trip(again, b"still serving")
            stats = link.stats()
            assert (stats.connections, stats.resets) == (2, 1)
            assert (
                stats.bytes[0]
                == stats.bytes[1]
                == len(b"hello" + b"x" + b"y" * 10_000 + b"held" + b"still serving")
            )
            assert stats.delayed > 0
    finally:
        server.close()
    assert not any(t.name == "fault-proxy" for t in threading.enumerate())


def test_the_cut_check_catches_what_it_is_for() -> None:
    def cut(balances: dict[str, int], clocks: dict[str, dict[str, int]], moving: int = 0) -> Cut:
        transit = (InTransitMessage("a", "b", "/ledger.Ledger/Credit", "request", 1, 0, {"amount": moving}),)
        return Cut(
            epoch=1,
            status="COMPLETE",
            started=0.0,
            finished=0.0,
            states={p: {"service": "ledger", "state": {"balance": n}} for p, n in balances.items()},
            in_transit=transit if moving else (),
            clocks=clocks,
        )

    good = {"a": {"a": 3}, "b": {"a": 2, "b": 5}}
    assert consistency_errors(cut({"a": 90, "b": 105}, good, moving=5), 200) == []
    assert consistency_errors(cut({"a": 90, "b": 105}, good), 200) == ["cut 1 holds 195, not 200"]
    # b knows a's fourth event, but a's cut is at its third: b's state depends on a future of a.
    ahead = cut({"a": 95, "b": 105}, {"a": {"a": 3}, "b": {"a": 4, "b": 5}})
    assert consistency_errors(ahead, None) == ["cut 1: b knows a's event 4, a's cut is at 3"]
