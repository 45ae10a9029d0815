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

"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cutwatch.core import Cut, PredicateLoadError, PredicateWorkerError
from cutwatch.predicates._api import ERROR, FAIL, PASS
from cutwatch.predicates._loader import Source, resolve_source
from cutwatch.predicates._results import DEFAULT_MAX_MEMORY_BYTES, DEFAULT_MAX_WITNESS_BYTES, PredicateResult
from cutwatch.predicates._window import Window
from cutwatch.predicates._worker_process import Worker, _WorkerDied

__all__ = ["PredicateEngine", "PredicateInfo", "PredicateWorkerError"]

_LOG = logging.getLogger("cutwatch.predicates")


@dataclass(frozen=True)
class PredicateInfo:
    """A loaded predicate: its name, its timeout in seconds, and where it is declared."""

    name: str
    timeout: float
    source: str
    line: int
    lattice: bool = False
    """Also checked on the consistent cuts between cuts (``@invariant(..., lattice=True)``)."""
    reads: tuple[str, ...] = ()
    """The state names a lattice invariant reads: the changes agents record for it."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "timeout": self.timeout, "source": self.source}
        doc["line"] = self.line
        if self.lattice:
            doc["lattice"] = True
            doc["reads"] = list(self.reads)
        return doc


class PredicateEngine:
    """Load predicates from operator-named local sources; evaluate them on each complete cut.

    ``sources`` are ``.py`` files or module names (see
    :func:`~cutwatch.predicates.engine.resolve_source`). Loading happens at
    construction, in the worker, and any problem raises
    :class:`~cutwatch.core.errors.PredicateLoadError` naming the file and line.
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
        self._worker: Worker | None = None
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

    @property
    def lattice_reads(self) -> frozenset[str]:
        """The state names the lattice invariants read (empty: none loaded)."""
        return frozenset(name for info in self._infos if info.lattice for name in info.reads)

    def evaluate(self, cut: Cut, window: Window | None = None) -> list[PredicateResult]:
        """Every predicate's result on ``cut`` (a COMPLETE one), in load order; never raises for a
        predicate's fault: a predicate that raises, times out or kills its worker is an ERROR.

        ``window``: the changes recorded since the previous complete cut, for lattice invariants."""
        if not cut.complete:
            raise ValueError(f"predicates run on COMPLETE cuts only; epoch {cut.epoch} is {cut.status}")
        body = f'"cut": {json.dumps(cut.to_json())}'
        if window is not None:
            body += f', "window": {json.dumps(window.to_json())}'

        with self._evaluating:
            if self._closed:
                raise RuntimeError("the predicate engine is closed")
            results: dict[str, PredicateResult] = {}
            pending = list(self._infos)
            used: Worker | None = None
            while pending:
                used = self._run(cut, body, pending, results) or used
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
    def _spawn(self) -> Worker:
        try:
            worker = Worker(self._max_line)
        except OSError as exc:
            raise PredicateWorkerError(f"cannot start the predicate worker: {exc}") from exc
        self.worker_pids.append(worker.pid)
        return worker

    def _start(self) -> tuple[Worker, list[PredicateInfo]]:
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
                            lattice=bool(p.get("lattice", False)),
                            reads=tuple(str(n) for n in p.get("reads", ())),
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

    def _restart(self) -> Worker:
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

    def _drop_worker(self, worker: Worker) -> None:
        with self._state:
            if self._worker is worker:
                self._worker = None
        worker.kill()

    def _current_worker(self) -> Worker:
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
        self, cut: Cut, body: str, pending: list[PredicateInfo], results: dict[str, PredicateResult]
    ) -> Worker | None:
        """Run ``pending`` in order in one worker until they are done or the worker is lost; the
        predicate that loses it gets an ERROR and leaves ``pending``. Returns the worker used.

        ``body``: the request's ``"cut"`` member as JSON text (and its ``"window"``), made once per cut."""

        def error(info: PredicateInfo, text: str, duration: float = 0.0) -> None:
            results[info.name] = PredicateResult(info.name, ERROR, cut.epoch, error=text, duration=duration)
            pending.remove(info)

        try:
            worker = self._current_worker()
        except PredicateWorkerError as exc:
            for info in list(pending):
                error(info, str(exc))
            return None
        run = [{"name": i.name, "memory": self._memory.get(i.name), "timeout": i.timeout} for i in pending]
        line = f'{{"op": "evaluate", "run": {json.dumps(run)}, {body}}}\n'.encode()
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
