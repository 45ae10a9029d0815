"""A seeded world of long-lived gRPC streams between processes, and snapshots taken while they run.

The processes are the real event core (:class:`sim.process.SimProcess`),
driven as the agent's stream interceptors drive it (``agent/_calls.py``):
a client opens its call (``begin_call``, ``open_client_stream``) and the
server's handler its end when the opening request arrives
(``begin_handler``, ``open_server_stream``). A sender produces each message
in one step: an ``atomic()`` block that debits its amount, run with the
:class:`cutwatch.core.Sending` marker set (the interceptor's request or
response iterator), then, with the envelope, the message's own stamp
(``stream_stamp``). The receiver takes messages one by one
(``stream_pulled``) and credits them in a later step, in an ``atomic()``
block of the context that took them; that block's exit consumes them. A
server handler produces and takes in one context (its thread), so a block
that sends also credits what it took; a client takes responses in its
application thread and produces requests in gRPC's. Streams are FIFO; the
network between streams, and the collector's orders, are not: one
``random.Random`` picks every step.

The collector is the real :class:`CutAssembler`, fed the reports of each
process in order; it asks for local snapshots all at once, or in the waves
the real coordinator uses (``snapshot_waves`` over the stream directions of
each process's latest local snapshot: receivers first).

Ground truth: the system is closed, so every cut must hold every token; a
stream message is in transit at cut k when its debit came before its
sender's cut k and its credit after its receiver's; it *crosses* cut k when
its debit came after the sender's cut and its credit before the receiver's
(no consistent cut has it, and the collector must say so).

Switches turn each stream rule off, to show that the properties catch it:
``consumption_rule`` (a message counts as consumed when taken, credited
later), ``sending_marker`` (the debit runs outside the iterator, and the
message counts when gRPC takes it, in a later step), ``crossing_check`` (the
assembler ignores ``c > s``), ``wait_for_owed`` (the assembler completes a
cut without the records of messages still in flight).
"""

from __future__ import annotations

import contextvars
import json
import random
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from sim.process import SimProcess
from sim.world import Control, Report, run_to_the_end

from cutwatch.core import (
    SENDING,
    AssembledCut,
    ChannelPeer,
    CutAssembler,
    Inbound,
    LocalSnapshot,
    Outbound,
    Sending,
    StreamEnd,
    snapshot_waves,
    stream_edges,
)
from cutwatch.core._streams import StreamPlacement

__all__ = [
    "CROSSING",
    "KINDS",
    "StreamConfig",
    "StreamResult",
    "StreamWorld",
    "crossing_reasons",
    "simulate_streams",
    "stream_token_sum",
]

StreamKind = Literal["client", "server", "bidi"]
KINDS: tuple[StreamKind, ...] = ("client", "server", "bidi")
METHODS = {"client": "/bank.Bank/Deposit", "server": "/bank.Bank/Payout", "bidi": "/bank.Bank/Exchange"}
MsgId = tuple[str, int, str, int]
"""A stream message's identity: (caller, call id, kind "request"/"response", index in the stream)."""
CROSSING = re.compile(
    r"^stream (?P<method>\S+) #(?P<call>\d+) from (?P<caller>\S+): \d+ (?P<kind>request|response) "
    r"message\(s\) consumed before the \w+'s cut were sent after the \w+'s cut$"
)


@dataclass(frozen=True)
class StreamConfig:
    """One world. ``streams`` lists (client, server, kind) by process number; ``late_open`` opens each
    stream at a random step of the run rather than before it."""

    n: int = 3
    streams: tuple[tuple[int, int, StreamKind], ...] = ((0, 1, "client"), (1, 2, "server"), (2, 0, "bidi"))
    steps: int = 120
    initial: int = 100
    max_epochs: int = 4
    snapshot_percent: int = 6
    late_open: bool = False
    envelope: bool = False
    waves: bool = False
    consumption_rule: bool = True
    sending_marker: bool = True
    crossing_check: bool = True
    wait_for_owed: bool = True


@dataclass(eq=False)
class StreamMsg:
    """One stream message, with its ground truth: the epochs of its debit and of its credit."""

    caller: str
    call_id: int
    kind: str
    index: int
    amount: int
    sender: str
    receiver: str
    sent_epoch: int
    stamp: bytes | None = None
    handed: bool = True
    """Handed to gRPC (counted, without the sending marker, only then)."""
    credited_epoch: int | None = None

    @property
    def ident(self) -> MsgId:
        return (self.caller, self.call_id, self.kind, self.index)


@dataclass(eq=False)
class Reader:
    """A context that takes messages of one stream end and credits them in its next atomic() block."""

    context: contextvars.Context
    taken: list[StreamMsg] = field(default_factory=list)


@dataclass(eq=False)
class Stream:
    """One streaming call: both ends, the FIFO of each direction, and the contexts at each end."""

    client: SimProcess
    server: SimProcess
    kind: StreamKind
    outbound: Outbound
    client_end: StreamEnd
    opening: bytes
    opened_epoch: int
    client_app: Reader
    client_sender: contextvars.Context
    requests: deque[StreamMsg] = field(default_factory=deque)
    responses: deque[StreamMsg] = field(default_factory=deque)
    handler: Reader | None = None
    server_end: StreamEnd | None = None
    opening_delivered: bool = False
    sent: dict[str, int] = field(default_factory=lambda: {"request": 0, "response": 0})
    unhanded: list[StreamMsg] = field(default_factory=list)

    @property
    def call_id(self) -> int:
        return self.outbound.call.call_id

    @property
    def sends_requests(self) -> bool:
        return self.kind in ("client", "bidi")

    @property
    def sends_responses(self) -> bool:
        return self.kind in ("server", "bidi") and self.server_end is not None


class StreamAssembler(CutAssembler):
    """The real assembler, with the stream checks it makes switchable (for the broken variants)."""

    def __init__(self, epoch: int, participants: list[str], *, crossing_check: bool, wait_for_owed: bool):
        super().__init__(epoch, participants)
        self.crossing_check = crossing_check
        self.wait_for_owed = wait_for_owed

    def _place_streams(self) -> StreamPlacement:
        placement = super()._place_streams()
        if not self.crossing_check:
            placement.reasons = [r for r in placement.reasons if not CROSSING.match(r)]
        if not self.wait_for_owed:
            placement.owed = []
        return placement


@dataclass
class StreamResult:
    config: StreamConfig
    participants: tuple[str, ...]
    total: int
    cuts: dict[int, AssembledCut]
    messages: list[StreamMsg]
    expected_in_transit: dict[int, set[MsgId]]
    crossing: dict[int, set[tuple[str, int, str]]]
    """Per cut, the (caller, call id, kind) of stream directions with a message that crosses it."""
    waves_used: int
    """Snapshots asked for in more than one wave."""


def stream_token_sum(cut: AssembledCut) -> int:
    """Balances in the cut's states plus the amounts of every message recorded in transit."""
    total = 0
    for state in cut.states.values():
        assert isinstance(state, dict) and isinstance(state.get("balance"), int), state
        total += state["balance"]
    return total + sum(int(json.loads(record.payload_json)) for record in cut.in_transit)


def crossing_reasons(cut: AssembledCut) -> set[tuple[str, int, str]]:
    """The stream directions a cut names as crossed (a message consumed before it was sent, cut-wise)."""
    named = set()
    for reason in cut.reasons:
        match = CROSSING.match(reason)
        if match:
            named.add((match["caller"], int(match["call"]), match["kind"]))
    return named


class StreamWorld:
    def __init__(self, config: StreamConfig, rng: random.Random) -> None:
        self.cfg = config
        self.rng = rng
        self.now = 0
        self.procs = [
            SimProcess(f"p{i}", config.initial, now=lambda: float(self.now)) for i in range(config.n)
        ]
        self.by_pid = {p.pid: p for p in self.procs}
        self.streams: list[Stream] = []
        self.unopened = list(config.streams)
        self.control: list[Control] = []
        self.reports: dict[str, deque[Report]] = {p.pid: deque() for p in self.procs}
        self.assemblers: dict[int, StreamAssembler] = {}
        self.cuts: dict[int, AssembledCut] = {}
        self.waves: dict[int, list[list[str]]] = {}
        self.wave_plan: dict[int, list[list[str]]] = {}
        self.cut_at: dict[tuple[str, int], int] = {}
        """The step at which each process took each cut."""
        self.asked: dict[int, set[str]] = {}
        self.edges: dict[str, set[tuple[str, str]]] = {}
        self.waves_used = 0
        self.next_epoch = 1
        self.messages: list[StreamMsg] = []
        if not config.late_open:
            while self.unopened:
                self._open(*self.unopened.pop(0))

    # Driving -------------------------------------------------------------------------------------
    def run(self) -> StreamResult:
        run_to_the_end(self.cfg.steps, self._step, self.assemblers, self.cuts)
        return StreamResult(
            config=self.cfg,
            participants=tuple(self.by_pid),
            total=self.cfg.initial * self.cfg.n,
            cuts=dict(sorted(self.cuts.items())),
            messages=self.messages,
            expected_in_transit={k: self.expected_in_transit(k) for k in self.cuts},
            crossing={k: self.crossing(k) for k in self.cuts},
            waves_used=self.waves_used,
        )

    def _step(self, *, workload: bool) -> bool:
        self.now += 1
        starting = workload and self.next_epoch <= self.cfg.max_epochs
        if starting and self.rng.randrange(100) < self.cfg.snapshot_percent:
            self._start_snapshot()
            return True
        if workload and self.unopened and self.rng.randrange(100) < 5:
            self._open(*self.unopened.pop(0))
            return True
        options: list[tuple[str, object]] = []
        options += [("control", item) for item in self.control]
        for stream in self.streams:
            if stream.requests or not stream.opening_delivered:
                options += [("take_request", stream)] * 2
            if stream.responses:
                options += [("take_response", stream)] * 2
            if stream.unhanded:
                options.append(("handoff", stream))
            if workload and stream.sends_requests:
                options += [("send_request", stream)] * 2
            if workload and stream.sends_responses:
                options += [("send_response", stream)] * 2
            for reader in (stream.client_app, stream.handler):
                if reader is not None and reader.taken:
                    options += [("apply", (stream, reader))] * 2
        options += [("report", pid) for pid, queue in self.reports.items() if queue]
        if not options:
            return False
        action, subject = self.rng.choice(options)
        if action == "control":
            assert isinstance(subject, Control)
            self.control.remove(subject)
            self._order(subject)
        elif action == "report":
            assert isinstance(subject, str)
            self._collect(self.reports[subject].popleft().event)
        elif action == "apply":
            stream, reader = subject  # type: ignore[misc]
            self._apply(stream, reader)
        else:
            assert isinstance(subject, Stream)
            getattr(self, f"_{action}")(subject)
        return True

    # Application ---------------------------------------------------------------------------------
    def _open(self, client: int, server: int, kind: StreamKind) -> None:
        proc = self.procs[client]
        app = contextvars.Context()
        channel = ChannelPeer()
        started = app.run(proc.core.begin_call, METHODS[kind], channel)
        assert started is not None
        outbound, stamp = started
        end = proc.core.open_client_stream(outbound)
        self.streams.append(
            Stream(
                proc,
                self.procs[server],
                kind,
                outbound,
                end,
                stamp,
                proc.epoch,
                Reader(app),
                contextvars.Context(),
            )
        )
        self._flush(proc)

    def _take_request(self, stream: Stream) -> None:
        if not stream.opening_delivered:
            self._start_handler(stream)
            return
        assert stream.handler is not None and stream.server_end is not None
        self._take(stream.server, stream.server_end, stream.handler, stream.requests.popleft())

    def _take_response(self, stream: Stream) -> None:
        self._take(stream.client, stream.client_end, stream.client_app, stream.responses.popleft())

    def _start_handler(self, stream: Stream) -> None:
        """The opening request reaches the server: the handler starts and opens its end."""
        server = stream.server
        context = contextvars.Context()
        inbound = context.run(
            server.core.begin_handler, METHODS[stream.kind], stream.opening, 0, server.pool, "0"
        )
        assert isinstance(inbound, Inbound)
        end = server.core.open_server_stream(inbound)
        assert end is not None
        stream.handler, stream.server_end, stream.opening_delivered = Reader(context), end, True
        self._flush(server)

    def _take(self, proc: SimProcess, end: StreamEnd, reader: Reader, msg: StreamMsg) -> None:
        payload = json.dumps(msg.amount)
        stamp = msg.stamp if self.cfg.envelope else None
        reader.context.run(proc.core.stream_pulled, end, payload, stamp)
        reader.taken.append(msg)
        if not self.cfg.consumption_rule:
            # The bug the rule prevents: counted consumed as it is taken, credited later.
            reader.context.run(self._block, proc, 0)
        self._flush(proc)

    def _apply(self, stream: Stream, reader: Reader) -> None:
        proc = stream.server if reader is stream.handler else stream.client
        reader.context.run(self._block, proc, 0, reader)
        self._flush(proc)

    def _block(self, proc: SimProcess, debit: int, reader: Reader | None = None) -> None:
        """One atomic() block: credit what ``reader`` took, debit ``debit``."""
        with proc.core.atomic():
            if reader is not None:
                for msg in reader.taken:
                    proc.balance += msg.amount
                    msg.credited_epoch = proc.epoch
                reader.taken.clear()
            proc.balance -= debit

    def _send_request(self, stream: Stream) -> None:
        self._send(stream, stream.client, stream.client_end, stream.client_sender, None, "request")

    def _send_response(self, stream: Stream) -> None:
        assert stream.handler is not None and stream.server_end is not None
        handler = stream.handler
        self._send(stream, stream.server, stream.server_end, handler.context, handler, "response")

    def _send(
        self,
        stream: Stream,
        proc: SimProcess,
        end: StreamEnd,
        context: contextvars.Context,
        reader: Reader | None,
        kind: str,
    ) -> None:
        """Produce one message: debit it in an atomic() block (which also credits what this context took)
        with the sending marker set, as the interceptor's iterator runs the application's; then stamp it."""
        amount = self.rng.randint(0, max(proc.balance, 0))

        def produce() -> None:
            if self.cfg.sending_marker:
                producing = Sending(end)
                token = SENDING.set(producing)
                try:
                    self._block(proc, amount, reader)
                finally:
                    SENDING.reset(token)
                if not producing.counted:
                    proc.core.stream_sent(end)
            else:
                self._block(proc, amount, reader)

        context.run(produce)
        stream.sent[kind] += 1
        receiver = stream.server if kind == "request" else stream.client
        msg = StreamMsg(
            stream.client.pid,
            stream.call_id,
            kind,
            stream.sent[kind],
            amount,
            proc.pid,
            receiver.pid,
            proc.epoch,
        )
        self.messages.append(msg)
        if self.cfg.sending_marker:
            self._hand(stream, proc, end, msg)
        else:
            msg.handed = False
            stream.unhanded.append(msg)
        self._flush(proc)

    def _handoff(self, stream: Stream) -> None:
        """gRPC takes a message produced outside the iterator: only now is it counted sent."""
        msg = stream.unhanded.pop(0)
        proc = self.by_pid[msg.sender]
        end = stream.client_end if msg.kind == "request" else stream.server_end
        assert end is not None
        proc.core.stream_sent(end)
        msg.handed = True
        self._hand(stream, proc, end, msg)
        self._flush(proc)

    def _hand(self, stream: Stream, proc: SimProcess, end: StreamEnd, msg: StreamMsg) -> None:
        if self.cfg.envelope:
            msg.stamp = proc.core.stream_stamp(end)
        (stream.requests if msg.kind == "request" else stream.responses).append(msg)

    # Snapshot protocol -------------------------------------------------------------------------
    def _start_snapshot(self) -> None:
        epoch = self.next_epoch
        self.next_epoch += 1
        pids = list(self.by_pid)
        self.assemblers[epoch] = StreamAssembler(
            epoch, pids, crossing_check=self.cfg.crossing_check, wait_for_owed=self.cfg.wait_for_owed
        )
        if self.cfg.waves:
            edges = [edge for pid in pids for edge in self.edges.get(pid, ())]
            self.waves[epoch] = snapshot_waves(pids, edges)
            self.wave_plan[epoch] = [list(wave) for wave in self.waves[epoch]]
            self.waves_used += len(self.waves[epoch]) > 1
            self.asked[epoch] = set()
            self._ask_next_wave(epoch)
        else:
            self.control.extend(Control(pid, epoch) for pid in pids)

    def _ask_next_wave(self, epoch: int) -> None:
        """As the coordinator does: the next wave once every process asked so far has reported."""
        reported = set(self.assemblers[epoch].reported)
        waves = self.waves[epoch]
        if not self.asked[epoch] <= reported:
            return
        while waves:
            self.asked[epoch] = set(waves.pop(0))
            self.control.extend(Control(pid, epoch) for pid in sorted(self.asked[epoch] - reported))
            if not self.asked[epoch] <= reported:
                return

    def _order(self, item: Control) -> None:
        item.carry_out(self.by_pid[item.receiver].core)
        self._flush(self.by_pid[item.receiver])

    def _flush(self, proc: SimProcess) -> None:
        self.reports[proc.pid].extend(Report(event, self.now) for event in proc.drain())

    def _collect(self, event: object) -> None:
        if isinstance(event, LocalSnapshot):
            self.edges[event.process] = stream_edges(event.streams, event.process)
        epoch = event.epoch  # type: ignore[attr-defined]
        if epoch in self.cuts:
            return
        assembler = self.assemblers[epoch]
        assembler.add(event)  # type: ignore[arg-type]
        if isinstance(event, LocalSnapshot) and self.cfg.waves:
            self._ask_next_wave(epoch)
        due = assembler.next_flush()
        if due is not None:
            round_, fence = due
            self.control.extend(
                Control(pid, epoch, flush=True, round=round_, fence=fence) for pid in assembler.participants
            )
        if assembler.status() != "PENDING":
            self.cuts[epoch] = assembler.finish()
            self.control.extend(Control(pid, epoch, close=True) for pid in self.by_pid)

    # Ground truth --------------------------------------------------------------------------------
    def expected_in_transit(self, k: int) -> set[MsgId]:
        return {
            msg.ident
            for msg in self.messages
            if msg.sent_epoch < k and (msg.credited_epoch is None or msg.credited_epoch >= k)
        }

    def crossing(self, k: int) -> set[tuple[str, int, str]]:
        return {
            (msg.caller, msg.call_id, msg.kind)
            for msg in self.messages
            if msg.sent_epoch >= k and msg.credited_epoch is not None and msg.credited_epoch < k
        }


def simulate_streams(config: StreamConfig, rng: random.Random) -> StreamResult:
    return StreamWorld(config, rng).run()
