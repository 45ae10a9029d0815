"""cutwatch's own gRPC connections, which its instrumentor leaves alone.

The agent's control stream, the collector's server and the query client are
cutwatch's traffic, not the application's: stamping them would tick the
clock on messages that are not part of the model (and an agent would count
its own control stream as a call in flight). They are made inside
:func:`own_grpc`, and the patched ``grpc`` factories pass them through.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["is_own_grpc", "own_grpc"]

_OWN: contextvars.ContextVar[bool] = contextvars.ContextVar("cutwatch_own_grpc", default=False)


@contextlib.contextmanager
def own_grpc() -> Iterator[None]:
    """Servers and channels made inside are cutwatch's own: the instrumentor does not touch them."""
    token = _OWN.set(True)
    try:
        yield
    finally:
        _OWN.reset(token)


def is_own_grpc() -> bool:
    return _OWN.get()
