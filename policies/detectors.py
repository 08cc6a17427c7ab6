"""Detect routing triggers in evidence: sensitive code, services, bumps, residency, tests."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pathspec
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from policies import deps, services
from policies.evidence import Evidence
from policies.model import CATEGORIES, Policy

NAMED_GROUP = re.compile(r"\(\?P<\w+>")  # pathspec names its groups; names may not repeat


@dataclass(frozen=True, slots=True)
class Reason:
    """Name the trigger that fired and its evidence (the file and, for content, the line)."""

    trigger: str
    evidence: str
    category: str | None = None


class GlobSet:
    """Match paths against gitignore-style globs in one regex and say which glob matched."""

    def __init__(self, globs: Iterable[str]) -> None:
        """Compile the globs through pathspec, then join them into one alternation."""
        self.globs = tuple(globs)
        # GitIgnoreSpecPattern is what the deprecated "gitwildmatch" name maps to in pathspec 1.x.
        spec = pathspec.PathSpec.from_lines(GitIgnoreSpecPattern, self.globs)
        regexes = [getattr(pattern, "regex", None) for pattern in spec.patterns]
        parts = [
            f"(?P<g{index}>{NAMED_GROUP.sub('(?:', regex.pattern)})"
            for index, (pattern, regex) in enumerate(zip(spec.patterns, regexes, strict=True))
            if pattern.include and regex is not None
        ]
        self._regex = re.compile("|".join(parts)) if parts else None

    def match(self, path: str) -> str | None:
        """Return the glob that matches ``path``, or None."""
        if self._regex is None or not path:
            return None
        found = self._regex.match(path)
        if found is None or found.lastgroup is None:
            return None
        return self.globs[int(found.lastgroup[1:])]


def check_globs(globs: tuple[str, ...]) -> tuple[str, ...]:
    """Return the globs unchanged, or raise ValueError naming the first that cannot compile."""
    for glob in globs:
        try:
            GlobSet((glob,))
        except (ValueError, re.error) as exc:
            raise ValueError(
                f"glob {glob!r} is not a valid gitignore-style pattern ({exc})"
            ) from exc
    return globs


@dataclass(frozen=True)
class Matcher:
    """Hold one category's compiled path globs."""

    category: str
    paths: GlobSet


@dataclass(frozen=True)
class Compiled:
    """Hold every matcher a policy needs, compiled once."""

    categories: tuple[Matcher, ...]
    services: tuple[tuple[str, GlobSet, tuple[str, ...]], ...]
    private_paths: GlobSet


_CACHE: dict[int, tuple[Policy, Compiled]] = {}


def compiled(policy: Policy) -> Compiled:
    """Compile the policy's globs and patterns once per policy object."""
    hit = _CACHE.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    result = Compiled(
        categories=tuple(_matcher(name, policy) for name in CATEGORIES if name in policy.sensitive),
        services=tuple(
            (name, GlobSet(svc.paths), svc.jobs) for name, svc in sorted(policy.services.items())
        ),
        private_paths=GlobSet(policy.private_only.paths),
    )
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[id(policy)] = (policy, result)
    return result


def _matcher(category: str, policy: Policy) -> Matcher:
    """Compile one category's path globs (its content rules compile in policies.semantic)."""
    return Matcher(category, GlobSet(policy.sensitive[category].paths))  # type: ignore[index]


def sensitive(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason for each sensitive construct in the diff (see ``policies.semantic``)."""
    from policies import semantic  # semantic builds on this module's globs and reasons

    return semantic.sensitive(evidence, policy)


# The service functions live in policies.services (discovery, touched services, the
# multi-service trigger); these wrappers keep this module's names and TRIGGERS working.
# They call through the module object because policies.services imports this module.


def services_of_path(path: str, policy: Policy) -> set[str]:
    """Return the services a path belongs to, by the service map then the service roots."""
    return services.services_of_path(path, policy)


def services_of_job(job: str, policy: Policy) -> set[str]:
    """Return the services a CI job name belongs to, by the service map's job globs."""
    return services.services_of_job(job, policy)


def failing_services(evidence: Evidence, policy: Policy) -> dict[str, str]:
    """Map each failing service to the job or path that shows it failing."""
    return services.failing_services(evidence, policy)


def multi_service_failure(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield reasons when CI failures span two or more services."""
    return services.multi_service_failure(evidence, policy)


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
