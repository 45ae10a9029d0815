"""A collector for your own integration tests: snapshot the services under test and assert on the cut.

:class:`LocalCollector` runs a real collector on 127.0.0.1 (a free port) with
a SQLite store in a temporary folder, builds agents wired to it and closes
everything it started, also when the test fails::

    from cutwatch.testing import LocalCollector

    with LocalCollector() as collector:
        agent = collector.agent("bank")  # started, registered with the collector
        ...  # serve with agent.server_interceptor(), call with agent.client_interceptor()
        collector.assert_invariant(money_is_conserved)  # an @cutwatch.invariant function
        collector.assert_no_deadlock()

The assertions raise :class:`AssertionError` with what a person needs to
see: the invariant's verdict and witness as ``cutwatch check`` prints them,
or the deadlock report with its chain. The pytest plugin
(:mod:`cutwatch.pytest_plugin`) hands out one per test as the
``cutwatch_collector`` fixture; docs/testing.md shows both.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cutwatch.agent import Agent
from cutwatch.cli._format import format_cut, format_results
from cutwatch.collector import CheckResult, CheckResults, CollectorClient, CollectorServer, Cut
from cutwatch.predicates import PASS, Deadlock, PredicateResult, find_deadlocks, format_deadlocks
from cutwatch.predicates import check as run_check
from cutwatch.predicates.engine import Invariant, invariants_of
from cutwatch.security import CollectorCredentials

__all__ = ["LocalCollector", "Predicate"]

Predicate = Callable[..., Any] | Invariant | str
"""What the checks take: an ``@invariant`` function (run here), its :class:`Invariant`, or the name of
a predicate the collector loaded (``LocalCollector(predicates=[...])``), whose stored result is read."""

_MAX_WITNESS_CHARS = 8000
_NOT_RUNNING = "the LocalCollector is not running: start() it, or use it in a with block"


class LocalCollector:
    """A collector on 127.0.0.1 for one test, the agents wired to it, and assertions on its cuts.

    ``directory`` holds the SQLite store (default: a temporary folder removed
    at :meth:`close`); ``predicates`` are files or modules the collector loads
    and runs on every COMPLETE cut, as ``cutwatch collector --predicates``
    does; ``options`` go to :class:`~cutwatch.CollectorServer` as they are.
    ``snapshot_timeout`` bounds each snapshot, ``register_timeout`` how long
    :meth:`agent` waits for the collector to know a new agent.
    """

    def __init__(
        self,
        *,
        directory: str | os.PathLike[str] | None = None,
        predicates: Sequence[str | os.PathLike[str]] = (),
        snapshot_timeout: float = 10.0,
        register_timeout: float = 10.0,
        **options: Any,
    ) -> None:
        self.snapshot_timeout = snapshot_timeout
        self.register_timeout = register_timeout
        self._directory = directory
        self._predicates = [os.fspath(p) for p in predicates]
        self._options = options
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._server: CollectorServer | None = None
        self._client: CollectorClient | None = None
        self._agents: list[Agent] = []
        self._memories: dict[str, dict[str, Any]] = {}
        """Each in-process invariant's memory across this collector's cuts, as the engine keeps it."""

    # Life cycle ---------------------------------------------------------------------------------
    def start(self) -> LocalCollector:
        if self._server is not None:
            return self
        try:
            directory = self._directory
            if directory is None:
                self._tempdir = tempfile.TemporaryDirectory(prefix="cutwatch-test-")
                directory = self._tempdir.name
            self._server = CollectorServer(
                Path(directory) / "cutwatch.db",
                listen="127.0.0.1:0",
                snapshot_timeout=self.snapshot_timeout,
                predicates=self._predicates,
                **self._options,
            )
            self._server.start()
            # Its own collector is plaintext and tokenless: no token or TLS variable the developer
            # left in the environment may reach the client (nor warn about a deprecated name).
            self._client = CollectorClient(self._server.address, credentials=CollectorCredentials())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the agents (newest first), the client and the collector, and remove the temporary
        store; each step runs even when one before it fails."""
        with contextlib.ExitStack() as steps:  # runs its callbacks last in, first out
            if self._tempdir is not None:
                steps.callback(self._tempdir.cleanup)
            if self._server is not None:
                steps.callback(self._server.stop)
            if self._client is not None:
                steps.callback(self._client.close)
            for agent in self._agents:
                steps.callback(agent.close)
            self._tempdir, self._server, self._client, self._agents = None, None, None, []

    def __enter__(self) -> LocalCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def server(self) -> CollectorServer:
        if self._server is None:
            raise RuntimeError(_NOT_RUNNING)
        return self._server

    @property
    def address(self) -> str:
        """Where the collector listens (``127.0.0.1:port``): give it to agents built elsewhere."""
        return self.server.address

    @property
    def client(self) -> CollectorClient:
        """A :class:`~cutwatch.CollectorClient` of this collector, for the queries not wrapped here."""
        if self._client is None:
            raise RuntimeError(_NOT_RUNNING)
        return self._client

    # Agents -------------------------------------------------------------------------------------
    def agent(self, service: str, *, wait: bool = True, **options: Any) -> Agent:
        """A started :class:`~cutwatch.Agent` of ``service`` wired to this collector, closed by
        :meth:`close`. With ``wait`` it is registered on return, so the next snapshot includes it.
        Without ``collector_credentials`` it presents none, whatever the environment holds."""
        options.setdefault("collector_credentials", CollectorCredentials())
        agent = Agent(service, collector=self.address, **options)
        self._agents.append(agent)
        agent.start()
        if wait and not agent.wait_registered(self.register_timeout):
            raise TimeoutError(
                f"agent {agent.process_id} did not register with the collector at {self.address} "
                f"within {self.register_timeout:g} s"
            )
        return agent

    # Cuts ---------------------------------------------------------------------------------------
    def snapshot(self, timeout: float | None = None) -> Cut:
        """Take a snapshot of every registered agent and return its cut, COMPLETE or INCOMPLETE."""
        return self.client.snapshot(timeout=self.snapshot_timeout if timeout is None else timeout)

    def deadlocks(self, cut: Cut | None = None) -> list[Deadlock]:
        """The deadlocks ``cut`` proves (default: a new snapshot's), found as the collector finds them."""
        return find_deadlocks(self.snapshot() if cut is None else cut)

    def assert_no_deadlock(self, cut: Cut | None = None) -> Cut:
        """Fail with the deadlock report (its chain, every task, what it rests on) if ``cut``, or a new
        snapshot, shows a deadlock; or if the cut is INCOMPLETE, which cannot show there is none.
        Returns the cut checked."""
        __tracebackhide__ = True
        cut = self.snapshot() if cut is None else cut
        found = find_deadlocks(cut)
        if found:
            raise AssertionError(f"cutwatch found a deadlock\n{format_deadlocks(found)}")
        if not cut.complete:
            raise AssertionError(
                f"cut {cut.epoch} is INCOMPLETE: it cannot show that there is no deadlock\n{format_cut(cut)}"
            )
        return cut

    def check(self, predicate: Predicate, cut: Cut | None = None) -> PredicateResult:
        """The verdict of ``predicate`` on ``cut`` (default: a new snapshot's), without asserting.

        A function (or :class:`Invariant`) runs here, with its memory kept
        across this collector's cuts; a name reads the result the collector
        stored for a predicate it loaded, and raises :class:`LookupError` when
        there is none (the cut is INCOMPLETE, or no predicate has that name).
        """
        __tracebackhide__ = True
        cut = self.snapshot() if cut is None else cut
        if isinstance(predicate, str):
            return self._stored_result(predicate, cut)
        specs = [predicate] if isinstance(predicate, Invariant) else invariants_of(predicate)
        memory = self._memories.setdefault(specs[0].name, {}) if len(specs) == 1 else None
        return run_check(predicate, cut, memory=memory)  # refuses a function that is not one invariant

    def assert_invariant(self, predicate: Predicate, cut: Cut | None = None) -> PredicateResult:
        """Fail unless ``predicate`` holds (PASS) on ``cut`` (default: a new snapshot's); the message
        shows the verdict and the witness. Invariants are checked on COMPLETE cuts only, so an
        INCOMPLETE cut fails too, saying why it is. Returns the passing result."""
        __tracebackhide__ = True
        cut = self.snapshot() if cut is None else cut
        if not cut.complete:
            why = "invariants are checked on COMPLETE cuts only"
            raise AssertionError(f"cut {cut.epoch} is INCOMPLETE: {why}\n{format_cut(cut)}")
        result = self.check(predicate, cut)
        if result.status != PASS:
            raise AssertionError(_failure(result, cut))
        return result

    def _stored_result(self, name: str, cut: Cut) -> PredicateResult:
        __tracebackhide__ = True
        stored = self.client.results(epoch=cut.epoch)
        results = stored.results if stored is not None else ()
        for result in results:
            if result.name == name:
                return PredicateResult.from_json({**result.to_json(), "epoch": cut.epoch})
        names = ", ".join(sorted(r.name for r in results)) or "none"
        why = "" if cut.complete else f" (cut {cut.epoch} is INCOMPLETE: predicates run on COMPLETE cuts)"
        raise LookupError(
            f"the collector stored no result of {name!r} on cut {cut.epoch}{why}; it stored: {names}. "
            "A predicate named by a string must be loaded by the collector: LocalCollector(predicates=[...])"
        )


def _failure(result: PredicateResult, cut: Cut) -> str:
    """An invariant's failure as ``cutwatch check`` prints it, its witness and the cut below."""
    stored = CheckResult(result.name, result.status, result.message or result.error, dict(result.witness))
    lines = [
        f"invariant {result.name!r} did not pass on cut {cut.epoch}: {result.status}",
        format_results(CheckResults(cut.epoch, cut.status, (stored,))),
    ]
    if result.witness:
        witness = json.dumps(result.witness, indent=2, sort_keys=True, default=str)
        if len(witness) > _MAX_WITNESS_CHARS:
            witness = witness[:_MAX_WITNESS_CHARS] + f"\n... ({len(witness)} characters in all)"
        lines.append("witness:")
        lines.extend("  " + line for line in witness.splitlines())
    lines.append(format_cut(cut))
    return "\n".join(lines)
