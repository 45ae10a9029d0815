"""What ``cutwatch.Agent()`` is not given, read from the environment.

So that a service runs under cutwatch without a code change (``opentelemetry-instrument``
and the instrumentor build the agent with no arguments), every setting a
deployment varies has a variable. An argument always wins; a bad value is
refused with the variable's name, never silently ignored.

=============================  ==============================================================
``CUTWATCH_SERVICE``           the service name; else ``OTEL_SERVICE_NAME``, else ``service.name``
                               in ``OTEL_RESOURCE_ATTRIBUTES``
``CUTWATCH_COLLECTOR``         the collector's ``host:port`` (unset: clocks only)
``CUTWATCH_AGENT_TOKEN``       the token agents present to the collector
``CUTWATCH_CA_CERT``           PEM file of the CA that signed the collector's certificate: TLS
``CUTWATCH_CLIENT_CERT``       PEM client certificate for mutual TLS (with ``CUTWATCH_CLIENT_KEY``)
``CUTWATCH_CLIENT_KEY``        its private key (PEM file)
``CUTWATCH_SERVER_NAME``       the name to check the collector's certificate against
=============================  ==============================================================
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from typing import Final, Literal
from urllib.parse import unquote

from cutwatch.security import AGENT_TOKEN_ENV, CollectorCredentials, SecurityConfigError

__all__ = [
    "AGENT_TOKEN_ENV",
    "CA_CERT_ENV",
    "CLIENT_CERT_ENV",
    "CLIENT_KEY_ENV",
    "COLLECTOR_ENV",
    "FROM_ENVIRONMENT",
    "OTEL_RESOURCE_ENV",
    "OTEL_SERVICE_ENV",
    "SERVER_NAME_ENV",
    "SERVICE_ENV",
    "SERVICE_NAME",
    "Unset",
    "UnsetType",
    "check_service",
    "collector_from_env",
    "credentials_from_env",
    "service_from_env",
]

SERVICE_ENV = "CUTWATCH_SERVICE"
OTEL_SERVICE_ENV = "OTEL_SERVICE_NAME"
OTEL_RESOURCE_ENV = "OTEL_RESOURCE_ATTRIBUTES"
COLLECTOR_ENV = "CUTWATCH_COLLECTOR"
CA_CERT_ENV = "CUTWATCH_CA_CERT"
CLIENT_CERT_ENV = "CUTWATCH_CLIENT_CERT"
CLIENT_KEY_ENV = "CUTWATCH_CLIENT_KEY"
SERVER_NAME_ENV = "CUTWATCH_SERVER_NAME"

SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_SERVICE_RULE = "1-100 letters, digits, '.', '_' or '-'"


class Unset(enum.Enum):
    """The default of a setting that ``None`` cannot stand for, because ``None`` means "none"."""

    FROM_ENVIRONMENT = "from the environment"

    def __repr__(self) -> str:
        return f"<{self.value}>"


FROM_ENVIRONMENT: Final = Unset.FROM_ENVIRONMENT
UnsetType = Literal[Unset.FROM_ENVIRONMENT]


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's value, stripped; an empty one counts as unset (as OpenTelemetry reads them)."""
    value = environ.get(name, "").strip()
    return value or None


def check_service(service: str, where: str = "service name") -> str:
    if not SERVICE_NAME.match(service):
        raise ValueError(f"{where} {service!r} must be {_SERVICE_RULE}")
    return service


def _resource_service(environ: Mapping[str, str]) -> str | None:
    """``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k=v``, values percent-encoded)."""
    for pair in (_get(environ, OTEL_RESOURCE_ENV) or "").split(","):
        key, equals, value = pair.partition("=")
        if equals and key.strip() == "service.name" and value.strip():
            return unquote(value.strip())
    return None


def service_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The service name from ``CUTWATCH_SERVICE``, ``OTEL_SERVICE_NAME`` or the OTel resource."""
    env = os.environ if environ is None else environ
    for name, value in (
        (SERVICE_ENV, _get(env, SERVICE_ENV)),
        (OTEL_SERVICE_ENV, _get(env, OTEL_SERVICE_ENV)),
        (f"service.name in {OTEL_RESOURCE_ENV}", _resource_service(env)),
    ):
        if value is not None:
            return check_service(value, f"the service name in {name}")
    raise ValueError(
        f"cutwatch.Agent needs a service name: pass service=..., or set {SERVICE_ENV} "
        f"(or {OTEL_SERVICE_ENV}) in the environment"
    )


def collector_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The collector's address in ``CUTWATCH_COLLECTOR``; None (clocks only) when it is unset."""
    address = _get(os.environ if environ is None else environ, COLLECTOR_ENV)
    if address is not None and any(c.isspace() for c in address):
        raise ValueError(f"{COLLECTOR_ENV}={address!r} is not a collector address (host:port)")
    return address


def credentials_from_env(environ: Mapping[str, str] | None = None) -> CollectorCredentials | None:
    """The token and certificates named by the ``CUTWATCH_*`` variables; None when none is set."""
    env = os.environ if environ is None else environ
    token = _get(env, AGENT_TOKEN_ENV)
    ca, cert, key = _get(env, CA_CERT_ENV), _get(env, CLIENT_CERT_ENV), _get(env, CLIENT_KEY_ENV)
    server_name = _get(env, SERVER_NAME_ENV)
    if token is None and ca is None and cert is None and key is None and server_name is None:
        return None
    try:
        CollectorCredentials(token=token)
    except SecurityConfigError as exc:
        raise SecurityConfigError(f"{AGENT_TOKEN_ENV}: {exc}") from None
    try:
        return CollectorCredentials.from_files(
            token=token, ca_file=ca, cert_file=cert, key_file=key, server_name=server_name
        )
    except SecurityConfigError as exc:
        named = (CA_CERT_ENV, ca), (CLIENT_CERT_ENV, cert), (CLIENT_KEY_ENV, key)
        names = ", ".join(name for name, value in named if value is not None) or "none set"
        raise SecurityConfigError(f"the TLS files in the environment ({names}): {exc}") from None
