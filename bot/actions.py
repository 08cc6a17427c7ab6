"""Run ``cibot ci``: one task on one PR, inline in a GitHub Actions step, with no broker.

This module reads the step's flags, event and token; ``workers.inline`` (its entry point
into the workers) runs the same job modules and pipeline steps as a worker does.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.kernel import logsetup
from bot.kernel.errors import ConfigError, InputError
from bot.kernel.jobs import JobRef
from bot.kernel.settings import Settings
from policies.loading import load_policy

MODEL_TASKS = ("summary", "review", "ci", "tests", "deps")
ACTIONS_INSTALLATION = 0  # the ledger and budget key for work done from Actions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot ci``."""
    parser.add_argument("--task", required=True, choices=MODEL_TASKS)
    parser.add_argument("--repo", help="owner/name (default: GITHUB_REPOSITORY)")
    parser.add_argument("--pr", type=int, help="PR number (default: from GITHUB_EVENT_PATH)")
    parser.add_argument("--sha", help="head SHA (default: from the event, else the PR's head)")
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")


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


def run(args: argparse.Namespace) -> int:
    """Run the task inline; exit 0 when the result is posted (or there was nothing to do)."""
    from workers import inline

    settings = Settings.from_env(os.environ)
    logsetup.configure(fmt=settings.log_format, level=settings.log_level or "info")
    policy = load_policy(
        Path(args.policy) if args.policy else settings.policy_path,
        overrides=settings.tier_overrides,
    )
    token = token_from(os.environ)
    ref = inline.with_head(job_for(args, os.environ), settings, token)
    with logsetup.job_context(**inline.log_fields(ref, step="ci")):
        return inline.run(ref, settings, policy, token)
