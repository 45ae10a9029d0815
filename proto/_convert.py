"""The one conversion between the collector service's protobuf messages and core records.

Snapshot events, registrations, heartbeats and orders cross the agent's
control stream as ``collector.proto`` messages; everything on either side of
the stream sees only the records of :mod:`cutwatch.core`.

The agent converts on its background thread, never on the request path. The
collector converts what arrives from the network and trusts none of it: the
sender is the process the stream registered as, whatever the message claims,
and anything malformed raises :class:`EventFormatError` for the collector to
count and drop. JSON fields are held to what the store and every reader of a
cut can take back: standard JSON (no NaN or Infinity), nested at most
:data:`MAX_JSON_DEPTH` levels, states as objects and tasks as lists of
objects. A document that parsed here but failed later, when the cut is
stored or read, would lose the whole cut rather than one agent's piece. The
agent's side keeps to the same bounds: a state value or payload nested deeper
goes as an error marker, so a correct agent never sends what is refused here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from cutwatch.core import (
    CLIENT,
    OUTCOME_BOUNCED,
    OUTCOME_FAILED,
    OUTCOME_UNSTAMPED,
    REQUEST,
    RESPONSE,
    SERVER,
    AgentEvent,
    Answering,
    Bounced,
    CallOutcome,
    ChannelRecord,
    CloseEpoch,
    EventFormatError,
    Flush,
    Flushed,
    Goodbye,
    Heartbeat,
    Invalid,
    LocalSnapshot,
    MsgKey,
    OpenCall,
    Order,
    RecordedEvent,
    RecordingStopped,
    Registered,
    Registration,
    SnapshotEvent,
    StreamCount,
    TakeSnapshot,
    TaskView,
    VectorClock,
    shown,
)
from cutwatch.proto import collector_pb2 as pb

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_WORKER_POOLS",
    "agent_message_from_pb",
    "event_from_message",
    "event_to_message",
    "heartbeat_to_pb",
    "order_from_pb",
    "order_to_pb",
    "registration_from_pb",
    "registration_to_pb",
]

_KINDS = frozenset((REQUEST, RESPONSE))
_OUTCOMES = frozenset((OUTCOME_BOUNCED, OUTCOME_FAILED, OUTCOME_UNSTAMPED))
MAX_JSON_DEPTH = 200
"""Nesting of a JSON field; far below Python's recursion limit, which a stored cut's readers share."""
MAX_WORKER_POOLS = 256
"""Worker pools of one local snapshot (one per instrumented server)."""
_SHOWN = 100


def event_to_message(event: SnapshotEvent, seq: int) -> pb.AgentMessage:
    if isinstance(event, LocalSnapshot):
        return pb.AgentMessage(
            seq=seq,
            local_snapshot=pb.LocalSnapshot(
                epoch=event.epoch,
                process_id=event.process,
                clock=dict(event.clock),
                state_json=_state_json(event.state),
                tasks_json=json.dumps(
                    [task.to_json() for task in event.tasks], sort_keys=True, allow_nan=False
                ),
                open_calls=[
                    pb.OpenCall(call_id=c.call_id, method=c.method, target=c.target, failed=c.failed)
                    for c in event.open_calls
                ],
                answering=[pb.Answering(caller=a.caller, call_id=a.call_id) for a in event.answering],
                requests_sent=event.requests_sent,
                responses_sent=dict(event.responses_sent),
                requests_consumed=dict(event.requests_consumed),
                responses_consumed=dict(event.responses_consumed),
                worker_pools=dict(event.worker_pools),
                untracked_changes=event.untracked_changes,
                streams=[
                    pb.StreamCount(
                        caller=s.caller,
                        call_id=s.call_id,
                        role=s.role,
                        method=s.method,
                        requests=s.requests,
                        responses=s.responses,
                    )
                    for s in event.streams
                ],
                state_missing=event.state_missing,
                recorded=[
                    pb.RecordedEvent(
                        seq=e.seq,
                        clock=dict(e.clock),
                        values_json=json.dumps(dict(e.values), sort_keys=True, allow_nan=False),
                    )
                    for e in event.recorded
                ],
                recorded_through=event.recorded_through,
            ),
        )
    if isinstance(event, ChannelRecord):
        key = event.msg_key
        return pb.AgentMessage(
            seq=seq,
            channel_record=pb.ChannelRecord(
                epoch=event.epoch,
                sender=event.sender,
                receiver=event.receiver,
                method=event.method,
                kind=key.kind,
                payload_json=_payload_json(event.payload_json),
                call_id=key.call_id,
                attempt=key.attempt,
                index=key.position,
            ),
        )
    if isinstance(event, CallOutcome):
        return pb.AgentMessage(
            seq=seq,
            call_outcome=pb.CallOutcome(
                epoch=event.epoch, call_id=event.call_id, outcome=event.outcome, detail=event.detail
            ),
        )
    if isinstance(event, Bounced):
        key = event.msg_key
        return pb.AgentMessage(
            seq=seq,
            bounced=pb.Bounced(
                epoch=event.epoch, sender=key.sender, call_id=key.call_id, attempt=key.attempt
            ),
        )
    if isinstance(event, Flushed):
        return pb.AgentMessage(
            seq=seq,
            flushed=pb.Flushed(
                epoch=event.epoch, round=event.round, untracked_changes=event.untracked_changes
            ),
        )
    return pb.AgentMessage(
        seq=seq,
        recording_stopped=pb.RecordingStopped(epoch=event.epoch, reason=event.reason, dropped=event.dropped),
    )


def _state_json(state: object) -> str:
    """The state as JSON; a provider's value nested deeper than the collector takes becomes an error
    marker (as one too large does), so that the rest of the local snapshot still counts."""
    text = json.dumps(state, sort_keys=True, allow_nan=False)
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH or not isinstance(state, dict):
        return text
    marker = {"cutwatch_error": f"state nested deeper than {MAX_JSON_DEPTH - 1} levels"}
    shallow = {name: marker if _depth(value) >= MAX_JSON_DEPTH else value for name, value in state.items()}
    return json.dumps(shallow, sort_keys=True, allow_nan=False)


def _payload_json(text: str) -> str:
    """A recorded payload, or a marker when it nests deeper than the collector takes."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return text
    try:
        deep = _depth(json.loads(text)) > MAX_JSON_DEPTH
    except (ValueError, RecursionError):
        deep = True
    if not deep:
        return text
    return json.dumps({"cutwatch": "unrenderable", "error": f"nested deeper than {MAX_JSON_DEPTH} levels"})


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {shown(text, _SHOWN)!r} is out of range")
    return value


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not standard JSON")


def _json(text: str, what: str) -> object:
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except ValueError as exc:
        raise EventFormatError(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        raise EventFormatError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    # Depth is at most the number of brackets; only a document with many needs walking.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise EventFormatError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: object) -> int:
    """Levels of containers in a parsed document, walked without recursion (it may be very deep)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _recorded(events: Iterable[pb.RecordedEvent], through: int) -> tuple[RecordedEvent, ...]:
    """Recorded state changes, numbered below ``through`` and in order (the collector finds gaps)."""
    found: list[RecordedEvent] = []
    for e in events:
        values = _json(e.values_json or "{}", "values_json")
        if not isinstance(values, dict):
            raise EventFormatError("a recorded event's values_json is not a JSON object")
        if e.seq >= through or (found and e.seq <= found[-1].seq):
            raise EventFormatError(f"recorded event {e.seq} out of order (recorded through {through})")
        found.append(RecordedEvent(e.seq, VectorClock(dict(e.clock)), values))
    return tuple(found)


def _stream_count(message: pb.StreamCount) -> StreamCount:
    if message.role not in (CLIENT, SERVER):
        raise EventFormatError(
            f"a stream end's role is client or server, not {shown(message.role, _SHOWN)!r}"
        )
    return StreamCount(
        message.caller, message.call_id, message.role, message.method, message.requests, message.responses
    )


def event_from_message(message: pb.AgentMessage, process: str) -> SnapshotEvent | None:
    """The snapshot event in ``message`` from registered process ``process``; None for other bodies."""
    body = message.WhichOneof("body")
    if body == "local_snapshot":
        snap = message.local_snapshot
        if snap.process_id != process:
            raise EventFormatError(
                f"local snapshot for {shown(snap.process_id, _SHOWN)!r} "
                f"on the stream of {shown(process, _SHOWN)!r}"
            )
        state = _json(snap.state_json or "{}", "state_json")
        if not isinstance(state, dict):
            raise EventFormatError("state_json is not a JSON object of states by provider name")
        tasks = _tasks(_json(snap.tasks_json or "[]", "tasks_json"))
        if len(snap.worker_pools) > MAX_WORKER_POOLS:
            raise EventFormatError(f"{len(snap.worker_pools)} worker pools, more than {MAX_WORKER_POOLS}")
        return LocalSnapshot(
            epoch=snap.epoch,
            process=process,
            clock=VectorClock(dict(snap.clock)),
            state=state,
            tasks=tasks,
            open_calls=tuple(OpenCall(c.call_id, c.method, c.target, c.failed) for c in snap.open_calls),
            answering=tuple(Answering(a.caller, a.call_id) for a in snap.answering),
            requests_sent=snap.requests_sent,
            responses_sent=dict(snap.responses_sent),
            requests_consumed=dict(snap.requests_consumed),
            responses_consumed=dict(snap.responses_consumed),
            worker_pools=dict(snap.worker_pools),
            untracked_changes=snap.untracked_changes,
            streams=tuple(_stream_count(s) for s in snap.streams),
            state_missing=snap.state_missing,
            recorded=_recorded(snap.recorded, snap.recorded_through),
            recorded_through=snap.recorded_through,
        )
    if body == "channel_record":
        rec = message.channel_record
        if rec.receiver != process:
            raise EventFormatError(
                f"record received by {shown(rec.receiver, _SHOWN)!r} "
                f"on the stream of {shown(process, _SHOWN)!r}"
            )
        if rec.kind not in _KINDS:
            raise EventFormatError(f"unknown message kind {shown(rec.kind, _SHOWN)!r}")
        _json(rec.payload_json, "payload_json")
        return ChannelRecord(
            rec.epoch,
            rec.sender,
            process,
            rec.payload_json,
            MsgKey(rec.sender, rec.call_id, rec.attempt, rec.kind, rec.index),
            rec.method,
        )
    if body == "call_outcome":
        out = message.call_outcome
        if out.outcome not in _OUTCOMES:
            raise EventFormatError(f"unknown call outcome {shown(out.outcome, _SHOWN)!r}")
        return CallOutcome(out.epoch, process, out.call_id, out.outcome, out.detail)
    if body == "bounced":
        bounced = message.bounced
        return Bounced(
            bounced.epoch, process, MsgKey(bounced.sender, bounced.call_id, bounced.attempt, REQUEST)
        )
    if body == "flushed":
        flushed = message.flushed
        return Flushed(flushed.epoch, process, flushed.round, flushed.untracked_changes)
    if body == "recording_stopped":
        stop = message.recording_stopped
        return RecordingStopped(stop.epoch, process, stop.reason or "recording stopped", stop.dropped)
    return None


def _tasks(value: object) -> tuple[TaskView, ...]:
    if not isinstance(value, list) or not all(isinstance(task, dict) for task in value):
        raise EventFormatError("tasks_json is not a JSON list of task objects")
    try:
        return tuple(TaskView.from_json(task) for task in value)
    except ValueError as exc:
        raise EventFormatError(f"tasks_json holds a task that is not one: {exc}") from None


def agent_message_from_pb(message: pb.AgentMessage, process: str) -> tuple[int, AgentEvent | None]:
    """The sequence number and body of one message on ``process``'s stream.

    The body is None for what carries nothing to act on (an empty message, a
    second registration); a message no correct agent sends becomes
    :class:`~cutwatch.core.Invalid`, for the coordinator to count and drop.
    """
    body = message.WhichOneof("body")
    if body == "heartbeat":
        return message.seq, Heartbeat(message.heartbeat.dropped)
    if body == "goodbye":
        return message.seq, Goodbye()
    if body is None or body == "register":
        return message.seq, None
    try:
        return message.seq, event_from_message(message, process)
    except EventFormatError as exc:
        return message.seq, Invalid(str(exc))


def heartbeat_to_pb(heartbeat: Heartbeat, unix_nanos: int) -> pb.AgentMessage:
    return pb.AgentMessage(heartbeat=pb.Heartbeat(unix_nanos=unix_nanos, dropped=heartbeat.dropped))


def registration_to_pb(registration: Registration) -> pb.AgentMessage:
    return pb.AgentMessage(
        register=pb.Registration(
            process_id=registration.process_id,
            service=registration.service,
            protocol_version=registration.protocol_version,
            worker_pools=dict(registration.worker_pools),
            epoch=registration.epoch,
            dropped=registration.dropped,
            untracked_changes=registration.untracked_changes,
        )
    )


def registration_from_pb(message: pb.Registration) -> Registration:
    return Registration(
        process_id=message.process_id,
        service=message.service,
        protocol_version=message.protocol_version,
        worker_pools=dict(message.worker_pools),
        epoch=message.epoch,
        dropped=message.dropped,
        untracked_changes=message.untracked_changes,
    )


def order_to_pb(order: Order) -> pb.ControlMessage:
    if isinstance(order, TakeSnapshot):
        return pb.ControlMessage(take_snapshot=pb.TakeSnapshot(epoch=order.epoch))
    if isinstance(order, Flush):
        fence = [pb.CallRef(caller=caller, call_id=call_id) for caller, call_id in order.fence]
        return pb.ControlMessage(flush=pb.Flush(epoch=order.epoch, round=order.round, fence=fence))
    if isinstance(order, CloseEpoch):
        return pb.ControlMessage(close_epoch=pb.CloseEpoch(epoch=order.epoch, forget=order.forget))
    return pb.ControlMessage(registered=pb.Registered(epoch=order.epoch))


def order_from_pb(message: pb.ControlMessage) -> Order | None:
    """The order in ``message``; None for a kind this agent does not know (a newer collector's)."""
    body = message.WhichOneof("body")
    if body == "take_snapshot":
        return TakeSnapshot(message.take_snapshot.epoch)
    if body == "flush":
        flush = message.flush
        return Flush(flush.epoch, flush.round, tuple((ref.caller, ref.call_id) for ref in flush.fence))
    if body == "close_epoch":
        return CloseEpoch(message.close_epoch.epoch, tuple(message.close_epoch.forget))
    if body == "registered":
        return Registered(message.registered.epoch)
    return None
