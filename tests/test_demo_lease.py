"""The demo's leader lease as real processes: the overlap no snapshot samples, and no false alarm.

Three ``cutwatch.demo.lease`` processes pass the lease around a ring while
a collector (in this process) loads ``cutwatch.demo.lease_invariants`` and
checks ``lease.one_leader`` on every cut and on every consistent cut
between two cuts. With the buggy handover (``Take`` first, step down when
it answers) the sampled cuts mostly hold and the lattice check finds two
leaders in every window the lease moved in; with ``--safe`` (step down
first) every window passes. Every process is ended at teardown, also when
a test fails; every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from polling import wait_until
from processes import START_TIMEOUT, Proc, spawn

from cutwatch.collector import CheckResult, CheckResults, CollectorClient, CollectorServer, Cut
from cutwatch.demo.lease_invariants import ONE_LEADER

LEASES = 3
SNAPSHOTS = 10
PAUSE = 0.2
HOLD_MS = 60
"""A little longer than the demo's: a sampled cut lands in a round trip more rarely, also when loaded."""
SNAPSHOT_TIMEOUT = 30.0
TEST_TIMEOUT = 240


@dataclass
class Ring:
    """A collector checking the lease invariant, and the lease processes it watches."""

    tmp: Path
    server: CollectorServer
    procs: list[Proc] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    """Each lease's name, by process id."""
    _channels: list[grpc.Channel] = field(default_factory=list)

    def start(self, *flags: str) -> None:
        """``LEASES`` lease processes (the first one leads), returning once the lease went round."""
        peers = self.tmp / "lease-peers.json"
        for i in range(1, LEASES + 1):
            command = [
                sys.executable,
                "-m",
                "cutwatch.demo.lease",
                f"--name=l{i}",
                f"--collector={self.server.address}",
                f"--ready-file={self.tmp / f'l{i}.ready'}",
                f"--peers-file={peers}",
                f"--hold-ms={HOLD_MS}",
                *(["--first"] if i == 1 else []),
                *flags,
            ]
            spawn(self.tmp, self.procs, f"l{i}", command)
        for i, proc in enumerate(self.procs, start=1):
            ready = self.tmp / f"l{i}.ready"

            def is_ready(proc: Proc = proc, ready: Path = ready) -> bool:
                assert proc.alive(), proc.tail()
                return ready.exists()

            wait_until(is_ready, f"{proc.name} to serve and register", START_TIMEOUT, 0.1)
            name, address, process = ready.read_text().split()
            self.addresses.append(address)
            self.names[process] = name
        partial = peers.with_name(peers.name + ".partial")
        partial.write_text(json.dumps(self.addresses))
        partial.replace(peers)
        wait_until(
            lambda: all(s["taken"] > 0 for s in self.stats()), "the lease to go round", START_TIMEOUT, 0.1
        )

    def stats(self) -> list[dict[str, Any]]:
        """Each lease's counters, from its Stats RPC (an uninstrumented call)."""
        if not self._channels:
            self._channels = [grpc.insecure_channel(address) for address in self.addresses]
        found = []
        for proc, channel in zip(self.procs, self._channels, strict=True):
            assert proc.alive(), proc.tail()
            stub = channel.unary_unary(
                "/lease.Lease/Stats",
                request_serializer=Struct.SerializeToString,
                response_deserializer=Struct.FromString,
            )
            found.append(MessageToDict(stub(Struct(), timeout=10.0)))
        return found

    def watch(self) -> list[tuple[Cut, CheckResult]]:
        """``SNAPSHOTS`` complete cuts, ``PAUSE`` apart, each with its ``lease.one_leader`` result."""
        checked: list[tuple[Cut, CheckResult]] = []
        with CollectorClient(self.server.address) as client:
            for _ in range(SNAPSHOTS):
                cut = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
                assert cut.complete, (cut.epoch, cut.reasons)
                assert len(cut.services()["lease"]) == LEASES
                epoch = cut.epoch

                def checked_yet(epoch: int = epoch) -> CheckResults | None:
                    return client.results(epoch, name=ONE_LEADER)

                results = wait_until(checked_yet, f"cut {epoch}'s check")
                assert results is not None and len(results.results) == 1, results
                checked.append((cut, results.results[0]))
                time.sleep(PAUSE)
        return checked

    def close(self) -> None:
        """End every lease with one SIGTERM each (SIGKILL after 20 s), then print their logs' tails.

        One signal only: a second one, landing while the first one's handler sets the stop event,
        would deadlock on the event's lock (``_process.service_process``), as stop_all's may."""
        for channel in self._channels:
            channel.close()
        for proc in self.procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
            print(proc.tail(15))  # shown by pytest when the test failed


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[Ring]:
    server = CollectorServer(
        tmp_path / "cuts.db", listen="127.0.0.1:0", predicates=["cutwatch.demo.lease_invariants"]
    ).start()
    ring = Ring(tmp_path, server)
    try:
        yield ring
    finally:
        ring.close()
        server.stop()


def leaders_at(cut: Cut) -> int:
    return sum(1 for p in cut.services()["lease"] if cut.state_of(p)["leader"] is True)


def top_term(cut: Cut) -> int:
    """The newest term any lease holds at ``cut``: it grows by one at each handover."""
    return max(int(cut.state_of(p)["term"]) for p in cut.services()["lease"])


def moved(cuts: dict[int, Cut], between: list[Any]) -> bool:
    """Whether the lease was handed over in the window ``between`` (``[bottom, top]`` epochs; every
    window of our cuts starts at one of them, or at the start of recording: None)."""
    bottom, top = between
    return bottom not in cuts or top_term(cuts[top]) > top_term(cuts[bottom])


@pytest.mark.timeout(TEST_TIMEOUT)
def test_sampled_cuts_mostly_hold_while_the_lattice_finds_two_leaders(ring: Ring) -> None:
    ring.start()
    checked = ring.watch()
    cuts = {cut.epoch: cut for cut, _ in checked}

    sampled_held = 0
    found = []
    for cut, result in checked:
        assert result.status in ("PASS", "FAIL"), (result.status, result.message)
        sampled = result.witness["cut"]["holds"]
        assert sampled is (leaders_at(cut) <= 1), (cut.epoch, result.witness["cut"])
        sampled_held += sampled
        window = result.witness["window"]
        assert window["between"][1] == cut.epoch and window["decided_by"]
        if moved(cuts, window["between"]):
            # A handover in the window: the new leader's change and the old one's step-down are
            # concurrent with the answer, so some consistent cut holds both.
            assert window["possibly"] is True, (cut.epoch, result.message, window)
        if window["possibly"]:
            assert result.status == "FAIL"
            found.append(result)
    assert sampled_held * 2 >= len(checked), f"only {sampled_held} of {len(checked)} sampled cuts held"
    assert len(found) >= len(checked) // 2, [r.message for _, r in checked]

    # A window the snapshots missed: its top cut held, some consistent cut before it did not.
    first = next(r for r in found if r.witness["cut"]["holds"])
    assert "consistent cut no snapshot sampled" in first.message
    frontier = first.witness["window"]["witness"]["frontier"]
    assert set(frontier) <= set(ring.names)
    leaders = {p: at for p, at in frontier.items() if at["values"].get("leader") is True}
    assert len(leaders) >= 2, frontier
    # The cut is consistent, as the clocks say: of two leaders, one took the lease after seeing the
    # other's change, and the other had not yet seen the first one's.
    pairs = [
        (new, old)
        for new in leaders
        for old in leaders
        if new != old
        and leaders[new]["clock"].get(old, 0) >= leaders[old]["clock"][old]
        and leaders[old]["clock"].get(new, 0) < leaders[new]["clock"][new]
    ]
    assert pairs, leaders
    assert all(ring.stats()[i]["failed"] == 0 for i in range(LEASES))


@pytest.mark.timeout(TEST_TIMEOUT)
def test_the_safe_handover_passes_every_window(ring: Ring) -> None:
    ring.start("--safe")
    checked = ring.watch()
    cuts = {cut.epoch: cut for cut, _ in checked}
    for cut, result in checked:
        assert result.status == "PASS", (cut.epoch, result.message, result.witness)
        assert leaders_at(cut) <= 1
        window = result.witness["window"]
        assert window["possibly"] is False and window["decided_by"], window
    handovers = sum(1 for _, r in checked if moved(cuts, r.witness["window"]["between"]))
    assert handovers >= len(checked) // 2, "the lease hardly moved: the test checked nothing"
