"""Packaging invariants: fresh generated code and the import boundaries between packages.

The import graph is read from the source (every ``import``, lazy ones inside functions included),
so a boundary cannot be crossed by hiding an import in a function body.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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


PACKAGES = ("protocol", "prover", "verifier", "simulations", "proto", "benchmarks")


def _module_files() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path.name.endswith("_pb2.py") or path.name.endswith("_pb2_grpc.py"):
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def _resolve(target: str, mods: dict[str, Path]) -> str | None:
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (``from a import b`` counts
    as importing ``a.b`` when that is a module, else ``a``)."""
    mods = _module_files()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs or [base]
            for target in targets:
                hit = _resolve(target, mods)
                if hit and hit != name:
                    graph[name].add(hit)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert import_cycles(import_graph()) == []


def test_import_graph_sees_lazy_imports() -> None:
    # protocol.tasks.builtin imports the real tasks inside a function
    assert "protocol.tasks.real" in import_graph()["protocol.tasks.builtin"]


def _top(module: str) -> str:
    return module.partition(".")[0]


def test_boundaries_in_source() -> None:
    """protocol imports no party and no generated code; no production package imports simulations;
    the verifier never imports the prover (lazy imports included)."""
    forbidden = {
        "protocol": {"prover", "verifier", "simulations", "proto", "benchmarks"},
        "prover": {"simulations", "verifier", "benchmarks"},
        "verifier": {"simulations", "prover", "benchmarks"},
        "proto": {"simulations", "prover", "verifier", "protocol", "benchmarks"},
    }
    bad = [
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        for t in targets
        if _top(t) in forbidden.get(_top(m), set())
    ]
    assert bad == []


def _named_strings() -> set[str]:
    from protocol.rules.base import CheckMode, RuleName

    return {r.value for r in RuleName} | {c.value for c in CheckMode}


def _compared_strings(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            consts = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            for c in consts:
                if isinstance(c, ast.Constant) and c.value in names:
                    hits.append((node.lineno, c.value))
    return hits


def test_string_finder_finds_a_planted_comparison() -> None:
    tree = ast.parse('if mode == "practical" or x in ("retrain", "y"):\n    pass\n')
    assert _compared_strings(tree, _named_strings()) == [(1, "practical"), (1, "retrain")]


def test_no_mode_or_check_string_is_compared_outside_the_rules() -> None:
    """Rules and check modes are types: a document's ``"mode"`` is parsed once
    (``RuleName.of``/``CheckMode.of``) and compared as an enum everywhere else."""
    allowed = {REPO / "protocol" / "__init__.py"}
    names = _named_strings()
    bad = []
    for package in ("protocol", "prover", "verifier", "simulations", "benchmarks"):
        for path in (REPO / package).rglob("*.py"):
            if path in allowed or (REPO / "protocol" / "rules") in path.parents:
                continue
            for line, text in _compared_strings(ast.parse(path.read_text()), names):
                bad.append(f"{path.relative_to(REPO)}:{line} compares {text!r}")
    assert bad == []


def test_one_json_encoder_hook() -> None:
    import json
    from enum import Enum

    import numpy as np

    from protocol.jsonable import json_default

    class Colour(Enum):
        RED = "red"

    doc = {"a": np.arange(3), "x": np.float32(0.5), "b": b"\x01", "p": REPO / "x", "c": Colour.RED}
    assert json.loads(json.dumps(doc, default=json_default)) == {
        "a": [0, 1, 2], "x": 0.5, "b": "01", "p": str(REPO / "x"), "c": "red",
    }  # fmt: skip
    with pytest.raises(TypeError, match="object"):
        json.dumps({"o": object()}, default=json_default)
    hooks = [
        f"{m}: {node.name}"
        for m, path in _module_files().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name in ("_json_default", "_jsonable")
    ]
    assert hooks == []
