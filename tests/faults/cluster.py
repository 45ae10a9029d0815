"""A small bank whose agents reach the collector through fault-injecting links, and what it measures.

Shared by the link-fault tests and ``benchmarks/fault_injection.py``: an
in-process collector, one :class:`~faults.proxy.Link` per agent, ledgers
moving money between each other at a steady pace (in this process, or in
another one for the benchmark), and a driver starting a snapshot every
``period`` seconds. Time is split into named windows (a fault-free one, a
faulted one, ...); every transfer and every snapshot is counted in the
window it started in, so that one run compares them side by side.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ledger_service import Ledger

from cutwatch.collector import CollectorClient, CollectorServer, Cut
from cutwatch.collector._coordinator import NoAgentsError

from .proxy import FaultProxy, Link

__all__ = ["FAULTS", "App", "AppResults", "Bank", "Figures", "Traffic", "consistency_errors"]

INITIAL = 1_000
CALL_TIMEOUT = 10.0
WAIT = 60.0
"""Bound on every wait for the system to settle: generous, for loaded machines."""


def total(cut: Cut) -> int:
    """Money in the balances plus money in the channels (Credit requests in transit)."""
    held = sum(int(cut.state_of(p)["balance"]) for p in cut.states)
    return held + sum(int(m.payload["amount"]) for m in cut.in_transit if m.kind == "request")


def consistency_errors(cut: Cut, expected_total: int | None) -> list[str]:
    """What is wrong with a COMPLETE cut: money not conserved (unless ``expected_total`` is None),
    vector clocks that disagree.

    The clock check is the definition of a consistent cut, computed here
    independently of the collector's: no process knows more of another's
    events than that one's own cut, ``VC_p[q] <= VC_q[q]`` for all p, q.
    """
    errors = []
    if expected_total is not None and total(cut) != expected_total:
        errors.append(f"cut {cut.epoch} holds {total(cut)}, not {expected_total}")
    for p, clock in cut.clocks.items():
        for q, seen in clock.items():
            own = cut.clocks.get(q, {}).get(q)
            if own is not None and seen > own:
                errors.append(f"cut {cut.epoch}: {p} knows {q}'s event {seen}, {q}'s cut is at {own}")
    return errors


@dataclass
class Figures:
    """What one window (or several, merged) measured."""

    calls: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)
    started: int = 0
    complete: int = 0
    incomplete: int = 0
    durations: list[float] = field(default_factory=list)
    """Seconds from start to terminal state (COMPLETE or INCOMPLETE), each snapshot."""
    complete_durations: list[float] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    """COMPLETE cuts that lack a process of the system (their money cannot add up)."""
    inconsistent: list[str] = field(default_factory=list)
    """COMPLETE cuts of every process that do not conserve the money, and any that fail the clock check."""
    reasons: list[str] = field(default_factory=list)

    def p(self, q: float) -> float:
        """The ``q`` quantile of transfer latency, in ms (0 without samples)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @classmethod
    def merged(cls, parts: Sequence[Figures]) -> Figures:
        out = cls()
        for part in parts:
            for name, value in vars(part).items():
                setattr(out, name, getattr(out, name) + value)
        return out

    @property
    def max_terminal(self) -> float:
        return max(self.durations, default=0.0)

    @property
    def median_complete(self) -> float:
        return statistics.median(self.complete_durations) if self.complete_durations else 0.0


@dataclass
class AppResults:
    """What the application saw: per window, transfers done, failed and their latencies (s)."""

    windows: dict[str, tuple[int, int, list[float]]]
    failures: list[str]
    connects: list[int]
    """Control-stream registrations of each agent (1: never reconnected)."""

    def to_json(self) -> dict[str, Any]:
        return {"windows": self.windows, "failures": self.failures, "connects": self.connects}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AppResults:
        windows = {
            name: (int(c), int(f), [float(x) for x in lat]) for name, (c, f, lat) in doc["windows"].items()
        }
        return cls(windows, [str(f) for f in doc["failures"]], [int(n) for n in doc["connects"]])


class App(Protocol):
    """The application side: ledgers and their traffic (in this process, or another one)."""

    processes: list[str]

    def start(self) -> None: ...
    def set_window(self, window: str | None) -> None: ...
    def stop(self) -> None: ...
    def results(self) -> AppResults: ...
    def close(self) -> None: ...


class Traffic:
    """One ledger per collector address, each with a thread transferring to random peers.

    ``interval`` is each thread's mean pause between transfers; ``seed``
    fixes amounts and peers. Latencies count in the window a transfer started in.
    """

    def __init__(self, collectors: Sequence[str], seed: int, interval: float) -> None:
        self.seed = seed
        self.interval = interval
        self.ledgers: list[Ledger] = []
        self.window: str | None = None
        self._windows: dict[str, tuple[int, int, list[float]]] = {}
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        try:
            for i, address in enumerate(collectors):
                self.ledgers.append(Ledger(f"n{i}", address, initial=INITIAL))
            for ledger in self.ledgers:
                if not ledger.agent.wait_registered(WAIT):
                    raise RuntimeError(f"{ledger.agent.process_id} did not register")
        except BaseException:
            self.close()
            raise
        self.processes = [ledger.agent.process_id for ledger in self.ledgers]

    def start(self) -> None:
        for i, ledger in enumerate(self.ledgers):
            stubs = [ledger.stub(peer) for peer in self.ledgers if peer is not ledger]
            thread = threading.Thread(
                target=self._run, args=(ledger, stubs, random.Random(self.seed * 1000 + i)), daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def set_window(self, window: str | None) -> None:
        self.window = window

    def _run(self, ledger: Ledger, stubs: Sequence[Any], rng: random.Random) -> None:
        while not self._stop.wait(self.interval * (0.5 + rng.random())):
            window, started = self.window, time.monotonic()
            try:
                ledger.transfer(rng.choice(stubs), rng.randint(1, 5)).result(CALL_TIMEOUT)
                failure = None
            except Exception as exc:
                failure = repr(exc)
            latency = time.monotonic() - started
            with self._lock:
                if failure is not None:
                    self._failures.append(failure)
                if window is not None:
                    calls, failed, latencies = self._windows.setdefault(window, (0, 0, []))
                    if failure is None:
                        latencies.append(latency)
                    self._windows[window] = (
                        calls + (failure is None),
                        failed + (failure is not None),
                        latencies,
                    )

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT + 5)

    def results(self) -> AppResults:
        connects = []
        for ledger in self.ledgers:
            control = ledger.agent._control
            connects.append(control.stats().connects if control is not None else 0)
        with self._lock:
            windows = {name: (c, f, list(lat)) for name, (c, f, lat) in self._windows.items()}
            return AppResults(windows, list(self._failures), connects)

    def close(self) -> None:
        self.stop()
        for ledger in self.ledgers:
            ledger.close()


class Bank:
    """Collector, proxy with one link per agent, the application, and a snapshot driver.

    ``app`` makes the application side from the links' addresses, the seed
    and the traffic interval (default: :class:`Traffic`, in this process).
    ``seed`` also fixes every random choice of the faults.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        agents: int = 4,
        seed: int = 1,
        period: float = 0.15,
        snapshot_timeout: float = 1.0,
        interval: float = 0.01,
        app: Callable[[list[str], int, float], App] = Traffic,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.period = period
        self.snapshot_timeout = snapshot_timeout
        self.collector = CollectorServer(
            workdir / "cuts.db", listen="127.0.0.1:0", snapshot_timeout=snapshot_timeout
        )
        self.proxy = FaultProxy()
        self.links: list[Link] = []
        self.app: App | None = None
        self.window: str | None = None
        self._epochs: dict[int, str | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._driver = threading.Thread(target=self._snapshots, name="snapshots", daemon=True)
        self.no_agents = 0
        try:
            self.collector.start()
            self.client = CollectorClient(self.collector.address)
            self.links = [self.proxy.link(self.collector.address) for _ in range(agents)]
            self.app = app([link.address for link in self.links], seed, interval)
        except BaseException:
            self.close()
            raise
        self.processes = list(self.app.processes)
        self.total = INITIAL * agents

    # Running -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Traffic on every ledger, and the snapshot driver."""
        assert self.app is not None
        self.app.start()
        self._driver.start()

    def _snapshots(self) -> None:
        """What the collector's ``every`` does, but stoppable and noting the window of each epoch."""
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.period
            window = self.window
            try:
                epoch = self.collector.coordinator.start_snapshot()
            except NoAgentsError:
                self.no_agents += 1  # every link down at once: nobody to ask
                continue
            with self._lock:
                self._epochs[epoch] = window

    def run(self, window: str, fault: Callable[[Bank, float], None], seconds: float) -> None:
        """Count what starts in the next ``seconds`` under ``window``, while ``fault`` runs; then restore."""
        assert self.app is not None
        self.window = window
        self.app.set_window(window)
        try:
            fault(self, seconds)
        finally:
            self.window = None
            self.app.set_window(None)
            for link in self.links:
                link.restore()

    def recover(self) -> None:
        """Wait until every agent is back and a snapshot started after now is COMPLETE."""
        deadline = time.monotonic() + WAIT
        while len(self.client.status()["agents"]) < len(self.links):
            if time.monotonic() > deadline:
                raise AssertionError("agents did not all come back to the collector")
            time.sleep(0.02)
        with self._lock:
            after = max(self._epochs, default=0)
        seen: set[int] = set()
        while True:
            with self._lock:
                done = [e for e in self._epochs if e > after and e not in seen]
            running = set(self.collector.coordinator.running())
            for epoch in done:
                if epoch in running:
                    continue
                seen.add(epoch)
                cut = self.client.get(epoch)
                if cut is not None and cut.status == "COMPLETE":
                    return
            if time.monotonic() > deadline:
                raise AssertionError("no snapshot became COMPLETE after the faults ended")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the driver and the traffic, then wait until no snapshot is in progress."""
        self._stop.set()
        if self._driver.is_alive():
            self._driver.join(CALL_TIMEOUT)
        if self.app is not None:
            self.app.stop()
        deadline = time.monotonic() + self.snapshot_timeout + WAIT
        while self.client.status()["running"]:
            if time.monotonic() > deadline:
                raise AssertionError(f"snapshots still running: {self.client.status()['running']}")
            time.sleep(0.02)

    # Results -------------------------------------------------------------------------------------
    def figures(self) -> dict[str, Figures]:
        """Per window: transfers, and every snapshot started in it, read back from the collector."""
        assert self.app is not None
        windows: dict[str, Figures] = {}
        for name, (calls, failures, latencies) in self.app.results().windows.items():
            windows[name] = Figures(calls=calls, failures=failures, latencies=latencies)
        with self._lock:
            epochs = dict(self._epochs)
        for epoch, window in sorted(epochs.items()):
            figures = windows.setdefault(window or "", Figures())
            figures.started += 1
            cut = self.client.get(epoch)
            if cut is None:
                figures.reasons.append(f"snapshot {epoch} was never stored")
                continue
            figures.durations.append(cut.finished - cut.started)
            if cut.status == "COMPLETE":
                figures.complete += 1
                figures.complete_durations.append(cut.finished - cut.started)
                absent = sorted(set(self.processes) - set(cut.states))
                if absent:
                    figures.partial.append(
                        f"cut {epoch} lacks {', '.join(absent)} (it holds {total(cut)} of {self.total})"
                    )
                figures.inconsistent += consistency_errors(cut, None if absent else self.total)
            else:
                figures.incomplete += 1
                figures.reasons += cut.reasons
        return windows

    def close(self) -> None:
        self._stop.set()
        if self._driver.is_alive():
            self._driver.join(CALL_TIMEOUT)
        for link in self.links:
            link.restore()
        if self.app is not None:
            self.app.close()
        if hasattr(self, "client"):
            self.client.close()
        self.proxy.close()
        self.collector.stop()

    def __enter__(self) -> Bank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Faults: each runs for ``seconds`` in the calling thread; Bank.run restores the links after ---------
LATENCY = 0.05
"""Added to every chunk, each direction."""
THROTTLE = 4_000
"""Bytes per second, each direction of each link."""
RESET_EVERY = 0.4


def no_fault(bank: Bank, seconds: float) -> None:
    time.sleep(seconds)


def latency(bank: Bank, seconds: float) -> None:
    for link in bank.links:
        link.latency(LATENCY)
    time.sleep(seconds)


def throttle(bank: Bank, seconds: float) -> None:
    for link in bank.links:
        link.throttle(THROTTLE)
    time.sleep(seconds)


def resets(bank: Bank, seconds: float) -> None:
    """Reset one link every RESET_EVERY seconds, going through all of them in a seeded order."""
    deadline = time.monotonic() + seconds
    order: list[Link] = []
    while time.monotonic() + RESET_EVERY <= deadline:
        time.sleep(RESET_EVERY)
        if not order:
            order = bank.rng.sample(bank.links, len(bank.links))
        order.pop().reset()
    time.sleep(max(0.0, deadline - time.monotonic()))


def clogs(bank: Bank, seconds: float) -> None:
    """Clog the links one at a time in a seeded order, then restore them in another."""
    gap = seconds / (2 * len(bank.links))
    for link in bank.rng.sample(bank.links, len(bank.links)):
        link.clog()
        time.sleep(gap)
    for link in bank.rng.sample(bank.links, len(bank.links)):
        link.restore()
        time.sleep(gap)


FAULTS: dict[str, Callable[[Bank, float], None]] = {
    "latency": latency,
    "throttle": throttle,
    "reset": resets,
    "clog": clogs,
}
