"""Serve GET /dashboard from the real admin listener (uvicorn) over a seeded SQLite ledger."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bot.settings import Settings
from policies.loading import load_policy
from tests.edge_server import SECRET, EdgeServer
from tests.test_report import api, job, local
from workers.ledger import Ledger

pytestmark = pytest.mark.integration


@pytest.fixture
def board(redis_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    """Seed a ledger with two PRs (one merged) and serve the edge over it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    now = datetime.now(UTC) - timedelta(days=1)
    job(ledger, pr=1, task="summary", at=now, calls=[local(10_000)])
    job(ledger, pr=2, task="review", at=now, calls=[api("frontier", 2.50)])
    ledger.record_outcome(
        installation_id=1, repo="acme/app", pr_number=2, outcome="merged", delivery_id="o2", at=now
    )
    ledger.close()
    settings = Settings(
        webhook_secret=SECRET,
        redis_url=redis_url,
        database_url=url,
        spool_path=tmp_path / "spool.db",
    )
    server = EdgeServer(settings, load_policy()).start()
    with httpx.Client(base_url=server.admin_url, timeout=30) as http:
        yield http
    server.stop()


def test_the_dashboard_shows_cost_per_accepted_pr(board: httpx.Client) -> None:
    """The page carries the report's figures, HTML-escaped, for the default 30 days."""
    response = board.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "Last 30 days" in page
    assert "Cost per accepted PR" in page
    worked = next(line for line in page.splitlines() if line.startswith("PRs worked on"))
    merged = next(line for line in page.splitlines() if line.startswith("PRs merged"))
    assert (worked.split()[-1], merged.split()[-1]) == ("2", "1")
    assert "frontier" in page and "$2.50" in page


def test_the_dashboard_rejects_a_bad_window_clearly(board: httpx.Client) -> None:
    """A malformed ?days= gets a 400 that says what it takes, not a 500."""
    for days in ("0", "-3", "ten", "99999"):
        response = board.get("/dashboard", params={"days": days})
        assert response.status_code == 400
        assert "whole number" in response.text
    assert board.get("/dashboard", params={"days": "7", "repo": "<b>x</b>"}).status_code == 200
    assert "<b>x</b>" not in board.get("/dashboard", params={"repo": "<b>x</b>"}).text
