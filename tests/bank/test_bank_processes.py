"""Snapshots of real processes: a collector and bank services, each its own OS process.

The banks (``bank_service.py``) move money between each other all the time;
the cuts the collector assembles must add up to the money they started
with, whatever is killed and when. Every process is started by the
``cluster`` fixture and killed at teardown, also when a test fails; every
wait is bounded.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bank_cluster import Bank, BankCluster
from polling import wait_until
from processes import START_TIMEOUT, Proc, spawn, terminate

from cutwatch import CollectorClient, Cut

BANK_SCRIPT = Path(__file__).resolve().parent / "bank_service.py"
PROXY_SCRIPT = Path(__file__).resolve().parents[1] / "grpc_proxy.py"
INITIAL = 1000
SNAPSHOT_TIMEOUT = 30.0


class Cluster(BankCluster):
    """Collectors and ``bank_service.py`` banks."""

    def start_banks(
        self,
        count: int,
        collector: str,
        peers: Callable[[list[Bank]], list[str]] | None = None,
        **options: dict[str, str],
    ) -> list[Bank]:
        """``count`` banks peered with each other, transferring; ``options[name]`` adds flags to one
        (an empty value: the flag alone); ``peers`` as in :meth:`BankCluster.start`."""
        commands = {
            f"b{i}": [
                sys.executable,
                str(BANK_SCRIPT),
                f"--name=b{i}",
                f"--collector={collector}",
                f"--ready-file={self.ready_file(f'b{i}')}",
                f"--peers-file={self.peers_file}",
                "--workers=4",
                f"--initial={INITIAL}",
                f"--seed={i}",
                *(
                    f"--{key}={value}" if value else f"--{key}"
                    for key, value in options.get(f"b{i}", {}).items()
                ),
            ]
            for i in range(1, count + 1)
        }
        return self.start(commands, peers)

    def stats(self, bank: Bank) -> dict[str, Any]:
        """The bank's counters, from its Stats RPC (an uninstrumented call)."""
        reply = self.call(bank, "/bank.Bank/Stats", 10.0)
        return {key: (int(value) if isinstance(value, float) else value) for key, value in reply.items()}

    def terminate(self, proc: Proc, timeout: float = 20.0) -> int | None:
        return terminate(proc, timeout)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


def credits_in_transit(cut: Cut) -> list[int]:
    """The amounts of the Credit requests in the channels of ``cut``, each call once (two attempts of a
    retried call may both be recorded; the cut lists such calls in ``duplicates``)."""
    calls = {
        (m.sender, m.call_id): int(m.payload["amount"])
        for m in cut.in_transit
        if m.kind == "request" and m.method.endswith("/Credit")
    }
    return list(calls.values())


def money(cut: Cut) -> int:
    """Balances plus the money in transit: the same in every complete cut."""
    return sum(int(cut.state_of(p)["balance"]) for p in cut.states) + sum(credits_in_transit(cut))


def assert_complete_and_conserving(cut: Cut, banks: list[Bank]) -> None:
    assert cut.complete, (cut.epoch, cut.reasons, cut.missing)
    assert set(cut.states) == {bank.process_id for bank in banks}
    assert money(cut) == len(banks) * INITIAL, (cut.epoch, cut.dumps())


def test_snapshots_under_traffic_are_complete_and_conserve_money(cluster: Cluster, tmp_path: Path) -> None:
    _, address = cluster.start_collector(tmp_path / "cuts.db")
    banks = cluster.start_banks(4, address)
    with CollectorClient(address) as client:
        cuts = []
        for _ in range(20):
            cuts.append(client.snapshot(timeout=SNAPSHOT_TIMEOUT))
            time.sleep(random.uniform(0, 0.05))  # cut the traffic at varied moments
        status = client.status()
    for cut in cuts:
        assert_complete_and_conserving(cut, banks)
    assert [cut.epoch for cut in cuts] == sorted({cut.epoch for cut in cuts})
    assert status["stats"]["rejected"] == 0
    assert status["stats"]["complete"] == 20
    # The cuts saw money on the wire, so channel state was really exercised.
    in_transit = [len(credits_in_transit(cut)) for cut in cuts]
    assert sum(1 for n in in_transit if n) >= 5, in_transit
    stats = [cluster.stats(bank) for bank in banks]
    assert all(s["transfers_failed"] == 0 for s in stats), stats
    assert all(cluster.terminate(bank.proc) == 0 for bank in banks), "a bank did not exit cleanly on SIGTERM"


def test_retries_to_other_servers_under_a_retry_policy_are_counted_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Every bank sends its transfers over one round_robin channel with a retryPolicy, and every bank
    fails a quarter of the Credit calls with UNAVAILABLE before applying them: the retries reach the
    same or another bank, often across a cut. Every cut completes and holds the money exactly."""
    _, address = cluster.start_collector(tmp_path / "cuts.db")
    flags = {"bounce-percent": "25", "balanced": "", "slow-state-ms": "10"}
    banks = cluster.start_banks(3, address, **{f"b{i}": flags for i in range(1, 4)})
    with CollectorClient(address) as client:
        cuts = []
        for _ in range(40):
            cuts.append(client.snapshot(timeout=SNAPSHOT_TIMEOUT))
            time.sleep(random.uniform(0, 0.05))
    for cut in cuts:
        assert_complete_and_conserving(cut, banks)
    stats = [cluster.stats(bank) for bank in banks]
    assert sum(s["credits_bounced"] for s in stats) >= 20, stats
    assert sum(s["credits_retried"] for s in stats) >= 20, stats
    assert sum(len(credits_in_transit(cut)) for cut in cuts) >= 5
    assert all(cluster.terminate(bank.proc) == 0 for bank in banks)


def test_a_proxy_that_strips_stamps_leaves_no_wrong_cut_unflagged(cluster: Cluster, tmp_path: Path) -> None:
    """b3 is reached through a proxy process that drops cutwatch's stamps both ways, as an L7 proxy
    that drops headers it does not know: no cut can place the credits it carries. The cuts they fall
    in are flagged (their sums are inconclusive), every cut that is not conserves money, and once the
    proxy keeps stamps the cuts are exact again."""
    _, address = cluster.start_collector(tmp_path / "cuts.db")
    proxies: list[Proc] = []

    def through_a_stripping_proxy(banks: list[Bank]) -> list[str]:
        ready = cluster.ready_file("proxy")
        target = banks[-1].address
        command = [
            sys.executable,
            str(PROXY_SCRIPT),
            f"--target={target}",
            f"--ready-file={ready}",
            "--strip",
        ]
        proxy = spawn(tmp_path, cluster.procs, "proxy", command)
        proxies.append(proxy)

        def serving() -> bool:
            assert proxy.alive(), proxy.tail()
            return ready.exists()

        wait_until(serving, "the proxy to serve", START_TIMEOUT, 0.1)
        return [bank.address for bank in banks[:-1]] + [ready.read_text().split()[1]]

    banks = cluster.start_banks(3, address, peers=through_a_stripping_proxy)
    (proxy,) = proxies
    with CollectorClient(address) as client:
        stripped = []
        for _ in range(20):
            stripped.append(client.snapshot(timeout=SNAPSHOT_TIMEOUT))
            time.sleep(random.uniform(0, 0.05))
        proxy.popen.send_signal(signal.SIGUSR1)
        wait_until(lambda: "stripping off" in proxy.log.read_text(), "the proxy to keep stamps", 30.0, 0.1)
        client.snapshot(timeout=SNAPSHOT_TIMEOUT)  # its window may still hold a change from before
        kept = [client.snapshot(timeout=SNAPSHOT_TIMEOUT) for _ in range(20)]
    for cut in stripped:
        if cut.conclusive:
            assert money(cut) == len(banks) * INITIAL, (cut.epoch, cut.dumps())
    flagged = [cut for cut in stripped if cut.untracked]
    assert flagged, [(cut.status, cut.reasons) for cut in stripped]
    # The credits went to b3, the answers came back to its callers: the changes are counted there.
    assert {p for cut in flagged for p in cut.untracked} <= {bank.process_id for bank in banks}
    assert any(banks[-1].process_id in cut.untracked for cut in flagged)
    for cut in kept:
        assert_complete_and_conserving(cut, banks)
        assert cut.conclusive, (cut.epoch, cut.untracked)


def test_collector_killed_and_restarted_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "cuts.db"
    # Periodic snapshots, and b2's state provider makes each last half a second: the kill hits one
    # in the middle, so the agents are inside an epoch that the restarted collector never stored.
    collector, address = cluster.start_collector(db, "127.0.0.1:0", "--every", "1s")
    banks = cluster.start_banks(4, address, b2={"slow-state-ms": "500"})
    with CollectorClient(address) as client:
        before = [client.snapshot(timeout=SNAPSHOT_TIMEOUT) for _ in range(3)]
        for cut in before:
            assert_complete_and_conserving(cut, banks)
        stored = {info.epoch: client.get(info.epoch) for info in client.list_cuts(limit=1000)}
        assert {cut.epoch for cut in before} <= set(stored)
        running = wait_until(lambda: client.status()["running"], "a periodic snapshot to start", 30.0, 0.02)
        collector.kill()
    # The banks keep working without their collector.
    ok = [cluster.stats(bank)["transfers_ok"] for bank in banks]
    wait_until(
        lambda: all(cluster.stats(b)["transfers_ok"] > n + 10 for b, n in zip(banks, ok, strict=True)),
        "transfers while the collector is down",
    )

    _, again = cluster.start_collector(db, address, "--every", "1s")
    assert again == address
    with CollectorClient(address) as client:
        wait_until(lambda: len(client.status()["agents"]) == len(banks), "the banks to register again")
        after = [client.snapshot(timeout=SNAPSHOT_TIMEOUT) for _ in range(3)]
        for epoch, cut in stored.items():
            assert cut is not None
            reread = client.get(epoch)
            assert reread is not None and reread.to_json() == cut.to_json()
        status = client.status()
    for cut in after:
        assert_complete_and_conserving(cut, banks)
        assert cut.epoch > max(*stored, *running)
    assert status["stats"]["rejected"] == 0
    stats = [cluster.stats(bank) for bank in banks]
    assert all(s["transfers_failed"] == 0 for s in stats), stats


def test_bank_killed_during_a_snapshot(cluster: Cluster, tmp_path: Path) -> None:
    # A killed process is expected back for the rejoin grace: a second here, so that the
    # survivors' cut below (taken well after it) may be COMPLETE without the victim.
    _, address = cluster.start_collector(tmp_path / "cuts.db", "127.0.0.1:0", "--rejoin-grace", "1s")
    # b4's state provider takes 2 s, so a snapshot is still running when b4 is killed.
    banks = cluster.start_banks(4, address, b4={"slow-state-ms": "2000"})
    victim, survivors = banks[3], banks[:3]
    result: dict[str, Cut] = {}

    def take() -> None:
        with CollectorClient(address) as client:
            result["cut"] = client.snapshot(timeout=SNAPSHOT_TIMEOUT)

    with CollectorClient(address) as client:
        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        wait_until(lambda: client.status()["running"], "the snapshot to start")
        time.sleep(0.5)  # the order has reached b4, which is inside its slow provider now
        victim.proc.kill()
        taker.join(SNAPSHOT_TIMEOUT + 15)
        assert not taker.is_alive()
        cut = result["cut"]
        assert cut.status == "INCOMPLETE"
        assert cut.finished - cut.started < SNAPSHOT_TIMEOUT
        assert victim.process_id in cut.missing or any(victim.process_id in r for r in cut.reasons), (
            cut.reasons
        )

        # The survivors drop the dead peer at their first failed Credit to it; the next snapshot fences
        # those failed calls, so nothing of the dead bank holds a cut open.
        for bank in survivors:
            wait_until(
                lambda bank=bank: cluster.stats(bank)["peers_alive"] == len(survivors) - 1,
                f"{bank.name} to drop the dead peer",
            )
        wait_until(lambda: not client.status()["absent"], "the collector to stop expecting the victim back")
        after = client.snapshot(timeout=SNAPSHOT_TIMEOUT)
        status = client.status()
    assert after.complete, (after.reasons, after.unsettled)
    assert set(after.states) == {bank.process_id for bank in survivors}
    assert all(victim.process_id not in (m.sender, m.receiver) for m in after.in_transit)
    assert status["stats"]["rejected"] == 0
