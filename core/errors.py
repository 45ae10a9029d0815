"""Every error cutwatch raises, in one tree.

    CutwatchError
    ├── StampError                  a stamp could not be decoded or breaks a limit
    ├── AgentStateError             the agent was used in a state that does not allow it
    ├── EventFormatError            a control-stream message that no correct agent sends
    ├── AssemblyError               a snapshot's pieces contradict each other
    │   ├── InconsistentCutError    the vector clocks show a process knowing too much
    │   └── ProtocolViolationError  pieces a correct participant cannot produce
    ├── NoAgentsError               a snapshot was asked for while no agent is registered
    ├── StorageError                the store failed or refused a value
    │   └── DuplicateEpochError     a cut of that epoch is stored already
    ├── CollectorError              a query to the collector failed
    │   ├── CollectorUnavailableError   the collector cannot be reached
    │   └── CollectorAuthError          the collector refused the credentials
    ├── SecurityConfigError         tokens or certificates cannot be used (also a ValueError)
    ├── PredicateLoadError          a predicate source failed to load
    ├── PredicateWorkerError        the predicate worker process failed
    └── SubsetError                 a lattice invariant left the symbolic subset (also a TypeError)

None of these ever reaches an application RPC: the agent's interceptors
catch them, count them and let the call through. Every class is re-exported
by ``cutwatch``.
"""

from __future__ import annotations

__all__ = [
    "AgentStateError",
    "AssemblyError",
    "CollectorAuthError",
    "CollectorError",
    "CollectorUnavailableError",
    "CutwatchError",
    "DuplicateEpochError",
    "EventFormatError",
    "InconsistentCutError",
    "NoAgentsError",
    "PredicateLoadError",
    "PredicateWorkerError",
    "ProtocolViolationError",
    "SecurityConfigError",
    "StampError",
    "StorageError",
    "SubsetError",
]


class CutwatchError(Exception):
    """Base class of every error cutwatch raises."""


class StampError(CutwatchError):
    """A stamp is malformed, from an unsupported version, or over a limit."""


class AgentStateError(CutwatchError):
    """The agent was asked for something its current state does not allow."""


class EventFormatError(CutwatchError):
    """A control-stream message that no correct agent sends."""


class AssemblyError(CutwatchError):
    """A snapshot's pieces contradict each other; the cut is rejected."""


class InconsistentCutError(AssemblyError):
    """The vector clocks show a process knowing of events after another's cut."""


class ProtocolViolationError(AssemblyError):
    """Pieces that a correct participant cannot produce."""


class NoAgentsError(CutwatchError):
    """A snapshot was asked for while no agent is registered."""


class StorageError(CutwatchError):
    """The store cannot do what was asked: closed, corrupt, newer schema, or a failed write."""


class DuplicateEpochError(StorageError):
    """A cut with this epoch is already stored; epochs are unique and cuts are never overwritten."""


class CollectorError(CutwatchError):
    """The collector refused or failed a request; the message says what to do."""


class CollectorUnavailableError(CollectorError):
    """The collector cannot be reached at the address given."""


class CollectorAuthError(CollectorError):
    """The collector refused the call's credentials: no token, a wrong one, or one of the wrong role."""


class SecurityConfigError(CutwatchError, ValueError):
    """A certificate, key or token cannot be used as given; the message says which and why."""


class PredicateLoadError(CutwatchError):
    """The predicates could not be loaded; ``source`` and ``line`` say where (line may be None)."""

    def __init__(self, source: str, line: int | None, reason: str, details: str = "") -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason
        self.details = details
        """The traceback, when user code raised."""


class PredicateWorkerError(CutwatchError):
    """The worker could not be started, or stopped answering (inside the engine: becomes ERRORs)."""


class SubsetError(CutwatchError, TypeError):
    """A lattice invariant used what needs a concrete value (``and``, ``if``, a product of two state
    values): the message says what to write instead. Raised when the collector loads it."""
