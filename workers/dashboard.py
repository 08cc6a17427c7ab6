"""Serve ``GET /dashboard``: the ledger's figures as one server-rendered page, off the webhook path.

The page is a Jinja2 template (``workers/templates/dashboard.html``, autoescaped) with the
charts inlined as SVG from ``workers.charts``: no script and nothing from a CDN, since the
bot runs in private networks. Its filters are a query string anyone can share:
``?days=30&repo=owner/name&task=review``. A bad value is an InputError, which the admin
app answers with 400 and the message.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from bot.kernel.errors import InputError
from bot.kernel.settings import Settings
from policies.model import Policy
from workers import charts

DEFAULT_DAYS = 30
MAX_DAYS = 3660
WINDOWS = (7, 30, 90, 365)
REPO_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")
DEMO_PREFIX = "demo/"
EMPTY_LEDGER = (
    "No jobs yet: install the App on a repo, or run `cibot demo` to see a simulated month."
)
EMPTY_WINDOW = "No jobs in this window for these filters."


@dataclass(frozen=True)
class Query:
    """Hold the page's filters: the window in days, and an optional repo and task."""

    days: int = DEFAULT_DAYS
    repo: str | None = None
    task: str | None = None

    def link(self, **changes: Any) -> str:
        """Return this page's URL with some filters changed (None clears one)."""
        values = {"days": self.days, "repo": self.repo, "task": self.task, **changes}
        kept = {k: v for k, v in values.items() if v is not None and v != ""}
        if kept.get("days") == DEFAULT_DAYS:
            del kept["days"]
        return "/dashboard" + (f"?{urlencode(kept)}" if kept else "")


def parse_query(days: str | None, repo: str | None, task: str | None = None) -> Query:
    """Validate the query string, or raise InputError saying what each filter takes."""
    from bot.kernel.jobs import MODEL_TASKS

    if repo is not None and repo != "" and not REPO_PATTERN.fullmatch(repo):
        raise InputError("repo must be owner/name, e.g. ?repo=acme/app")
    if task is not None and task != "" and task not in MODEL_TASKS:
        raise InputError(f"task must be one of {', '.join(MODEL_TASKS)}")
    return Query(days=_days(days), repo=repo or None, task=task or None)


class Dashboard:
    """Render the dashboard from the ledger; connect on first use, once."""

    def __init__(self, settings: Settings, policy: Policy) -> None:
        """Keep the settings; the ledger opens lazily so serve starts without a database."""
        self._settings = settings
        self._policy = policy
        self._ledger: Any = None
        self._lock = threading.Lock()
        self._templates = Environment(
            loader=PackageLoader("workers", "templates"),
            autoescape=select_autoescape(default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters.update(money=_money, pct=_pct, count=_count)

    def _open(self) -> Any:
        """Open the ledger (running migrations) the first time a page is asked for."""
        with self._lock:
            if self._ledger is None:
                from workers.ledger import Ledger

                self._ledger = Ledger(self._settings.database_url)
        return self._ledger

    def page(self, *, days: str | None, repo: str | None, task: str | None = None) -> str:
        """Return the HTML page for the last ``days`` days, optionally for one repo and task."""
        from workers.report import load_rows, month_start

        query = parse_query(days, repo, task)
        until = datetime.now(UTC)
        since = until - timedelta(days=query.days)
        rows = load_rows(self._open(), since=min(since, month_start(until)), until=until)
        view = build_view(rows, self._policy, query, since=since, until=until)
        return self._templates.get_template("dashboard.html").render(**view)

    def close(self) -> None:
        """Close the ledger if it was opened."""
        if self._ledger is not None:
            self._ledger.close()


def build_view(
    rows: Any, policy: Policy, query: Query, *, since: datetime, until: datetime
) -> dict[str, Any]:
    """Return everything the template shows, computed from ledger rows (no I/O)."""
    from workers.report import Scope, report_of, weekly

    scope = Scope(query.repo, query.task)
    report = report_of(rows, policy, since, until, scope=scope)
    weeks = weekly(rows, policy, since, until, scope=scope)
    in_window = [j for j in rows.jobs if since <= j.created_at < until]
    return {
        "query": query,
        "since": since.date().isoformat(),
        "until": until.date().isoformat(),
        "windows": [(d, query.link(days=d)) for d in WINDOWS],
        "repos": sorted({j.repo for j in in_window}),
        "tasks": _tasks(in_window),
        "simulated": any(j.repo.startswith(DEMO_PREFIX) for j in in_window),
        "empty": _empty_state(rows, in_window, scope),
        "report": report,
        "trend": _trend(weeks),
        "spend": _spend(weeks),
        "acceptance": _acceptance(report),
        "repo_rows": _repos(rows, policy, since, until, query),
        "utilisation": _utilisation(rows, policy, since, until, weeks),
        "budget": _budget(rows, policy, until, query),
        "budget_cap": policy.budgets.monthly_frontier_usd,
    }


def _tasks(jobs: Sequence[Any]) -> list[str]:
    """Return the task filter's choices: the everyday tasks, then any other seen."""
    from bot.kernel.jobs import MODEL_TASKS

    seen = {j.task for j in jobs}
    return [t for t in MODEL_TASKS if t in seen or t in MODEL_TASKS[:5]]


def _empty_state(rows: Any, in_window: Sequence[Any], scope: Any) -> str:
    """Return what to do when there is nothing to show, or an empty string."""
    if not rows.jobs:
        return EMPTY_LEDGER
    if not any(scope.holds(j.repo, j.task) for j in in_window):
        return EMPTY_WINDOW
    return ""


def _trend(weeks: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Return the weekly cost per accepted PR: the chart and its table."""
    full = [(w, r.cost_per_accepted_pr_fully_loaded) for w, r in weeks]
    low = [(w, r.cost_per_accepted_pr_marginal) for w, r in weeks]
    chart = charts.line_chart(
        {
            "fully loaded": [(w, v) for w, v in full if v is not None],
            "marginal": [(w, v) for w, v in low if v is not None],
        },
        title="Cost per accepted PR, by week",
        y_label="USD per merged PR",
    )
    return {"chart": _svg(chart), "rows": weeks}


def _spend(weeks: Sequence[tuple[str, Any]]) -> dict[str, Markup]:
    """Return the weekly spend charts: by tier, and by task with idle rung time apart."""
    by_tier = {w: {s.tier: s.fully_loaded_usd - s.idle_usd for s in r.spend} for w, r in weeks}
    by_task = {w: {**r.spend_by_task, "idle rung time": r.idle_usd} for w, r in weeks}
    for week, report in weeks:
        if report.idle_usd:
            by_tier[week]["idle rung time"] = report.idle_usd
        if report.shadow.fully_loaded_usd:
            by_tier[week]["shadow jobs"] = report.shadow.fully_loaded_usd
            by_task[week]["shadow jobs"] = report.shadow.fully_loaded_usd
    title = "Spend by {}, by week (fully loaded)"
    return {
        "by_tier": _svg(charts.bar_chart(by_tier, title=title.format("tier"), y_label="USD")),
        "by_task": _svg(charts.bar_chart(by_task, title=title.format("task"), y_label="USD")),
    }


def _acceptance(report: Any) -> dict[str, Any]:
    """Return acceptance by task and tier as a chart of rates, and the tables' rows."""
    rates = {
        f"{c.task} / {c.tier}": {"accepted": c.accepted, "not accepted": c.posted - c.accepted}
        for c in report.acceptance_by_task_tier
    }
    chart = charts.bar_chart(rates, title="Posted results by task / tier", y_label="results")
    return {"chart": _svg(chart), "cells": report.acceptance_by_task_tier}


def _repos(rows: Any, policy: Policy, since: datetime, until: datetime, query: Query) -> list[Any]:
    """Return the per-repo rows, each with a link that narrows the page to it."""
    from workers.report import Scope, breakdown

    lines = breakdown("repo", rows, policy, since, until, scope=Scope(query.repo, query.task))
    return [(line, query.link(repo=line.key)) for line in lines]


def _utilisation(
    rows: Any, policy: Policy, since: datetime, until: datetime, weeks: Sequence[tuple[str, Any]]
) -> dict[str, Any]:
    """Return each rung's utilisation by week against its break-even lines, and the window's."""
    from workers.report import displaced_price, rung_use
    from workers.report import weeks as iso_weeks

    price, source = displaced_price(policy, [c for c in rows.calls if since <= c.created_at])
    window = rung_use(rows.calls, policy, since, until, api_usd_per_token=price)
    series: dict[str, list[tuple[str, float]]] = {u.tier: [] for u in window}
    for label, low, high in iso_weeks(since, until):
        for use in rung_use(rows.calls, policy, low, high, api_usd_per_token=price):
            series[use.tier].append((label, use.utilisation * 100))
    lines = {}
    for use in window:
        if use.breakeven_bought is not None and use.breakeven_rented is not None:
            lines[f"{use.rung} break-even, bought"] = use.breakeven_bought * 100
            lines[f"{use.rung} break-even, rented"] = use.breakeven_rented * 100
    chart = charts.line_chart(
        {f"{tier} busy": points for tier, points in series.items()},
        title="Private-tier utilisation against break-even, by week",
        y_label="% of the rung's capacity",
        lines=lines,
    )
    return {"chart": _svg(chart), "rows": window, "price": price, "source": source}


def _budget(rows: Any, policy: Policy, until: datetime, query: Query) -> list[Any]:
    """Return this month's frontier budget per installation (the repo's, when filtered)."""
    from workers.report import budget_status

    wanted = {j.installation_id for j in rows.jobs if query.repo in (None, j.repo)}
    return [
        b
        for b in budget_status(rows.jobs, rows.calls, policy, until)
        if b.installation_id in wanted
    ]


def _svg(chart: str) -> Markup:
    """Mark a chart safe to inline: ``workers.charts`` escapes every text it draws."""
    return Markup(chart)  # noqa: S704


def _money(value: float | None) -> str:
    """Format dollars for the page, or n/a."""
    from workers.report import money

    return money(value)


def _pct(value: float | None, places: int = 1) -> str:
    """Format a share as a percentage, or n/a."""
    return "n/a" if value is None else f"{value:.{places}%}"


def _count(value: float) -> str:
    """Format a large count with thousands separators."""
    return f"{value:,.0f}"


def _days(value: str | None) -> int:
    """Parse the ?days= parameter, or raise InputError saying what it takes."""
    if value is None or value == "":
        return DEFAULT_DAYS
    if not value.isdigit() or not 1 <= int(value) <= MAX_DAYS:
        raise InputError(f"days must be a whole number from 1 to {MAX_DAYS}")
    return int(value)
