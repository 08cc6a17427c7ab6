"""Compile a policy's path globs once: sensitive categories, services and private paths."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import pathspec
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from policies.model import CATEGORIES, Policy

NAMED_GROUP = re.compile(r"\(\?P<\w+>")  # pathspec names its groups; names may not repeat


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
