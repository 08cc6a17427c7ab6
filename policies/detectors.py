"""Detect routing triggers in evidence: sensitive code, services, bumps, residency, tests."""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pathspec
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from policies import deps
from policies.evidence import Evidence, FileChange
from policies.model import CATEGORIES, Policy

MAX_LINE = 80
# Prose mentions "JWT" or "Stripe" without changing how either is handled: content rules
# look at code and config only (path globs still apply to every file).
PROSE = re.compile(r"\.(md|markdown|rst|txt|adoc)$", re.IGNORECASE)
LEADING_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")
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
    """Hold one category's compiled path globs and content expressions."""

    category: str
    paths: GlobSet
    content: tuple[tuple[re.Pattern[str], GlobSet | None], ...]
    any_content: re.Pattern[str] | None
    prefilter: Prefilter | None = None


@dataclass(frozen=True)
class Prefilter:
    """Rule out most lines fast: a superset of a category's content rules.

    Python's re scans an alternation of plain literals with a first-character table, but
    not one behind a leading ``\\b`` or lookbehind, or under IGNORECASE. Dropping a leading
    assertion only widens a match, and a case-insensitive rule matches lowercased text
    with its literals lowercased, so this filter never misses what the exact rules would
    find; a body it passes is then checked by the exact rules.
    """

    folded: tuple[re.Pattern[str], ...]  # the case-insensitive rules, run on lowercased text
    exact: tuple[re.Pattern[str], ...]  # the case-sensitive rules, run on the text as it is

    def passes(self, text: str, lowered: str) -> bool:
        """Tell whether the exact rules could match ``text``."""
        return any(r.search(lowered) for r in self.folded) or any(
            r.search(text) for r in self.exact
        )


def prefilter(patterns: Iterable[str]) -> Prefilter | None:
    """Build the fast superset of these patterns, or None when one cannot be widened safely."""
    folded: list[re.Pattern[str]] = []
    exact: list[re.Pattern[str]] = []
    for pattern in patterns:
        widened = _widen(pattern)
        if widened is None:
            return None
        insensitive, compiled_rule = widened
        (folded if insensitive else exact).append(compiled_rule)
    return Prefilter(folded=tuple(folded), exact=tuple(exact))


def _widen(pattern: str) -> tuple[bool, re.Pattern[str]] | None:
    """Return (case-insensitive?, a regex matching at least what ``pattern`` matches)."""
    if not pattern.isascii():
        return None
    flags = LEADING_FLAGS.match(pattern)
    letters = flags.group(1) if flags else ""
    if set(letters) - {"i"}:
        return None
    body = pattern[flags.end() :] if flags else pattern
    parts = [_drop_leading_assertions(part) for part in _top_level(body)]
    if any(part is None or not part for part in parts):
        return None
    widened = "|".join(p for p in parts if p is not None)
    insensitive = "i" in letters
    try:
        return insensitive, re.compile(_lower_literals(widened) if insensitive else widened)
    except re.error:
        return None


def _structure(pattern: str) -> Iterator[tuple[int, str, int]]:
    """Yield (index, character, group depth after it) for the pattern's structural characters.

    Backslash escapes and character classes are skipped, so only ``(``, ``)`` and ``|``
    outside them (and other plain characters) come out.
    """
    depth, i, in_class = 0, 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        else:
            depth += (char == "(") - (char == ")")
            yield i, char, depth
        i += 1


def _top_level(pattern: str) -> list[str]:
    """Split a pattern on its top-level ``|`` (outside groups, classes and escapes)."""
    cuts = [i for i, char, depth in _structure(pattern) if char == "|" and depth == 0]
    bounds = [-1, *cuts, len(pattern)]
    return [pattern[a + 1 : b] for a, b in itertools.pairwise(bounds)]


def _drop_leading_assertions(part: str) -> str | None:
    """Strip leading ``\\b``, ``^`` and lookbehinds; None when the part is not plain enough."""
    while True:
        if part.startswith("\\b"):
            part = part[2:]
        elif part.startswith("^"):
            part = part[1:]
        elif part.startswith(("(?<!", "(?<=")):
            close = next((i for i, c, d in _structure(part) if c == ")" and d == 0), None)
            if close is None:
                return None
            part = part[close + 1 :]
        else:
            return part


def _lower_literals(pattern: str) -> str:
    """Lowercase a pattern's letters, leaving every backslash escape (\\S, \\W, \\B) as it is."""
    out: list[str] = []
    escaped = False
    for char in pattern:
        out.append(char if escaped else char.lower())
        escaped = not escaped and char == "\\"
    return "".join(out)


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
    """Compile one category's rules."""
    rules = policy.sensitive[category]  # type: ignore[index]
    content = tuple(
        (re.compile(rule.pattern), GlobSet(rule.paths) if rule.paths else None)
        for rule in rules.content
    )
    combined = "|".join(_scoped(rule.pattern) for rule in rules.content)
    return Matcher(
        category,
        GlobSet(rules.paths),
        content,
        re.compile(combined) if combined else None,
        prefilter(rule.pattern for rule in rules.content) if combined else None,
    )


def _scoped(pattern: str) -> str:
    """Turn a leading global flag group like (?i) into a scoped one so patterns can be joined."""
    flags = LEADING_FLAGS.match(pattern)
    if flags is None:
        return f"(?:{pattern})"
    return f"(?{flags.group(1)}:{pattern[flags.end() :]})"


def _snippet(text: str) -> str:
    """Shorten a line for a reason's evidence."""
    text = text.strip()
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"


def sensitive(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason for each sensitive path and each sensitive added or removed line."""
    matchers = compiled(policy).categories
    for change in evidence.files:
        scan = not (change.binary or change.is_lock_or_generated or PROSE.search(change.path))
        body = (
            "\n".join([t for _, t in change.added] + [t for _, t in change.removed]) if scan else ""
        )
        lowered = body.lower()
        for matcher in matchers:
            yield from _path_hits(change, matcher)
            if body and _may_match(matcher, body, lowered):
                yield from _content_hits(change, matcher)


def _may_match(matcher: Matcher, body: str, lowered: str) -> bool:
    """Tell whether any of the category's content rules matches the body (prefilter first)."""
    if matcher.any_content is None:
        return False
    if matcher.prefilter is not None and not matcher.prefilter.passes(body, lowered):
        return False
    return bool(matcher.any_content.search(body))


def _path_hits(change: FileChange, matcher: Matcher) -> Iterator[Reason]:
    """Yield a reason when the new or old path matches the category's globs."""
    for path in {change.path, change.old_path or change.path}:
        glob = matcher.paths.match(path)
        if glob is not None:
            yield Reason("sensitive_path", f"{path} matches '{glob}'", matcher.category)
            return


def _content_hits(change: FileChange, matcher: Matcher) -> Iterator[Reason]:
    """Yield a reason for the first line each content rule matches in this file."""
    for pattern, scope in matcher.content:
        if scope is not None and scope.match(change.path) is None:
            continue
        hit = _first_match(pattern, change)
        if hit is not None:
            sign, number, text, matched = hit
            yield Reason(
                "sensitive_content",
                f"{change.path}:{number} {sign}'{_snippet(text)}' matches '{matched}'",
                matcher.category,
            )


def _first_match(pattern: re.Pattern[str], change: FileChange) -> tuple[str, int, str, str] | None:
    """Return (sign, line number, line, matched text) of the first added or removed match."""
    for sign, lines in (("+", change.added), ("-", change.removed)):
        for number, text in lines:
            match = pattern.search(text)
            if match:
                return sign, number, text, match.group(0)
    return None


def services_of_path(path: str, policy: Policy) -> set[str]:
    """Return the services a path belongs to, by the service map then the service roots."""
    found = {name for name, globs, _ in compiled(policy).services if globs.match(path)}
    if not found:
        for root in policy.service_roots:
            if path.startswith(root) and "/" in path[len(root) :]:
                found.add(path[len(root) :].split("/", 1)[0])
    return found


def services_of_job(job: str, policy: Policy) -> set[str]:
    """Return the services a CI job name belongs to, by the service map's job globs."""
    return {
        name
        for name, _, jobs in compiled(policy).services
        if any(fnmatch.fnmatchcase(job, pattern) for pattern in jobs)
    }


def failing_services(evidence: Evidence, policy: Policy) -> dict[str, str]:
    """Map each failing service to the job or path that shows it failing."""
    failing: dict[str, str] = {}
    if evidence.ci is None:
        return failing
    for job in evidence.ci.failed_jobs:
        for service in services_of_job(job, policy):
            failing.setdefault(service, f"job '{job}'")
    for path in evidence.ci.failed_paths:
        for service in services_of_path(path, policy):
            failing.setdefault(service, f"{path}")
    return failing


def multi_service_failure(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield reasons when CI failures span two or more services."""
    failing = failing_services(evidence, policy)
    if len(failing) >= 2:
        for service, where in sorted(failing.items()):
            yield Reason("multi_service_failure", f"service '{service}' fails: {where}")


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
