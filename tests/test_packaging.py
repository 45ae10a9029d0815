"""The distribution installs one package, ``cutwatch``, and all of it.

The source folders (agent/, collector/, ...) are mapped into the
``cutwatch`` namespace by pyproject's ``package-dir``. A subpackage missing
from the ``packages`` list silently vanishes from a regular install while an
editable one still imports it, and a mapping mistake can install a generic
top-level ``agent`` into site-packages: these tests catch both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import cutwatch
import cutwatch.agent

toml: types.ModuleType | None
if sys.version_info >= (3, 11):
    import tomllib as toml
else:  # pragma: no cover - Python 3.10 reads pyproject only when tomli is installed
    try:
        import tomli as toml
    except ModuleNotFoundError:
        toml = None

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("agent", "collector", "core", "predicates", "integrations", "proto")
ROOT_PACKAGE_FOLDER = "src/cutwatch"
"""The root package's folder: under src/, so a Python started at the repository root does not find it."""


def _setuptools_config() -> dict[str, Any]:
    if toml is None:  # pragma: no cover
        pytest.skip("reading pyproject.toml on Python 3.10 needs tomli")
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = toml.load(f)["tool"]["setuptools"]
    return config


def _packages_on_disk(package_dir: dict[str, str]) -> set[str]:
    """Every package under the mapped folders, sub-subpackages included."""
    found: set[str] = set()
    for package, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base)
            if "__pycache__" in relative.parts:
                continue
            found.add(".".join((package, *relative.parts)) if relative.parts else package)
    return found


def test_every_package_folder_is_listed_and_every_listed_package_exists() -> None:
    config = _setuptools_config()
    package_dir: dict[str, str] = config["package-dir"]
    listed = set(config["packages"])
    on_disk = _packages_on_disk(package_dir)

    assert on_disk - listed == set(), "packages with an __init__.py missing from [tool.setuptools] packages"
    assert listed - on_disk == set(), "listed packages without an __init__.py in their folder"


def test_package_dir_maps_the_source_folders_into_cutwatch() -> None:
    package_dir = _setuptools_config()["package-dir"]
    assert package_dir["cutwatch"] == ROOT_PACKAGE_FOLDER
    for folder in SOURCE_FOLDERS:
        assert package_dir[f"cutwatch.{folder}"] == folder
    assert all(name == "cutwatch" or name.startswith("cutwatch.") for name in package_dir)


def _is_editable_support(path: str) -> bool:
    """Files an editable install adds at the top of site-packages for its import finder."""
    name = Path(path).name
    return name.startswith("__editable__") and name.endswith((".pth", ".py", ".pyc"))


def test_installed_distribution_puts_only_cutwatch_at_the_top_of_site_packages() -> None:
    dist = importlib.metadata.distribution("cutwatch")
    files = dist.files
    assert files, "the installed cutwatch distribution lists no files (no RECORD)"
    dist_info = f"cutwatch-{dist.version}.dist-info"
    stray = []
    for file in files:
        path = file.as_posix()
        if path.startswith("../"):  # console scripts, outside site-packages
            continue
        top = path.split("/", 1)[0]
        if top in ("cutwatch", dist_info) or _is_editable_support(path):
            continue
        stray.append(path)
    assert stray == []
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        assert top_level.split() == ["cutwatch"]


def test_a_regular_install_carries_every_subpackage() -> None:
    """Catches a package left out of the list, whichever way cutwatch is installed."""
    dist = importlib.metadata.distribution("cutwatch")
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        pytest.skip("editable install: the files live in the source tree")
    installed = {file.as_posix() for file in dist.files or ()}
    for package in _setuptools_config()["packages"]:
        init = package.replace(".", "/") + "/__init__.py"
        assert init in installed, f"{package} is not in the installed distribution"


@pytest.mark.parametrize("name", SOURCE_FOLDERS)
def test_source_folder_names_are_not_importable_at_top_level(name: str, tmp_path: Path) -> None:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module('cutwatch.{name}')\n"
        "try:\n"
        f"    importlib.import_module({name!r})\n"
        "except ModuleNotFoundError:\n"
        "    sys.exit(0)\n"
        f"sys.exit('{name} imported from ' + str(sys.modules[{name!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("package", ["cutwatch", *(f"cutwatch.{folder}" for folder in SOURCE_FOLDERS)])
def test_every_package_is_typed(package: str) -> None:
    assert importlib.resources.files(package).joinpath("py.typed").is_file()
    folder = ROOT_PACKAGE_FOLDER if package == "cutwatch" else package.removeprefix("cutwatch.")
    assert (ROOT / folder / "py.typed").is_file()


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then everything else."""
    if name.isupper() and len(name) > 1:
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def _public_names(module: types.ModuleType) -> set[str]:
    """Names a module defines or re-exports on purpose: not submodules, not privates."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not (name == "annotations" and type(value).__name__ == "_Feature")
    }


@pytest.mark.parametrize("module", [cutwatch, cutwatch.agent], ids=lambda m: m.__name__)
def test_all_is_sorted_and_complete(module: types.ModuleType) -> None:
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key)
    assert len(set(exported)) == len(exported)
    # The root package is lazy (PEP 562): what it exports is what its __getattr__ serves.
    lazy: dict[str, str] | None = getattr(module, "_WHERE", None)
    public = set(lazy) if lazy is not None else _public_names(module)
    assert {name for name in exported if not name.startswith("_")} == public
    for name in exported:
        assert hasattr(module, name), f"{module.__name__}.__all__ names {name}, which does not exist"


def test_the_root_package_re_exports_the_agent_api_unchanged() -> None:
    shared = set(cutwatch.__all__) & set(cutwatch.agent.__all__)
    assert {"Agent", "VectorClock", "CutwatchLock"} <= shared
    for name in shared:
        assert getattr(cutwatch, name) is getattr(cutwatch.agent, name)
    assert cutwatch.__version__ == importlib.metadata.version("cutwatch")
