"""The predicate worker process, seen from the collector: starting it, JSON lines over its pipes,
and killing it.

Pipes are watched with ``selectors``: POSIX only, like the rest of the
collector's deployment story.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import subprocess
import sys
import time
import weakref
from typing import IO, Any

from cutwatch.core import PredicateWorkerError

__all__ = ["Worker"]

_LOG = logging.getLogger("cutwatch.predicates")
_STDERR_TAIL = 2000
_CLOSE_GRACE = 2.0
_READ_CHUNK = 1 << 16


class _WorkerDied(PredicateWorkerError):
    def __init__(self, what: str, output: str) -> None:
        self.what = what
        self.output = output
        """The worker's last lines on stderr (what a crash printed)."""
        super().__init__(what + (f"; its last output:\n{output}" if output else ""))

    def during(self, doing: str) -> str:
        return f"{self.what} {doing}" + (f"; its last output:\n{self.output}" if self.output else "")


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill and reap ``process`` (also from a finalizer: never raises)."""
    with contextlib.suppress(OSError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        process.wait(timeout=10)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


_PATH_VARIABLE = "CUTWATCH_PREDICATE_WORKER_PATH"
_BOOT = (
    "import json, os, sys; sys.path[:] = json.loads(os.environ.pop('CUTWATCH_PREDICATE_WORKER_PATH')); "
    "from cutwatch.predicates._worker import main; sys.exit(main())"
)


class Worker:
    """One worker process and the JSON-lines protocol over its pipes."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max_line = max_line_bytes
        # The worker gets exactly the collector's import path: ``python -m`` would put the current
        # directory first, where a folder of the same name could shadow a package.
        self.process: subprocess.Popen[bytes] = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            env={**os.environ, _PATH_VARIABLE: json.dumps(sys.path)},
        )
        self._finalizer = weakref.finalize(self, _kill, self.process)
        assert self.process.stdin is not None and self.process.stdout is not None
        assert self.process.stderr is not None
        self._stdin: IO[bytes] = self.process.stdin
        self._out_fd = self.process.stdout.fileno()
        self._err_fd = self.process.stderr.fileno()
        for fd in (self._out_fd, self._err_fd):
            os.set_blocking(fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._out_fd, selectors.EVENT_READ)
        self._selector.register(self._err_fd, selectors.EVENT_READ)
        self._buffer = bytearray()
        self._err_line = bytearray()
        self._stderr_tail = ""
        self._eof = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, line: bytes) -> None:
        try:
            self._stdin.write(line)
            self._stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise self._died("stopped reading its requests") from None

    def read(self, deadline: float) -> dict[str, Any] | None:
        """The next reply, or None once ``deadline`` (monotonic) passes. Raises ``_WorkerDied``."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                try:
                    doc = json.loads(line)
                except ValueError:
                    raise self._died(f"sent a reply that is not JSON: {line[:200]!r}") from None
                if not isinstance(doc, dict):
                    raise self._died(f"sent a reply that is not an object: {line[:200]!r}")
                return doc
            if self._eof:
                raise self._died("exited")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            for key, _ in self._selector.select(remaining):
                self._drain(key.fd)

    def _drain(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if fd == self._out_fd:
            if not data:
                self._eof = True
                self._selector.unregister(fd)
                return
            self._buffer += data
            if len(self._buffer) > self._max_line and b"\n" not in self._buffer:
                raise self._died(f"sent a reply larger than {self._max_line} bytes")
            return
        if not data:
            self._selector.unregister(fd)
            return
        self._err_line += data
        *lines, rest = self._err_line.split(b"\n")
        self._err_line = bytearray(rest[-_STDERR_TAIL:])
        for raw in lines:
            text = raw[:_STDERR_TAIL].decode("utf-8", "replace")
            _LOG.info("predicate worker %d: %s", self.pid, text)
            self._stderr_tail = (self._stderr_tail + text + "\n")[-_STDERR_TAIL:]

    def _died(self, what: str) -> _WorkerDied:
        """Kill for good (if not dead yet) and describe how the worker ended."""
        self.signal_kill()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.process.wait(timeout=10)
        registered = self._selector.get_map()
        if registered is not None and self._err_fd in registered:
            for _ in range(16):  # the last words on stderr (pipes still open), bounded
                if self._err_fd not in registered:
                    break
                self._drain(self._err_fd)
        _kill(self.process)
        code = self.process.returncode
        how = f"exit code {code}" if code is None or code >= 0 else f"killed by signal {-code}"
        tail = (self._stderr_tail + self._err_line.decode("utf-8", "replace")).strip()
        return _WorkerDied(f"the predicate worker {what} ({how})", tail)

    def signal_kill(self) -> None:
        """SIGKILL the process, touching nothing else (safe while another thread reads the pipes)."""
        with contextlib.suppress(OSError):
            self.process.kill()

    def kill(self) -> None:
        _kill(self.process)
        self._finalizer.detach()
        self._selector.close()

    def stop(self) -> None:
        """Ask the worker to exit (its stdin closes); kill it if it does not within a grace period."""
        with contextlib.suppress(OSError):
            self._stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=_CLOSE_GRACE)
        self.kill()
