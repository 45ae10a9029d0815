"""The standard gRPC health service (``grpc.health.v1.Health``) on the collector's server.

Probes (Kubernetes, load balancers, ``grpc-health-probe``) ask it whether the
collector runs. Two names answer: ``""``, the process, SERVING from start
until stop begins; and ``cutwatch.v1.Collector``, which also turns
NOT_SERVING while the store refuses writes (a full disk, a read-only file),
so that a readiness probe and alerts see what a liveness restart would not
fix. ``Check`` needs no token (probes carry none) and says only that; see
``_auth``.
"""

from __future__ import annotations

import logging
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # no stubs

from cutwatch.proto import collector_pb2 as pb

__all__ = ["COLLECTOR_SERVICE", "HEALTH_CHECK", "HEALTH_WATCH", "CollectorHealth"]

_LOG = logging.getLogger("cutwatch.collector")
COLLECTOR_SERVICE: str = pb.DESCRIPTOR.services_by_name["Collector"].full_name
HEALTH_CHECK = f"/{health.SERVICE_NAME}/Check"
HEALTH_WATCH = f"/{health.SERVICE_NAME}/Watch"
_OVERALL = ""  # the server as a whole, by the protocol's convention
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class CollectorHealth:
    """The statuses the health service reports; safe to call from any thread."""

    def __init__(self) -> None:
        self._servicer = health.HealthServicer()
        self._lock = threading.Lock()
        self.store_writable = True
        for service in (_OVERALL, COLLECTOR_SERVICE):
            self._servicer.set(service, _NOT_SERVING)  # until the server starts

    def add_to(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def serving(self) -> None:
        """The server is up: both names SERVING (the collector's only while the store is writable)."""
        with self._lock:
            self._servicer.set(_OVERALL, _SERVING)
            self._servicer.set(COLLECTOR_SERVICE, _SERVING if self.store_writable else _NOT_SERVING)

    def store(self, writable: bool) -> None:
        """What the collector's last writes to its store say; changes are logged once."""
        with self._lock:
            if writable == self.store_writable:
                return
            self.store_writable = writable
            self._servicer.set(COLLECTOR_SERVICE, _SERVING if writable else _NOT_SERVING)
        if writable:
            _LOG.info("the store takes writes again; health of %s: SERVING", COLLECTOR_SERVICE)
        else:
            _LOG.warning("the store refuses writes; health of %s: NOT_SERVING", COLLECTOR_SERVICE)

    def shutdown(self) -> None:
        """NOT_SERVING for good, before the server stops, so probes see the stop coming."""
        self._servicer.enter_graceful_shutdown()
