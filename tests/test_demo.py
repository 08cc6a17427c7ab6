"""Test ``cibot demo``: a labelled simulated month that ``cibot report`` then shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policies.loading import load_policy
from tests.test_report import job, local
from workers import demo
from workers.ledger import Ledger

pytestmark = pytest.mark.integration


def cibot(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run the cibot CLI in a subprocess against the ledger at ``url``."""
    env = {**os.environ, "CIBOT_DATABASE_URL": url, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("CIBOT_POLICY", None)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_then_report_shows_the_simulated_month(tmp_path: Path) -> None:
    """The month has three demo repos, every tier, fallbacks, feedback kinds and shadow jobs."""
    url = f"sqlite:///{tmp_path / 'cibot.db'}"
    done = cibot("demo", url=url)
    assert done.returncode == 0, done.stderr
    assert "demo (simulated)" in done.stdout and "cibot report" in done.stdout
    assert "/dashboard" in done.stdout
    shown = cibot("report", "--json", url=url)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["prs_worked"] > 30 and 0 < report["prs_merged"] < report["prs_worked"]
    assert set(report["tier_split"]) == {"local", "mid", "frontier", "human"}
    assert set(report["success_by_task"]) == {"summary", "review", "ci", "tests", "deps"}
    assert report["fallback_steps"] > 0 and report["shadow"]["jobs"] >= 2
    assert {"reaction", "thread_resolved", "suggestion_applied", "tests_merged"} <= set(
        report["acceptance_by_signal"]
    )
    assert 0 < report["acceptance_rate"] < 1
    by_repo = cibot("report", "--by", "repo", "--csv", url=url)
    repos = [line.split(",")[0] for line in by_repo.stdout.splitlines()[1:]]
    assert repos == ["demo/infra", "demo/payments-api", "demo/web-app"]


def test_the_same_seed_gives_the_same_month_and_a_rerun_writes_nothing(tmp_path: Path) -> None:
    """Seeded runs agree; a second run over the demo month leaves it as it was."""
    until = datetime(2025, 6, 30, tzinfo=UTC)
    counts = []
    for name in ("a", "b"):
        ledger = Ledger(f"sqlite:///{tmp_path / name}.db")
        counts.append(demo.fill(ledger, load_policy(), seed=5, days=30, until=until))
        ledger.close()
    assert counts[0] == counts[1] and counts[0].jobs > 0
    again = cibot("demo", "--database-url", f"sqlite:///{tmp_path / 'a.db'}", url="sqlite://")
    assert again.returncode == 0, again.stderr
    assert "nothing written" in again.stdout
    ledger = Ledger(f"sqlite:///{tmp_path / 'a.db'}")
    jobs, _, _ = ledger.rows()
    ledger.close()
    assert len(jobs) == counts[0].jobs
    assert all(j.repo.startswith("demo/") for j in jobs)


def test_demo_refuses_a_ledger_with_real_jobs_unless_forced(tmp_path: Path) -> None:
    """Real work is never mixed with fiction by accident: exit 2 and one line naming --force."""
    url = f"sqlite:///{tmp_path / 'real.db'}"
    ledger = Ledger(url)
    job(ledger, pr=1, task="summary", at=datetime.now(UTC), calls=[local(1_000)])
    ledger.close()
    refused = cibot("demo", "--database-url", url, url="sqlite://")
    assert refused.returncode == 2
    assert "--force" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    forced = cibot("demo", "--database-url", url, "--force", "--days", "7", url="sqlite://")
    assert forced.returncode == 0, forced.stderr
    assert "7 days" in forced.stdout


def test_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    """A --days or --seed that is not a whole number in range exits 2 naming the flag."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for args, flag in ((["--days", "0"], "--days"), (["--seed", "x"], "--seed")):
        done = cibot("demo", "--database-url", url, *args, url="sqlite://")
        assert done.returncode == 2 and flag in done.stderr
        assert "Traceback" not in done.stderr
