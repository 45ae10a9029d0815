"""Zero-code setup, end to end: ``opentelemetry-instrument`` runs an app that never imports cutwatch.

examples/zero_code.py is a plain gRPC server and client. Each runs in a process
of its own under the real ``opentelemetry-instrument`` command, configured by
the environment only, next to opentelemetry-instrumentation-grpc; a collector in
this process must see both agents register, and a snapshot must be COMPLETE
with clocks that show the stamps travelled both ways.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until
from processes import START_TIMEOUT, Proc, stop_all

from cutwatch.collector import CollectorClient, CollectorServer

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "zero_code.py"
OTEL_INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
HAS_DISTRO = importlib.util.find_spec("opentelemetry.distro") is not None
TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(
    not OTEL_INSTRUMENT.exists(), reason="opentelemetry-instrument is not installed"
)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorServer]:
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        stop_all(started)


def run_app(tmp: Path, procs: list[Proc], service: str, collector: str, *args: str) -> Proc:
    """``opentelemetry-instrument python examples/zero_code.py ARGS``, configured as a deployment is."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CUTWATCH_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        CUTWATCH_SERVICE=service,
        CUTWATCH_COLLECTOR=collector,
        # The distro's console exporter shows that OpenTelemetry's own gRPC instrumentation
        # ran too; nothing goes to the network.
        OTEL_TRACES_EXPORTER="console" if HAS_DISTRO else "none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="100",
        PYTHONUNBUFFERED="1",
    )
    log = tmp / f"{service}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [str(OTEL_INSTRUMENT), sys.executable, str(APP), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=env,
        )
    proc = Proc(service, popen, log)
    procs.append(proc)
    return proc


def wait_for_line(proc: Proc, prefix: str) -> str:
    def found() -> str | None:
        assert proc.alive(), proc.tail()
        lines = proc.log.read_text(errors="replace").splitlines()
        return next((line for line in lines if line.startswith(prefix)), None)

    line: str = wait_until(found, f"{proc.name} to print {prefix!r}", START_TIMEOUT, 0.1)
    return line


@pytest.mark.parametrize(
    ("server_args", "client_args"),
    [((), ("--aio",)), (("--aio",), ())],
    ids=["sync-server-aio-client", "aio-server-sync-client"],
)
def test_an_unmodified_app_under_opentelemetry_instrument_takes_part_in_cuts(
    tmp_path: Path,
    collector: CollectorServer,
    procs: list[Proc],
    server_args: tuple[str, ...],
    client_args: tuple[str, ...],
) -> None:
    server = run_app(tmp_path, procs, "zc-echo", collector.address, "serve", *server_args)
    address = wait_for_line(server, "listening on ").split()[-1]
    caller = run_app(tmp_path, procs, "zc-caller", collector.address, "call", address, *client_args)
    wait_for_line(caller, "3 calls answered")

    with CollectorClient(collector.address) as client:

        def registered() -> dict[str, str] | None:
            agents = {a["service"]: a["process"] for a in client.status()["agents"]}
            return agents if {"zc-echo", "zc-caller"} <= set(agents) else None

        agents = wait_until(registered, "both apps' agents to register", TIMEOUT, 0.1)
        assert set(agents) == {"zc-echo", "zc-caller"}, "the collector's own traffic built an agent"
        cut = client.snapshot(timeout=TIMEOUT)

    echo, calling = agents["zc-echo"], agents["zc-caller"]
    assert cut.status == "COMPLETE"
    assert {echo, calling} <= set(cut.states)
    # Three calls, each stamped both ways: each process knows the other's events.
    assert cut.clocks[calling][echo] >= 3 * 2 - 1
    assert cut.clocks[echo][calling] >= 3 * 2 - 1
    assert cut.clocks[calling][calling] >= 3 * 2
    if HAS_DISTRO:  # OpenTelemetry's gRPC instrumentation ran too: it exported the server's spans
        wait_until(lambda: "/demo.Echo/Echo" in server.log.read_text(errors="replace"), "a server span")
    for proc in (server, caller):
        assert "Traceback" not in proc.log.read_text(errors="replace"), proc.tail()
