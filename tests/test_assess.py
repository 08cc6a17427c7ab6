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

from bot.assess import assess, render, tier_prices
from bot.errors import InputError
from policies.costs import SECONDS_PER_MONTH
from policies.evidence import parse_diff
from policies.loading import build_policy, default_policy_text, load_policy, parse_yaml
from workers import history

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
    probe = (
        "import sys; from bot.cli import main; code = main(sys.argv[1:]);"
        "loaded = [m for m in ('litellm', 'celery', 'redis', 'httpx') if m in sys.modules];"
        "print('loaded:' + ','.join(loaded), file=sys.stderr); sys.exit(code)"
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
    assert done.stderr.strip().splitlines()[-1] == "loaded:"  # no client library was imported


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
