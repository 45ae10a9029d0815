"""The predicate engine: the user's predicates run in a worker process the collector can kill.

A predicate is the user's code, and the collector must outlive any bug in
it. So predicates are imported and run in a separate OS
process, spoken to with JSON lines over pipes: a predicate that raises is an
ERROR result; one that runs past its timeout, or takes the interpreter down
(``os._exit``, a crash in an extension), gets its worker killed and becomes
an ERROR result, and the engine starts a fresh worker for the predicates
still to run on that cut. The cut crosses once per evaluation as one JSON
line. Each predicate's memory (for invariants across cuts) lives here, in
the collector's process, and travels with each request, so a restart loses
nothing but the evaluation that failed.

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
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from cutwatch.agent.exceptions import CutwatchError
from cutwatch.collector import Cut
from cutwatch.predicates._api import (
    DEFAULT_MAX_MEMORY_BYTES,
    DEFAULT_MAX_WITNESS_BYTES,
    ERROR,
    FAIL,
    PASS,
    PredicateResult,
)
from cutwatch.predicates._loader import PredicateLoadError, Source, resolve_source

__all__ = ["PredicateEngine", "PredicateInfo", "PredicateWorkerError"]

_LOG = logging.getLogger("cutwatch.predicates")
_STDERR_TAIL = 2000
_READ_CHUNK = 1 << 16
_CLOSE_GRACE = 2.0


class PredicateWorkerError(CutwatchError):
    """The worker could not be started, or stopped answering (inside the engine: becomes ERRORs)."""


class _WorkerDied(PredicateWorkerError):
    def __init__(self, what: str, output: str) -> None:
        self.what = what
        self.output = output
        """The worker's last lines on stderr (what a crash printed)."""
        super().__init__(what + (f"; its last output:\n{output}" if output else ""))

    def during(self, doing: str) -> str:
        return f"{self.what} {doing}" + (f"; its last output:\n{self.output}" if self.output else "")


@dataclass(frozen=True)
class PredicateInfo:
    """A loaded predicate: its name, its timeout in seconds, and where it is declared."""

    name: str
    timeout: float
    source: str
    line: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "timeout": self.timeout, "source": self.source, "line": self.line}


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


class _Worker:
    """One worker process and the JSON-lines protocol over its pipes."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max_line = max_line_bytes
        # The worker gets exactly the collector's import path: ``python -m`` would put the current
        # directory first, where a source checkout's ``cutwatch/`` folder would shadow the package.
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


class PredicateEngine:
    """Load predicates from operator-named local sources; evaluate them on each complete cut.

    ``sources`` are ``.py`` files or module names (see
    :func:`~cutwatch.predicates.resolve_source`). Loading happens at
    construction, in the worker, and any problem raises
    :class:`~cutwatch.predicates.PredicateLoadError` naming the file and line.
    ``timeout`` is the default seconds per predicate per cut
    (``@invariant(name, timeout=...)`` overrides it); ``load_timeout`` bounds
    starting a worker and importing the sources, and reading a cut.

    Thread-safe; :meth:`evaluate` calls are serialised. Always :meth:`close`
    it (or use it as a context manager): that stops the worker.
    """

    def __init__(
        self,
        sources: Sequence[str],
        *,
        timeout: float = 5.0,
        load_timeout: float = 30.0,
        max_witness_bytes: int = DEFAULT_MAX_WITNESS_BYTES,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    ) -> None:
        if isinstance(sources, str):
            raise TypeError("sources is a list of files or module names, not one string")
        if not timeout > 0 or not load_timeout > 0:
            raise ValueError("timeout and load_timeout must be positive")
        if max_witness_bytes < 256 or max_memory_bytes < 256:
            raise ValueError("max_witness_bytes and max_memory_bytes must be at least 256")
        resolved: list[Source] = []
        for text in sources:
            source = resolve_source(text)
            if source not in resolved:
                resolved.append(source)
        if not resolved:
            raise PredicateLoadError("(no source)", None, "no predicate files or modules were given")
        self._sources = tuple(resolved)
        self._timeout = float(timeout)
        self._load_timeout = float(load_timeout)
        self._max_witness = max_witness_bytes
        self._max_memory = max_memory_bytes
        self._max_line = 4 * (max_witness_bytes + max_memory_bytes) + (1 << 20)
        self._evaluating = threading.Lock()
        """Serialises evaluations (one worker, one cut at a time)."""
        self._state = threading.Lock()
        """Guards ``_worker`` and ``_closed``, so that close() need not wait for an evaluation."""
        self._worker: _Worker | None = None
        self._memory: dict[str, dict[str, Any]] = {}
        self._closed = False
        self.restarts = 0
        """Workers started after the first (after a timeout, a crash or a failed start)."""
        self.worker_pids: list[int] = []
        """Every worker process this engine started, in order."""
        worker, infos = self._start()
        self._worker = worker
        self._infos = tuple(infos)

    # Public ----------------------------------------------------------------------------------------
    @property
    def predicates(self) -> tuple[PredicateInfo, ...]:
        return self._infos

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self._infos)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def worker_pid(self) -> int | None:
        """The running worker's process id (None between a kill and the next evaluation)."""
        worker = self._worker
        return worker.pid if worker is not None else None

    def memory(self, name: str) -> dict[str, Any]:
        """A copy of the memory ``name`` keeps across cuts."""
        with self._state:
            return json.loads(json.dumps(self._memory.get(name, {})))  # type: ignore[no-any-return]

    def evaluate(self, cut: Cut) -> list[PredicateResult]:
        """Every predicate's result on ``cut`` (a COMPLETE one), in load order; never raises for a
        predicate's fault: a predicate that raises, times out or kills its worker is an ERROR."""
        if not cut.complete:
            raise ValueError(f"predicates run on COMPLETE cuts only; epoch {cut.epoch} is {cut.status}")
        cut_text = json.dumps(cut.to_json())
        with self._evaluating:
            if self._closed:
                raise RuntimeError("the predicate engine is closed")
            results: dict[str, PredicateResult] = {}
            pending = list(self._infos)
            used: _Worker | None = None
            while pending:
                used = self._run(cut, cut_text, pending, results) or used
            if self.closed and used is not None:
                used.kill()  # close() came during the evaluation and only signalled it
            return [results[i.name] for i in self._infos]

    def close(self) -> None:
        """Stop the worker (wait briefly, then kill), also in the middle of an evaluation, whose
        remaining predicates then get an ERROR. Idempotent."""
        with self._state:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is None:
            return
        if self._evaluating.acquire(blocking=False):
            try:
                worker.stop()
            finally:
                self._evaluating.release()
        else:
            # The evaluating thread owns the pipes: kill the process only; it sees the end, reports
            # ERRORs for what is left, and releases the rest.
            worker.signal_kill()

    def __enter__(self) -> PredicateEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Internals -------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        try:
            worker = _Worker(self._max_line)
        except OSError as exc:
            raise PredicateWorkerError(f"cannot start the predicate worker: {exc}") from exc
        self.worker_pids.append(worker.pid)
        return worker

    def _start(self) -> tuple[_Worker, list[PredicateInfo]]:
        """A worker with every source loaded, or ``PredicateLoadError`` (the worker is gone then)."""
        worker = self._spawn()
        current = self._sources[0].given
        try:
            request = {
                "op": "load",
                "sources": [s.to_json() for s in self._sources],
                "sys_path": [p for p in sys.path if isinstance(p, str)],
                "max_witness_bytes": self._max_witness,
                "max_memory_bytes": self._max_memory,
            }
            worker.send(json.dumps(request).encode() + b"\n")
            deadline = time.monotonic() + self._load_timeout
            while True:
                reply = worker.read(deadline)
                if reply is None:
                    raise PredicateLoadError(
                        current,
                        None,
                        f"loading did not finish within {self._load_timeout:g} s (the worker was killed)",
                    )
                op = reply.get("op")
                if op == "loading":
                    current = str(reply.get("source", current))
                elif op == "load_error":
                    line = reply.get("line")
                    raise PredicateLoadError(
                        str(reply.get("source", current)),
                        line if isinstance(line, int) else None,
                        str(reply.get("reason", "failed to load")),
                        str(reply.get("details", "")),
                    )
                elif op == "loaded":
                    infos = [
                        PredicateInfo(
                            name=str(p["name"]),
                            timeout=float(p["timeout"]) if p.get("timeout") is not None else self._timeout,
                            source=str(p.get("source", "")),
                            line=int(p.get("line", 0)),
                        )
                        for p in reply["predicates"]
                    ]
                    return worker, infos
                else:
                    raise PredicateLoadError(current, None, f"unexpected reply from the worker: {reply}")
        except _WorkerDied as exc:
            worker.kill()
            raise PredicateLoadError(current, None, f"could not be loaded: {exc}") from None
        except BaseException:
            worker.kill()
            raise

    def _restart(self) -> _Worker:
        """A fresh worker for the predicates still to run; ``PredicateWorkerError`` if that fails."""
        self.restarts += 1
        try:
            worker, infos = self._start()
        except PredicateLoadError as exc:
            raise PredicateWorkerError(f"could not restart the predicate worker: {exc}") from None
        missing = {i.name for i in self._infos} - {i.name for i in infos}
        if missing:
            _LOG.warning("after a restart the predicate worker lacks %s", sorted(missing))
        return worker

    def _drop_worker(self, worker: _Worker) -> None:
        with self._state:
            if self._worker is worker:
                self._worker = None
        worker.kill()

    def _current_worker(self) -> _Worker:
        """The worker to run on, started if needed; ``PredicateWorkerError`` if closed or failing."""
        with self._state:
            if self._closed:
                raise PredicateWorkerError("the predicate engine was closed during the evaluation")
            if self._worker is not None:
                return self._worker
        worker = self._restart()
        with self._state:
            if self._worker is None and not self.closed:
                self._worker = worker
                return worker
        worker.kill()
        raise PredicateWorkerError("the predicate engine was closed during the evaluation")

    def _run(
        self, cut: Cut, cut_text: str, pending: list[PredicateInfo], results: dict[str, PredicateResult]
    ) -> _Worker | None:
        """Run ``pending`` in order in one worker until they are done or the worker is lost; the
        predicate that loses it gets an ERROR and leaves ``pending``. Returns the worker used."""

        def error(info: PredicateInfo, text: str, duration: float = 0.0) -> None:
            results[info.name] = PredicateResult(info.name, ERROR, cut.epoch, error=text, duration=duration)
            pending.remove(info)

        try:
            worker = self._current_worker()
        except PredicateWorkerError as exc:
            for info in list(pending):
                error(info, str(exc))
            return None
        run = [{"name": i.name, "memory": self._memory.get(i.name)} for i in pending]
        line = f'{{"op": "evaluate", "run": {json.dumps(run)}, "cut": {cut_text}}}\n'.encode()
        try:
            worker.send(line)
            reply = worker.read(time.monotonic() + self._load_timeout)
            if reply is None or reply.get("op") != "cut_ok":
                # A cut the worker cannot read would fail the same way in a new one: no retry.
                why = "timed out reading the cut" if reply is None else str(reply.get("error", reply))
                self._drop_worker(worker)
                for info in list(pending):
                    error(info, f"the predicate worker could not read cut {cut.epoch}: {why}")
                return worker
        except _WorkerDied as exc:
            self._drop_worker(worker)
            for info in list(pending):
                error(info, exc.during(f"while it was sent cut {cut.epoch}"))
            return worker
        for info in list(pending):
            started = time.monotonic()
            try:
                reply = worker.read(started + info.timeout)
            except _WorkerDied as exc:
                self._drop_worker(worker)
                error(info, exc.during("while evaluating this predicate"), time.monotonic() - started)
                return worker
            if reply is None:
                self._drop_worker(worker)
                error(
                    info,
                    f"timed out after {info.timeout:g} s; the predicate worker was killed and restarted",
                    time.monotonic() - started,
                )
                return worker
            try:
                result = PredicateResult.from_json(reply["result"])
            except (KeyError, TypeError, ValueError) as exc:
                self._drop_worker(worker)
                error(info, f"the predicate worker sent a malformed result: {exc}")
                return worker
            if result.name != info.name:
                self._drop_worker(worker)
                error(info, f"the predicate worker answered for {result.name!r} out of order")
                return worker
            memory = reply.get("memory")
            if result.status in (PASS, FAIL) and isinstance(memory, dict):
                with self._state:
                    self._memory[info.name] = memory
            results[info.name] = result
            pending.remove(info)
        return worker
