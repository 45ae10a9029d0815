"""The committed protobuf code matches the .proto files and needs no generator at run time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "generate_proto.py"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_committed_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools comes with the test extra")
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_generated_modules_import_and_describe_the_wire_messages() -> None:
    from cutwatch.proto import collector_pb2, stamp_pb2

    assert stamp_pb2.DESCRIPTOR.package == "cutwatch.v1"
    stamp = stamp_pb2.Stamp(version=1, sender="bank:1", clock=[3, 1])
    assert stamp_pb2.Stamp.FromString(stamp.SerializeToString()) == stamp
    assert "Registration" in collector_pb2.DESCRIPTOR.message_types_by_name


_WITHOUT_GRPC_TOOLS = """
import sys


class HideGrpcTools:
    \"\"\"Acts as if grpcio-tools were not installed; notes who asked for it.\"\"\"

    importers = []

    def find_spec(self, name, path=None, target=None):
        if name == "grpc_tools" or name.startswith("grpc_tools."):
            frame = sys._getframe(1)
            while frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                frame = frame.f_back
            self.importers.append(frame.f_globals.get("__name__", "?"))
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HideGrpcTools())
import cutwatch
import cutwatch.cli
import cutwatch.proto.collector_pb2_grpc
from cutwatch.agent import StampCodec

data = StampCodec("a:1").encode(["a:1"], [2], peer=None).data
assert StampCodec("b:1").decode(data).entries == (("a:1", 2),)
assert not [m for m in sys.modules if m.split(".")[0] == "grpc_tools"]
ours = [m for m in HideGrpcTools.importers if m.split(".")[0] == "cutwatch"]
if ours:
    sys.exit("cutwatch modules import grpc_tools: " + ", ".join(ours))
"""


def test_runtime_works_without_the_generator_and_never_imports_it(tmp_path: Path) -> None:
    """grpc itself probes for grpc_tools on import (a compatibility shim), so the
    subprocess hides it instead of looking in ``sys.modules`` afterwards."""
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_GRPC_TOOLS],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
