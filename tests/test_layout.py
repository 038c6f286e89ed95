"""Packaging invariants: fresh generated code and the import boundaries between packages."""

from __future__ import annotations

import subprocess
import sys

from proto.generate import stale_files
from tests.conftest import REPO


def test_generated_protobuf_code_is_fresh() -> None:
    assert stale_files() == [], "run `python -m proto.generate`"


def _modules_loaded_by(package: str) -> set[str]:
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package}\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def test_protocol_imports_neither_grpc_nor_the_parties() -> None:
    loaded = _modules_loaded_by("protocol")
    for forbidden in ("grpc", "prover", "verifier"):
        assert forbidden not in loaded, f"protocol pulls in {forbidden}"


def test_verifier_never_imports_prover() -> None:
    loaded = _modules_loaded_by("verifier")
    assert "prover" not in loaded
    assert "simulations" not in loaded
