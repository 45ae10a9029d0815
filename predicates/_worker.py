"""The predicate worker: a separate OS process that imports and runs the user's predicates.

Started by :class:`~cutwatch.predicates.engine.PredicateEngine` with the
collector's interpreter and import path (see
:mod:`cutwatch.predicates._worker_process`). It speaks JSON lines on private copies of
its stdin and stdout; the real fd 0 reads from /dev/null and fd 1 goes to
stderr, so a predicate that prints or reads input cannot corrupt the
protocol. Requests and replies:

- ``{"op": "load", "sources": [...], "sys_path": [...], "max_witness_bytes": n,
  "max_memory_bytes": n}`` -> ``{"op": "loading", "source": given}`` per
  source, then ``{"op": "loaded", "predicates": [...]}`` (a lattice invariant with the
  state names it reads) or ``{"op":
  "load_error", ...}`` (and the worker exits);
- ``{"op": "evaluate", "run": [{"name", "memory", "timeout"}], "cut": {...}, "window": {...}}``
  (``window``: the recorded changes before the cut, for lattice invariants; optional) ->
  ``{"op": "cut_ok"}`` (or ``cut_error``), then one ``{"op": "result",
  "result": {...}, "memory": {...} | null}`` per name, in order.

The worker exits when its stdin closes or its parent is gone; SIGINT is
ignored (the collector decides when the worker stops).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from typing import IO, Any

from cutwatch.core import Cut, PredicateLoadError
from cutwatch.predicates._api import ERROR, Invariant
from cutwatch.predicates._lattice_run import lattice_reads, run_lattice_invariant
from cutwatch.predicates._loader import Source, load_sources
from cutwatch.predicates._results import (
    DEFAULT_MAX_MEMORY_BYTES,
    DEFAULT_MAX_WITNESS_BYTES,
    MAX_ERROR_CHARS,
    PredicateResult,
    run_invariant,
)
from cutwatch.predicates._window import Window

PARENT_POLL_SECONDS = 0.5
SOLVER_SHARE = 0.8
"""The part of a lattice invariant's timeout its solver may use: it gives up ("unknown") before the
engine kills the worker."""


def _watch_parent(parent: int) -> None:
    """Exit when the collector is gone, even while a predicate loops forever (it holds the GIL
    only in slices, so this thread still runs)."""

    def watch() -> None:
        while True:
            threading.Event().wait(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="cutwatch-parent-watch", daemon=True).start()


class _Channel:
    def __init__(self, reader: IO[bytes], writer: IO[bytes]) -> None:
        self._reader = reader
        self._writer = writer

    def read(self) -> dict[str, Any] | None:
        line = self._reader.readline()
        if not line:
            return None
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("a request must be a JSON object")
        return doc

    def send(self, doc: dict[str, Any]) -> None:
        self._writer.write(json.dumps(doc, allow_nan=False).encode() + b"\n")
        self._writer.flush()


def _private_stdio() -> _Channel:
    """Keep fds 0/1 for the protocol under new numbers; point 0 at /dev/null and 1 at stderr."""
    reader = os.fdopen(os.dup(0), "rb")
    writer = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout.flush()
    os.dup2(2, 1)
    return _Channel(reader, writer)


def _load(channel: _Channel, request: dict[str, Any]) -> list[Invariant] | None:
    for entry in request.get("sys_path", ()):
        if isinstance(entry, str) and entry not in sys.path:
            sys.path.append(entry)
    sources = [Source.from_json(s) for s in request["sources"]]
    try:
        specs = load_sources(sources, lambda s: channel.send({"op": "loading", "source": s.given}))
        reads = {s.name: lattice_reads(s) for s in specs if s.lattice}
    except PredicateLoadError as exc:
        channel.send(
            {
                "op": "load_error",
                "source": exc.source,
                "line": exc.line,
                "reason": exc.reason,
                "details": exc.details[-MAX_ERROR_CHARS:],
            }
        )
        return None
    channel.send(
        {
            "op": "loaded",
            "predicates": [
                {
                    "name": s.name,
                    "timeout": s.timeout,
                    "source": s.source,
                    "line": s.line,
                    "lattice": s.lattice,
                    "reads": list(reads.get(s.name, ())),
                }
                for s in specs
            ],
        }
    )
    return specs


def _evaluate(channel: _Channel, request: dict[str, Any], specs: dict[str, Invariant], limits: Any) -> None:
    try:
        cut = Cut.from_json(request["cut"])
        window = Window.from_json(request["window"]) if request.get("window") is not None else None
    except (KeyError, ValueError) as exc:
        channel.send({"op": "cut_error", "error": str(exc)})
        return
    channel.send({"op": "cut_ok"})
    max_witness, max_memory = limits
    for item in request["run"]:
        name = str(item["name"])
        spec = specs.get(name)
        if spec is None:
            result = PredicateResult(name, ERROR, cut.epoch, error="not declared in the predicate worker")
            channel.send({"op": "result", "result": result.to_json(), "memory": None})
            continue
        if spec.lattice:
            timeout = float(item.get("timeout") or 5.0)
            result = run_lattice_invariant(
                spec, cut, window, timeout=SOLVER_SHARE * timeout, max_witness_bytes=max_witness
            )
            channel.send({"op": "result", "result": result.to_json(), "memory": None})
            continue
        state = item.get("memory")
        result, memory = run_invariant(
            spec,
            cut,
            state if isinstance(state, dict) else None,
            max_witness_bytes=max_witness,
            max_memory_bytes=max_memory,
        )
        try:
            channel.send({"op": "result", "result": result.to_json(), "memory": memory})
        except (TypeError, ValueError) as exc:
            failed = PredicateResult(name, ERROR, cut.epoch, error=f"its result is not JSON: {exc}")
            channel.send({"op": "result", "result": failed.to_json(), "memory": None})


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(os.getppid())
    channel = _private_stdio()
    request = channel.read()
    if request is None or request.get("op") != "load":
        return 2
    loaded = _load(channel, request)
    if loaded is None:
        return 1
    specs = {s.name: s for s in loaded}
    limits = (
        int(request.get("max_witness_bytes", DEFAULT_MAX_WITNESS_BYTES)),
        int(request.get("max_memory_bytes", DEFAULT_MAX_MEMORY_BYTES)),
    )
    while True:
        request = channel.read()
        if request is None:
            return 0
        if request.get("op") == "evaluate":
            _evaluate(channel, request, specs, limits)
        else:
            channel.send({"op": "unknown", "got": str(request.get("op"))})


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(3)
