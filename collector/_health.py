"""The standard gRPC health service (``grpc.health.v1.Health``) on the collector's server.

Probes (Kubernetes, load balancers, ``grpc-health-probe``) ask it whether the
collector runs. Two names answer: ``""``, the process, SERVING from start
until stop begins; and ``cutwatch.v1.Collector``, which also turns
NOT_SERVING while the store refuses writes (a full disk, a read-only file),
so that a readiness probe and alerts see what a liveness restart would not
fix. ``Check`` needs no token (probes carry none) and says only that; see
``_auth``.

The service comes from ``grpcio-health-checking``, part of the ``collector``
extra and not of the base install: each of its releases requires a grpcio at
least as new as itself, which would drag every agent's gRPC forward. Without
it the collector runs as before and says once that probes need the extra.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from cutwatch.proto import collector_pb2 as pb

try:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
except ImportError:  # the base install, without the collector extra
    health = health_pb2 = health_pb2_grpc = None

__all__ = ["COLLECTOR_SERVICE", "HEALTH_CHECK", "HEALTH_SERVICE", "HEALTH_WATCH", "CollectorHealth"]

_LOG = logging.getLogger("cutwatch.collector")
COLLECTOR_SERVICE: str = pb.DESCRIPTOR.services_by_name["Collector"].full_name
HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_CHECK = f"/{HEALTH_SERVICE}/Check"
HEALTH_WATCH = f"/{HEALTH_SERVICE}/Watch"
MISSING_HEALTH = (
    "the gRPC health service is off: it needs grpcio-health-checking, "
    'which comes with the collector extra (pip install "cutwatch[collector]")'
)
_OVERALL = ""  # the server as a whole, by the protocol's convention


class CollectorHealth:
    """The statuses the health service reports; safe to call from any thread."""

    def __init__(self) -> None:
        self.available = health is not None
        self._servicer: Any = health.HealthServicer() if health is not None else None
        self._lock = threading.Lock()
        self.store_writable = True
        for service in (_OVERALL, COLLECTOR_SERVICE):
            self._set(service, serving=False)  # until the server starts

    def _set(self, service: str, *, serving: bool) -> None:
        if self._servicer is not None:
            status = health_pb2.HealthCheckResponse
            self._servicer.set(service, status.SERVING if serving else status.NOT_SERVING)

    def add_to(self, server: grpc.Server) -> None:
        if self._servicer is None:
            _LOG.info(MISSING_HEALTH)
            return
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def serving(self) -> None:
        """The server is up: both names SERVING (the collector's only while the store is writable)."""
        with self._lock:
            self._set(_OVERALL, serving=True)
            self._set(COLLECTOR_SERVICE, serving=self.store_writable)

    def store(self, writable: bool) -> None:
        """What the collector's last writes to its store say; changes are logged once."""
        with self._lock:
            if writable == self.store_writable:
                return
            self.store_writable = writable
            self._set(COLLECTOR_SERVICE, serving=writable)
        if writable:
            _LOG.info("the store takes writes again; health of %s: SERVING", COLLECTOR_SERVICE)
        else:
            _LOG.warning("the store refuses writes; health of %s: NOT_SERVING", COLLECTOR_SERVICE)

    def shutdown(self) -> None:
        """NOT_SERVING for good, before the server stops, so probes see the stop coming."""
        if self._servicer is not None:
            self._servicer.enter_graceful_shutdown()
