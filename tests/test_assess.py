"""Test `cibot assess` on a small git repository built inside the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.kernel.errors import InputError
from policies.costs import SECONDS_PER_MONTH
from policies.evidence import parse_diff
from policies.loading import build_policy, default_policy_text, load_policy, parse_yaml
from workers import history
from workers.assess import assess, render, tier_prices

DAY = 86_400
START = 1_700_000_000  # 2023-11-14, a fixed clock so the month span is exact


def priced_data() -> dict[str, Any]:
    """Return the default policy with explicit API prices, so no price map is needed."""
    data = parse_yaml(default_policy_text(), source="default")
    data["tiers"]["mid"]["price"] = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
    data["tiers"]["frontier"]["price"] = {"input_per_mtok": 5.0, "output_per_mtok": 25.0}
    return data


PRICED = build_policy(priced_data(), source="priced")


@dataclass
class Repo:
    """Drive the git CLI in a scratch repository with a fixed clock."""

    path: Path
    clock: int = START

    def git(self, *args: str) -> str:
        """Run git with a pinned identity and date; return stdout."""
        stamp = f"@{self.clock} +0000"
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "Dev",
            "GIT_AUTHOR_EMAIL": "dev@example.com",
            "GIT_COMMITTER_NAME": "Dev",
            "GIT_COMMITTER_EMAIL": "dev@example.com",
            "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_DATE": stamp,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    def commit(self, message: str, files: dict[str, str | bytes], *, days: int = 1) -> str:
        """Write files, commit them a few days after the last commit, return the sha."""
        self.clock += days * DAY
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@dataclass
class Built:
    """Hold the scratch repo and the shas of its first-parent history."""

    path: Path
    shas: dict[str, str]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Build a repo of ordinary and sensitive commits, with one merged feature branch."""
    repo = Repo(tmp_path_factory.mktemp("assess-repo"))
    repo.git("init", "-q", "-b", "main")
    shas = {
        "init": repo.commit(
            "Start the app",
            {
                "README.md": "# demo\n",
                "requirements.txt": "django==4.2.1\n",
                "src/app/main.py": "def main():\n    return 0\n",
            },
        ),
        "ordinary": repo.commit(
            "Add a money formatter",
            {"src/app/format.py": "def money(value):\n    return f'{value:.2f}'\n"},
            days=3,
        ),
        "auth": repo.commit(
            "Hash passwords with bcrypt",
            {
                "src/auth/passwords.py": "import bcrypt\n\n\ndef hash_pw(pw):\n"
                "    return bcrypt.hashpw(pw, bcrypt.gensalt())\n"
            },
            days=5,
        ),
    }
    repo.git("checkout", "-q", "-b", "feature")
    repo.commit("Charge cards", {"src/shop/pay.py": "stripe.Charge.create(amount=100)\n"})
    repo.commit("Tests for charging", {"tests/test_pay.py": "def test_pay():\n    assert True\n"})
    repo.git("checkout", "-q", "main")
    repo.clock += 2 * DAY
    repo.git("merge", "-q", "--no-ff", "feature", "-m", "Merge pull request #7 from dev/feature")
    shas["merge"] = repo.git("rev-parse", "HEAD")
    shas["deps"] = repo.commit("Upgrade django", {"requirements.txt": "django==5.0.1\n"}, days=4)
    shas["empty"] = repo.commit("Empty commit", {}, days=1)
    shas["binary"] = repo.commit("Add a logo", {"assets/logo.png": b"\x89PNG\r\n\x1a\n\x00\x00"})
    shas["docs"] = repo.commit("Document the app", {"docs/guide.md": "Run main.\n"}, days=10)
    return Built(repo.path, shas)


def walked(built: Built, last: int = 100) -> list[history.Change]:
    """Walk the scratch repo's history."""
    return list(history.walk(built.path, last))


def test_walk_follows_the_first_parent_line_with_merges_as_prs(built: Built) -> None:
    changes = walked(built)
    order = ["docs", "binary", "empty", "deps", "merge", "auth", "ordinary", "init"]
    assert [c.sha for c in changes] == [built.shas[name] for name in order]
    assert [c.is_merge for c in changes] == [name == "merge" for name in order]
    assert changes[0].timestamp == START + 29 * DAY
    merge = changes[order.index("merge")]
    # The merge is diffed against its first parent: that is the whole PR.
    assert sorted(f.path for f in parse_diff(merge.diff)) == [
        "src/shop/pay.py",
        "tests/test_pay.py",
    ]
    assert changes[order.index("empty")].diff == b""


def test_walk_honours_last(built: Built) -> None:
    assert [c.sha for c in walked(built, 2)] == [built.shas["docs"], built.shas["binary"]]


def test_replay_and_summarize(built: Built) -> None:
    prices = tier_prices(PRICED)
    tally = history.replay(iter(walked(built)), PRICED, prices, lambda text: len(text) // 4)
    report = history.summarize(tally, PRICED)
    assert report["changes"] == 7  # the empty commit has nothing to route
    assert report["skipped"] == 1
    assert report["merges_as_prs"] == 1
    assert report["months_observed"] == round(28 * DAY / SECONDS_PER_MONTH, 3)
    # Every change gets summary + review; .py changes outside tests/ add tests; manifests add deps.
    assert report["tasks"] == 7 * 2 + 4 + 2
    assert abs(sum(report["tier_share"].values()) - 1) < 1e-3
    sensitive = {item["commit"]: item for item in report["sensitive_changes"]}
    assert set(sensitive) == {built.shas["auth"][:12], built.shas["merge"][:12]}
    assert sensitive[built.shas["auth"][:12]]["categories"] == ["auth"]
    assert sensitive[built.shas["merge"][:12]]["categories"] == ["payments"]
    assert sensitive[built.shas["auth"][:12]]["evidence"][0] == (
        "src/auth/passwords.py:5 +'return bcrypt.hashpw(pw, bcrypt.gensalt())' "
        "password hashing: 'bcrypt'"
    )
    reasons = dict(report["escalation_reasons"])
    assert reasons["major_version_bump"] == 1
    assert reasons["task_default"] == 7
    assert reasons["sensitive_path"] >= 2 and reasons["sensitive_content"] >= 2
    spend = report["monthly_spend_usd"]
    assert spend["frontier_only_api"] > 0
    rows = {row["rung"]: row for row in spend["hybrid"]}
    assert list(rows) == ["1xH200", "2xH200", "8xH200"]
    assert rows["1xH200"]["private_tiers"] == ["local"]
    assert rows["2xH200"]["private_tiers"] == ["local", "mid"]
    assert rows["1xH200"]["api_usd"] > rows["2xH200"]["api_usd"]  # mid work moved on-prem
    assert all(row["bought_usd"] < row["rented_usd"] for row in rows.values())


def test_routing_in_replay_matches_the_router(built: Built) -> None:
    changes = {c.sha: c for c in walked(built)}
    tally = history.replay(
        iter([changes[built.shas["auth"]], changes[built.shas["docs"]]]),
        PRICED,
        tier_prices(PRICED),
        len,
    )
    # auth: summary → mid, review → frontier, tests → local; docs: summary local, review mid.
    assert dict(tally.tiers) == {"mid": 2, "frontier": 1, "local": 2}


@pytest.mark.parametrize(
    ("paths", "tasks"),
    [
        (["README.md"], ("summary", "review")),
        (["src/app/x.py"], ("summary", "review", "tests")),
        (["tests/test_x.py", "src/conftest.py"], ("summary", "review")),
        (["pkg/x_test.py"], ("summary", "review")),
        (["package.json"], ("summary", "review", "deps")),
        (["src/a.py", "go.mod"], ("summary", "review", "tests", "deps")),
    ],
)
def test_tasks_for(paths: list[str], tasks: tuple[str, ...]) -> None:
    diff = "".join(
        f"diff --git a/{p} b/{p}\n--- a/{p}\n+++ b/{p}\n@@ -1 +1 @@\n-a\n+b\n" for p in paths
    )
    assert history.tasks_for(parse_diff(diff)) == tasks


def test_private_frontier_policy_still_assesses(built: Built) -> None:
    data = priced_data()
    data["tiers"]["frontier"] = {
        "models": ["hosted_vllm/deepseek-ai/DeepSeek-V3.1"],
        "private": True,
        "api_base": "http://10.0.0.9:8000/v1",
        "rung": "8xH200",
    }
    policy = build_policy(data, source="private-frontier")
    report = assess(iter(walked(built)), policy)
    assert report["monthly_spend_usd"]["frontier_only_api"] == 0
    assert report["changes"] == 7


def test_sensitive_evidence_comes_from_any_task(built: Built) -> None:
    data = priced_data()
    data["tasks"]["summary"]["escalate"] = []  # only review escalates on sensitive changes
    policy = build_policy(data, source="no-summary-escalation")
    report = assess(iter(walked(built)), policy)
    auth = next(i for i in report["sensitive_changes"] if i["commit"] == built.shas["auth"][:12])
    assert auth["evidence"][0] == (
        "src/auth/passwords.py:5 +'return bcrypt.hashpw(pw, bcrypt.gensalt())' "
        "password hashing: 'bcrypt'"
    )
    assert "Sensitive changes (2)" in render(report)


def test_render_names_every_section(built: Built) -> None:
    text = render(assess(iter(walked(built)), PRICED))
    assert text.splitlines()[0].startswith("cibot assess: 7 changes (1 merges counted as PRs)")
    for heading in [
        "Share of tasks on each tier",
        "Escalation reasons, most frequent first",
        "Sensitive changes (2)",
        "Estimated monthly spend at this rate of change",
        "Break-even utilization of each rung against API-only",
    ]:
        assert heading in text
    assert f"  {built.shas['auth'][:12]}  auth: src/auth/passwords.py:5 +'return bcrypt" in text


@pytest.mark.parametrize("kind", ["missing", "plain-dir", "file"])
def test_walk_refuses_what_is_not_a_repo(tmp_path: Path, kind: str) -> None:
    target = {"missing": tmp_path / "nope", "plain-dir": tmp_path, "file": tmp_path / "f.txt"}[kind]
    if kind == "file":
        target.write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="is not a git repository"):
        history.walk(target, 5)  # fails on the call, before any other work


def test_walk_refuses_a_repo_without_commits(tmp_path: Path) -> None:
    Repo(tmp_path).git("init", "-q")
    with pytest.raises(InputError, match="has no commits yet"):
        history.walk(tmp_path, 5)


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `cibot assess` with no Redis, no model endpoint and no network to reach."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    clean.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "CIBOT_REDIS_URL": "redis://127.0.0.1:9/0",  # nothing listens on the discard port
            "CIBOT_LOCAL_API_BASE": "http://127.0.0.1:9/v1",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            **(env or {}),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "assess", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def priced_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the priced policy to disk for the CLI."""
    path = tmp_path_factory.mktemp("policy") / "priced.yml"
    path.write_text(yaml.safe_dump(priced_data()), encoding="utf-8")
    return path


def test_cli_json_report_offline(built: Built, priced_file: Path, tmp_path: Path) -> None:
    # The review job's module imports the GitHub client module (so httpx) for its types;
    # what matters offline is that no socket is opened and no broker or model library loads.
    probe = (
        "import sys; opened = [];"
        "sys.addaudithook(lambda e, a: opened.append(e) if e in "
        "('socket.connect', 'socket.getaddrinfo') else None);"
        "from bot.cli import main; code = main(sys.argv[1:]);"
        "loaded = [m for m in ('litellm', 'celery', 'redis') if m in sys.modules];"
        "print('loaded:' + ','.join(loaded + opened), file=sys.stderr); sys.exit(code)"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            "assess",
            "--repo",
            str(built.path),
            "--json",
            "--policy",
            str(priced_file),
            "--last",
            "5",
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["changes"] == 4 and report["skipped"] == 1
    assert report["prices_usd_per_mtok"] == {"mid": [3.0, 15.0], "frontier": [5.0, 25.0]}
    assert done.stderr.strip().splitlines()[-1] == "loaded:"  # no socket, broker or model library


def test_cli_text_report(built: Built, priced_file: Path, tmp_path: Path) -> None:
    done = cli("--repo", str(built.path), "--policy", str(priced_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cibot assess: 7 changes (1 merges counted as PRs)")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--repo", "nope"], "nope is not a git repository"),
        (["--repo", ".", "--last", "0"], "--last must be at least 1"),
        (["--repo", ".", "--policy", "missing.yml"], "missing.yml: cannot read the policy"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path: Path, args: list[str], words: str) -> None:
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and words in done.stderr


def test_default_prices_come_from_the_price_map(built: Built) -> None:
    pytest.importorskip(
        "workers.llm",
        reason="workers.llm is not in this build yet: default API prices come from it",
    )
    policy = load_policy()
    prices = tier_prices(policy)
    assert set(prices) == {"mid", "frontier"}
    assert all(0 < p < 1e-3 for pair in prices.values() for p in pair)
    assert prices["frontier"][1] >= prices["mid"][1]
    report = assess(iter(walked(built)), policy)
    assert report["monthly_spend_usd"]["frontier_only_api"] > 0


def test_tier_prices_use_the_policy_prices() -> None:
    assert tier_prices(PRICED) == {"mid": (3e-06, 1.5e-05), "frontier": (5e-06, 2.5e-05)}


# ---- the decision: real prompts, PRs, verdict, table, CSV, roll-up, plot ----------------------

ORDERS = '''\
"""Orders: totals, discounts and the receipt."""

import decimal
from dataclasses import dataclass


@dataclass
class Line:
    """One line of an order."""

    sku: str
    quantity: int
    price: decimal.Decimal


def total(lines):
    """Return the order's total."""
    return sum(line.price * line.quantity for line in lines)
'''

ORDERS_V2 = (
    ORDERS
    + '''

def discounted(lines, percent):
    """Return the total less a percentage, rounded to cents."""
    value = total(lines) * (100 - percent) / 100
    return value.quantize(decimal.Decimal("0.01"))


def receipt(lines):
    """Return one text line per order line, then the total."""
    rows = [f"{line.sku:<12} {line.quantity:>3} x {line.price:>8}" for line in lines]
    rows.append(f"{'total':<12} {total(lines):>16}")
    return "\\n".join(rows)
'''
)

SESSION = '''\
"""Sign and check session cookies."""

import hmac
import hashlib


def sign(value, key):
    """Return the value with its HMAC."""
    mac = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    return f"{value}.{mac}"


def check(cookie, key):
    """Return the value when its HMAC matches, else None."""
    value, _, mac = cookie.rpartition(".")
    expected = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    return value if hmac.compare_digest(mac, expected) else None
'''


@pytest.fixture(scope="module")
def pyrepo(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Build a small Python project whose history has squash subjects, a merged PR and a bump."""
    repo = Repo(tmp_path_factory.mktemp("assess-py"))
    repo.git("init", "-q", "-b", "main")
    shas = {
        "start": repo.commit(
            "Start the shop",
            {"README.md": "# shop\n", "requirements.txt": "django==4.2.1\nrequests==2.31.0\n"},
        ),
        "orders": repo.commit(
            "Add orders and their totals (#11)\n\nThe first model of the shop.",
            {"shop/orders.py": ORDERS},
            days=2,
        ),
        "discounts": repo.commit(
            "Add discounts and a receipt (#12)\n\nCustomers asked for percentage discounts.\n"
            "The receipt prints one row per line.",
            {"shop/orders.py": ORDERS_V2, "docs/orders.md": "Totals, discounts, receipts.\n"},
            days=3,
        ),
    }
    repo.git("checkout", "-q", "-b", "session")
    repo.commit("Sign session cookies", {"shop/session.py": SESSION})
    repo.commit("Test the cookie check", {"tests/test_session.py": "def test_x():\n    pass\n"})
    repo.git("checkout", "-q", "main")
    repo.clock += 2 * DAY
    repo.git(
        "merge", "-q", "--no-ff", "session",
        "-m", "Merge pull request #13 from dev/session\n\nSign session cookies with HMAC",
    )  # fmt: skip
    shas["merge"] = repo.git("rev-parse", "HEAD")
    shas["bump"] = repo.commit(
        "Bump django from 4.2.1 to 5.0.1 (#14)",
        {"requirements.txt": "django==5.0.1\nrequests==2.31.0\n"},
        days=4,
    )
    return Built(repo.path, shas)


@dataclass
class Port:
    """Serve one commit as a pull request to a job's gather step (the test's own reading)."""

    pull_info: Any
    diff: str

    def pull(self, repo: str, number: int) -> Any:
        """Return the pull request."""
        return self.pull_info

    def pull_diff(self, repo: str, number: int) -> str:
        """Return the diff."""
        return self.diff

    def upsert_comment(self, repo: str, number: int, *, marker: str, body: str) -> int:
        """Take a job's reply."""
        return 1


@dataclass(frozen=True)
class Reply:
    """Stand for a completion, so the summary's map step can go on."""

    data: Any
    calls: tuple[Any, ...] = ()
    fallbacks: int = 0
    fallback_reasons: tuple[str, ...] = ()


def reference(built: Built, sha: str, policy: Any) -> dict[str, int]:
    """Build what each job sends for one commit, from `git diff` and `git log`; count tokens."""
    from bot.kernel.errors import NothingToDo
    from bot.kernel.jobs import JobRef
    from policies import tokens
    from policies.evidence import evidence_from_diff
    from policies.routing import route_many
    from workers import pipeline
    from workers.github import PullInfo
    from workers.jobs import deps, review, summary, tests

    git = Repo(built.path)
    diff = git.git("diff", "--find-renames", f"{sha}^1", sha) + "\n"
    subject, _, rest = git.git("log", "-1", "--format=%B", sha).partition("\n")
    body = rest.strip()
    if subject.startswith("Merge pull request"):
        subject, _, body = body.partition("\n")
    title = subject.split(" (#")[0]
    pull = PullInfo(
        number=1, title=title, body=body.strip(), author="dev", author_is_bot=False, draft=False,
        state="closed", merged=True, head_sha=sha, head_ref="", base_ref="", base_sha="",
        labels=(), default_branch="main",
    )  # fmt: skip
    routed = evidence_from_diff(diff, count=tokens.count, require_text=False)
    work = pipeline.Gathered(
        pull=pull,
        diff=diff,
        evidence=evidence_from_diff(diff),
        policy=policy,
        state=review.ReviewState.of(diff),
    )
    ref = JobRef(task="deps", installation_id=1, repo="o/r", delivery_id="d", pr_number=1)
    sent: dict[str, int] = {}
    for decision in route_many(history.tasks_for(routed.files), routed, policy):
        requests: list[list[dict[str, str]]] = []
        if decision.task == "summary":

            def complete(
                tier: str, request: Any, reason: str = "", sink: list[Any] = requests
            ) -> Reply:
                sink.append(request.messages)
                return Reply({"what": "x", "why": "", "risks": [], "files": []})

            summary.compute(work, decision, complete)
        elif decision.task == "review":
            requests.append(review.request(work, decision).messages)
        elif decision.task == "tests":
            found = [
                target
                for f in tests.python_sources(work.evidence.files)
                if not tests.is_test_file(f.path)
                for target in tests.targets_in(
                    f.path, git.git("show", f"{sha}:{f.path}") + "\n",
                    frozenset(n for n, _ in f.added),
                )
            ]  # fmt: skip
            if found:
                state = tests.TestsState(targets=tuple(found), test_path="tests/t.py")
                gathered = work.with_state(state)
                requests.append(tests.first_messages(gathered, decision, "tag0tag0tag0"))
        elif decision.task == "deps":
            try:
                port = Port(pull, diff)
                surveyed = deps.gather(port, ref, policy, source=deps.GitSource(built.path, sha))  # type: ignore[arg-type]
                requests.append(deps.request(surveyed, decision).messages)
            except NothingToDo:
                pass
        sent[decision.task] = sum(tokens.count(m["content"]) for r in requests for m in r)
    return sent


def test_prompt_tokens_are_within_15_percent_of_the_jobs_own(pyrepo: Built) -> None:
    report = assess(iter(walked(pyrepo)), PRICED, repo=pyrepo.path)
    assert report["prompt_tokens_from"] == "jobs"
    by_commit = {row["commit"]: row for row in report["per_change"]}
    ours: dict[str, int] = {}
    theirs: dict[str, int] = {}
    for name, sha in pyrepo.shas.items():
        if name == "start":
            continue  # a root commit has no parent to diff against here
        expected = reference(pyrepo, sha, PRICED)
        got = {t["task"]: t["prompt_tokens"] for t in by_commit[sha[:12]]["tasks"]}
        assert set(got) == set(expected), name
        for task, tokens in expected.items():
            ours[task] = ours.get(task, 0) + got[task]
            theirs[task] = theirs.get(task, 0) + tokens
            assert abs(got[task] - tokens) <= 0.15 * tokens, (name, task, got[task], tokens)
    assert set(theirs) == {"summary", "review", "tests", "deps"}
    assert all(theirs[t] > 0 for t in ("summary", "review", "tests", "deps"))
    total, expected_total = sum(ours.values()), sum(theirs.values())
    assert abs(total - expected_total) <= 0.15 * expected_total


def test_squash_subjects_and_merges_are_found_as_prs(pyrepo: Built) -> None:
    report = assess(iter(walked(pyrepo)), PRICED, repo=pyrepo.path)
    assert report["prs_found"] == {"merge": 1, "squash": 3}
    rows = {row["commit"]: row for row in report["per_change"]}
    assert rows[pyrepo.shas["discounts"][:12]]["pr"] == 12
    assert rows[pyrepo.shas["discounts"][:12]]["title"] == "Add discounts and a receipt"
    assert rows[pyrepo.shas["merge"][:12]]["pr_from"] == "merge"
    assert rows[pyrepo.shas["merge"][:12]]["title"] == "Sign session cookies with HMAC"
    assert rows[pyrepo.shas["start"][:12]]["pr"] is None
    assert _header_of(report).startswith(
        "cibot assess: 5 changes (1 merges and 3 squash-merge subjects (#N) counted as PRs)"
    )
    only = assess(iter(walked(pyrepo)), PRICED, repo=pyrepo.path, knobs=_knobs(prs_only=True))
    assert only["changes"] == 4


def _header_of(report: dict[str, Any]) -> str:
    """Return the report's first line."""
    return render(report).splitlines()[0]


def _knobs(**values: Any) -> Any:
    """Return assess knobs with a few changed."""
    from workers.assess import Knobs

    return Knobs(**values)


def test_change_messages_become_titles_and_bodies() -> None:
    merge = history.Change(
        "a" * 40, 0, True, b"", "Merge pull request #9 from x/y\n\nFix it\n\nWhy."
    )
    assert (merge.pr, merge.title, merge.body) == ((9, "merge"), "Fix it", "Why.")
    bare = history.Change("a" * 40, 0, True, b"", "Merge pull request #9 from x/y")
    assert bare.title == "Merge pull request #9 from x/y" and bare.body == ""
    squash = history.Change("a" * 40, 0, False, b"", "Speed up (#123)\n\n* one\n* two")
    assert (squash.pr, squash.title, squash.body) == ((123, "squash"), "Speed up", "* one\n* two")
    plain = history.Change("a" * 40, 0, False, b"", "Tidy (#12) things")
    assert plain.pr is None and plain.title == "Tidy (#12) things"


def test_walk_reads_each_message_apart_from_its_diff(pyrepo: Built) -> None:
    changes = {c.sha: c for c in walked(pyrepo)}
    discounts = changes[pyrepo.shas["discounts"]]
    assert discounts.message.startswith("Add discounts and a receipt (#12)\n\nCustomers")
    assert discounts.diff.startswith(b"diff --git a/docs/orders.md")
    assert b"cibot-end" not in b"".join(c.diff for c in changes.values())


@pytest.mark.parametrize(
    ("days", "changes", "words"),
    [
        (13.0, 100, "only 13.0 days of history"),
        (20.0, 29, "only 29 changes of history"),
        (3.0, 5, "only 3.0 days and 5 changes of history"),
        (14.0, 30, ""),
    ],
)
def test_short_history_is_warned_about(days: float, changes: int, words: str) -> None:
    tally = history.Tally(changes=changes, first_ts=START, last_ts=START + int(days * DAY))
    warning = history.history_warning(tally)
    assert warning.startswith(words) if words else warning == ""


def test_fixture_history_is_too_short_and_says_so(built: Built) -> None:
    text = render(assess(iter(walked(built)), PRICED))
    assert text.splitlines()[1].startswith("Warning: only 7 changes of history: a month")


def workload(prs: float, local: float, mid: float, frontier: float) -> Any:
    """Return a month of summary work: per-PR API-first dollars and private tokens by tier."""
    from workers.assess_econ import Workload

    cells = {
        ("summary", "local"): history.Cell(
            tasks=prs, prompt_tokens=int(prs * 5000), api_first_usd=prs * local
        ),
        ("review", "mid"): history.Cell(
            tasks=prs, prompt_tokens=int(prs * 8000), api_usd=prs * mid, api_first_usd=prs * mid
        ),
        ("review", "frontier"): history.Cell(
            tasks=prs / 10, api_usd=prs * frontier, api_first_usd=prs * frontier
        ),
    }
    return Workload(cells, prs, prs * 2.1)


def test_each_rung_pays_off_where_its_saving_equals_its_cost() -> None:
    from workers import assess_econ as econ

    work = workload(1000, local=0.02, mid=0.03, frontier=0.09)
    rungs = {o.rung: o for o in econ.options(work, PRICED, "bought")}
    one = rungs["1xH200"]
    assert one.private == {"local"}
    assert one.monthly_cost == (938 + 1354) / 2
    assert one.saving_per_pr == pytest.approx(0.02)
    assert one.payoff_prs == pytest.approx(1146 / 0.02)
    api_first = 1000 * (0.02 + 0.03 + 0.09)
    at = econ.at_volume(work, one.payoff_prs)
    assert one.spend(one.payoff_prs) == pytest.approx(api_first / 1000 * one.payoff_prs)
    assert at.prs == pytest.approx(one.payoff_prs)
    two = rungs["2xH200"]
    assert two.private == {"local", "mid"} and two.saving_per_pr == pytest.approx(0.05)
    assert two.full_prs == pytest.approx(6000 * SECONDS_PER_MONTH / 13000)
    rented = {o.rung: o for o in econ.options(work, PRICED, "rented")}
    assert rented["1xH200"].monthly_cost == 3632


@pytest.mark.parametrize(
    ("prs", "word"),
    [(1000, "API-first"), (60_000, "hybrid"), (2_000_000, "self-host-first")],
)
def test_verdict_names_the_cheapest_option(prs: float, word: str) -> None:
    from workers import assess_econ as econ

    work = econ.at_volume(workload(1000, local=0.02, mid=0.003, frontier=0.09), prs)
    rungs = econ.options(work, PRICED, "bought")
    said, line = econ.verdict(work, rungs, "mid")
    assert said == word
    assert line.startswith(f"Verdict: {word}.")
    assert "1xH200 pays off at 57,300 PRs/month" in line
    spend = econ.spend(work, rungs)
    best = min(spend, key=lambda k: spend[k] if k != "frontier-only API" else float("inf"))
    assert (best == "API-first") == (word == "API-first")


def test_a_rung_that_fills_before_it_pays_off_never_does() -> None:
    from workers import assess_econ as econ

    data = priced_data()
    data["rungs"]["1xH200"]["throughput_tokens_per_s"] = 0.01  # full at a handful of PRs
    policy = build_policy(data, source="slow")
    work = workload(1000, local=0.02, mid=0.03, frontier=0.09)
    rungs = econ.options(work, policy, "bought")
    assert not rungs[0].pays_off
    assert "1xH200 never on one rung (it is full at" in econ.verdict(work, rungs, "mid")[1]


def test_report_carries_verdict_table_assumptions_and_rows(pyrepo: Built) -> None:
    report = assess(iter(walked(pyrepo)), PRICED, repo=pyrepo.path)
    assert report["verdict"] in ("API-first", "hybrid", "self-host-first")
    assert report["verdict_line"].startswith(f"Verdict: {report['verdict']}.")
    assert len(report["per_change"]) == report["changes"] == 5
    assert sum(len(r["tasks"]) for r in report["per_change"]) == report["tasks"]
    per_task = {(r["task"], r["tier"]): r for r in report["per_task"]}
    assert sum(r["tasks_per_month"] for r in per_task.values()) == pytest.approx(
        report["volume_tasks_per_month"],
        abs=0.05 * len(per_task),  # each row is rounded
    )
    review_mid = per_task.get(("review", "mid")) or per_task[("review", "frontier")]
    assert review_mid["usd_per_task"] > 0 and review_mid["calls_per_task"] == 1
    what = {a["what"]: a for a in report["assumptions"]}
    assert what["mid API price"]["value"] == "$3.00 in / $15.00 out per Mtok"
    assert what["1xH200 throughput"]["flag"] == "--throughput 1xH200=TOKENS_PER_S"
    assert what["tokens per task"]["source"].startswith("measured: the jobs' own packer")
    assert what["volume"]["source"].startswith("observed: 5 changes over 13.0 days")
    text = render(report)
    for heading in [
        "Per task and tier, a month at",
        "Where each rung pays off against API-first",
        "Assumptions (what / value / from / flag)",
    ]:
        assert heading in text
    assert text.splitlines()[2] == report["verdict_line"]


def test_cli_csv_json_rollup_and_plot(
    built: Built, pyrepo: Built, priced_file: Path, tmp_path: Path
) -> None:
    import csv as csvlib

    common = ["--policy", str(priced_file), "--repo", str(built.path), "--repo", str(pyrepo.path)]
    done = cli(*common, "--json", "--plot", "spend.svg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["changes"] for r in report["repos"]] == [7, 5]
    assert report["changes"] == 12
    volumes = [r["volume_prs_per_month"] for r in report["repos"]]
    assert report["volume_prs_per_month"] == pytest.approx(sum(volumes), rel=1e-3)
    assert report["verdict_line"].startswith("Verdict: ")
    svg = (tmp_path / "spend.svg").read_text(encoding="utf-8")
    assert svg.startswith("<svg") and "API-first" in svg and "hybrid on 1xH200" in svg
    done = cli(*common, "--csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = list(csvlib.DictReader(done.stdout.splitlines()))
    assert {r["repo"] for r in rows} == {str(built.path), str(pyrepo.path), "all repositories"}
    total = [r for r in rows if r["repo"] == "all repositories"]
    assert {(r["task"], r["tier"]) for r in total} == {
        (t["task"], t["tier"]) for t in report["per_task"]
    }
    done = cli(*common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cibot assess: 2 repositories, 12 changes")
    assert "Total: Verdict: " in done.stdout


def test_cli_flags_change_the_assumptions(pyrepo: Built, priced_file: Path, tmp_path: Path) -> None:
    done = cli(
        "--repo", str(pyrepo.path), "--policy", str(priced_file), "--json", "--quick",
        "--price", "mid=1,2", "--throughput", "1xH200=3000", "--volume", "5000",
        "--gpu-cost", "rented", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    what = {a["what"]: a for a in report["assumptions"]}
    assert what["mid API price"]["value"] == "$1.00 in / $2.00 out per Mtok"
    assert what["mid API price"]["source"] == "--price"
    assert what["1xH200 throughput"]["value"].startswith("3,000 tokens/s")
    assert what["volume"]["source"] == "--volume"
    assert report["volume_prs_per_month"] == 5000
    assert report["prompt_tokens_from"] == "added-lines"
    assert report["rungs"][0]["monthly_cost_usd"] == 3632


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--plot", "spend.png"], "--plot spend.png: only .svg is supported"),
        (["--price", "mid=3"], "--price 'mid=3': write it as TIER=IN,OUT"),
        (["--price", "local=1,2"], "--price local: name an API tier"),
        (["--throughput", "9xH200=5"], "--throughput 9xH200: name a rung of the policy"),
        (["--volume", "0"], "--volume must be a positive number"),
        (["--json", "--csv"], "not allowed with argument"),
    ],
)
def test_cli_bad_decision_flags_exit_2(
    pyrepo: Built, tmp_path: Path, args: list[str], words: str
) -> None:
    done = cli("--repo", str(pyrepo.path), *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert words in done.stderr
    assert not (tmp_path / "spend.png").exists()
