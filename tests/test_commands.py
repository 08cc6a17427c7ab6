"""Test comment commands: the pure parser, and handle_command against the fake GitHub."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bot.kernel.commands import COMMANDS, Command, command_list, parse
from bot.kernel.errors import InputError
from bot.kernel.jobs import JobRef
from policies.loading import load_policy
from policies.model import Policy
from tests.fakes.github import FakeGitHub
from workers.github import GitHubApp, GitHubClient
from workers.jobs.command import MARKER, handle_command

REPO = "octo-org/hello-world"
INSTALLATION = 2311213
HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"

# --- the parser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/cibot review", Command("review")),
        ("@cibot review", Command("review")),
        ("/CIBOT Review", Command("review")),
        ("/cibot escalate frontier", Command("escalate", ("frontier",))),
        ("/cibot escalate   mid  tests ", Command("escalate", ("mid", "tests"))),
        ("/cibot", Command("help")),
        ("@cibot   ", Command("help")),
        ("Thanks!\n\n/cibot summary\n\nmore text", Command("summary")),
        ("   /cibot tests", Command("tests")),
        ("/cibot frobnicate now", Command("frobnicate", ("now",))),
        ("/cibot explain\r\n/cibot review", Command("explain")),
        ("```\n/cibot review\n```\n/cibot deps", Command("deps")),
    ],
)
def test_commands_are_found_at_the_start_of_a_line(body: str, expected: Command) -> None:
    assert parse(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "",
        "LGTM",
        "please run /cibot review",
        "`/cibot review`",
        "> /cibot review",
        ">/cibot review",
        "  > /cibot review",
        "```\n/cibot review\n```",
        "~~~python\n/cibot review\n~~~",
        "````\n```\n/cibot review\n```\n````",
        "    /cibot review",
        "\t/cibot review",
        "/cibotreview",
        "/cibot-review",
        "@cibotx review",
        "email me at someone@cibot review",
    ],
)
def test_code_quotes_and_mid_line_mentions_are_not_commands(body: str) -> None:
    assert parse(body) is None


def test_an_unclosed_fence_hides_the_rest() -> None:
    assert parse("```\nexample\n/cibot review") is None


def test_arguments_are_bounded() -> None:
    got = parse("/cibot escalate " + " ".join(["x" * 500] * 50))
    assert got is not None
    assert len(got.args) == 8
    assert all(len(a) == 64 for a in got.args)
    assert got.argv == " ".join(got.args)


def test_the_command_list_names_every_command() -> None:
    assert set(COMMANDS) == {
        "help",
        "summary",
        "review",
        "explain",
        "tests",
        "deps",
        "escalate",
        "cost",
        "config",
    }
    text = command_list()
    for name in COMMANDS:
        assert f"`/cibot {name}`" in text
    assert Command("cost").known and not Command("nope").known


# --- handle_command against the fake GitHub ----------------------------------------------


@pytest.fixture(scope="module")
def shared_github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_installation(INSTALLATION, [REPO])
        yield fake


@pytest.fixture
def github(shared_github: FakeGitHub) -> FakeGitHub:
    """Give each test a fresh PR 2 on a repo with no config file and no collaborators."""
    shared_github.add_pull(REPO, 2, title="Add session refresh", head_sha=HEAD)
    shared_github.set_file(REPO, ".github/cibot.yml", "")
    for user in ("alice", "drive-by", "cibot[bot]", "other-app[bot]"):
        shared_github.set_permission(REPO, user, "none")
    return shared_github


@pytest.fixture(scope="module")
def gh(shared_github: FakeGitHub) -> Iterator[GitHubClient]:
    app = GitHubApp(
        app_id=shared_github.app_id,
        private_key=shared_github.private_key_pem,
        base_url=shared_github.url,
    )
    client = app.client(installation_id=INSTALLATION)
    yield client
    client.close()
    app.close()


@pytest.fixture
def policy() -> Policy:
    return load_policy()


def command_job(
    github: FakeGitHub, body: str, *, author: str = "alice", delivery: str = "d-1"
) -> JobRef:
    """Post a human comment on the fake and return the command job the edge would make."""
    comment_id = github.add_comment(REPO, 2, body, author=author)
    command = parse(body)
    assert command is not None
    return JobRef(
        task="command",
        installation_id=INSTALLATION,
        repo=REPO,
        delivery_id=delivery,
        pr_number=2,
        args={
            "command": command.name,
            "argv": command.argv,
            "comment_id": comment_id,
            "author": author,
        },
    )


def replies(github: FakeGitHub, job: JobRef) -> list[str]:
    """Return the bodies of the bot's replies to the command comment of ``job``."""
    marker = MARKER.format(comment_id=job.args["comment_id"])
    return [c["body"] for c in github.comments(REPO, 2) if marker in c["body"]]


def reactions(github: FakeGitHub, job: JobRef) -> list[str]:
    return [r["content"] for r in github.reactions(REPO, int(job.args["comment_id"]))]


PERMISSION_MATRIX = [
    ("admin", "write", True),
    ("maintain", "write", True),
    ("write", "write", True),
    ("triage", "write", False),
    ("read", "write", False),
    ("none", "write", False),
    ("write", "maintain", False),
    ("maintain", "maintain", True),
    ("triage", "triage", True),
    ("read", "triage", False),
    ("admin", "admin", True),
    ("maintain", "admin", False),
    ("read", "read", True),
]


@pytest.mark.parametrize(("level", "required", "allowed"), PERMISSION_MATRIX)
def test_the_permission_matrix(
    github: FakeGitHub, gh: GitHubClient, level: str, required: str, allowed: bool
) -> None:
    github.set_permission(REPO, "alice", level)
    github.set_file(REPO, ".github/cibot.yml", f"commands:\n  permission: {required}\n")
    job = command_job(github, "/cibot review")
    # The operator allows "read"; the repo file raises the bar to ``required`` (a repo may
    # raise the permission commands need, never lower it below the operator's).
    lowest = load_policy().model_copy(
        update={
            "behaviour": load_policy().behaviour.model_copy(update={"command_permission": "read"})
        }
    )
    jobs = handle_command(job, gh=gh, policy=lowest)
    assert reactions(github, job) == ["eyes"], "👀 whatever the outcome"
    if allowed:
        (review,) = jobs
        assert (review.task, review.head_sha, review.pr_number) == ("review", HEAD, 2)
        assert review.args == {"command": "review", "requested_by": "alice"}
        assert replies(github, job) == []
    else:
        assert jobs == []
        (reply,) = replies(github, job)
        assert reply.startswith("<!-- cibot:command:")
        assert "Sorry @alice" in reply
        assert f"needs **{required}** permission" in reply
        assert f"(you have **{level}**)" in reply


def test_the_operator_policy_sets_the_default_required_level(
    github: FakeGitHub, gh: GitHubClient, policy: Policy
) -> None:
    github.set_permission(REPO, "alice", "write")
    strict = policy.model_copy(
        update={"behaviour": policy.behaviour.model_copy(update={"command_permission": "admin"})}
    )
    job = command_job(github, "/cibot summary")
    assert handle_command(job, gh=gh, policy=strict) == []
    assert "needs **admin** permission" in replies(github, job)[0]


def test_a_stranger_without_any_access_is_refused_politely(
    github: FakeGitHub, gh: GitHubClient, policy: Policy
) -> None:
    job = command_job(github, "/cibot tests", author="drive-by")
    assert handle_command(job, gh=gh, policy=policy) == []
    assert "(you have **none**)" in replies(github, job)[0]


def test_the_bots_own_comment_never_triggers_a_command(
    github: FakeGitHub, gh: GitHubClient, policy: Policy
) -> None:
    github.set_permission(REPO, "cibot[bot]", "admin")
    before = len(github.calls_to("POST", "/reactions"))
    for login in ("cibot[bot]", "other-app[bot]"):
        job = command_job(github, "/cibot review", author=login)
        assert handle_command(job, gh=gh, policy=policy) == []
        assert reactions(github, job) == []
        assert replies(github, job) == []
    assert len(github.calls_to("POST", "/reactions")) == before


@pytest.mark.parametrize(
    ("body", "task"),
    [
        ("/cibot summary", "summary"),
        ("/cibot review", "review"),
        ("@cibot explain", "ci"),
        ("/cibot tests", "tests"),
        ("/cibot deps", "deps"),
    ],
)
def test_model_commands_hand_off_to_their_task(
    github: FakeGitHub, gh: GitHubClient, policy: Policy, body: str, task: str
) -> None:
    github.set_permission(REPO, "alice", "write")
    job = command_job(github, body)
    (next_job,) = handle_command(job, gh=gh, policy=policy)
    assert next_job == JobRef(
        task=task,
        installation_id=INSTALLATION,
        repo=REPO,
        delivery_id="d-1",
        pr_number=2,
        head_sha=HEAD,
        args={"command": body.split()[1], "requested_by": "alice"},
    )


@pytest.mark.parametrize(
    ("argv", "tier", "task"),
    [
        ("", "frontier", "review"),
        ("mid", "mid", "review"),
        ("human", "human", "review"),
        ("frontier summary", "frontier", "summary"),
        ("tests mid", "mid", "tests"),
        ("explain", "frontier", "ci"),
    ],
)
def test_escalate_forces_a_tier(
    github: FakeGitHub, gh: GitHubClient, policy: Policy, argv: str, tier: str, task: str
) -> None:
    github.set_permission(REPO, "alice", "maintain")
    job = command_job(github, f"/cibot escalate {argv}".strip())
    (next_job,) = handle_command(job, gh=gh, policy=policy)
    assert (next_job.task, next_job.args["force_tier"]) == (task, tier)


@pytest.mark.parametrize("argv", ["local", "opus", "frontier `x`"])
def test_escalate_to_an_unknown_tier_explains_the_usage(
    github: FakeGitHub, gh: GitHubClient, policy: Policy, argv: str
) -> None:
    github.set_permission(REPO, "alice", "write")
    job = command_job(github, f"/cibot escalate {argv}")
    assert handle_command(job, gh=gh, policy=policy) == []
    (reply,) = replies(github, job)
    assert "takes an optional tier (mid, frontier, human)" in reply


@pytest.mark.parametrize("body", ["/cibot help", "/cibot", "@cibot frobnicate"])
def test_help_and_unknown_commands_reply_with_the_command_list(
    github: FakeGitHub, gh: GitHubClient, policy: Policy, body: str
) -> None:
    github.set_permission(REPO, "alice", "write")
    job = command_job(github, body)
    assert handle_command(job, gh=gh, policy=policy) == []
    (reply,) = replies(github, job)
    for name in COMMANDS:
        assert f"`/cibot {name}`" in reply
    if "frobnicate" in body:
        assert "I don't know the command `frobnicate`" in reply


def test_a_retried_command_edits_its_reply_instead_of_adding_one(
    github: FakeGitHub, gh: GitHubClient, policy: Policy
) -> None:
    github.set_permission(REPO, "alice", "read")
    job = command_job(github, "/cibot review")
    handle_command(job, gh=gh, policy=policy)
    handle_command(job, gh=gh, policy=policy)
    assert len(replies(github, job)) == 1


def test_a_switched_off_task_says_so(github: FakeGitHub, gh: GitHubClient, policy: Policy) -> None:
    github.set_permission(REPO, "alice", "write")
    github.set_file(REPO, ".github/cibot.yml", "tasks:\n  tests:\n    enabled: false\n")
    job = command_job(github, "/cibot tests")
    assert handle_command(job, gh=gh, policy=policy) == []
    assert "The `tests` task is switched off" in replies(github, job)[0]


def test_config_shows_the_merged_settings_and_the_repo_file_errors(
    github: FakeGitHub, gh: GitHubClient, policy: Policy
) -> None:
    github.set_permission(REPO, "alice", "write")
    github.set_file(
        REPO,
        ".github/cibot.yml",
        "review:\n  auto: true\ntiers:\n  local: {}\ncommands:\n  permission: triage\n",
    )
    job = command_job(github, "/cibot config")
    assert handle_command(job, gh=gh, policy=policy) == []
    (reply,) = replies(github, job)
    assert "| auto-review | yes |" in reply
    assert "| commands need | write |" in reply  # the repo's lower "triage" cannot apply
    assert "| task `review` | mid |" in reply
    assert "has problems" in reply and "tiers" in reply


def test_cost_without_a_ledger_is_a_clearly_marked_placeholder(
    github: FakeGitHub, gh: GitHubClient, policy: Policy
) -> None:
    github.set_permission(REPO, "alice", "write")
    job = command_job(github, "/cibot cost")
    handle_command(job, gh=gh, policy=policy)
    assert "Cost report not available yet" in replies(github, job)[0]


def test_cost_sums_this_prs_calls_from_the_ledger(
    github: FakeGitHub, gh: GitHubClient, policy: Policy, tmp_path: Any
) -> None:
    from workers.ledger import JobResult, Ledger
    from workers.llm import CallRecord

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        github.set_permission(REPO, "alice", "write")
        job = command_job(github, "/cibot cost")
        handle_command(job, gh=gh, policy=policy, ledger=ledger)
        assert "has not made any model calls" in replies(github, job)[0]

        for n, (task, tier, cost) in enumerate(
            [("summary", "local", 0.0), ("review", "mid", 0.0123), ("review", "mid", 0.01)]
        ):
            sha = f"{n:040x}"  # one job per push: the ledger keys jobs on the head SHA
            ref = JobRef(
                task=task,
                installation_id=INSTALLATION,
                repo=REPO,
                delivery_id=f"x{n}",
                pr_number=2,
                head_sha=sha,
            )
            other = JobRef(
                task=task,
                installation_id=INSTALLATION,
                repo=REPO,
                delivery_id=f"y{n}",
                pr_number=3,
                head_sha=sha,
            )
            for r in (ref, other):
                ledger.queue_job(r)
                ledger.finish_job(
                    r,
                    JobResult(
                        status="succeeded",
                        tier=tier,
                        calls=[
                            CallRecord(
                                tier=tier,
                                model="m",
                                prompt_tokens=1000,
                                completion_tokens=200,
                                cost_usd=cost,
                            )
                        ],
                    ),
                )
        again = command_job(github, "/cibot cost", delivery="d-2")
        handle_command(again, gh=gh, policy=policy, ledger=ledger)
        (reply,) = replies(github, again)
        assert "| review | mid | 2 | 2,400 | $0.0223 |" in reply
        assert "| summary | local | 1 | 1,200 | $0.0000 |" in reply
        assert "API total: **$0.0223**" in reply
    finally:
        ledger.close()


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"command": "review", "comment_id": "1", "author": "alice"},
        {"command": "review", "comment_id": 1},
        {"command": "", "comment_id": 1, "author": "alice"},
    ],
)
def test_a_malformed_command_job_is_an_input_error(
    gh: GitHubClient, policy: Policy, args: dict[str, Any]
) -> None:
    job = JobRef(
        task="command",
        installation_id=INSTALLATION,
        repo=REPO,
        delivery_id="d",
        pr_number=2,
        args=args,
    )
    with pytest.raises(InputError):
        handle_command(job, gh=gh, policy=policy)
