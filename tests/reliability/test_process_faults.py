"""Faults hitting real processes at chosen moments of a snapshot: kills, crashes and a lost collector.

Every process is a real OS process (a ``cutwatch collector`` and banks from
``fault_bank.py``, which move money between each other all the time). The
moment of each fault is made certain by the banks' state providers, which
the test drives with trigger files: one sleeps inside a snapshot, one kills
its own process right after its local snapshot left. No assertion is about
speed; every wait is bounded and generous, and every process is stopped at
teardown, also when a test fails. Each test prints its figures (failures,
time to a terminal state, memory, drops); pytest shows them with ``-s``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from bank_cluster import Bank, BankCluster
from polling import wait_until

from cutwatch import CollectorClient, Cut
from cutwatch.collector import CollectorError
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc
from reliability.partition import Partition

SERVICE_SCRIPT = Path(__file__).resolve().parent / "fault_bank.py"
INITIAL = 1000
SNAPSHOT_TIMEOUT = 30.0
REJOIN_GRACE = 2.0
"""The collector's ``--rejoin-grace`` where a test needs a dead process forgotten soon."""
REASON_DISCONNECTED = "disconnected from the collector"
REASON_EVENTS_LOST = "events lost on the way to the collector"
REASON_UNREGISTERED = "took part without being registered"


class Cluster(BankCluster):
    """Collectors and fault banks (``fault_bank.py``)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.triggers = tmp / "triggers"
        self.triggers.mkdir()

    def start_banks(self, collectors: dict[str, str], **flags: dict[str, str]) -> list[Bank]:
        """One bank per ``name: collector address``, peered with each other and transferring."""
        commands: dict[str, list[str]] = {}
        for i, (name, collector) in enumerate(collectors.items(), start=1):
            command = [
                sys.executable,
                str(SERVICE_SCRIPT),
                f"--name={name}",
                f"--collector={collector}",
                f"--ready-file={self.tmp / (name + '.ready')}",
                f"--peers-file={self.peers_file}",
                f"--trigger-dir={self.triggers}",
                f"--initial={INITIAL}",
                f"--seed={i}",
                *(f"--{key}={value}" for key, value in flags.get(name, {}).items()),
            ]
            commands[name] = command
        return self.start(commands)

    def stats(self, bank: Bank) -> dict[str, Any]:
        """The bank's counters and its agent's stats (``faults.Probe/Stats``, an uninstrumented call)."""
        doc: dict[str, Any] = json.loads(str(self.call(bank, "/faults.Probe/Stats", 20.0)["json"]))
        return doc

    def trigger(self, bank: Bank, kind: str, value: float) -> None:
        """Arm one of the bank's hooks (see ``fault_bank.py``)."""
        path = self.triggers / f"{bank.name}.{kind}"
        partial = path.with_name(path.name + ".partial")
        partial.write_text(f"{value}\n")
        partial.replace(path)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


def money(cut: Cut) -> int:
    """Balances plus the Credit requests in transit: the same in every complete cut."""
    credits = [
        int(m.payload["amount"])
        for m in cut.in_transit
        if m.kind == "request" and m.method.endswith("/Credit")
    ]
    return sum(int(cut.state_of(p)["balance"]) for p in cut.states) + sum(credits)


def assert_complete_and_conserving(cut: Cut, banks: list[Bank]) -> None:
    assert cut.complete, (cut.epoch, cut.reasons, cut.missing)
    assert set(cut.states) == {bank.process_id for bank in banks}
    assert money(cut) == len(banks) * INITIAL, (cut.epoch, cut.dumps())


def names(cut_or_info: Any, process: str) -> bool:
    """Whether a cut lists ``process`` as missing or in one of its reasons."""
    return process in cut_or_info.missing or any(process in reason for reason in cut_or_info.reasons)


def report(title: str, **figures: Any) -> None:
    """A test's figures, on one line (shown with ``-s``, or when the test fails)."""
    print(f"[{title}] " + ", ".join(f"{key}={value}" for key, value in figures.items()))


def test_collector_killed_mid_snapshot_then_restarted(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "cuts.db"
    collector, address = cluster.start_collector(db)
    banks = cluster.start_banks({"b1": address, "b2": address, "b3": address})
    slow = banks[0]

    def take_and_lose(result: dict[str, BaseException]) -> None:
        try:
            with CollectorClient(address) as client:
                client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        except CollectorError as exc:  # the collector dies under it
            result["error"] = exc

    with CollectorClient(address) as client:
        before = [client.snapshot(timeout=SNAPSHOT_TIMEOUT) for _ in range(3)]
        for cut in before:
            assert_complete_and_conserving(cut, banks)
        stored = {}
        for info in client.list_cuts(limit=1000):
            cut = client.get(info.epoch)
            assert cut is not None
            stored[info.epoch] = cut.to_json()
        # b1's state provider sleeps 4 s inside the next snapshot: the kill surely lands in it.
        cluster.trigger(slow, "slow", 4.0)
        lost: dict[str, BaseException] = {}
        taker = threading.Thread(target=take_and_lose, args=(lost,), daemon=True)
        taker.start()
        wait_until(lambda: (cluster.triggers / "b1.inside").exists(), "b1 inside its slow state provider")
        running = client.status()["running"]
    assert len(running) == 1
    interrupted = running[0]
    collector.kill()
    killed = time.monotonic()
    taker.join(SNAPSHOT_TIMEOUT)
    assert not taker.is_alive() and "error" in lost

    # The banks keep working without their collector (b1 once its provider is done).
    ok = [cluster.stats(bank)["transfers_ok"] for bank in banks]
    wait_until(
        lambda: all(cluster.stats(b)["transfers_ok"] > n + 10 for b, n in zip(banks, ok, strict=True)),
        "transfers while the collector is down",
    )

    _, again = cluster.start_collector(db, address)
    restarted = time.monotonic()
    assert again == address
    with CollectorClient(address) as client:
        wait_until(lambda: len(client.status()["agents"]) == len(banks), "the banks to register again")
        registered = time.monotonic()
        after: list[Cut] = []
        while not (after and after[-1].complete) and len(after) < 5:
            after.append(client.snapshot(timeout=SNAPSHOT_TIMEOUT))
        first_complete = time.monotonic()
        after += [client.snapshot(timeout=SNAPSHOT_TIMEOUT) for _ in range(2)]
        reread = {epoch: client.get(epoch) for epoch in stored}
        again_interrupted = client.get(interrupted)
        listed = client.list_cuts(limit=1000)
        status = client.status()

    # Only an agent joining in the middle of the first snapshot may keep it from being complete.
    for cut in after[:-3]:
        assert cut.status == "INCOMPLETE" and any(REASON_UNREGISTERED in r for r in cut.reasons), cut.reasons
    for cut in after[-3:]:
        assert_complete_and_conserving(cut, banks)
    assert all(cut.epoch > interrupted for cut in after)
    assert [cut.epoch for cut in after] == sorted({cut.epoch for cut in after})
    # The interrupted epoch was never stored (a crash leaves no trace of it), so never as COMPLETE.
    assert again_interrupted is None
    assert not [info for info in listed if info.epoch == interrupted and info.status == "COMPLETE"]
    for epoch, doc in stored.items():
        cut = reread[epoch]
        assert cut is not None and cut.to_json() == doc
    assert status["stats"]["rejected"] == 0
    probes = [cluster.stats(bank) for bank in banks]
    assert all(p["transfers_failed"] == 0 for p in probes), probes
    report(
        "collector SIGKILL mid-snapshot",
        interrupted_epoch=interrupted,
        first_epochs_after=[c.epoch for c in after],
        incomplete_after_restart=len(after) - 3,
        down_s=round(restarted - killed, 2),
        reregistered_s=round(registered - restarted, 2),
        first_complete_after_restart_s=round(first_complete - restarted, 2),
        transfers_ok=sum(p["transfers_ok"] for p in probes),
        transfers_failed=0,
    )


def test_agent_killed_between_its_local_snapshot_and_its_flush_marker(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A process whose stream broke is expected back for the rejoin grace (snapshots meanwhile are
    # INCOMPLETE, naming it); a short one here, so that the survivors' next cut may be COMPLETE.
    db = tmp_path / "cuts.db"
    _, address = cluster.start_collector(db, "127.0.0.1:0", "--rejoin-grace", f"{REJOIN_GRACE}s")
    banks = cluster.start_banks({"b1": address, "b2": address, "b3": address})
    slow, _, victim = banks
    survivors = banks[:2]
    with CollectorClient(address) as client:
        assert_complete_and_conserving(client.snapshot(timeout=SNAPSHOT_TIMEOUT), banks)
        # b1 holds the next snapshot's local snapshots up for 4 s, so no flush is asked for yet;
        # b3 kills itself 0.5 s after its local snapshot left (and once it is on the wire).
        cluster.trigger(slow, "slow", 4.0)
        cluster.trigger(victim, "kill", 0.5)
        started = time.monotonic()
        cut = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        ended = time.monotonic() - started
        assert victim.proc.popen.wait(30) == -signal.SIGKILL

        assert cut.status == "INCOMPLETE"
        # The victim's local snapshot was in (it died after it), the slow one's not yet (no flush asked).
        assert victim.process_id in cut.states, (cut.states.keys(), cut.reasons)
        assert slow.process_id in cut.missing, (cut.missing, cut.reasons)
        assert names(cut, victim.process_id), (cut.missing, cut.reasons)
        assert any(REASON_DISCONNECTED in r and victim.process_id in r for r in cut.reasons), cut.reasons

        # The survivors drop the dead peer at their first failed Credit to it; the next snapshot fences
        # those failed calls, so nothing of the victim holds a cut open.
        for bank in survivors:
            wait_until(
                lambda bank=bank: cluster.stats(bank)["peers_alive"] == len(survivors) - 1,
                f"{bank.name} to drop the dead peer",
            )
        wait_until(lambda: not client.status()["absent"], "the collector to stop expecting the victim back")
        nxt = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        status = client.status()
    assert nxt.complete, (nxt.reasons, nxt.unsettled)
    assert nxt.epoch > cut.epoch
    assert set(nxt.states) == {bank.process_id for bank in survivors}
    assert all(victim.process_id not in (m.sender, m.receiver) for m in nxt.in_transit)
    assert status["stats"]["rejected"] == 0
    probes = [cluster.stats(bank) for bank in survivors]
    # Between the survivors nothing failed; only calls to the dead bank did.
    for p in probes:
        assert set(p["failed_by_peer"]) <= {victim.address}, p["failed_by_peer"]
        assert p["transfers_ok"] > 0
    report(
        "agent SIGKILL before its flush marker",
        epoch=cut.epoch,
        terminal_after_s=round(ended, 2),
        reasons=list(cut.reasons),
        next_epoch=nxt.epoch,
        next_status=nxt.status,
        failed_to_victim=sum(sum(p["failed_by_peer"].values()) for p in probes),
        failed_between_survivors=0,
    )


class SnapshotFiring:
    """Starts a snapshot every ``every`` seconds without waiting for it, until stopped."""

    def __init__(self, address: str, every: float, timeout: float) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.CollectorStub(self._channel)  # type: ignore[no-untyped-call]
        self._every = every
        self._timeout = timeout
        self._stop = threading.Event()
        self._calls: list[grpc.Future[pb.CutReply]] = []
        self._thread = threading.Thread(target=self._run, name="snapshot-firing", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            request = pb.SnapshotRequest(timeout_seconds=self._timeout)
            self._calls.append(self._stub.Snapshot.future(request, timeout=self._timeout + 30.0))

    def stop(self) -> int:
        """Stop starting snapshots and wait for the ones started; returns how many were started."""
        self._stop.set()
        self._thread.join(10.0)
        for call in self._calls:
            # A snapshot that failed (the collector away, say) is not the point here.
            with contextlib.suppress(grpc.RpcError):
                call.result()
        return len(self._calls)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10.0)
        for call in self._calls:
            call.cancel()
        self._channel.close()


EVENT_QUEUE = 1000
EVENT_QUEUE_BYTES = 1024 * 1024
PAD = 600_000
"""Bytes of state in each of A's local snapshots while it is cut off: a few fill its queue's byte cap."""
GIANT = 1_500_000
"""A state bigger than A's whole queue: its local snapshot is dropped even while A is connected."""
STRETCH = 8.0
"""Seconds A stays cut off at least after its queue is full."""
RSS_SLACK = 6 * 1024 * 1024
"""How much A's resident memory may move while its queue is full (allocator noise): far below its drops."""


def test_agent_cut_off_from_the_collector_keeps_its_memory_and_counts_every_drop(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # glibc gives every thread that allocates a large block an arena of its own and keeps each
    # arena's high-water mark; A's heavy states are built by whichever server thread takes the
    # snapshot, so without a cap on arenas A's RSS climbs one state per thread, whatever the queue
    # holds. Two arenas keep that allocator effect out of the figure measured here.
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    _, address = cluster.start_collector(tmp_path / "cuts.db", "127.0.0.1:0", "--snapshot-timeout", "3s")
    with Partition(address) as partition:
        flags = {
            "event-queue": str(EVENT_QUEUE),
            "event-queue-bytes": str(EVENT_QUEUE_BYTES),
            "max-state-bytes": str(4 * 1024 * 1024),
        }
        a, b = cluster.start_banks({"a": partition.address, "b": address}, a=flags)
        firing = SnapshotFiring(address, every=0.25, timeout=3.0)
        try:
            _cut_off_and_back(cluster, partition, firing, a, b, address)
        finally:
            firing.close()


def _cut_off_and_back(
    cluster: Cluster, partition: Partition, firing: SnapshotFiring, a: Bank, b: Bank, address: str
) -> None:
    pid = a.proc.popen.pid
    with CollectorClient(address) as client:
        wait_until(
            lambda: sum(1 for i in client.list_cuts("COMPLETE", limit=100) if i.processes == 2) >= 3,
            "complete cuts of both banks",
        )
        # Cut A off; B keeps taking snapshots and its stamped Credits force A to take its own.
        cluster.trigger(a, "pad", PAD)
        partition.cut()
        cut_at = time.time()  # every snapshot started from now on needs A, which cannot deliver
        samples: list[tuple[float, int, dict[str, Any]]] = []

        def sample() -> dict[str, Any]:
            stats: dict[str, Any] = cluster.stats(a)["agent"]
            samples.append((time.monotonic(), psutil.Process(pid).memory_info().rss, stats))
            return stats

        def dropped_bytes() -> int:
            """The state A dropped since its queue was full: every local snapshot since (none fits in)."""
            return (samples[-1][2]["snapshots_taken"] - samples[full][2]["snapshots_taken"]) * PAD

        wait_until(lambda: sample()["collector_events_dropped"] > 0, "A's queue to overflow", 60.0, 0.25)
        full = len(samples) - 1
        # Stay cut off for a while, and until A has dropped far more than the memory it may move by.
        end = time.monotonic() + STRETCH
        while time.monotonic() < end or dropped_bytes() < 3 * RSS_SLACK:
            assert time.monotonic() < end + 60.0, "A did not take enough snapshots while cut off"
            sample()
            time.sleep(0.25)
        heal_at = time.time()  # every snapshot started until now needed A while it could not deliver
        (cluster.triggers / "a.pad").unlink()
        partition.heal()

        def a_session() -> dict[str, Any] | None:
            return next((s for s in client.status()["agents"] if s["process"] == a.process_id), None)

        wait_until(
            lambda: (s := a_session()) is not None and s["connected_at"] > heal_at,
            "A to register again",
            60.0,
        )
        firing.stop()  # quiet now: A drains its queue and its heartbeat tells the collector what it lost

        def settled() -> tuple[dict[str, Any], dict[str, Any]] | None:
            probe, session = cluster.stats(a), a_session()
            stats = probe["agent"]
            if session is None or stats["collector_events_queued"] or not stats["collector_connected"]:
                return None
            if session["events_dropped"] != stats["collector_events_dropped"]:
                return None
            return probe, session

        probe, session = wait_until(settled, "A's dropped count to reach the collector", 60.0, 0.2)
        stats = probe["agent"]
        sent, dropped, submitted = (
            stats["collector_events_sent"],
            stats["collector_events_dropped"],
            probe["submitted"],
        )
        assert sent + dropped + stats["collector_events_queued"] == submitted, (stats, probe)
        assert session["events_dropped"] == dropped > 0

        # Every cut started while A was cut off needed events of A that never came: none is COMPLETE.
        window = [i for i in client.list_cuts(limit=1000) if cut_at <= i.started < heal_at]
        assert len(window) >= 5, window
        for info in window:
            assert info.status == "INCOMPLETE" and names(info, a.process_id), info

        # A's local snapshot bigger than its whole queue is dropped although A is connected: the gap
        # tells the collector at once, and that cut ends INCOMPLETE for the events lost.
        cluster.trigger(a, "pad", GIANT)
        lost = client.snapshot(timeout=10.0)
        (cluster.triggers / "a.pad").unlink()
        assert lost.status == "INCOMPLETE"
        assert any(REASON_EVENTS_LOST in r and a.process_id in r for r in lost.reasons), lost.reasons
        probe, session = wait_until(settled, "A's new drop to reach the collector", 60.0, 0.2)
        stats = probe["agent"]
        assert session["events_dropped"] == stats["collector_events_dropped"] == dropped + 1
        assert stats["collector_events_sent"] + dropped + 1 == probe["submitted"], (stats, probe)

        # And then the system is whole again.
        recovered = [client.snapshot(timeout=SNAPSHOT_TIMEOUT)]
        while not recovered[-1].complete and len(recovered) < 4:
            recovered.append(client.snapshot(timeout=SNAPSHOT_TIMEOUT))
        status = client.status()
    assert_complete_and_conserving(recovered[-1], [a, b])
    assert status["stats"]["rejected"] == 0
    for bank in (a, b):
        assert cluster.stats(bank)["transfers_failed"] == 0

    # A's memory: the queue never held more than its cap, and the process did not grow once it was full.
    peak = max(s[2]["collector_queue_bytes_peak"] for s in samples)
    assert peak <= EVENT_QUEUE_BYTES
    assert all(s[2]["collector_events_queued"] <= EVENT_QUEUE for s in samples)
    rss_full = samples[full][1]
    rss_max = max(s[1] for s in samples[full:])
    rss_min = min(s[1] for s in samples[full:])
    assert rss_max - rss_full < RSS_SLACK, [s[1] for s in samples]
    report(
        "agent cut off from its collector",
        cut_off_s=round(heal_at - cut_at, 1),
        cuts_while_cut_off=len(window),
        complete_while_cut_off=0,
        dropped=dropped,
        dropped_bytes_while_full_MB=round(dropped_bytes() / 2**20, 1),
        sent=sent,
        submitted=submitted,
        queue_bytes_peak=peak,
        rss_at_full_MB=round(rss_full / 2**20, 1),
        rss_after_full_MB=f"{rss_min / 2**20:.1f}..{rss_max / 2**20:.1f}",
        rss_first_MB=round(samples[0][1] / 2**20, 1),
        recovered_after=len(recovered),
        window_reasons=sorted({r.split(" at ")[0].split(":")[0] for i in window for r in i.reasons}),
    )
