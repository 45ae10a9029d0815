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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), str(log)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
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
