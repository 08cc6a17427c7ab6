"""Count each acceptance signal end to end: signed webhooks through the real parser and
routers, the bookkeeping jobs through the real GitHub client (PyGithub) against the fake
GitHub on loopback, and the feedback rows in a real SQLite ledger."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot import webhooks
from bot.events import Context
from bot.features import pulls
from bot.kernel.errors import PayloadError
from bot.kernel.jobs import JobRef
from bot.kernel.settings import Settings
from bot.server import ROUTER
from policies.loading import load_policy
from tests.edge_server import SECRET, fixture, headers_for
from tests.fakes.github import FakeGitHub
from tests.fakes.model import FakeModelServer
from tests.test_pipeline import LOCAL_ID, World, environment, write_policy
from workers import pipeline
from workers.jobs import bookkeeping
from workers.jobs import tests as tests_job
from workers.ledger import SUCCEEDED, JobResult
from workers.pipeline import Runtime, StepOutcome

# The repository, PR and installation the webhook fixtures name.
REPO = "octo-org/hello-world"
PR = 2
INSTALLATION = 2311213
HEAD = "c" * 40
MULTI = (Path(__file__).parent / "fixtures" / "jobs" / "review" / "multi_file.diff").read_text(
    encoding="utf-8"
)
CART = "src/shop/cart.py"
CART_AT_HEAD = '''\
"""Shopping cart."""


class Cart:
    def __init__(self):
        self.items = []

    def add(self, item, qty=1):
        for _ in range(qty):
            self.items.append(item)
        return len(self.items)

    def total(self):
        total = sum(i.weight for i in self.items)
        return round(total, 2)
'''
ROUNDED = "        return round(total, 2) if self.items else 0"
EXTEND = "        self.items.extend([item] * qty)"
SUMMARY = {
    "what": "Adds quantities to the cart.",
    "why": "Orders carry quantities.",
    "risks": [],
    "files": [{"path": CART, "change": "add() takes qty"}],
}


def finding(line: int, body: str, **extra: Any) -> dict[str, Any]:
    """Return one review finding on the cart, as the model writes it."""
    return {"path": CART, "line": line, "side": "RIGHT", "severity": "major", "body": body, **extra}


@pytest.fixture
def world(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Build a worker's Runtime on the fake GitHub holding the fixtures' PR #2."""
    with (
        FakeGitHub() as gh,
        FakeModelServer("local", model_ids=(LOCAL_ID,)) as local,
        FakeModelServer("mid", model_ids=("gpt-5", "gpt-5.5")) as mid,
    ):
        gh.add_installation(INSTALLATION, [REPO])
        gh.set_file(REPO, CART, CART_AT_HEAD)  # the PR's head commit takes main's tree
        gh.add_pull(REPO, PR, title="Cart quantities", diff=MULTI, head_sha=HEAD)
        db = f"sqlite:///{tmp_path / 'ledger.db'}"
        env = environment(gh, local, mid, redis_url, db, write_policy(tmp_path))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings.from_env()
        policy = load_policy(settings.policy_path, overrides=settings.tier_overrides)
        sent: list[tuple[str, JobRef, str]] = []
        rt = Runtime.build(
            settings, policy, send=lambda n, r, q: sent.append((n, r, q)), lock_ttl_s=30
        )
        yield World(gh, local, mid, settings, policy, rt, sent)
        rt.close()


# ---- driving the bot ----------------------------------------------------------------------


def run(world: World, task: str, pr: int = PR, sha: str = HEAD) -> None:
    """Run a model job (summary or review) through dispatch, run_job and publish."""
    ref = JobRef(
        task=task,
        installation_id=INSTALLATION,
        repo=REPO,
        delivery_id=f"d-{task}-{pr}",
        pr_number=pr,
        head_sha=sha,
    )
    assert world.through(ref)[-1] is StepOutcome.PUBLISHED


def review(world: World, *findings: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """Have the bot review PR #2 with these findings; return the review id and line comments."""
    world.external.script(reply={"summary": "Adds quantities.", "findings": list(findings)})
    run(world, "review")
    [posted] = world.github.reviews(REPO, PR)
    return int(posted["id"]), list(posted["comments"])


def summary(world: World) -> dict[str, Any]:
    """Have the bot post its sticky summary on PR #2; return the comment."""
    world.local.script(reply=SUMMARY)
    run(world, "summary")
    [comment] = [c for c in world.github.comments(REPO, PR) if "cibot:summary" in c["body"]]
    return comment


def generated_tests(world: World, pr: int, *, push: bool = True) -> int:
    """Publish generated tests for a PR with the tests job's own publish; return the comment id.

    ``push=False`` refuses the App's push, so the comment carries the test file instead.
    """
    ref = JobRef(
        task="tests",
        installation_id=INSTALLATION,
        repo=REPO,
        delivery_id=f"d-tests-{pr}",
        pr_number=pr,
        head_sha=world.github.head_of(REPO, pr),
    )
    payload = {
        "count": 1,
        "head_sha": ref.head_sha,
        "branch": tests_job.BRANCH.format(pr=pr),
        "path": f"tests/{tests_job.TEST_FILE.format(pr=pr)}",
        "code": "def test_add():\n    assert True\n",
        "body": "Covers `Cart.add`.",
    }
    world.rt.ledger.start_job(ref, tier="local")
    github = world.rt.github(INSTALLATION)
    if not push:
        world.github.inject("POST", r"/git/trees$", status=403, body={"message": "no access"})
    try:
        comment_id = tests_job.publish(github, ref, payload)
    finally:
        github.close()
    result = JobResult(status=SUCCEEDED, tier="local", model=LOCAL_ID, comment_id=comment_id)
    assert world.rt.ledger.finish_job(ref, result)
    return comment_id


def deliver(world: World, name: str, payload: dict[str, Any], delivery: str) -> list[StepOutcome]:
    """Sign and parse a delivery, route it, and run its jobs as a worker would."""
    body = json.dumps(payload).encode()
    headers = headers_for(body, event=name.split(".")[0], delivery=delivery)
    event = webhooks.parse(headers, body, secret=SECRET)
    jobs = ROUTER.dispatch(event, Context(policy=world.policy, bot_login=world.settings.bot_login))
    # Only identifiers cross the queue: rebuild each job from its message, as Celery would.
    return [pipeline.dispatch(JobRef.from_kwargs(job.to_kwargs()), world.rt) for job in jobs]


def closed(world: World, *, merged: bool, pr: int = PR, head_ref: str = "") -> dict[str, Any]:
    """Return the pull_request.closed payload for a PR of the fake at its current head."""
    payload = copy.deepcopy(fixture("pull_request.closed"))
    pull = payload["pull_request"]
    pull["number"], pull["merged"] = pr, merged
    pull["head"]["sha"] = world.github.head_of(REPO, pr)
    pull["head"]["ref"] = head_ref or f"feature-{pr}"
    return payload


def thread(action: str, first: dict[str, Any]) -> dict[str, Any]:
    """Return a pull_request_review_thread payload whose thread starts with ``first``."""
    payload = copy.deepcopy(fixture("pull_request_review_thread.resolved"))
    payload["action"] = action
    payload["thread"]["comments"] = [first]
    return payload


def replied(comment: dict[str, Any]) -> dict[str, Any]:
    """Return the pull_request_review_comment.created payload for a reply from the fake."""
    return {**copy.deepcopy(fixture("pull_request_review_comment.created")), "comment": comment}


def edited(comment: dict[str, Any], *, sender: str, sender_type: str = "User") -> dict[str, Any]:
    """Return the issue_comment.edited payload for a fake comment edited by ``sender``."""
    payload = copy.deepcopy(fixture("issue_comment.edited"))
    payload["comment"] = {**payload["comment"], **comment}
    payload["sender"] = {**payload["sender"], "login": sender, "type": sender_type}
    return payload


def rows(world: World) -> list[tuple[Any, ...]]:
    """Return every feedback row as (signal, value, comment_id, task, pr_number)."""
    query = "SELECT signal, value, comment_id, task, pr_number FROM feedback ORDER BY id"
    with world.rt.ledger.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(query))]


# ---- one integration test per signal ------------------------------------------------------------


def test_a_suggestion_a_later_commit_applies_counts_once_for_the_review(world: World) -> None:
    """Only the suggestion the head took counts, found though later lines moved it down."""
    review_id, comments = review(
        world,
        finding(15, "Empty carts total 0.", suggestion=ROUNDED),
        finding(10, "Use extend.", start_line=9, suggestion=EXTEND),
        finding(11, "Returning the size is surprising."),
    )
    assert sum("```suggestion" in c["body"] for c in comments) == 2
    taken = next(c for c in comments if ROUNDED in c["body"])
    pushed = "# Carts.\n" + CART_AT_HEAD.replace("        return round(total, 2)\n", ROUNDED + "\n")
    world.github.push_pull(REPO, PR, {CART: pushed}, message="Apply suggestion from cibot")
    for delivery in ("close-1", "close-1", "close-2"):  # a redelivery, then a second close
        assert deliver(world, "pull_request.closed", closed(world, merged=True), delivery) == [
            StepOutcome.RECORDED
        ]
    assert rows(world) == [("suggestion_applied", 1, review_id, "review", PR)]
    with world.rt.ledger.engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT feedback_key FROM feedback")).scalars().all()
    assert keys == [f"suggestion:{taken['id']}"]
    assert world.rt.ledger.acceptance(installation_id=INSTALLATION, tier="mid") == {
        "review": (1, 1)
    }


def test_a_resolved_bot_thread_counts_and_reopening_it_takes_that_back(world: World) -> None:
    """thread_resolved +1 once per delivery, unresolved -1; a person's own thread is not counted."""
    review_id, [first] = review(world, finding(15, "Empty carts total 0."))
    for delivery in ("thread-1", "thread-1"):
        deliver(world, "pull_request_review_thread.resolved", thread("resolved", first), delivery)
    assert rows(world) == [("thread_resolved", 1, review_id, "review", PR)]
    deliver(world, "pull_request_review_thread.unresolved", thread("unresolved", first), "thread-2")
    human = world.github.add_line_comment(REPO, PR, "Rename this?", path=CART, line=14)
    deliver(world, "pull_request_review_thread.resolved", thread("resolved", human), "thread-3")
    assert rows(world) == [
        ("thread_resolved", 1, review_id, "review", PR),
        ("thread_unresolved", -1, review_id, "review", PR),
    ]
    assert world.rt.ledger.acceptance(installation_id=INSTALLATION, tier="mid") == {
        "review": (0, 1)
    }


def test_generated_tests_merged_with_the_pr_count_for_the_tests_job(world: World) -> None:
    """The tests commit fast-forwarded into the PR, then the PR merged: tests_merged +1, once."""
    comment_id = generated_tests(world, PR)
    sha = world.github.ref_of(REPO, tests_job.BRANCH.format(pr=PR))  # the job pushed it
    world.github.fast_forward(REPO, PR, sha)
    for delivery in ("merge-1", "merge-1"):
        deliver(world, "pull_request.closed", closed(world, merged=True), delivery)
    assert rows(world) == [("tests_merged", 1, comment_id, "tests", PR)]


def test_generated_tests_left_out_or_closed_unmerged_count_against(world: World) -> None:
    """A merged PR without its tests branch: -1; a PR from the tests branch closed unmerged: -1."""
    first = generated_tests(world, PR)
    deliver(world, "pull_request.closed", closed(world, merged=True), "merge-2")
    world.github.add_pull(REPO, 3, diff=MULTI, head_sha="3" * 40)
    third = generated_tests(world, 3)
    branch = tests_job.BRANCH.format(pr=3)
    world.github.add_pull(
        REPO, 4, diff=MULTI, head_sha=world.github.ref_of(REPO, branch), head_ref=branch
    )
    payload = closed(world, merged=False, pr=4, head_ref=branch)
    payload["pull_request"]["head"]["repo"]["full_name"] = REPO
    for delivery in ("close-4", "close-4"):
        deliver(world, "pull_request.closed", payload, delivery)
    assert rows(world) == [
        ("tests_merged", -1, first, "tests", PR),
        ("tests_merged", -1, third, "tests", 3),
    ]


def test_a_test_file_copied_from_the_comment_counts_as_merged(world: World) -> None:
    """Where the App could not push, a PR merged with the posted test file takes the tests."""
    comment_id = generated_tests(world, PR, push=False)
    assert tests_job.BRANCH.format(pr=PR) not in world.github.branches(REPO)
    path = f"tests/{tests_job.TEST_FILE.format(pr=PR)}"
    world.github.push_pull(REPO, PR, {path: "def test_add():\n    assert True\n"})
    deliver(world, "pull_request.closed", closed(world, merged=True), "merge-3")
    assert rows(world) == [("tests_merged", 1, comment_id, "tests", PR)]


def test_a_person_editing_the_sticky_comment_counts_once(world: World) -> None:
    """edited +1 once per comment; the bot's own refresh and other comments count nothing."""
    sticky = summary(world)
    for delivery in ("edit-1", "edit-1", "edit-2"):
        deliver(world, "issue_comment.edited", edited(sticky, sender="alice"), delivery)
    deliver(
        world, "issue_comment.edited", edited(sticky, sender="cibot[bot]", sender_type="Bot"), "e3"
    )
    note = world.github.add_comment(
        REPO, PR, "Commands: ...", author="cibot[bot]", author_type="Bot"
    )
    [other] = [c for c in world.github.comments(REPO, PR) if c["id"] == note]
    deliver(world, "issue_comment.edited", edited(other, sender="alice"), "edit-4")
    assert rows(world) == [("edited", 1, sticky["id"], "summary", PR)]


def test_a_human_reply_to_a_bot_line_comment_counts_and_a_command_does_not(world: World) -> None:
    """replied +1 once per bot comment, whoever replies; a /cibot reply is not feedback."""
    review_id, [one, two] = review(
        world, finding(15, "Empty carts total 0."), finding(11, "Returning the size is odd.")
    )
    fixed = world.github.add_line_comment(REPO, PR, "Fixed, thanks.", in_reply_to=one["id"])
    also = world.github.add_line_comment(REPO, PR, "Agreed.", in_reply_to=one["id"], author="bob")
    command = world.github.add_line_comment(REPO, PR, "/cibot review", in_reply_to=two["id"])
    for delivery, reply in (("r-1", fixed), ("r-1", fixed), ("r-2", also), ("r-3", command)):
        deliver(world, "pull_request_review_comment.created", replied(reply), delivery)
    assert rows(world) == [("replied", 1, review_id, "review", PR)]


def test_reactions_on_line_comments_and_the_sticky_comment_are_settled_at_close(
    world: World,
) -> None:
    """👍/👎 on review line comments count for the review, as those on the sticky summary do."""
    sticky = summary(world)
    review_id, [one, two] = review(
        world, finding(15, "Empty carts total 0."), finding(11, "Returning the size is odd.")
    )
    for user in ("alice", "bob"):
        world.github.react(REPO, sticky["id"], "+1", user=user)
    world.github.react(REPO, one["id"], "-1", user="alice")
    world.github.react(REPO, two["id"], "+1", user="bob")
    world.github.react(REPO, two["id"], "heart", user="carol")  # neither 👍 nor 👎
    for delivery in ("close-5", "close-5"):
        deliver(world, "pull_request.closed", closed(world, merged=False), delivery)
    assert sorted(rows(world)) == [
        ("reaction", -1, review_id, "review", PR),
        ("reaction", 1, review_id, "review", PR),
        ("reaction", 2, sticky["id"], "summary", PR),
    ]
    # The review's id is not an issue comment: its reactions come with the line comments.
    assert world.github.calls_to("GET", rf"/issues/comments/{review_id}/reactions") == []


# ---- the pure parts -------------------------------------------------------------------------------


def test_the_app_subscribes_to_every_event_a_router_handles() -> None:
    """A handler for an event the App does not subscribe to would never run."""
    manifest = json.loads(
        (Path(__file__).resolve().parents[1] / ".github" / "app-manifest.json").read_text()
    )
    handled = {name for name, _ in ROUTER.routes()}
    always_sent = {"installation", "installation_repositories"}  # sent to every App
    assert handled - always_sent <= set(manifest["default_events"])
    assert "pull_request_review_thread" in handled


def test_the_tests_branch_pattern_matches_the_tests_job_branch() -> None:
    """The edge names the tests job's branch without importing the job."""
    assert pulls.TESTS_BRANCH.fullmatch(tests_job.BRANCH.format(pr=42))
    payload = fixture("pull_request.closed")
    payload["pull_request"]["head"]["ref"] = tests_job.BRANCH.format(pr=42)
    event = webhooks.Event("pull_request", "d", payload)
    assert pulls.tests_branch_pr(event) == 42
    payload["pull_request"]["head"]["repo"]["full_name"] = "mallory/hello-world"
    assert pulls.tests_branch_pr(event) is None  # a fork's branch of that name is not ours


@pytest.mark.parametrize(
    ("before", "after", "span", "suggested", "expected"),
    [
        ("a\nb\nc\n", "a\nB\nc\n", (2, 2), ["B"], True),
        ("a\nb\nc\n", "x\ny\na\nB\nc\n", (2, 2), ["B"], True),  # moved by a later edit
        ("a\nb\nc\n", "a\nb\nc\n", (2, 2), ["B"], False),
        ("a\nb\nc\n", "a\nother\nc\n", (2, 2), ["B"], False),
        ("a\nb\nc\n", "a\nc\n", (2, 3), ["c"], True),  # a suggestion that drops a line
        ("a\nb\nc\n", "a\nb\nb2\nc\n", (2, 2), ["b", "b2"], True),  # one that adds a line
        ("B\na\nb\n", "B\na\nb\n", (3, 3), ["B"], False),  # the text was there already
        ("a\nb\r\n", "a\nB  \r\n", (2, 2), ["B"], True),  # line endings and trailing blanks
        ("a\nb\n", None, (2, 2), ["B"], False),  # the file is gone
    ],
)
def test_applied_compares_runs_of_lines(
    before: str, after: str | None, span: tuple[int, int], suggested: list[str], expected: bool
) -> None:
    assert (
        bookkeeping.applied(before, after, start=span[0], end=span[1], suggested=suggested)
        is expected
    )


def test_suggested_lines_read_only_a_one_click_suggestion_block() -> None:
    body = "**🟠 Major** · Text.\n\n````suggestion\n    x = 1\n    ```\n````\n\n<!-- m -->"
    assert bookkeeping.suggested_lines(body) == ["    x = 1", "    ```"]
    assert bookkeeping.suggested_lines("A possible change:\n\n```\nx = 1\n```\n") is None


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("pull_request_review_thread.resolved", {"thread": None}),
        ("pull_request_review_thread.resolved", {"thread": {"comments": ["x"]}}),
        ("pull_request_review_thread.resolved", {"thread": {"comments": [{"id": "1"}]}}),
        ("issue_comment.edited", {"sender": None}),
        ("issue_comment.edited", {"comment": {"user": {"login": "cibot[bot]"}, "id": -1}}),
        ("pull_request_review_comment.created", {"comment": {"in_reply_to_id": 2**64}}),
        ("pull_request_review_comment.created", {"comment": {"in_reply_to_id": 5, "body": 3}}),
    ],
)
def test_malformed_feedback_payloads_are_payload_errors(name: str, change: dict[str, Any]) -> None:
    payload = {**copy.deepcopy(fixture(name)), **change}
    if change.get("sender", 0) is None:
        del payload["sender"]
    event = webhooks.Event(name.split(".")[0], "d", payload)
    with pytest.raises(PayloadError):
        ROUTER.dispatch(event, Context(policy=load_policy()))
