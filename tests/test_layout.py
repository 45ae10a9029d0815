"""The package's shape (SPEC section 1): the import arrows, lazy imports, ``__all__`` and one error tree.

The arrows are read from the sources with an AST walk, so an import inside
a function or under ``if TYPE_CHECKING:`` breaks them as surely as one at
the top of a module. What a plain import actually loads is checked in a
fresh interpreter: this test session has loaded gRPC long ago (conftest).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cutwatch
import cutwatch.core.errors

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# The arrows
# ---------------------------------------------------------------------------

PARTS = ("core", "proto", "agent", "collector", "predicates", "integrations")
"""The parts of cutwatch that live in their own source folder; everything else is the root."""

FOLDERS = {**{part: ROOT / part for part in PARTS}, "root": ROOT / "src" / "cutwatch"}
GENERATED = ("_pb2.py", "_pb2_grpc.py")


@dataclass(frozen=True)
class Allowed:
    """What a part may import: other cutwatch parts, and modules outside the standard library."""

    parts: frozenset[str]
    third_party: tuple[str, ...] | None
    """Modules (and their submodules) outside the standard library; ``None``: any."""
    banned_stdlib: frozenset[str] = frozenset()


ANY = None
EVERY_PART = frozenset({*PARTS, "root"})

RULES: dict[str, Allowed] = {
    "core": Allowed(frozenset({"core"}), ()),
    "proto": Allowed(frozenset({"core", "proto"}), ("grpc", "google.protobuf")),
    # The solvers of lattice invariants, from the collector extra, imported where they are used.
    "predicates": Allowed(frozenset({"core", "predicates"}), ("z3", "igraph"), frozenset({"sqlite3"})),
    "collector": Allowed(EVERY_PART - {"agent"}, ANY),
    "agent": Allowed(EVERY_PART - {"collector", "predicates"}, ANY),
    "integrations": Allowed(EVERY_PART - {"agent", "collector", "predicates"}, ANY),
}


def _lazy_table() -> dict[str, str]:
    """The root ``__init__``'s ``_WHERE``: which module serves each lazy name."""
    tree = ast.parse((FOLDERS["root"] / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_WHERE" for t in node.targets
        ):
            table: dict[str, str] = ast.literal_eval(node.value)
            return table
    raise AssertionError("src/cutwatch/__init__.py has no _WHERE table")  # pragma: no cover


LAZY = _lazy_table()


@dataclass(frozen=True)
class Import:
    """One imported module, where it is imported and how the source spells it."""

    where: str
    line: int
    statement: str
    target: str
    type_checking: bool

    def __str__(self) -> str:
        guard = " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.where}:{self.line}: {self.statement}{guard}"


Scan = dict[str, dict[str, list[Import]]]
"""part -> module -> the imports in its source."""


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _from_target(module: str, name: str) -> str:
    """The module that ``from module import name`` makes run."""
    if name == "*":
        return module
    if module == "cutwatch" and name not in PARTS:
        return LAZY.get(name, f"cutwatch.{name}")  # `from cutwatch import Agent` loads the agent
    return f"{module}.{name}"


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, where: str, package: str) -> None:
        self.where = where
        self.package = package
        self.found: list[Import] = []
        self._type_checking = False

    def _add(self, node: ast.AST, statement: str, target: str) -> None:
        line = getattr(node, "lineno", 0)
        self.found.append(Import(self.where, line, statement, target, self._type_checking))

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        before, self._type_checking = self._type_checking, True
        for child in node.body:
            self.visit(child)
        self._type_checking = before
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, f"import {alias.name}", alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            base = self.package.split(".")
            if node.level - 1 >= len(base):
                raise AssertionError(f"{self.where}:{node.lineno}: relative import beyond cutwatch")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, *([module] if module else [])])
        spelled = "." * node.level + (node.module or "")
        for alias in node.names:
            self._add(node, f"from {spelled} import {alias.name}", _from_target(module, alias.name))

    def visit_Call(self, node: ast.Call) -> None:
        """``importlib.import_module("x")`` and ``__import__("x")`` with a literal name count too."""
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        first = node.args[0] if node.args else None
        if (
            name in ("import_module", "__import__")
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
        ):
            self._add(node, f"{name}({first.value!r})", first.value)
        self.generic_visit(node)


def collect_imports(source: str, where: str, package: str) -> list[Import]:
    """Every import in ``source``, a module of ``package``: top-level, in functions, type-only."""
    collector = _ImportCollector(where, package)
    collector.visit(ast.parse(source, filename=where))
    return collector.found


def part_of(module: str) -> str | None:
    """The part of cutwatch a module belongs to ("root" for the rest of it); None outside cutwatch."""
    names = module.split(".")
    if names[0] != "cutwatch":
        return None
    return names[1] if len(names) > 1 and names[1] in PARTS else "root"


def _matches(module: str, prefixes: tuple[str, ...] | frozenset[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def violations(part: str, imports: list[Import]) -> list[str]:
    """The imports that break ``part``'s rule, each as ``file:line: statement: why``."""
    rule = RULES[part]
    found = []
    for imp in imports:
        top = imp.target.split(".")[0]
        target_part = part_of(imp.target)
        if target_part is not None:
            if target_part not in rule.parts:
                found.append(f"{imp}: {part} must not import cutwatch.{target_part}")
        elif top in PARTS:
            found.append(f"{imp}: the source folder {top}/ imported by its name; import cutwatch.{top}")
        elif top in sys.stdlib_module_names:
            if _matches(imp.target, rule.banned_stdlib):
                found.append(f"{imp}: {part} must not import {top}")
        elif rule.third_party is not ANY and not _matches(imp.target, rule.third_party):
            allowed = ", ".join(rule.third_party) or "nothing"
            found.append(f"{imp}: {part} imports only the standard library and {allowed}")
    return found


def _module_name(part: str, path: Path) -> tuple[str, str]:
    """(module, package) of a source file."""
    package = "cutwatch" if part == "root" else f"cutwatch.{part}"
    relative = path.relative_to(FOLDERS[part])
    parents = [package, *relative.parent.parts]
    if relative.name == "__init__.py":
        return ".".join(parents), ".".join(parents)
    return ".".join([*parents, relative.stem]), ".".join(parents)


def source_files(part: str) -> Iterator[Path]:
    for path in sorted(FOLDERS[part].rglob("*.py")):
        if "__pycache__" not in path.parts and not path.name.endswith(GENERATED):
            yield path


def _scan() -> Scan:
    """Every hand-written source file of cutwatch, scanned."""
    scanned: Scan = {}
    for part in FOLDERS:
        scanned[part] = {}
        for path in source_files(part):
            module, package = _module_name(part, path)
            where = path.relative_to(ROOT).as_posix()
            scanned[part][module] = collect_imports(path.read_text(encoding="utf-8"), where, package)
    return scanned


SCAN = _scan()


def test_every_source_folder_has_modules_with_imports() -> None:
    """An empty scan (a folder moved, say) would make every arrow test pass without looking."""
    for part, modules in SCAN.items():
        assert modules, f"no .py files found in {FOLDERS[part]}"
        assert any(modules.values()), f"no imports found in {FOLDERS[part]}"


@pytest.mark.parametrize("part", list(RULES))
def test_the_arrows(part: str) -> None:
    """SPEC: core imports only the standard library, proto core, predicates core; no collector->agent."""
    imports = [imp for found in SCAN[part].values() for imp in found]
    assert violations(part, imports) == []


def _runs(target: str, known: set[str]) -> list[str]:
    """The scanned modules an import runs: ``cutwatch.core._cut.Cut`` runs ``cutwatch.core._cut``
    and the packages above it."""
    names = target.split(".")
    return [".".join(names[:end]) for end in range(len(names), 0, -1) if ".".join(names[:end]) in known]


def indirect_violations(part: str, scan: Scan) -> list[str]:
    """Chains of imports by which ``part`` reaches a part it may not import, through other modules.

    Only imports that run count: what ``TYPE_CHECKING`` guards (the lazy
    root's imports, say) never runs. Direct imports are ``violations``' to report.
    """
    known = {module for modules in scan.values() for module in modules}
    graph = {
        module: [
            (imp, target) for imp in found if not imp.type_checking for target in _runs(imp.target, known)
        ]
        for modules in scan.values()
        for module, found in modules.items()
    }
    forbidden = EVERY_PART - RULES[part].parts
    problems = []
    for start in scan[part]:
        seen = {start}
        paths: list[tuple[str, list[Import]]] = [(start, [])]
        while paths:
            module, chain = paths.pop()
            for imp, target in graph.get(module, []):
                if target in seen:
                    continue
                seen.add(target)
                if part_of(target) not in forbidden:
                    paths.append((target, [*chain, imp]))
                elif chain:
                    problems.append(" -> ".join(str(step) for step in [*chain, imp]))
    return problems


@pytest.mark.parametrize("part", list(RULES))
def test_no_part_reaches_a_forbidden_part_through_another(part: str) -> None:
    """The collector reaching the agent through, say, cutwatch.security breaks the arrow all the same."""
    assert indirect_violations(part, SCAN) == []


def test_the_indirect_checker_catches_a_chain() -> None:
    """A checker that cannot fail is a defect: a synthetic collector that reaches the agent via security."""
    scan: Scan = {
        "collector": {
            "cutwatch.collector._bad": collect_imports(
                "from cutwatch.security import open_channel\n", "collector/_bad.py", "cutwatch.collector"
            )
        },
        "root": {
            "cutwatch": collect_imports(
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cutwatch.agent import Agent\n",
                "src/cutwatch/__init__.py",
                "cutwatch",
            ),
            "cutwatch.security": collect_imports(
                "def later():\n    import cutwatch.agent\n", "src/cutwatch/security.py", "cutwatch"
            ),
        },
        "agent": {"cutwatch.agent": []},
    }
    assert indirect_violations("collector", scan) == [
        "collector/_bad.py:1: from cutwatch.security import open_channel -> "
        "src/cutwatch/security.py:2: import cutwatch.agent"
    ]


def test_the_arrow_checker_catches_violations() -> None:
    """A checker that cannot fail is a defect: feed it code that breaks each kind of rule."""
    core_source = textwrap.dedent(
        """\
        import json
        import grpc
        from cutwatch.agent import Agent

        def later():
            from cutwatch import CollectorClient
        """
    )
    found = violations("core", collect_imports(core_source, "core/_bad.py", "cutwatch.core"))
    assert len(found) == 3, found
    assert found[0].startswith("core/_bad.py:2: import grpc")
    assert found[1].startswith("core/_bad.py:3: from cutwatch.agent import Agent")
    assert found[2].startswith("core/_bad.py:6: from cutwatch import CollectorClient")
    assert "cutwatch.collector" in found[2]

    predicates_source = textwrap.dedent(
        """\
        from typing import TYPE_CHECKING
        from ._api import holds
        if TYPE_CHECKING:
            import sqlite3
        def load():
            from ..proto import stamp_pb2
            return importlib.import_module("cutwatch.agent")
        """
    )
    imports = collect_imports(predicates_source, "predicates/_bad.py", "cutwatch.predicates")
    assert [imp.target for imp in imports if imp.line == 2] == ["cutwatch.predicates._api.holds"]
    found = violations("predicates", imports)
    assert [line.split(":")[1] for line in found] == ["4", "6", "7"], found
    assert "(under TYPE_CHECKING)" in found[0]
    assert "cutwatch.proto" in found[1]
    assert "cutwatch.agent" in found[2]

    collector_source = "import agent\nimport cutwatch.agent._lock\nimport sqlite3\n"
    found = violations(
        "collector", collect_imports(collector_source, "collector/_bad.py", "cutwatch.collector")
    )
    assert [line.split(":")[1] for line in found] == ["1", "2"], found


# ---------------------------------------------------------------------------
# What a plain import loads, in a fresh interpreter
# ---------------------------------------------------------------------------

HEAVY = ("grpc", "google", "opentelemetry", "sqlite3", "z3", "igraph")
"""Modules a plain import of the pure parts must not load (the solvers only when a window is decided)."""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _loaded_after(module: str, cwd: Path) -> list[str]:
    code = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))\n"
    result = _python(code, cwd)
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize(
    ("module", "also_forbidden"),
    [
        ("cutwatch.core", ("cutwatch.agent", "cutwatch.collector", "cutwatch.predicates", "cutwatch.proto")),
        ("cutwatch.predicates", ("cutwatch.agent", "cutwatch.collector", "cutwatch.proto")),
    ],
)
def test_the_pure_parts_load_no_grpc_protobuf_opentelemetry_or_sqlite(
    module: str, also_forbidden: tuple[str, ...], tmp_path: Path
) -> None:
    """The protocol core, and the API for writing invariants, must run without gRPC or a store."""
    loaded = _loaded_after(module, tmp_path)
    assert [name for name in loaded if name.split(".")[0] in HEAVY] == []
    assert [name for name in loaded if _matches(name, also_forbidden)] == []


_LAZY_ROOT_PROBE = textwrap.dedent(
    """\
    import json, sys
    import cutwatch
    report = {"after_import": sorted(sys.modules)}
    agent = cutwatch.Agent
    report["agent_loaded"] = "cutwatch.agent" in sys.modules
    import cutwatch.agent
    report["agent_is_the_class"] = isinstance(agent, type) and agent is cutwatch.agent.Agent
    try:
        cutwatch.nonexistent
    except AttributeError:
        report["nonexistent"] = "AttributeError"
    else:
        report["nonexistent"] = "no error"
    report["missing_from_dir"] = sorted(set(cutwatch.__all__) - set(dir(cutwatch)))
    print(json.dumps(report))
    """
)


def test_importing_cutwatch_alone_loads_nothing_heavy(tmp_path: Path) -> None:
    """SPEC: the lazy root (PEP 562) loads the collector, sqlite3 and the engine only when used."""
    result = _python(_LAZY_ROOT_PROBE, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    heavy = ("cutwatch.collector", "cutwatch.agent", "cutwatch.predicates", "sqlite3", "grpc")
    assert [name for name in report["after_import"] if _matches(name, heavy)] == []
    assert report["agent_loaded"], "cutwatch.Agent did not load cutwatch.agent"
    assert report["agent_is_the_class"], "cutwatch.Agent is not the class cutwatch.agent.Agent"
    assert report["nonexistent"] == "AttributeError"
    assert report["missing_from_dir"] == []


def test_python_started_at_the_repository_root_imports_the_installed_package() -> None:
    """SPEC: ``python -c "import cutwatch, cutwatch.agent"`` works from the repository root."""
    result = _python(
        "import cutwatch, cutwatch.agent; print(cutwatch.__file__); print(cutwatch.agent.__file__)", ROOT
    )
    assert result.returncode == 0, result.stderr
    root_file, agent_file = (Path(line).resolve() for line in result.stdout.splitlines())
    assert root_file.parent != ROOT / "cutwatch", f"a cutwatch/ folder at the root shadows it: {root_file}"
    assert root_file.name == "__init__.py"
    editable = root_file == ROOT / "src" / "cutwatch" / "__init__.py"
    expected_agent = ROOT / "agent" if editable else root_file.parent / "agent"
    assert agent_file == expected_agent / "__init__.py"


def test_there_is_no_cutwatch_folder_at_the_repository_root() -> None:
    assert not (ROOT / "cutwatch").exists(), (
        "a cutwatch/ folder at the repository root comes first on sys.path for any Python started "
        "there (python -c, the REPL, scripts/), and shadows the installed package: the root package "
        "lives in src/cutwatch/"
    )


# ---------------------------------------------------------------------------
# __all__
# ---------------------------------------------------------------------------

ALL_MODULES = (
    "cutwatch",
    "cutwatch.core",
    "cutwatch.core.errors",
    "cutwatch.proto",
    "cutwatch.agent",
    "cutwatch.collector",
    "cutwatch.predicates",
    "cutwatch.predicates.engine",
    "cutwatch.security",
    "cutwatch.cli",
    "cutwatch.integrations",
)
MAY_LACK_ALL = {"cutwatch.integrations": "a namespace for integration modules, with nothing of its own"}


def _exported(name: str) -> list[str]:
    module = importlib.import_module(name)
    if not hasattr(module, "__all__"):
        if name in MAY_LACK_ALL:
            pytest.skip(f"{name} has no __all__: {MAY_LACK_ALL[name]}")
        raise AssertionError(f"{name} has no __all__")
    exported: list[str] = list(module.__all__)
    return exported


def ruff_sort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 "isort-style" order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest.

    Within a group the order is natural (``x2`` before ``x10``); a single
    capital letter counts as a class, ``__version__`` as the rest.
    """
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, re.sub(r"\d+", lambda digits: digits.group().zfill(30), name)


def _module_file(name: str) -> Path:
    file = importlib.import_module(name).__file__
    assert file is not None
    return Path(file)


def _ruff_unsorted(files: list[Path]) -> set[Path]:
    """The files in which ruff's RUF022 finds an unsorted ``__all__``."""
    if importlib.util.find_spec("ruff") is None:  # pragma: no cover - ruff is in the test extra
        pytest.skip("ruff is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--output-format", "json"]
        + ["--select", "RUF022"]
        + [str(file) for file in files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    return {Path(item["filename"]).resolve() for item in json.loads(result.stdout)}


@pytest.mark.parametrize("name", ALL_MODULES)
def test_all_is_sorted(name: str) -> None:
    exported = _exported(name)
    assert exported == sorted(exported, key=ruff_sort_key)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_all_has_no_duplicates(name: str) -> None:
    exported = _exported(name)
    assert sorted({n for n in exported if exported.count(n) > 1}) == []


@pytest.mark.parametrize("name", ALL_MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    """For ``cutwatch`` this goes through the lazy ``__getattr__``."""
    module = importlib.import_module(name)
    missing = [n for n in _exported(name) if not hasattr(module, n)]
    assert missing == []


def test_the_sort_key_agrees_with_ruff(tmp_path: Path) -> None:
    """The key above is only worth having if ruff --select RUF022 says the same, here and on hard cases."""
    files = {name: _module_file(name).resolve() for name in ALL_MODULES}
    tricky = ["b", "A", "_c", "__version__", "RES_POOL", "RESPONSE", "X", "x1", "x10", "x2", "Ab", "AB", "B2"]
    ours = tmp_path / "ours.py"
    ours.write_text(f"__all__ = {sorted(tricky, key=ruff_sort_key)!r}\n")
    backwards = tmp_path / "backwards.py"
    backwards.write_text(f"__all__ = {sorted(tricky, key=ruff_sort_key, reverse=True)!r}\n")
    unsorted = _ruff_unsorted([*files.values(), ours, backwards])

    assert backwards.resolve() in unsorted, "ruff accepts anything: the comparison proves nothing"
    assert ours.resolve() not in unsorted, f"ruff sorts {tricky} differently from ruff_sort_key"
    for name, file in files.items():
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            exported = list(module.__all__)
            ours_sorted = exported == sorted(exported, key=ruff_sort_key)
            assert ours_sorted == (file not in unsorted), f"ruff and ruff_sort_key disagree on {file}"


def _imported_from_cutwatch(name: str) -> set[str]:
    """Names the module's source binds with ``from cutwatch... import`` (type-only imports too)."""
    file = _module_file(name)
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and part_of(node.module or "") is not None:
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _is_class_function_or_constant(value: object) -> bool:
    """Not a module, and not some other callable object (a click command, say)."""
    if isinstance(value, types.ModuleType):
        return False
    return inspect.isclass(value) or inspect.isfunction(value) or not callable(value)


@pytest.mark.parametrize("name", [name for name in ALL_MODULES if name != "cutwatch"])
def test_all_lists_every_public_name_imported_from_cutwatch(name: str) -> None:
    """A class, function or constant imported into a package on purpose is part of its API."""
    module = importlib.import_module(name)
    exported = set(_exported(name))
    unlisted = sorted(
        imported
        for imported in _imported_from_cutwatch(name)
        if not imported.startswith("_")
        and hasattr(module, imported)
        and _is_class_function_or_constant(getattr(module, imported))
        and imported not in exported
    )
    assert unlisted == []


def test_the_lazy_root_exports_exactly_what_it_serves() -> None:
    """``cutwatch.__all__``, its ``__getattr__`` table and its type-only imports name the same things."""
    assert set(cutwatch.__all__) == {*LAZY, "__version__"}
    type_only: dict[str, str] = {}
    for node in ast.walk(ast.parse((FOLDERS["root"] / "__init__.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            type_only.update((alias.asname or alias.name, node.module) for alias in node.names)
    served = {name: module for name, module in type_only.items() if name in LAZY}
    assert served == LAZY, "the TYPE_CHECKING imports and _WHERE disagree on where a name comes from"
    assert set(LAZY) <= set(type_only), "a lazy name a type checker cannot see"


# ---------------------------------------------------------------------------
# One error tree, re-exported
# ---------------------------------------------------------------------------

PACKAGES = (
    "cutwatch",
    "cutwatch.core",
    "cutwatch.proto",
    "cutwatch.agent",
    "cutwatch.collector",
    "cutwatch.predicates",
    "cutwatch.integrations",
)


def _every_module() -> list[types.ModuleType]:
    """Every cutwatch module, imported (the source folders are separate packages on disk)."""
    modules: dict[str, types.ModuleType] = {}
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        modules[package_name] = package
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            try:
                modules[info.name] = importlib.import_module(info.name)
            except ImportError:
                if not info.name.endswith("_pb2_grpc"):
                    raise
    return list(modules.values())


def test_every_error_class_is_in_core_errors_and_re_exported() -> None:
    """SPEC: one error tree in one module, every class of it reachable as ``cutwatch.<Name>``."""
    base = cutwatch.core.errors.CutwatchError
    errors: dict[str, type[Any]] = {}
    for module in _every_module():
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, base) and not value.__name__.startswith("_"):
                errors[f"{value.__module__}.{value.__qualname__}"] = value
    assert errors, "found no error class at all"
    outside = sorted(name for name, cls in errors.items() if cls.__module__ != "cutwatch.core.errors")
    assert outside == [], "error classes defined outside cutwatch.core.errors"
    not_re_exported = sorted(
        cls.__name__
        for cls in errors.values()
        if getattr(cutwatch, cls.__name__, None) is not cls or cls.__name__ not in cutwatch.__all__
    )
    assert not_re_exported == [], "error classes that `cutwatch.<Name>` does not give"
    assert set(cutwatch.core.errors.__all__) == {cls.__name__ for cls in errors.values()}


# ---------------------------------------------------------------------------
# Public signatures name exported types
# ---------------------------------------------------------------------------

PUBLIC_PACKAGES = (
    "cutwatch",
    "cutwatch.agent",
    "cutwatch.collector",
    "cutwatch.core",
    "cutwatch.security",
    "cutwatch.predicates",
)


def _classes_in(hint: object) -> Iterator[type[Any]]:
    if isinstance(hint, type) and hint.__module__.startswith("cutwatch"):
        yield hint
    if isinstance(hint, (list, tuple)):  # Callable[[A, B], C] gives its arguments as a list
        for item in hint:
            yield from _classes_in(item)
    for arg in typing.get_args(hint):
        yield from _classes_in(arg)


def _exported_somewhere(cls: type[Any]) -> bool:
    for name in PUBLIC_PACKAGES:
        package = importlib.import_module(name)
        if cls.__name__ in getattr(package, "__all__", ()) and getattr(package, cls.__name__) is cls:
            return True
    return False


@pytest.mark.parametrize(
    "function",
    [cutwatch.Agent.__init__, cutwatch.CollectorServer.__init__, cutwatch.CollectorClient.__init__],
    ids=lambda function: function.__qualname__,
)
def test_public_signatures_use_exported_types(function: Any) -> None:
    """A user must be able to import every type a public constructor asks for."""
    hints = typing.get_type_hints(function)
    named = {cls for hint in hints.values() for cls in _classes_in(hint)}
    hidden = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in named if not _exported_somewhere(cls))
    assert hidden == [], f"{function.__qualname__} takes types no public package exports"
