"""Test GET /dashboard through the real admin app over a seeded SQLite ledger, and the charts."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bot.kernel.jobs import JobRef
from bot.kernel.settings import Settings
from bot.server import create_apps
from policies.loading import load_policy
from tests.edge_server import SECRET
from tests.test_report import MONTHLY, api, local
from workers import charts
from workers.dashboard import Dashboard
from workers.ledger import SUCCEEDED, JobResult, Ledger
from workers.llm import CallRecord
from workers.report import month_start

SVG = "{http://www.w3.org/2000/svg}"
WINDOW_COST_30 = MONTHLY * 30 / 30.4375  # the 1xH200 rung over the default 30-day window


# ---- the charts ------------------------------------------------------------------------------


def svg_root(svg: str) -> ET.Element:
    """Parse a chart as XML: a valid SVG document is part of the contract."""
    return ET.fromstring(svg)  # noqa: S314 - the charts module's own output, not input


def marks(svg: str) -> list[dict[str, str]]:
    """Return the attributes of every element that carries data-value."""
    root = svg_root(svg)
    return [dict(e.attrib) for e in root.iter() if "data-value" in e.attrib]


def test_a_line_chart_carries_every_point_and_reference_line() -> None:
    """Each point is a mark with its series, x and value; reference lines carry theirs."""
    svg = charts.line_chart(
        {"fully loaded": [("2025-W10", 12.5), ("2025-W11", 3.25)], "marginal": [("2025-W10", 0.1)]},
        title="Cost per accepted PR",
        y_label="USD",
        lines={"break-even": 20.0},
    )
    root = svg_root(svg)
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title") is not None
    assert root.find(f"{SVG}title").text == "Cost per accepted PR"  # type: ignore[union-attr]
    found = {(m["data-series"], m["data-x"]): float(m["data-value"]) for m in marks(svg)}
    assert found == {
        ("fully loaded", "2025-W10"): 12.5,
        ("fully loaded", "2025-W11"): 3.25,
        ("marginal", "2025-W10"): 0.1,
        ("break-even", ""): 20.0,
    }


def test_a_stacked_bar_chart_stacks_segments_in_order() -> None:
    """Segments of one bar sit on each other: the second starts where the first ends."""
    svg = charts.bar_chart(
        {"W1": {"local": 3.0, "mid": 1.0}, "W2": {"mid": 2.0, "zero": 0.0}}, title="t", y_label="$"
    )
    rects = [m for m in marks(svg) if "height" in m]
    assert [(r["data-series"], r["data-x"], float(r["data-value"])) for r in rects] == [
        ("local", "W1", 3.0),
        ("mid", "W1", 1.0),
        ("mid", "W2", 2.0),
    ]
    local_seg, mid_seg = rects[0], rects[1]
    assert float(mid_seg["y"]) + float(mid_seg["height"]) == pytest.approx(float(local_seg["y"]))
    assert float(local_seg["height"]) == pytest.approx(3 * float(mid_seg["height"]), rel=0.02)


def test_chart_text_is_escaped_and_an_empty_chart_says_so() -> None:
    """A hostile label cannot inject markup; no values means a 'no data' chart, still valid."""
    svg = charts.bar_chart({'<script>"x"': {"a&b": 1.0}}, title="<b>t</b>", y_label="y")
    assert "<script>" not in svg and "<b>" not in svg
    assert marks(svg)[0]["data-x"] == '<script>"x"'
    empty = charts.line_chart({"s": []}, title="Nothing", y_label="y")
    assert not marks(empty) and charts.EMPTY_TEXT in empty
    svg_root(empty)


def test_long_labels_slant_and_the_chart_grows_to_hold_them() -> None:
    """Labels wider than their bands are rotated, and the drawing is taller for them."""
    groups = {f"summary / frontier {i}": {"a": 1.0} for i in range(12)}
    svg = charts.bar_chart(groups, title="t", y_label="y")
    assert "rotate(-30" in svg
    assert int(svg_root(svg).get("height", "0")) > charts.HEIGHT


# ---- the page --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """Say when the seeded jobs ran, so tests can name their ISO weeks."""

    url: str
    recent: datetime
    older: datetime

    @staticmethod
    def week(at: datetime) -> str:
        """Return the ISO week label of a moment."""
        year, week, _ = at.isocalendar()
        return f"{year}-W{week:02d}"


def run_job(
    ledger: Ledger,
    *,
    repo: str,
    pr: int,
    task: str,
    at: datetime,
    calls: list[CallRecord],
    comment_id: int | None = None,
    shadow: bool = False,
) -> None:
    """Run one job through the ledger as the pipeline does, with its sticky comment id."""
    ref = JobRef(
        task=task, installation_id=1, repo=repo, delivery_id=f"{repo}{pr}{task}", pr_number=pr
    )
    ledger.start_job(ref, tier=calls[0].tier, at=at)
    ledger.finish_job(
        ref,
        JobResult(
            status=SUCCEEDED,
            tier=calls[-1].tier,
            calls=calls,
            comment_id=comment_id,
            shadow=shadow,
        ),
        at=at,
    )


def seed_ledger(path: Path) -> Seed:
    """Seed three PRs on two repos over two weeks, feedback of two kinds, and a shadow job."""
    url = f"sqlite:///{path}"
    now = datetime.now(UTC)
    recent, older = now - timedelta(days=1), now - timedelta(days=8)
    ledger = Ledger(url)
    run_job(
        ledger,
        repo="acme/app",
        pr=1,
        task="summary",
        at=older,
        calls=[local(10_000)],
        comment_id=101,
    )
    run_job(
        ledger,
        repo="acme/app",
        pr=2,
        task="review",
        at=recent,
        calls=[api("frontier", 2.50)],
        comment_id=102,
    )
    run_job(
        ledger,
        repo="acme/lib",
        pr=3,
        task="summary",
        at=recent,
        calls=[local(5_000)],
        comment_id=103,
    )
    run_job(
        ledger,
        repo="acme/app",
        pr=4,
        task="review",
        at=recent,
        calls=[api("mid", 0.40)],
        shadow=True,
    )
    for pr, at in ((1, older), (2, recent)):
        ledger.record_outcome(
            installation_id=1,
            repo="acme/app",
            pr_number=pr,
            outcome="merged",
            delivery_id=f"o{pr}",
            at=at + timedelta(hours=1),
        )
    for key, repo, pr, signal, value, comment in (
        ("r1", "acme/app", 1, "reaction", 1, 101),  # on the summary's sticky comment
        ("t2", "acme/app", 2, "thread_resolved", 1, 5555),  # on a review comment: no task
        ("r3", "acme/lib", 3, "reaction", -1, 103),
    ):
        ledger.record_feedback(
            key=key,
            installation_id=1,
            repo=repo,
            pr_number=pr,
            signal=signal,
            value=value,
            comment_id=comment,
            at=recent + timedelta(hours=2),
        )
    ledger.close()
    return Seed(url, recent, older)


@pytest.fixture
def seeded(tmp_path: Path) -> Seed:
    """Return a seeded ledger."""
    return seed_ledger(tmp_path / "ledger.db")


def admin_client(url: str, tmp_path: Path) -> TestClient:
    """Return a client of the real admin app, calling from a loopback address."""
    settings = Settings(webhook_secret=SECRET, database_url=url, spool_path=tmp_path / "spool.db")
    apps = create_apps(settings, load_policy())
    return TestClient(apps.admin, client=("127.0.0.1", 50000))


@pytest.fixture
def board(seeded: Seed, tmp_path: Path) -> Iterator[TestClient]:
    """Serve the admin app over the seeded ledger."""
    with admin_client(seeded.url, tmp_path) as client:
        yield client


class Marks(HTMLParser):
    """Collect every element's attributes, and the text of each table row by its data key."""

    def __init__(self) -> None:
        """Start with nothing collected."""
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Keep the tag and its attributes."""
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        """Return the attributes of each ``tag`` whose attributes include ``wanted``."""
        keys = {k.replace("_", "-"): v for k, v in wanted.items()}
        return [a for t, a in self.elements if t == tag and keys.items() <= a.items()]


def parse(page: str) -> Marks:
    """Parse a page's elements."""
    found = Marks()
    found.feed(page)
    return found


def value(attrs: list[dict[str, str]]) -> float:
    """Return the one data-value among ``attrs``."""
    assert len(attrs) == 1, attrs
    return float(attrs[0]["data-value"])


def row_text(page: str, key: str, name: str) -> str:
    """Return the text of the table row whose ``data-<key>`` is ``name``, tags stripped."""
    match = re.search(rf'<tr data-{key}="{re.escape(name)}"[^>]*>(.*?)</tr>', page, re.S)
    assert match, f"no row data-{key}={name}"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(1))).strip()


def test_the_page_shows_the_seeded_figures(board: TestClient, seeded: Seed) -> None:
    """Headline, trend, spend, acceptance, repo, utilisation, budget and shadow all match."""
    response = board.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    found = parse(page)
    full = WINDOW_COST_30 + 2.50  # the rung's 30 days over 15k local tokens, plus the API call
    assert value(found.find("dd", data_figure="prs_merged")) == 2
    assert value(found.find("span", data_figure="prs_worked")) == 3
    assert value(found.find("dd", data_figure="cost_per_accepted_pr_fully_loaded")) == (
        pytest.approx(full / 2, rel=1e-3)
    )
    assert value(found.find("dd", data_figure="acceptance_rate")) == pytest.approx(2 / 3)
    assert len(found.find("svg", role="img")) == 5
    week = seeded.week(seeded.recent)
    assert value(found.find("rect", data_series="frontier", data_x=week)) == pytest.approx(2.5)
    assert value(found.find("circle", data_series="fully loaded", data_x=seeded.week(seeded.older)))
    assert row_text(page, "task", "summary").startswith("summary local 2 1 50.0%")
    assert row_text(page, "signal", "thread_resolved") == "thread_resolved 1 0 0 1"
    assert row_text(page, "signal", "reaction") == "reaction 1 1 0 1"
    assert row_text(page, "repo", "acme/lib").startswith("acme/lib 1 1 0")
    assert 'href="/dashboard?repo=acme%2Fapp"' in page
    assert row_text(page, "private-tier", "local").startswith("local 1xH200 15,000")


def test_shadow_jobs_and_the_budget_are_shown_apart(board: TestClient, seeded: Seed) -> None:
    """The shadow review counts in its own table and the budget, never in accepted-PR figures."""
    page = board.get("/dashboard").text
    tiers = re.search(r'id="tier-table".*?</table>', page, re.S)
    assert tiers and 'data-tier="frontier"' in tiers.group(0)
    assert 'data-tier="mid"' not in tiers.group(0)  # the only mid call was the shadow job's
    shadow = re.search(r'id="shadow-table".*?</table>', page, re.S)
    assert shadow and "mid 1" in shadow.group(0) and "$0.4000" in shadow.group(0)
    month = month_start(datetime.now(UTC))
    spent = sum(usd for usd, at in ((2.50, seeded.recent), (0.40, seeded.recent)) if at >= month)
    assert "$500.00" in row_text(page, "installation", "1")
    row = re.search(r'<tr data-installation="1">(.*?)</tr>', page, re.S)
    assert row
    spent_cell, left_cell, _ = re.findall(r'data-value="([^"]*)"', row.group(1))
    assert (float(spent_cell), float(left_cell)) == pytest.approx((spent, 500 - spent))


def test_filters_narrow_the_page_and_links_keep_them(board: TestClient) -> None:
    """?repo= narrows every figure; ?days= changes the window; links carry both."""
    page = board.get("/dashboard", params={"repo": "acme/lib", "days": "7"}).text
    found = parse(page)
    assert value(found.find("span", data_figure="prs_worked")) == 1
    assert value(found.find("dd", data_figure="prs_merged")) == 0
    assert "last 7 days" in page
    assert 'href="/dashboard?days=365&amp;repo=acme%2Flib"' in page or "days=7" in page
    assert 'id="share"' in page and "/dashboard?days=7&amp;repo=acme%2Flib" in page


def test_the_task_filter_narrows_the_page(seeded: Seed) -> None:
    """?task=review keeps the review job only: one PR worked, merged, no local spend on it."""
    board = Dashboard(Settings(database_url=seeded.url), load_policy())
    try:
        page = board.page(days="30", repo=None, task="review")
    finally:
        board.close()
    found = parse(page)
    assert value(found.find("span", data_figure="prs_worked")) == 1
    assert value(found.find("dd", data_figure="cost_per_accepted_pr_fully_loaded")) == 2.5


def test_the_task_filter_reaches_the_page_over_http(board: TestClient) -> None:
    """The admin route passes ?task= on: one review PR, and a bad task is a 400."""
    found = parse(board.get("/dashboard", params={"task": "review"}).text)
    assert value(found.find("span", data_figure="prs_worked")) == 1
    response = board.get("/dashboard", params={"task": "poetry"})
    assert response.status_code == 400 and "task must be one of" in response.text


def test_bad_filters_get_a_400_that_says_what_they_take(board: TestClient) -> None:
    """A malformed ?days= or ?repo= is a 400 with the rule, and the input is not echoed."""
    for days in ("0", "-3", "ten", "99999"):
        response = board.get("/dashboard", params={"days": days})
        assert response.status_code == 400
        assert "whole number" in response.text
    response = board.get("/dashboard", params={"repo": "<b>x</b>"})
    assert response.status_code == 400
    assert "owner/name" in response.text and "<b>" not in response.text
    board_page = Dashboard(Settings(), load_policy())
    with pytest.raises(Exception, match="task must be one of"):
        board_page.page(days=None, repo=None, task="poetry")


def test_an_empty_ledger_says_what_to_do_not_zero_dollars(tmp_path: Path) -> None:
    """No jobs: the page says how to get some, and shows the idle rung, not '$0.00 spent'."""
    with admin_client(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path) as client:
        page = client.get("/dashboard").text
    text = re.sub(r"<[^>]+>", "", page)
    assert "No jobs yet: install the App on a repo, or run cibot demo." in text
    assert "no PRs worked on in the window" in text
    assert "of it idle rung time" in text
    assert f"${WINDOW_COST_30:,.2f}" in text
    assert "$0.00 fully loaded" not in text
