"""The collector as a gRPC server: agents' control streams, on-demand snapshots and queries.

Each agent's stream takes one server thread (which writes the collector's
orders) and one reader thread (which feeds the agent's messages to the
coordinator), so the pool is sized from ``max_agents``; streams past it
are refused with RESOURCE_EXHAUSTED and the agents retry with backoff. A
ticker thread ends snapshots at their deadline and starts the periodic ones.
Tokens and TLS are checked before any handler runs (``_auth``); each
agent's stream is metered (``_limits``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.metrics import MeterProvider

from cutwatch._own import own_grpc
from cutwatch.collector._auth import AuthInterceptor
from cutwatch.collector._checks import CutChecker
from cutwatch.collector._coordinator import AgentSession, Coordinator
from cutwatch.collector._health import CollectorHealth
from cutwatch.collector._limits import AgentMeter, CollectorLimits
from cutwatch.collector._metrics import collector_metrics
from cutwatch.collector._recordings import RecordingLog
from cutwatch.collector._records import CutStatus, StoredCut, cut_from_stored, summary_to_json
from cutwatch.collector._retention import Retention
from cutwatch.collector._sqlite import SqliteCutStore
from cutwatch.collector._store import MAX_LIST_LIMIT, CutStore
from cutwatch.collector._upkeep import Upkeep
from cutwatch.core import NoAgentsError, shown
from cutwatch.predicates.engine import PredicateEngine
from cutwatch.proto import agent_message_from_pb, order_to_pb, registration_from_pb
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc
from cutwatch.security import CollectorSecurity

__all__ = ["DEFAULT_LISTEN", "CollectorServer"]

_LOG = logging.getLogger("cutwatch.collector")
DEFAULT_LISTEN = "127.0.0.1:7070"
_MAX_MESSAGE = 64 * 1024 * 1024
_REGISTER_TIMEOUT = 10.0


def _status(text: str) -> CutStatus | None:
    if text == "COMPLETE":
        return "COMPLETE"
    if text == "INCOMPLETE":
        return "INCOMPLETE"
    if text:
        raise ValueError(f"status must be COMPLETE or INCOMPLETE, not {shown(text, 100)!r}")
    return None


def _reply(cut: StoredCut | None) -> pb.CutReply:
    if cut is None:
        return pb.CutReply(found=False)
    return pb.CutReply(found=True, cut_json=cut_from_stored(cut).dumps())


class _Servicer(pb_grpc.CollectorServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        checker: CutChecker,
        default_timeout: float,
        limits: CollectorLimits,
        auth: AuthInterceptor | None,
        security: CollectorSecurity,
    ) -> None:
        self._coordinator = coordinator
        self._checker = checker
        self._default_timeout = default_timeout
        self._limits = limits
        self._auth = auth
        self._security = security
        self._over_limit = 0
        self._over_limit_lock = threading.Lock()

    # Agents -------------------------------------------------------------------------------------
    def Control(
        self, request_iterator: Iterator[pb.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ControlMessage]:
        first = _first_message(request_iterator)
        if first is None or first.WhichOneof("body") != "register":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a control stream starts with a registration")
        try:
            session = self._coordinator.register(registration_from_pb(first.register))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        context.add_callback(session.close)
        refusal: list[str] = []
        reader = threading.Thread(
            target=self._read,
            args=(session, request_iterator, refusal),
            name=f"cutwatch-read-{session.process}",
            daemon=True,
        )
        reader.start()
        try:
            while context.is_active():
                try:
                    message = session.outbox.get(timeout=1.0)
                except queue.Empty:
                    continue
                if message is None:
                    break
                yield order_to_pb(message)
        finally:
            self._coordinator.unregister(session)
        if refusal:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal[0])

    def _read(self, session: AgentSession, requests: Iterator[pb.AgentMessage], refusal: list[str]) -> None:
        meter = AgentMeter(self._limits)
        try:
            for message in requests:
                over = meter.admit(message.ByteSize())
                if over is not None:
                    with self._over_limit_lock:
                        self._over_limit += 1
                    _LOG.warning("agent %s sent %s: its stream is ended", shown(session.process), over)
                    refusal.append(f"agent {shown(session.process)} sent {over}")
                    break
                self._coordinator.on_message(session, *agent_message_from_pb(message, session.process))
        except grpc.RpcError:
            pass  # the stream ended: the agent went away or the server stops
        except Exception:
            _LOG.exception("reading the stream of %s failed", shown(session.process))
        finally:
            self._coordinator.unregister(session)

    # Readers ------------------------------------------------------------------------------------
    def Snapshot(self, request: pb.SnapshotRequest, context: grpc.ServicerContext) -> pb.CutReply:
        timeout = request.timeout_seconds if request.timeout_seconds > 0 else self._default_timeout
        timeout = min(timeout, 3600.0)
        try:
            epoch = self._coordinator.start_snapshot(timeout)
        except NoAgentsError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        # The coordinator ends the snapshot at its deadline; wait a little past it.
        cut = self._coordinator.wait(epoch, timeout + 5.0)
        if cut is not None:  # its checks too, so that `deadlocks`/`check` right after see them
            self._checker.wait_checked(cut.epoch, timeout)
        return _reply(cut)

    def GetCut(self, request: pb.CutQuery, context: grpc.ServicerContext) -> pb.CutReply:
        try:
            status = _status(request.status)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        store = self._coordinator.store
        if request.epoch:
            cut = store.get_cut(request.epoch)
            if cut is not None and status is not None and cut.status != status:
                cut = None
            return _reply(cut)
        return _reply(store.latest(status))

    def ListCuts(self, request: pb.ListQuery, context: grpc.ServicerContext) -> pb.CutList:
        try:
            status = _status(request.status)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        limit = min(request.limit or 100, MAX_LIST_LIMIT)
        summaries = self._coordinator.store.list_cuts(
            status, since=request.since or None, until=request.until or None, limit=limit
        )
        return pb.CutList(cuts_json=json.dumps([summary_to_json(s) for s in summaries]))

    def Results(self, request: pb.ResultsQuery, context: grpc.ServicerContext) -> pb.ResultsReply:
        store = self._coordinator.store
        epoch = request.epoch or store.latest_results_epoch(request.name or None)
        if not epoch:
            return pb.ResultsReply(found=False)
        cut = store.get_cut(epoch)
        results = [r for r in store.results(epoch) if not request.name or r.name == request.name]
        if cut is None or not results:
            return pb.ResultsReply(found=False, epoch=epoch)
        doc = [
            {"name": r.name, "status": r.status, "message": r.message, "witness": r.witness} for r in results
        ]
        return pb.ResultsReply(found=True, epoch=epoch, cut_status=cut.status, results_json=json.dumps(doc))

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.WatchEvent]:
        subscription = self._checker.subscribe()
        context.add_callback(subscription.close)
        try:
            while context.is_active():
                try:
                    event = subscription.events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if event is None:
                    return
                yield pb.WatchEvent(event_json=json.dumps(event.to_json(), sort_keys=True, default=str))
        finally:
            self._checker.unsubscribe(subscription)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        stats = self._coordinator.stats()
        doc: dict[str, Any] = {
            "agents": [
                {
                    "process": s.process,
                    "service": s.service,
                    "connected_at": s.connected_at,
                    "epoch": s.epoch,
                    "worker_pools": dict(s.worker_pools),
                    "events_dropped": s.dropped,
                    "events_invalid": s.invalid,
                }
                for s in sorted(self._coordinator.sessions(), key=lambda s: s.process)
            ],
            "running": list(self._coordinator.running()),
            "absent": [
                {"process": process, "service": service, "seconds_ago": round(ago, 3)}
                for process, service, ago in self._coordinator.absent()
            ],
            "stats": stats.__dict__,
            "checks": {
                "checked": self._checker.checked,
                "skipped": self._checker.skipped,
                **_recording_counts(self._checker.recordings),
            },
            "security": {
                **self._security.describe(),
                "refused_unauthenticated": self._auth.unauthenticated if self._auth else 0,
                "refused_permission_denied": self._auth.permission_denied if self._auth else 0,
            },
            "limits": {**self._limits.__dict__, "agents_over_limit": self._over_limit},
        }
        return pb.StatusReply(status_json=json.dumps(doc, sort_keys=True))


def _recording_counts(recordings: RecordingLog | None) -> dict[str, int]:
    """The recorded changes waiting for their window, and those the collector dropped (none without a
    lattice invariant)."""
    if recordings is None:
        return {}
    return {"changes_waiting": recordings.size, "changes_dropped": recordings.dropped}


def _describe_security(security: CollectorSecurity) -> str:
    parts = [name.replace("_", " ") for name, on in security.describe().items() if on]
    return ", ".join(parts) or "plaintext, no tokens"


def _is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _first_message(requests: Iterator[pb.AgentMessage]) -> pb.AgentMessage | None:
    try:
        return next(requests)
    except (StopIteration, grpc.RpcError):
        return None


class CollectorServer:
    """A collector: gRPC service, coordinator, store and the periodic snapshot ticker.

    ``db`` is a SQLite file path (or a ready :class:`CutStore`); ``listen``
    binds to loopback by default; ``every`` starts a snapshot that often
    (seconds, None: only on demand); ``predicates`` are local files or
    module names whose ``@cutwatch.invariant`` functions run on every
    COMPLETE cut, each for at most ``predicate_timeout`` seconds.
    ``rejoin_grace`` is how long a process whose stream broke is expected
    back: snapshots in that time are INCOMPLETE, naming it.
    ``security`` sets the tokens and TLS peers must present (none by
    default: fit for loopback only); ``limits`` what one agent may cost.
    ``meter_provider`` receives the collector's metrics while it runs
    (default: OpenTelemetry's global one; docs/operations.md).
    ``retention`` prunes stored cuts as they age (none by default: all are kept).
    The server also serves the standard gRPC health service (``_health``).
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | CutStore,
        *,
        listen: str = DEFAULT_LISTEN,
        every: float | None = None,
        snapshot_timeout: float = 10.0,
        rejoin_grace: float = 10.0,
        limits: CollectorLimits | None = None,
        security: CollectorSecurity | None = None,
        predicates: Sequence[str] = (),
        predicate_timeout: float = 5.0,
        meter_provider: MeterProvider | None = None,
        retention: Retention | None = None,
    ) -> None:
        if every is not None and every <= 0:
            raise ValueError("every must be positive")
        if snapshot_timeout <= 0 or rejoin_grace < 0:
            raise ValueError("snapshot_timeout must be positive and rejoin_grace not negative")
        engine = None
        if predicates:
            engine = PredicateEngine(list(predicates), timeout=predicate_timeout)  # refuses bad files now
        try:
            self.store: CutStore = db if not isinstance(db, (str, os.PathLike)) else SqliteCutStore(db)
        except BaseException:
            if engine is not None:
                engine.close()
            raise
        self.every = every
        # Changes recorded for lattice invariants are kept only when one is loaded.
        self.recordings = RecordingLog() if engine is not None and engine.lattice_reads else None
        self.checker = CutChecker(self.store, engine, recordings=self.recordings)
        self._metrics = collector_metrics(meter_provider)
        self.coordinator = Coordinator(
            self.store,
            snapshot_timeout=snapshot_timeout,
            on_finished=self._cut_finished,
            rejoin_grace=rejoin_grace,
            recordings=self.recordings,
        )
        self._listen = listen
        self.limits = limits or CollectorLimits()
        self.security = security or CollectorSecurity()
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="cutwatch-collector-ticker", daemon=True)
        self.port = 0
        self.health = CollectorHealth()
        self.upkeep = Upkeep(self.store, self.health, self._writes, retention=retention)

    @property
    def address(self) -> str:
        host = self._listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @own_grpc()  # an instrumented collector does not stamp its own server
    def start(self) -> CollectorServer:
        limits, security = self.limits, self.security
        workers = limits.max_agents + 16
        auth = AuthInterceptor(security) if security.agent_tokens or security.reader_tokens else None
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cutwatch-collector"),
            interceptors=[auth] if auth is not None else None,
            maximum_concurrent_rpcs=workers,
            options=[
                ("grpc.max_receive_message_length", limits.max_message_bytes),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
                # Ping agents, so that a half-open connection (a partition) is closed in
                # seconds rather than when TCP gives up; and accept the agents' own pings.
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ],
        )
        pb_grpc.add_CollectorServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(
                self.coordinator, self.checker, self.coordinator.snapshot_timeout, limits, auth, security
            ),
            server,
        )
        credentials = security.server_credentials()
        try:
            if credentials is not None:
                self.port = server.add_secure_port(self._listen, credentials)
            else:
                self.port = server.add_insecure_port(self._listen)
        except RuntimeError as exc:
            what = "; check the certificate and key" if credentials is not None else ""
            raise OSError(f"cannot listen on {self._listen}: {exc}{what}") from None
        self.health.add_to(server)
        self.health.serving()
        server.start()
        self._server = server
        self._metrics.observed.add(self)
        self._ticker.start()
        self.upkeep.start()
        # The command line says where it listens; a program that embeds the collector has .address.
        _LOG.debug("collector listening on %s (%s)", self.address, _describe_security(security))
        if not _is_loopback(self._listen) and not (security.tls and (auth or security.mutual_tls)):
            _LOG.warning(
                "collector listens on %s beyond loopback without TLS and tokens: anyone who can reach "
                "it can read cuts and inject events (see docs/security.md)",
                self.address,
            )
        return self

    def _tick(self) -> None:
        next_periodic = time.monotonic() + (self.every or 0)
        while not self._stopping.wait(0.05):
            try:
                self.coordinator.expire()
                if self.every is not None and time.monotonic() >= next_periodic:
                    next_periodic = time.monotonic() + self.every
                    with contextlib.suppress(NoAgentsError):
                        self.coordinator.start_snapshot()
            except Exception:
                _LOG.exception("the collector's ticker failed; it keeps going")

    def _writes(self) -> tuple[int, int]:
        stats = self.coordinator.stats()
        return stats.complete + stats.incomplete, stats.store_errors

    def _cut_finished(self, cut: StoredCut) -> None:
        self._metrics.cut_finished(cut)
        self.checker.submit(cut)

    def stop(self, grace: float = 1.0) -> None:
        self.health.shutdown()
        self._stopping.set()
        self.coordinator.close()
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5.0)
        if self._ticker.is_alive():
            self._ticker.join(5.0)
        self.upkeep.stop()
        self.checker.close()
        self._metrics.observed.remove(self)
        self.store.close()

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> CollectorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
