"""Run ``cibot ci``: one task on one PR, inline in a GitHub Actions step, with no broker.

The same job modules and pipeline steps run as in the workers. Only the adapters change:
the step's ``GITHUB_TOKEN`` instead of an App installation, an in-process store instead of
Redis, and "send" runs the next step at once instead of queueing it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot import logsetup
from bot.errors import TRANSIENT, ConfigError, InputError, NothingToDo
from bot.settings import Settings
from policies.loading import load_policy
from policies.model import Policy
from workers.job import JobRef

MODEL_TASKS = ("summary", "review", "ci", "tests", "deps")
ACTIONS_INSTALLATION = 0  # the ledger and budget key for work done from Actions
RETRIES = 4
DONE = """\
cibot ci: {task} on {repo}#{pr} → {outcome}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot ci``."""
    parser.add_argument("--task", required=True, choices=MODEL_TASKS)
    parser.add_argument("--repo", help="owner/name (default: GITHUB_REPOSITORY)")
    parser.add_argument("--pr", type=int, help="PR number (default: from GITHUB_EVENT_PATH)")
    parser.add_argument("--sha", help="head SHA (default: from the event, else the PR's head)")
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")


@dataclass
class MemoryStore:
    """Stand in for the Redis commands the pipeline uses, inside one process."""

    values: dict[str, tuple[Any, float | None]] = field(default_factory=dict)

    def _live(self, key: str) -> bool:
        """Drop an expired key; say whether the key is present."""
        entry = self.values.get(key)
        if entry is not None and entry[1] is not None and entry[1] < time.monotonic():
            del self.values[key]
            return False
        return entry is not None

    def set(
        self,
        key: str,
        value: Any,
        *,
        nx: bool = False,
        px: int | None = None,
        ex: int | None = None,
    ) -> bool:
        """Set a key, honouring NX and an expiry in ms (px) or s (ex)."""
        if nx and self._live(key):
            return False
        ttl = px / 1000 if px else ex if ex else None
        self.values[key] = (value, time.monotonic() + ttl if ttl else None)
        return True

    def get(self, key: str) -> Any:
        """Return a key's value, or None."""
        return self.values[key][0] if self._live(key) else None

    def exists(self, *keys: str) -> int:
        """Count the keys that are present."""
        return sum(self._live(key) for key in keys)

    def delete(self, *keys: str) -> int:
        """Delete keys; return how many existed."""
        return sum(self.values.pop(key, None) is not None for key in keys)

    def hset(self, key: str, name: str, value: Any) -> int:
        """Set one field of a hash."""
        fields = self.values[key][0] if self._live(key) else {}
        fields[name] = value
        self.values[key] = (fields, self.values.get(key, (None, None))[1])
        return 1

    def hgetall(self, key: str) -> dict[str, Any]:
        """Return a hash's fields."""
        return dict(self.values[key][0]) if self._live(key) else {}

    def hdel(self, key: str, *names: str) -> int:
        """Delete fields of a hash; return how many existed."""
        fields = self.values[key][0] if self._live(key) else {}
        return sum(fields.pop(name, None) is not None for name in names)

    def expire(self, key: str, seconds: int) -> bool:
        """Set a key's expiry in seconds."""
        if not self._live(key):
            return False
        self.values[key] = (self.values[key][0], time.monotonic() + seconds)
        return True

    def eval(self, script: str, numkeys: int, key: str, token: str) -> int:
        """Run the pipeline's one script: delete ``key`` only if it still holds ``token``."""
        if self.get(key) == token:
            return self.delete(key)
        return 0

    def close(self) -> None:
        """Release nothing; a store in memory holds no connection."""


@dataclass
class LedgerBudget:
    """Gate frontier spend on the ledger's month-to-date figure (no Redis in Actions)."""

    ledger: Any
    reserved: float = 0.0

    def spent(self, installation_id: int) -> float:
        """Return this month's frontier spend plus what this run has reserved."""
        start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return float(self.ledger.frontier_spend(installation_id=installation_id, since=start))

    def reserve(self, installation_id: int, usd: float, limit: float) -> bool:
        """Reserve ``usd`` if the month stays within ``limit``."""
        if self.spent(installation_id) + self.reserved + usd > limit:
            return False
        self.reserved += usd
        return True

    def settle(self, installation_id: int, reserved: float, actual: float) -> None:
        """Drop a reservation once the call's real cost is in the ledger."""
        self.reserved = max(0.0, self.reserved - reserved)


def event_facts(environ: Mapping[str, str]) -> dict[str, Any]:
    """Read the PR number and head SHA from the workflow's event payload, when there is one."""
    path = environ.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the workflow event at GITHUB_EVENT_PATH: {exc}") from exc
    pull = event.get("pull_request") or {}
    number = pull.get("number") or (event.get("issue") or {}).get("number")
    return {"pr": number, "sha": (pull.get("head") or {}).get("sha")}


def job_for(args: argparse.Namespace, environ: Mapping[str, str]) -> JobRef:
    """Build the JobRef for this step from flags, then the Actions environment."""
    facts = event_facts(environ)
    repo = args.repo or environ.get("GITHUB_REPOSITORY", "")
    number = args.pr or facts.get("pr")
    if not repo or "/" not in repo:
        raise InputError("no repository: pass --repo owner/name or run inside GitHub Actions")
    if not isinstance(number, int):
        raise InputError("no pull request: pass --pr N or run on a pull_request event")
    run = environ.get("GITHUB_RUN_ID", str(int(time.time())))
    attempt = environ.get("GITHUB_RUN_ATTEMPT", "1")
    return JobRef(
        task=args.task,
        installation_id=ACTIONS_INSTALLATION,
        repo=repo,
        delivery_id=f"actions-{run}-{attempt}-{args.task}",
        pr_number=number,
        head_sha=args.sha or facts.get("sha") or "",
        args={"requested_by": environ.get("GITHUB_ACTOR", "actions")},
    )


def token_from(environ: Mapping[str, str]) -> str:
    """Return the step's GitHub token, or explain how to pass one."""
    token = environ.get("CIBOT_GITHUB_TOKEN") or environ.get("GITHUB_TOKEN", "")
    if not token:
        raise ConfigError(
            "no GitHub token: set GITHUB_TOKEN (for example `env: GITHUB_TOKEN: "
            "${{ github.token }}`) with pull-requests: write and checks: write permissions",
            key="GITHUB_TOKEN",
            source="environment",
        )
    return token


def runtime(settings: Settings, policy: Policy, token: str) -> Any:
    """Build a pipeline Runtime whose adapters need neither Redis nor a GitHub App."""
    from bot.github import GitHubClient
    from workers import pipeline
    from workers.celery_app import PUBLISH, RUN_JOB
    from workers.ledger import Ledger
    from workers.llm import ModelClient

    ledger = Ledger(settings.database_url)
    budget = LedgerBudget(ledger)
    rt: pipeline.Runtime

    def send(name: str, ref: JobRef, queue: str) -> None:
        step = {RUN_JOB: _run_job, PUBLISH: pipeline.publish}[name]
        _with_retries(step, ref, rt)

    def _run_job(ref: JobRef, rt: pipeline.Runtime) -> pipeline.Outcome:
        return pipeline.run_job(ref, rt, deadline=pipeline.Deadline(seconds=3600))

    rt = pipeline.Runtime(
        settings=settings,
        policy=policy,
        redis=MemoryStore(),
        ledger=ledger,
        github=lambda _id: GitHubClient.from_token(token=token, base_url=settings.github_api_url),
        model=lambda recorder: ModelClient(policy, settings, budget, recorder=recorder),
        send=send,
        lock_ttl_s=3600,
        spent=budget.spent,
        closers=[ledger.close],
    )
    return rt


def _with_retries(step: Any, ref: JobRef, rt: Any) -> Any:
    """Run a pipeline step, retrying transient errors a few times with backoff."""
    for attempt in range(RETRIES + 1):
        try:
            return step(ref, rt)
        except TRANSIENT as exc:
            if attempt == RETRIES:
                raise
            time.sleep(min(getattr(exc, "retry_after", 0) or 2.0 * 2**attempt, 60))
    return None


def with_head(ref: JobRef, settings: Settings, token: str) -> JobRef:
    """Fill in the PR's head SHA from GitHub when the event did not carry it."""
    if ref.head_sha:
        return ref
    from bot.github import GitHubClient

    client = GitHubClient.from_token(token=token, base_url=settings.github_api_url)
    with contextlib.closing(client) as github:
        head = github.pull(ref.repo, ref.pr_number or 0).head_sha
    return JobRef(**{**ref.to_kwargs(), "head_sha": head})


def run(args: argparse.Namespace) -> int:
    """Run the task inline; exit 0 when the result is posted (or there was nothing to do)."""
    from workers import pipeline

    settings = Settings.from_env(os.environ)
    logsetup.configure(fmt=settings.log_format, level=settings.log_level or "info")
    policy = load_policy(
        Path(args.policy) if args.policy else settings.policy_path,
        overrides=settings.tier_overrides,
    )
    token = token_from(os.environ)
    ref = with_head(job_for(args, os.environ), settings, token)
    with logsetup.job_context(**pipeline.log_fields(ref, step="ci")):
        return _run_inline(ref, settings, policy, token)


def _run_inline(ref: JobRef, settings: Settings, policy: Policy, token: str) -> int:
    """Route, compute and publish one job in this process; return the exit code."""
    from workers import pipeline

    rt = runtime(settings, policy, token)
    try:
        outcome = _with_retries(pipeline.enqueue_model_job, ref, rt)
        posted = rt.redis.exists(pipeline.state_key(ref, "done"))
    except NothingToDo as exc:
        pipeline.fail(ref, rt, exc)  # drops the job; a step with nothing to do succeeds
        print(f"cibot ci: {ref.task}: nothing to do: {exc}", file=sys.stderr)
        return 0
    except Exception as exc:
        pipeline.fail(ref, rt, exc)
        raise
    finally:
        rt.close()
    result = "published" if posted else str(outcome)
    print(
        DONE.format(task=ref.task, repo=ref.repo, pr=ref.pr_number, outcome=result), file=sys.stderr
    )
    return 0 if posted or outcome is not pipeline.Outcome.QUEUED else 1
