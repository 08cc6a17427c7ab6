"""Run one comment command: react 👀, check the author's permission, reply or hand off.

The edge (bot/features/comments.py) only parsed the command; everything that needs
GitHub happens here. Model commands return the JobRefs to run next, so the Celery
wrapper enqueues them and tests call this function directly.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.kernel.commands import ESCALATION_TIERS, command_list
from bot.kernel.errors import InputError
from bot.kernel.jobs import JobRef
from policies.loading import REPO_SOURCE, MergeResult
from policies.model import Policy
from workers import repo_config
from workers.jobs.contract import GitHubPort

if TYPE_CHECKING:
    from workers.ledger import Ledger

log = logging.getLogger(__name__)

# Weakest first; GitHub's collaborator-permission API answers with one of these.
PERMISSION_ORDER = ("none", "read", "triage", "write", "maintain", "admin")
MODEL_COMMANDS = {
    "summary": "summary",
    "review": "review",
    "explain": "ci",
    "tests": "tests",
    "deps": "deps",
}
ESCALATABLE = {**MODEL_COMMANDS, "ci": "ci"}
DEFAULT_ESCALATION = ("frontier", "review")

MARKER = "<!-- cibot:command:{comment_id} -->"
HELP = """{marker}
**cibot commands** (type them at the start of a line, as `/cibot <command>` or `@cibot <command>`):

{commands}

Commands run for people with **{level}** permission or higher on this repository."""
UNKNOWN = """{marker}
I don't know the command `{name}`. Here is what I can do:

{commands}"""
REFUSAL = """{marker}
Sorry @{author}, `/cibot {name}` needs **{level}** permission on this repository \
(you have **{have}**). Ask someone with {level} access to run it for you."""
DISABLED = """{marker}
The `{task}` task is switched off for this repository, so `/cibot {name}` does nothing. \
Its `.github/cibot.yml` or the operator's policy can switch it back on."""
BAD_ESCALATION = """{marker}
`/cibot escalate` takes an optional tier ({tiers}) and an optional task ({tasks}), \
for example `/cibot escalate frontier review`. I could not use `{word}`."""
COST = """{marker}
**What cibot spent on this PR**

| task | tier | calls | tokens | API cost |
|---|---|---:|---:|---:|
{rows}

API total: **${total:.4f}**. Self-hosted tiers show tokens only here; their share of the \
GPU cost is in `cibot report`."""
COST_EMPTY = """{marker}
cibot has not made any model calls for this PR yet."""
COST_PENDING = """{marker}
**Cost report not available yet.** This deployment has no ledger connected, so I cannot \
show what the bot spent on this PR. `cibot report` shows the figures once it is."""
CONFIG = """{marker}
**cibot configuration in force for this repository** (operator policy merged with \
`{source}` from the default branch)

| setting | value |
|---|---|
{rows}
{errors}"""
CONFIG_ERRORS = """
**`{source}` has problems; the policy's values stay in force for these keys:**

{errors}"""


@dataclass(frozen=True)
class Request:
    """Hold the checked arguments of a command job."""

    job: JobRef
    command: str
    words: tuple[str, ...]
    comment_id: int
    author: str
    pr_number: int

    @property
    def marker(self) -> str:
        """Return the hidden marker of the reply to this command comment."""
        return MARKER.format(comment_id=self.comment_id)

    @classmethod
    def of(cls, job: JobRef) -> Request:
        """Check a command job's arguments, or raise InputError naming the bad one."""
        command, argv = job.args.get("command"), job.args.get("argv", "")
        comment_id, author = job.args.get("comment_id"), job.args.get("author")
        if not isinstance(command, str) or not command:
            raise InputError("command job without a command name")
        if not isinstance(comment_id, int) or isinstance(comment_id, bool):
            raise InputError("command job without an integer comment_id")
        if not isinstance(author, str) or not author or not isinstance(argv, str):
            raise InputError("command job without an author")
        if job.pr_number is None:
            raise InputError("command job without a PR number")
        return cls(job, command, tuple(argv.split()), comment_id, author, job.pr_number)


@dataclass(frozen=True)
class Env:
    """Carry what command handlers use: the client, the merged policy and the ledger."""

    gh: GitHubPort
    merged: MergeResult
    ledger: Ledger | None

    @property
    def policy(self) -> Policy:
        """Return the policy with the repo's config merged in."""
        return self.merged.policy


def handle_command(
    job: JobRef,
    *,
    gh: GitHubPort,
    policy: Policy,
    merged: MergeResult | None = None,
    ledger: Ledger | None = None,
    bot_login: str = "cibot[bot]",
) -> list[JobRef]:
    """Acknowledge a command, enforce the permission policy, and run or hand it off.

    ``merged`` is the repo's config already merged onto ``policy``, when the caller has
    read it; otherwise it is read here.
    """
    request = Request.of(job)
    if request.author.endswith("[bot]") or request.author.lower() == bot_login.lower():
        return []  # defence in depth: the edge already drops bot comments
    gh.add_reaction(job.repo, comment_id=request.comment_id, content="eyes")
    if merged is None:
        merged, _ = repo_config.read(gh, job.repo, policy)
    env = Env(gh, merged, ledger)
    required = env.policy.behaviour.command_permission
    have = gh.permission(job.repo, request.author)
    if _rank(have) < _rank(required):
        log.info("command refused", extra=_fields(job, request, permission=have))
        _reply(
            env,
            request,
            REFUSAL.format(
                marker=request.marker,
                author=request.author,
                name=request.command,
                level=required,
                have=have,
            ),
        )
        return []
    handler = HANDLERS.get(request.command, _unknown)
    return handler(env, request)


def _rank(level: str) -> int:
    """Return a permission level's rank; unknown levels rank lowest."""
    return PERMISSION_ORDER.index(level) if level in PERMISSION_ORDER else 0


def _reply(env: Env, request: Request, body: str) -> None:
    """Post (or edit, on a retry) the one reply to this command comment."""
    env.gh.upsert_comment(request.job.repo, request.pr_number, marker=request.marker, body=body)


def _help(env: Env, request: Request) -> list[JobRef]:
    """Reply with the command list."""
    level = env.policy.behaviour.command_permission
    _reply(env, request, HELP.format(marker=request.marker, commands=command_list(), level=level))
    return []


def _unknown(env: Env, request: Request) -> list[JobRef]:
    """Reply that the command is unknown, with the command list."""
    name = request.command.replace("`", "'")
    _reply(env, request, UNKNOWN.format(marker=request.marker, name=name, commands=command_list()))
    return []


def _model_task(env: Env, request: Request, task: str, **extra: str) -> list[JobRef]:
    """Return the model job for the PR's current head, unless the task is switched off."""
    if not env.policy.tasks[task].enabled:  # type: ignore[index]
        _reply(
            env, request, DISABLED.format(marker=request.marker, task=task, name=request.command)
        )
        return []
    pull = env.gh.pull(request.job.repo, request.pr_number)
    args: dict[str, str | int | bool] = {
        "command": request.command,
        "requested_by": request.author,
        **extra,
    }
    job = request.job
    return [
        JobRef(
            task=task,
            installation_id=job.installation_id,
            repo=job.repo,
            delivery_id=job.delivery_id,
            pr_number=request.pr_number,
            head_sha=pull.head_sha,
            args=args,
        )
    ]


def _model(env: Env, request: Request) -> list[JobRef]:
    """Hand a model command (summary, review, explain, tests, deps) to its task."""
    return _model_task(env, request, MODEL_COMMANDS[request.command])


def _escalate(env: Env, request: Request) -> list[JobRef]:
    """Redo a task on a stronger tier: ``escalate [mid|frontier|human] [task]``."""
    tier, task = DEFAULT_ESCALATION
    for word in (w.lower() for w in request.words):
        if word in ESCALATION_TIERS:
            tier = word
        elif word in ESCALATABLE:
            task = ESCALATABLE[word]
        else:
            _reply(
                env,
                request,
                BAD_ESCALATION.format(
                    marker=request.marker,
                    tiers=", ".join(ESCALATION_TIERS),
                    tasks=", ".join(MODEL_COMMANDS),
                    word=word.replace("`", "'"),
                ),
            )
            return []
    return _model_task(env, request, task, force_tier=tier)


def _cost(env: Env, request: Request) -> list[JobRef]:
    """Reply with the model calls and API spend the ledger holds for this PR."""
    if env.ledger is None:
        _reply(env, request, COST_PENDING.format(marker=request.marker))
        return []
    _, calls, _ = env.ledger.rows()
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for call in calls:
        if call.repo == request.job.repo and call.pr_number == request.pr_number:
            row = totals[(call.task, call.tier)]
            row[0] += 1
            row[1] += call.tokens
            row[2] += call.cost_usd
    if not totals:
        _reply(env, request, COST_EMPTY.format(marker=request.marker))
        return []
    rows = "\n".join(
        f"| {task} | {tier} | {int(n)} | {int(tokens):,} | ${cost:.4f} |"
        for (task, tier), (n, tokens, cost) in sorted(totals.items())
    )
    total = sum(row[2] for row in totals.values())
    _reply(env, request, COST.format(marker=request.marker, rows=rows, total=total))
    return []


def _config(env: Env, request: Request) -> list[JobRef]:
    """Reply with the settings in force for this repo and any errors in its config file."""
    policy = env.policy
    settings = {
        "commands need": policy.behaviour.command_permission,
        "skip draft PRs": policy.behaviour.skip_drafts,
        "skip PRs by bots": policy.behaviour.skip_bots,
        "auto-review": policy.review.auto,
        "review minimum severity": policy.review.min_severity,
        "review max findings": policy.review.max_findings,
        "changed-line coverage target": f"{policy.behaviour.coverage_target:.0%}",
        "private-only labels": ", ".join(policy.private_only.labels) or "none",
        "private-only paths": ", ".join(policy.private_only.paths) or "none",
        **{
            f"task `{name}`": (f"{task.tier}" if task.enabled else "off")
            for name, task in policy.tasks.items()
        },
    }
    rows = "\n".join(f"| {key} | {_cell(value)} |" for key, value in settings.items())
    errors = ""
    if env.merged.errors:
        listed = "\n".join(f"- {_cell(str(err))}" for err in env.merged.errors)
        errors = CONFIG_ERRORS.format(source=REPO_SOURCE, errors=listed)
    _reply(
        env,
        request,
        CONFIG.format(marker=request.marker, source=REPO_SOURCE, rows=rows, errors=errors),
    )
    return []


def _cell(value: object) -> str:
    """Render a value for a Markdown table cell."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fields(job: JobRef, request: Request, **values: object) -> dict[str, object]:
    """Return structured log fields for a command."""
    return {
        "delivery_id": job.delivery_id,
        "installation_id": job.installation_id,
        "task": f"command:{request.command}",
        "tier": "",
        **values,
    }


HANDLERS: dict[str, Callable[[Env, Request], list[JobRef]]] = {
    "help": _help,
    "summary": _model,
    "review": _model,
    "explain": _model,
    "tests": _model,
    "deps": _model,
    "escalate": _escalate,
    "cost": _cost,
    "config": _config,
}
