"""Regenerate the committed protobuf code in proto/ from the .proto files.

Run from anywhere: ``python scripts/generate_proto.py``. It needs the pinned
grpcio-tools (``pip install -e '.[test]'``). The virtual include path
``cutwatch/proto=proto`` makes generated imports read ``cutwatch.proto``.
``--check`` regenerates into a temporary directory and exits 1 when the
committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto file; return the generated files."""
    from grpc_tools import protoc

    sources = sorted(PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-Icutwatch/proto={PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[f"cutwatch/proto/{src.name}" for src in sources],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        produced = sorted((Path(tmp) / "cutwatch" / "proto").iterdir())
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in produced:
            if path.name.endswith(SUFFIXES):
                target = out_dir / path.name
                shutil.copyfile(path, target)
                written.append(target)
        return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when committed code is stale")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(PROTO_DIR):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [
            p.name
            for p in fresh
            if not (PROTO_DIR / p.name).exists() or not filecmp.cmp(p, PROTO_DIR / p.name, shallow=False)
        ]
    if stale:
        print("stale generated code: " + ", ".join(stale) + "; run scripts/generate_proto.py")
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
