"""Stream messages and cuts with the grpc.aio interceptors, in exactly chosen orders.

The sibling of ``test_streams_sync.py``: real ``grpc.aio`` servers and
channels on loopback over two real :class:`cutwatch.core.ProcessCore`, money
moved by stream messages written every way grpc.aio allows (async
generators, ``call.write()``, ``context.write()``, ``read()``), and local
snapshots taken between two chosen messages.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.struct_pb2 import Struct
from stream_bank import SERVICE, TIMEOUT, amount_of, assemble, balances, in_transit, money, total

from cutwatch.agent._aio_client import aio_client_interceptors
from cutwatch.agent._aio_server import AioServerInterceptor
from cutwatch.core import AssembledCut, ProcessCore, SnapshotEvent


class AioBank:
    """One process: an event core, a balance, a grpc.aio server; the same service as ``stream_bank``."""

    def __init__(self, name: str, balance: int = 100) -> None:
        self.events: list[SnapshotEvent] = []
        self.core = ProcessCore(name, emit=self.events.extend)
        self.balance = balance
        self.core.register_state("balance", lambda: self.balance)
        self.taken: asyncio.Queue[int] = asyncio.Queue()
        self.payouts: asyncio.Queue[int | None] = asyncio.Queue()
        self.written: asyncio.Queue[int] = asyncio.Queue()
        self.resume: asyncio.Queue[None] = asyncio.Queue()
        self.bounce: asyncio.Event | None = None
        """When set, the next ``Credit`` call waits for the event, then aborts with UNAVAILABLE."""
        self.attempts: asyncio.Queue[int] = asyncio.Queue()
        self.server = grpc.aio.server(
            interceptors=[AioServerInterceptor(self.core, self.core.register_pool(8), 65536)]
        )
        options = {"request_deserializer": Struct.FromString, "response_serializer": Struct.SerializeToString}
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Deposit": grpc.stream_unary_rpc_method_handler(self._deposit, **options),
                        "Payout": grpc.unary_stream_rpc_method_handler(self._payout, **options),
                        "PayoutWrites": grpc.unary_stream_rpc_method_handler(self._payout_writes, **options),
                        "Credit": grpc.unary_unary_rpc_method_handler(self._credit_call, **options),
                    },
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channels: list[grpc.aio.Channel] = []

    @property
    def name(self) -> str:
        return self.core.process_id

    def credit(self, amount: int) -> None:
        with self.core.atomic():
            self.balance += amount

    async def _deposit(self, requests: AsyncIterator[Struct], context: Any) -> Struct:
        async for message in requests:
            self.credit(amount_of(message))
            await self.taken.put(amount_of(message))
        return Struct()

    async def _payout(self, request: Struct, context: Any) -> AsyncIterator[Struct]:
        while (amount := await self.payouts.get()) is not None:
            with self.core.atomic():
                self.balance -= amount
            yield money(amount)

    async def _payout_writes(self, request: Struct, context: Any) -> None:
        while (amount := await self.payouts.get()) is not None:
            with self.core.atomic():
                self.balance -= amount
                sent = context.write(money(amount))  # counted here, with the debit
            await self.written.put(amount)
            await self.resume.get()
            await sent

    async def _credit_call(self, request: Struct, context: Any) -> Struct:
        metadata = dict(list(context.invocation_metadata()))
        await self.attempts.put(int(metadata.get("grpc-previous-rpc-attempts", 0)))
        release, self.bounce = self.bounce, None
        if release is not None:
            await release.wait()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not now")
        self.credit(amount_of(request))
        return Struct()

    async def transfers(self, amounts: asyncio.Queue[int | None]) -> AsyncIterator[Struct]:
        while (amount := await amounts.get()) is not None:
            with self.core.atomic():
                self.balance -= amount
            yield money(amount)

    def stub(self, peer: AioBank, method: str, kind: str, *, retries: bool = False) -> Any:
        policy = {
            "maxAttempts": 3,
            "initialBackoff": "0.01s",
            "maxBackoff": "0.05s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        config = {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": policy}]}
        options = [("grpc.service_config", json.dumps(config))] if retries else []
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{peer.port}", options=options, interceptors=aio_client_interceptors(self.core, 65536)
        )
        self.channels.append(channel)
        return getattr(channel, kind)(
            f"/{SERVICE}/{method}",
            request_serializer=Struct.SerializeToString,
            response_deserializer=Struct.FromString,
        )

    def cut(self, epoch: int) -> None:
        self.core.take_snapshot(epoch)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.server.stop(0)


def run(scenario: Callable[[AioBank, AioBank], Awaitable[AssembledCut]]) -> AssembledCut:
    async def main() -> AssembledCut:
        a, b = AioBank("a"), AioBank("b")
        await a.server.start()
        await b.server.start()
        try:
            return await asyncio.wait_for(scenario(a, b), TIMEOUT)
        finally:
            await a.close()
            await b.close()

    return asyncio.run(main())


def crossed(cut: AssembledCut, kind: str, sender: str, receiver: str) -> bool:
    text = f"1 {kind} message(s) consumed before the {receiver}'s cut were sent after the {sender}'s cut"
    return any(text in reason for reason in cut.reasons)


def test_an_async_generator_message_sent_after_the_senders_cut_and_consumed_before_the_receivers() -> None:
    async def scenario(a: AioBank, b: AioBank) -> AssembledCut:
        amounts: asyncio.Queue[int | None] = asyncio.Queue()
        call = a.stub(b, "Deposit", "stream_unary")(a.transfers(amounts), timeout=TIMEOUT)
        await amounts.put(10)
        assert await b.taken.get() == 10
        a.cut(1)
        await amounts.put(10)
        assert await b.taken.get() == 10
        b.cut(1)
        await amounts.put(None)
        await call
        return assemble(1, a, b)  # type: ignore[arg-type]

    cut = run(scenario)
    assert balances(cut) == [90, 120] and cut.status == "INCOMPLETE"
    assert crossed(cut, "request", "client", "server"), cut.reasons


def test_context_write_inside_an_atomic_block_goes_with_its_debit() -> None:
    """A message the handler writes inside the block that debits it is sent with the debit, though
    the write is awaited after the block: a cut in between sees both, never the debit alone."""

    async def scenario(a: AioBank, b: AioBank) -> AssembledCut:
        responses = a.stub(b, "PayoutWrites", "unary_stream")(money(0), timeout=TIMEOUT)
        await b.payouts.put(7)
        assert await b.written.get() == 7  # debited and written, the write not awaited yet
        a.cut(1)
        b.cut(1)
        await b.resume.put(None)
        a.credit(amount_of(await responses.read()))
        await b.payouts.put(None)
        assert await responses.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        return assemble(1, a, b)  # type: ignore[arg-type]

    cut = run(scenario)
    assert (cut.status, cut.reasons) == ("COMPLETE", ())
    assert balances(cut) == [100, 93] and in_transit(cut) == [("response", 1, 7)] and total(cut) == 200


def test_a_server_stream_read_with_async_for_and_with_read() -> None:
    async def scenario(a: AioBank, b: AioBank) -> AssembledCut:
        responses = a.stub(b, "Payout", "unary_stream")(money(0), timeout=TIMEOUT)
        await b.payouts.put(7)
        first = await responses.read()
        a.credit(amount_of(first))
        b.cut(1)
        await b.payouts.put(7)
        async for message in responses:
            a.credit(amount_of(message))
            break
        a.cut(1)
        await b.payouts.put(None)
        assert [m async for m in responses] == []
        return assemble(1, a, b)  # type: ignore[arg-type]

    cut = run(scenario)
    assert balances(cut) == [114, 93] and cut.status == "INCOMPLETE"
    assert crossed(cut, "response", "server", "client"), cut.reasons


def test_context_write_and_a_quiet_cut_are_complete() -> None:
    async def scenario(a: AioBank, b: AioBank) -> AssembledCut:
        responses = a.stub(b, "PayoutWrites", "unary_stream")(money(0), timeout=TIMEOUT)
        for _ in range(2):
            await b.payouts.put(7)
            await b.written.get()
            await b.resume.put(None)
            a.credit(amount_of(await responses.read()))
        a.cut(1)
        b.cut(1)
        await b.payouts.put(None)
        assert await responses.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        return assemble(1, a, b)  # type: ignore[arg-type]

    cut = run(scenario)
    assert (cut.status, cut.reasons, balances(cut)) == ("COMPLETE", (), [114, 86])


def test_a_request_that_bounces_at_a_grpc_aio_server_is_taken_back() -> None:
    """``await context.abort(UNAVAILABLE)`` before anything is applied: the retry policy sends attempt 1,
    and only that attempt is in transit at the cut (see ``test_retries.py`` for the sync server)."""

    async def scenario(a: AioBank, b: AioBank) -> AssembledCut:
        credit = a.stub(b, "Credit", "unary_unary", retries=True)
        release = asyncio.Event()
        b.bounce = release
        with a.core.atomic():
            a.balance -= 10
            call = credit(money(10), timeout=TIMEOUT)
        assert await b.attempts.get() == 0
        a.cut(1)
        b.cut(1)  # attempt 0 waits in its handler: recorded in transit
        release.set()
        await call
        assert await b.attempts.get() == 1
        return assemble(1, a, b)

    cut = run(scenario)
    assert cut.status == "COMPLETE", cut.reasons
    assert [(r.kind, r.msg_key.attempt) for r in cut.in_transit] == [("request", 1)]
    assert balances(cut) == [90, 100]  # attempt 1 is applied after b's cut: in transit
    assert [json.loads(r.payload_json) for r in cut.in_transit] == [{"amount": 10}]
