"""Test ``cibot replay`` against loopback model servers with different scripted behaviour:
one valid, one often invalid. Captures are written as the pipeline's hook writes them."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import cli
from bot.kernel.errors import ConfigError, InputError
from policies.loading import build_policy, default_policy_text, load_policy, parse_yaml
from policies.model import Policy
from policies.routing import route
from tests.fakes.model import FakeModelServer, prompt_text
from tests.test_capture import finding, gathered, pull, ref, summary_reply
from workers import replay, sandbox
from workers.capture import Capture, check_context
from workers.jobs import review, summary, tests
from workers.pipeline import Gathered

ROOT = Path(__file__).resolve().parent.parent
GOOD_ID, BAD_ID, JUDGE_ID = "good-model", "bad-model", "judge-model"
ZEBRA = "ZEBRA-PRIVATE-PROJECT"  # only in the private_only capture's prompt


def schema_of(body: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON schema a chat request asks for."""
    fmt = body.get("response_format") or {}
    return dict((fmt.get("json_schema") or {}).get("schema") or {})


def good_reply(body: dict[str, Any]) -> dict[str, Any]:
    """Answer every task validly."""
    props = schema_of(body).get("properties", {})
    if "findings" in props:
        return {"findings": [finding()]}
    if "code" in props:
        return {"code": "def test_add():\n    assert 1 + 1 == 2\n"}
    return summary_reply("src/shop/cart.py", "README.md")


def bad_replier() -> Any:
    """Answer validly one time in three per task: else findings off the diff, or files the PR
    does not change."""
    counters: dict[bool, Iterator[int]] = {True: itertools.count(), False: itertools.count()}
    lock = threading.Lock()

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        is_review = "findings" in schema_of(body).get("properties", {})
        with lock:
            n = next(counters[is_review])
        if n % 3 == 0:
            return good_reply(body)
        if is_review:
            return {"findings": [finding(line=2), finding("src/shop/basket.py", 1)]}
        return summary_reply("src/shop/basket.py")

    return reply


def judge_reply(body: dict[str, Any]) -> dict[str, Any]:
    """Grade a reply low when it comments on an unchanged line or an unchanged file."""
    text = prompt_text(body).split("Reply:", 1)[-1]
    poor = '"line": 2' in text or "basket.py" in text
    return {"score": 1 if poor else 5, "reason": "graded"}


@pytest.fixture
def good() -> Iterator[FakeModelServer]:
    """Play a self-hosted endpoint that always answers validly."""
    with FakeModelServer("good", model_ids=(GOOD_ID,), latency=0.05) as server:
        server.script(None, good_reply)
        yield server


@pytest.fixture
def bad() -> Iterator[FakeModelServer]:
    """Play an API endpoint whose replies are usually invalid."""
    with FakeModelServer("bad", model_ids=(BAD_ID,)) as server:
        server.script(None, bad_replier())
        yield server


@pytest.fixture
def judge() -> Iterator[FakeModelServer]:
    """Play the judge model."""
    with FakeModelServer("judge", model_ids=(JUDGE_ID,)) as server:
        server.script(None, judge_reply)
        yield server


def capture_task(
    store: Capture, policy: Policy, task: str, pr: int, job: Gathered, **kw: Any
) -> Path:
    """Capture one task the way the pipeline's hook does after a validated reply."""
    module = {"review": review, "summary": summary}[task]
    request = module.request(job, route(task, job.evidence, policy))
    data = good_reply({"response_format": {"json_schema": {"schema": request.schema}}})
    return store.record(
        ref(task, pr=pr),
        task,
        request.messages,
        json.dumps(data),
        data,
        {"validated": True, "tier": "local", "model": "hosted_vllm/prod"},
        private_only=kw.get("private_only", False),
        schema=request.schema,
        check=check_context(task, job),
    )


@pytest.fixture
def captured(tmp_path: Path) -> Path:
    """Capture 12 reviews (three accepted) and 12 summaries; one review is private_only."""
    policy = load_policy()
    store = Capture(tmp_path / "captures", days=14)
    for pr in range(1, 13):
        capture_task(store, policy, "review", pr, gathered(policy))
        capture_task(store, policy, "summary", 100 + pr, gathered(policy, "summary"))
    for pr in (1, 2, 3):
        store.accept(
            repo="acme/shop",
            pr_number=pr,
            task="review",
            accepted=True,
            signal="thread_resolved",
            findings=[{"path": "src/shop/cart.py", "line": 9, "side": "RIGHT"}],
        )
    secret = Gathered(
        pull=pull(f"{ZEBRA}: keep this on our own GPUs."),
        diff=gathered(policy).diff,
        evidence=gathered(policy).evidence,
        policy=policy,
        state=gathered(policy).state,
    )
    capture_task(store, policy, "review", 50, secret, private_only=True)
    return store.root


def models(good: FakeModelServer, bad: FakeModelServer) -> str:
    """Return the --models value: the good endpoint private, the bad one not marked private.

    Both speak vLLM's dialect (hosted_vllm/): litellm's openai/ provider keeps a pooled
    client per base URL whose sockets outlive a test, which filterwarnings=error reports.
    """
    return f"private:good=hosted_vllm/{GOOD_ID}@{good.url},bad=hosted_vllm/{BAD_ID}@{bad.url}"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``cibot`` in this process; return the exit code, stdout and stderr."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def rows_of(report: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """Return a task's rows, ranked."""
    return [r for r in report["rows"] if r["task"] == task]


# ---- ranking and the policy diff ------------------------------------------------------------


def test_replay_ranks_the_valid_endpoint_first_and_prints_the_policy_diff(
    captured: Path,
    good: FakeModelServer,
    bad: FakeModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["replay", "--models", models(good, bad), "--price", "bad=3,15"]
    code, out, err = run_cli([*argv, "--capture-dir", str(captured), "--slots", "3"], capsys)
    assert code == 0, err
    review_table = out.split("review (13 captured)")[1].split("summary (")[0]
    first, second = [ln for ln in review_table.splitlines() if ln.split()[:1] in (["1"], ["2"])]
    assert first.split()[:2] == ["1", "good"] and second.split()[:2] == ["2", "bad"]
    assert "- review: move from mid to local: good is valid on 100%" in out
    assert "- summary: already on local; good confirms it" in out
    assert "--- a/policies/default.yaml\n+++ b/policies/default.yaml" in out
    assert "-    tier: mid\n+    tier: local" in out
    assert out.count("\n-    tier:") == 1  # only the review row moves
    assert "1 private_only replays were not sent to endpoints not marked private" in out
    assert "judge: none" in out
    # Every endpoint's slots were used, never exceeded.
    assert good.max_in_flight == 3


def test_scores_reflect_validity_anchoring_and_agreement(
    captured: Path,
    good: FakeModelServer,
    bad: FakeModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["replay", "--models", models(good, bad), "--price", "bad=3,15", "--json"]
    code, out, err = run_cli([*argv, "--capture-dir", str(captured)], capsys)
    assert code == 0, err
    report = json.loads(out)
    top, low = rows_of(report, "review")
    assert (top["endpoint"], low["endpoint"]) == ("good", "bad")
    assert top["valid"] == 1.0 and top["checks"] == 1.0 and top["agreement"] == 1.0
    assert low["valid"] < 0.5 and low["checks"] < 0.5 and low["agreement"] < 1.0
    assert (top["tasks"], top["refused"], low["tasks"], low["refused"]) == (13, 0, 12, 1)
    assert top["cost"] > 0 and low["cost"] > top["cost"]  # rung-priced vs $3/$15 per Mtok
    assert top["tokens"] > 100
    summary_top = rows_of(report, "summary")[0]
    assert summary_top["endpoint"] == "good" and summary_top["checks"] == 1.0
    runs = [r for r in report["runs"] if r["endpoint"] == "bad" and r["status"] == "invalid"]
    assert runs and all(r["calls"] == 1 for r in runs)  # an API endpoint gets no repair round
    move = next(v for v in report["verdicts"] if v["task"] == "review")
    assert (move["action"], move["tier"]) == ("move", "local")


def test_private_only_captures_never_reach_an_endpoint_not_marked_private(
    captured: Path,
    good: FakeModelServer,
    bad: FakeModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["replay", "--models", models(good, bad), "--price", "bad=3,15", "--tasks", "review"]
    code, _, err = run_cli([*argv, "--capture-dir", str(captured)], capsys)
    assert code == 0, err
    assert ZEBRA.encode() in good.raw_bodies()
    assert ZEBRA.encode() not in bad.raw_bodies()
    assert len(bad.chat_requests()) == 12 and bad.chat_requests()
    # Marked private with --private, the same endpoint may take it.
    code, _, err = run_cli(
        [*argv, "--capture-dir", str(captured), "--private", "bad", "--last", "1"], capsys
    )
    assert code == 0, err
    assert ZEBRA.encode() in bad.raw_bodies()


def test_a_judge_is_used_and_named(
    captured: Path,
    good: FakeModelServer,
    bad: FakeModelServer,
    judge: FakeModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"private:judge=hosted_vllm/{JUDGE_ID}@{judge.url}"
    argv = ["replay", "--models", models(good, bad), "--price", "bad=3,15", "--judge", spec]
    code, out, err = run_cli([*argv, "--capture-dir", str(captured), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["judge"] == f"judge (hosted_vllm/{JUDGE_ID} at {judge.url}, private)"
    top, low = rows_of(report, "review")
    assert top["judge"] == 1.0 and low["judge"] < 0.5
    assert judge.chat_requests()


def test_too_few_samples_recommend_nothing(
    captured: Path,
    good: FakeModelServer,
    bad: FakeModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["replay", "--models", models(good, bad), "--price", "bad=3,15", "--min-samples", "50"]
    code, out, err = run_cli([*argv, "--capture-dir", str(captured)], capsys)
    assert code == 0, err
    assert "need 50 (--min-samples) to recommend" in out
    assert replay.NO_DIFF in out


def test_an_invalid_private_endpoint_keeps_the_category_where_it_is(
    captured: Path,
    good: FakeModelServer,
    bad: FakeModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"good=hosted_vllm/{GOOD_ID}@{good.url},private:bad=hosted_vllm/{BAD_ID}@{bad.url}"
    argv = ["replay", "--models", spec, "--price", "good=3,15", "--tasks", "review"]
    code, out, err = run_cli([*argv, "--capture-dir", str(captured)], capsys)
    assert code == 0, err
    assert "- review: best private endpoint bad valid on" in out
    assert "keep it on mid" in out
    assert replay.NO_DIFF in out


# ---- a real process --------------------------------------------------------------------------


def test_replay_runs_as_a_command_with_json_and_a_chart(
    captured: Path, good: FakeModelServer, bad: FakeModelServer, tmp_path: Path
) -> None:
    chart = tmp_path / "replay.svg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    env |= {"CIBOT_CAPTURE_DIR": str(captured), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "replay",
            "--models",
            models(good, bad),
            "--price",
            "bad=3,15",
            "--json",
            "--plot",
            str(chart),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert [r["endpoint"] for r in rows_of(report, "review")] == ["good", "bad"]
    assert [r["endpoint"] for r in rows_of(report, "summary")] == ["good", "bad"]
    assert "+    tier: local" in report["diff"]
    svg = ET.fromstring(chart.read_text(encoding="utf-8"))  # noqa: S314 - our own output
    scores = {
        mark.get("data-x"): float(mark.get("data-value", "0"))
        for mark in svg.iter("{http://www.w3.org/2000/svg}rect")
        if mark.get("data-x")
    }
    assert sorted(scores) == ["review · bad", "review · good", "summary · bad", "summary · good"]
    review_rows = {r["endpoint"]: r["score"] for r in rows_of(report, "review")}
    assert scores["review · good"] == pytest.approx(review_rows["good"], abs=1e-3)
    assert scores["review · good"] > scores["review · bad"]


@pytest.mark.parametrize("count", [1, 6])
def test_the_endpoint_count_is_checked_with_exit_2(
    count: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = ",".join(f"m{n}=hosted_vllm/x@http://127.0.0.1:9/v1" for n in range(count))
    code, _, err = run_cli(["replay", "--models", spec, "--capture-dir", str(tmp_path)], capsys)
    assert code == 2
    assert f"--models names {count} endpoint" in err and "compare 2 to 5" in err
    assert "Traceback" not in err


def test_no_captures_or_an_unpriced_api_endpoint_exit_2(
    tmp_path: Path,
    good: FakeModelServer,
    bad: FakeModelServer,
    captured: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(
        [
            "replay",
            "--models",
            models(good, bad),
            "--price",
            "bad=1,1",
            "--capture-dir",
            str(tmp_path / "empty"),
        ],
        capsys,
    )
    assert code == 2 and "no captured tasks in" in err
    code, _, err = run_cli(
        ["replay", "--models", models(good, bad), "--capture-dir", str(captured)], capsys
    )
    assert code == 2 and "give --price bad=IN,OUT" in err
    assert bad.chat_requests() == [] and good.chat_requests() == []


def test_a_tests_capture_is_checked_for_shape_with_a_note_without_a_sandbox(
    tmp_path: Path,
    good: FakeModelServer,
    bad: FakeModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = Capture(tmp_path / "c", days=14)
    messages = [{"role": "user", "content": "Write pytest tests for Cart.add."}]
    store.record(
        ref("tests"),
        "tests",
        messages,
        None,
        None,
        {"validated": False},
        private_only=False,
        schema=tests.SCHEMA,
        check={"test_path": "tests/test_cibot_pr42.py", "changed": {"src/shop/cart.py": [9]}},
    )
    previous = sandbox.set_isolation(
        sandbox.Isolation(binary="", isolated=False, note=sandbox.INSTALLED)
    )
    try:
        code, out, err = run_cli(
            [
                "replay",
                "--models",
                models(good, bad),
                "--price",
                "bad=1,1",
                "--capture-dir",
                str(store.root),
                "--json",
            ],
            capsys,
        )
    finally:
        sandbox.set_isolation(previous)
    assert code == 0, err
    report = json.loads(out)
    assert f"tests: generated tests not run: {sandbox.INSTALLED}" in report["notes"]
    assert rows_of(report, "tests")[0]["checks"] is None
    assert rows_of(report, "tests")[0]["valid"] == 1.0


# ---- pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "label", "model", "base", "private"),
    [
        ("openai/gpt-5.5", "openai/gpt-5.5", "openai/gpt-5.5", None, False),
        (
            "q=hosted_vllm/Qwen/Qwen3-235B@http://10.0.0.7:8000/v1",
            "q",
            "hosted_vllm/Qwen/Qwen3-235B",
            "http://10.0.0.7:8000/v1",
            False,
        ),
        (
            "private:ds=openai/deepseek@https://gw.example/v1",
            "ds",
            "openai/deepseek",
            "https://gw.example/v1",
            True,
        ),
        ("private:ollama/llama3:8b", "ollama/llama3:8b", "ollama/llama3:8b", None, True),
    ],
)
def test_endpoint_syntax(
    spec: str, label: str, model: str, base: str | None, private: bool
) -> None:
    assert replay.parse_endpoint(spec) == replay.Endpoint(label, model, base, private)


@pytest.mark.parametrize("spec", ["a=b=c", "x@ftp://host", "", "two words"])
def test_a_bad_endpoint_says_the_syntax(spec: str) -> None:
    with pytest.raises(InputError, match=r"\[private:\]\[LABEL=\]MODEL\[@BASE_URL\]"):
        replay.parse_endpoint(spec)


def test_the_policy_edit_changes_one_line_and_keeps_comments() -> None:
    text = default_policy_text()
    edited = replay.set_task_tier(text, "review", "local")
    changed = [
        (a, b) for a, b in zip(text.splitlines(), edited.splitlines(), strict=True) if a != b
    ]
    assert changed == [("    tier: mid", "    tier: local")]
    assert replay.load_yaml_tier(edited, "review") == "local"
    assert build_policy(parse_yaml(edited, source="x"), source="x").tasks["review"].tier == "local"
    flow = "version: 1\ntasks:\n  ci: {tier: frontier, expected_output_tokens: 600}  # hot\n"
    assert replay.set_task_tier(flow, "ci", "local").splitlines()[2] == (
        "  ci: {tier: local, expected_output_tokens: 600}  # hot"
    )
    bare = "tasks:\n  deps:\n    expected_output_tokens: 800\nbudgets: {}\n"
    assert replay.load_yaml_tier(replay.set_task_tier(bare, "deps", "local"), "deps") == "local"
    with pytest.raises(ConfigError, match="no summary: entry"):
        replay.set_task_tier("tasks:\n  ci:\n    tier: local\nbudgets: {}\n", "summary", "local")
