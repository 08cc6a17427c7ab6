"""Run the real `cibot route` command in subprocesses and check its output and exit codes.

Every case is a separate `python -m bot.cli` process. They start together in a module
fixture (a few at a time) so that the file costs seconds, then each test checks its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.loading import default_policy_text

FIXTURES = Path(__file__).parent / "fixtures"
DIFFS = FIXTURES / "diffs"
CONFIG = FIXTURES / "config"
KEYS = ["task", "tier", "model", "private_only", "reasons", "categories"]
PLAIN = str(DIFFS / "plain.diff")


@dataclass(frozen=True)
class Case:
    """Describe one `cibot route` run: its arguments, stdin and extra environment."""

    args: tuple[str, ...]
    stdin: bytes | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """Hold what one run printed and returned."""

    code: int
    out: str
    err: str


def route(*args: str, stdin: bytes | None = None, **env: str) -> Case:
    """Describe a `cibot route` run."""
    return Case(("route", *args), stdin, env)


FACTS: dict[str, Any] = {
    "ci-two": {"ci": {"failed_paths": ["services/api/a.py", "services/web/b.ts"]}},
    "ci-one": {"ci": {"failed_paths": ["services/api/a.py", "services/api/b.py"]}},
    "tests-twice": {"tests": {"failed_rounds": 2}},
    "tests-coverage": {"tests": {"coverage": 0.4}},
    "private": {"labels": ["cibot:private-only"]},
    "force": {"force_tier": "frontier"},
    "spent": {"frontier_spend_usd": 1000},
    "bad-labels": {"labels": "cibot:private-only"},
    "bad-ci": {"ci": ["lint"]},
    "bad-tier": {"force_tier": "warp"},
}

CASES: dict[str, Case] = {
    "auth-json": route("--diff", str(DIFFS / "auth_mixed.diff"), "--task", "review", "--json"),
    "stdin-json": route(
        "--diff", "-", "--task", "summary", "--json", stdin=(DIFFS / "plain.diff").read_bytes()
    ),
    "deps-human": route("--diff", str(DIFFS / "deps_bumps.diff"), "--task", "deps"),
    "plain-human": route("--diff", PLAIN, "--task", "summary"),
    "crlf-json": route(
        "--diff",
        "-",
        "--task",
        "review",
        "--json",
        stdin=(DIFFS / "auth_mixed.diff").read_bytes().replace(b"\n", b"\r\n"),
    ),
    "overrides": route(
        "--diff",
        PLAIN,
        "--task",
        "refactor",
        "--json",
        "--config",
        "cibot.yml",
        CIBOT_POLICY="mid-private.yml",
        CIBOT_MID_MODEL="hosted_vllm/gateway-qwen",
    ),
    "frontier-env": route(
        "--diff",
        PLAIN,
        "--task",
        "refactor",
        "--json",
        CIBOT_FRONTIER_MODEL="openai/gpt-5.5",
        CIBOT_FRONTIER_API_BASE="http://127.0.0.1:9/v1",
    ),
    **{
        f"facts-{name}": route(
            "--diff", PLAIN, "--task", name.split("-")[0], "--json", "--facts", f"{name}.json"
        )
        for name in ("ci-two", "ci-one", "tests-twice", "tests-coverage")
    },
    **{
        f"facts-{name}": route("--diff", PLAIN, "--task", task, "--json", "--facts", f"{name}.json")
        for name, task in (("private", "review"), ("force", "summary"), ("spent", "review"))
    },
    # Bad input: exit 2, one line on stderr, nothing on stdout, no traceback.
    "not-a-diff": route("--diff", "code.py", "--task", "review", "--json"),
    "empty-diff": route("--diff", "empty.diff", "--task", "review", "--json"),
    "empty-stdin": route("--diff", "-", "--task", "review", "--json", stdin=b""),
    "binary-only": route("--diff", str(DIFFS / "binary_only.diff"), "--task", "review", "--json"),
    "unknown-task": route("--diff", PLAIN, "--task", "poem", "--json"),
    "missing-file": route("--diff", "nope.diff", "--task", "review", "--json"),
    "directory": route("--diff", ".", "--task", "review", "--json"),
    "malformed-config": route(
        "--diff", PLAIN, "--task", "review", "--config", str(CONFIG / "malformed.yml")
    ),
    "evil-config": route("--diff", PLAIN, "--task", "review", "--config", str(CONFIG / "evil.yml")),
    "missing-config": route("--diff", PLAIN, "--task", "review", "--config", "absent.yml"),
    "bad-policy": route(
        "--diff", PLAIN, "--task", "review", "--policy", str(CONFIG / "bad-policy.yml")
    ),
    "bad-policy-env": route(
        "--diff", PLAIN, "--task", "review", CIBOT_POLICY=str(CONFIG / "bad-policy.yml")
    ),
    "facts-not-json": route("--diff", PLAIN, "--task", "review", "--facts", "code.py"),
    **{
        f"facts-{name}": route("--diff", PLAIN, "--task", "review", "--facts", f"{name}.json")
        for name in ("bad-labels", "bad-ci", "bad-tier")
    },
    "no-diff-flag": Case(("route", "--task", "review")),
    "piped-diff": Case(
        ("route", "--task", "review", "--json"), stdin=(DIFFS / "auth_mixed.diff").read_bytes()
    ),
}


def prepare(workdir: Path) -> None:
    """Write the files the cases name relative to their working directory."""
    (workdir / "code.py").write_text("def main():\n    return 1\n", encoding="utf-8")
    (workdir / "empty.diff").write_bytes(b"")
    (workdir / "cibot.yml").write_text("private_only: {paths: ['src/app/**']}\n", encoding="utf-8")
    policy = yaml.safe_load(default_policy_text())
    policy["tiers"]["mid"] = {
        "models": ["hosted_vllm/Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"],
        "private": True,
        "api_base": "http://10.0.0.7:8000/v1",
        "rung": "2xH200",
    }
    (workdir / "mid-private.yml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    for name, facts in FACTS.items():
        (workdir / f"{name}.json").write_text(json.dumps(facts), encoding="utf-8")


def run(case: Case, workdir: Path) -> Result:
    """Run one case as `python -m bot.cli` with a clean CIBOT_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", **case.env})
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", *case.args],
        input=case.stdin,
        capture_output=True,
        env=env,
        cwd=workdir,
        timeout=120,
    )
    return Result(done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8"))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Run every case, a few at a time, and keep what each printed."""
    workdir = tmp_path_factory.mktemp("route-cli")
    prepare(workdir)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, case, workdir) for name, case in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


def decision(result: Result) -> dict[str, Any]:
    """Parse a successful `--json` run."""
    assert (result.code, result.err) == (0, ""), result.err
    data: dict[str, Any] = json.loads(result.out)
    assert list(data) == KEYS
    return data


def test_json_has_exactly_the_documented_keys(results: dict[str, Result]) -> None:
    data = decision(results["auth-json"])
    assert (data["task"], data["tier"], data["model"]) == (
        "review",
        "frontier",
        "anthropic/claude-opus-4-7",
    )
    assert data["private_only"] is False
    assert data["categories"] == ["auth", "crypto"]
    assert all(list(reason) == ["trigger", "evidence"] for reason in data["reasons"])
    evidence = [r["evidence"] for r in data["reasons"]]
    assert evidence[0] == "review runs on mid by policy"
    assert "src/auth/users.py matches '**/auth/**'" in evidence
    assert any(e.startswith("src/auth/users.py:21 +'return bcrypt.checkpw(") for e in evidence)
    assert any(e.startswith("src/crypto/legacy.py:6 -'return hmac.new(") for e in evidence)


def test_crlf_diff_routes_like_lf(results: dict[str, Result]) -> None:
    assert decision(results["crlf-json"]) == decision(results["auth-json"])


def test_diff_from_stdin(results: dict[str, Result]) -> None:
    assert decision(results["stdin-json"]) == {
        "task": "summary",
        "tier": "local",
        "model": "hosted_vllm/openai/gpt-oss-120b",
        "private_only": False,
        "reasons": [],
        "categories": [],
    }


def test_human_output(results: dict[str, Result]) -> None:
    deps = results["deps-human"]
    assert deps.code == 0, deps.err
    lines = deps.out.splitlines()
    assert lines[:4] == [
        "deps → frontier (anthropic/claude-opus-4-7)",
        "categories:   none",
        "private_only: no",
        "why:",
    ]
    assert "  - major_version_bump: requirements.txt:1 django 4.2.1 → 5.0.1" in lines
    assert results["plain-human"].out.splitlines() == [
        "summary → local (hosted_vllm/openai/gpt-oss-120b)",
        "categories:   none",
        "private_only: no",
        "why:",
        "  - default tier, no trigger fired",
    ]


@pytest.mark.parametrize(
    ("case", "tier", "trigger"),
    [
        ("facts-ci-two", "frontier", "multi_service_failure"),
        ("facts-ci-one", "local", None),
        ("facts-tests-twice", "frontier", "tests_failed_twice"),
        ("facts-tests-coverage", "mid", "coverage_below_target"),
        ("facts-private", "local", "human_review"),
        ("facts-force", "frontier", "requested"),
        ("facts-spent", "local", "budget_exhausted"),
    ],
)
def test_facts_feed_the_triggers(
    results: dict[str, Result], case: str, tier: str, trigger: str | None
) -> None:
    data = decision(results[case])
    assert data["tier"] == tier
    fired = [r["trigger"] for r in data["reasons"]]
    assert fired[-1:] == ([trigger] if trigger else [])


def test_policy_env_repo_config_and_model_override_apply(results: dict[str, Result]) -> None:
    data = decision(results["overrides"])
    assert (data["tier"], data["model"], data["private_only"]) == (
        "mid",
        "hosted_vllm/gateway-qwen",
        True,
    )
    assert [r["trigger"] for r in data["reasons"]] == [
        "task_default",
        "private_only",
        "human_review",
    ]
    assert decision(results["frontier-env"])["model"] == "openai/gpt-5.5"


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("not-a-diff", "is not a unified diff"),
        ("empty-diff", "the diff is empty"),
        ("empty-stdin", "the diff is empty"),
        ("binary-only", "only binary files"),
        ("unknown-task", "unknown task 'poem': choose one of summary, review,"),
        ("missing-file", "cannot read nope.diff"),
        ("directory", "cannot read ."),
        ("malformed-config", "malformed.yml: not valid YAML at line 6"),
        ("evil-config", "key 'tiers' is not allowed here"),
        ("missing-config", "cannot read absent.yml"),
        ("bad-policy", "bad-policy.yml: key 'tasks.review.tier'"),
        ("bad-policy-env", "bad-policy.yml: key 'tasks.review.tier'"),
        ("facts-not-json", "code.py: not valid JSON"),
        ("facts-bad-labels", "'labels' must be a list of strings"),
        ("facts-bad-ci", "'ci' must be an object"),
        ("facts-bad-tier", "'force_tier' must be one of local, mid, frontier, human"),
    ],
)
def test_bad_input_exits_2_with_one_line(results: dict[str, Result], case: str, words: str) -> None:
    result = results[case]
    assert result.code == 2, result
    assert result.out == ""
    assert "Traceback" not in result.err
    assert result.err.endswith("\n") and result.err.count("\n") == 1, result.err
    assert result.err.startswith("cibot route: ")
    assert words in result.err


def test_missing_required_flag_exits_2(results: dict[str, Result]) -> None:
    result = results["no-diff-flag"]
    assert result.code == 2
    assert "--diff" in result.err and "Traceback" not in result.err


def test_a_piped_diff_needs_no_diff_flag(results: dict[str, Result]) -> None:
    """`git diff | cibot route --task review` reads stdin when --diff is left out."""
    piped, named = results["piped-diff"], results["auth-json"]
    assert piped.code == 0, piped.err
    assert json.loads(piped.out) == json.loads(named.out)
    assert json.loads(piped.out)["tier"] != "local"  # the auth change, routed as with --diff


def test_tokens_are_counted_exactly_only_near_a_context_window() -> None:
    from bot.decide import exact_near_windows
    from policies import tokens
    from policies.evidence import evidence_from_diff, packed_estimate
    from policies.loading import load_policy

    policy = load_policy()
    small = evidence_from_diff(Path(PLAIN).read_bytes())
    assert exact_near_windows("review", small, policy) is small  # far below every window
    window = min(tier.context_window for tier in policy.tiers.values())
    line = "+    value = compute(alpha, beta, gamma) + offset  # a changed line of code\n"
    count = window * 7 // (2 * len(line))  # about one window's worth of estimated tokens
    body = "".join(line for _ in range(count))
    diff = f"diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -0,0 +1,{count} @@\n{body}"
    near = evidence_from_diff(diff)
    counted = exact_near_windows("review", near, policy)
    assert counted.packed_tokens == packed_estimate(near.files, tokens.count)
    assert counted.packed_tokens != near.packed_tokens
