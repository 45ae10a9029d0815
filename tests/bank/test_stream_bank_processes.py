"""Money moved by stream messages between real bank processes, while the collector takes snapshots.

Three ``stream_bank_service.py`` processes stream money to each other over
real gRPC, every kind of stream at once (client, server and bidirectional
streaming, a hundred messages each, a few milliseconds apart), while the
collector, a process of its own, takes forty snapshots. Every COMPLETE cut
must hold exactly the money the banks started with, in their balances or
in stream messages in transit; the others must say why. Run with and
without the envelope (a stamp in each message). How many cuts each way
completes is a figure of the benchmarks, not a promise of this test.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bank_cluster import Bank, BankCluster

from cutwatch import CollectorClient, Cut

SCRIPT = Path(__file__).resolve().parent / "stream_bank_service.py"
INITIAL = 100_000
BANKS = 3
SNAPSHOTS = 40
SNAPSHOT_TIMEOUT = 30.0


class StreamCluster(BankCluster):
    def start_banks(self, collector: str, *flags: str) -> list[Bank]:
        return self.start(
            {
                f"s{i}": [
                    sys.executable,
                    str(SCRIPT),
                    f"--name=s{i}",
                    f"--collector={collector}",
                    f"--ready-file={self.ready_file(f's{i}')}",
                    f"--peers-file={self.peers_file}",
                    f"--initial={INITIAL}",
                    f"--seed={i}",
                    *flags,
                ]
                for i in range(1, BANKS + 1)
            }
        )

    def stats(self, bank: Bank) -> dict[str, Any]:
        reply = self.call(bank, "/streams.Bank/Stats", 10.0)
        return {key: (int(value) if isinstance(value, float) else value) for key, value in reply.items()}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[StreamCluster]:
    cluster = StreamCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


def money(cut: Cut) -> int:
    """Balances plus the amounts of the stream messages in transit."""
    balances = sum(int(cut.state_of(p)["balance"]) for p in cut.states)
    return balances + sum(
        int(m.payload["amount"]) for m in cut.in_transit if m.index and "amount" in m.payload
    )


@pytest.mark.parametrize("envelope", [False, True], ids=["counts", "envelope"])
def test_every_complete_cut_of_streaming_banks_conserves_money(
    cluster: StreamCluster, tmp_path: Path, envelope: bool
) -> None:
    _, address = cluster.start_collector(tmp_path / "cuts.db")
    banks = cluster.start_banks(address, *(["--envelope"] if envelope else []))
    cuts: list[Cut] = []
    with CollectorClient(address) as client:
        for _ in range(SNAPSHOTS):
            cuts.append(client.snapshot(timeout=SNAPSHOT_TIMEOUT))
            time.sleep(0.02)
    stats = [cluster.stats(bank) for bank in banks]
    complete = [cut for cut in cuts if cut.complete]
    for cut in complete:
        assert set(cut.states) == {bank.process_id for bank in banks}
        assert money(cut) == BANKS * INITIAL, (cut.epoch, cut.dumps())
    for cut in cuts:
        if not cut.complete:
            assert cut.reasons, cut.epoch
    in_transit = sum(1 for cut in complete for m in cut.in_transit if m.index)
    others = sorted(
        {reason.split(": ")[1][:60] for cut in cuts if not cut.complete for reason in cut.reasons}
    )
    mode = "envelope" if envelope else "counts"
    print(
        f"{mode}: {len(complete)} of {len(cuts)} COMPLETE, {in_transit} stream messages in transit; {others}"
    )
    # The property must not hold vacuously: cuts completed, with stream messages on their way.
    assert complete and in_transit, [cut.reasons for cut in cuts]
    assert all(s["failures"] == 0 for s in stats), stats
    assert sum(s["received"] for s in stats) > 1000, stats
