"""cutwatch as an OpenTelemetry instrumentor: ``opentelemetry-instrument python app.py``.

Registered as the ``cutwatch`` entry point of the ``opentelemetry_instrumentor``
group, so ``opentelemetry-instrument`` (and any distro that loads that group)
puts every gRPC server and channel of an unmodified application under
cutwatch, with the agent configured by the environment (docs/zero-code.md).
This module needs ``opentelemetry-instrumentation``; without it,
:func:`cutwatch.agent.instrument` does the same from code.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

# That module opts out of type checking ("# type: ignore"): to mypy, BaseInstrumentor is not there.
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from cutwatch.agent._instrument import (
    AGENT_PARAMETERS,
    instrument,
    instrumented_agent,
    uninstrument,
)

__all__ = ["CutwatchInstrumentor", "instrument", "instrumented_agent", "uninstrument"]


class CutwatchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``CutwatchInstrumentor().instrument(agent=..., service=..., ...)``: :func:`instrument` the
    OpenTelemetry way. Options that are not ``agent`` or an ``Agent()`` parameter (those
    ``opentelemetry-instrument`` passes to every instrumentor) are ignored."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("grpcio >= 1.62",)

    def _instrument(self, **kwargs: Any) -> None:
        agent = kwargs.get("agent")
        if agent is not None:
            instrument(agent)
        else:
            instrument(**{name: value for name, value in kwargs.items() if name in AGENT_PARAMETERS})

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
