"""The fix for grpcio<1.65's intercepted aio ``read()`` applies to those releases only, once."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc.aio import _interceptor

from cutwatch.agent import _grpc_compat


def test_newer_grpc_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc, "__version__", "1.65.0")
    before = _interceptor._InterceptedStreamResponseMixin.read
    assert _grpc_compat.fix_intercepted_stream_read() is False
    assert _interceptor._InterceptedStreamResponseMixin.read is before


def test_older_grpc_gets_eof_at_the_end_of_an_intercepted_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    mixin: Any = _interceptor._InterceptedStreamResponseMixin
    monkeypatch.setattr(grpc, "__version__", "1.62.0")

    async def buggy_read(self: Any) -> Any:  # what grpcio 1.62-1.64 does at the end of a stream
        raise StopAsyncIteration

    monkeypatch.setattr(mixin, "read", buggy_read)
    assert _grpc_compat.fix_intercepted_stream_read() is True
    assert _grpc_compat.fix_intercepted_stream_read() is False  # once
    read = mixin.read
    coroutine = read(object())
    with pytest.raises(StopIteration) as finished:
        coroutine.send(None)
    assert finished.value.value is grpc.aio.EOF


def test_the_version_is_read_from_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc, "__version__", "1.62.3")
    assert _grpc_compat.grpc_version() == (1, 62)
    monkeypatch.setattr(grpc, "__version__", "unknown")
    assert _grpc_compat.grpc_version() == (0, 0)
