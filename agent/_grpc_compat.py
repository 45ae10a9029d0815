"""Fixes for bugs of older supported grpcio releases that cutwatch's interceptors would expose.

grpcio before 1.65 raises ``StopAsyncIteration`` from ``read()`` at the end of
a response stream whenever an aio client interceptor is installed, where the
documented (and un-intercepted) behaviour is to return ``grpc.aio.EOF``
(grpc/grpc#36581, fixed in 1.65 by grpc/grpc#36660). An application that
reads its streams with ``read()`` would break the moment cutwatch's aio
interceptors join its channel, so on those releases the intercepted call's
``read()`` gets the same fix gRPC later made. Newer releases are left alone.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import grpc

_LOG = logging.getLogger("cutwatch.agent")
_FIXED_IN = (1, 65)
_MARK = "_cutwatch_returns_eof"
_lock = threading.Lock()


def grpc_version() -> tuple[int, int]:
    """The installed grpcio's (major, minor); (0, 0) when it cannot be read."""
    found = re.match(r"(\d+)\.(\d+)", getattr(grpc, "__version__", ""))
    return (int(found[1]), int(found[2])) if found else (0, 0)


def fix_intercepted_stream_read() -> bool:
    """Make an intercepted aio call's ``read()`` return EOF at the end; True when it was patched now."""
    if grpc_version() >= _FIXED_IN:
        return False
    from grpc.aio import _interceptor

    mixin: Any = getattr(_interceptor, "_InterceptedStreamResponseMixin", None)
    with _lock:
        if mixin is None or getattr(mixin.read, _MARK, False):
            return False
        original = mixin.read

        async def read(self: Any) -> Any:
            try:
                return await original(self)
            except StopAsyncIteration:
                return grpc.aio.EOF

        setattr(read, _MARK, True)
        mixin.read = read
    _LOG.debug("grpcio %s: intercepted aio streams' read() returns EOF at the end", grpc.__version__)
    return True
