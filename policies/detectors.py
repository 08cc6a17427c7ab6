"""Detect routing triggers in evidence: sensitive code, services, bumps, residency, tests."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

from policies import deps
from policies.evidence import Evidence
from policies.globs import compiled
from policies.model import Policy
from policies.reasons import Reason

# The sensitive-change and service detectors live in policies.semantic and
# policies.services; this module keeps their names next to the other triggers.
from policies.semantic import sensitive as sensitive
from policies.services import failing_services as failing_services
from policies.services import multi_service_failure as multi_service_failure
from policies.services import services_of_job as services_of_job
from policies.services import services_of_path as services_of_path


def breaking_api_surface(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield reasons for major version bumps and for removed APIs the repo uses."""
    for bump in deps.bumps(evidence.files):
        if bump.breaking:
            yield Reason(
                "major_version_bump",
                f"{bump.path}:{bump.line} {bump.name} {bump.old} → {bump.new}",
            )
    for symbol in evidence.removed_symbols:
        yield Reason(
            "removed_api", f"{symbol} is removed or renamed upstream and used in this repo"
        )


def tests_failed_twice(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason when generated tests failed in two rounds."""
    if evidence.tests is not None and evidence.tests.failed_rounds >= 2:
        yield Reason(
            "tests_failed_twice", f"generated tests failed {evidence.tests.failed_rounds} rounds"
        )


def coverage_below_target(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason when changed-line coverage misses the policy's target."""
    facts, target = evidence.tests, policy.behaviour.coverage_target
    if facts is not None and facts.coverage is not None and facts.coverage < target:
        yield Reason(
            "coverage_below_target",
            f"changed-line coverage {facts.coverage:.0%} is under the target {target:.0%}",
        )


def sensitive_change(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield the sensitive-path and sensitive-content reasons (the escalation trigger)."""
    return sensitive(evidence, policy)


def private_only(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason for each repo, path or label that pins the data to private tiers."""
    residency = policy.private_only
    for pattern in residency.repos:
        # GitHub repo names are case-insensitive; an unnamed repo still matches the "*" that a
        # repo's own `private_only: {repo: true}` sets.
        if fnmatch.fnmatchcase(evidence.repo.casefold(), pattern.casefold()):
            yield Reason(
                "private_only", f"repo '{evidence.repo or '(this repo)'}' matches '{pattern}'"
            )
            break
    globs = compiled(policy).private_paths
    for change in evidence.files:
        glob = globs.match(change.path) or globs.match(change.old_path or "")
        if glob is not None:
            yield Reason("private_only", f"{change.path} matches private_only path '{glob}'")
    # GitHub label names are case-insensitive, so "Private-Only" must pin as "private-only" does.
    pinned = {label.casefold() for label in residency.labels}
    for label in sorted(label for label in evidence.labels if label.casefold() in pinned):
        yield Reason("private_only", f"PR label '{label}'")


TRIGGERS = {
    "sensitive_change": sensitive_change,
    "multi_service_failure": multi_service_failure,
    "breaking_api_surface": breaking_api_surface,
    "tests_failed_twice": tests_failed_twice,
    "coverage_below_target": coverage_below_target,
}
