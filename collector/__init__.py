"""The collector: registers agents, runs snapshots, assembles and stores cuts, answers queries.

Run one with ``cutwatch collector`` or :class:`CollectorServer`; read it
with :class:`CollectorClient`.
"""

from cutwatch.collector._client import (
    CheckResult,
    CheckResults,
    CollectorAuthError,
    CollectorClient,
    CollectorError,
    CollectorUnavailableError,
    CutInfo,
)
from cutwatch.collector._cut import Cut, InTransitMessage
from cutwatch.collector._service import DEFAULT_LISTEN, CollectorServer

__all__ = [
    "DEFAULT_LISTEN",
    "CheckResult",
    "CheckResults",
    "CollectorAuthError",
    "CollectorClient",
    "CollectorError",
    "CollectorServer",
    "CollectorUnavailableError",
    "Cut",
    "CutInfo",
    "InTransitMessage",
]
