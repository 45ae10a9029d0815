"""The staleness check of the generated code sees a changed .proto whatever grpcio-tools runs it."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_proto", ROOT / "scripts" / "generate_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_committed_code_comes_from_the_oldest_supported_generator() -> None:
    generator = _generator()
    assert generator.GENERATOR_VERSION.startswith("1.62.")
    for module in ("stamp_pb2.py", "collector_pb2.py"):
        text = (ROOT / "proto" / module).read_text()
        assert "Protobuf Python Version: 4.25" in text
        assert "ValidateProtobufRuntimeVersion" not in text  # newer protoc's check refuses older runtimes
    assert "GRPC_GENERATED_VERSION" not in (ROOT / "proto" / "collector_pb2_grpc.py").read_text()


@pytest.mark.parametrize("exact", [True, False])
def test_a_changed_descriptor_or_method_is_stale_in_both_modes(tmp_path: Path, exact: bool) -> None:
    generator = _generator()
    fresh = []
    for name in ("stamp_pb2.py", "collector_pb2_grpc.py"):
        shutil.copyfile(ROOT / "proto" / name, tmp_path / name)
        fresh.append(tmp_path / name)
    assert generator.stale_files(fresh, exact) == []
    stamp = tmp_path / "stamp_pb2.py"
    # One more field, as if stamp.proto had gained it: the serialized descriptor differs.
    from google.protobuf import descriptor_pb2

    described = descriptor_pb2.FileDescriptorProto.FromString(generator.serialized_descriptor(stamp))
    described.message_type[0].field.add(
        name="extra", number=99, type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT32
    )
    text = stamp.read_text()
    (literal,) = [
        ast.get_source_segment(text, node)
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes)
    ]
    assert literal is not None
    stamp.write_text(text.replace(literal, repr(described.SerializeToString())))
    stubs = tmp_path / "collector_pb2_grpc.py"
    stubs.write_text(
        stubs.read_text().replace("/cutwatch.v1.Collector/Status", "/cutwatch.v1.Collector/Stat")
    )
    assert generator.stale_files(fresh, exact) == ["stamp_pb2.py", "collector_pb2_grpc.py"]
