"""What every benchmark report starts with: the machine it ran on and the versions measured.

The scripts here are run by path (``python benchmarks/NAME.py``) and loaded
by path in the smoke tests, so each one puts this folder on ``sys.path``
before importing this module.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any


def describe_machine(*packages: str) -> dict[str, Any]:
    """CPUs, Python, the versions of ``packages`` (keys with ``_`` for ``-``) and the load average now."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            models = (line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
            model = next(models, "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        **{name.replace("-", "_"): metadata.version(name) for name in packages},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def emit(result: dict[str, Any], as_json: bool, print_report: Callable[[dict[str, Any]], None]) -> None:
    """The result as one JSON document, or as the script's report."""
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_report(result)
