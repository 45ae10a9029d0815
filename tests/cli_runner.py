"""A click test runner with click 8.2's streams on every supported click.

From 8.2, ``result.stdout`` and ``result.stderr`` are kept apart and
``result.output`` holds both, as a person sees them. click 8.1 mixes stderr
into stdout unless told ``mix_stderr=False``, and then its ``output`` is
stdout alone; the runner here gives 8.1 the newer behaviour.
"""

from __future__ import annotations

import inspect
from typing import Any

from click.testing import CliRunner, Result

__all__ = ["cli_runner"]


class _BothStreams(Result):
    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class _Click81Runner(CliRunner):
    def invoke(self, *args: Any, **kwargs: Any) -> Result:
        result = super().invoke(*args, **kwargs)
        result.__class__ = _BothStreams
        return result


def cli_runner() -> CliRunner:
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return _Click81Runner(mix_stderr=False)  # type: ignore[call-arg,unused-ignore]
    return CliRunner()
