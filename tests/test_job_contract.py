"""Hold every model job to one contract: a static registry, one compute, typed state as JSON.

Each job gathers from the fake GitHub (through the real client, wrapped as the pipeline
wraps it) and what it gathered must come back equal from ``dump`` and ``load``: the PR, the
diff, the evidence, the merged policy and the job's own state. Text of another shape or
version is refused with ``StaleGathered``, so the pipeline gathers again instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.kernel.errors import InputError
from bot.kernel.jobs import JOB_TASKS, MODEL_TASKS, JobRef
from policies.evidence import CiFacts, FileChange, Hunk, TestFacts, evidence_from_diff
from policies.loading import load_policy, merge_repo_config
from policies.services import Block, ServiceEntry, ServiceMap
from tests import test_job_tests
from tests.fakes.github import FakeGitHub
from tests.test_capture import pull
from tests.test_job_ci import BILLING_LOG, CATALOG_LOG, E_LINE
from tests.test_job_deps import ACME_DIFF, DEFS_PY, DEPENDABOT, SYNC_PY
from tests.test_pipeline import DIFF
from workers.github import GitHubClient
from workers.jobs import ci, deps, review, summary, tests
from workers.jobs.contract import Gathered, JobState, StaleGathered, dump, load
from workers.jobs.registry import JOBS, job_for
from workers.shadow import ShadowGitHub

REPO = "acme/app"
TOKEN = "ghs_contract_test_token"
SHA = "c" * 40
FIXTURES = Path(__file__).parent / "fixtures"
any_project = test_job_tests.any_project


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    """Start the fake GitHub with one repository the token may touch."""
    with FakeGitHub() as gh:
        gh.add_token(TOKEN, [REPO])
        yield gh


@pytest.fixture
def github(fake: FakeGitHub) -> Iterator[ShadowGitHub]:
    """Give a job the real client against the fake, wrapped as the pipeline hands it over."""
    client = GitHubClient.from_token(token=TOKEN, base_url=fake.url)
    wrapped = ShadowGitHub(client, shadow=False)
    yield wrapped
    wrapped.close()


def ref(task: str, pr: int, sha: str = SHA, **args: str | int) -> JobRef:
    """Return the job the edge sends for a PR."""
    return JobRef(
        task=task,
        installation_id=1,
        repo=REPO,
        delivery_id=f"{task}-{pr}",
        pr_number=pr,
        head_sha=sha,
        args=args,
    )


def round_trip(gathered: Gathered[Any]) -> Gathered[Any]:
    """Store what a job gathered as JSON and read it back, as dispatch and run_job do."""
    text = dump(gathered)
    json.loads(text)  # plain JSON: nothing in it is code
    return load(text, type(gathered.state))


# ---- the registry ---------------------------------------------------------------------------


def test_the_registry_holds_exactly_the_model_tasks_that_have_a_job() -> None:
    """Five jobs, keyed by task; refactor and incident are model tasks without one."""
    assert JOBS.keys() == set(JOB_TASKS)
    assert set(JOB_TASKS) <= set(MODEL_TASKS)
    assert job_for("refactor") is None and job_for("incident") is None
    assert job_for("ci") is ci


@pytest.mark.parametrize("task", JOB_TASKS)
def test_every_job_has_one_compute_and_a_state_class(task: str) -> None:
    """The pipeline's one entry point and the class ``load`` needs are on every module."""
    job = JOBS[task]
    assert callable(job.compute) and callable(job.request)
    assert issubclass(job.STATE, JobState)
    assert f"<!-- cibot:{task} -->" == job.MARKER


# ---- gather once: each job's Gathered round-trips --------------------------------------------


def test_summary_and_review_gathers_round_trip(fake: FakeGitHub, github: ShadowGitHub) -> None:
    """The two jobs share one gather; the review's state adds the numbered hunks."""
    fake.add_pull(REPO, 7, title="Retry uploads", body="Adds retries.", diff=DIFF, head_sha=SHA)
    policy = load_policy(None)
    plain = summary.gather(github, ref("summary", 7), policy)
    numbered = review.gather(github, ref("review", 7), policy)
    assert (plain.pull, plain.diff, plain.files) == (numbered.pull, numbered.diff, numbered.files)
    assert numbered.state == review.ReviewState.of(DIFF) and numbered.state.hunks
    assert plain.files and plain.pull.head_sha == SHA
    for gathered in (plain, numbered):
        assert round_trip(gathered) == gathered


def test_the_ci_gather_round_trips_with_its_trimmed_logs(
    fake: FakeGitHub, github: ShadowGitHub
) -> None:
    """Stored once, the failed jobs' logs come back: run_job downloads no log again."""
    fake.add_pull(REPO, 8, title="Fix rounding", diff=DIFF, head_sha=SHA)
    for job_id, name, log in ((91, "billing-tests", BILLING_LOG), (92, "catalog", CATALOG_LOG)):
        fake.add_workflow_job(
            REPO, 501, job_id=job_id, name=name, conclusion="failure", log=log, head_sha=SHA
        )
    gathered = ci.gather(github, ref("ci", 8, run_id=501), load_policy(None))
    assert [job.name for job in gathered.state.jobs] == ["billing-tests", "catalog"]
    assert gathered.evidence.ci is not None and gathered.evidence.ci.failed_jobs
    logs = len(fake.calls_to("GET", r"/actions/jobs/\d+/logs$"))
    again = round_trip(gathered)
    assert again == gathered and len(fake.calls_to("GET", r"/actions/jobs/\d+/logs$")) == logs
    assert any(E_LINE in text for text in again.texts())  # the logs are scrubbed for echoes


def test_the_deps_gather_round_trips_with_its_survey(
    fake: FakeGitHub, github: ShadowGitHub
) -> None:
    """The survey (bumps, release notes, use sites) is the deps job's state."""
    fake.set_file(REPO, "src/sync.py", SYNC_PY)
    fake.set_file(REPO, "src/defs.py", DEFS_PY)
    fake.add_pull(REPO, 9, title="Bump acme-client", body=DEPENDABOT, diff=ACME_DIFF, head_sha=SHA)
    previous = deps.set_checkout(None)  # the fake serves no git: read through the API
    try:
        gathered = deps.gather(github, ref("deps", 9), load_policy(None))
    finally:
        deps.set_checkout(previous)
    [upgrade] = gathered.state.upgrades
    assert upgrade.uses and upgrade.changes and gathered.evidence.removed_symbols
    assert round_trip(gathered) == gathered
    assert upgrade.uses[0].text in gathered.texts()


def test_the_tests_gather_round_trips_and_reopens_its_checkout(
    fake: FakeGitHub, github: ShadowGitHub, any_project: test_job_tests.Project
) -> None:
    """The targets are stored; the checkout is not, and ``reopen`` makes a fresh one."""
    test_job_tests.needs_sandbox()
    fake.add_pull(
        REPO,
        21,
        title="Discounts",
        diff=any_project.diff,
        head_sha=any_project.head,
        base_sha=any_project.base,
    )
    job = ref("tests", 21, any_project.head)
    gathered = tests.gather(github, job, load_policy(None))
    assert gathered.state.targets and tests.session_of(gathered).root.is_dir()
    again = round_trip(gathered)
    assert again == gathered
    with pytest.raises(InputError, match="no checkout"):
        tests.session_of(again)
    again.reopen(github, job)
    session = tests.session_of(again)
    assert session.root.is_dir() and session.root != tests.session_of(gathered).root
    assert (session.targets, session.test_path) == (
        gathered.state.targets,
        gathered.state.test_path,
    )
    assert any("def " in text for text in again.texts())  # the targets' source is read text


def test_evidence_and_a_merged_policy_round_trip_exactly() -> None:
    """Every evidence dataclass and the repo-merged pydantic policy come back equal."""
    text = (FIXTURES / "config" / "good.yml").read_text(encoding="utf-8")
    merged = merge_repo_config(load_policy(None), text, repo=REPO).policy
    assert merged.operator_sensitive is not None  # the repo added sensitive rules
    block = Block(path="deploy/compose.yaml", start=3, end=9, kind="Compose service", name="api")
    evidence = dataclasses.replace(
        evidence_from_diff(DIFF, repo=REPO, labels=frozenset({"b", "a"})),
        ci=CiFacts(failed_jobs=("test (3.11)",), failed_paths=("src/upload.py",)),
        tests=TestFacts(failed_rounds=2, coverage=0.44),
        removed_symbols=("foo() from acme-client",),
        acceptance={"summary": (3, 4)},
        frontier_spend_usd=12.5,
        force_tier="mid",
        services=ServiceMap(
            services=(ServiceEntry(name="api", folders=("api",), blocks=(block,)),),
            parsed=frozenset({"deploy/compose.yaml"}),
            excluded=(("docs", "no build"),),
        ),
    )
    assert isinstance(evidence.files[0], FileChange) and isinstance(evidence.files[0].body[0], Hunk)
    gathered = Gathered(pull=pull(), diff=DIFF, evidence=evidence, policy=merged, state=JobState())
    assert round_trip(gathered) == gathered


# ---- what load refuses ------------------------------------------------------------------------


def plain_gathered() -> Gathered[JobState]:
    """Return a small Gathered, as the summary job builds it."""
    evidence = evidence_from_diff(DIFF, repo=REPO)
    return Gathered(
        pull=pull(), diff=DIFF, evidence=evidence, policy=load_policy(None), state=JobState()
    )


def edited(text: str, change: Any) -> str:
    """Return stored text after ``change`` edited its parsed body."""
    body = json.loads(text)
    change(body)
    return json.dumps(body)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda b: b.update(format=0), "format 0"),
        (lambda b: b["gathered"].pop("diff"), r"\['diff'\]"),
        (lambda b: b["gathered"]["pull"].update(number="7"), "gathered.pull.number: expected int"),
        (lambda b: b["gathered"]["pull"].update(draft=1), "gathered.pull.draft: expected bool"),
        (lambda b: b["gathered"]["evidence"]["files"][0].update(extra=1), r"\['extra'\]"),
        (lambda b: b["gathered"]["policy"]["tiers"].pop("local"), "gathered.policy"),
        (lambda b: b.pop("state"), "not one this build wrote"),
    ],
)
def test_text_of_another_shape_or_version_is_refused(change: Any, said: str) -> None:
    """The pipeline catches StaleGathered (a ValueError) and gathers again."""
    text = edited(dump(plain_gathered()), change)
    with pytest.raises(StaleGathered, match=said):
        load(text, JobState)
    assert issubclass(StaleGathered, ValueError)


def test_another_jobs_state_or_no_json_at_all_is_refused() -> None:
    """A summary's stored input is not a review's; garbage is not any job's."""
    text = dump(plain_gathered())
    with pytest.raises(StaleGathered, match="ReviewState"):
        load(text, review.ReviewState)
    with pytest.raises(StaleGathered, match="not JSON"):
        load("\x80 pickled?", JobState)


@dataclasses.dataclass(frozen=True)
class Unstorable(JobState):
    """A state holding what JSON cannot carry."""

    where: Path


def test_a_state_json_cannot_carry_fails_when_it_is_dumped() -> None:
    """A job whose state holds a path (or any object) fails loudly, not later on load."""
    with pytest.raises(TypeError, match="PosixPath"):
        dump(plain_gathered().with_state(Unstorable(Path("checkout"))))
