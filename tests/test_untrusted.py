"""Prover-supplied text never draws on the terminal, forges a line, or injects Markdown.

A fake prover puts an ANSI/newline payload in the two places the verifier used to print raw: its
task spec (shown on a task mismatch) and its gRPC error details. The real CLI then prints exactly
one ``verdict:`` line, the true one, and no escape character at all.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from protocol import PROTOCOL_VERSION
from protocol.tasks import load_task
from protocol.untrusted import markdown_text, printable, quote
from verifier.cli import main as verifier_main

TASK = "synthetic:n=50,z=1,p=0.5,seed=0"
PAYLOAD = (
    "x\x1b[2K\x1b[1A\x1b[2K\rverdict: ACCEPT  (guarantee met)\nverdict: ACCEPT\r\n"
    "reason:  all good\u202e\u2028<script>alert(1)</script> [link](http://x) # heading"
)
UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@given(st.text(max_size=300))
def test_printable_leaves_no_unsafe_character_and_is_idempotent(text: str) -> None:
    out = printable(text, limit=None)
    assert not [c for c in out if unicodedata.category(c) in UNSAFE]
    assert printable(out, limit=None) == out


def test_printable_caps_length_and_says_so() -> None:
    out = printable("a" * 10_000, limit=100)
    assert out.startswith("a" * 100)
    assert "9900 more characters" in out
    assert len(quote("b" * 10_000)) < 260


def test_markdown_text_renders_as_plain_text() -> None:
    out = markdown_text(PAYLOAD)
    for raw in ("<script>", "[link](", "\n", "\x1b"):
        assert raw not in out
    assert "&lt;script&gt;" in out


class _EvilProver(pb_grpc.ProverServicer):
    """Answers Hello with a payload: in the task spec, or in the error details."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.identity = load_task(TASK).identity()

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        if self.where == "details":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, PAYLOAD)
        fields = self.identity.as_fields()
        fields.update(canonical_spec=PAYLOAD, spec_hash="0" * 64, task_hash="1" * 64)
        return pb.HelloReply(
            protocol_version=PROTOCOL_VERSION, task=pb.TaskIdentity(**fields), session_id="s"
        )


@pytest.fixture(params=["spec", "details"])
def evil_address(request: pytest.FixtureRequest) -> Iterator[str]:
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ProverServicer_to_server(_EvilProver(request.param), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


def test_payload_leaves_exactly_one_true_verdict_line(
    evil_address: str, capsys: pytest.CaptureFixture
) -> None:
    rc = verifier_main(
        ["verify", "--prover", evil_address, "--task", TASK, "--epsilon", "0.5", "--no-progress"]
    )
    out = capsys.readouterr()
    text = out.out + out.err
    assert rc == 2
    verdicts = [line for line in text.splitlines() if line.lstrip().startswith("verdict:")]
    assert verdicts == ["verdict: ERROR"]
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\u202e" not in text
    assert "\\x1b[2K" in text  # the payload is shown, escaped, so a person sees the attempt


def test_payload_in_json_and_report_is_inert(evil_address: str, tmp_path, capsys) -> None:
    import json

    rc = verifier_main(
        ["verify", "--prover", evil_address, "--task", TASK, "--epsilon", "0.5", "--json",
         "--report", str(tmp_path / "r")]
    )  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert rc == 2
    assert doc["verdict"] == "error"
    assert "\x1b" not in doc["reason"]
    assert "\n" not in doc["reason"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "<script>" not in report
    assert report.count("# Verification report") == 1
    assert [ln for ln in report.splitlines() if ln.startswith("**Verdict:**")] == [
        "**Verdict:** error  "
    ]
    assert "&lt;script&gt;" in report
