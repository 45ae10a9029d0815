"""What every demo service process does alike: logging, stopping on signals, files it shares."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

from cutwatch._signals import set_on_signals

Behaviour = Callable[[Struct, grpc.ServicerContext], Struct]
"""A demo RPC: a ``Struct`` in, a ``Struct`` out (the demo's services need no generated code)."""


def unary(behaviour: Behaviour) -> grpc.RpcMethodHandler[Struct, Struct]:
    """The handler of a unary demo RPC."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=Struct.FromString, response_serializer=Struct.SerializeToString
    )


def struct(**values: Any) -> Struct:
    """A ``Struct`` message (the demo's services need no generated code)."""
    message = Struct()
    message.update(values)
    return message


def service_process(name: str) -> threading.Event:
    """Log warnings to stderr under ``name``; the event returned is set on SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format=f"%(asctime)s {name} %(name)s: %(message)s"
    )
    stop = threading.Event()
    set_on_signals(stop, signal.SIGTERM, signal.SIGINT)
    return stop


def write_atomically(path: Path, text: str) -> None:
    """Whoever polls ``path`` sees it whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def wait_for_json(path: Path, stop: threading.Event) -> Any:
    """The JSON document in ``path``, once it exists; None when told to stop first."""
    while not stop.is_set():
        if path.exists():
            return json.loads(path.read_text())
        stop.wait(0.05)
    return None
