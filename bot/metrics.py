"""Expose the edge's Prometheus metrics from a registry of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Event names we label by; anything else (including unauthenticated junk) is "other",
# so a caller cannot blow up the series count by inventing X-GitHub-Event values.
KNOWN_EVENTS = frozenset(
    {
        "ping",
        "pull_request",
        "issue_comment",
        "workflow_run",
        "check_suite",
        "check_run",
        "pull_request_review",
        "pull_request_review_comment",
        "pull_request_review_thread",
        "installation",
        "installation_repositories",
        "push",
    }
)
ACK_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    """Count deliveries by event and outcome, time acks, and report the spool depth."""

    def __init__(self, spool_depth: Callable[[], float]) -> None:
        """Create the collectors in a fresh registry; ``spool_depth`` is read per scrape."""
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "cibot_webhook_deliveries",
            "Webhook deliveries by event and outcome.",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "cibot_webhook_ack_seconds",
            "Time from receiving a delivery to answering it.",
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.spool_depth = Gauge(
            "cibot_spool_depth",
            "Jobs waiting in the local spool for the broker.",
            registry=self.registry,
        )
        self.spool_depth.set_function(spool_depth)
        # labels() validates and looks the child up under a lock on every call; the
        # (event, outcome) pairs are few, so keep each child once found.
        self._counts: dict[tuple[str, str], Any] = {}

    def observe(self, event: str, outcome: str, seconds: float) -> None:
        """Count one answered delivery and record how long the answer took."""
        key = (event if event in KNOWN_EVENTS else "other", outcome)
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = self.deliveries.labels(event=key[0], outcome=outcome)
        count.inc()
        self.ack_seconds.observe(seconds)

    def render(self) -> bytes:
        """Return the text exposition of every metric."""
        return generate_latest(self.registry)
