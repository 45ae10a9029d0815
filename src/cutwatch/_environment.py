"""The environment variables cutwatch reads, named once, and the one rule it reads them by.

The agent and the command line read some of the same variables
(``CUTWATCH_COLLECTOR``, the tokens); were each to read them its own way, a
value one of them takes would be refused or ignored by the other. The rule is
OpenTelemetry's: a value is stripped, and an empty or blank one counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = [
    "AGENT_TOKEN_ENV",
    "CA_CERT_ENV",
    "CLIENT_CERT_ENV",
    "CLIENT_KEY_ENV",
    "COLLECTOR_ENV",
    "DEPRECATED_READER_TOKEN_ENV",
    "OTEL_RESOURCE_ENV",
    "OTEL_SERVICE_ENV",
    "READER_TOKEN_ENV",
    "SERVER_NAME_ENV",
    "SERVICE_ENV",
    "VARIABLES",
    "env_value",
]

SERVICE_ENV = "CUTWATCH_SERVICE"
OTEL_SERVICE_ENV = "OTEL_SERVICE_NAME"
OTEL_RESOURCE_ENV = "OTEL_RESOURCE_ATTRIBUTES"
COLLECTOR_ENV = "CUTWATCH_COLLECTOR"
AGENT_TOKEN_ENV = "CUTWATCH_AGENT_TOKEN"  # noqa: S105 - variables' names, not secrets
"""The agent token: what agents present and what the collector accepts from them."""
READER_TOKEN_ENV = "CUTWATCH_READER_TOKEN"  # noqa: S105
"""The reader token: what the reading commands and ``CollectorClient`` present and the collector accepts."""
DEPRECATED_READER_TOKEN_ENV = "CUTWATCH_TOKEN"  # noqa: S105
"""The reader token's former name on the client side; still read, with a notice to rename it."""
CA_CERT_ENV = "CUTWATCH_CA_CERT"
CLIENT_CERT_ENV = "CUTWATCH_CLIENT_CERT"
CLIENT_KEY_ENV = "CUTWATCH_CLIENT_KEY"
SERVER_NAME_ENV = "CUTWATCH_SERVER_NAME"

VARIABLES = (
    SERVICE_ENV,
    OTEL_SERVICE_ENV,
    OTEL_RESOURCE_ENV,
    COLLECTOR_ENV,
    AGENT_TOKEN_ENV,
    READER_TOKEN_ENV,
    DEPRECATED_READER_TOKEN_ENV,
    CA_CERT_ENV,
    CLIENT_CERT_ENV,
    CLIENT_KEY_ENV,
    SERVER_NAME_ENV,
)
"""Every variable cutwatch reads, so that one can clear them all."""


def env_value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, stripped; None when it is unset, empty or blank."""
    value = (os.environ if environ is None else environ).get(name, "").strip()
    return value or None
