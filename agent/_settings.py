"""What ``cutwatch.Agent()`` is not given, read from the environment.

So that a service runs under cutwatch without a code change (``opentelemetry-instrument``
and the instrumentor build the agent with no arguments), every setting a
deployment varies has a variable. An argument always wins. A bad value of a
``CUTWATCH_*`` variable is refused with the variable's name, never silently
ignored; a service name from OpenTelemetry's variables is made to fit instead,
because OpenTelemetry accepts names (``Payment Service``, ``ns/app``) that
cutwatch's rule does not, and a variable set for OpenTelemetry must not stop
the application.

The collector's credentials come from the environment only with its address:
zero-code configuration is all or nothing, so that a variable left in the
environment never changes a connection the code configured (``collector=``).

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
import logging
import re
from collections.abc import Mapping
from typing import Final, Literal
from urllib.parse import unquote

from cutwatch._environment import (
    AGENT_TOKEN_ENV,
    CA_CERT_ENV,
    CLIENT_CERT_ENV,
    CLIENT_KEY_ENV,
    COLLECTOR_ENV,
    OTEL_RESOURCE_ENV,
    OTEL_SERVICE_ENV,
    SERVER_NAME_ENV,
    SERVICE_ENV,
    env_value,
)
from cutwatch.security import CollectorCredentials, SecurityConfigError

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
    "fit_service",
    "service_from_env",
]

_LOG = logging.getLogger("cutwatch.agent")

_MAX_SERVICE = 100
SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_SERVICE_RULE = "1-100 letters, digits, '.', '_' or '-'"
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


class Unset(enum.Enum):
    """The default of a setting that ``None`` cannot stand for, because ``None`` means "none"."""

    FROM_ENVIRONMENT = "from the environment"

    def __repr__(self) -> str:
        return f"<{self.value}>"


FROM_ENVIRONMENT: Final = Unset.FROM_ENVIRONMENT
UnsetType = Literal[Unset.FROM_ENVIRONMENT]


def check_service(service: str, where: str = "service name") -> str:
    if not SERVICE_NAME.match(service):
        raise ValueError(f"{where} {service!r} must be {_SERVICE_RULE}")
    return service


def fit_service(name: str, where: str) -> str:
    """``name`` (from OpenTelemetry's ``where``) made a cutwatch service name: every character
    outside the rule becomes ``_``, and it is cut to its length."""
    fitted = _NOT_IN_NAME.sub("_", name)[:_MAX_SERVICE]
    if fitted != name:
        _LOG.debug("cutwatch: the service name %r in %s is used as %r", name, where, fitted)
    return fitted


def _resource_service(environ: Mapping[str, str] | None) -> str | None:
    """``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k=v``, values percent-encoded)."""
    for pair in (env_value(OTEL_RESOURCE_ENV, environ) or "").split(","):
        key, equals, value = pair.partition("=")
        if equals and key.strip() == "service.name" and value.strip():
            return unquote(value.strip())
    return None


def service_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The service name from ``CUTWATCH_SERVICE`` (checked), else OpenTelemetry's (fitted)."""
    own = env_value(SERVICE_ENV, environ)
    if own is not None:
        return check_service(own, f"the service name in {SERVICE_ENV}")
    for where, value in (
        (OTEL_SERVICE_ENV, env_value(OTEL_SERVICE_ENV, environ)),
        (f"service.name in {OTEL_RESOURCE_ENV}", _resource_service(environ)),
    ):
        if value is not None:
            return fit_service(value, where)
    raise ValueError(
        f"cutwatch.Agent needs a service name: pass service=..., or set {SERVICE_ENV} "
        f"(or {OTEL_SERVICE_ENV}) in the environment"
    )


def collector_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The collector's address in ``CUTWATCH_COLLECTOR``; None (clocks only) when it is unset."""
    address = env_value(COLLECTOR_ENV, environ)
    if address is not None and any(c.isspace() for c in address):
        raise ValueError(f"{COLLECTOR_ENV}={address!r} is not a collector address (host:port)")
    return address


def credentials_from_env(environ: Mapping[str, str] | None = None) -> CollectorCredentials | None:
    """The token and certificates named by the ``CUTWATCH_*`` variables; None when none is set."""
    token = env_value(AGENT_TOKEN_ENV, environ)
    ca, cert, key = (env_value(name, environ) for name in (CA_CERT_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV))
    server_name = env_value(SERVER_NAME_ENV, environ)
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
