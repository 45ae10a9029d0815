"""What one agent may cost the collector, so that a broken or hostile agent cannot starve the rest.

Each agent's stream is metered by two token buckets, one for messages and
one for bytes. A bucket holds ``burst_seconds`` of its rate, so a snapshot's
burst of channel records passes while a flood that lasts does not. An agent
over a limit has its stream ended with RESOURCE_EXHAUSTED; it reconnects
after its backoff, and the events it lost show as a gap that makes the
affected cuts INCOMPLETE. Other agents are not touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["AgentMeter", "CollectorLimits"]


@dataclass(frozen=True)
class CollectorLimits:
    """The collector's limits; the defaults fit hundreds of agents on one machine.

    ``max_agents``: control streams open at once (more get RESOURCE_EXHAUSTED).
    ``max_message_bytes``: one message from an agent, a local snapshot with
    its states (gRPC refuses larger ones with RESOURCE_EXHAUSTED).
    ``agent_events_per_second`` and ``agent_bytes_per_second``: sustained
    rates of one agent's stream, with bursts of ``burst_seconds`` of them.
    """

    max_agents: int = 256
    max_message_bytes: int = 16 * 1024 * 1024
    agent_events_per_second: float = 20_000.0
    agent_bytes_per_second: float = 32 * 1024 * 1024
    burst_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.max_agents < 1:
            raise ValueError("max_agents must be at least 1")
        if self.max_message_bytes < 64 * 1024:
            raise ValueError("max_message_bytes must be at least 64 KiB")
        if min(self.agent_events_per_second, self.agent_bytes_per_second, self.burst_seconds) <= 0:
            raise ValueError("agent rates and burst_seconds must be positive")


class _Bucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.capacity = rate * burst
        self.level = self.capacity
        self.updated = time.monotonic()

    def take(self, amount: float, now: float) -> bool:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if amount > self.level:
            return False
        self.level -= amount
        return True


class AgentMeter:
    """The two buckets of one agent's stream; used by its reader thread only."""

    def __init__(self, limits: CollectorLimits) -> None:
        self._limits = limits
        self._events = _Bucket(limits.agent_events_per_second, limits.burst_seconds)
        self._bytes = _Bucket(limits.agent_bytes_per_second, limits.burst_seconds)

    def admit(self, size: int) -> str | None:
        """None when a message of ``size`` bytes fits; otherwise why not, in words for the agent's log."""
        now = time.monotonic()
        if not self._events.take(1, now):
            return (
                f"more than {self._limits.agent_events_per_second:g} messages per second "
                f"(bursts of {self._limits.burst_seconds:g} s); the collector's limit is "
                "--agent-events-per-second"
            )
        if not self._bytes.take(size, now):
            return (
                f"more than {self._limits.agent_bytes_per_second:g} bytes per second "
                f"(bursts of {self._limits.burst_seconds:g} s); the collector's limit is "
                "--agent-bytes-per-second"
            )
        return None
