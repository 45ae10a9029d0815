"""``cutwatch.CollectorClient``: take snapshots and read cuts from a running collector."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from cutwatch.core import CollectorAuthError, CollectorError, CollectorUnavailableError, Cut
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc
from cutwatch.proto import rpc_error_parts
from cutwatch.security import (
    DEPRECATED_READER_TOKEN_ENV,
    READER_TOKEN_ENV,
    CollectorCredentials,
    deprecated_token_notice,
    reader_token_from_env,
)

__all__ = [
    "CheckResult",
    "CheckResults",
    "CollectorAuthError",
    "CollectorClient",
    "CollectorError",
    "CollectorUnavailableError",
    "CutInfo",
]

DEADLOCK_CHECK = "cutwatch.deadlock"


@dataclass(frozen=True)
class CutInfo:
    """A stored cut without its contents, as :meth:`CollectorClient.list_cuts` returns it."""

    epoch: int
    status: str
    started: float
    finished: float
    processes: int
    in_transit: int
    missing: tuple[str, ...]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict on a cut: ``PASS``, ``FAIL`` (with a witness), ``ERROR`` (it could not run)
    or ``INCONCLUSIVE`` (not run: the cut's states hold changes it cannot place)."""

    name: str
    status: str
    message: str
    witness: Any

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "witness": self.witness}


@dataclass(frozen=True)
class CheckResults:
    """Every check's result on the cut ``epoch`` (whose status is ``cut_status``)."""

    epoch: int
    cut_status: str
    results: tuple[CheckResult, ...]

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "FAIL")

    @property
    def errors(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "ERROR")

    @property
    def inconclusive(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "INCONCLUSIVE")

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "cut_status": self.cut_status,
            "results": [r.to_json() for r in self.results],
        }


class CollectorClient:
    """A reader of the collector at ``address`` (``host:port``). Usable as a context manager.

    ``credentials`` carry the reader token and TLS certificates when the
    collector demands them; without them the client presents the reader
    token in ``$CUTWATCH_READER_TOKEN``, if set.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:7070",
        *,
        timeout: float = 10.0,
        credentials: CollectorCredentials | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        if credentials is None:  # like the command line: the reader token from the environment, if set
            token, source = reader_token_from_env()
            if source == DEPRECATED_READER_TOKEN_ENV:
                warnings.warn(deprecated_token_notice(source), DeprecationWarning, stacklevel=2)
            credentials = CollectorCredentials(token=token)
        self._credentials = credentials
        self._metadata = self._credentials.metadata() or None
        self._channel = self._credentials.channel(
            address, [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self._stub = pb_grpc.CollectorStub(self._channel)  # type: ignore[no-untyped-call]

    def snapshot(self, timeout: float = 10.0) -> Cut:
        """Start a snapshot now and wait for its cut (COMPLETE, or INCOMPLETE after ``timeout``)."""
        reply = self._call("Snapshot", pb.SnapshotRequest(timeout_seconds=timeout), timeout + 10.0)
        cut = self._cut(reply)
        if cut is None:
            raise CollectorError(f"snapshot did not finish within {timeout} s (the collector is overloaded?)")
        return cut

    def latest(self, status: str | None = None) -> Cut | None:
        """The newest stored cut (of that status: ``COMPLETE`` or ``INCOMPLETE``), None if there is none."""
        return self._cut(self._call("GetCut", pb.CutQuery(status=status or ""), self.timeout))

    def get(self, epoch: int) -> Cut | None:
        """The stored cut of ``epoch``, None if there is none."""
        if epoch < 1:
            raise ValueError("epochs start at 1")
        return self._cut(self._call("GetCut", pb.CutQuery(epoch=epoch), self.timeout))

    def list_cuts(
        self,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[CutInfo]:
        """Stored cuts finished in ``[since, until)`` (unix seconds), newest first."""
        query = pb.ListQuery(status=status or "", since=since or 0.0, until=until or 0.0, limit=limit)
        reply = self._call("ListCuts", query, self.timeout)
        return [
            CutInfo(
                epoch=int(item["epoch"]),
                status=str(item["status"]),
                started=float(item["started"]),
                finished=float(item["finished"]),
                processes=int(item["processes"]),
                in_transit=int(item["in_transit"]),
                missing=tuple(item["missing"]),
                reasons=tuple(item["reasons"]),
            )
            for item in json.loads(reply.cuts_json)
        ]

    def results(self, epoch: int | None = None, name: str | None = None) -> CheckResults | None:
        """The check results of cut ``epoch`` (default: the newest cut checked), None if there are none."""
        query = pb.ResultsQuery(epoch=epoch or 0, name=name or "")
        reply = self._call("Results", query, self.timeout)
        if not reply.found:
            return None
        return CheckResults(
            epoch=reply.epoch,
            cut_status=reply.cut_status,
            results=tuple(
                CheckResult(str(r["name"]), str(r["status"]), str(r["message"]), r["witness"])
                for r in json.loads(reply.results_json)
            ),
        )

    def deadlocks(self) -> list[dict[str, Any]]:
        """The deadlocks found on the newest cut checked for them (empty: none); see docs/deadlocks.md."""
        checked = self.results(name=DEADLOCK_CHECK)
        if checked is None or not checked.results:
            return []
        (result,) = checked.results
        if result.status == "ERROR":
            raise CollectorError(f"deadlock detection failed on cut {checked.epoch}: {result.message}")
        return list(result.witness or []) if result.status == "FAIL" else []

    def watch(self) -> Iterator[dict[str, Any]]:
        """Every failed check from now on, as the collector finds it (blocks; stop by closing the client)."""
        try:
            for event in self._stub.Watch(pb.WatchRequest(), metadata=self._metadata):
                yield json.loads(event.event_json)
        except grpc.RpcError as exc:
            if rpc_error_parts(exc)[0] == grpc.StatusCode.CANCELLED:
                return
            self._raise(exc, "Watch")

    def status(self) -> dict[str, Any]:
        """Registered agents, running snapshots and the collector's counters."""
        reply = self._call("Status", pb.StatusRequest(), self.timeout)
        doc: dict[str, Any] = json.loads(reply.status_json)
        return doc

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Internals ------------------------------------------------------------------------------------
    @staticmethod
    def _cut(reply: pb.CutReply) -> Cut | None:
        return Cut.loads(reply.cut_json) if reply.found else None

    def _call(self, method: str, request: Any, timeout: float) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            self._raise(exc, method)

    def _raise(self, exc: grpc.RpcError, method: str) -> NoReturn:
        code, details = rpc_error_parts(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            hint = "is `cutwatch collector` running there?"
            if any(word in details.lower() for word in ("ssl", "tls", "handshake", "certificate")):
                hint = "the TLS handshake failed: check the CA certificate and the client certificate"
            raise CollectorUnavailableError(
                f"cannot reach the cutwatch collector at {self.address} ({details or code}); {hint}"
            ) from None
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise CollectorAuthError(
                f"the collector refused {method}: {code.name}: {details}; "
                f"give a reader token (--token-file, or ${READER_TOKEN_ENV})"
            ) from None
        name = code.name if code else "error"
        raise CollectorError(f"the collector refused {method}: {name}: {details}") from None
