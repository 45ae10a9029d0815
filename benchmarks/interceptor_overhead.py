"""What cutwatch's interceptors cost a small unary call, next to OpenTelemetry's.

One process, real gRPC over 127.0.0.1, a 64-byte unary echo in three set-ups
measured in interleaved rounds (so that drift of the machine hits all three
alike), first with sync gRPC, then with grpc.aio:

  bare      grpcio without interceptors
  cutwatch  cutwatch client and server interceptors; both agents' clocks hold
            8 entries (6 extra client agents call the server first, and the
            measured client learns their entries from its first response)
  otel      opentelemetry-instrumentation-grpc interceptors, SDK tracer
            provider, batch span processor, an exporter that drops the spans

The process is pinned to one CPU by default: on small machines the client and
server threads otherwise migrate between cores and the figures swing between
two modes. It also prints the stamp size for clocks of 1 to 1000 entries.

    python benchmarks/interceptor_overhead.py [--calls N] [--rounds N] [--no-pin] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from opentelemetry.instrumentation import grpc as otel_grpc
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel as otel_intercept_channel
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import cutwatch.agent
from cutwatch.agent import StampCodec

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, as the smoke tests do
    sys.path.insert(0, _HERE)

from _machine import describe_machine, emit  # noqa: E402

SERVICE = "cutwatch.bench.Echo"
METHOD = f"/{SERVICE}/Echo"
PAYLOAD = bytes(range(64))
CONFIGS = ("bare", "cutwatch", "otel")
EXTRA_AGENTS = 6
SYNC_WORKERS = 4
CLOCK_ENTRIES = 2 + EXTRA_AGENTS
WARMUP_CALLS = 20
STAMP_SIZES = (1, 8, 100, 1000)
GRPC_METADATA_LIMIT = 8192
HEADER_ENTRY_OVERHEAD = 32
"""HPACK (RFC 7541 4.1) and gRPC's metadata limit count key + value + 32 per entry."""

GOAL_RATIO = {"sync": 1.25, "aio": 1.30}
GOAL_SHARE_OF_OTEL = 0.25
GOAL_BYTES_PER_ENTRY = 3.0
GOAL_CONSTANT_BYTES = 64
PREWARM = (
    f"{EXTRA_AGENTS} extra cutwatch client agents each call the measured server first, so the "
    f"server's clock has {CLOCK_ENTRIES - 1} entries; the measured client learns them from its first "
    f"response and then holds {CLOCK_ENTRIES}"
)


def _identity(data: bytes) -> bytes:
    return data


# Pinning ---------------------------------------------------------------------
def pin_process(cpu: int) -> int:
    """Pin every thread of this process to ``cpu``; returns how many threads."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
            count += 1
        except (ProcessLookupError, PermissionError):  # thread ended meanwhile
            continue
    return count


def unpinned_threads(cpu: int) -> int:
    """Threads of this process allowed to run anywhere but ``cpu`` (0 when pinning held)."""
    loose = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.sched_getaffinity(int(tid)) != {cpu}:
                loose += 1
        except ProcessLookupError:
            continue
    return loose


# Set-ups ---------------------------------------------------------------------
class DropSpanExporter(SpanExporter):
    """Accepts and forgets spans, so that only the instrumentation's own cost is measured."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Instruments:
    """The agents and the tracer provider of one mode (sync or aio)."""

    server_agent: cutwatch.agent.Agent
    client_agent: cutwatch.agent.Agent
    extra_agents: list[cutwatch.agent.Agent]
    exporter: DropSpanExporter
    provider: TracerProvider

    @classmethod
    def create(cls, mode: str) -> Instruments:
        exporter = DropSpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(
            server_agent=cutwatch.agent.Agent(f"bench-server-{mode}").start(),
            client_agent=cutwatch.agent.Agent(f"bench-client-{mode}").start(),
            extra_agents=[cutwatch.agent.Agent(f"bench-peer{i}-{mode}").start() for i in range(EXTRA_AGENTS)],
            exporter=exporter,
            provider=provider,
        )

    def close(self) -> None:
        self.provider.shutdown()
        for agent in (self.server_agent, self.client_agent, *self.extra_agents):
            agent.close()

    def check(self) -> dict[str, int]:
        """What the agents saw: the clock sizes must match the claim, nothing may go untracked."""
        client, server = self.client_agent.stats(), self.server_agent.stats()
        return {
            "client_clock_entries": len(self.client_agent.clock),
            "server_clock_entries": len(self.server_agent.clock),
            "requests_stamped": client.requests_sent,
            "untracked": client.untracked + server.untracked,
            "stamps_degraded": client.stamps_degraded + server.stamps_degraded,
            "internal_errors": client.internal_errors + server.internal_errors,
            "otel_spans_exported": self.exporter.exported,
        }


def _sync_echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


async def _aio_echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def _handler(behaviour: Any) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )


def _sync_setup(config: str, inst: Instruments) -> tuple[list[Any], Callable[[grpc.Channel], grpc.Channel]]:
    """(server interceptors, channel wrapper) of a sync set-up, each as its documentation shows."""
    if config == "cutwatch":
        interceptor = inst.client_agent.client_interceptor()
        return (
            [inst.server_agent.server_interceptor(max_workers=SYNC_WORKERS)],
            lambda channel: grpc.intercept_channel(channel, interceptor),
        )
    if config == "otel":
        # OpenTelemetry's sync client interceptor has its own channel wrapper (what its instrumentor uses).
        otel_interceptor = otel_grpc.client_interceptor(tracer_provider=inst.provider)  # type: ignore[no-untyped-call]
        return (
            [otel_grpc.server_interceptor(tracer_provider=inst.provider)],  # type: ignore[no-untyped-call]
            lambda channel: otel_intercept_channel(channel, otel_interceptor),  # type: ignore[no-untyped-call]
        )
    return [], lambda channel: channel


def _aio_interceptors(config: str, inst: Instruments) -> tuple[list[Any], list[Any]]:
    """(server interceptors, client interceptors) of an aio set-up."""
    if config == "cutwatch":
        return [inst.server_agent.aio_server_interceptor()], list(inst.client_agent.aio_client_interceptors())
    if config == "otel":
        return (
            [otel_grpc.aio_server_interceptor(tracer_provider=inst.provider)],  # type: ignore[no-untyped-call]
            otel_grpc.aio_client_interceptors(tracer_provider=inst.provider),  # type: ignore[no-untyped-call]
        )
    return [], []


# Measuring -------------------------------------------------------------------
@dataclass
class Samples:
    latencies_ns: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    round_medians_ns: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})

    def add(self, config: str, block: list[int]) -> None:
        self.latencies_ns[config].extend(block)
        self.round_medians_ns[config].append(statistics.median(block))


def round_order(index: int, configs: tuple[str, ...] = CONFIGS) -> tuple[str, ...]:
    """Rotate who goes first, so no set-up always follows the same neighbour."""
    shift = index % len(configs)
    return configs[shift:] + configs[:shift]


def run_sync(calls: int, rounds: int, pin: int | None) -> tuple[Samples, dict[str, int]]:
    inst = Instruments.create("sync")
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []
    try:
        stubs: dict[str, Callable[[bytes], bytes]] = {}
        addresses: dict[str, str] = {}
        for config in CONFIGS:
            server_side, wrap_channel = _sync_setup(config, inst)
            pool = futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS)
            server = grpc.server(pool, interceptors=server_side)
            server.add_generic_rpc_handlers((_handler(_sync_echo),))
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            servers.append(server)
            addresses[config] = f"127.0.0.1:{port}"
            channel = grpc.insecure_channel(addresses[config])
            channels.append(channel)
            stubs[config] = wrap_channel(channel).unary_unary(
                METHOD, request_serializer=_identity, response_deserializer=_identity
            )
        for extra in inst.extra_agents:
            channel = grpc.insecure_channel(addresses["cutwatch"])
            channels.append(channel)
            stub = grpc.intercept_channel(channel, extra.client_interceptor()).unary_unary(
                METHOD, request_serializer=_identity, response_deserializer=_identity
            )
            stub(PAYLOAD, timeout=30)
        if pin is not None:
            pin_process(pin)

        samples = Samples()
        clock = time.perf_counter_ns
        for index in range(rounds):
            for config in round_order(index):
                call = stubs[config]
                for _ in range(WARMUP_CALLS):
                    call(PAYLOAD)
                block = [0] * calls
                for i in range(calls):
                    start = clock()
                    call(PAYLOAD)
                    block[i] = clock() - start
                samples.add(config, block)
            gc.collect()
        inst.provider.force_flush()
        return samples, {**inst.check(), "unpinned_threads": unpinned_threads(pin) if pin is not None else -1}
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            server.stop(None).wait(10)
        inst.close()


async def _run_aio(calls: int, rounds: int, pin: int | None) -> tuple[Samples, dict[str, int]]:
    inst = Instruments.create("aio")
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []
    try:
        stubs: dict[str, Callable[[bytes], Awaitable[bytes]]] = {}
        addresses: dict[str, str] = {}
        for config in CONFIGS:
            server_side, client_side = _aio_interceptors(config, inst)
            server = grpc.aio.server(interceptors=server_side)
            server.add_generic_rpc_handlers((_handler(_aio_echo),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
            addresses[config] = f"127.0.0.1:{port}"
            channel = grpc.aio.insecure_channel(addresses[config], interceptors=client_side or None)
            channels.append(channel)
            stubs[config] = channel.unary_unary(
                METHOD, request_serializer=_identity, response_deserializer=_identity
            )
        for extra in inst.extra_agents:
            channel = grpc.aio.insecure_channel(
                addresses["cutwatch"], interceptors=list(extra.aio_client_interceptors())
            )
            channels.append(channel)
            stub = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
            await stub(PAYLOAD, timeout=30)
        if pin is not None:
            pin_process(pin)

        samples = Samples()
        clock = time.perf_counter_ns
        for index in range(rounds):
            for config in round_order(index):
                call = stubs[config]
                for _ in range(WARMUP_CALLS):
                    await call(PAYLOAD)
                block = [0] * calls
                for i in range(calls):
                    start = clock()
                    await call(PAYLOAD)
                    block[i] = clock() - start
                samples.add(config, block)
            gc.collect()
        inst.provider.force_flush()
        return samples, {**inst.check(), "unpinned_threads": unpinned_threads(pin) if pin is not None else -1}
    finally:
        for channel in channels:
            await channel.close(None)
        for server in servers:
            await server.stop(None)
        inst.close()


def run_aio(calls: int, rounds: int, pin: int | None) -> tuple[Samples, dict[str, int]]:
    return asyncio.run(_run_aio(calls, rounds, pin))


# Summaries -------------------------------------------------------------------
def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(mode: str, samples: Samples, check: dict[str, int]) -> dict[str, Any]:
    """Latency figures of one mode and its goals; medians and p99 in microseconds."""
    out: dict[str, Any] = {"calls_per_config": len(samples.latencies_ns["bare"])}
    for config in CONFIGS:
        lat = samples.latencies_ns[config]
        out[config] = {
            "median_us": round(statistics.median(lat) / 1000, 1),
            "p99_us": round(percentile(lat, 0.99) / 1000, 1),
        }
    bare = statistics.median(samples.latencies_ns["bare"])
    for config in ("cutwatch", "otel"):
        median = statistics.median(samples.latencies_ns[config])
        out[f"ratio_{config}"] = round(median / bare, 3)
        out[f"added_{config}_us"] = round((median - bare) / 1000, 1)
        # The same difference taken round by round: robust to drift between rounds.
        rounds = zip(samples.round_medians_ns["bare"], samples.round_medians_ns[config], strict=True)
        paired = [b - a for a, b in rounds]
        out[f"added_{config}_us_round_median"] = round(statistics.median(paired) / 1000, 1)
    added_cw, added_otel = out["added_cutwatch_us"], out["added_otel_us"]
    share = added_cw / added_otel if added_otel > 0 else float("inf")
    out["cutwatch_share_of_otel_added"] = round(share, 3)
    out["goals"] = {
        "ratio_limit": GOAL_RATIO[mode],
        "ratio_met": out["ratio_cutwatch"] <= GOAL_RATIO[mode],
        "share_of_otel_limit": GOAL_SHARE_OF_OTEL,
        "share_of_otel_met": share <= GOAL_SHARE_OF_OTEL,
    }
    out["check"] = check
    return out


def _process_ids(count: int, rng: random.Random) -> list[str]:
    """Realistic process ids, ``service:instance`` as ``Agent`` makes them."""
    return [
        f"svc-{i % 37:02d}-{['api', 'orders', 'ledger', 'auth'][i % 4]}:{rng.getrandbits(32):08x}"
        for i in range(count)
    ]


def _b64_length(data: bytes) -> int:
    """Length on the wire: gRPC sends -bin metadata base64-encoded without padding."""
    return len(base64.b64encode(data).rstrip(b"="))


def stamp_sizes(seed: int = 7) -> list[dict[str, Any]]:
    """Cold and warm stamp sizes for clocks of ``STAMP_SIZES`` entries, through the public codec."""
    rng = random.Random(seed)
    rows = []
    for entries in STAMP_SIZES:
        names = _process_ids(entries, rng)
        values = [rng.randrange(1, 1 << 20) for _ in range(entries)]
        receiver = "svc-rx-gateway:0badcafe"
        unlimited = {"max_stamp_bytes": 1 << 20, "max_clock_entries": 1 << 16}
        sender = StampCodec(names[0], **unlimited)
        peer = StampCodec(receiver, **unlimited)
        call = {"epoch": 3, "call_id": 123_457}
        cold = sender.encode(names, values, peer=receiver, **call)
        # The receiver learns the names, acknowledges them in its next stamp, and from then on
        # the sender leaves them out.
        decoded = peer.decode(cold.data)
        assert len(decoded.entries) == entries and decoded.unresolved == 0
        sender.decode(peer.encode([receiver], [1], peer=names[0]).data)
        warm = sender.encode(names, values, peer=receiver, **call)
        assert peer.decode(warm.data).entries == decoded.entries
        default = StampCodec(names[0]).encode(names, values, peer=receiver, **call)
        warm_b64 = _b64_length(warm.data)
        header = warm_b64 + len(cutwatch.agent.STAMP_METADATA_KEY) + HEADER_ENTRY_OVERHEAD
        rows.append(
            {
                "entries": entries,
                "cold_bytes": len(cold.data),
                "cold_b64_bytes": _b64_length(cold.data),
                "warm_bytes": len(warm.data),
                "warm_b64_bytes": warm_b64,
                "warm_bytes_per_entry": round(len(warm.data) / entries, 2),
                "warm_header_share_of_8kib": round(header / GRPC_METADATA_LIMIT, 3),
                "cold_default_limit_bytes": len(default.data),
                "cold_default_limit_entries_sent": default.entries_sent,
            }
        )
    return rows


def stamp_goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    at_100 = next(r for r in rows if r["entries"] == 100)
    limit = GOAL_BYTES_PER_ENTRY * 100 + GOAL_CONSTANT_BYTES
    worst_share = max(r["warm_header_share_of_8kib"] for r in rows)
    return {
        "warm_bytes_at_100": at_100["warm_bytes"],
        "limit_at_100": limit,
        "met_at_100": at_100["warm_bytes"] <= limit,
        "largest_warm_share_of_8kib": worst_share,
        "far_from_8kib": worst_share <= 0.5,
    }


# Output ----------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return describe_machine("grpcio", "opentelemetry-sdk", "opentelemetry-instrumentation-grpc", "cutwatch")


def print_report(result: dict[str, Any]) -> None:
    cfg, mach = result["config"], result["machine"]
    print(
        f"cutwatch interceptor overhead: {cfg['calls']} calls x {cfg['rounds']} rounds per set-up, "
        f"{len(PAYLOAD)}-byte unary echo, 127.0.0.1"
    )
    print(
        f"machine: {mach['nproc']} CPUs ({mach['cpu_model']}), Python {mach['python']}, "
        f"grpcio {mach['grpcio']}, opentelemetry-sdk {mach['opentelemetry_sdk']}"
    )
    print("pinned to CPU " + str(cfg["pinned_cpu"]) if cfg["pinned_cpu"] is not None else "not pinned")
    print(f"cutwatch clocks: {PREWARM}")
    for mode in ("sync", "aio"):
        res = result[mode]
        print(f"\n{mode}  ({res['calls_per_config']} calls per set-up)")
        print(
            f"  {'set-up':<10}{'median us':>11}{'p99 us':>10}{'ratio':>8}{'added us':>10}{'(by round)':>12}"
        )
        for config in CONFIGS:
            row = res[config]
            if config == "bare":
                extra = f"{'1.000':>8}{'':>10}{'':>12}"
            else:
                extra = (
                    f"{res[f'ratio_{config}']:>8.3f}{res[f'added_{config}_us']:>10.1f}"
                    f"{res[f'added_{config}_us_round_median']:>12.1f}"
                )
            print(f"  {config:<10}{row['median_us']:>11.1f}{row['p99_us']:>10.1f}{extra}")
        goals, check = res["goals"], res["check"]
        print(
            f"  goal b/a <= {goals['ratio_limit']}: {'met' if goals['ratio_met'] else 'MISSED'} "
            f"({res['ratio_cutwatch']:.3f})"
        )
        print(
            f"  goal cutwatch added <= {goals['share_of_otel_limit']} x otel added: "
            f"{'met' if goals['share_of_otel_met'] else 'MISSED'} "
            f"({res['cutwatch_share_of_otel_added']:.3f})"
        )
        print(
            f"  check: client clock {check['client_clock_entries']} entries, server clock "
            f"{check['server_clock_entries']}, untracked {check['untracked']}, degraded "
            f"{check['stamps_degraded']}, internal errors {check['internal_errors']}, otel spans "
            f"{check['otel_spans_exported']}, unpinned threads {check['unpinned_threads']}"
        )
    print("\nstamp bytes (cold: names included, first contact; warm: names acknowledged; b64: on the wire)")
    print(
        f"  {'entries':>7}{'cold':>8}{'cold b64':>10}{'warm':>7}{'warm b64':>10}{'B/entry':>9}"
        f"{'of 8KiB':>9}{'cold, default limit':>22}"
    )
    for row in result["stamp"]:
        limited = f"{row['cold_default_limit_bytes']} ({row['cold_default_limit_entries_sent']} entries)"
        print(
            f"  {row['entries']:>7}{row['cold_bytes']:>8}{row['cold_b64_bytes']:>10}{row['warm_bytes']:>7}"
            f"{row['warm_b64_bytes']:>10}{row['warm_bytes_per_entry']:>9.2f}"
            f"{row['warm_header_share_of_8kib']:>9.1%}{limited:>22}"
        )
    goal = result["stamp_goal"]
    print(
        f"  goal warm stamp at 100 entries <= {goal['limit_at_100']} bytes: "
        f"{'met' if goal['met_at_100'] else 'MISSED'} ({goal['warm_bytes_at_100']}); "
        "largest warm stamp uses "
        f"{goal['largest_warm_share_of_8kib']:.1%} of the 8 KiB metadata limit"
    )


def parse_args(
    argv: Sequence[str] | None,
    *,
    calls: int = 3000,
    rounds: int = 12,
    doc: str | None = __doc__,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The options of a benchmark that times calls in interleaved rounds (``doc``: its docstring;
    ``extra`` adds the benchmark's own options)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    if extra is not None:
        extra(parser)
    parser.add_argument(
        "--calls", type=int, default=calls, help=f"calls per set-up per round (default {calls})"
    )
    parser.add_argument("--rounds", type=int, default=rounds, help=f"interleaved rounds (default {rounds})")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--quick", action="store_true", help="a few calls only (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.rounds = 50, 2
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1")
    return args


def pin_as_asked(args: argparse.Namespace) -> int | None:
    """Pin the process as ``args`` ask (see :func:`parse_args`); the CPU, or None when not pinned."""
    if args.no_pin:
        return None
    pin: int = args.cpu if args.cpu is not None else sorted(os.sched_getaffinity(0))[-1]
    pin_process(pin)
    return pin


def run_config(
    args: argparse.Namespace, pin: int | None, started: float, prewarm: str = PREWARM
) -> dict[str, Any]:
    """What a report says of its run: calls and rounds, payload, pinning, clocks, seconds since
    ``started`` (``time.monotonic()``)."""
    return {
        "calls": args.calls,
        "rounds": args.rounds,
        "payload_bytes": len(PAYLOAD),
        "pinned_cpu": pin,
        "clock_entries": CLOCK_ENTRIES,
        "prewarm": prewarm,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pin = pin_as_asked(args)
    started = time.monotonic()
    sync_samples, sync_check = run_sync(args.calls, args.rounds, pin)
    aio_samples, aio_check = run_aio(args.calls, args.rounds, pin)
    rows = stamp_sizes()
    result = {
        "config": run_config(args, pin, started),
        "machine": machine(),
        "sync": summarise("sync", sync_samples, sync_check),
        "aio": summarise("aio", aio_samples, aio_check),
        "stamp": rows,
        "stamp_goal": stamp_goal(rows),
    }
    emit(result, args.json, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
