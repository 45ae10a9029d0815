"""Money moved by stream messages over real gRPC, between processes driven by hand.

Each :class:`StreamBank` is a real :class:`cutwatch.core.ProcessCore` behind
the real sync interceptors and a real gRPC server on loopback; the test
takes each process's local snapshots when it wants (``cut``), so that it
can put a cut exactly between two stream messages, and assembles them with
the real :class:`cutwatch.core.CutAssembler`.

The service moves money in all four call kinds:

- ``Deposit`` (client streaming): the client debits and yields each
  message in its generator, one ``atomic()`` block each; the handler credits
  each message it takes in one block.
- ``Payout`` (server streaming): the handler debits and yields each amount
  put in ``payouts`` (None ends it); the client credits each message it
  takes in one block.
- ``Swap`` (bidirectional): the handler credits each request and answers
  with a refund of half of it, credit and debit in one block.
- ``Credit`` (unary): the handler credits the request in one block, unless
  the test put an event in ``bounces``: then it waits for the event and
  fails with ``UNAVAILABLE`` before applying anything, which a retry policy
  retries (:meth:`StreamBank.channel_to_any`).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

from cutwatch.agent._client import ClientInterceptor
from cutwatch.agent._server import ServerInterceptor
from cutwatch.core import AssembledCut, CutAssembler, ProcessCore, SnapshotEvent
from cutwatch.demo.stream_bank import Transfer, amount_of, money

SERVICE = "streams.Bank"
TIMEOUT = 30.0


class StreamBank:
    """One process: its event core, a balance, a server, and the events it emitted."""

    def __init__(self, name: str, balance: int = 100, *, envelope: bool = False) -> None:
        self.envelope = envelope
        """Messages are ``Transfer`` with the envelope field (else ``Struct``, without)."""
        self.message = Transfer if envelope else Struct
        self.events: list[SnapshotEvent] = []
        self.core = ProcessCore(name, emit=self.events.extend)
        self.balance = balance
        self.core.register_state("balance", lambda: self.balance)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            interceptors=[ServerInterceptor(self.core, self.core.register_pool(8), 64 * 1024)],
        )
        self.server.add_generic_rpc_handlers((self._handlers(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.payouts: queue.Queue[int | None] = queue.Queue()
        """Amounts the ``Payout`` handler pays out, one message each, in order."""
        self.taken: queue.Queue[int] = queue.Queue()
        """Amounts the handlers took from request streams, in order (for the test to wait on)."""
        self._channels: list[grpc.Channel] = []
        self.bounces: queue.Queue[threading.Event] = queue.Queue()
        """For each event, the next ``Credit`` call waits for it and then fails with UNAVAILABLE."""
        self.attempts: queue.Queue[tuple[str, int]] = queue.Queue()
        """(this bank, attempt number from ``grpc-previous-rpc-attempts``) of each ``Credit`` call as it
        arrives; banks may share the queue (and ``bounces``) to see which of them a call reached."""

    @property
    def name(self) -> str:
        return self.core.process_id

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self.server.stop(0).wait(TIMEOUT)

    # The service ---------------------------------------------------------------------------------
    def _credit(self, amount: int) -> None:
        with self.core.atomic():
            self.balance += amount

    def _deposit(self, requests: Iterable[Struct], context: Any) -> Struct:
        for message in requests:
            self._credit(amount_of(message))
            self.taken.put(amount_of(message))
        return Struct()

    def _payout(self, request: Struct, context: Any) -> Iterator[Struct]:
        yield from self.transfers(self.payouts)

    def _swap(self, requests: Iterable[Struct], context: Any) -> Iterator[Struct]:
        for message in requests:
            amount = amount_of(message)
            with self.core.atomic():
                self.balance += amount - amount // 2
            self.taken.put(amount)
            yield money(amount // 2, self.envelope)

    def _credit_call(self, request: Struct, context: Any) -> Struct:
        metadata = dict(context.invocation_metadata())
        self.attempts.put((self.name, int(metadata.get("grpc-previous-rpc-attempts", 0))))
        try:
            release = self.bounces.get_nowait()
        except queue.Empty:
            release = None
        if release is not None:
            release.wait(TIMEOUT)
            context.abort(grpc.StatusCode.UNAVAILABLE, "not now: try another server")
        self._credit(amount_of(request))
        return Struct()

    def _handlers(self) -> grpc.GenericRpcHandler:
        options = {
            "request_deserializer": self.message.FromString,
            "response_serializer": self.message.SerializeToString,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Deposit": grpc.stream_unary_rpc_method_handler(self._deposit, **options),
                "Payout": grpc.unary_stream_rpc_method_handler(self._payout, **options),
                "Swap": grpc.stream_stream_rpc_method_handler(self._swap, **options),
                "Credit": grpc.unary_unary_rpc_method_handler(self._credit_call, **options),
            },
        )

    # The client ----------------------------------------------------------------------------------
    def channel_to(self, peer: StreamBank) -> grpc.Channel:
        channel = grpc.intercept_channel(
            grpc.insecure_channel(peer.address), ClientInterceptor(self.core, 64 * 1024)
        )
        self._channels.append(channel)
        return channel

    def channel_to_any(self, *peers: StreamBank) -> grpc.Channel:
        """A channel that spreads calls over ``peers`` (``round_robin``) and retries a call that fails
        with UNAVAILABLE, as gRPC's service config ``retryPolicy`` does: each attempt picks again."""
        config = {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": SERVICE}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.01s",
                        "maxBackoff": "0.05s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
        target = "ipv4:" + ",".join(peer.address for peer in peers)
        options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
        channel = grpc.intercept_channel(
            grpc.insecure_channel(target, options=options), ClientInterceptor(self.core, 64 * 1024)
        )
        self._channels.append(channel)
        return channel

    def transfers(self, amounts: queue.Queue[int | None]) -> Iterator[Any]:
        """The request generator: debit and yield each amount put in ``amounts`` (None ends it)."""
        while (amount := amounts.get(timeout=TIMEOUT)) is not None:
            with self.core.atomic():
                self.balance -= amount
            yield money(amount, self.envelope)

    def receive(self, responses: Iterable[Struct]) -> Iterator[int]:
        """Credit each response message as the application takes it; yields the amounts."""
        for message in responses:
            self._credit(amount_of(message))
            yield amount_of(message)

    # Snapshots -----------------------------------------------------------------------------------
    def cut(self, epoch: int) -> None:
        self.core.take_snapshot(epoch)


def stub(channel: grpc.Channel, method: str, kind: str, message: Any = Struct) -> Any:
    """A multicallable of ``method``; ``message`` is the type of its messages (``Transfer``: the
    envelope)."""
    make = getattr(channel, kind)
    return make(
        f"/{SERVICE}/{method}",
        request_serializer=message.SerializeToString,
        response_deserializer=message.FromString,
    )


def assemble(epoch: int, *banks: StreamBank) -> AssembledCut:
    """Cut ``epoch`` from what the banks emitted, with every flush round answered at once."""
    assembler = CutAssembler(epoch, [bank.name for bank in banks])

    def feed() -> None:
        for bank in banks:
            events, bank.events[:] = list(bank.events), []
            for event in events:
                if event.epoch == epoch:
                    assembler.add(event)

    feed()
    while (due := assembler.next_flush()) is not None:
        for bank in banks:
            bank.core.flush(epoch, due[0], due[1])
        feed()
    return assembler.finish()


def balances(cut: AssembledCut) -> list[int]:
    return [int(state["balance"]) for _, state in sorted(cut.states.items())]  # type: ignore[index]


def in_transit(cut: AssembledCut) -> list[tuple[str, int, int]]:
    """The stream messages in transit: (kind, number in its stream, amount)."""
    return [
        (r.kind, r.msg_key.position, int(json.loads(r.payload_json).get("amount", 0)))
        for r in cut.in_transit
        if r.msg_key.position
    ]


def total(cut: AssembledCut) -> int:
    """The money in the cut: balances plus the stream messages in transit."""
    return sum(balances(cut)) + sum(amount for _, _, amount in in_transit(cut))
