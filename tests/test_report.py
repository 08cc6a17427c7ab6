"""Test ``cibot report``: cost per accepted PR on a seeded ledger, and the pure computation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.kernel.jobs import JobRef
from policies.loading import load_policy
from policies.model import Policy
from workers.ledger import FAILED, SUCCEEDED, JobResult, Ledger, OutcomeRow
from workers.llm import CallRecord
from workers.report import compute_report, parse_when, render_text

SINCE = datetime(2025, 3, 1, tzinfo=UTC)
UNTIL = datetime(2025, 3, 11, tzinfo=UTC)  # a ten-day window
MONTHLY = (938 + 1354) / 2  # the 1xH200 rung, bought, midpoint
MONTHS = 10 / 30.4375
WINDOW_COST = MONTHLY * MONTHS
CAPACITY = 15000 * 30.4375 * 86400  # tokens the rung serves in a month


def day(n: float) -> datetime:
    """Return a moment n days into the window."""
    return SINCE + timedelta(days=n)


def job(
    ledger: Ledger,
    *,
    repo: str = "acme/app",
    pr: int,
    task: str,
    at: datetime,
    calls: list[CallRecord],
    status: str = SUCCEEDED,
) -> None:
    """Run one job through the ledger the way the pipeline does."""
    ref = JobRef(
        task=task,
        installation_id=1,
        repo=repo,
        delivery_id=f"{repo}{pr}{task}",
        pr_number=pr,
        head_sha=f"{pr:040d}",
    )
    ledger.start_job(ref, tier=calls[0].tier if calls else "local", at=at)
    ledger.finish_job(
        ref,
        JobResult(
            status=status,
            tier=calls[-1].tier if calls else "local",
            calls=calls,
        ),
        at=at,
    )


def local(tokens: int) -> CallRecord:
    """Return a private call of ``tokens`` prompt tokens."""
    return CallRecord(tier="local", model="hosted_vllm/oss", prompt_tokens=tokens)


def api(tier: str, usd: float) -> CallRecord:
    """Return an API call costing ``usd``."""
    return CallRecord(tier=tier, model=f"{tier}-model", prompt_tokens=100, cost_usd=usd)


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    """Seed a ledger: merged and unmerged PRs, three tiers, one fallback, noise outside."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    job(ledger, pr=1, task="summary", at=day(1), calls=[local(10_000)])
    job(ledger, pr=2, task="review", at=day(2), calls=[api("mid", 0.30)])
    escalated = dataclasses.replace(api("mid", 0.05), escalation_reason="invalid_output")
    job(ledger, pr=2, task="summary", at=day(2), calls=[local(5_000), escalated])
    job(ledger, pr=3, task="summary", at=day(3), calls=[local(5_000)])
    job(ledger, pr=3, task="ci", at=day(3), calls=[api("frontier", 1.20)])
    job(ledger, pr=3, task="tests", at=day(4), calls=[], status=FAILED)
    job(ledger, repo="acme/other", pr=5, task="summary", at=day(5), calls=[local(20_000)])
    job(ledger, pr=4, task="review", at=day(-5), calls=[api("frontier", 10.0)])  # before
    stale = JobRef(
        task="summary",
        installation_id=1,
        repo="acme/app",
        delivery_id="s",
        pr_number=6,
        head_sha="f" * 40,
    )
    ledger.drop_job(stale, reason="superseded", at=day(6))  # dropped: not worked on
    for pr, outcome, when, repo in (
        (1, "merged", day(7), "acme/app"),
        (2, "merged", day(8), "acme/app"),
        (3, "closed", day(8), "acme/app"),
        (5, "merged", day(9), "acme/other"),
        (4, "merged", day(1), "acme/app"),
    ):
        ledger.record_outcome(
            installation_id=1,
            repo=repo,
            pr_number=pr,
            outcome=outcome,
            delivery_id=f"o{pr}",
            at=when,
        )
    ledger.close()
    return url


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``cibot report`` in a subprocess against ``url``."""
    env = {**os.environ, "CIBOT_DATABASE_URL": url, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("CIBOT_POLICY", None)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "report", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cost_per_accepted_pr_on_a_seeded_ledger(seeded: str) -> None:
    """All spend on the window's PRs (API plus allocated rung cost) over the merged ones."""
    done = cli(seeded, "--since", "2025-03-01", "--until", "2025-03-11", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # 40k private tokens served in the window: the rung's window cost is spread over them.
    api_usd = 0.30 + 0.05 + 1.20
    assert report["prs_worked"] == 4  # PRs 1, 2, 3 and acme/other#5; #6 was only dropped
    assert report["prs_merged"] == 3
    assert report["pr_spend_fully_loaded_usd"] == pytest.approx(WINDOW_COST + api_usd)
    assert report["cost_per_accepted_pr_fully_loaded"] == pytest.approx((WINDOW_COST + api_usd) / 3)
    marginal = MONTHLY * 40_000 / CAPACITY
    assert report["cost_per_accepted_pr_marginal"] == pytest.approx((marginal + api_usd) / 3)
    spend = report["spend"]
    assert spend["local"]["tokens"] == 40_000
    assert spend["local"]["fully_loaded_usd"] == pytest.approx(WINDOW_COST)
    assert spend["mid"]["api_usd"] == pytest.approx(0.35)
    assert spend["frontier"]["api_usd"] == pytest.approx(1.20)  # the $10 call is outside
    assert report["jobs_finished"] == 7
    assert report["fallback_rate"] == pytest.approx(1 / 7)
    assert (report["fallback_steps"], report["fallback_reasons"]) == (1, {"invalid_output": 1})
    assert report["success_rate"] == pytest.approx(6 / 7)
    assert report["tier_split"] == pytest.approx({"frontier": 1 / 7, "local": 4 / 7, "mid": 2 / 7})
    assert report["success_by_task"]["tests"] == 0.0


def test_the_repo_filter_keeps_the_rung_allocated_over_all_private_work(seeded: str) -> None:
    """acme/app served half the private tokens, so it carries half the rung's cost."""
    done = cli(
        seeded, "--since", "2025-03-01", "--until", "2025-03-11", "--repo", "acme/app", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["prs_worked"], report["prs_merged"]) == (3, 2)
    expected = (WINDOW_COST * 20_000 / 40_000 + 1.55) / 2
    assert report["cost_per_accepted_pr_fully_loaded"] == pytest.approx(expected)


def test_text_output_leads_with_cost_per_accepted_pr(seeded: str) -> None:
    """The table names every figure the issue asks for."""
    done = cli(seeded, "--since", "2025-03-01", "--until", "2025-03-11")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[2]
    assert first.startswith("Cost per accepted PR")
    assert f"${(WINDOW_COST + 1.55) / 3:,.2f}" in first
    for words in (
        "PRs worked on",
        "PRs merged",
        "Spend by tier",
        "Tier split",
        "Fallback rate",
        "Fallback reasons       invalid_output 1",
        "Task success rate",
        "fully loaded",
        "marginal",
    ):
        assert words in done.stdout


def test_bad_dates_are_one_line_errors(seeded: str) -> None:
    """A malformed or inverted window exits 2 with one line and no traceback."""
    for args in (["--since", "yesterday"], ["--since", "2025-03-11", "--until", "2025-03-01"]):
        done = cli(seeded, *args)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1
        assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def policy() -> Policy:
    """Load the packaged default policy."""
    return load_policy()


def test_an_idle_rung_shows_its_whole_cost(policy: Policy) -> None:
    """With no private work at all, the window's rung cost is idle, not zero."""
    report = compute_report([], [], [], policy, SINCE, UNTIL)
    local_spend = next(s for s in report.spend if s.tier == "local")
    assert local_spend.idle_usd == pytest.approx(WINDOW_COST)
    assert local_spend.fully_loaded_usd == pytest.approx(WINDOW_COST)
    assert report.cost_per_accepted_pr_fully_loaded is None
    assert report.fallback_rate is None
    assert "n/a" in render_text(report)


def test_the_latest_outcome_before_the_end_wins(policy: Policy, tmp_path: Path) -> None:
    """A PR closed then reopened and merged counts as merged; a merge after --until does not."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    job(ledger, pr=1, task="summary", at=day(1), calls=[api("mid", 1.0)])
    job(ledger, pr=2, task="summary", at=day(1), calls=[api("mid", 1.0)])
    jobs, calls, _ = ledger.rows()
    ledger.close()
    outcomes = [
        OutcomeRow("acme/app", 1, "closed", day(2)),
        OutcomeRow("acme/app", 1, "merged", day(3)),
        OutcomeRow("acme/app", 2, "merged", day(30)),
    ]
    report = compute_report(jobs, calls, outcomes, policy, SINCE, UNTIL)
    assert report.prs_merged == 1
    assert report.cost_per_accepted_pr_fully_loaded == pytest.approx(2.0)


def test_dates_parse_as_utc() -> None:
    """Dates and datetimes parse to aware UTC; junk names the flag."""
    assert parse_when("2025-03-01", flag="--since") == SINCE
    assert parse_when("2025-03-01T02:00:00+02:00", flag="--since") == SINCE
    with pytest.raises(Exception, match="--until"):
        parse_when("soon", flag="--until")


# ---- acceptance signals, shadow jobs and the --by views ---------------------------------------


def signalled(tmp_path: Path) -> str:
    """Seed two PRs with a summary and a review each, feedback of four kinds, and a shadow job."""
    url = f"sqlite:///{tmp_path / 'signals.db'}"
    ledger = Ledger(url)
    for pr, comment in ((1, 11), (2, 21)):
        for task, calls in (("summary", [local(4_000)]), ("review", [api("mid", 0.20)])):
            ref = JobRef(
                task=task,
                installation_id=1,
                repo="acme/app",
                delivery_id=f"{pr}{task}",
                pr_number=pr,
            )
            ledger.start_job(ref, tier=calls[0].tier, at=day(1))
            result = JobResult(
                status=SUCCEEDED,
                tier=calls[0].tier,
                calls=calls,
                comment_id=comment if task == "summary" else None,
            )
            ledger.finish_job(ref, result, at=day(1))
    shadow = JobRef(task="review", installation_id=1, repo="acme/app", delivery_id="s", pr_number=3)
    ledger.start_job(shadow, tier="mid", at=day(2))
    ledger.finish_job(
        shadow,
        JobResult(status=SUCCEEDED, tier="mid", calls=[api("mid", 0.75)], shadow=True),
        at=day(2),
    )
    for key, pr, signal, value, task, comment in (
        ("a", 1, "reaction", 1, "", 11),  # no task: the sticky comment names the summary job
        ("b", 1, "suggestion_applied", 1, "review", 901),
        ("c", 2, "thread_resolved", 1, "", 902),  # a review comment: the PR's review job
        ("d", 2, "reaction", -1, "", 21),
        ("e", 2, "replied", 0, "", 903),
        ("f", 9, "reaction", 1, "summary", 99),  # a PR the window never worked on
    ):
        ledger.record_feedback(
            key=key,
            installation_id=1,
            repo="acme/app",
            pr_number=pr,
            signal=signal,
            value=value,
            task=task,
            comment_id=comment,
            at=day(3),
        )
    ledger.record_outcome(
        installation_id=1,
        repo="acme/app",
        pr_number=1,
        outcome="merged",
        delivery_id="m1",
        at=day(4),
    )
    ledger.close()
    return url


def test_every_positive_signal_accepts_the_result_it_is_on(tmp_path: Path) -> None:
    """Sticky-comment, review-comment and named-task signals each find their job; -1 and 0 do not."""
    done = cli(signalled(tmp_path), "--since", "2025-03-01", "--until", "2025-03-11", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["results_posted"], report["results_accepted"]) == (4, 3)
    assert report["acceptance_rate"] == pytest.approx(3 / 4)
    signals = report["acceptance_by_signal"]
    assert signals["reaction"] == {"positive": 1, "negative": 1, "neutral": 0, "results": 1}
    assert signals["thread_resolved"]["results"] == 1
    assert signals["replied"] == {"positive": 0, "negative": 0, "neutral": 1, "results": 0}
    cells = {
        (c["task"], c["tier"]): (c["posted"], c["accepted"])
        for c in report["acceptance_by_task_tier"]
    }
    assert cells == {("review", "mid"): (2, 2), ("summary", "local"): (2, 1)}
    assert report["prs_signalled"] == 2


def test_shadow_jobs_stay_out_of_the_pr_figures(tmp_path: Path) -> None:
    """The shadow review's PR is not worked on, its $0.75 is not in mid's spend, but it is shown."""
    done = cli(signalled(tmp_path), "--since", "2025-03-01", "--until", "2025-03-11", "--json")
    report = json.loads(done.stdout)
    assert report["prs_worked"] == 2 and report["jobs_finished"] == 4
    assert report["spend"]["mid"]["api_usd"] == pytest.approx(0.40)
    assert report["shadow"]["jobs"] == 1 and report["shadow"]["by_tier"] == {"mid": 1}
    assert report["shadow"]["api_usd"] == pytest.approx(0.75)
    assert report["spend_fully_loaded_usd"] == pytest.approx(WINDOW_COST + 0.40 + 0.75)
    text = cli(signalled(tmp_path), "--since", "2025-03-01", "--until", "2025-03-11").stdout
    assert "Shadow jobs            1 (mid 1)" in text


def test_the_by_views_split_the_window_and_csv_parses(seeded: str) -> None:
    """--by repo and task split the figures; --by week --csv gives one row per ISO week."""
    window = ("--since", "2025-03-01", "--until", "2025-03-11")
    by_repo = cli(seeded, *window, "--by", "repo", "--json")
    rows = {r["key"]: r for r in json.loads(by_repo.stdout)["rows"]}
    assert set(rows) == {"acme/app", "acme/other"}
    assert (rows["acme/app"]["prs_worked"], rows["acme/app"]["prs_merged"]) == (3, 2)
    assert rows["acme/app"]["cost_per_accepted_pr_fully_loaded"] == pytest.approx(
        (WINDOW_COST * 20_000 / 40_000 + 1.55) / 2
    )
    by_task = cli(seeded, *window, "--by", "task")
    assert by_task.returncode == 0
    assert [line.split()[0] for line in by_task.stdout.splitlines()[1:]] == [
        "ci",
        "review",
        "summary",
        "tests",
    ]
    weekly = cli(seeded, *window, "--by", "week", "--csv")
    header, *lines = weekly.stdout.splitlines()
    assert header.startswith("week,jobs_finished,prs_worked,prs_merged,spend_fully_loaded_usd")
    assert [line.split(",")[0] for line in lines] == ["2025-W09", "2025-W10", "2025-W11"]
    assert sum(float(line.split(",")[4]) for line in lines) == pytest.approx(WINDOW_COST + 1.55)
    total = cli(seeded, *window, "--csv").stdout.splitlines()
    assert total[0].startswith("window,") and total[1].startswith("all,7,4,3,")


def test_an_empty_window_says_no_prs_rather_than_zero_dollars(policy: Policy) -> None:
    """With nothing worked on, the PR spend line is n/a and the idle rung is named as such."""
    text = render_text(compute_report([], [], [], policy, SINCE, UNTIL))
    assert "Spend on those PRs     n/a: no PRs worked on in the window" in text
    assert f"(of it: ${WINDOW_COST:,.2f} idle rung time)" in text
