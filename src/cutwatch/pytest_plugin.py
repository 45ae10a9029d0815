"""cutwatch's pytest plugin: a collector per test, agents wired to it, and assertions on its cuts.

pytest loads it in every session of everyone who has cutwatch installed (the
``pytest11`` entry point), so loading it registers two fixtures and a
marker and imports nothing else: gRPC, the collector and the agent are
imported by the fixtures, in the tests that use them::

    def test_transfers(cutwatch_collector, cutwatch_agent):
        agent = cutwatch_agent("bank")  # started, registered with the test's collector
        ...
        cutwatch_collector.assert_invariant(money_is_conserved)
        cutwatch_collector.assert_no_deadlock()

``@pytest.mark.cutwatch(predicates=[...], snapshot_timeout=...)`` passes its
keywords to the test's :class:`~cutwatch.testing.LocalCollector`. See docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cutwatch.agent import Agent
    from cutwatch.testing import LocalCollector

__all__ = ["cutwatch_agent", "cutwatch_collector", "pytest_configure"]

MARKER = "cutwatch"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): keywords for the test's cutwatch_collector (a "
        "cutwatch.testing.LocalCollector), e.g. predicates=['checks/bank.py'] or snapshot_timeout=5.0",
    )


@pytest.fixture
def cutwatch_collector(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCollector]:
    """A collector on 127.0.0.1 for this test, its store in a kept temporary folder; it closes the agents
    it made and stops at teardown. Helpers: ``agent()``, ``snapshot()``, ``assert_invariant()``,
    ``assert_no_deadlock()``, ``check()``, ``deadlocks()`` (cutwatch.testing.LocalCollector)."""
    from cutwatch.testing import LocalCollector

    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(MARKER))):  # the closest marker wins
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keywords only, not {marker.args!r}")
        options.update(marker.kwargs)
    options.setdefault("directory", tmp_path_factory.mktemp("cutwatch"))
    with LocalCollector(**options) as collector:
        yield collector


@pytest.fixture
def cutwatch_agent(cutwatch_collector: LocalCollector) -> Callable[..., Agent]:
    """``cutwatch_agent(service, **options)``: a started agent registered with ``cutwatch_collector``,
    closed at teardown."""
    return cutwatch_collector.agent
