"""Snapshot events to and from the control stream's protobuf messages.

The agent converts on its background thread, never on the request path. The
collector converts what arrives from the network and trusts none of it: the
sender is the process the stream registered as, whatever the message claims,
and anything malformed raises :class:`EventFormatError` for the collector to
count and drop.
"""

from __future__ import annotations

import json

from cutwatch.agent._clock import VectorClock
from cutwatch.agent._snapshot import (
    OUTCOME_FAILED,
    OUTCOME_UNSTAMPED,
    REQUEST,
    RESPONSE,
    Answering,
    CallOutcome,
    ChannelRecord,
    Flushed,
    LocalSnapshot,
    MsgKey,
    OpenCall,
    RecordingStopped,
    SnapshotEvent,
)
from cutwatch.agent.exceptions import CutwatchError
from cutwatch.proto import collector_pb2 as pb

__all__ = ["EventFormatError", "event_from_message", "event_to_message"]

_KINDS = frozenset((REQUEST, RESPONSE))
_OUTCOMES = frozenset((OUTCOME_FAILED, OUTCOME_UNSTAMPED))


class EventFormatError(CutwatchError):
    """A control-stream message that no correct agent sends."""


def event_to_message(event: SnapshotEvent, seq: int) -> pb.AgentMessage:
    if isinstance(event, LocalSnapshot):
        return pb.AgentMessage(
            seq=seq,
            local_snapshot=pb.LocalSnapshot(
                epoch=event.epoch,
                process_id=event.process,
                clock=dict(event.clock),
                state_json=json.dumps(event.state, sort_keys=True, allow_nan=False),
                tasks_json=json.dumps(event.tasks, sort_keys=True, allow_nan=False),
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
                payload_json=event.payload_json,
                call_id=key.call_id,
                attempt=key.attempt,
            ),
        )
    if isinstance(event, CallOutcome):
        return pb.AgentMessage(
            seq=seq,
            call_outcome=pb.CallOutcome(
                epoch=event.epoch, call_id=event.call_id, outcome=event.outcome, detail=event.detail
            ),
        )
    if isinstance(event, Flushed):
        return pb.AgentMessage(seq=seq, flushed=pb.Flushed(epoch=event.epoch))
    return pb.AgentMessage(
        seq=seq,
        recording_stopped=pb.RecordingStopped(epoch=event.epoch, reason=event.reason, dropped=event.dropped),
    )


def _json(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise EventFormatError(f"{what} is not JSON: {exc}") from None


def event_from_message(message: pb.AgentMessage, process: str) -> SnapshotEvent | None:
    """The snapshot event in ``message`` from registered process ``process``; None for other bodies."""
    body = message.WhichOneof("body")
    if body == "local_snapshot":
        snap = message.local_snapshot
        if snap.process_id != process:
            raise EventFormatError(f"local snapshot for {snap.process_id!r} on the stream of {process!r}")
        tasks = _json(snap.tasks_json or "[]", "tasks_json")
        return LocalSnapshot(
            epoch=snap.epoch,
            process=process,
            clock=VectorClock(dict(snap.clock)),
            state=_json(snap.state_json or "{}", "state_json"),
            tasks=tasks,
            open_calls=tuple(OpenCall(c.call_id, c.method, c.target, c.failed) for c in snap.open_calls),
            answering=tuple(Answering(a.caller, a.call_id) for a in snap.answering),
            requests_sent=snap.requests_sent,
            responses_sent=dict(snap.responses_sent),
            requests_consumed=dict(snap.requests_consumed),
            responses_consumed=dict(snap.responses_consumed),
            worker_pools=dict(list(snap.worker_pools.items())[:256]),
        )
    if body == "channel_record":
        rec = message.channel_record
        if rec.receiver != process:
            raise EventFormatError(f"record received by {rec.receiver!r} on the stream of {process!r}")
        if rec.kind not in _KINDS:
            raise EventFormatError(f"unknown message kind {rec.kind!r}")
        _json(rec.payload_json, "payload_json")
        return ChannelRecord(
            rec.epoch,
            rec.sender,
            process,
            rec.payload_json,
            MsgKey(rec.sender, rec.call_id, rec.attempt, rec.kind),
            rec.method,
        )
    if body == "call_outcome":
        out = message.call_outcome
        if out.outcome not in _OUTCOMES:
            raise EventFormatError(f"unknown call outcome {out.outcome!r}")
        return CallOutcome(out.epoch, process, out.call_id, out.outcome, out.detail)
    if body == "flushed":
        return Flushed(message.flushed.epoch, process)
    if body == "recording_stopped":
        stop = message.recording_stopped
        return RecordingStopped(stop.epoch, process, stop.reason or "recording stopped", stop.dropped)
    return None
