"""The collector: registers agents, runs snapshots, assembles and stores cuts, answers queries.

Run one with ``cutwatch collector`` or :class:`CollectorServer`; read it
with :class:`CollectorClient`::

    with CollectorServer("cuts.db", every=5.0) as server:
        cut = CollectorClient(server.address).snapshot(timeout=10.0)
"""

from cutwatch.collector._client import CheckResult, CheckResults, CollectorClient, CutInfo
from cutwatch.collector._coordinator import Coordinator
from cutwatch.collector._limits import CollectorLimits
from cutwatch.collector._records import (
    CutStatus,
    CutSummary,
    StoredChannelState,
    StoredCut,
    StoredLocalState,
    StoredResult,
)
from cutwatch.collector._retention import PruneReport, Retention, prune_store
from cutwatch.collector._service import DEFAULT_LISTEN, CollectorServer
from cutwatch.collector._sqlite import SqliteCutStore
from cutwatch.collector._store import CutStore, Pruned
from cutwatch.core import (
    CollectorAuthError,
    CollectorError,
    CollectorUnavailableError,
    Cut,
    DuplicateEpochError,
    InTransitMessage,
    NoAgentsError,
    StorageError,
)

__all__ = [
    "DEFAULT_LISTEN",
    "CheckResult",
    "CheckResults",
    "CollectorAuthError",
    "CollectorClient",
    "CollectorError",
    "CollectorLimits",
    "CollectorServer",
    "CollectorUnavailableError",
    "Coordinator",
    "Cut",
    "CutInfo",
    "CutStatus",
    "CutStore",
    "CutSummary",
    "DuplicateEpochError",
    "InTransitMessage",
    "NoAgentsError",
    "PruneReport",
    "Pruned",
    "Retention",
    "SqliteCutStore",
    "StorageError",
    "StoredChannelState",
    "StoredCut",
    "StoredLocalState",
    "StoredResult",
    "prune_store",
]
