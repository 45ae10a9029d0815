"""Finding predicates: which sources an operator may name, and importing them.

Sources are local ``.py`` files or importable module names, given on the
collector's command line or in its config; anything that looks like a URL
is refused. :func:`resolve_source` runs in the collector (it only looks at
names and paths); :func:`load_sources`, which executes the user's code,
runs in the predicate worker. Every way loading can go wrong becomes a
:class:`PredicateLoadError` that names the file and, where there is one,
the line, so that ``cutwatch collector --predicates bad.py`` refuses to
start with a message worth reading.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cutwatch.core import PredicateLoadError
from cutwatch.predicates._api import Invariant, collecting, invariants_of

__all__ = ["PredicateLoadError", "Source", "load_sources", "resolve_source"]

_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
FILE = "file"
MODULE = "module"


@dataclass(frozen=True)
class Source:
    """A place to load predicates from: an absolute ``.py`` path or a module name."""

    kind: str
    """``file`` or ``module``."""
    value: str
    given: str
    """As the operator wrote it (for messages)."""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.value, "given": self.given}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Source:
        return cls(str(doc["kind"]), str(doc["value"]), str(doc["given"]))


def resolve_source(text: str) -> Source:
    """What ``text`` names: a local ``.py`` file (anything with a slash or ending in ``.py``) or
    a module name. Network locations are refused; nothing is imported here."""
    given = text
    text = text.strip()
    if not text:
        raise PredicateLoadError(repr(given), None, "an empty predicate source")
    if "://" in text or text.startswith(("//", "\\\\")):
        raise PredicateLoadError(
            text, None, "predicates are loaded only from local files or modules, never from the network"
        )
    if text.endswith(".py") or "/" in text or os.sep in text:
        path = Path(text).expanduser()
        if path.is_dir():
            raise PredicateLoadError(text, None, "is a directory; name the .py files in it")
        if not path.is_file():
            raise PredicateLoadError(text, None, "no such file")
        if path.suffix != ".py":
            raise PredicateLoadError(text, None, "a predicate file must be a .py file")
        return Source(FILE, str(path.resolve()), given)
    if not _MODULE_NAME.match(text):
        raise PredicateLoadError(text, None, "neither a .py file nor a module name (like myapp.invariants)")
    return Source(MODULE, text, given)


def load_sources(
    sources: Sequence[Source], on_source: Callable[[Source], None] | None = None
) -> list[Invariant]:
    """Import each source and return the invariants it declares, in order.

    Raises :class:`PredicateLoadError` for a source that fails to import,
    declares no invariant, or declares a name already taken.
    """
    loaded: list[Invariant] = []
    by_name: dict[str, Invariant] = {}
    seen: set[int] = set()
    for index, source in enumerate(sources):
        if on_source is not None:
            on_source(source)
        found = _load_file(index, source) if source.kind == FILE else _load_module(source)
        if not found:
            raise PredicateLoadError(
                source.given,
                None,
                "declares no predicate (decorate functions with @cutwatch.invariant(name))",
            )
        for spec in found:
            if id(spec) in seen:
                continue  # the same declaration reached through two sources
            seen.add(id(spec))
            other = by_name.get(spec.name)
            if other is not None:
                raise PredicateLoadError(
                    spec.source,
                    spec.line,
                    f"duplicate predicate name {spec.name!r}: also declared at {other.source}:{other.line}",
                )
            by_name[spec.name] = spec
            loaded.append(spec)
    return loaded


def _load_file(index: int, source: Source) -> list[Invariant]:
    path = source.value
    stem = re.sub(r"\W", "_", Path(path).stem)
    name = f"_cutwatch_predicates_{index}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PredicateLoadError(source.given, None, "cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    directory = str(Path(path).parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # like running the file as a script: siblings import
    sys.modules[name] = module
    with collecting() as found:
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(name, None)
            raise _import_error(source, exc, path) from None
    return _with_module_scan(found, module)


def _load_module(source: Source) -> list[Invariant]:
    with collecting() as found:
        try:
            module = importlib.import_module(source.value)
        except ModuleNotFoundError as exc:
            if exc.name and (source.value == exc.name or source.value.startswith(exc.name + ".")):
                raise PredicateLoadError(
                    source.given, None, f"no module named {exc.name!r} on the collector's Python path"
                ) from None
            raise _import_error(source, exc, None) from None
        except (Exception, SystemExit) as exc:
            raise _import_error(source, exc, None) from None
    return _with_module_scan(found, module)


def _with_module_scan(found: list[Invariant], module: ModuleType) -> list[Invariant]:
    """Add invariants the module holds that did not register while it ran (it was imported before)."""
    out = list(found)
    known = {id(s) for s in out}
    for value in list(vars(module).values()):
        for spec in invariants_of(value) if callable(value) else ():
            if id(spec) not in known:
                known.add(id(spec))
                out.append(spec)
    return out


def _import_error(source: Source, exc: BaseException, path: str | None) -> PredicateLoadError:
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, SyntaxError):
        return PredicateLoadError(
            exc.filename or path or source.given, exc.lineno, f"syntax error: {exc.msg}", details
        )
    where_file, where_line = path or source.given, None
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    mine = [f for f in frames if path is not None and os.path.abspath(f.filename) == path]
    chosen = mine or frames
    if chosen:
        where_file, where_line = chosen[-1].filename, chosen[-1].lineno
    text = str(exc)
    reason = f"raised {type(exc).__name__}" + (f": {text}" if text else "") + " while loading"
    if where_file != (path or source.given):
        reason += f" {source.given}"
    return PredicateLoadError(where_file, where_line, reason, details)
