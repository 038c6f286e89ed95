"""Regenerate (or check) the committed protobuf/gRPC Python code for ``proto/attribution/v1``.

Usage::

    python -m proto.generate          # rewrite the generated files
    python -m proto.generate --check  # exit 1 if the committed files are stale

The generated code embeds the protobuf version that produced it, so grpcio, grpcio-tools and
protobuf are pinned together in ``pyproject.toml``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("proto/attribution/v1/attribution.proto",)
GENERATED = (
    "proto/attribution/v1/attribution_pb2.py",
    "proto/attribution/v1/attribution_pb2.pyi",
    "proto/attribution/v1/attribution_pb2_grpc.py",
)


def generate_into(out_dir: Path) -> None:
    """Run protoc on every file in ``PROTO_FILES``, writing the Python outputs under ``out_dir``.

    Guarantees the same bytes for the same .proto and the same grpcio-tools version.
    """
    from grpc_tools import protoc  # imported lazily: only needed at generation time

    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(REPO_ROOT / p) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def stale_files() -> list[str]:
    """Return the generated files whose committed content differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate_into(Path(tmp))
        stale = []
        for rel in GENERATED:
            fresh = (Path(tmp) / rel).read_bytes()
            committed = REPO_ROOT / rel
            if not committed.exists() or committed.read_bytes() != fresh:
                stale.append(rel)
        return stale


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: regenerate, or with ``--check`` report stale generated files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code (run `python -m proto.generate`): " + ", ".join(stale))
            return 1
        print("generated code is fresh")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate_into(Path(tmp))
        for rel in GENERATED:
            shutil.copyfile(Path(tmp) / rel, REPO_ROOT / rel)
    print("regenerated: " + ", ".join(GENERATED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
