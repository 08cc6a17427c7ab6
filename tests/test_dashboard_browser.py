"""Load the dashboard in headless Chromium from the admin listener and read the drawn figures back.

Chromium renders the page from a real uvicorn server on loopback; ``--dump-dom`` gives
the DOM after layout, and ``--screenshot`` keeps an image of the page under
``tests/artifacts/`` for people to look at.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bot.kernel.settings import Settings
from bot.server import create_apps
from policies.loading import load_policy
from tests.edge_server import SECRET, bound
from tests.services import wait_for_port
from tests.test_dashboard import WINDOW_COST_30, Seed, parse, row_text, seed_ledger, value

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Seed]]:
    """Serve the admin app with uvicorn on a loopback port over a seeded ledger."""
    if CHROMIUM is None:
        pytest.skip("chromium is not on PATH: install Debian's chromium package to run this")
    seed = seed_ledger(tmp_path / "ledger.db")
    settings = Settings(webhook_secret=SECRET, database_url=seed.url, spool_path=tmp_path / "s.db")
    sock = bound("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_apps(settings, load_policy()).admin, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}/dashboard", seed
    server.should_exit = True
    thread.join(timeout=15)


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a throwaway profile."""
    assert CHROMIUM is not None
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, profile, *args], capture_output=True, text=True, timeout=120
    )


def test_chromium_draws_every_chart_and_table_with_the_seeded_numbers(
    served: tuple[str, Seed], tmp_path: Path
) -> None:
    """The rendered DOM holds five charts and the tables, each with the ledger's figures."""
    url, seed = served
    done = chromium("--dump-dom", url, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    found = parse(dom)
    charts = found.find("svg", role="img")
    assert len(charts) == 5
    assert {c["aria-label"] for c in charts} == {
        "Cost per accepted PR, by week",
        "Spend by tier, by week (fully loaded)",
        "Spend by task, by week (fully loaded)",
        "Posted results by task / tier",
        "Private-tier utilisation against break-even, by week",
    }
    recent, older = seed.week(seed.recent), seed.week(seed.older)
    assert value(found.find("rect", data_series="frontier", data_x=recent)) == pytest.approx(2.5)
    assert value(found.find("rect", data_series="review", data_x=recent)) == pytest.approx(2.5)
    assert found.find("circle", data_series="fully loaded", data_x=older)
    assert found.find("circle", data_series="local busy", data_x=recent)
    assert len(found.find("line", data_series="1xH200 break-even, bought")) == 1
    assert value(found.find("rect", data_series="accepted", data_x="review / frontier")) == 1
    full = WINDOW_COST_30 + 2.50
    assert value(found.find("dd", data_figure="cost_per_accepted_pr_fully_loaded")) == (
        pytest.approx(full / 2, rel=1e-3)
    )
    assert row_text(dom, "repo", "acme/app").startswith("acme/app 2 2 2")
    assert row_text(dom, "task", "review").startswith("review frontier 1 1 100.0%")
    assert row_text(dom, "private-tier", "local").startswith("local 1xH200 15,000")


def test_chromium_keeps_a_screenshot_of_the_page(served: tuple[str, Seed], tmp_path: Path) -> None:
    """A full-page screenshot is written as a test artefact, and it is a real PNG."""
    url, _ = served
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    done = chromium(f"--screenshot={shot}", "--window-size=1280,4400", url, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    print(f"dashboard screenshot: {shot}")
