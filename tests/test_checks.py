"""verifier/checks.py: one class per check mode, each owning its share of the walk."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.rules.base import CheckMode
from protocol.tasks import load_task
from verifier.checks import (
    CertifyEveryMember,
    CertifySampledMembers,
    RetrainChecks,
    checks_for,
    take_at_most,
)
from verifier.session import Rejection, VerificationError


class _Calls:
    """A stand-in session and transport that log which protocol calls a check mode makes."""

    def __init__(self, supplied: int | None = None) -> None:
        self.log: list[str] = []
        self.supplied = supplied

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            self.log.append(name)
            if name in ("open", "open_all"):
                return iter(["msg"])
            if name == "supply_models":
                n = args[0] if self.supplied is None else self.supplied
                return iter(["model"] * n)
            if name == "models_request":
                return args[1]  # the count, passed on to supply_models
            if name in ("retrain_mse", "ingest_models"):
                return np.zeros((len(args[1]) if name == "ingest_models" else args[1], 1))
            return None

        return call


def test_checks_for_names_one_class_per_mode() -> None:
    for mode in CheckMode:
        assert checks_for(mode).mode is mode
    assert isinstance(checks_for(CheckMode.RETRAIN), RetrainChecks)
    assert isinstance(checks_for(CheckMode.CERTIFIED), CertifyEveryMember)
    assert isinstance(checks_for(CheckMode.CERTIFIED_SPOT), CertifySampledMembers)


@pytest.mark.parametrize(
    ("mode", "after_round", "spot_check", "mse"),
    [
        (CheckMode.RETRAIN, [], ["open_request", "open", "ingest_opening", "check_spot_openings"],
         ["retrain_mse"]),
        (CheckMode.CERTIFIED, ["open_all_request", "open_all", "ingest_opening_batch",
                               "verify_round"], [],
         ["models_request", "supply_models", "ingest_models"]),
        (CheckMode.CERTIFIED_SPOT, [],
         ["open_request", "open", "ingest_opening", "check_spot_openings"],
         ["models_request", "supply_models", "ingest_models"]),
    ],
)  # fmt: skip
def test_each_mode_makes_exactly_its_calls(mode, after_round, spot_check, mse) -> None:
    checks = checks_for(mode)
    for step, expect in (("after_round", after_round), ("spot_check", spot_check)):
        calls = _Calls()
        args = (calls, calls) if step == "after_round" else (calls, calls, 8)
        getattr(checks, step)(*args)
        assert calls.log == expect, step
    calls = _Calls()
    f = checks.mse(calls, calls, 0, 5)
    assert f.shape == (5, 1)
    assert calls.log == mse


def test_supplied_models_must_number_what_was_asked() -> None:
    short = _Calls(supplied=3)
    with pytest.raises(VerificationError, match="supplied 3 of the 5"):
        CertifyEveryMember().mse(short, short, 0, 5)
    with pytest.raises(Rejection, match="more than the 2"):
        take_at_most(iter(range(10)), 2)
    assert take_at_most(iter(range(2)), 2) == [0, 1]


def test_a_certified_check_costs_a_fraction_of_a_retraining() -> None:
    task = load_task("digits-logreg:z=1")
    assert RetrainChecks().cost_per_model(task) == 1.0
    assert 0.0 < CertifyEveryMember().cost_per_model(task) < 1.0
