"""Real OS processes for tests: start them with their output in a log, stop every one of them.

Used by the tests that run services and collectors as separate processes; a
test's teardown calls :func:`stop_all`, which ends each process with SIGTERM
(SIGKILL if it does not exit in time) and prints its log's tail, which
pytest shows when the test failed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polling import wait_until

START_TIMEOUT = 60.0
"""Generous: several Python processes importing grpc at once on a loaded 2-core machine."""
_LISTENING = re.compile(r"listening on (\S+:\d+)")


def cutwatch_command() -> list[str]:
    """The ``cutwatch`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "cutwatch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from cutwatch.cli import main; main()"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no goodbye to anybody."""
        self.popen.kill()
        self.popen.wait(10)


def spawn(tmp: Path, procs: list[Proc], name: str, command: Sequence[str]) -> Proc:
    """Start ``command`` in ``tmp`` with its output in ``tmp/<name>.log``; it joins ``procs``."""
    log = tmp / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    proc = Proc(name, popen, log)
    procs.append(proc)
    return proc


def listening_address(proc: Proc) -> str:
    """The address a ``cutwatch collector`` process says it listens on (waits for it)."""

    def listening() -> str | None:
        assert proc.alive(), proc.tail()
        match = _LISTENING.search(proc.log.read_text(errors="replace"))
        return match.group(1) if match else None

    address: str = wait_until(listening, f"{proc.name} to listen", START_TIMEOUT, 0.1)
    return address


def terminate(proc: Proc, timeout: float = 20.0) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit code."""
    if proc.alive():
        proc.popen.send_signal(signal.SIGTERM)
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
    return proc.popen.returncode


def stop_all(procs: Sequence[Proc]) -> None:
    """End every process (all asked at once, then waited for) and print the tail of each log."""
    for proc in procs:
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        terminate(proc, timeout=10.0)
    for proc in procs:
        print(proc.tail(15))  # shown by pytest when the test failed
