"""Volume fuzzing: the checks of ``tests/test_fuzz.py`` driven by hypothesis at ≥ 10,000 cases.

Run from the repository root: ``python -m benchmarks.fuzz [--session N] [--server N]
[--verifier N]``. Prints one JSON object with ``cases``, ``server_crashes`` (must be 0) and
``verifier_false_accepts`` (must be 0), plus a breakdown; exits 1 if either is non-zero.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_fuzz import (
    FuzzServer,
    check_server_ops,
    check_session_ops,
    check_verifier_case,
    honest_run_over_grpc,
    ops_strategy,
)


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def run(session_n: int, server_n: int, verifier_n: int) -> dict[str, Any]:
    """Run the three fuzzers; returns the summary (never raises on a found problem)."""
    counts: collections.Counter[str] = collections.Counter()
    examples: list[str] = []
    verdicts: collections.Counter[str] = collections.Counter()
    started = time.monotonic()

    @_settings(session_n)
    @given(ops=ops_strategy)
    def session_fuzz(ops: list[tuple]) -> None:
        counts["session_cases"] += 1
        counts["session_calls"] += len(ops)
        problems = check_session_ops(ops)
        counts["session_crashes"] += len(problems)
        examples.extend(problems[:2])

    server = FuzzServer()
    try:

        @_settings(server_n)
        @given(ops=ops_strategy)
        def server_fuzz(ops: list[tuple]) -> None:
            counts["server_cases"] += 1
            counts["server_calls"] += len(ops)
            problems = check_server_ops(server, ops)
            counts["server_bad_status"] += len(problems)
            examples.extend(problems[:2])

        session_fuzz()
        server_fuzz()
        hello_ok = bool(server.hello())
        honest_after = honest_run_over_grpc(server.port)
    finally:
        server.close()

    @_settings(verifier_n)
    @given(data=st.data())
    def verifier_fuzz(data: st.DataObject) -> None:
        counts["verifier_cases"] += 1
        case = check_verifier_case(data.draw)
        verdicts[case.verdict] += 1
        if case.identical:
            counts["verifier_semantically_identical"] += 1
        if case.raised is not None:
            counts["verifier_raised"] += 1
            examples.append(f"raised: {case}")
        if case.false_accept:
            counts["verifier_false_accepts"] += 1
            examples.append(f"false accept: {case}")
        if case.gray_accept:
            counts["verifier_gray_accepts"] += 1

    verifier_fuzz()
    cases = counts["session_cases"] + counts["server_cases"] + counts["verifier_cases"]
    crashes = counts["session_crashes"] + counts["server_bad_status"]
    if not hello_ok or honest_after != "accept":
        crashes += 1
        examples.append(f"after fuzz: hello {hello_ok}, honest run {honest_after}")
    return {
        "cases": cases,
        "server_crashes": crashes,
        "verifier_false_accepts": counts["verifier_false_accepts"] + counts["verifier_raised"],
        "breakdown": dict(counts),
        "verifier_verdicts": dict(verdicts),
        "after_fuzz": {"hello_ok": hello_ok, "honest_run": honest_after},
        "examples": examples[:20],
        "seconds": round(time.monotonic() - started, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} python "
        f"{platform.python_version()}".strip(),
    }


def main() -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", type=int, default=3000, help="ProverSession cases")
    parser.add_argument("--server", type=int, default=3000, help="gRPC server cases")
    parser.add_argument("--verifier", type=int, default=4500, help="verifier cases")
    args = parser.parse_args()
    summary = run(args.session, args.server, args.verifier)
    print(json.dumps(summary, indent=2))
    return 0 if summary["server_crashes"] == 0 and summary["verifier_false_accepts"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
