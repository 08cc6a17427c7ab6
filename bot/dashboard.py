"""Serve ``GET /dashboard``: the ledger's report as a small HTML page, off the webhook path."""

from __future__ import annotations

import html
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.errors import InputError
from bot.settings import Settings
from policies.model import Policy

DEFAULT_DAYS = 30
MAX_DAYS = 3660
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cibot: cost per accepted PR</title>
<meta http-equiv="refresh" content="300">
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}}
pre{{background:#f6f8fa;padding:1rem;overflow-x:auto}}</style></head>
<body><h1>cibot</h1><p>Last {days} days{repo}. Refreshes every 5 minutes.
<code>cibot report --json</code> gives the same figures as JSON.</p>
<pre>{report}</pre></body></html>
"""


class Dashboard:
    """Render the report from the ledger; connect on first use, once."""

    def __init__(self, settings: Settings, policy: Policy) -> None:
        """Keep the settings; the ledger opens lazily so serve starts without a database."""
        self._settings = settings
        self._policy = policy
        self._ledger: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        """Open the ledger (running migrations) the first time a page is asked for."""
        with self._lock:
            if self._ledger is None:
                from workers.ledger import Ledger

                self._ledger = Ledger(self._settings.database_url)
        return self._ledger

    def page(self, *, days: str | None, repo: str | None) -> str:
        """Return the HTML page for the last ``days`` days, optionally for one repo."""
        window = _days(days)
        from workers.report import load_report, render_text

        until = datetime.now(UTC)
        report = load_report(
            self._open(), self._policy, since=until - timedelta(days=window), until=until, repo=repo
        )
        return PAGE.format(
            days=window,
            repo=f" for {html.escape(repo)}" if repo else "",
            report=html.escape(render_text(report)),
        )

    def close(self) -> None:
        """Close the ledger if it was opened."""
        if self._ledger is not None:
            self._ledger.close()


def _days(value: str | None) -> int:
    """Parse the ?days= parameter, or raise InputError saying what it takes."""
    if value is None:
        return DEFAULT_DAYS
    if not value.isdigit() or not 1 <= int(value) <= MAX_DAYS:
        raise InputError(f"days must be a whole number from 1 to {MAX_DAYS}")
    return int(value)
