"""State providers: what the application says its state is, frozen as JSON at every local snapshot."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

__all__ = ["DEFAULT_MAX_STATE_BYTES", "StateProviders"]

_LOG = logging.getLogger("cutwatch.agent")
_STATE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
DEFAULT_MAX_STATE_BYTES = 1024 * 1024


class StateProviders:
    """Named providers, each called under the snapshot lock; not thread-safe (the caller locks).

    A provider that raises, returns something that is not JSON, or more than
    ``max_state_bytes`` of it, gives an error marker in its place: a local
    snapshot never fails because of one.
    """

    def __init__(self, max_state_bytes: int = DEFAULT_MAX_STATE_BYTES) -> None:
        if max_state_bytes < 64:
            raise ValueError("max_state_bytes must be at least 64")
        self.max_state_bytes = max_state_bytes
        self._providers: dict[str, Callable[[], object]] = {}

    def register(self, name: str, provider: Callable[[], object]) -> None:
        if not _STATE_NAME.match(name):
            raise ValueError(f"state name {name!r} must be 1-100 letters, digits, '.', ':', '_' or '-'")
        if not callable(provider):
            raise TypeError("provider must be callable")
        self._providers[name] = provider

    def capture(self) -> tuple[dict[str, object], int, int]:
        """Every provider's value, their size as JSON in all, and how many failed."""
        state: dict[str, object] = {}
        size = errors = 0
        for name, provider in self._providers.items():
            value, value_size = self._value(name, provider)
            state[name] = value
            if value_size < 0:
                errors += 1
            else:
                size += len(name) + value_size
        return state, size, errors

    def _value(self, name: str, provider: Callable[[], object]) -> tuple[object, int]:
        """``provider()`` frozen as JSON and its size; a failure is a marker of size -1."""
        try:
            text = json.dumps(provider(), sort_keys=True, allow_nan=False)
        except Exception as exc:
            _LOG.warning("cutwatch: state provider %r failed: %s", name, exc)
            return {"cutwatch_error": f"{type(exc).__name__}: {exc}"[:500]}, -1
        if len(text) > self.max_state_bytes:
            return {"cutwatch_error": f"state larger than {self.max_state_bytes} bytes ({len(text)})"}, -1
        return json.loads(text), len(text)
