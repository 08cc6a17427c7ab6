"""Measure what each job would send for a change of history: its own gather, packer and prompts.

A change stands in for the pull request it was: the diff is the change's (a merge against its
first parent), the title and description come from the commit message (a merge's body line,
or a squash subject without its ``(#N)``), and the files are read at the change's commit.
The summary and review prompts come from the jobs' ``gather`` and ``compute``/``request``;
the tests prompt from the tests job's target finder and ``request`` on the file at the
commit (no checkout, so functions a test already names still count); the deps prompt from
the deps job's ``gather`` (git grep over the commit) and ``request``. Tokens are counted
with ``policies.tokens.count`` over every message of every call, as the model client does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from bot.kernel.errors import InputError, NothingToDo
from bot.kernel.jobs import JobRef
from policies import tokens
from policies.evidence import Evidence, FileChange
from policies.model import Policy
from policies.routing import Decision
from workers import history
from workers.github import FileInfo, PullInfo
from workers.jobs import deps, review, summary, tests
from workers.jobs.contract import Gathered, GitHubPort, ModelRequest
from workers.jobs.review import ReviewState
from workers.llm import Completion

FILLER_WORD = "change "  # one o200k token: a stand-in reply of the size the policy expects
Messages = list[dict[str, str]]


@dataclass
class HistoryPort:
    """Serve one change of a local repository as the pull request the jobs read.

    It is the part of the jobs' GitHub port the summary, review and deps gathers read, over
    git history: nothing is fetched and nothing is posted (a job's "nothing to do" reply is
    kept in ``replies``). ``port`` hands it to them as the whole port, which they need not.
    """

    change: history.Change
    files: tuple[FileChange, ...]
    replies: list[str] = field(default_factory=list)

    def pull(self, repo: str, number: int) -> PullInfo:
        """Return the change as a merged pull request."""
        return PullInfo(
            number=number,
            title=self.change.title,
            body=self.change.body,
            author="history",
            author_is_bot=False,
            draft=False,
            state="closed",
            merged=True,
            head_sha=self.change.sha,
            head_ref="",
            base_ref="",
            base_sha="",
            labels=(),
            default_branch="",
        )

    def pull_diff(self, repo: str, number: int) -> str:
        """Return the change's diff."""
        return self.change.diff.decode("utf-8", "replace")

    def pull_files(self, repo: str, number: int) -> list[FileInfo]:
        """Return the changed files with their line counts."""
        return [
            FileInfo(f.path, f.old_path, f.status, len(f.added), len(f.removed), None)
            for f in self.files
        ]

    def default_branch_file(self, repo: str, path: str) -> str | None:
        """Return nothing: the policy comes from --policy, not from the repository."""
        return None

    def upsert_comment(self, repo: str, number: int, *, marker: str, body: str) -> int:
        """Keep a job's reply instead of posting it."""
        self.replies.append(body)
        return len(self.replies)

    def comment_reactions(self, repo: str, comment_id: int) -> dict[str, int]:
        """Return no reactions."""
        return {}

    def close(self) -> None:
        """Release nothing."""

    def port(self) -> GitHubPort:
        """Return this as the jobs' port: the gathers it serves call nothing it lacks."""
        return cast(GitHubPort, self)


@dataclass(frozen=True)
class Prompts:
    """Measure history with the jobs' own prompts: a ``history.Measure``."""

    repo: Path
    policy: Policy
    name: str = "history"

    def __call__(
        self, change: history.Change, evidence: Evidence, decisions: list[Decision]
    ) -> list[history.Sent]:
        """Return each task's (prompt tokens, output tokens, calls) for one change."""
        port = HistoryPort(change, evidence.files)
        ref = JobRef(
            task="review",
            installation_id=0,
            repo=self.name,
            delivery_id=change.sha,
            pr_number=1,
            head_sha=change.sha,
        )
        try:
            gathered = review.gather(port.port(), ref, self.policy)
        except InputError:
            return [(0, 0, 0)] * len(decisions)  # only binary files: the jobs stop before a call
        return [self._sent(d, gathered, port, ref) for d in decisions]

    def _sent(
        self, decision: Decision, gathered: Gathered[ReviewState], port: HistoryPort, ref: JobRef
    ) -> history.Sent:
        """Build one task's requests and count them; a task with nothing to do sends nothing."""
        build = BUILDERS[decision.task]
        try:
            requests = build(self, decision, gathered, port, ref)
        except NothingToDo:
            return (0, 0, 0)
        output = self.policy.tasks[decision.task].expected_output_tokens  # type: ignore[index]
        return (sum(_tokens(r) for r in requests), output * len(requests), len(requests))

    def summary_requests(
        self, decision: Decision, gathered: Gathered[ReviewState], port: HistoryPort, ref: JobRef
    ) -> list[Messages]:
        """Run the summary's compute step (one call, or map and reduce) with a stand-in model."""
        sent: list[Messages] = []
        filler = _filler(self.policy.tasks["summary"].expected_output_tokens)

        def complete(tier: str, request: ModelRequest, reason: str = "") -> Completion:
            sent.append(request.messages)
            data = {"what": filler, "why": "", "risks": [], "files": []}
            return Completion("", data, tier, "", (), 0, (), {})

        summary.compute(gathered, decision, complete)
        return sent

    def review_requests(
        self, decision: Decision, gathered: Gathered[ReviewState], port: HistoryPort, ref: JobRef
    ) -> list[Messages]:
        """Build the review's one request."""
        return [review.request(gathered, decision).messages]

    def tests_requests(
        self, decision: Decision, gathered: Gathered[ReviewState], port: HistoryPort, ref: JobRef
    ) -> list[Messages]:
        """Find the changed public functions at the commit and build the first round's request."""
        found = self._targets(gathered.evidence, port.change.sha)
        if not found:
            raise NothingToDo("no changed public Python function to test")
        state = tests.TestsState(
            targets=tuple(found[: tests.MAX_TARGETS]),
            test_path=f"tests/{tests.TEST_FILE.format(pr=ref.pr_number)}",
        )
        return [tests.request(gathered.with_state(state), decision).messages]

    def _targets(self, evidence: Evidence, sha: str) -> list[tests.Target]:
        """Parse each changed Python source at the commit, as the tests job does at the head."""
        source = deps.GitSource(self.repo, sha)
        found: list[tests.Target] = []
        for change in tests.python_sources(evidence.files):
            if tests.is_test_file(change.path):
                continue
            text = source.read(change.path)
            added = frozenset(n for n, _ in change.added)
            try:
                found += tests.targets_in(change.path, text or "", added)
            except (SyntaxError, ValueError, RecursionError):
                continue  # the job skips a file it cannot parse, too
        return found

    def deps_requests(
        self, decision: Decision, gathered: Gathered[ReviewState], port: HistoryPort, ref: JobRef
    ) -> list[Messages]:
        """Survey the bumps with git grep over the commit and build the deps request."""
        source = deps.GitSource(self.repo, port.change.sha)
        work = deps.gather(port.port(), ref, self.policy, source=source)
        return [deps.request(work, decision).messages]


Builder = Callable[[Prompts, Decision, Gathered[ReviewState], HistoryPort, JobRef], list[Messages]]
BUILDERS: dict[str, Builder] = {
    "summary": Prompts.summary_requests,
    "review": Prompts.review_requests,
    "tests": Prompts.tests_requests,
    "deps": Prompts.deps_requests,
}


def _tokens(messages: Sequence[dict[str, str]]) -> int:
    """Count a request's tokens over every message, the model client's way."""
    return sum(tokens.count(m["content"]) for m in messages)


def _filler(size: int) -> str:
    """Return text of about ``size`` tokens, the reply length the policy expects."""
    return (FILLER_WORD * max(size, 1)).strip()


def prompts_for(repo: Path, policy: Policy) -> Prompts:
    """Return the measurer for a repository, refusing a path git cannot read."""
    git_dir = history.open_repo(repo).git_dir
    if not git_dir:
        raise InputError(f"{repo} is not a git repository (run `git init` or pass --repo)")
    return Prompts(repo=Path(repo), policy=policy, name=Path(repo).resolve().name)
