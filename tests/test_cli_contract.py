"""The command-line contract: every reading command against every state of a collector.

``CONTRACT`` is the table of docs/collector.md ("The command-line contract"):
for each command and state, the exit code and what ``--json`` prints;
``PRUNE_CONTRACT`` is the table of ``cuts prune`` against the states of its
store file. Tests read both tables from the page and compare them with these;
the others run each cell against a real collector on 127.0.0.1 (or a real
store file), once with ``--json`` (stdout must be exactly one JSON document of
the documented shape) and once without (errors only on stderr). The
collector's failed starts run as subprocesses, like an operator would run it.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from cli_runner import cli_runner
from lock_cycle import lock_cycle
from polling import wait_until
from processes import cutwatch_command

import cutwatch
from cutwatch.cli import main
from cutwatch.collector import CollectorClient, CollectorServer, SqliteCutStore, StoredCut
from cutwatch.collector._sessions import EXPECTED_KEY
from cutwatch.security import (
    DEPRECATED_READER_TOKEN_ENV,
    READER_TOKEN_ENV,
    CollectorCredentials,
    CollectorSecurity,
    reader_token_from_env,
)

TIMEOUT = 30.0
DOC = Path(__file__).resolve().parents[1] / "docs" / "collector.md"
READER_TOKEN = "reader-" + "r" * 26
WRONG_TOKEN = "wrong-" + "w" * 26
CLEAN_ENV: dict[str, str | None] = {
    "CUTWATCH_COLLECTOR": None,
    READER_TOKEN_ENV: None,
    DEPRECATED_READER_TOKEN_ENV: None,
}

STATES = {
    "no cut yet": "empty",
    "COMPLETE, all hold": "holds",
    "COMPLETE, violated": "violated",
    "COMPLETE, deadlock": "deadlock",
    "COMPLETE, check errored": "errored",
    "only INCOMPLETE cuts": "incomplete",
    "unreachable": "unreachable",
    "refused": "refused",
    "bad usage": "usage",
    "cannot start": "start",
}
COMMANDS = {
    "snapshot": ["snapshot"],
    "cuts": ["cuts"],
    "cuts --epoch N": ["cuts", "--epoch"],
    "status": ["status"],
    "check": ["check"],
    "deadlocks": ["deadlocks"],
    "deadlocks --now": ["deadlocks", "--now"],
    "collector": ["collector"],
}
Cell = tuple[int, str] | None
"""An exit code and what --json prints (a document's name, ``error:KIND`` or ``none``); None: n/a."""

_READ = ("unreachable", "refused", "usage")
_ERRORS: dict[str, Cell] = {
    "unreachable": (3, "error:unreachable"),
    "refused": (4, "error:refused"),
    "usage": (2, "error:usage"),
    "start": None,
}


def _row(*states: Cell) -> dict[str, Cell]:
    return {
        **dict(zip(["empty", "holds", "violated", "deadlock", "errored", "incomplete"], states, strict=True)),
        **_ERRORS,
    }


CONTRACT: dict[str, dict[str, Cell]] = {
    "snapshot": _row((7, "error:no_agent"), *[(0, "cut")] * 4, (1, "cut")),
    "cuts": _row((7, "error:no_cut"), *[(0, "list")] * 5),
    "cuts --epoch N": _row((7, "error:no_cut"), *[(0, "cut")] * 5),
    "status": _row(*[(0, "status")] * 6),
    "check": _row(
        (7, "error:no_cut"),
        (0, "results"),
        (1, "results"),
        (1, "results"),
        (5, "results"),
        (7, "error:no_cut"),
    ),
    "deadlocks": _row(
        (7, "error:no_cut"),
        (0, "deadlocks"),
        (0, "deadlocks"),
        (1, "deadlocks"),
        (0, "deadlocks"),
        (7, "error:no_cut"),
    ),
    "deadlocks --now": _row(
        (7, "error:no_agent"),
        (0, "deadlocks"),
        (0, "deadlocks"),
        (1, "deadlocks"),
        (0, "deadlocks"),
        (5, "deadlocks"),
    ),
    "collector": {**dict.fromkeys(STATES.values()), "usage": (2, "none"), "start": (6, "none")},
}
READER_CASES = [
    (command, state)
    for state in STATES.values()
    for command in COMMANDS
    if command != "collector" and state != "start" and CONTRACT[command][state] is not None
]

PRUNE_STATES = {
    "a store with cuts to remove (or a dry run)": "due",
    "a store with nothing to remove": "nothing",
    "no such file": "missing",
    "not a cutwatch store (empty, another application's, another schema version)": "foreign",
    "bad usage (no rule, a bad AGE)": "usage",
    "held by another writer past the busy timeout": "locked",
}
PRUNE_CONTRACT: dict[str, Cell] = {
    "due": (0, "prune"),
    "nothing": (0, "prune"),
    "missing": (2, "error:usage"),
    "foreign": (2, "error:usage"),
    "usage": (2, "error:usage"),
    "locked": (4, "error:refused"),
}


# The tables on the page --------------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(first_header: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the table on the page whose first header cell is ``first_header``."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("|") and _cells(line)[0] == first_header
    )
    rows = []
    for line in lines[start + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    return _cells(lines[start]), rows


def _cell(where: str, cell: str) -> Cell:
    match = re.fullmatch(r"`(\d)` (\S+)", cell)
    assert match or cell == "n/a", f"{where}: {cell!r}"
    return (int(match[1]), match[2]) if match else None


def _documented() -> dict[str, dict[str, Cell]]:
    header, rows = _table("command")
    assert header[1:] == list(STATES), header
    return {
        cells[0].strip("`"): {
            STATES[label]: _cell(f"{cells[0]} / {label}", cell)
            for label, cell in zip(header[1:], cells[1:], strict=True)
        }
        for cells in rows
    }


def _documented_prune() -> dict[str, Cell]:
    header, rows = _table("`--db` file")
    assert header == ["`--db` file", "`cuts prune`"], header
    assert [cells[0] for cells in rows] == list(PRUNE_STATES)
    return {PRUNE_STATES[label]: _cell(label, cell) for label, cell in rows}


def test_the_documented_table_is_the_tested_one() -> None:
    assert _documented() == CONTRACT


def test_the_documented_prune_table_is_the_tested_one() -> None:
    assert _documented_prune() == PRUNE_CONTRACT


def test_every_exit_code_in_the_tables_is_in_the_code_list() -> None:
    text = DOC.read_text(encoding="utf-8")
    listed = {int(m) for m in re.findall(r"^\| (\d) \| ", text, re.MULTILINE)}
    cells = [*(cell for row in CONTRACT.values() for cell in row.values()), *PRUNE_CONTRACT.values()]
    used = {cell[0] for cell in cells if cell is not None}
    assert used <= listed == set(range(8))


# Collectors in each state -----------------------------------------------------------------------
PREDICATES = textwrap.dedent(
    """
    from cutwatch.predicates import invariant, violation

    @invariant("contract.mode")
    def mode(cut):
        modes = {entry["state"].get("mode") for entry in cut.states.values()}
        if "errored" in modes:
            raise RuntimeError("this predicate fails on purpose")
        return violation("violated on purpose") if "violated" in modes else True
    """
)


@dataclass
class Checked:
    """A collector with a predicate and one agent whose state says what its checks find."""

    server: CollectorServer
    agent: cutwatch.Agent
    mode: str = "holds"
    entered: str = ""
    epoch: int = 0
    _cycle: ExitStack = field(default_factory=ExitStack)

    def enter(self, mode: str) -> None:
        """Make the newest cut one whose checks find ``mode`` (holds, violated, errored, deadlock)."""
        if self.entered == mode:
            return
        self.untangle()
        self.mode = mode
        if mode == "deadlock":  # two threads of the agent, each holding a lock the other waits for
            self._cycle.enter_context(lock_cycle(self.agent, "contract:1", "contract:2"))
        with CollectorClient(self.server.address) as client:
            self.epoch = client.snapshot(timeout=TIMEOUT).epoch
        self.entered = mode

    def untangle(self) -> None:
        self._cycle.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract")


@pytest.fixture(scope="module")
def empty(folder: Path) -> Iterator[CollectorServer]:
    with CollectorServer(folder / "empty.db", listen="127.0.0.1:0") as server:
        yield server


@pytest.fixture(scope="module")
def checked(folder: Path) -> Iterator[Checked]:
    predicates = folder / "contract_checks.py"
    predicates.write_text(PREDICATES)
    with CollectorServer(folder / "checked.db", listen="127.0.0.1:0", predicates=[str(predicates)]) as server:
        world = Checked(server, cutwatch.Agent("contract", collector=server.address).start())
        try:
            world.agent.register_state("mode", lambda: world.mode)
            assert world.agent.wait_registered(TIMEOUT)
            yield world
        finally:
            world.untangle()
            world.agent.close()


@pytest.fixture(scope="module")
def incomplete(folder: Path) -> Iterator[tuple[CollectorServer, str]]:
    """A collector that restarted after a crash while an agent was registered: the agent is expected
    back and never comes (it still talks to the first one, whose store was copied as a crash left it)."""
    with CollectorServer(folder / "before.db", listen="127.0.0.1:0") as before:
        agent = cutwatch.Agent("away", collector=before.address).start()
        try:
            assert agent.wait_registered(TIMEOUT)
            wait_until(lambda: agent.process_id in (before.store.get_meta(EXPECTED_KEY) or ""), "the roster")
            with (
                sqlite3.connect(folder / "before.db") as source,
                sqlite3.connect(folder / "after.db") as copy,
            ):
                source.backup(copy)
            with CollectorServer(folder / "after.db", listen="127.0.0.1:0", rejoin_grace=3600.0) as server:
                yield server, agent.process_id
        finally:
            agent.close(timeout=1.0)


@pytest.fixture(scope="module")
def secured(folder: Path) -> Iterator[CollectorServer]:
    security = CollectorSecurity(reader_tokens=(READER_TOKEN,))
    with CollectorServer(folder / "secured.db", listen="127.0.0.1:0", security=security) as server:
        yield server


@pytest.fixture(scope="module")
def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@dataclass(frozen=True)
class Target:
    address: str
    epoch: int = 1
    env: dict[str, str | None] = field(default_factory=dict)


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The collector of the state ``request.param``, in that state."""
    state = request.param
    if state == "empty":
        yield Target(request.getfixturevalue("empty").address)
    elif state == "incomplete":
        server, _ = request.getfixturevalue("incomplete")
        with CollectorClient(server.address) as client:
            newest = client.list_cuts(limit=1)
            epoch = newest[0].epoch if newest else client.snapshot(timeout=TIMEOUT).epoch
        yield Target(server.address, epoch)
    elif state == "unreachable":
        yield Target(request.getfixturevalue("closed_port"))
    elif state == "refused":
        yield Target(request.getfixturevalue("secured").address, env={READER_TOKEN_ENV: WRONG_TOKEN})
    elif state == "usage":
        yield Target(request.getfixturevalue("empty").address)
    else:
        world: Checked = request.getfixturevalue("checked")
        world.enter(state)
        yield Target(world.server.address, world.epoch)


# Running a cell ---------------------------------------------------------------------------------
def _args(command: str, state: str, target: Target) -> list[str]:
    args = [*COMMANDS[command], "--collector", target.address]
    if command == "cuts --epoch N":
        args.insert(2, str(target.epoch))
    if command in ("snapshot", "deadlocks --now"):
        args += ["--timeout", "0s" if state == "usage" else "20s"]
    elif state == "usage":
        args.append("--no-such-option")
    return args


def _shape(doc: Any, name: str, code: int, state: str) -> None:
    """``doc`` is the document ``name`` of docs/collector.md, agreeing with the exit ``code``."""
    if name.startswith("error:"):
        assert doc == {"error": {"kind": name[6:], "message": doc["error"]["message"], "exit_code": code}}
        assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    elif name == "cut":
        assert doc["format"] == 1 and isinstance(doc["epoch"], int)
        assert doc["status"] == ("INCOMPLETE" if state == "incomplete" else "COMPLETE")
    elif name == "list":
        assert doc and isinstance(doc, list)
        keys = {"epoch", "status", "started", "finished", "processes", "in_transit", "missing", "reasons"}
        assert all(set(item) == keys for item in doc)
    elif name == "status":
        assert {"agents", "running", "absent", "stats", "checks", "security", "limits"} <= set(doc)
    elif name == "results":
        assert set(doc) == {"epoch", "cut_status", "results"} and doc["results"]
        statuses = {r["status"] for r in doc["results"]}
        assert all(set(r) == {"name", "status", "message", "witness"} for r in doc["results"])
        assert ("FAIL" in statuses) == (code == 1) and ("ERROR" in statuses) == (code == 5)
    elif name == "deadlocks":
        base = {"epoch", "cut_status", "status", "message", "deadlocks"}
        assert base <= set(doc) <= {*base, "reasons"}
        verdicts = {0: "PASS", 1: "FAIL", 5: "INCONCLUSIVE"}
        assert doc["status"] == verdicts[code] and bool(doc["deadlocks"]) == (code == 1)
    else:
        pytest.fail(f"no shape for {name}")


@pytest.mark.parametrize(
    ("command", "target"),
    [pytest.param(c, s, id=f"{c}-{s}") for c, s in READER_CASES],
    indirect=["target"],
)
def test_each_command_in_each_state(command: str, target: Target, request: pytest.FixtureRequest) -> None:
    state = request.node.callspec.params["target"]
    cell = CONTRACT[command][state]
    assert cell is not None
    code, name = cell
    runner = cli_runner()
    env = {**CLEAN_ENV, **target.env}
    as_json = runner.invoke(main, [*_args(command, state, target), "--json"], env=env)
    assert as_json.exit_code == code, (as_json.stdout, as_json.stderr)
    _shape(json.loads(as_json.stdout), name, code, state)
    if name.startswith("error:"):
        assert as_json.stderr.strip(), "the message for people is on stderr"
    else:
        assert as_json.stderr == "", "an answer alone: nothing for people"
    text = runner.invoke(main, _args(command, state, target), env=env)
    assert text.exit_code == code, (text.stdout, text.stderr)
    if name.startswith("error:"):
        assert text.stdout == "" and text.stderr.startswith(("cutwatch: ", "Usage: ")), text.stderr
    else:
        assert text.stdout.strip()


# cuts prune against each state of its file --------------------------------------------------------
def _stored_cut(epoch: int) -> StoredCut:
    return StoredCut(
        epoch,
        "COMPLETE",
        started=1.0,
        finished=2.0,
        reasons=(),
        missing=(),
        unsettled=(),
        states=(),
        in_transit=(),
    )


def _prune_args(state: str, folder: Path, stack: ExitStack) -> list[str]:
    """A fresh file in ``state`` and the ``cuts prune`` arguments for it; ``stack`` ends what holds it."""
    db = folder / f"{state}.db"
    db.unlink(missing_ok=True)
    if state == "foreign":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.close()
    elif state != "missing":
        with SqliteCutStore(db) as store:
            for epoch in range(1, 4 if state in ("due", "locked") else 2):
                store.save_cut(_stored_cut(epoch))
    if state == "locked":  # another writer in the middle of a transaction
        writer = sqlite3.connect(db, isolation_level=None)
        stack.callback(writer.close)
        writer.execute("BEGIN IMMEDIATE")
        stack.callback(writer.execute, "ROLLBACK")
    rule = [] if state == "usage" else ["--keep-cuts", "1"]
    return ["cuts", "prune", "--db", str(db), *rule]


@pytest.mark.parametrize("state", list(PRUNE_CONTRACT))
def test_cuts_prune_in_each_state_of_its_file(
    state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell = PRUNE_CONTRACT[state]
    assert cell is not None
    code, name = cell
    monkeypatch.setattr("cutwatch.cli._prune.BUSY_TIMEOUT", 0.05)
    runner = cli_runner()
    for as_json in (True, False):
        with ExitStack() as stack:
            args = _prune_args(state, tmp_path, stack)
            result = runner.invoke(main, [*args, "--json"] if as_json else args, env=CLEAN_ENV)
        assert result.exit_code == code, (result.stdout, result.stderr)
        if not as_json:
            if name.startswith("error:"):
                assert result.stdout == "" and result.stderr.startswith(("cutwatch: ", "Usage: "))
            else:
                assert result.stdout.strip() and result.stderr == ""
            continue
        doc = json.loads(result.stdout)
        if name.startswith("error:"):
            assert result.stderr.strip(), "the message for people is on stderr"
            assert doc == {"error": {"kind": name[6:], "message": doc["error"]["message"], "exit_code": code}}
        else:
            assert name == "prune" and result.stderr == ""
            keys = {"dry_run", "removed", "epochs", "stored", "more", "keep_cuts", "keep_for_seconds"}
            assert set(doc) == keys and doc["stored"] == 1
            assert doc["removed"] == (2 if state == "due" else 0)


def test_a_missing_token_is_refused_like_a_wrong_one(secured: CollectorServer) -> None:
    for command in ("status", "cuts", "check", "snapshot"):
        result = cli_runner().invoke(main, [command, "--collector", secured.address, "--json"], env=CLEAN_ENV)
        assert result.exit_code == 4, result.output
        assert json.loads(result.stdout)["error"]["kind"] == "refused"
        assert "UNAUTHENTICATED" in result.stderr and READER_TOKEN_ENV in result.stderr


# The collector that cannot start ----------------------------------------------------------------
@pytest.mark.parametrize("cause", ["port taken", "store unusable", "predicates do not load"])
def test_a_collector_that_cannot_start_exits_6(cause: str, tmp_path: Path) -> None:
    args = ["--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.db")]
    holder = socket.socket()
    try:
        if cause == "port taken":
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            args[1] = f"127.0.0.1:{holder.getsockname()[1]}"
        elif cause == "store unusable":
            (tmp_path / "file").write_text("not a folder")
            args[3] = str(tmp_path / "file" / "c.db")
        else:
            (tmp_path / "bad.py").write_text("def (\n")
            args += ["--predicates", str(tmp_path / "bad.py")]
        done = subprocess.run(
            [*cutwatch_command(), "collector", *args], capture_output=True, text=True, timeout=120
        )
    finally:
        holder.close()
    assert done.returncode == 6, done.stderr
    assert done.stdout == ""
    assert "cannot start the collector" in done.stderr
    assert "listening on" not in done.stderr


def test_a_collector_given_bad_usage_exits_2(tmp_path: Path) -> None:
    result = cli_runner().invoke(main, ["collector", "--every", "0s", "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 2 and result.stdout == ""
    assert "a duration must be positive" in result.stderr


# status and snapshot tell the same story --------------------------------------------------------
def test_with_no_agent_status_and_snapshot_agree(empty: CollectorServer) -> None:
    runner = cli_runner()
    status = runner.invoke(main, ["status", "--collector", empty.address], env=CLEAN_ENV)
    assert status.exit_code == 0 and "a snapshot has nothing to take" in status.stdout
    taken = runner.invoke(main, ["snapshot", "--collector", empty.address], env=CLEAN_ENV)
    assert taken.exit_code == 7 and "no agent is registered" in taken.stderr


def test_with_an_agent_expected_back_snapshots_are_incomplete_and_name_it(
    incomplete: tuple[CollectorServer, str],
) -> None:
    server, away = incomplete
    runner = cli_runner()
    status = json.loads(runner.invoke(main, ["status", "--collector", server.address, "--json"]).stdout)
    assert status["agents"] == [] and [a["process"] for a in status["absent"]] == [away]
    text = runner.invoke(main, ["status", "--collector", server.address]).stdout
    assert "expected back (snapshots are INCOMPLETE" in text
    taken = runner.invoke(main, ["snapshot", "--collector", server.address, "--json"], env=CLEAN_ENV)
    assert taken.exit_code == 1, taken.output
    cut = json.loads(taken.stdout)
    assert cut["status"] == "INCOMPLETE" and cut["states"] == {}
    assert any(away in reason and "not connected" in reason for reason in cut["reasons"]), cut["reasons"]
    checked = runner.invoke(main, ["check", "--collector", server.address], env=CLEAN_ENV)
    assert checked.exit_code == 7 and "is INCOMPLETE" in checked.stderr


# One name per token role ------------------------------------------------------------------------
def test_the_reader_token_variable_is_read_and_the_old_name_still_works_with_a_notice(
    secured: CollectorServer,
) -> None:
    runner = cli_runner()
    args = ["status", "--collector", secured.address, "--json"]
    current = runner.invoke(main, args, env={**CLEAN_ENV, READER_TOKEN_ENV: READER_TOKEN})
    assert current.exit_code == 0 and current.stderr == ""
    old = runner.invoke(main, args, env={**CLEAN_ENV, DEPRECATED_READER_TOKEN_ENV: READER_TOKEN})
    assert old.exit_code == 0
    json.loads(old.stdout)
    (notice,) = old.stderr.splitlines()
    assert DEPRECATED_READER_TOKEN_ENV in notice and READER_TOKEN_ENV in notice
    both = {**CLEAN_ENV, READER_TOKEN_ENV: READER_TOKEN, DEPRECATED_READER_TOKEN_ENV: WRONG_TOKEN}
    preferred = runner.invoke(main, args, env=both)
    assert preferred.exit_code == 0 and preferred.stderr == ""


def test_collector_client_presents_the_reader_token_of_the_environment(
    secured: CollectorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEPRECATED_READER_TOKEN_ENV, raising=False)
    monkeypatch.setenv(READER_TOKEN_ENV, READER_TOKEN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with CollectorClient(secured.address) as client:
            assert client.status()["security"]["reader_token"] is True
    monkeypatch.delenv(READER_TOKEN_ENV)
    monkeypatch.setenv(DEPRECATED_READER_TOKEN_ENV, READER_TOKEN)
    with pytest.warns(DeprecationWarning, match=READER_TOKEN_ENV):
        client = CollectorClient(secured.address)
    with client:
        assert client.status()["agents"] == []
    # Credentials given are used as they are: the environment does not add a token.
    bare = CollectorClient(secured.address, credentials=CollectorCredentials())
    with bare, pytest.raises(cutwatch.CollectorAuthError):
        bare.status()


def test_reader_token_from_env_prefers_the_role_name() -> None:
    assert reader_token_from_env({}) == (None, None)
    assert reader_token_from_env({READER_TOKEN_ENV: " a ", DEPRECATED_READER_TOKEN_ENV: "b"}) == (
        "a",
        READER_TOKEN_ENV,
    )
    assert reader_token_from_env({READER_TOKEN_ENV: "", DEPRECATED_READER_TOKEN_ENV: "b"}) == (
        "b",
        DEPRECATED_READER_TOKEN_ENV,
    )


def test_a_tls_mismatch_ends_as_unreachable(folder: Path) -> None:
    """Documented beside the table: a failed handshake is code 3, as gRPC cannot tell it from a closed
    connection; against a certificate it does not trust, the message says to check the certificates."""
    server_ca, other_ca = trustme.CA(), trustme.CA()
    issued = server_ca.issue_cert("127.0.0.1")
    security = CollectorSecurity(
        certificate_chain=b"".join(pem.bytes() for pem in issued.cert_chain_pems),
        private_key=issued.private_key_pem.bytes(),
    )
    wrong_ca = folder / "other-ca.pem"
    wrong_ca.write_bytes(other_ca.cert_pem.bytes())
    with CollectorServer(folder / "tls.db", listen="127.0.0.1:0", security=security) as server:
        for extra in ([], ["--ca-cert", str(wrong_ca)]):
            args = ["status", "--collector", server.address, "--json", *extra]
            result = cli_runner().invoke(main, args, env=CLEAN_ENV)
            assert result.exit_code == 3, result.output
            assert json.loads(result.stdout)["error"]["kind"] == "unreachable"
            if extra:
                assert "TLS handshake failed" in result.stderr, result.stderr
