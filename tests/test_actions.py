"""Run `cibot ci` as a GitHub Actions step would: a subprocess with GITHUB_* variables,
the fake GitHub (token auth) and the fake model servers, no Redis and no broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fakes.github import FakeGitHub
from tests.fakes.model import FakeModelServer
from tests.test_pipeline import AUTH_DIFF, DIFF, GOOD, KEY_ENV, LOCAL_ID, REPO, SHA, write_policy

TOKEN = "ghs_actions_step_token_for_tests_0001"


def step_env(
    gh: FakeGitHub, local: FakeModelServer, external: FakeModelServer, tmp_path: Path, **extra: str
) -> dict[str, str]:
    """Return the environment of an Actions step running `cibot ci`."""
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps(
            {"action": "opened", "number": 7, "pull_request": {"number": 7, "head": {"sha": SHA}}}
        )
    )
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {
        **keep,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_RUN_ID": "4242",
        "GITHUB_ACTOR": "alice",
        "CIBOT_GITHUB_API_URL": gh.url,
        "CIBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "CIBOT_POLICY": str(write_policy(tmp_path)),
        "CIBOT_LOCAL_API_BASE": local.url,
        "CIBOT_MID_API_BASE": external.url,
        "CIBOT_FRONTIER_API_BASE": external.url,
        KEY_ENV: "sk-test-actions",
        **extra,
    }


def cibot_ci(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `cibot ci` in a fresh interpreter, as the composite action does."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "ci", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def servers():
    """Start the fake GitHub (with the step's token) and the two fake model servers."""
    with (
        FakeGitHub() as gh,
        FakeModelServer("local", model_ids=(LOCAL_ID,)) as local,
        FakeModelServer("external", model_ids=("gpt-5", "gpt-5.5")) as external,
    ):
        gh.add_installation(1, [REPO])
        gh.add_token(TOKEN, [REPO])
        yield gh, local, external


def test_the_step_posts_one_summary_and_records_it(servers, tmp_path: Path) -> None:
    """A summary runs inline on the local tier, is posted once, and lands in the ledger."""
    gh, local, external = servers
    gh.add_pull(REPO, 7, title="Retry uploads", diff=DIFF, head_sha=SHA)
    local.script(reply=GOOD)
    env = step_env(gh, local, external, tmp_path)
    first = cibot_ci(env, "--task", "summary")
    assert first.returncode == 0, first.stderr
    assert "summary on acme/app#7 → published" in first.stderr
    second = cibot_ci(env, "--task", "summary")  # a re-run of the workflow edits in place
    assert second.returncode == 0, second.stderr
    [comment] = [c for c in gh.comments(REPO, 7) if "<!-- cibot:summary -->" in c["body"]]
    assert "Adds a retry helper" in comment["body"]
    assert "**local** tier" in comment["body"]
    assert external.requests == []
    auth = {v for call in gh.calls for k, v in call.headers.items() if k.lower() == "authorization"}
    assert auth == {f"token {TOKEN}"}
    engine = sa.create_engine(env["CIBOT_DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select task, status, tier from jobs")).all()
    engine.dispose()
    assert {tuple(r) for r in rows} == {("summary", "succeeded", "local")}


def test_a_sensitive_review_goes_to_the_frontier_fake(servers, tmp_path: Path) -> None:
    """Routing runs inline exactly as in the workers: an auth change reviews on frontier."""
    gh, local, external = servers
    gh.add_pull(REPO, 7, title="Session ids", diff=AUTH_DIFF, head_sha=SHA)
    external.script(reply={"findings": []})
    result = cibot_ci(step_env(gh, local, external, tmp_path), "--task", "review")
    assert result.returncode == 0, result.stderr
    assert local.requests == []
    assert external.requests, "the frontier fake should have served the review"
    assert external.requests[-1].json()["model"] == "gpt-5.5"


def test_without_a_token_the_step_says_how_to_pass_one(servers, tmp_path: Path) -> None:
    """No GITHUB_TOKEN: exit 2 with one line that says what to set, and no traceback."""
    gh, local, external = servers
    env = step_env(gh, local, external, tmp_path)
    del env["GITHUB_TOKEN"]
    result = cibot_ci(env, "--task", "summary")
    assert result.returncode == 2
    assert "set GITHUB_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert gh.calls == []


def test_outside_a_pull_request_the_step_refuses_clearly(servers, tmp_path: Path) -> None:
    """A push event has no PR: the step explains instead of guessing."""
    gh, local, external = servers
    env = step_env(gh, local, external, tmp_path)
    Path(env["GITHUB_EVENT_PATH"]).write_text(json.dumps({"ref": "refs/heads/main"}))
    result = cibot_ci(env, "--task", "summary")
    assert result.returncode == 2
    assert "no pull request" in result.stderr
