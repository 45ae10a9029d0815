"""What a process counts about its own events: a frozen copy to read, a mutable twin to update."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Counters", "ProcessStats"]


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """Counters of one process's events, as one consistent copy."""

    requests_sent: int = 0
    requests_received: int = 0
    responses_sent: int = 0
    responses_received: int = 0
    untracked_missing: int = 0
    """Messages that arrived without a stamp (uninstrumented peers)."""
    untracked_malformed: int = 0
    """Messages whose stamp failed to decode or broke a limit."""
    unresolved_entries: int = 0
    """Clock entries skipped because their process id was not known yet."""
    stamps_degraded: int = 0
    """Stamps cut short to fit the size limit."""
    clock_entries_refused: int = 0
    """New process ids not added because the clock is at ``max_clock_entries``."""
    internal_errors: int = 0
    """Failures inside cutwatch itself, caught before the application saw them."""
    snapshots_taken: int = 0
    snapshots_skipped: int = 0
    """Snapshots given up because they were due inside an ``atomic()`` block of the same thread."""
    snapshots_without_state: int = 0
    """Snapshots taken without the application state: an ``atomic()`` block held the snapshot lock
    past ``atomic_timeout`` (their cuts are INCOMPLETE, their tasks show who holds and waits)."""
    state_errors: int = 0
    """State providers that raised, returned non-JSON or too much; their value is an error marker."""
    requests_refused: int = 0
    """Requests not run because their caller gave them up and a snapshot fenced them."""
    untracked_changes: int = 0
    """State changes no cut can place: ``atomic()`` blocks of handlers whose request came without a
    stamp, and answers without a usable stamp on a channel known to lead to an agent."""
    stream_ends_closed: int = 0
    """Ends of streaming calls closed here (each still listed, with its final counts, in the next two
    local snapshots)."""
    calls_queued: int = 0
    """Calls recorded as they reached a server whose workers were all busy (see ``ProcessCore.arrive``)."""
    queued_calls_dropped: int = 0
    """Queued calls no longer listed before a worker took them: dropped by gRPC (cancelled while queued),
    or past the bound on queued calls."""
    changes_recorded: int = 0
    """State changes recorded for lattice predicates (``register_state(..., record=True)``)."""
    changes_dropped: int = 0
    """Recorded state changes dropped because the buffer was full between two local snapshots: the
    window they fall in cannot be decided (its answer is unknown)."""

    @property
    def untracked(self) -> int:
        return self.untracked_missing + self.untracked_malformed


class Counters:
    """Mutable twin of :class:`ProcessStats`; updated under the process's event lock."""

    requests_sent: int
    requests_received: int
    responses_sent: int
    responses_received: int
    untracked_missing: int
    untracked_malformed: int
    unresolved_entries: int
    stamps_degraded: int
    clock_entries_refused: int
    internal_errors: int
    snapshots_taken: int
    snapshots_skipped: int
    snapshots_without_state: int
    state_errors: int
    requests_refused: int
    untracked_changes: int
    stream_ends_closed: int
    calls_queued: int
    queued_calls_dropped: int
    changes_recorded: int
    changes_dropped: int

    def __init__(self) -> None:
        for f in fields(ProcessStats):
            setattr(self, f.name, 0)

    def freeze(self) -> ProcessStats:
        return ProcessStats(**{f.name: getattr(self, f.name) for f in fields(ProcessStats)})
