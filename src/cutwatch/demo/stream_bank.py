"""A bank that moves all its money in stream messages: processes of the stream tests and benchmarks.

It serves three streaming methods and uses each of them with its peers, one
stream after another, a message every few milliseconds:

- ``Deposit`` (client streaming): the caller debits and sends each amount
  (one ``atomic()`` block, then the yield); the handler credits each one;
- ``Payout`` (server streaming): the caller asks for ``count`` messages;
  the handler debits and sends each; the caller credits each;
- ``Swap`` (bidirectional): the caller sends amounts; the handler credits
  each and sends half back; the caller credits the halves.

With ``--envelope`` the messages are ``Transfer``, whose ``cutwatch_stamp``
field carries a stamp (the opt-in envelope); without, ``Struct``. Money only
moves between banks, so every COMPLETE cut holds exactly what they started
with: balances plus stream messages in transit. The process lifecycle
(ready file, peers file, SIGTERM) is the demo bank's (``cutwatch.demo.bank.serve``).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.struct_pb2 import Struct

import cutwatch
from cutwatch.demo._process import service_process, struct
from cutwatch.demo.bank import serve

SERVICE = "streams.Bank"
SERVER_THREADS = 32


def _transfer_class() -> Any:
    """A message type with the envelope field, as an application that opts in declares it:
    ``message Transfer { int64 amount = 1; bytes cutwatch_stamp = 2; }`` (built here, so that the
    demo needs no generated code)."""
    proto = descriptor_pb2.FileDescriptorProto(name="cutwatch_demo_streams.proto", package="streambank")
    proto.syntax = "proto3"
    message = proto.message_type.add(name="Transfer")
    field = descriptor_pb2.FieldDescriptorProto
    message.field.add(name="amount", number=1, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    message.field.add(name="cutwatch_stamp", number=2, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("streambank.Transfer"))


Transfer: Any = _transfer_class()


def money(amount: int, envelope: bool = False) -> Any:
    """A message carrying ``amount``: a ``Struct``, or a ``Transfer`` with the envelope field."""
    if envelope:
        return Transfer(amount=amount)
    message = Struct()
    message.update({"amount": amount})
    return message


def amount_of(message: Any) -> int:
    if not isinstance(message, Struct):
        return int(message.amount)
    amount = message["amount"]
    if not isinstance(amount, (int, float)):
        raise ValueError(f"a transfer without a numeric amount: {message}")
    return int(amount)


class StreamingBank:
    def __init__(self, agent: cutwatch.Agent, initial: int, interval: float, per_stream: int, envelope: bool):
        self.agent = agent
        self.balance = initial
        self.interval = interval
        self.per_stream = per_stream
        self.envelope = envelope
        self.message: Any = Transfer if envelope else Struct
        self.sent = 0
        self.received = 0
        self.streams = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._peers: list[grpc.Channel] = []
        agent.register_state("balance", lambda: self.balance)

    # Money -----------------------------------------------------------------------------------------
    def _change(self, amount: int) -> None:
        with self.agent.atomic(), self._lock:
            self.balance += amount

    def _debited(self, rng: random.Random, count: int) -> Iterator[Any]:
        """``count`` messages, a few milliseconds apart, each debited in its own block."""
        for _ in range(count):
            time.sleep(rng.uniform(0, 2 * self.interval))
            amount = rng.randint(1, 5)
            self._change(-amount)
            with self._lock:
                self.sent += 1
            yield money(amount, self.envelope)

    def _credited(self, messages: Iterable[Any], part: int = 1) -> Iterator[int]:
        for message in messages:
            amount = amount_of(message)
            self._change(amount - amount // 2 if part == 2 else amount)
            with self._lock:
                self.received += 1
            yield amount

    # Server side -----------------------------------------------------------------------------------
    def deposit(self, requests: Iterable[Any], context: Any) -> Any:
        for _ in self._credited(requests):
            pass
        return self.message()

    def payout(self, request: Any, context: Any) -> Iterator[Any]:
        rng = random.Random()
        yield from self._debited(rng, amount_of(request))

    def swap(self, requests: Iterable[Any], context: Any) -> Iterator[Any]:
        for amount in self._credited(requests, part=2):
            yield money(amount // 2, self.envelope)

    def stats(self, request: Struct, context: Any) -> Struct:
        with self._lock:
            return struct(
                process=self.agent.process_id,
                balance=self.balance,
                sent=self.sent,
                received=self.received,
                streams=self.streams,
                failures=self.failures,
                transfers_ok=self.streams,
            )

    def handlers(self) -> grpc.GenericRpcHandler:
        codec = {
            "request_deserializer": self.message.FromString,
            "response_serializer": self.message.SerializeToString,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Deposit": grpc.stream_unary_rpc_method_handler(self.deposit, **codec),
                "Payout": grpc.unary_stream_rpc_method_handler(self.payout, **codec),
                "Swap": grpc.stream_stream_rpc_method_handler(self.swap, **codec),
                "Stats": grpc.unary_unary_rpc_method_handler(
                    self.stats,
                    request_deserializer=Struct.FromString,
                    response_serializer=Struct.SerializeToString,
                ),
            },
        )

    # Client side -----------------------------------------------------------------------------------
    def connect(self, addresses: list[str]) -> None:
        for address in addresses:
            channel = grpc.intercept_channel(grpc.insecure_channel(address), self.agent.client_interceptor())
            self._peers.append(channel)

    def _call(self, channel: grpc.Channel, method: str, kind: str) -> Any:
        return getattr(channel, kind)(
            f"/{SERVICE}/{method}",
            request_serializer=self.message.SerializeToString,
            response_deserializer=self.message.FromString,
        )

    def transfer_forever(self, stop: threading.Event, rng: random.Random) -> None:
        """One stream after another, of a kind and to a peer drawn each time."""
        while not stop.is_set():
            if not self._peers:
                stop.wait(0.1)
                continue
            channel = rng.choice(self._peers)
            kind = rng.choice(("deposit", "payout", "swap"))
            try:
                if kind == "deposit":
                    self._call(channel, "Deposit", "stream_unary")(
                        self._debited(rng, self.per_stream), timeout=60
                    )
                elif kind == "payout":
                    request = money(self.per_stream, self.envelope)
                    for _ in self._credited(
                        self._call(channel, "Payout", "unary_stream")(request, timeout=60)
                    ):
                        pass
                else:
                    responses = self._call(channel, "Swap", "stream_stream")(
                        self._debited(rng, self.per_stream), timeout=60
                    )
                    for _ in self._credited(responses):
                        pass
                with self._lock:
                    self.streams += 1
            except grpc.RpcError:
                with self._lock:
                    self.failures += 1
                if stop.is_set():
                    return

    def close(self) -> None:
        for channel in self._peers:
            channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True)
    parser.add_argument("--collector", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--peers-file", type=Path, required=True)
    parser.add_argument("--initial", type=int, default=100_000)
    parser.add_argument(
        "--interval-ms", type=float, default=3.0, help="Mean time between a stream's messages."
    )
    parser.add_argument("--per-stream", type=int, default=100, help="Messages in each stream.")
    parser.add_argument("--workers", type=int, default=3, help="Streams open at once, each to some peer.")
    parser.add_argument("--envelope", action="store_true", help="Messages carry a stamp of their own.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stop = service_process(args.name)
    agent = cutwatch.Agent(service="streambank", instance_id=args.name, collector=args.collector).start()
    bank = StreamingBank(agent, args.initial, args.interval_ms / 1000, args.per_stream, args.envelope)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
        interceptors=[agent.server_interceptor(max_workers=SERVER_THREADS)],
    )
    server.add_generic_rpc_handlers((bank.handlers(),))
    return serve(
        agent, bank, server, args.name, args.ready_file, args.peers_file, args.workers, args.seed, stop
    )


if __name__ == "__main__":
    sys.exit(main())
