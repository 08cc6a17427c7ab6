"""Summarise a PR too large for one request: map over parts, then reduce, on the private tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.kernel.settings import Settings
from policies.loading import load_policy
from tests import test_pipeline
from tests.test_pipeline import GOOD, REPO, World, environment, write_policy
from workers.jobs import summary
from workers.ledger import SUCCEEDED, job_key
from workers.pipeline import Runtime, StepOutcome

BIG_SHA = "b" * 40
# The pipeline tests' fixture: the fake GitHub and the two fake model servers.
fakes = test_pipeline.fakes


def big_diff(files: int = 40, lines: int = 30) -> str:
    """Return a diff of many files (README.md and src/upload.py among them)."""
    paths = ["README.md", "src/upload.py"] + [f"src/mod_{n}.py" for n in range(files - 2)]
    out = []
    for path in paths:
        body = "".join(
            f"+value_{n} = compute_something_long({n}, 'argument text')\n" for n in range(lines)
        )
        out.append(
            f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -0,0 +1,{lines} @@\n{body}"
        )
    return "".join(out)


@pytest.fixture
def small_world(
    fakes: Any, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """A runtime whose local tier has a 6k window and whose PR must stay private."""
    gh, local, external = fakes
    policy_path = write_policy(tmp_path, local={"context_window": 6144, "max_output_tokens": 1024})
    env = environment(gh, local, external, redis_url, f"sqlite:///{tmp_path / 'l.db'}", policy_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    policy = load_policy(settings.policy_path, overrides=settings.tier_overrides)
    sent: list[Any] = []
    rt = Runtime.build(settings, policy, send=lambda n, r, q: sent.append((n, r, q)), lock_ttl_s=30)
    gh.add_pull(
        REPO,
        11,
        title="Big change",
        diff=big_diff(),
        head_sha=BIG_SHA,
        labels=["cibot:private-only"],
    )
    yield World(gh, local, external, settings, policy, rt, sent)
    rt.close()


def test_an_oversized_private_pr_is_summarised_in_parts_then_combined(small_world: World) -> None:
    """Every part goes to the local model once, then one call combines them; one comment."""
    world = small_world
    world.local.script(reply=GOOD)
    ref = world.ref(sha=BIG_SHA, pr=11)
    assert world.through(ref)[-1] is StepOutcome.PUBLISHED
    requests = world.local.chat_requests()
    parts = [r for r in requests if "this is part" in r["messages"][-1]["content"]]
    combine = [r for r in requests if "summarised in" in r["messages"][-1]["content"]]
    assert len(parts) >= 2 and len(combine) == 1
    assert len(requests) == len(parts) + 1
    # Every changed file was shown to the model in exactly one part.
    for n in range(38):
        shown = sum(f"b/src/mod_{n}.py" in r["messages"][-1]["content"] for r in parts)
        assert shown == 1, f"src/mod_{n}.py appeared in {shown} parts"
    # The partial summaries reach the combining call fenced as untrusted text.
    tag_line = combine[0]["messages"][-1]["content"]
    assert "Part 1: " in tag_line and "<untrusted-" in tag_line
    assert world.external.requests == []
    [comment] = world.comments(pr=11)
    assert "Adds a retry helper" in comment["body"]
    job = world.rt.ledger.job(job_key(ref))
    assert job is not None and job["status"] == SUCCEEDED
    with world.rt.ledger.engine.connect() as conn:
        calls = conn.exec_driver_sql(
            "select count(*) from model_calls where job_key = ?", (job_key(ref),)
        ).scalar_one()
    assert calls == len(requests)


def test_a_pr_that_fits_is_summarised_in_one_call(small_world: World) -> None:
    """A small PR on the same tier takes exactly one request (no map-reduce)."""
    world = small_world
    world.local.script(reply=GOOD)
    ref = world.ref()
    assert world.through(ref)[-1] is StepOutcome.PUBLISHED
    assert len(world.local.chat_requests()) == 1
    assert summary.MAX_PARTS >= 2
