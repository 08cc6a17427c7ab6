"""Record edge events in the ledger: PR outcomes, feedback on bot results, installations.

``workers.pipeline.dispatch`` calls ``handle(ref, rt)`` for these edge tasks.
Every write is keyed (delivery id, or comment and reaction), so a redelivery counts once.

Each acceptance signal is a feedback row attributed to the job whose post it is about:
``comment_id`` is that job's result (its sticky comment, or its review), so the ledger
joins the row to the job's task and tier; the line comment it came from is in the key.

| what a person did | when it is read | signal | value |
|---|---|---|---|
| 👍 / 👎 on a sticky comment or a review line comment | PR closed | ``reaction`` | ±count |
| a later commit makes a ```suggestion``` change | PR closed | ``suggestion_applied`` | +1 |
| resolved (+1) / reopened (-1) a bot review thread | webhook | ``thread_[un]resolved`` | ±1 |
| replied in a bot review thread (not a command) | webhook | ``replied`` | +1 |
| edited the bot's comment | webhook | ``edited`` | +1 |
| merged / left out the generated tests | PR closed | ``tests_merged`` | ±1 |
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.kernel.errors import GitHubNotFound, GitHubPermission
from bot.kernel.jobs import JobRef
from workers.jobs.contract import GitHubPort, log_fields
from workers.jobs.tests import BRANCH as TESTS_BRANCH
from workers.jobs.tests import TEST_FILE
from workers.runtime import Runtime

log = logging.getLogger("cibot.bookkeeping")

# installation event action → the installation's state afterwards
INSTALLATION_STATES = {
    "created": "active",
    "deleted": "deleted",
    "suspend": "suspended",
    "unsuspend": "active",
    "new_permissions_accepted": "active",
}
# feedback job (kind, content) → (signal, acceptance value)
SIGNALS = {
    ("thread", "resolved"): ("thread_resolved", 1),
    ("thread", "unresolved"): ("thread_unresolved", -1),
    ("reply", "created"): ("replied", 1),
    ("edited", "edited"): ("edited", 1),
}
# What makes a feedback job count once: a thread may be resolved, reopened and resolved
# again (each delivery counts); a reply or an edit counts once per bot comment.
FEEDBACK_KEYS = {
    "thread": "delivery:{delivery}",
    "reply": "replied:{comment}",
    "edited": "edited:{comment}",
}
VOTES = {"+1": 1, "-1": -1}
# The one-click suggestion block the review job writes (workers.jobs.review.EXACT_SUGGESTION).
SUGGESTION = re.compile(
    r"^(?P<fence>`{3,}|~{3,})[ \t]*suggestion[ \t]*\n(?P<code>.*?)\n(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
UNREADABLE = (GitHubNotFound, GitHubPermission)


@dataclass(frozen=True)
class Target:
    """Name the bot result a signal is about: the job's task and its posted result id."""

    task: str
    comment_id: int | None


def handle(ref: JobRef, rt: Runtime) -> None:
    """Record one outcome, feedback or installation event."""
    HANDLERS[ref.task](ref, rt)


# ---- PR outcomes: settle what GitHub does not send as webhooks -------------------------------


def outcome(ref: JobRef, rt: Runtime) -> None:
    """Record a PR merged or closed without merge, then settle the signals read at close."""
    if ref.pr_number is None:
        log.warning("outcome without a pull request", extra=log_fields(ref))
        return
    merged = bool(ref.args.get("merged")) or ref.args.get("outcome") == "merged"
    rt.ledger.record_outcome(
        installation_id=ref.installation_id,
        repo=ref.repo,
        pr_number=ref.pr_number,
        outcome="merged" if merged else "closed",
        delivery_id=ref.delivery_id,
    )
    tests_for = ref.args.get("tests_for")
    if type(tests_for) is int:
        record_tests(ref, rt, pr_number=tests_for, taken=merged)
    posted = results(rt, ref.repo, ref.pr_number)
    if not posted:
        return
    with contextlib.closing(port(rt, ref)) as github:
        reviews = settle_review(ref, rt, github, posted)
        settle_reactions(ref, rt, github, {k: v for k, v in posted.items() if k not in reviews})
        if merged and "tests" in posted.values():
            settle_tests(ref, rt, github)


def settle_reactions(
    ref: JobRef, rt: Runtime, github: GitHubPort, posted: Mapping[int, str]
) -> None:
    """Read the 👍/👎 counts on each comment the bot posted on the PR into feedback rows.

    GitHub sends no webhook for reactions, so they are read once the PR is decided.
    """
    for comment_id, task in sorted(posted.items()):
        try:
            counts = github.comment_reactions(ref.repo, comment_id)
        except UNREADABLE:
            continue  # deleted, or not an issue comment: nothing to count
        target = Target(task, comment_id)
        record_votes(ref, rt, counts, key=f"reaction:{comment_id}", target=target)


def settle_review(
    ref: JobRef, rt: Runtime, github: GitHubPort, posted: Mapping[int, str]
) -> set[int]:
    """Count 👍/👎 and applied suggestions on the bot's line comments; return the review ids."""
    if not any(task == "review" for task in posted.values()):
        return set()
    try:
        comments = github.line_comments(ref.repo, number(ref))
    except UNREADABLE:
        return set()
    ours = list(bot_comments(comments, posted, bot_login=rt.settings.bot_login))
    for comment, target in ours:
        record_votes(ref, rt, comment.reactions, key=f"line_reaction:{comment.id}", target=target)
    settle_suggestions(ref, rt, github, ours)
    return {int(c.review_id) for c in comments if c.review_id is not None}


def bot_comments(
    comments: Sequence[Any], posted: Mapping[int, str], *, bot_login: str
) -> Iterator[tuple[Any, Target]]:
    """Yield the first comment of each thread the bot started, with the result it belongs to."""
    for comment in comments:
        if comment.in_reply_to_id is None:
            target = owner(comment, posted, bot_login=bot_login)
            if target is not None:
                yield comment, target


def owner(comment: Any, posted: Mapping[int, str], *, bot_login: str) -> Target | None:
    """Return the bot result a line comment is part of, or None when a person wrote it."""
    review_id = comment.review_id
    if review_id in posted:
        return Target(posted[review_id], review_id)
    if str(comment.author).lower() == bot_login.lower():
        return Target("review", review_id if review_id is not None else comment.id)
    return None


def settle_suggestions(
    ref: JobRef, rt: Runtime, github: GitHubPort, ours: Sequence[tuple[Any, Target]]
) -> None:
    """Record each bot suggestion that the PR's final head has taken, once per suggestion."""
    head = ref.head_sha or str(github.pull(ref.repo, number(ref)).head_sha)
    read = files(github, ref.repo)
    for comment, target in ours:
        lines = suggested_lines(comment.body)
        end = comment.original_line
        if lines is None or end is None:
            continue
        start = comment.original_start_line or end
        before = read(comment.path, comment.original_commit_id)
        if applied(before, read(comment.path, head), start=start, end=end, suggested=lines):
            key = f"suggestion:{comment.id}"
            record(ref, rt, key=key, signal="suggestion_applied", value=1, target=target)


def files(github: GitHubPort, repo: str) -> Callable[[str, str], str | None]:
    """Return a reader of files at commits that asks GitHub once per (path, commit)."""
    seen: dict[tuple[str, str], str | None] = {}

    def read(path: str, sha: str) -> str | None:
        if (path, sha) not in seen:
            try:
                seen[path, sha] = github.file_at(repo, path, ref=sha) if sha else None
            except UNREADABLE:
                seen[path, sha] = None
        return seen[path, sha]

    return read


def suggested_lines(body: str) -> list[str] | None:
    """Return the lines of the comment's one-click suggestion block, or None if it has none."""
    found = SUGGESTION.search(body.replace("\r\n", "\n"))
    return [line.rstrip() for line in found["code"].split("\n")] if found else None


def applied(
    before: str | None, after: str | None, *, start: int, end: int, suggested: Sequence[str]
) -> bool:
    """Tell whether ``after`` made the change that replaces lines start..end of ``before``.

    Applying a suggestion replaces one run of the old lines with the suggested ones, so
    the suggested run occurs more often than before, or, when it was part of the old run
    (a suggestion that drops lines), the old run occurs less often. Counting runs, not
    reading fixed line numbers, still finds the change after later edits moved it.
    """
    if after is None or not suggested:
        return False
    old_text, new_text = _lines(before or ""), _lines(after)
    old = old_text[start - 1 : end]
    if list(suggested) == old:
        return False
    gained = _runs(new_text, suggested) > _runs(old_text, suggested)
    dropped = bool(old) and _runs(new_text, old) < _runs(old_text, old)
    return gained or (dropped and _runs(new_text, suggested) > 0)


def _lines(text: str) -> list[str]:
    """Split text into lines without line endings or trailing blanks."""
    return [line.rstrip() for line in text.split("\n")]


def _runs(lines: Sequence[str], block: Sequence[str]) -> int:
    """Count the places where ``block`` occurs as consecutive lines of ``lines``."""
    size, wanted = len(block), list(block)
    return sum(1 for i in range(len(lines) - size + 1) if lines[i : i + size] == wanted)


def settle_tests(ref: JobRef, rt: Runtime, github: GitHubPort) -> None:
    """On a merged PR, record whether the bot's generated tests went in with it.

    They did when the commit on the tests branch is one of the PR's commits, or the test
    file is in its head (copied from the comment). They were left out when the branch
    exists but neither holds; with no branch and no file there is nothing to judge.
    """
    pr = number(ref)
    branch = github.branch_head(ref.repo, TESTS_BRANCH.format(pr=pr))
    taken = branch is not None and branch in github.pull_commits(ref.repo, pr)
    if not taken and ref.head_sha:
        name = TEST_FILE.format(pr=pr)
        paths = github.tree_paths(ref.repo, ref.head_sha)
        taken = any(p == name or p.endswith("/" + name) for p in paths)
    if taken or branch is not None:
        record_tests(ref, rt, pr_number=pr, taken=taken)


def record_tests(ref: JobRef, rt: Runtime, *, pr_number: int, taken: bool) -> None:
    """Record the generated tests of ``pr_number`` as merged (+1) or left out (-1)."""
    task = {v: k for k, v in results(rt, ref.repo, pr_number).items()}
    record(
        ref,
        rt,
        key=f"tests:{ref.repo}#{pr_number}",
        signal="tests_merged",
        value=1 if taken else -1,
        target=Target("tests", task.get("tests")),
        pr_number=pr_number,
    )


def record_votes(
    ref: JobRef, rt: Runtime, counts: Mapping[str, int], *, key: str, target: Target
) -> None:
    """Record the 👍 and 👎 counts on one comment as ``reaction`` rows."""
    for content, sign in VOTES.items():
        if counts.get(content):
            value = sign * int(counts[content])
            record(ref, rt, key=f"{key}:{content}", signal="reaction", value=value, target=target)


# ---- feedback events from webhooks -----------------------------------------------------------


def feedback(ref: JobRef, rt: Runtime) -> None:
    """Record a reply in, or a resolution of, a bot review thread, or an edit of its comment."""
    kind, content = str(ref.args.get("kind", "")), str(ref.args.get("content", ""))
    comment_id = ref.args.get("comment_id")
    if (kind, content) not in SIGNALS or type(comment_id) is not int or ref.pr_number is None:
        log.warning("feedback event not understood", extra=log_fields(ref, kind=kind))
        return
    posted = results(rt, ref.repo, ref.pr_number)
    if kind == "edited":
        target = Target(posted[comment_id], comment_id) if comment_id in posted else None
    else:
        target = thread_owner(ref, rt, comment_id, posted)
    if target is None:
        log.info("feedback not on a bot result", extra=log_fields(ref, kind=kind))
        return
    signal, value = SIGNALS[(kind, content)]
    key = FEEDBACK_KEYS[kind].format(delivery=ref.delivery_id, comment=comment_id)
    record(ref, rt, key=key, signal=signal, value=value, target=target)


def thread_owner(
    ref: JobRef, rt: Runtime, comment_id: int, posted: Mapping[int, str]
) -> Target | None:
    """Return the bot result a thread's first comment belongs to; None if a person wrote it.

    A comment GitHub no longer shows (deleted since) is kept as it came, unattributed.
    """
    try:
        with contextlib.closing(port(rt, ref)) as github:
            comments = github.line_comments(ref.repo, number(ref))
    except UNREADABLE:
        comments = []
    found = next((c for c in comments if c.id == comment_id), None)
    if found is None:
        return Target("", comment_id)
    return owner(found, posted, bot_login=rt.settings.bot_login)


# ---- shared parts ----------------------------------------------------------------------------


def record(
    ref: JobRef,
    rt: Runtime,
    *,
    key: str,
    signal: str,
    value: int,
    target: Target,
    pr_number: int | None = None,
) -> None:
    """Write one acceptance signal; its key makes a repeat count once."""
    rt.ledger.record_feedback(
        key=key,
        installation_id=ref.installation_id,
        repo=ref.repo,
        pr_number=pr_number if pr_number is not None else ref.pr_number,
        task=target.task,
        comment_id=target.comment_id,
        signal=signal,
        value=value,
    )


def results(rt: Runtime, repo: str, pr_number: int) -> dict[int, str]:
    """Return {posted result id: task} for every result the bot posted on a PR."""
    return {
        comment_id: task for task, comment_id in rt.ledger.comments(repo=repo, pr_number=pr_number)
    }


def port(rt: Runtime, ref: JobRef) -> GitHubPort:
    """Return a GitHub client for the job's installation."""
    return rt.github(ref.installation_id)


def number(ref: JobRef) -> int:
    """Return the job's PR number (outcome and feedback jobs always carry one)."""
    if ref.pr_number is None:
        raise ValueError(f"a {ref.task} job needs a pull request number")
    return ref.pr_number


# ---- installations ---------------------------------------------------------------------------


def installation(ref: JobRef, rt: Runtime) -> None:
    """Record an installation's new state (repository changes keep it active)."""
    action = str(ref.args.get("action", ""))
    rt.ledger.record_installation(
        installation_id=ref.installation_id,
        status=INSTALLATION_STATES.get(action, "active"),
        account=str(ref.args.get("account", "")),
    )


HANDLERS: dict[str, Callable[[JobRef, Runtime], None]] = {
    "outcome": outcome,
    "feedback": feedback,
    "installation": installation,
}
