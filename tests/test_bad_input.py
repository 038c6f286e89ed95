"""Bad task input exits 2 with a message, never 1 and never a traceback (issue #16 item 7).

Deeply nested declaration files, npz members that are not ``.npy`` arrays, decompression bombs,
oversized files and selectors, for both CLIs.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from protocol.tasks import load_task
from protocol.tasks.real import check_npz_members
from prover.cli import main as prover_main
from verifier.cli import main as verifier_main


def _deep_json(tmp_path: Path) -> Path:
    path = tmp_path / "deep.json"
    path.write_text('{"task": "npz", "params": ' + "[" * 20_000 + "]" * 20_000 + "}")
    return path


def _npz_with_text_member(tmp_path: Path) -> Path:
    path = tmp_path / "text.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("X", "not an array")
        zf.writestr("y.npy", "not an array either")
    return path


def _npz_bomb(tmp_path: Path, gib: float = 1.25) -> Path:
    """A few MB on disk whose X decompresses to ``gib`` GiB of zeros (deflate ≈ 1000:1)."""
    path = tmp_path / "bomb.npz"
    n = int(gib * (1 << 30)) // 8
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (n // 64, 64)}
    )
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("X.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            block = bytes(1 << 24)
            for _ in range((n * 8) // len(block)):
                fh.write(block)
        buf = io.BytesIO()
        np.save(buf, np.array([0, 1] * 10))
        zf.writestr("y.npy", buf.getvalue())
    return path


def _npz_lying_header(tmp_path: Path) -> Path:
    """A tiny member whose .npy header declares a 10¹² × 10³ array."""
    path = tmp_path / "liar.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 1000)}
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("X.npy", header.getvalue() + bytes(64))
    return path


def _declaration(tmp_path: Path, npz: Path) -> Path:
    path = tmp_path / f"{npz.stem}.json"
    path.write_text(json.dumps({"task": "npz", "params": {"path": str(npz)}}))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return _npz_bomb(tmp_path_factory.mktemp("bomb"))


def test_bomb_is_small_on_disk_and_refused_before_decompressing(bomb: Path) -> None:
    assert bomb.stat().st_size < 16 * (1 << 20)
    with pytest.raises(ValueError, match="decompresses to"):
        check_npz_members(bomb)


def test_lying_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="declare more than"):
        check_npz_members(_npz_lying_header(tmp_path))


def test_member_that_is_not_npy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"member 'X' is not a \.npy array"):
        load_task(f"npz:path={_npz_with_text_member(tmp_path)}")


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        load_task(str(_deep_json(tmp_path)))


def test_oversized_selector_and_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="characters long"):
        load_task("synthetic:" + "n=1," * 5000)
    big = tmp_path / "big.toml"
    big.write_text('task = "synthetic"\n# ' + "x" * 100_000 + "\n")
    with pytest.raises(ValueError, match="a declaration is at most"):
        load_task(str(big))


CASES = {
    "deep-json": lambda tmp, bomb: str(_deep_json(tmp)),
    "text-member": lambda tmp, bomb: str(_declaration(tmp, _npz_with_text_member(tmp))),
    "bomb": lambda tmp, bomb: f"npz:path={bomb}",
    "lying-header": lambda tmp, bomb: str(_declaration(tmp, _npz_lying_header(tmp))),
    "not-utf8": lambda tmp, bomb: _write(tmp / "latin.toml", b'task = "synth\xe9tic"\n'),
}


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_clis_exit_2_with_a_message(case: str, tmp_path: Path, bomb: Path, capsys) -> None:
    selector = CASES[case](tmp_path, bomb)
    rc = verifier_main(["plan", "--task", selector, "--epsilon", "0.1", "--json"])
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert "Traceback" not in captured.out + captured.err
    doc = json.loads(captured.out)
    assert doc["verdict"] == "error"
    assert doc["reason"]
    rc = prover_main(["precompute", "--task", selector, "--store", str(tmp_path / "s.sqlite3")])
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert "prover: error:" in captured.err
    assert "Traceback" not in captured.err
