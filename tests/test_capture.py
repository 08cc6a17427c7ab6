"""Test the capture store: off by default, redacted, private on disk, atomic, pruned, and
faithful enough that each job's own validator judges a reply the same way from it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.kernel.errors import ConfigError, InvalidOutput
from bot.kernel.jobs import JobRef
from bot.kernel.settings import Settings
from policies.deps import Bump
from policies.evidence import evidence_from_diff
from policies.loading import load_policy
from policies.model import Policy
from policies.routing import route
from tests.fakes.model import FakeModelServer
from workers import capture as capture_module
from workers.capture import Capture, check_context, gathered_for, wrap
from workers.github import PullInfo
from workers.jobs import ci, deps, review, summary
from workers.jobs.contract import JobState
from workers.llm import ModelClient
from workers.pipeline import Gathered, ModelRequest

FIXTURES = Path(__file__).parent / "fixtures" / "jobs"
DIFF = (FIXTURES / "review" / "multi_file.diff").read_text(encoding="utf-8")
REPO = "acme/shop"
PR = 42
SHA = "c" * 40
INSTALLATION = 901
LOCAL_ID = "replay-local"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GH_TOKEN = "ghp_" + "R9d2kQx7Lm4Tz8Wc1Vb6Yn3Hs5Jp0Fa2Ge7K"
DESCRIPTION = f"Carts take a quantity. Deploy with AWS_ACCESS_KEY_ID={AWS_KEY} token {GH_TOKEN}"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """Tell a settable time, so retention can be tested without waiting."""

    def __init__(self, now: datetime = T0) -> None:
        """Start at ``now``."""
        self.now = now

    def __call__(self) -> datetime:
        """Return the current fake time."""
        return self.now


def ref(task: str = "review", pr: int = PR, repo: str = REPO) -> JobRef:
    """Return a job reference as the queue carries it."""
    return JobRef(
        task=task,
        installation_id=INSTALLATION,
        repo=repo,
        delivery_id=f"d-{task}-{pr}",
        pr_number=pr,
        head_sha=SHA,
    )


def pull(body: str = DESCRIPTION) -> PullInfo:
    """Return the PR as the GitHub client reads it."""
    return PullInfo(
        number=PR,
        title="Carts take a quantity",
        body=body,
        author="dev",
        author_is_bot=False,
        draft=False,
        state="open",
        merged=False,
        head_sha=SHA,
        head_ref="qty",
        base_ref="main",
        base_sha="b" * 40,
        labels=(),
        default_branch="main",
    )


def gathered(policy: Policy, task: str = "review", diff: str = DIFF) -> Gathered:
    """Gather the way the summary and review jobs do, without GitHub."""
    evidence = evidence_from_diff(diff, repo=REPO, labels=frozenset())
    state = review.ReviewState.of(diff) if task == "review" else JobState()
    return Gathered(pull=pull(), diff=diff, evidence=evidence, policy=policy, state=state)


def finding(
    path: str = "src/shop/cart.py", line: int = 9, severity: str = "major"
) -> dict[str, Any]:
    """Return one review finding as a model writes it."""
    return {"path": path, "line": line, "side": "RIGHT", "severity": severity, "body": "qty < 0?"}


def summary_reply(*paths: str) -> dict[str, Any]:
    """Return a summary reply walking through ``paths``."""
    return {
        "what": "Adds a quantity to Cart.add.",
        "why": "not stated",
        "risks": [],
        "files": [{"path": p, "change": "changed"} for p in paths],
    }


@pytest.fixture
def policy() -> Policy:
    """Return the packaged policy."""
    return load_policy()


@pytest.fixture
def store(tmp_path: Path) -> Capture:
    """Return a capture store under a fresh directory, on a fake clock."""
    return Capture(tmp_path / "captures", days=14, clock=Clock())


@pytest.fixture
def local() -> Iterator[FakeModelServer]:
    """Play the self-hosted vLLM server."""
    with FakeModelServer("local", model_ids=(LOCAL_ID,)) as server:
        yield server


def record(store: Capture, task: str = "review", **kw: Any) -> Path:
    """Record one captured task with the usual arguments."""
    messages = kw.pop("messages", [{"role": "user", "content": f"Review. {DESCRIPTION}"}])
    return store.record(
        kw.pop("ref", ref(task)),
        task,
        messages,
        kw.pop("text", json.dumps({"findings": []})),
        kw.pop("data", {"findings": []}),
        kw.pop("outcome", {"validated": True, "tier": "local", "model": LOCAL_ID}),
        private_only=kw.pop("private_only", False),
        **kw,
    )


# ---- settings: off by default ----------------------------------------------------------------


def test_capture_is_off_by_default_and_on_with_a_directory(tmp_path: Path) -> None:
    assert Settings.from_env({}).capture_dir is None
    assert Capture.from_settings(Settings.from_env({})) is None
    settings = Settings.from_env({"CIBOT_CAPTURE_DIR": str(tmp_path / "c")})
    found = Capture.from_settings(settings)
    assert found is not None
    assert found.root == tmp_path / "c" and found.days == 14
    assert not (tmp_path / "c").exists()  # nothing is written until a task is captured
    days = Settings.from_env({"CIBOT_CAPTURE_DIR": str(tmp_path), "CIBOT_CAPTURE_DAYS": "3"})
    assert days.capture_days == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_retention_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="CIBOT_CAPTURE_DAYS"):
        Settings.from_env({"CIBOT_CAPTURE_DAYS": value})


def test_the_hook_leaves_complete_alone_when_capture_is_off(policy: Policy) -> None:
    def complete(tier: str, request: Any, reason: str = "") -> str:
        return f"{tier}:{reason}"

    hooked = wrap(None, complete, ref=ref(), gathered=gathered(policy), private_only=False)
    assert hooked is complete


# ---- the file: redacted, private, atomic --------------------------------------------------------


def test_a_capture_is_redacted_and_kept_by_reference(store: Capture) -> None:
    path = record(
        store,
        text=f'{{"findings": [], "note": "{AWS_KEY}"}}',
        data={"findings": [], "note": AWS_KEY},
        check={"jobs": [{"name": "test", "log": f"export GITHUB_TOKEN={GH_TOKEN}", "missing": ""}]},
        private_only=True,
    )
    raw = path.read_text(encoding="utf-8")
    assert AWS_KEY not in raw and GH_TOKEN not in raw
    body = json.loads(raw)
    assert "[REDACTED:" in body["request"]["messages"][0]["content"]
    assert "[REDACTED:" in body["reply"]["text"] and "[REDACTED:" in body["reply"]["data"]["note"]
    assert sum(body["redactions"].values()) >= 4
    assert body["inputs"] == {
        "repo": REPO,
        "pr_number": PR,
        "head_sha": SHA,
        "installation_id": INSTALLATION,
        "delivery_id": f"d-review-{PR}",
        "task": "review",
        "tier": "local",
        "model": LOCAL_ID,
    }
    assert body["private_only"] is True and body["acceptance"] is None
    assert REPO not in path.name  # file names carry a digest of the PR, not the repo
    assert path.parent == store.root / "review"


def test_files_are_0600_in_0700_folders_whatever_the_umask(store: Capture) -> None:
    old = os.umask(0)
    try:
        path = record(store)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


def test_a_wide_open_folder_is_narrowed_to_0700(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir(mode=0o777)
    os.chmod(root, 0o777)  # noqa: S103 - the point: a folder anyone may enter
    record(Capture(root, days=14))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_writes_are_atomic_and_leave_no_temporary_file(store: Capture, tmp_path: Path) -> None:
    path = record(store)
    leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        capture_module.write_private(target, {"bad": object()})
    assert list(tmp_path.glob(".x.json.*")) == [] and not target.exists()


# ---- retention -----------------------------------------------------------------------------


def test_old_captures_are_pruned_on_write_and_by_prune(tmp_path: Path) -> None:
    clock = Clock()
    store = Capture(tmp_path / "c", days=14, clock=clock)
    first = record(store)
    clock.now = T0 + timedelta(days=10)
    second = record(store, "summary")
    clock.now = T0 + timedelta(days=14, minutes=1)
    assert [c.path for c in store.load()] == [second]  # past retention: never loaded
    assert first.exists()
    third = record(store)  # a write prunes
    assert not first.exists() and second.exists() and third.exists()
    clock.now = T0 + timedelta(days=30)
    assert store.prune() == 2
    assert store.load() == []


def test_prune_removes_stale_temporary_files_only(store: Capture) -> None:
    path = record(store)
    stale = path.parent / ".old.json.abcd.tmp"
    fresh = path.parent / ".new.json.abcd.tmp"
    for tmp in (stale, fresh):
        tmp.write_text("{}", encoding="utf-8")
    hours_ago = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    os.utime(stale, (hours_ago, hours_ago))
    store.clock = lambda: datetime.now(UTC)
    store.prune()
    assert not stale.exists() and fresh.exists() and not path.exists()


# ---- loading and acceptance -------------------------------------------------------------------


def test_load_filters_by_task_and_keeps_the_newest(tmp_path: Path) -> None:
    clock = Clock()
    store = Capture(tmp_path / "c", days=14, clock=clock)
    paths = []
    for n, task in enumerate(["review", "summary", "review", "ci"]):
        clock.now = T0 + timedelta(minutes=n)
        paths.append(record(store, task))
    (store.root / "review" / "notes.txt").write_text("not a capture", encoding="utf-8")
    (store.root / "review" / "20250301T120500000000Z-x-y.json").write_text("{", encoding="utf-8")
    assert [c.path for c in store.load()] == paths
    assert [c.path for c in store.load(tasks=["review"])] == [paths[0], paths[2]]
    assert [c.path for c in store.load(last=2)] == paths[2:]
    assert store.load(tasks=["deps"]) == []


def test_acceptance_is_noted_on_that_pull_request_only(store: Capture) -> None:
    mine = record(store)
    other = record(store, ref=ref(pr=PR + 1))
    elsewhere = record(store, ref=ref(repo="acme/other"))
    count = store.accept(
        repo=REPO,
        pr_number=PR,
        task="review",
        accepted=True,
        signal="thread_resolved",
        findings=[{"path": "src/shop/cart.py", "line": 9, "side": "RIGHT"}],
    )
    assert count == 1
    loaded = {c.path: c for c in store.load()}
    acceptance = loaded[mine].acceptance
    assert acceptance is not None and acceptance["accepted"] is True
    assert acceptance["findings"][0]["line"] == 9
    assert loaded[other].acceptance is None and loaded[elsewhere].acceptance is None
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    assert store.accept(repo=REPO, pr_number=PR, task="ci", accepted=True, signal="x") == 0


# ---- the validators' context round-trips ---------------------------------------------------------


def rebuilt(store: Capture, task: str, context: dict[str, Any], policy: Policy) -> Gathered:
    """Capture a context, load it back and rebuild the Gathered a validator reads."""
    path = record(store, task, check=context)
    loaded = next(c for c in store.load() if c.path == path)
    result: Gathered = gathered_for(loaded, policy)
    return result


def verdict(validate: Any, gathered: Gathered, data: Any) -> str:
    """Return '' when the validator accepts ``data``, else its complaint."""
    try:
        validate(gathered, data)
    except (ValueError, LookupError, TypeError) as exc:
        return str(exc)
    return ""


REVIEW_REPLIES = [
    {"findings": [finding()]},
    {"findings": [finding(line=2)]},  # a context line far from any change
    {"findings": [finding("src/shop/util.py", 3), finding(line=40)]},
    {"findings": [finding("README.md", 4, "nit")]},  # below the threshold: nothing to anchor
    {"findings": [finding("b/src/shop/cart.py", 16)]},
    {"findings": "none"},
]


def test_review_context_keeps_line_numbers_not_code(store: Capture, policy: Policy) -> None:
    original = gathered(policy)
    context = check_context("review", original)
    assert "self.items.append" not in json.dumps(context)  # no diff text is kept
    again = rebuilt(store, "review", context, policy)
    for reply in REVIEW_REPLIES:
        assert verdict(review.validate, again, reply) == verdict(review.validate, original, reply)
    assert verdict(review.validate, again, REVIEW_REPLIES[1]) != ""


def test_review_context_keeps_the_operators_threshold(store: Capture, policy: Policy) -> None:
    strict = policy.model_copy(
        update={"review": policy.review.model_copy(update={"min_severity": "critical"})}
    )
    context = check_context("review", gathered(strict))
    again = rebuilt(store, "review", context, policy)
    assert again.policy.review.min_severity == "critical"
    assert verdict(review.validate, again, REVIEW_REPLIES[1]) == ""  # major < critical


def test_summary_context_keeps_the_changed_paths(store: Capture, policy: Policy) -> None:
    original = gathered(policy, "summary")
    again = rebuilt(store, "summary", check_context("summary", original), policy)
    for reply in [
        summary_reply("src/shop/cart.py", "README.md"),
        summary_reply("src/shop/basket.py"),
        {"what": "", "files": []},
    ]:
        assert verdict(summary.validate, again, reply) == verdict(summary.validate, original, reply)
    assert verdict(summary.validate, again, summary_reply("src/shop/basket.py")) != ""


def test_ci_context_keeps_the_trimmed_logs_redacted(store: Capture, policy: Policy) -> None:
    log = f"collected 3 items\nE   AssertionError: assert 2 == 3\nGITHUB_TOKEN={GH_TOKEN}\n"
    job = ci.FailedJob(name="test (3.11)", steps=("pytest",), log=log)
    original = Gathered(
        pull=pull(),
        diff="",
        evidence=gathered(policy).evidence,
        policy=policy,
        state=ci.CiState(jobs=(job,), more=(), head_sha=""),
    )
    context = check_context("ci", original)
    path = record(store, "ci", check=context)
    assert GH_TOKEN not in path.read_text(encoding="utf-8")
    again = rebuilt(store, "ci", context, policy)
    quoted = {"root_cause": "x", "evidence": [{"job": "test (3.11)", "line": "assert 2 == 3"}]}
    invented = {"root_cause": "x", "evidence": [{"job": "test (3.11)", "line": "assert 1 == 0"}]}
    assert verdict(ci.validate, again, quoted) == "" == verdict(ci.validate, original, quoted)
    assert verdict(ci.validate, again, invented) != ""


def test_deps_context_keeps_the_detected_upgrades(store: Capture, policy: Policy) -> None:
    bump = Bump(path="requirements.txt", name="Django", old="4.2.1", new="5.0.0", line=3)
    survey = deps.Survey(
        upgrades=(deps.Upgrade(bump=bump, importers=("app/views.py",)),),
        scope="whole repo",
        changed=("requirements.txt",),
    )
    original = Gathered(
        pull=pull(),
        diff="",
        evidence=gathered(policy).evidence,
        policy=policy,
        state=survey,
    )
    again = rebuilt(store, "deps", check_context("deps", original), policy)
    entry = {
        "name": "django",
        "from": "4.2.1",
        "to": "5.0.0",
        "kind": "major",
        "affected": ["app/views.py"],
        "notes": "",
    }
    for reply in [
        {"summary": "Django 5", "bumps": [entry]},
        {"summary": "Django 5", "bumps": [{**entry, "kind": "minor"}]},
        {"summary": "Django 5", "bumps": [{**entry, "affected": ["app/other.py"]}]},
        {"summary": "Django 5", "bumps": [{**entry, "name": "flask"}]},
    ]:
        assert verdict(deps.validate, again, reply) == verdict(deps.validate, original, reply)
    assert verdict(deps.validate, again, {"summary": "D", "bumps": [entry]}) == ""


# ---- the pipeline's hook, on the real model client ----------------------------------------------


def local_policy(server: FakeModelServer) -> Policy:
    """Return the packaged policy with its local tier on the fake vLLM server."""
    env = {"CIBOT_LOCAL_API_BASE": server.url, "CIBOT_LOCAL_MODEL": f"hosted_vllm/{LOCAL_ID}"}
    return load_policy(overrides=Settings.from_env(env).tier_overrides)


def completer(client: ModelClient, private_only: bool) -> Any:
    """Bind the client the way the pipeline's _completer does."""

    def complete(tier: str, request: ModelRequest, reason: str = "") -> Any:
        return client.complete(
            tier,
            request.messages,
            schema=request.schema,
            validate=request.validate,
            private_only=private_only,
            installation_id=INSTALLATION,
            task="review",
            reason=reason or None,
        )

    return complete


def test_the_hook_captures_what_the_job_sent_and_got(
    store: Capture, local: FakeModelServer
) -> None:
    policy = local_policy(local)
    local.script(None, {"findings": [finding()]})
    job = gathered(policy)
    decision = route("review", job.evidence, policy)
    client = ModelClient(policy, Settings.from_env({}))
    hooked = wrap(store, completer(client, True), ref=ref(), gathered=job, private_only=True)
    completion = hooked("local", review.request(job, decision))
    assert completion.data == {"findings": [finding()]}
    [captured] = store.load()
    sent = local.chat_requests()[0]["messages"]
    assert AWS_KEY in sent[1]["content"]  # the private tier saw the prompt as it was
    assert AWS_KEY not in json.dumps(captured.data)  # the capture did not keep the secret
    assert captured.messages[0]["content"] == sent[0]["content"]  # no secret: kept verbatim
    outcome = captured.data["outcome"]
    assert outcome["validated"] is True and outcome["model"] == f"hosted_vllm/{LOCAL_ID}"
    assert outcome["prompt_tokens"] > 0 and outcome["calls"] == 1
    assert captured.private_only and captured.schema == review.SCHEMA
    assert captured.check["hunks"]["src/shop/cart.py"]


def test_the_hook_captures_a_failed_request_and_reraises(
    store: Capture, local: FakeModelServer
) -> None:
    policy = local_policy(local)
    local.script(None, {"findings": [finding(line=2)]})  # never anchored
    job = gathered(policy)
    client = ModelClient(policy, Settings.from_env({}))
    hooked = wrap(store, completer(client, True), ref=ref(), gathered=job, private_only=True)
    with pytest.raises(InvalidOutput):
        hooked("local", review.request(job, route("review", job.evidence, policy)))
    [captured] = store.load()
    assert captured.data["outcome"] == {
        "validated": False,
        "tier": "local",
        "model": "",
        "error": "InvalidOutput",
    }
    assert captured.data["reply"] == {"text": None, "data": None}


def test_a_broken_store_never_fails_the_job(tmp_path: Path, local: FakeModelServer) -> None:
    policy = local_policy(local)
    local.script(None, {"findings": [finding()]})
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    broken = Capture(blocker / "captures", days=14)
    job = gathered(policy)
    client = ModelClient(policy, Settings.from_env({}))
    hooked = wrap(broken, completer(client, False), ref=ref(), gathered=job, private_only=False)
    completion = hooked("local", review.request(job, route("review", job.evidence, policy)))
    assert completion.data["findings"]
