"""The bank of ``cutwatch.demo.bank`` with fault hooks, run as a process by the reliability tests.

The test drives the hooks with files in ``--trigger-dir``, each used once:

- ``NAME.slow`` (seconds): the next local snapshot's state provider writes
  ``NAME.inside`` and then sleeps that long, so the snapshot is surely still
  running while the test does something to it;
- ``NAME.kill`` (seconds): the next local snapshot starts a thread that
  waits that long and until the local snapshot has been handed to the
  collector's stream, then SIGKILLs this very process;
- ``NAME.pad`` (bytes, not used up): while it exists the ``pad`` state is a
  string that long, to make this process's snapshot events heavy.

A second service, ``faults.Probe/Stats``, answers (as JSON) the agent's
counters, the number of events the agent handed to its collector queue
(counted here, independently of the agent) and the failed transfers by peer.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.demo._process import service_process, struct, write_atomically
from cutwatch.demo.bank import SERVER_THREADS, Bank, serve

PROBE_SERVICE = "faults.Probe"
PROBE_STATS = f"/{PROBE_SERVICE}/Stats"


class FaultBank(Bank):
    """A bank whose state providers obey the trigger files, and that counts what the test asks for."""

    def __init__(
        self, agent: cutwatch.Agent, name: str, triggers: Path, initial: int, max_delay: float
    ) -> None:
        super().__init__(agent, initial, max_delay, 0.0)
        self.name = name
        self._triggers = triggers
        self._failed_by_peer: collections.Counter[str] = collections.Counter()
        self._pad = ""
        self._submitted = 0
        self._submitted_lock = threading.Lock()
        agent.register_state("pad", self._pad_state)
        self._count_submitted()

    def _count_submitted(self) -> None:
        """Count every event the agent hands to its collector queue: the figure the agent's own must match."""
        core = self.agent._core
        submit = core._emit_to  # the agent's queue to its collector
        if submit is None:
            return

        def counting(events: Any) -> None:
            with self._submitted_lock:
                self._submitted += len(events)
            submit(events)

        core._emit_to = counting

    def _trigger(self, kind: str) -> float | None:
        """The number in ``NAME.kind`` if that file exists (it is then used up), else None."""
        path = self._triggers / f"{self.name}.{kind}"
        try:
            text = path.read_text()
            path.unlink()
        except FileNotFoundError:
            return None
        return float(text)

    def _balance_state(self) -> int:
        slow = self._trigger("slow")
        if slow is not None:
            write_atomically(self._triggers / f"{self.name}.inside", f"{time.time()}\n")
            time.sleep(slow)
        kill = self._trigger("kill")
        if kill is not None:
            sent = self.agent.stats().collector_events_sent
            threading.Thread(target=self._die, args=(kill, sent), daemon=True).start()
        return self.balance

    def _die(self, delay: float, sent_before: int) -> None:
        """SIGKILL this process once the local snapshot being taken now is on its way to the collector."""
        time.sleep(delay)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            stats = self.agent.stats()
            if stats.collector_events_sent > sent_before and stats.collector_events_queued == 0:
                break
            time.sleep(0.01)
        time.sleep(0.2)  # from the stream's send buffer onto the wire
        os.kill(os.getpid(), signal.SIGKILL)

    def _pad_state(self) -> str:
        try:
            size = int((self._triggers / f"{self.name}.pad").read_text() or 0)
        except (FileNotFoundError, ValueError):
            size = 0
        if len(self._pad) != size:
            self._pad = "x" * size
        return self._pad

    def _failed(self, address: str, amount: int, exc: grpc.RpcError) -> None:
        with self._lock:
            self._failed_by_peer[address] += 1
        super()._failed(address, amount, exc)

    def probe(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        with self._submitted_lock:
            submitted = self._submitted
        agent = dataclasses.asdict(self.agent.stats())  # not under the bank's lock: a snapshot may hold it
        with self._lock:
            doc = {
                "process": self.agent.process_id,
                "agent": agent,
                "submitted": submitted,
                "failed_by_peer": dict(self._failed_by_peer),
                "transfers_ok": self.transfers_ok,
                "transfers_failed": self.transfers_failed,
                "peers_alive": len(self._peers),
            }
        return struct(json=json.dumps(doc))

    def probe_handlers(self) -> grpc.GenericRpcHandler[Struct, Struct]:
        handler = grpc.unary_unary_rpc_method_handler(
            self.probe, request_deserializer=Struct.FromString, response_serializer=Struct.SerializeToString
        )
        return grpc.method_handlers_generic_handler(PROBE_SERVICE, {"Stats": handler})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True)
    parser.add_argument("--collector", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--peers-file", type=Path, required=True)
    parser.add_argument("--trigger-dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--initial", type=int, default=1000)
    parser.add_argument("--max-delay-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--event-queue", type=int, default=10_000)
    parser.add_argument("--event-queue-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--max-state-bytes", type=int, default=1024 * 1024)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = service_process(args.name)
    agent = cutwatch.Agent(
        service="bank",
        instance_id=args.name,
        collector=args.collector,
        event_queue=args.event_queue,
        event_queue_bytes=args.event_queue_bytes,
        max_state_bytes=args.max_state_bytes,
    ).start()
    bank = FaultBank(agent, args.name, args.trigger_dir, args.initial, args.max_delay_ms / 1000)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
        interceptors=[agent.server_interceptor(max_workers=SERVER_THREADS)],
    )
    server.add_generic_rpc_handlers((bank.handlers(), bank.probe_handlers()))
    return serve(
        agent,
        bank,
        server,
        args.name,
        args.ready_file,
        args.peers_file,
        args.workers,
        args.seed,
        stop,
        register_timeout=60.0,
    )


if __name__ == "__main__":
    sys.exit(main())
