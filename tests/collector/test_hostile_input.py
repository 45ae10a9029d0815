"""Hostile identifiers and values in every field the collector takes from the network.

Each test speaks the control stream by hand (what a broken or hostile process can send), or sets a
field through the public API of a real agent, against a real collector on loopback with a real
SQLite file. Whatever comes in is either stored exactly (read back through ``CollectorClient`` and
straight from SQLite) or refused cleanly (the stream ends with INVALID_ARGUMENT, or the message is
counted in ``events_invalid`` with a short, clear log line); the schema never changes, every table
holds exactly the rows that the accepted input implies, and a normal agent registers and completes a
snapshot afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polling import wait_until

import cutwatch
from cutwatch.collector import CollectorClient, CollectorServer, Cut
from cutwatch.core import REQUEST, ChannelRecord, MsgKey
from cutwatch.proto import MAX_JSON_DEPTH, MAX_WORKER_POOLS, event_from_message, event_to_message
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc

TIMEOUT = 30.0
MIB = 1 << 20
CONTROL = "/cutwatch.v1.Collector/Control"
LOGGER = "cutwatch.collector"

SQL = (
    "'; DROP TABLE cuts; --",
    '" OR 1=1 --',
    "x'); DELETE FROM results; --",
    "1; DROP TABLE local_states; --",
    "Robert'); DROP TABLE channel_states;--",
    "' UNION SELECT sql FROM sqlite_master --",
)
NUL = ("a\x00b", "\x00", "\x00'; DROP TABLE cuts; --\x00")
CONTROL_CHARS = (
    "\x01\x02\x03\x1b[31mred\x1b[0m",
    "line\nbreak\r\n",
    "\t\x0b\x0c\x1c\x1d\x1e\x1f",
    "\x7f\x85\x9b",
    "\u2028\u2029\ufeff\u202e\ufffe\uffff",
)
JSON_BREAKING = ('"}]}', '{"a": ', "\\", "\\u0000", '\\"', "</script><!--", "NaN", "\ud7ff\ue000\U0010ffff")
HOSTILE: tuple[str, ...] = (*SQL, *NUL, *CONTROL_CHARS, *JSON_BREAKING, "é😀", "x" * 256)
"""Every value fits an identifier (1..256 characters) and is valid UTF-8."""
LONG = "L" * MIB
LONG_NUL = "\x00'" * (MIB // 2)
U64 = (1, 2**31, 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1)
U32 = (0, 1, 2**31, 2**32 - 1)
SURROGATES = ("\ud800", "\udfff", "a\udc80b")
DOUBLES = (float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e308, -1e308, -1.0)
TABLES = ("channel_states", "cuts", "local_states", "meta", "results", "schema_version")


# Plumbing ---------------------------------------------------------------------------------------


def _wire(message: pb.AgentMessage | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def varint(value: int) -> bytes:
    """Protobuf varint of ``value`` as a 64-bit two's complement (so -1 is ten bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def with_bad_utf8(message: Any, placeholder: str, bad: bytes) -> bytes:
    """``message`` serialised with the (3-byte) ``placeholder`` string replaced by ``bad`` bytes."""
    raw = message.SerializeToString()
    marker = placeholder.encode()
    assert len(marker) == len(bad) and raw.count(marker) == 1
    return raw.replace(marker, bad)


class RawAgent:
    """A control stream spoken by hand: whatever a broken or hostile process may send."""

    def __init__(self, channel: grpc.Channel, first: pb.AgentMessage | bytes, process: str = "") -> None:
        self.process = process
        self.seq = 0
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.ended = threading.Event()
        self._requests: queue.Queue[pb.AgentMessage | bytes | None] = queue.Queue()
        self._requests.put(first)
        self._orders: queue.Queue[pb.ControlMessage] = queue.Queue()
        control = channel.stream_stream(
            CONTROL, request_serializer=_wire, response_deserializer=pb.ControlMessage.FromString
        )
        self._call = control(self._outgoing())
        self._reader = threading.Thread(target=self._read, name="raw-agent", daemon=True)
        self._reader.start()
        # Alive, as far as the collector's silence timeout goes: heartbeats carry no sequence number.
        self._beating = threading.Thread(target=self._beat, name="raw-agent-heartbeat", daemon=True)
        self._beating.start()

    def _beat(self) -> None:
        while not self.ended.wait(1.0):
            self._requests.put(pb.AgentMessage(heartbeat=pb.Heartbeat(unix_nanos=time.time_ns())))

    def _outgoing(self) -> Iterator[pb.AgentMessage | bytes]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for order in self._call:
                self._orders.put(order)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.code, self.details = exc.code(), exc.details() or ""
        finally:
            self.ended.set()

    def send(self, **body: Any) -> None:
        """One agent message; events get the next sequence number (heartbeats and goodbyes have none)."""
        if not {"heartbeat", "goodbye"} & set(body):
            self.seq += 1
            body["seq"] = self.seq
        self._requests.put(pb.AgentMessage(**body))

    def send_raw(self, message: pb.AgentMessage | bytes) -> None:
        self._requests.put(message)

    def _next(self, deadline: float, what: str) -> pb.ControlMessage | None:
        """The next order; None once the stream has ended and every order is read."""
        while True:
            try:
                return self._orders.get(timeout=0.05)
            except queue.Empty:
                if self.ended.is_set() and self._orders.empty():
                    return None
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.process!r:.60}: {what}") from None

    def order(self, kind: str, epoch: int | None = None) -> pb.ControlMessage:
        """The next order of ``kind`` (for ``epoch``), skipping others."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            order = self._next(deadline, f"no {kind} order")
            if order is None:
                raise AssertionError(f"{self.process!r:.60}: stream ended ({self.code}: {self.details:.200})")
            body = order.WhichOneof("body")
            if body == kind and (epoch is None or getattr(order, kind).epoch == epoch):
                return order

    def finish(self, epoch: int) -> None:
        """Answer every flush round of ``epoch``, as an agent does; return once ``epoch`` is over (or
        the stream is)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            order = self._next(deadline, f"snapshot {epoch} never ended")
            if order is None:
                return
            body = order.WhichOneof("body")
            if body == "flush" and order.flush.epoch == epoch:
                self.send(flushed=pb.Flushed(epoch=epoch, round=order.flush.round))
            elif body == "close_epoch" and order.close_epoch.epoch == epoch:
                return

    def registered(self) -> bool:
        """Whether the collector took the registration; False once it ended the stream instead."""
        order = self._next(time.monotonic() + TIMEOUT, "neither registered nor refused")
        return order is not None and order.WhichOneof("body") == "registered"

    def refusal(self) -> tuple[grpc.StatusCode | None, str]:
        """How the collector ended this stream (it must end on its own)."""
        assert self.ended.wait(TIMEOUT), f"{self.process!r:.60}: the collector kept a refused stream open"
        return self.code, self.details

    def close(self) -> None:
        """Say goodbye (so the collector expects nothing more of this process) and end the stream."""
        self._requests.put(pb.AgentMessage(goodbye=pb.Goodbye()))
        self._requests.put(None)
        if not self.ended.wait(TIMEOUT / 6):
            self._call.cancel()
        self._reader.join(TIMEOUT)
        self._beating.join(TIMEOUT)


Pieces = Callable[[int], Sequence[Mapping[str, Any]]]
"""The messages (``AgentMessage`` bodies) a raw agent sends for a snapshot's epoch."""


def schema(db: Path) -> list[tuple[Any, ...]]:
    return rows(db, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Straight from the file, read-only, past the collector."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def row_counts(db: Path) -> dict[str, int]:
    return {table: int(rows(db, f"SELECT COUNT(*) FROM {table}")[0][0]) for table in TABLES}


class World:
    """A collector with its SQLite file, one normal agent, raw agents, and the rows they must leave."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "cuts.db"
        # No grace for streams that break: hostile ones are ended on purpose here, and the next
        # snapshot must not wait for them to come back.
        self.server = CollectorServer(
            self.db, listen="127.0.0.1:0", snapshot_timeout=TIMEOUT, rejoin_grace=0.0
        ).start()
        self.schema = schema(self.db)
        self.channel = grpc.insecure_channel(
            self.server.address, options=[("grpc.max_send_message_length", 64 * MIB)]
        )
        self.stub = pb_grpc.CollectorStub(self.channel)  # type: ignore[no-untyped-call]
        self.client = CollectorClient(self.server.address, timeout=TIMEOUT)
        self.raws: list[RawAgent] = []
        self.agents: list[cutwatch.Agent] = []
        # meta: the collector writes down who is registered (one row), to expect them after a restart.
        self.expected = dict.fromkeys(TABLES, 0) | {"schema_version": 1, "meta": 1}
        self.normal = self.agent("normal")

    # Participants -------------------------------------------------------------------------------
    def agent(self, service: str, **options: Any) -> cutwatch.Agent:
        agent = cutwatch.Agent(service, collector=self.server.address, **options).start()
        self.agents.append(agent)
        assert agent.wait_registered(TIMEOUT), "a normal agent could not register"
        return agent

    def raw(self, first: pb.AgentMessage | bytes, process: str = "") -> RawAgent:
        raw = RawAgent(self.channel, first, process)
        self.raws.append(raw)
        return raw

    def register(self, process: str, service: str = "rogue", **fields: Any) -> RawAgent:
        """A raw agent registered as ``process``; fails unless the collector accepts it."""
        raw = self.raw(
            pb.AgentMessage(register=pb.Registration(process_id=process, service=service, **fields))
        )
        raw.process = process
        raw.order("registered")
        return raw

    def drop(self, raw: RawAgent) -> None:
        raw.close()
        self.raws.remove(raw)

    def live(self) -> set[str]:
        return {agent["process"] for agent in self.client.status()["agents"]}

    # Snapshots ----------------------------------------------------------------------------------
    def snapshot(
        self,
        plan: Mapping[RawAgent, Pieces] | None = None,
        *,
        results: int | None = None,
        timeout: float = TIMEOUT,
    ) -> Cut:
        """One snapshot through the public client; raw agents send ``plan``'s pieces (default: a plain
        local snapshot). The rows it must add are counted from the cut the collector replied with:
        one ``results`` row (the deadlock check) per COMPLETE cut unless told otherwise."""
        plan = dict(plan or {})
        for raw in self.raws:
            plan.setdefault(raw, lambda epoch, raw=raw: [local(raw, epoch)])
        replies: list[Cut | BaseException] = []

        def run() -> None:
            try:
                replies.append(self.client.snapshot(timeout=timeout))
            except BaseException as exc:
                replies.append(exc)

        thread = threading.Thread(target=run, name="snapshot", daemon=True)
        thread.start()
        epochs: dict[RawAgent, int] = {}
        for raw, pieces in plan.items():
            epochs[raw] = epoch = raw.order("take_snapshot").take_snapshot.epoch
            for piece in pieces(epoch):
                raw.send(**piece)
        # Each raw agent answers every flush round until the epoch closes, all at once, as agents do.
        finishing = [
            threading.Thread(target=raw.finish, args=(epoch,), name="finish", daemon=True)
            for raw, epoch in epochs.items()
        ]
        for finisher in finishing:
            finisher.start()
        for finisher in finishing:
            finisher.join(TIMEOUT + 20)
        thread.join(TIMEOUT + 20)
        assert not thread.is_alive(), "the snapshot never returned"
        (reply,) = replies
        if isinstance(reply, BaseException):
            raise reply
        self.expected["cuts"] += 1
        self.expected["local_states"] += len(reply.states)
        self.expected["channel_states"] += len(reply.in_transit)
        self.expected["results"] += (1 if reply.complete else 0) if results is None else results
        assert self.client.get(reply.epoch) == reply, "the stored cut differs from the cut replied"
        return reply

    # The verdict --------------------------------------------------------------------------------
    def serves_and_holds_exactly(self) -> None:
        """A new agent registers and completes a snapshot; schema and every table's rows are as expected."""
        for raw in list(self.raws):
            self.drop(raw)
        self.agent("fresh")
        wanted = {agent.process_id for agent in self.agents}
        wait_until(lambda: self.live() == wanted, "only the normal agents to be registered")
        cut = self.snapshot()
        assert cut.status == "COMPLETE", cut.reasons
        assert set(cut.states) == wanted
        assert schema(self.db) == self.schema
        counts: dict[str, int] = {}

        def settled() -> bool:
            counts.update(row_counts(self.db))
            return counts == self.expected

        try:
            wait_until(settled, "the store's rows to be what the accepted input implies")
        except AssertionError:
            raise AssertionError(f"rows {counts} != expected {self.expected}") from None
        # Every cut that was replied is there whole: one row per process and message in transit.
        per_cut = rows(
            self.db,
            "SELECT c.epoch, (SELECT COUNT(*) FROM local_states l WHERE l.epoch = c.epoch), "
            "(SELECT COUNT(*) FROM channel_states s WHERE s.epoch = c.epoch) FROM cuts c ORDER BY c.epoch",
        )
        for epoch, processes, in_transit in per_cut:
            stored = self.client.get(epoch)
            assert stored is not None and (len(stored.states), len(stored.in_transit)) == (
                processes,
                in_transit,
            )

    def close(self) -> None:
        for raw in self.raws:
            raw.close()
        for agent in self.agents:
            agent.close()
        self.client.close()
        self.channel.close()
        self.server.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    try:
        yield made
    finally:
        made.close()


def local(raw: RawAgent, epoch: int, **fields: Any) -> dict[str, Any]:
    fields.setdefault("process_id", raw.process)
    return {"local_snapshot": pb.LocalSnapshot(epoch=epoch, **fields)}


def stored_local(world: World, epoch: int, process: str) -> dict[str, Any]:
    """The ``local_states`` row of ``process`` in cut ``epoch``, as SQLite holds it."""
    found = rows(
        world.db,
        "SELECT process, service, clock_json, state_json, tasks_json, sent_json, consumed_json, pools_json "
        "FROM local_states WHERE epoch = ? AND process = ?",
        epoch,
        process,
    )
    assert len(found) == 1, f"{len(found)} rows for {process!r:.60} in cut {epoch}"
    names = ("process", "service", "clock", "state", "tasks", "sent", "consumed", "pools")
    return dict(zip(names, found[0], strict=True))


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


def invalid_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped an invalid message")]


# Registration -----------------------------------------------------------------------------------


def test_hostile_process_ids_are_stored_exactly_or_refused(world: World) -> None:
    accepted = [world.register(process) for process in HOSTILE]
    refused = {"": world.raw(pb.AgentMessage(register=pb.Registration(process_id="", service="s")))}
    for too_long in ("x" * 257, LONG, LONG_NUL):
        refused[too_long] = world.raw(pb.AgentMessage(register=pb.Registration(process_id=too_long)))
    for value, raw in refused.items():
        code, details = raw.refusal()
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (value[:20], code, details)
        assert "process id of at most 256 characters" in details
        world.raws.remove(raw)
    assert world.live() == {world.normal.process_id, *HOSTILE}

    cut = world.snapshot(
        {
            raw: lambda epoch, raw=raw: [local(raw, epoch, state_json=canonical({"id": raw.process}))]
            for raw in accepted
        }
    )
    assert cut.status == "COMPLETE", cut.reasons
    assert set(cut.states) == {world.normal.process_id, *HOSTILE}
    for process in HOSTILE:
        assert cut.state_of(process) == {"id": process}
        row = stored_local(world, cut.epoch, process)
        assert row["process"].encode() == process.encode()
        assert row["state"] == canonical({"id": process})
    world.serves_and_holds_exactly()


def test_hostile_services_pools_and_numbers_in_a_registration_are_kept_exactly(world: World) -> None:
    pools = {value: size for value, size in zip(HOSTILE, itertools.cycle(U32), strict=False)}
    assert len(pools) <= 64
    raws = [
        world.register(
            f"svc:{index}", service=service, worker_pools=pools, protocol_version=2**32 - 1, dropped=2**64 - 1
        )
        for index, service in enumerate(HOSTILE)
    ]
    status = {agent["process"]: agent for agent in world.client.status()["agents"]}
    for raw, service in zip(raws, HOSTILE, strict=True):
        assert status[raw.process]["service"] == service
        assert status[raw.process]["worker_pools"] == pools
        # Drops from before this collector are history: they spoil no snapshot of it.
        assert status[raw.process]["events_dropped"] == 2**64 - 1
    cut = world.snapshot()
    assert cut.status == "COMPLETE", cut.reasons
    for raw, service in zip(raws, HOSTILE, strict=True):
        assert cut.states[raw.process]["service"] == service
        assert stored_local(world, cut.epoch, raw.process)["service"].encode() == service.encode()
    world.serves_and_holds_exactly()


def test_a_registration_epoch_ahead_is_followed_and_stays_storable(world: World) -> None:
    world.register("ahead:1", epoch=40)
    cut = world.snapshot()
    assert cut.status == "COMPLETE", cut.reasons
    assert cut.epoch == 41
    assert [info.epoch for info in world.client.list_cuts()] == [41]
    world.serves_and_holds_exactly()


def test_the_highest_registration_epoch_costs_agents_a_few_snapshots_not_one_per_epoch(world: World) -> None:
    """An agent ordered 2**62 epochs ahead once took a local snapshot for each, under its lock, for good."""
    world.register("ahead:1", epoch=2**62)
    cut = world.snapshot()
    assert cut.status == "COMPLETE", cut.reasons
    assert cut.epoch == 2**62 + 1
    assert rows(world.db, "SELECT epoch FROM cuts") == [(2**62 + 1,)]
    assert world.normal.stats().snapshots_taken < 100
    world.serves_and_holds_exactly()


@pytest.mark.parametrize("epoch", [2**62 + 1, 2**63, 2**64 - 1])
def test_a_registration_epoch_beyond_what_the_collector_numbers_is_refused(world: World, epoch: int) -> None:
    """Taken, it made every later cut unstorable (from 2**63) or every snapshot and registration fail."""
    raw = world.raw(pb.AgentMessage(register=pb.Registration(process_id="far:1", epoch=epoch)), "far:1")
    assert not raw.registered(), "registered"
    code, details = raw.refusal()
    world.raws.remove(raw)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and str(epoch) in details, details
    world.serves_and_holds_exactly()


@pytest.mark.parametrize(
    "fields",
    [
        {"service": LONG},
        {"service": "s" * 257},
        {"worker_pools": {LONG: 1}},
        {"worker_pools": {f"pool-{i}": i for i in range(65)}},
    ],
    ids=["service-1MiB", "service-257", "pool-name-1MiB", "65-pools"],
)
def test_registration_fields_beyond_their_limits_are_refused_not_cut_short(
    world: World, fields: dict[str, Any]
) -> None:
    raw = world.raw(pb.AgentMessage(register=pb.Registration(process_id="big:1", **fields)), "big:1")
    assert not raw.registered(), "registered"
    code, details = raw.refusal()
    world.raws.remove(raw)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    world.serves_and_holds_exactly()


# Snapshot pieces --------------------------------------------------------------------------------


def test_hostile_values_in_every_piece_of_a_snapshot_are_stored_exactly(world: World) -> None:
    rogue = world.register("rogue:1")
    me, normal = rogue.process, world.normal.process_id
    deep: Any = "bottom"
    for _ in range(MAX_JSON_DEPTH - 10):
        deep = [deep]
    state = {
        **{value: value for value in HOSTILE},
        "long": LONG,
        "long-nul": LONG_NUL,
        LONG[:1000]: "long key",
        "numbers": [2**64 - 1, -(2**63), 10**300, 1.5e308, -0.0, 5e-324, 1e-7],
        "deep": deep,
        "surrogates": list(SURROGATES),
    }
    tasks = [
        {
            "task_id": index,
            "kind": "server",
            "method": value,
            "caller": value,
            "call_id": U64[index % len(U64)],
            "pool": value,
            "queued": index % 2 == 1,
            "trace_id": value,
            "span_id": value,
            "held_locks": [value, LONG if index == 0 else value + "!"],
            "waiting_lock": None,
            "lock_time_left": None,
            "time_left": None if index % 2 else 1e6,
            "ends_at_deadline": index % 3 == 0,
            "outbound": [],
        }
        for index, value in enumerate(HOSTILE)
    ]
    clock = {value: n for value, n in zip(HOSTILE, itertools.cycle(U64), strict=False)} | {
        LONG: 7,
        me: 2**64 - 1,
    }
    pools = {value: n for value, n in zip(HOSTILE, itertools.cycle(U32), strict=False)} | {LONG: 3}
    responses_sent = {value: 2**64 - 1 for value in HOSTILE}
    requests_consumed = {value: 1 for value in HOSTILE} | {LONG: 2}
    responses_consumed = {value: 2**64 - 1 for value in HOSTILE[:5]}
    call_ids = itertools.count(1000)
    records = [
        pb.ChannelRecord(
            sender=me,
            receiver=me,
            method=value,
            kind="request" if index % 2 else "response",
            payload_json=json.dumps({"v": value, value: [value]}),
            call_id=next(call_ids),
            attempt=U32[index % len(U32)],
        )
        for index, value in enumerate(HOSTILE)
    ]
    records += [
        pb.ChannelRecord(
            sender=me, receiver=me, method=LONG, kind="request", payload_json=json.dumps(LONG_NUL)
        ),
        pb.ChannelRecord(
            sender=normal,
            receiver=me,
            method="'; --",
            kind="request",
            payload_json="null",
            call_id=2**64 - 1,
            attempt=2**32 - 1,
        ),
    ]
    ghost = pb.ChannelRecord(
        sender="ghost'; DROP TABLE cuts; --", receiver=me, kind="request", payload_json="{}"
    )

    def pieces(epoch: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            local(
                rogue,
                epoch,
                clock=clock,
                state_json=json.dumps(state),
                tasks_json=json.dumps(tasks),
                requests_sent=2**64 - 1,
                responses_sent=responses_sent,
                requests_consumed=requests_consumed,
                responses_consumed=responses_consumed,
                worker_pools=pools,
            ),
            {"heartbeat": pb.Heartbeat(unix_nanos=2**64 - 1, dropped=0)},
            {
                "call_outcome": pb.CallOutcome(
                    epoch=epoch, call_id=2**64 - 1, outcome="unstamped", detail=LONG
                )
            },
        ]
        for record in [*records, ghost]:
            piece = pb.ChannelRecord()
            piece.CopyFrom(record)
            piece.epoch = epoch
            out.append({"channel_record": piece})
        return out

    cut = world.snapshot({rogue: pieces})
    assert cut.status == "COMPLETE", [reason[:200] for reason in cut.reasons]
    assert set(cut.states) == {me, normal}
    assert cut.state_of(me) == state
    assert tuple(task.to_json() for task in cut.tasks[me]) == tuple(tasks)
    assert cut.clocks[me] == clock
    assert cut.pools[me] == pools
    consumed = dict(requests_consumed)
    for sender, count in responses_consumed.items():
        consumed[sender] = consumed.get(sender, 0) + count
    assert cut.counters[me] == {"sent": {**responses_sent, "*": 2**64 - 1}, "consumed": consumed}
    sent = sorted(
        (r.sender, r.receiver, r.method, r.kind, r.call_id, r.attempt, json.loads(r.payload_json))
        for r in records
    )
    got = sorted(
        (m.sender, m.receiver, m.method, m.kind, m.call_id, m.attempt, m.payload) for m in cut.in_transit
    )
    assert got == sent  # the ghost's record (not a participant) is left out, nothing else
    row = stored_local(world, cut.epoch, me)
    assert row["state"] == canonical(state)
    assert row["tasks"] == canonical(tasks)
    assert row["sent"] == canonical({**responses_sent, "*": 2**64 - 1})
    assert row["clock"] == canonical(clock)
    assert row["pools"] == canonical(pools)
    assert row["consumed"] == canonical(consumed)
    stored = rows(
        world.db,
        "SELECT sender, receiver, method, kind, call_id, attempt, payload_json FROM channel_states "
        "WHERE epoch = ?",
        cut.epoch,
    )
    as_stored = sorted(
        (s, r, m, k, c + 2**64 if c < 0 else c, a, json.loads(p)) for s, r, m, k, c, a, p in stored
    )
    assert as_stored == sent
    world.serves_and_holds_exactly()


def test_hostile_values_in_what_makes_a_cut_incomplete_are_stored_exactly(world: World) -> None:
    rogue = world.register("rogue:1")
    me = rogue.process
    names = (*HOSTILE, LONG)
    call_ids = (*U64, *range(100, 100 + len(names) - len(U64)))
    opened = [
        pb.OpenCall(call_id=call_id, method=value, target=value[::-1], failed=value if i % 2 else "")
        for i, (value, call_id) in enumerate(zip(names, call_ids, strict=True))
    ]
    # Calls left open without a failure of their own take the detail of a failed outcome.
    details = {call.call_id: call.method[::-1] for call in opened if not call.failed}
    details[opened[0].call_id] = LONG_NUL
    answering = [pb.Answering(caller=value, call_id=2**64 - 1) for value in HOSTILE[:3] for _ in range(2)]
    reason = "stopped: '; DROP TABLE cuts; --\x00\n" + LONG

    def pieces(epoch: int) -> list[dict[str, Any]]:
        outcomes = [
            {"call_outcome": pb.CallOutcome(epoch=epoch, call_id=call_id, outcome="failed", detail=detail)}
            for call_id, detail in details.items()
        ]
        return [
            local(rogue, epoch, open_calls=opened, answering=answering),
            *outcomes,
            {"recording_stopped": pb.RecordingStopped(epoch=epoch, reason=reason, dropped=2**64 - 1)},
        ]

    cut = world.snapshot({rogue: pieces})
    assert cut.status == "INCOMPLETE"
    assert me in cut.states
    assert f"{reason} at {me}" in cut.reasons
    unsettled = [(me, c.call_id, c.method, c.target, c.failed or details.get(c.call_id, "")) for c in opened]
    fields = ("caller", "call_id", "method", "target", "failed")
    assert sorted(tuple(u[f] for f in fields) for u in cut.unsettled) == sorted(unsettled)
    assert sorted((d["caller"], d["call_id"], tuple(d["where"])) for d in cut.duplicates) == sorted(
        (value, 2**64 - 1, (f"handler at {me}",) * 2) for value in HOSTILE[:3]
    )
    # The reason names the calls in brief: each megabyte is in the cut once, in ``unsettled``.
    (calls,) = [r for r in cut.reasons if r.startswith("calls in flight at the cut not accounted for")]
    assert len(calls) < 20_000
    assert len(cut.dumps()) < 12 * MIB
    ((reasons, stored),) = rows(
        world.db, "SELECT reasons_json, unsettled_json FROM cuts WHERE epoch = ?", cut.epoch
    )
    assert json.loads(reasons) == list(cut.reasons)
    assert sorted(map(tuple, json.loads(stored))) == sorted(unsettled)
    world.serves_and_holds_exactly()


def _refused_pieces(rogue: RawAgent, epoch: int) -> list[tuple[dict[str, Any], str]]:
    """Pieces no correct agent sends, each with what its log line must say."""
    me = rogue.process

    def snap(**fields: Any) -> dict[str, Any]:
        return local(rogue, epoch, **fields)

    def record(**fields: Any) -> dict[str, Any]:
        base = {"epoch": epoch, "sender": me, "receiver": me, "kind": "request", "payload_json": "{}"}
        return {"channel_record": pb.ChannelRecord(**(base | fields))}

    not_json = "is not JSON"
    too_deep = f"nests deeper than {MAX_JSON_DEPTH} levels"
    out: list[tuple[dict[str, Any], str]] = [
        (snap(process_id=me + "\x00"), "local snapshot for"),
        (snap(process_id=LONG), "local snapshot for"),
        (snap(process_id="normal:1'; --"), "local snapshot for"),
    ]
    for text, why in [
        *((value, not_json) for value in SQL),
        ('{"a": ', not_json),
        ("NaN", not_json),
        ('{"a": NaN}', not_json),
        ('{"a": Infinity}', not_json),
        ('{"a": -Infinity}', not_json),
        ('{"a": 1e999}', not_json),
        ('{"a": -1e400}', not_json),
        ('{"a": ' + "9" * 5000 + "}", not_json),
        ("a\x00b", not_json),
        ('{"a": 1}\x00', not_json),
        ("\ufeff{}", not_json),
        ("{" + '"a": {' * 100_000, too_deep),
        ("[" * 100_000 + "]" * 100_000, too_deep),
        ('{"a": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}", too_deep),
        ('"a string"', "not a JSON object"),
        ("[]", "not a JSON object"),
        ("null", "not a JSON object"),
    ]:
        out.append((snap(state_json=text), why))
    for text, why in [
        ("{}", "not a JSON list of task objects"),
        ("[1]", "not a JSON list of task objects"),
        ('[{"a": 1}, "x"]', "not a JSON list of task objects"),
        ("[[]]", "not a JSON list of task objects"),
        ('[{"a": NaN}]', not_json),
        (LONG, not_json),
    ]:
        out.append((snap(tasks_json=text), why))
    pools = {f"pool-{i}": i for i in range(MAX_WORKER_POOLS + 1)}
    out.append((snap(worker_pools=pools), f"more than {MAX_WORKER_POOLS}"))
    out += [
        (record(receiver=me + "\x00"), "record received by"),
        (record(receiver=LONG), "record received by"),
        *(
            (record(kind=value), "unknown message kind")
            for value in (*SQL, "REQUEST", "request\x00", "", LONG)
        ),
        *((record(payload_json=value), not_json) for value in (*SQL, "", "NaN", LONG_NUL)),
        (record(payload_json="[" * 100_000), too_deep),
        (record(payload_json='{"a": ' * 300 + "1" + "}" * 300), too_deep),
        *(
            ({"call_outcome": pb.CallOutcome(epoch=epoch, outcome=value)}, "unknown call outcome")
            for value in (*SQL, "FAILED", "", LONG)
        ),
    ]
    return out


def test_malformed_pieces_are_counted_invalid_logged_briefly_and_never_half_stored(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    rogue = world.register("rogue:1")
    expected: list[str] = []

    def pieces(epoch: int) -> list[dict[str, Any]]:
        refused = _refused_pieces(rogue, epoch)
        expected.extend(why for _, why in refused)
        reason = "gave up after sending rubbish"
        return [piece for piece, _ in refused] + [
            {"recording_stopped": pb.RecordingStopped(epoch=epoch, reason=reason)}
        ]

    before = world.client.status()["stats"]["events_invalid"]
    cut = world.snapshot({rogue: pieces})
    assert cut.status == "INCOMPLETE"
    assert rogue.process in cut.missing and rogue.process not in cut.states
    assert f"gave up after sending rubbish at {rogue.process}" in cut.reasons
    assert all(m.receiver != rogue.process for m in cut.in_transit)
    assert rows(world.db, "SELECT COUNT(*) FROM local_states WHERE process = ?", rogue.process) == [(0,)]
    status = world.client.status()
    assert status["stats"]["events_invalid"] - before == len(expected)
    (mine,) = [agent for agent in status["agents"] if agent["process"] == rogue.process]
    assert mine["events_invalid"] == len(expected)
    logged = invalid_logged(caplog)
    assert len(logged) == len(expected)
    for line, why in zip(logged, expected, strict=True):
        assert why in line, (line[:300], why)
        assert len(line) < 2000, f"a log line of {len(line)} characters"  # a megabyte is not logged whole
    # The stream is still good: the same process completes the next snapshot.
    nxt = world.snapshot()
    assert nxt.status == "COMPLETE" and rogue.process in nxt.states, nxt.reasons
    world.serves_and_holds_exactly()


@pytest.mark.parametrize("state_json", ['{"a": NaN}', '{"a": [1e999]}', "[" * 5000 + "]" * 5000])
def test_a_state_no_store_could_hold_does_not_hold_the_snapshot_up(world: World, state_json: str) -> None:
    """Such a state once passed as JSON and then failed when the cut was stored: the snapshot never ended."""
    rogue = world.register("rogue:1")

    def pieces(epoch: int) -> list[dict[str, Any]]:
        return [local(rogue, epoch, state_json=state_json)]

    cut = world.snapshot({rogue: pieces}, timeout=1.0)
    assert cut.status == "INCOMPLETE" and rogue.process in cut.missing
    assert world.client.status()["stats"]["events_invalid"] == 1
    world.serves_and_holds_exactly()


def test_a_correct_agent_never_sends_json_nested_deeper_than_the_collector_takes(world: World) -> None:
    deep: Any = 0
    for _ in range(MAX_JSON_DEPTH + 50):
        deep = {"d": deep}
    agent = world.agent("deep")
    agent.register_state("deep", lambda: deep)
    agent.register_state("plain", lambda: {"balance": 5})
    cut = world.snapshot()
    assert cut.status == "COMPLETE", cut.reasons
    marker = {"cutwatch_error": f"state nested deeper than {MAX_JSON_DEPTH - 1} levels"}
    assert cut.state_of(agent.process_id) == {"deep": marker, "plain": {"balance": 5}}
    # A recorded payload as deep: the record still settles its call, with a marker for a payload.
    key = MsgKey("a:1", 7, 0, REQUEST)
    record = ChannelRecord(3, "a:1", "b:1", json.dumps(deep), key, "/m")
    back = event_from_message(event_to_message(record, 1), "b:1")
    assert isinstance(back, ChannelRecord) and back.msg_key == key
    assert json.loads(back.payload_json) == {
        "cutwatch": "unrenderable",
        "error": f"nested deeper than {MAX_JSON_DEPTH} levels",
    }
    world.serves_and_holds_exactly()


def test_hostile_numbers_in_epochs_sequence_numbers_and_counters(world: World) -> None:
    rogue = world.register("rogue:1")

    def late() -> int:
        return int(world.client.status()["stats"]["events_late"])

    before = late()
    # Pieces of epochs that are not running are late, whatever their number.
    rogue.send(**local(rogue, 2**64 - 1))
    rogue.send(flushed=pb.Flushed(epoch=2**63))
    rogue.send(recording_stopped=pb.RecordingStopped(epoch=2**64 - 1, reason="x", dropped=2**64 - 1))
    rogue.send(call_outcome=pb.CallOutcome(epoch=2**62, call_id=2**64 - 1, outcome="failed", detail=LONG))
    rogue.send(
        channel_record=pb.ChannelRecord(
            epoch=0, sender="s", receiver=rogue.process, kind="response", payload_json="1"
        )
    )
    wait_until(lambda: late() - before == 5, "five late pieces to be counted")

    # Negative numbers on the wire (64-bit varints of -1) reach uint64 and uint32 fields as their maxima.
    def negative(epoch: int) -> list[dict[str, Any]]:
        snap = pb.LocalSnapshot(epoch=epoch, process_id=rogue.process).SerializeToString()
        snap += length_delimited(3, length_delimited(1, b"neg") + varint(2 << 3) + varint(-1))
        record = pb.ChannelRecord(
            epoch=epoch, sender=rogue.process, receiver=rogue.process, kind="request", payload_json="[]"
        ).SerializeToString()
        record += varint(7 << 3) + varint(-1) + varint(8 << 3) + varint(-1)
        for body in (length_delimited(3, snap), length_delimited(4, record)):
            rogue.seq += 1
            rogue.send_raw(body + varint(15 << 3) + varint(rogue.seq))
        return []

    cut = world.snapshot({rogue: negative})
    assert cut.status == "COMPLETE", cut.reasons
    assert cut.clocks[rogue.process] == {"neg": 2**64 - 1}
    (message,) = cut.in_transit
    assert (message.call_id, message.attempt) == (2**64 - 1, 2**32 - 1)
    assert rows(world.db, "SELECT call_id, attempt FROM channel_states WHERE epoch = ?", cut.epoch) == [
        (-1, 2**32 - 1)  # the unsigned id, bit for bit, as SQL BIGINT
    ]

    # A clock that claims to know more of another process than that process's own cut: the cut is
    # rejected whole (stored with no state of anyone), never stored in part.
    normal = world.normal.process_id

    def impossible(epoch: int) -> list[dict[str, Any]]:
        return [local(rogue, epoch, clock={normal: 2**64 - 1}, state_json='{"x": 1}')]

    cut = world.snapshot({rogue: impossible})
    assert cut.status == "INCOMPLETE" and cut.states == {} and cut.in_transit == ()
    assert any(reason.startswith("REJECTED") and normal in reason for reason in cut.reasons), cut.reasons
    assert rows(world.db, "SELECT COUNT(*) FROM local_states WHERE epoch = ?", cut.epoch) == [(0,)]

    # A heartbeat that owns up to 2**64 - 1 lost events, and a jump in sequence numbers: both lose the cut.
    def lost(epoch: int) -> list[dict[str, Any]]:
        return [local(rogue, epoch), {"heartbeat": pb.Heartbeat(unix_nanos=2**64 - 1, dropped=2**64 - 1)}]

    cut = world.snapshot({rogue: lost})
    assert cut.status == "INCOMPLETE"
    assert f"events lost on the way to the collector at {rogue.process}" in cut.reasons
    (mine,) = [a for a in world.client.status()["agents"] if a["process"] == rogue.process]
    assert mine["events_dropped"] == 2**64 - 1

    other = world.register("jumper:1")

    def jump(epoch: int) -> list[dict[str, Any]]:
        other.seq = 2**64 - 2
        return [local(other, epoch)]

    def first(epoch: int) -> list[dict[str, Any]]:
        return [{"flushed": pb.Flushed(epoch=0)}, local(other, epoch)]  # a late marker, then the piece

    world.snapshot({other: first, rogue: lambda epoch: [local(rogue, epoch)]})
    cut = world.snapshot({other: jump, rogue: lambda epoch: [local(rogue, epoch)]})
    assert cut.status == "INCOMPLETE"
    assert f"events lost on the way to the collector at {other.process}" in cut.reasons
    world.serves_and_holds_exactly()


# Bytes that are not UTF-8 ------------------------------------------------------------------------


def test_strings_that_are_not_utf8_are_refused_and_store_nothing(world: World) -> None:
    for surrogate in SURROGATES:  # a str may carry one, protobuf will not send it
        with pytest.raises(UnicodeEncodeError):
            pb.Registration(process_id=surrogate).SerializeToString()
        with pytest.raises(UnicodeEncodeError):
            pb.CutQuery(status=surrogate).SerializeToString()
    p = "\x02\x03\x04"  # a placeholder of 3 bytes, like the UTF-8 form of a surrogate
    bad_values = (b"\xed\xa0\x80", b"\xff\xfe\xfd", b"a\xc0b")
    registrations = [
        pb.AgentMessage(register=pb.Registration(process_id=p)),
        pb.AgentMessage(register=pb.Registration(process_id="u:1", service=p)),
        pb.AgentMessage(register=pb.Registration(process_id="u:1", worker_pools={p: 1})),
    ]
    for message in registrations:
        for bad in bad_values:
            raw = world.raw(with_bad_utf8(message, p, bad), "u:1")
            code, _ = raw.refusal()
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), code
            world.raws.remove(raw)
    assert world.live() == {world.normal.process_id}

    # Mid-stream: the stream ends, the process counts as gone, nothing of it is stored.
    for index, bad in enumerate(bad_values):
        rogue = world.register(f"u:{index}")

        def pieces(epoch: int, rogue: RawAgent = rogue, bad: bytes = bad) -> list[dict[str, Any]]:
            snap = pb.LocalSnapshot(epoch=epoch, process_id=rogue.process, state_json=p)
            message = pb.AgentMessage(seq=1, local_snapshot=snap)
            rogue.send_raw(with_bad_utf8(message, p, bad))
            return []

        cut = world.snapshot({rogue: pieces})
        assert cut.status == "INCOMPLETE" and rogue.process not in cut.states
        assert f"disconnected from the collector at {rogue.process}" in cut.reasons
        code, _ = rogue.refusal()
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), code
        world.raws.remove(rogue)

    # Queries: each string field, refused before any handler runs.
    for method, query, reply in [
        ("GetCut", pb.CutQuery(status=p), pb.CutReply),
        ("ListCuts", pb.ListQuery(status=p), pb.CutList),
        ("Results", pb.ResultsQuery(name=p), pb.ResultsReply),
    ]:
        call = world.channel.unary_unary(
            f"/cutwatch.v1.Collector/{method}",
            request_serializer=lambda b: b,
            response_deserializer=reply.FromString,
        )
        for bad in bad_values:
            with pytest.raises(grpc.RpcError) as caught:
                call(with_bad_utf8(query, p, bad), timeout=TIMEOUT)
            assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    world.serves_and_holds_exactly()


# Queries ---------------------------------------------------------------------------------------


def test_hostile_query_fields_are_answered_or_refused_and_change_nothing(world: World) -> None:
    first = world.snapshot()
    assert first.complete
    counts = row_counts(world.db)
    stub = world.stub
    for value in (*HOSTILE, "complete", "COMPLETE\x00", " COMPLETE"):
        for call, query in (
            (stub.GetCut, pb.CutQuery(status=value)),
            (stub.ListCuts, pb.ListQuery(status=value)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(query, timeout=TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "status must be COMPLETE or INCOMPLETE" in (caught.value.details() or "")
    for epoch in (*U64, 0):
        reply = stub.GetCut(pb.CutQuery(epoch=epoch), timeout=TIMEOUT)
        assert reply.found == (epoch in (0, first.epoch)), epoch
        if reply.found:
            assert Cut.loads(reply.cut_json) == first
        results = stub.Results(pb.ResultsQuery(epoch=epoch), timeout=TIMEOUT)
        assert results.found == (epoch in (0, first.epoch)), epoch
    for name in (*HOSTILE, LONG, LONG_NUL, "cutwatch.deadlock\x00", "cutwatch.%"):
        assert not stub.Results(pb.ResultsQuery(name=name), timeout=TIMEOUT).found
        assert not stub.Results(pb.ResultsQuery(epoch=first.epoch, name=name), timeout=TIMEOUT).found
    checked = stub.Results(pb.ResultsQuery(name="cutwatch.deadlock"), timeout=TIMEOUT)
    assert checked.found and checked.epoch == first.epoch
    for since, until in itertools.product(DOUBLES, DOUBLES):
        # 0 is no bound, and so is NaN (SQLite binds it as NULL); infinities are bounds like others.
        wanted = [first.epoch] if (
            (not since or math.isnan(since) or first.finished >= since)
            and (not until or math.isnan(until) or first.finished < until)
        ) else []  # fmt: skip
        try:
            reply = stub.ListCuts(pb.ListQuery(since=since, until=until), timeout=TIMEOUT)
        except grpc.RpcError as exc:  # refusing a NaN is as good as reading it as no bound
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and math.isnan(since) | math.isnan(until)
            continue
        assert [c["epoch"] for c in json.loads(reply.cuts_json)] == wanted, (since, until)
    for limit in (0, 1, 2**31, 2**32 - 1):
        listed = json.loads(stub.ListCuts(pb.ListQuery(limit=limit), timeout=TIMEOUT).cuts_json)
        assert [c["epoch"] for c in listed] == [first.epoch]
    assert row_counts(world.db) == counts
    # Any timeout a reader asks for gives a finished snapshot, never an error or a hang.
    for timeout in DOUBLES:
        reply = stub.Snapshot(pb.SnapshotRequest(timeout_seconds=timeout), timeout=TIMEOUT + 20)
        assert reply.found, timeout
        cut = Cut.loads(reply.cut_json)
        world.expected["cuts"] += 1
        world.expected["local_states"] += len(cut.states)
        world.expected["channel_states"] += len(cut.in_transit)
        world.expected["results"] += 1 if cut.complete else 0
    world.serves_and_holds_exactly()


@pytest.mark.parametrize("method", ["GetCut", "ListCuts"])
def test_a_megabyte_status_in_a_query_is_refused_as_invalid(world: World, method: str) -> None:
    query = pb.CutQuery(status=LONG) if method == "GetCut" else pb.ListQuery(status=LONG)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(world.stub, method)(query, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()[:200]
    world.serves_and_holds_exactly()


# The public API --------------------------------------------------------------------------------


def test_hostile_values_through_the_public_agent_api(world: World) -> None:
    for service in (*SQL, *NUL, *CONTROL_CHARS, "é😀", "x" * 101, "", LONG, *SURROGATES):
        with pytest.raises(ValueError):
            cutwatch.Agent(service)
    for instance in ("a b", "tab\there", "x" * 300, LONG, *SURROGATES):
        with pytest.raises(ValueError):
            cutwatch.Agent("svc", instance_id=instance)
    instances = ("x');DELETE/**/FROM/**/results;--", "a\x00b", '"OR"1"="1', "\x1b[31m", "é😀", "\\u0000")
    agents = [world.agent("svc", instance_id=instance, max_state_bytes=8 * MIB) for instance in instances]
    values: dict[str, object] = {
        **{f"v{i}": value for i, value in enumerate(HOSTILE)},
        "long": LONG,
        "surrogates": list(SURROGATES),
        "keys": {value: value for value in (*HOSTILE, *SURROGATES)},
    }
    lock_names = [*HOSTILE, *SURROGATES, LONG]
    for agent in agents:
        for name in ("'; DROP", "a\x00b", "", "x" * 101, *SURROGATES):
            with pytest.raises(ValueError):
                agent.register_state(name, dict)
        agent.register_state("hostile", lambda: values)
    holder = agents[0]
    held, release = threading.Event(), threading.Event()

    def hold_all() -> None:
        locks = [holder.lock(name) for name in lock_names]
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(TIMEOUT)
        for lock in reversed(locks):
            lock.release()

    thread = threading.Thread(target=hold_all, daemon=True)
    thread.start()
    try:
        assert held.wait(TIMEOUT)
        cut = world.snapshot()
    finally:
        release.set()
        thread.join(TIMEOUT)
    assert cut.status == "COMPLETE", cut.reasons
    for agent, instance in zip(agents, instances, strict=True):
        assert agent.process_id.startswith(f"svc:{instance}.")
        assert cut.state_of(agent.process_id) == {"hostile": values}
        row = stored_local(world, cut.epoch, agent.process_id)
        assert row["process"].encode() == agent.process_id.encode()
        assert json.loads(row["state"]) == {"hostile": values}
    (task,) = [t for t in cut.tasks[holder.process_id] if t.held_locks]
    assert list(task.held_locks) == lock_names
    world.serves_and_holds_exactly()


def test_a_deadlock_on_locks_with_hostile_names_is_found_and_stored(world: World) -> None:
    agent = world.normal
    first, second = "\ud800'; DROP TABLE results; --", "x'); DELETE FROM results; --\x00\udfff"
    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task[None]] = []

    async def cross(mine: str, theirs: str, holding: list[str], both: asyncio.Event) -> None:
        async with agent.lock(mine):
            holding.append(mine)
            if len(holding) == 2:
                both.set()
            await both.wait()
            async with agent.lock(theirs):
                pass

    async def start() -> None:
        holding: list[str] = []
        both = asyncio.Event()
        for pair in ((first, second), (second, first)):
            tasks.append(asyncio.create_task(cross(*pair, holding, both)))

    async def stop() -> None:  # a cancelled wait gives its lock up: the deadlock ends
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(TIMEOUT)
        wait_until(lambda: sum(bool(t.waiting_lock) for t in agent.tasks()) == 2, "both tasks to wait")
        cut = world.snapshot(results=1)  # a FAIL row for the deadlock instead of a PASS
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()
    assert cut.status == "COMPLETE", cut.reasons
    (deadlock,) = world.client.deadlocks()
    held = sorted(name for task in deadlock["tasks"] for name in task["held_locks"])
    assert held == sorted((first, second)), deadlock
    checked = world.client.results(cut.epoch)
    assert checked is not None
    (result,) = checked.results
    assert result.status == "FAIL"
    # The message is display text: SQLite holds only UTF-8, so its lone surrogates are escaped.
    assert "\\ud800'; DROP TABLE results; --" in result.message
    world.serves_and_holds_exactly()


# Random text --------------------------------------------------------------------------------------

_TEXT = st.text(
    st.characters(exclude_categories=()) | st.sampled_from("\x00\x01\x1b'\";-\\\ud800\udfff"), max_size=40
)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def test_random_text_in_identifiers_and_documents_is_stored_exactly(world: World) -> None:
    numbers = itertools.count(1)

    @settings(max_examples=60, deadline=None)
    @given(text=_TEXT, number=st.integers(1, 2**64 - 1))
    def one(text: str, number: int) -> None:
        n = next(numbers)
        plain = _utf8(text)
        ident = f"h{n}:{text}" if plain else f"h{n}:"
        if not plain:
            with pytest.raises(UnicodeEncodeError):
                pb.ChannelRecord(method=text).SerializeToString()
        rogue = world.register(ident, service=text if plain else "h")
        state = {"text": text, text: [text, number], "n": number}
        record = pb.ChannelRecord(
            sender=ident,
            receiver=ident,
            method=text if plain else "m",
            kind="request",
            payload_json=json.dumps({"text": text}),
            call_id=number,
        )

        def pieces(epoch: int) -> list[dict[str, Any]]:
            piece = pb.ChannelRecord()
            piece.CopyFrom(record)
            piece.epoch = epoch
            clock = {text: number} if plain else {}
            return [
                local(
                    rogue, epoch, state_json=json.dumps(state), clock=clock, worker_pools=clock and {text: 1}
                ),
                {"channel_record": piece},
            ]

        cut = world.snapshot({rogue: pieces})
        assert cut.status == "COMPLETE", cut.reasons
        assert cut.state_of(ident) == state
        assert cut.states[ident]["service"] == (text if plain else "h")
        (message,) = cut.in_transit
        assert (message.sender, message.method, message.call_id, message.payload) == (
            ident, record.method, number, {"text": text},
        )  # fmt: skip
        row = stored_local(world, cut.epoch, ident)
        assert row["state"] == canonical(state)
        if plain:
            assert (row["service"], json.loads(row["clock"])) == (text, {text: number})
        world.drop(rogue)
        wait_until(lambda: ident not in world.live(), "the example's agent to leave")

    one()
    tried = next(numbers) - 1
    assert tried >= 60
    world.serves_and_holds_exactly()
