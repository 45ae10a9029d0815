"""Handles of calls in flight: what the interceptors hold between a call's two events."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cutwatch.core._tasks import OutboundCall, Task

if TYPE_CHECKING:
    import contextvars


__all__ = ["REFUSED", "ChannelPeer", "Inbound", "Outbound", "Refused"]


class ChannelPeer:
    """What a client knows of the process behind its channel.

    ``uninstrumented``: the application says the channel leads to a service
    without an agent, so that its answers without a stamp are expected; on
    any other channel such an answer may have lost its stamp on the way and
    counts as an untracked change.
    """

    __slots__ = ("server", "uninstrumented")

    def __init__(self, *, uninstrumented: bool = False) -> None:
        self.server: str | None = None
        self.uninstrumented = uninstrumented


class Outbound:
    """One outbound call in flight, from stamp to response."""

    __slots__ = ("call", "channel", "finished", "finishing", "task")

    def __init__(self, call: OutboundCall, task: Task, channel: ChannelPeer) -> None:
        self.call = call
        self.task = task
        self.channel = channel
        self.finished = False
        # Held while the response is delivered: a second finisher (the
        # done-callback racing the caller) waits until the clock is merged.
        self.finishing = threading.Lock()


class Inbound:
    """One inbound call being handled: its task and context binding."""

    __slots__ = ("bounced", "caller", "finished", "task", "token")

    def __init__(self, task: Task, caller: str | None) -> None:
        self.task = task
        self.caller = caller
        self.finished = False
        self.bounced = False
        """The handler failed before consuming the request: its answer's stamp goes under
        ``BOUNCED_STAMP_METADATA_KEY``."""
        self.token: contextvars.Token[Task | None] | None = None


class Refused:
    """What ``ProcessCore.begin_handler`` returns for a request it must not deliver."""

    __slots__ = ()

    reason = "cutwatch: the caller gave this call up and a snapshot fenced it; it was not run"

    def __repr__(self) -> str:
        return "REFUSED"


REFUSED = Refused()
