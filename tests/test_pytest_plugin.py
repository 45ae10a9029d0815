"""cutwatch's pytest plugin and ``cutwatch.testing``, as a user's own test suite meets them.

Each user suite runs in a pytest of its own (``pytester``, in a subprocess)
with warnings as errors, against real gRPC servers and a real collector on
127.0.0.1: the documented example passes; a broken invariant and a deadlock
fail the user's test with a message that names what broke. The helpers'
messages are also checked here on hand-built cuts, without a collector.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cutwatch import AgentStateError, Cut, TaskView
from cutwatch.collector import SqliteCutStore
from cutwatch.predicates import conservation, invariant, violation
from cutwatch.testing import LocalCollector

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "testing" / "test_bank.py"
RUN_TIMEOUT = 180.0
USER_INI = """\
[pytest]
addopts = -p no:cacheprovider --strict-markers --strict-config
filterwarnings = error
"""


@pytest.fixture
def user_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An empty project of a user who installed cutwatch, strict about markers and warnings."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makeini(USER_INI)
    return pytester


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    return suite.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)


# ---------------------------------------------------------------------------
# Registration, and its cost to every pytest session
# ---------------------------------------------------------------------------

HEAVY = ("grpc", "google", "sqlite3", "opentelemetry", "z3", "igraph")
CUTWATCH_PARTS = ("cutwatch.agent", "cutwatch.collector", "cutwatch.predicates", "cutwatch.testing")


def test_importing_the_plugin_loads_nothing_heavy(tmp_path: Path) -> None:
    code = "import json, sys\nimport cutwatch.pytest_plugin\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert [name for name in loaded if name.split(".")[0] in HEAVY] == []
    assert [name for name in loaded if name.startswith(CUTWATCH_PARTS)] == []


def test_the_entry_point_registers_the_fixtures_and_the_marker(user_suite: pytest.Pytester) -> None:
    result = run(user_suite, "--fixtures")
    result.stdout.fnmatch_lines(["plugins:*cutwatch-*", "*cutwatch_collector*", "*cutwatch_agent*"])
    run(user_suite, "--markers").stdout.fnmatch_lines(["@pytest.mark.cutwatch(**options):*"])


def test_a_session_that_uses_no_fixture_pays_nothing_for_the_plugin(user_suite: pytest.Pytester) -> None:
    user_suite.makepyfile(
        test_plain=f"""
        import sys

        def test_plain():
            assert "cutwatch.pytest_plugin" in sys.modules
            loaded = sorted(sys.modules)
            assert [n for n in loaded if n.split(".")[0] in {HEAVY!r}] == []
            assert [n for n in loaded if n.startswith({CUTWATCH_PARTS!r})] == []
        """
    )
    run(user_suite).assert_outcomes(passed=1)


# ---------------------------------------------------------------------------
# Users' suites over real gRPC and a real collector
# ---------------------------------------------------------------------------


def test_the_documented_example_passes(user_suite: pytest.Pytester) -> None:
    shutil.copy(EXAMPLE, user_suite.path / EXAMPLE.name)
    run(user_suite).assert_outcomes(passed=2)


BROKEN_BANK = """
from pathlib import Path

import pytest

from bank import branches, money_is_conserved  # noqa: F401 - a fixture


def test_money_lost_outside_a_transfer(cutwatch_collector, branches):
    north, _ = branches
    north.balance -= 5
    cutwatch_collector.assert_invariant(money_is_conserved)


@pytest.mark.cutwatch(predicates=[Path(__file__).with_name("bank.py")])
def test_money_lost_as_the_collector_sees_it(cutwatch_collector, branches):
    north, _ = branches
    north.balance -= 5
    cutwatch_collector.assert_invariant("bank.money_is_conserved")
"""


def test_a_broken_invariant_fails_the_users_test_with_its_name_and_witness(
    user_suite: pytest.Pytester,
) -> None:
    """Both ways: the function run in the test's process, and the collector's stored result by name."""
    shutil.copy(EXAMPLE, user_suite.path / "bank.py")  # a module the user's tests import
    user_suite.makepyfile(test_broken_bank=BROKEN_BANK)
    result = run(user_suite)
    result.assert_outcomes(failed=2)
    for test in ("test_money_lost_outside_a_transfer", "test_money_lost_as_the_collector_sees_it"):
        result.stdout.fnmatch_lines(
            [
                f"*_ {test} _*",
                "E * invariant 'bank.money_is_conserved' did not pass on cut 1: FAIL",
                "E *checks of snapshot 1 (COMPLETE)",
                "E *FAIL   bank.money_is_conserved",
                "E *balance over 2 processes * is 195, expected 200 (difference -5)",
                "E *witness:",
                'E *"difference": -5,',
                "E *snapshot 1: COMPLETE*",
            ]
        )


DEADLOCKED_SHOP = """
import threading
import time


def test_locks_taken_in_opposite_orders(cutwatch_collector, cutwatch_agent):
    agent = cutwatch_agent("shop")
    accounts, audit = agent.lock("accounts"), agent.lock("audit")
    both_hold = threading.Barrier(2)

    def left():
        accounts.acquire()
        both_hold.wait()
        audit.acquire()  # waits for right, for ever: the test releases accounts in its place
        audit.release()

    def right():
        with audit:
            both_hold.wait()
            with accounts:
                pass

    threads = [threading.Thread(target=left), threading.Thread(target=right)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while sum(t.waiting_lock is not None for t in agent.tasks()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        cutwatch_collector.assert_no_deadlock()
    finally:
        accounts.release()  # breaks the cycle: right goes on, then left
        for thread in threads:
            thread.join(10)
"""


def test_a_deadlock_fails_assert_no_deadlock_with_its_chain(user_suite: pytest.Pytester) -> None:
    user_suite.makepyfile(test_shop=DEADLOCKED_SHOP)
    result = run(user_suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *cutwatch found a deadlock",
            "E *Deadlock 1 of 1 (cut 1, COMPLETE): deadlock of 2 tasks in 1 process (shop:*)",
            "E *cycle: shop:*#1 ?app task, holds lock accounts? -> waits for lock audit held by -> shop:*#2*",
            "E *rests on: nothing but the cut",
        ]
    )


# ---------------------------------------------------------------------------
# The helpers on hand-built cuts, and without pytest's fixtures
# ---------------------------------------------------------------------------


def _cut(
    epoch: int, balances: dict[str, int], status: str = "COMPLETE", reasons: tuple[str, ...] = ()
) -> Cut:
    states = {process: {"service": "bank", "state": {"balance": b}} for process, b in balances.items()}
    return Cut(epoch, status, 0.0, 1.0, states, (), {}, reasons=reasons)


@invariant("test.money_is_conserved")
def conserved(cut: Cut, memory: dict[str, object]) -> object:
    return conservation(cut, state="balance")


@invariant("test.nobody_named_eve")
def nobody_named_eve(cut: Cut) -> object:
    eves = sorted(p for p in cut.states if p.startswith("eve:"))
    return violation("eve is here", processes=eves) if eves else True


def test_an_invariant_keeps_its_memory_across_the_cuts_of_one_collector() -> None:
    """Like the collector's engine: without total=, each cut is compared with the one before."""
    helper = LocalCollector()
    helper.assert_invariant(conserved, _cut(1, {"a:1": 5, "b:1": 5}))
    helper.assert_invariant(conserved, _cut(2, {"a:1": 2, "b:1": 8}))
    with pytest.raises(AssertionError) as failed:
        helper.assert_invariant(conserved, _cut(3, {"a:1": 2, "b:1": 7}))
    message = str(failed.value)
    assert message.startswith("invariant 'test.money_is_conserved' did not pass on cut 3: FAIL\n")
    assert '"previous_epoch": 2' in message
    assert LocalCollector().check(conserved, _cut(3, {"a:1": 2, "b:1": 7})).status == "PASS"


def test_a_failure_shows_the_message_the_witness_and_the_cut() -> None:
    with pytest.raises(AssertionError) as failed:
        LocalCollector().assert_invariant(nobody_named_eve, _cut(4, {"eve:1": 1, "bob:1": 2}))
    message = str(failed.value)
    assert "test.nobody_named_eve: FAIL\n  eve is here\n" in message
    assert 'witness:\n  {\n    "processes": [\n      "eve:1"\n    ]\n  }\n' in message
    assert "snapshot 4: COMPLETE  (2 processes, 0 messages in transit" in message
    assert "  eve:1" in message and "  bob:1" in message


def test_an_incomplete_cut_fails_both_assertions_saying_why() -> None:
    helper = LocalCollector()
    cut = _cut(5, {"a:1": 1}, "INCOMPLETE", ("b:1 did not answer within 10 s",))
    with pytest.raises(AssertionError, match=r"(?s)cut 5 is INCOMPLETE: invariants .*why: b:1 did not"):
        helper.assert_invariant(nobody_named_eve, cut)
    with pytest.raises(AssertionError, match=r"(?s)cut 5 is INCOMPLETE: it cannot show .*why: b:1 did not"):
        helper.assert_no_deadlock(cut)


def test_a_deadlock_on_a_hand_built_cut_is_reported_as_the_collector_reports_it() -> None:
    held = {"accounts": ("audit", 1), "audit": ("accounts", 2)}
    tasks = tuple(
        TaskView.from_json({"task_id": task, "kind": "app", "held_locks": [lock], "waiting_lock": waits})
        for lock, (waits, task) in held.items()
    )
    cut = Cut(
        1, "COMPLETE", 0.0, 1.0, {"shop:1": {"service": "shop", "state": {}}}, (), {}, tasks={"shop:1": tasks}
    )
    with pytest.raises(AssertionError) as failed:
        LocalCollector().assert_no_deadlock(cut)
    assert str(failed.value).startswith(
        "cutwatch found a deadlock\n"
        "Deadlock 1 of 1 (cut 1, COMPLETE): deadlock of 2 tasks in 1 process (shop:1)\n"
    )


def test_the_local_collector_stops_what_it_started_and_removes_its_store() -> None:
    with LocalCollector() as collector:
        agent = collector.agent("ledger")
        agent.register_state("balance", lambda: 7)
        assert isinstance(collector.server.store, SqliteCutStore)
        store = Path(collector.server.store.path)
        cut = collector.assert_no_deadlock()
        assert cut.state_of(agent.process_id) == {"balance": 7}
        with pytest.raises(
            LookupError, match=r"stored no result of 'ledger\.nope' on cut 1; it stored: cutwatch\.deadlock\."
        ):
            collector.check("ledger.nope", cut)
        address = collector.address
    with pytest.raises(RuntimeError, match="not running"):
        collector.snapshot()
    assert not store.parent.exists()
    assert address.startswith("127.0.0.1:")
    with pytest.raises(AgentStateError, match="closed agent"):
        agent.start()


def test_the_local_collector_ignores_credentials_left_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its collector is plaintext and tokenless, whatever the developer's shell exports."""
    monkeypatch.setenv("CUTWATCH_TOKEN", "reader-token-0123456789abcdef")  # deprecated: would warn
    monkeypatch.setenv("CUTWATCH_READER_TOKEN", "short")
    monkeypatch.setenv("CUTWATCH_AGENT_TOKEN", "short")
    monkeypatch.setenv("CUTWATCH_CA_CERT", str(tmp_path / "missing-ca.pem"))
    monkeypatch.setenv("CUTWATCH_CLIENT_CERT", str(tmp_path / "missing-client.pem"))
    monkeypatch.setenv("CUTWATCH_CLIENT_KEY", str(tmp_path / "missing-client.key"))
    monkeypatch.setenv("CUTWATCH_COLLECTOR", "192.0.2.1:7070")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with LocalCollector() as collector:
            agent = collector.agent("ledger", wait=True)
            assert agent.collector == collector.address
            assert collector.snapshot().complete
