"""Who may talk to a collector: TLS, mutual TLS and bearer tokens with two roles.

A collector serves two kinds of peers. *Agents* open the control stream and
send snapshot events; *readers* (``CollectorClient``, the command line)
start snapshots and read cuts and check results. Each role can have its own
bearer tokens, so a leaked agent token cannot read cuts and a reader token
cannot inject events. TLS protects the tokens on the wire and, with a
client CA, lets only holders of a certificate it signed connect at all.

:class:`CollectorSecurity` is what the collector demands;
:class:`CollectorCredentials` is what an agent or a reader presents.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cutwatch._environment import AGENT_TOKEN_ENV, DEPRECATED_READER_TOKEN_ENV, READER_TOKEN_ENV
from cutwatch._environment import env_value as _env_value
from cutwatch._own import own_grpc as _own_grpc
from cutwatch.core import SecurityConfigError

__all__ = [
    "AGENT_ROLE",
    "AGENT_TOKEN_ENV",
    "DEPRECATED_READER_TOKEN_ENV",
    "READER_ROLE",
    "READER_TOKEN_ENV",
    "TOKEN_ENV",
    "CollectorCredentials",
    "CollectorSecurity",
    "SecurityConfigError",
]

AGENT_ROLE = "agent"
READER_ROLE = "reader"
TOKEN_ENV = READER_TOKEN_ENV
"""The variable a reader's token comes from (an older name for :data:`READER_TOKEN_ENV`)."""

AUTHORIZATION = "authorization"
BEARER = "Bearer "
_TOKEN = re.compile(r"[\x21-\x7e]{16,4096}")
"""Printable ASCII without spaces (it travels in a metadata value), long enough to be a secret."""


def reader_token_from_env(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The reader token in the environment and the variable it came from (None, None: neither is set).

    A variable names a token by its role, the same for the collector and its clients:
    ``CUTWATCH_READER_TOKEN``. ``CUTWATCH_TOKEN``, its former client-side name, is read only when
    the new name is not set; the caller tells the user to rename it when it is the one returned.
    """
    for name in (READER_TOKEN_ENV, DEPRECATED_READER_TOKEN_ENV):
        value = _env_value(name, environ)
        if value is not None:
            return value, name
    return None, None


def deprecated_token_notice(name: str) -> str:
    """What to say when a token came from the deprecated variable ``name``."""
    return f"${name} is deprecated: set ${READER_TOKEN_ENV} instead (the same variable the collector reads)"


def _check_token(token: str, what: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise SecurityConfigError(
            f"{what} must be 16 to 4096 printable ASCII characters without spaces "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} {os.fspath(path)!r}: {exc.strerror}") from None


def read_token(path: str | os.PathLike[str], what: str = "token file") -> str:
    """The token in a file (surrounding whitespace ignored), checked."""
    data = _read(path, what) or b""
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SecurityConfigError(f"the {what} {os.fspath(path)!r} is not ASCII text") from None
    return _check_token(text, f"the token in {os.fspath(path)!r}")


@dataclass(frozen=True)
class CollectorCredentials:
    """What an agent or a reader presents to a collector; every part is optional.

    ``token`` is sent as ``authorization: Bearer <token>`` on every call.
    ``root_certificates`` (PEM) turns TLS on and says which CA signed the
    collector's certificate; ``certificate_chain`` and ``private_key`` (PEM)
    are the client's own certificate for mutual TLS. ``server_name``
    overrides the name checked against the collector's certificate, for an
    address that is not in it (an IP address, say).
    """

    token: str | None = None
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            _check_token(self.token, "the token")
        if (self.certificate_chain is None) != (self.private_key is None):
            raise SecurityConfigError("a client certificate needs its private key, and a key its certificate")
        if self.certificate_chain is not None and self.root_certificates is None:
            raise SecurityConfigError(
                "a client certificate is for TLS: give the collector's CA certificate too"
            )

    @classmethod
    def from_files(
        cls,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
    ) -> CollectorCredentials:
        """Credentials from PEM files and a token (given, or read from ``token_file``)."""
        if token is not None and token_file is not None:
            raise SecurityConfigError("give a token or a token file, not both")
        return cls(
            token=read_token(token_file) if token_file is not None else token,
            root_certificates=_read(ca_file, "CA certificate"),
            certificate_chain=_read(cert_file, "client certificate"),
            private_key=_read(key_file, "client key"),
            server_name=server_name,
        )

    @property
    def tls(self) -> bool:
        return self.root_certificates is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the token (nothing without one)."""
        return ((AUTHORIZATION, BEARER + self.token),) if self.token else ()

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to the collector at ``address``: TLS when a CA is given, plaintext otherwise.

        It is cutwatch's own: an instrumented process does not stamp its calls.
        """
        with _own_grpc():
            return self._channel(address, options)

    def _channel(self, address: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(address, options=list(options))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )
        extra = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(address, credentials, options=[*options, *extra])


def open_channel(
    address: str, credentials: CollectorCredentials | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    return (credentials or CollectorCredentials()).channel(address, options)


@dataclass(frozen=True)
class CollectorSecurity:
    """What a collector demands of its peers.

    ``agent_tokens`` and ``reader_tokens``: when a role has tokens, every
    call of that role must carry one of them (``UNAUTHENTICATED`` otherwise;
    a token of the other role gets ``PERMISSION_DENIED``). A role without
    tokens is open, which suits a collector bound to loopback.
    ``certificate_chain`` and ``private_key`` (PEM) turn TLS on;
    ``client_ca`` (PEM) then also requires every client to present a
    certificate that CA signed (mutual TLS).
    """

    agent_tokens: tuple[str, ...] = ()
    reader_tokens: tuple[str, ...] = ()
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    client_ca: bytes | None = None

    def __post_init__(self) -> None:
        for token in self.agent_tokens:
            _check_token(token, "an agent token")
        for token in self.reader_tokens:
            _check_token(token, "a reader token")
        if set(self.agent_tokens) & set(self.reader_tokens):
            raise SecurityConfigError("agent and reader tokens must differ: a token names one role")
        if (self.certificate_chain is None) != (self.private_key is None):
            raise SecurityConfigError("TLS needs both the collector's certificate and its private key")
        if self.client_ca is not None and self.certificate_chain is None:
            raise SecurityConfigError("mutual TLS (a client CA) needs TLS: give a certificate and key too")

    @classmethod
    def from_files(
        cls,
        *,
        agent_tokens: Iterable[str] = (),
        reader_tokens: Iterable[str] = (),
        agent_token_files: Iterable[str | os.PathLike[str]] = (),
        reader_token_files: Iterable[str | os.PathLike[str]] = (),
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        client_ca_file: str | os.PathLike[str] | None = None,
    ) -> CollectorSecurity:
        """From PEM and token files, plus the tokens in ``agent_tokens`` and ``reader_tokens``."""
        return cls(
            agent_tokens=(*agent_tokens, *(read_token(p, "agent token file") for p in agent_token_files)),
            reader_tokens=(*reader_tokens, *(read_token(p, "reader token file") for p in reader_token_files)),
            certificate_chain=_read(cert_file, "certificate"),
            private_key=_read(key_file, "private key"),
            client_ca=_read(client_ca_file, "client CA certificate"),
        )

    @property
    def tls(self) -> bool:
        return self.certificate_chain is not None

    @property
    def mutual_tls(self) -> bool:
        return self.client_ca is not None

    def tokens(self, role: str) -> tuple[str, ...]:
        return self.agent_tokens if role == AGENT_ROLE else self.reader_tokens

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.certificate_chain is None or self.private_key is None:
            return None
        try:
            return grpc.ssl_server_credentials(
                [(self.private_key, self.certificate_chain)],
                root_certificates=self.client_ca,
                require_client_auth=self.client_ca is not None,
            )
        except Exception as exc:  # grpc says little; say what to check
            raise SecurityConfigError(f"the certificate or key cannot be used for TLS: {exc}") from None

    def describe(self) -> dict[str, bool]:
        """What is switched on, for status output; never the secrets themselves."""
        return {
            "tls": self.tls,
            "mutual_tls": self.mutual_tls,
            "agent_token": bool(self.agent_tokens),
            "reader_token": bool(self.reader_tokens),
        }
