"""The examples in examples/ run as a user would run them, and say what the README says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cutwatch.agent import SHIVIZ_REGEX

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CLOCK_LINE = re.compile(r"^(?P<pid>\S+) clock: (?P<entries>.*)$", re.MULTILINE)


def _clock(entries: str) -> dict[str, int]:
    return {pid: int(value) for pid, value in (item.split("=") for item in entries.split(", "))}


def test_quickstart_stamps_every_call_and_writes_a_shiviz_log(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    out = run_example("quickstart.py", tmp_path, str(log))
    assert out.startswith("hello, ada\nhello, grace\n")

    clocks = {m["pid"]: _clock(m["entries"]) for m in CLOCK_LINE.finditer(out)}
    frontend = next(pid for pid in clocks if pid.startswith("frontend:"))
    greeter = next(pid for pid in clocks if pid.startswith("greeter:"))
    # Each side knows the other: the clocks travelled on the calls.
    assert set(clocks[frontend]) == set(clocks[greeter]) == {frontend, greeter}
    # The frontend received the greeter's last event, not the other way round.
    assert clocks[frontend][greeter] == clocks[greeter][greeter]
    assert clocks[greeter][frontend] < clocks[frontend][frontend]
    assert "greeter's clock happened before frontend's: True" in out
    assert "frontend: 2 requests sent, 2 responses received, 0 untracked, 0 internal errors" in out

    # ShiViz's regex uses (?<name>...); Python spells named groups (?P<name>...).
    shiviz = re.compile(SHIVIZ_REGEX.replace("(?<", "(?P<"))
    events = list(shiviz.finditer(log.read_text(encoding="utf-8")))
    descriptions = [event["event"] for event in events]
    assert {event["host"] for event in events} == {frontend, greeter}
    # 2 start events, then per call: send request, receive request, send response, receive response.
    assert len(events) == 2 + 2 * 4
    assert sum(d.startswith("send request /demo.Greeter/Greet") for d in descriptions) == 2
    assert sum(d.startswith("receive response /demo.Greeter/Greet") for d in descriptions) == 2


def test_readme_quickstart_is_the_example_verbatim() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    quickstart = [block for block in blocks if "def greet(" in block]
    assert len(quickstart) == 1
    assert quickstart[0] in (EXAMPLES / "quickstart.py").read_text(encoding="utf-8")


def run_example(name: str, where: Path, *args: str) -> str:
    """Run ``examples/<name>`` as a user would (in an empty folder, the installed package); its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_getting_started_takes_a_cut_whose_money_adds_up_and_reports_the_lock_cycle(tmp_path: Path) -> None:
    out = run_example("getting_started.py", tmp_path)
    assert out.startswith(
        "paid in 10, the ledger holds 10\npaid in 20, the ledger holds 30\npaid in 5, the ledger holds 35\n"
    )
    assert "cut 1: COMPLETE, 2 processes, 0 in transit\n" in out
    assert re.search(r'^  ledger:\S+: \{"balance": 35\}$', out, re.MULTILINE)
    assert re.search(r'^  teller:\S+: \{"cash": 65\}$', out, re.MULTILINE)
    assert "  money in the cut: 100\n" in out

    # client.deadlocks() found the two threads' cycle, and find_deadlocks agreed (the example asserts it).
    report = r"^deadlock on cut \d+ \(\w+\): deadlock of 2 tasks in 1 process \(teller:\S+\)$"
    reports = re.findall(report, out, re.MULTILINE)
    assert len(reports) == 1
    assert re.search(r"holds \['accounts'\], waits for lock audit at teller:", out)
    assert re.search(r"holds \['audit'\], waits for lock accounts at teller:", out)
    assert "rests on: nothing but the cut" in out
    # It cleaned up after itself: no SQLite file or anything else left where it ran.
    assert list(tmp_path.iterdir()) == []


def test_streaming_example_snapshots_add_up_while_deposits_stream(tmp_path: Path) -> None:
    lines = run_example("streaming.py", tmp_path).splitlines()
    complete = [line for line in lines if ": COMPLETE, 2000 in all" in line]
    assert len([line for line in lines if line.startswith("snapshot ")]) == 10
    assert complete, lines  # the collector learns the stream's direction from the first cut
    assert lines[-1] == "done: teller 500, vault 1500"
