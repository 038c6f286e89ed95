"""protocol/validation.py: the one home of the δ and ρ checks."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from protocol.validation import check_delta, check_rho

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("good", [1e-12, 0.05, 0.5, 1 - 1e-12])
def test_delta_in_the_open_unit_interval_is_returned_as_float(good) -> None:
    assert check_delta(good) == float(good)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, math.nan, math.inf, "x", None, True])
def test_delta_outside_or_not_a_number_names_the_parameter(bad) -> None:
    with pytest.raises(ValueError, match=r"^--delta must be"):
        check_delta(bad, "--delta")


@pytest.mark.parametrize("good", [1e-9, 0.25, 0.5])
def test_rho_in_the_half_open_interval_is_returned(good) -> None:
    assert check_rho(good) == good


@pytest.mark.parametrize("bad", [0, -0.25, 0.5000001, 1, math.nan, "0.2x", None])
def test_rho_outside_names_its_range(bad) -> None:
    with pytest.raises(ValueError, match=r"^rho must"):
        check_rho(bad)


def test_every_delta_and_rho_check_calls_the_one_module() -> None:
    """No module of the product compares δ or ρ with their bounds itself."""
    own = re.compile(
        r"0(\.0)? < (d|delta|r|rho) < 1(\.0)?\b|0(\.0)? < (r|rho) <= 0\.5|d >= 1\)|delta must lie"
    )
    found = [
        str(p.relative_to(ROOT))
        for d in ("protocol", "prover", "verifier", "simulations")
        for p in (ROOT / d).rglob("*.py")
        if p.name != "validation.py" and own.search(p.read_text())
    ]
    assert found == []
