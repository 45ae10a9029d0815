"""The predicate engine: loading from operator-named sources, isolation in a worker, cleanup.

A predicate that raises, loops forever, exits the interpreter or crashes it
must cost only its own result: the others still run, the worker is
restarted, and no worker process outlives ``close()``. No timing assertions:
timeouts are short but only "it finished" is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cutwatch.collector import Cut, InTransitMessage
from cutwatch.core import PredicateLoadError
from cutwatch.predicates import ERROR, FAIL, PASS, PredicateResult
from cutwatch.predicates.engine import PredicateEngine, resolve_source

CREDIT = "/bank.Bank/Credit"


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not: it runs no code)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.exists() and Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def bank_cut(balances: dict[str, int], flying: dict[str, int] | None = None, epoch: int = 1) -> Cut:
    in_transit = tuple(
        InTransitMessage("b:1", receiver, CREDIT, "request", n, 0, {"amount": amount})
        for n, (receiver, amount) in enumerate((flying or {}).items())
    )
    return Cut(
        epoch=epoch,
        status="COMPLETE",
        started=0.0,
        finished=1.0,
        states={
            p: {"service": "bank", "state": {"balance": b, "leader": p == "b:1"}} for p, b in balances.items()
        },
        in_transit=in_transit,
        clocks={p: {p: epoch} for p in balances},
    )


def write(folder: Path, name: str, body: str) -> str:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture
def engines() -> Iterator[list[PredicateEngine]]:
    """Engines to close at teardown, whatever the test did; and no worker of theirs left alive."""
    made: list[PredicateEngine] = []
    yield made
    for engine in made:
        engine.close()
    for engine in made:
        for pid in engine.worker_pids:
            assert wait_gone(pid), f"worker {pid} outlived close()"


HEADER = """\
import os, sys, time
from cutwatch.predicates import at_most_one, conservation, invariant, violation
"""

GOOD = """
@invariant("bank.conservation")
def conserved(cut):
    return conservation(cut, state="balance", payload="amount")

@invariant("bank.one_leader")
def one_leader(cut):
    return at_most_one(cut, state="leader")
"""

HOSTILE = """
@invariant("first.ok")
def first(cut):
    return True

@invariant("raises")
def raises(cut):
    return {}["missing"]

@invariant("loops", timeout=0.5)
def loops(cut):
    while True:
        pass

@invariant("middle.fails")
def middle(cut):
    return violation("saw epoch", epoch=cut.epoch)

@invariant("exits")
def exits(cut):
    print("going down", file=sys.stderr, flush=True)
    os._exit(7)

@invariant("crashes")
def crashes(cut):
    import ctypes
    ctypes.string_at(0)  # a segmentation fault: the interpreter itself dies

@invariant("last.ok")
def last(cut):
    return True
"""


def test_good_predicates_pass_and_fail_with_witnesses(tmp_path: Path, engines: list[PredicateEngine]) -> None:
    engine = PredicateEngine([write(tmp_path, "good.py", HEADER + GOOD)], timeout=10)
    engines.append(engine)
    assert engine.names == ("bank.conservation", "bank.one_leader")
    info = engine.predicates[0]
    assert info.source == str(tmp_path / "good.py") and info.line > 0 and info.timeout == 10

    results = engine.evaluate(bank_cut({"b:1": 50, "b:2": 50}))
    assert [(r.name, r.status, r.epoch) for r in results] == [
        ("bank.conservation", PASS, 1),
        ("bank.one_leader", PASS, 1),
    ]
    assert results[0].witness["baseline"] is True and results[1].witness["holders"] == ["b:1"]

    leaked = engine.evaluate(bank_cut({"b:1": 40, "b:2": 50}, {"b:2": 7}, epoch=2))
    assert leaked[0].status == FAIL
    assert leaked[0].witness["expected"] == 100 and leaked[0].witness["sum"] == 97
    assert leaked[0].witness["processes"] == {"b:1": 40, "b:2": 50}
    assert [m["value"] for m in leaked[0].witness["messages"]] == [7]
    assert engine.memory("bank.conservation") and engine.restarts == 0
    # Results are plain JSON all the way.
    assert [PredicateResult.from_json(json.loads(json.dumps(r.to_json()))) for r in leaked] == leaked


def test_hostile_predicates_cost_only_their_own_result(
    tmp_path: Path, engines: list[PredicateEngine]
) -> None:
    engine = PredicateEngine([write(tmp_path, "hostile.py", HEADER + HOSTILE)], timeout=20)
    engines.append(engine)
    results = {r.name: r for r in engine.evaluate(bank_cut({"b:1": 1}, epoch=3))}

    assert list(results) == list(engine.names)  # every predicate has a result, in load order
    assert results["first.ok"].status == PASS and results["last.ok"].status == PASS
    assert results["middle.fails"].status == FAIL and results["middle.fails"].witness == {"epoch": 3}
    assert results["raises"].status == ERROR and "KeyError: 'missing'" in results["raises"].error
    assert results["loops"].status == ERROR and "timed out after 0.5 s" in results["loops"].error
    assert results["exits"].status == ERROR and "exit code 7" in results["exits"].error
    assert "going down" in results["exits"].error  # what the worker said last
    assert results["crashes"].status == ERROR and "killed by signal" in results["crashes"].error
    # Three workers were lost (loop, exit, crash) and replaced; the exception cost none.
    assert engine.restarts == 3 and len(set(engine.worker_pids)) == 4

    # The engine goes on: the next cut gets a full set of results again.
    again = engine.evaluate(bank_cut({"b:1": 1}, epoch=4))
    assert [r.status for r in again] == [PASS, ERROR, ERROR, FAIL, ERROR, ERROR, PASS]

    pids = list(engine.worker_pids)
    engine.close()
    engine.close()  # idempotent
    for pid in pids:
        assert wait_gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        engine.evaluate(bank_cut({"b:1": 1}))


def test_memory_across_cuts_survives_a_worker_restart(tmp_path: Path, engines: list[PredicateEngine]) -> None:
    source = write(
        tmp_path,
        "mixed.py",
        HEADER
        + GOOD
        + """
@invariant("loops", timeout=0.5)
def loops(cut):
    while True:
        pass
""",
    )
    engine = PredicateEngine([source])
    engines.append(engine)
    first = engine.evaluate(bank_cut({"b:1": 60, "b:2": 40}, epoch=1))
    assert first[0].status == PASS and first[2].status == ERROR
    assert engine.worker_pid is None and engine.restarts == 0  # killed; a new one starts when needed
    second = engine.evaluate(bank_cut({"b:1": 60, "b:2": 41}, epoch=2))
    assert second[0].status == FAIL  # compared with cut 1, although cut 1 ran in an earlier worker
    assert second[0].witness["previous_epoch"] == 1 and second[0].witness["difference"] == 1
    assert engine.restarts == 1
    assert engine.memory("bank.conservation") == {
        'conservation:["balance", "amount", [], [], []]': {"epoch": 2, "sum": 101}
    }


def test_print_and_input_do_not_disturb_the_protocol(tmp_path: Path, engines: list[PredicateEngine]) -> None:
    source = write(
        tmp_path,
        "noisy.py",
        HEADER
        + """
print("printed while loading")

@invariant("noisy")
def noisy(cut):
    print("x" * 200_000)
    sys.stdout.write('{"op": "result"}\\n')
    sys.stdout.flush()
    return sys.stdin.read() == ""

@invariant("after")
def after(cut):
    return violation("still in step", epoch=cut.epoch)
""",
    )
    engine = PredicateEngine([source])
    engines.append(engine)
    results = engine.evaluate(bank_cut({"b:1": 1}, epoch=9))
    assert [(r.name, r.status) for r in results] == [("noisy", PASS), ("after", FAIL)]
    assert results[1].witness == {"epoch": 9} and engine.restarts == 0


def test_modules_are_loaded_from_the_collectors_python_path(
    tmp_path: Path, engines: list[PredicateEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "mychecks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("LIMIT = 3\n")
    write(
        package,
        "bank.py",
        """\
        from cutwatch.predicates import invariant
        from mychecks.helpers import LIMIT

        @invariant("bank.small", timeout=4)
        def small(cut):
            return len(cut.states) <= LIMIT
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    engine = PredicateEngine(["mychecks.bank", "mychecks.bank"])  # named twice, loaded once
    engines.append(engine)
    assert engine.names == ("bank.small",) and engine.predicates[0].timeout == 4
    assert [r.status for r in engine.evaluate(bank_cut({"b:1": 1, "b:2": 2}))] == [PASS]
    assert [r.status for r in engine.evaluate(bank_cut({f"b:{i}": 1 for i in range(4)}))] == [FAIL]


def test_concurrent_evaluations_are_serialised(tmp_path: Path, engines: list[PredicateEngine]) -> None:
    engine = PredicateEngine([write(tmp_path, "good.py", HEADER + GOOD)])
    engines.append(engine)
    outcomes: list[list[PredicateResult]] = []
    failures: list[BaseException] = []

    def run(epoch: int) -> None:
        try:
            outcomes.append(engine.evaluate(bank_cut({"b:1": 50, "b:2": 50}, epoch=epoch)))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures and len(outcomes) == 4
    assert all([r.status for r in results] == [PASS, PASS] for results in outcomes)


def test_only_complete_cuts_are_evaluated(tmp_path: Path, engines: list[PredicateEngine]) -> None:
    engine = PredicateEngine([write(tmp_path, "good.py", HEADER + GOOD)])
    engines.append(engine)
    incomplete = Cut.from_json(bank_cut({"b:1": 1}).to_json() | {"status": "INCOMPLETE"})
    with pytest.raises(ValueError, match="COMPLETE cuts only"):
        engine.evaluate(incomplete)


# Loading errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("files", "where", "reason"),
    [
        ({"bad.py": "x = 1\ndef f(:\n    pass\n"}, "bad.py:2", "syntax error"),
        ({"none.py": "import math\n"}, "none.py", "declares no predicate"),
        (
            {
                "a.py": HEADER + GOOD,
                "b.py": HEADER + "\n\n@invariant('bank.one_leader')\ndef x(cut):\n    return 1\n",
            },
            "b.py:5",
            "duplicate predicate name 'bank.one_leader': also declared at",
        ),
        (
            {"raises.py": "def helper():\n    return 1 / 0\n\nhelper()\n"},
            "raises.py:2",
            "raised ZeroDivisionError: division by zero while loading",
        ),
        (
            {"misuse.py": HEADER + "\n@invariant\ndef f(cut):\n    return True\n"},
            "misuse.py:4",
            "needs a name",
        ),
    ],
)
def test_loading_errors_name_the_file_and_line(
    tmp_path: Path, files: dict[str, str], where: str, reason: str
) -> None:
    sources = [write(tmp_path, name, body) for name, body in files.items()]
    with pytest.raises(PredicateLoadError) as caught:
        PredicateEngine(sources, load_timeout=60).close()
    assert str(caught.value).startswith(str(tmp_path / where)), str(caught.value)
    assert reason in str(caught.value)
    assert caught.value.reason and (caught.value.line is None) == (":" not in where)


def test_sources_are_local_files_or_module_names_only(tmp_path: Path) -> None:
    refused = {
        "http://example.com/p.py": "never from the network",
        "file:///tmp/p.py": "never from the network",
        str(tmp_path / "missing.py"): "no such file",
        str(tmp_path): "is a directory",
        "not a module!": "neither a .py file nor a module name",
        "": "empty",
    }
    (tmp_path / "notes.txt").write_text("")
    refused[str(tmp_path / "notes.txt")] = "must be a .py file"
    for text, reason in refused.items():
        with pytest.raises(PredicateLoadError, match=reason):
            resolve_source(text)
    with pytest.raises(PredicateLoadError, match="no module named 'no_such_checks_module'"):
        PredicateEngine(["no_such_checks_module"]).close()
    with pytest.raises(PredicateLoadError, match="no predicate files"):
        PredicateEngine([])
    with pytest.raises(TypeError):
        PredicateEngine("checks.py")  # type: ignore[arg-type]


def test_a_source_that_hangs_while_loading_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    source = write(
        tmp_path,
        "hangs.py",
        f"""\
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(600)
        """,
    )
    with pytest.raises(PredicateLoadError, match="loading did not finish within 1 s") as caught:
        PredicateEngine([source], load_timeout=1)
    assert caught.value.source.endswith("hangs.py")
    assert wait_gone(int(pid_file.read_text()))


def test_the_worker_exits_when_the_collector_is_killed(tmp_path: Path) -> None:
    """A collector killed with SIGKILL cannot close its engine; its worker still goes away."""
    source = write(
        tmp_path,
        "loops.py",
        HEADER + '\n@invariant("loops")\ndef loops(cut):\n    while True:\n        pass\n',
    )
    script = f"""
import sys
sys.path[:0] = {sys.path!r}
from cutwatch.core import Cut
from cutwatch.predicates.engine import PredicateEngine
engine = PredicateEngine([{source!r}], timeout=600)
print(engine.worker_pid, flush=True)
engine.evaluate(Cut(1, "COMPLETE", 0.0, 1.0, {{}}, (), {{}}))
"""
    collector = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert collector.stdout is not None
        worker = int(collector.stdout.readline())
        assert alive(worker)
        time.sleep(0.5)  # let the worker get into the loop (not needed for correctness)
        collector.kill()
        collector.wait(30)
        assert wait_gone(worker), "the orphaned worker kept running"
    finally:
        collector.kill()
        collector.wait(30)
        if collector.stdout is not None:
            collector.stdout.close()


def test_a_witness_and_memory_over_the_limits(tmp_path: Path, engines: list[PredicateEngine]) -> None:
    source = write(
        tmp_path,
        "big.py",
        HEADER
        + """
@invariant("big.witness")
def big_witness(cut):
    return violation("too much", blob="x" * 5000)

@invariant("big.memory")
def big_memory(cut, memory):
    memory["blob"] = "x" * 5000
    return True
""",
    )
    engine = PredicateEngine([source], max_witness_bytes=1024, max_memory_bytes=1024)
    engines.append(engine)
    witness, memory = engine.evaluate(bank_cut({"b:1": 1}))
    assert witness.status == FAIL and witness.witness["cutwatch"] == "truncated"
    assert memory.status == ERROR and "over the limit of 1024" in memory.error
    assert engine.memory("big.memory") == {}


def test_close_during_an_evaluation_stops_the_worker(tmp_path: Path, engines: list[PredicateEngine]) -> None:
    started = tmp_path / "started"
    source = write(
        tmp_path,
        "slow.py",
        HEADER
        + f"""
@invariant("loops", timeout=600)
def loops(cut):
    open({str(started)!r}, "w").close()
    while True:
        pass

@invariant("after")
def after(cut):
    return True
""",
    )
    engine = PredicateEngine([source])
    engines.append(engine)
    outcome: list[list[PredicateResult]] = []
    evaluating = threading.Thread(target=lambda: outcome.append(engine.evaluate(bank_cut({"b:1": 1}))))
    evaluating.start()
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists()
        engine.close()  # does not wait for the 600 s timeout
        evaluating.join(60)
        assert not evaluating.is_alive()
    finally:
        engine.close()
        evaluating.join(60)
    (results,) = outcome
    assert [r.status for r in results] == [ERROR, ERROR]
    assert "killed by signal" in results[0].error and "closed" in results[1].error
    assert all(wait_gone(pid) for pid in engine.worker_pids)
