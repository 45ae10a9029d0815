"""One simulated process: the real :class:`cutwatch.core.ProcessCore`, driven as the agent drives it.

Both simulated worlds (:mod:`sim.world`, :mod:`sim.cluster`) run their
processes through this driver, so the property tests exercise the very code
that runs inside services: the clock and its stamps, the snapshot
participant, the ``atomic()`` gate, the task registry and state capture. The
driver adds only what gRPC and the application would: each application call
and each handler runs in a context of its own (a thread of the service), a
stamp travels as bytes, and the application's state is one balance of
tokens, changed inside ``atomic()`` blocks.

What the simulation decides is the order of steps, and each step runs to its
end before the next: a transfer debits and sends in one ``atomic()`` block
(as ``with agent.atomic(): ...; stub.Credit.future(...)`` does); a handler
applies its request in its first ``atomic()`` block and, in a later step,
debits a refund and answers in one step; a caller credits an answer the
moment it receives it. (A real handler answers after it returns, outside its
block: docs/snapshots.md says why value belongs in requests. The simulation
answers inside one step so that refunds test response records too.)
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cutwatch.core import ChannelPeer, Delivery, Inbound, Outbound, ProcessCore, Refused, SnapshotEvent
from cutwatch.core._wire import encode_stamp, parse_stamp

METHOD = "/bank.Bank/Transfer"
POOL_SIZE = 2
"""Every simulated process serves from one pool of this many workers."""


@dataclass(eq=False)
class Handler:
    """A server task from delivery until it answers, in a context of its own (a handler thread)."""

    context: contextvars.Context
    inbound: Inbound | Refused | None

    @property
    def refused(self) -> bool:
        """The request was not run: its caller gave the call up and a snapshot fenced it."""
        return isinstance(self.inbound, Refused)

    @property
    def delivery(self) -> Delivery | None:
        """The participant's handle of the request (None: it arrived without a stamp, or was refused)."""
        if not isinstance(self.inbound, Inbound):
            return None
        delivery = self.inbound.task.delivery
        return delivery if isinstance(delivery, Delivery) else None

    @property
    def duplicate(self) -> bool:
        delivery = self.delivery
        return delivery is not None and delivery.duplicate


class SimProcess:
    """A process with an agent: its event core, a balance, and the events it emitted for the collector.

    ``now`` is the simulation's clock (the core's time source); ``limits`` go
    to :class:`ProcessCore` (``max_records``, ``abandoned_grace``, ...).
    """

    def __init__(self, pid: str, balance: int, *, now: Callable[[], float], **limits: Any) -> None:
        self.pid = pid
        self.balance = balance
        self.emitted: list[SnapshotEvent] = []
        self.core = ProcessCore(pid, emit=self.emitted.extend, monotonic=now, **limits)
        self.core.register_state("balance", lambda: self.balance)
        self.pool = self.core.register_pool(POOL_SIZE)
        self._channels: dict[tuple[str, ...], ChannelPeer] = {}

    @property
    def epoch(self) -> int:
        return self.core.epoch

    @property
    def tick(self) -> int:
        """This process's own entry of its clock: how many events it has had."""
        return self.core.clock.get(self.pid)

    def drain(self) -> list[SnapshotEvent]:
        """What the core emitted since the last drain, in order (the agent's queue to the collector)."""
        out, self.emitted[:] = list(self.emitted), []
        return out

    # The application and its gRPC calls ------------------------------------------------------
    def send(
        self, targets: tuple[str, ...], amount: int, *, uninstrumented: bool = False
    ) -> tuple[Outbound, bytes]:
        """A transfer: debit ``amount`` and send a request to one of ``targets`` in one ``atomic()``
        block, from an application thread of its own; the channel is ``targets``' (a load
        balancer picks the server), ``uninstrumented`` when the application knows no agent runs
        behind it."""
        channel = self._channels.setdefault(targets, ChannelPeer(uninstrumented=uninstrumented))

        def transfer() -> tuple[Outbound, bytes] | None:
            with self.core.atomic():
                self.balance -= amount
                return self.core.begin_call(METHOD, channel)

        started = contextvars.Context().run(transfer)
        assert started is not None, "the core failed to send (see its internal errors)"
        return started

    def deliver(self, stamp: bytes | None, payload: str, *, attempt: int = 0) -> Handler:
        """A request reaches a handler, which runs in a context of its own (unless it is refused)."""
        context = contextvars.Context()
        inbound = context.run(self.core.begin_handler, METHOD, stamp, attempt, self.pool, payload)
        return Handler(context, inbound)

    def apply(self, handler: Handler, amount: int) -> None:
        """The handler's ``atomic()`` block: credit ``amount``; its first block consumes the request."""

        def credit() -> None:
            with self.core.atomic():
                self.balance += amount

        handler.context.run(credit)

    def answer(self, handler: Handler, refund: int) -> bytes | None:
        """The handler debits ``refund`` and answers; returns the response's stamp."""

        def debit_and_return() -> bytes | None:
            with self.core.atomic():
                self.balance -= refund
            inbound = handler.inbound
            return self.core.end_handler(inbound) if isinstance(inbound, Inbound) else None

        return handler.context.run(debit_and_return)

    def bounce(self, handler: Handler, *, taken_back: bool = True) -> bytes | None:
        """The handler fails before it applies anything (``UNAVAILABLE``, say): gRPC may retry the call.
        Returns the stamp of the error answer. ``taken_back=False`` models an agent that reports the
        failure as an ordinary answer."""
        inbound = handler.inbound
        if not isinstance(inbound, Inbound):
            return None
        stamp: bytes | None = handler.context.run(self.core.end_handler, inbound, failed=taken_back)
        return stamp

    def receive(self, outbound: Outbound, stamp: bytes | None, amount: int, *, failure: str = "") -> None:
        """The answer reaches the caller: merged and consumed as the client interceptor does, then
        credited in the same step. An answer without a stamp settles the call as unstamped; a
        ``failure`` is the error status of an answer (with or without a stamp)."""
        rendered = json.dumps(amount) if stamp is not None and not failure else None
        self.core.end_call(outbound, stamp, failure or None, rendered)
        self.balance += amount

    def fail(self, outbound: Outbound, why: str) -> None:
        """The caller's call fails without an answer (a deadline, a lost connection)."""
        self.core.end_call(outbound, None, why)


def without_epoch(stamp: bytes) -> bytes:
    """``stamp`` as an agent that ignores epochs would read it: epoch 0, everything else as sent."""
    fields = parse_stamp(stamp)
    return encode_stamp(**{**fields._asdict(), "epoch": 0, "peer_fp": fields.peer_fp or None})
