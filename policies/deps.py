"""Detect dependency bumps in a diff and classify them as major, minor or patch."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from policies.evidence import FileChange

# One pattern per manifest kind; each yields (name, version) from a single line.
REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(?:==|~=|>=|===)\s*v?([0-9][^\s,;#]*)"
)
PEP508_QUOTED = re.compile(
    r"""["']([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(?:==|~=|>=|\^|~)\s*v?([0-9][^"',;\s]*)"""
)
TOML_ASSIGN = re.compile(
    r"""^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*=\s*(?:\{[^}]*version\s*=\s*)?["'][\^~=>< ]*v?([0-9][^"']*)["']"""
)
PACKAGE_JSON = re.compile(r"""^\s*"(@?[A-Za-z0-9][\w./-]*)"\s*:\s*"[\^~=>< ]*v?([0-9][^"]*)\"""")
GO_MOD = re.compile(r"^\s*(?:require\s+)?([a-z0-9.-]+\.[a-z]{2,}/[^\s]+)\s+v([0-9][^\s]*)")
NAME_MAJOR = re.compile(r"/v(\d+)$")
# Keys that version the package itself or its toolchain, not a dependency: a release bump of
# `version = "2.0.0"` or `edition = "2021"` is no breaking upgrade of anything the code uses.
NOT_DEPENDENCIES = frozenset({"version", "edition", "rust-version", "requires-python"})

MANIFESTS: tuple[tuple[re.Pattern[str], tuple[re.Pattern[str], ...]], ...] = (
    # requirements*.txt, and pip-tools' requirements/<name>.in and .txt layout.
    (re.compile(r"(^|/)requirements([^/]*|/[^/]+)\.(txt|in)$"), (REQUIREMENT,)),
    (re.compile(r"(^|/)pyproject\.toml$"), (PEP508_QUOTED, TOML_ASSIGN)),
    (re.compile(r"(^|/)package\.json$"), (PACKAGE_JSON,)),
    (re.compile(r"(^|/)go\.mod$"), (GO_MOD,)),
    (re.compile(r"(^|/)Cargo\.toml$"), (TOML_ASSIGN,)),
)


@dataclass(frozen=True, slots=True)
class Bump:
    """Describe one dependency whose version changed in a manifest."""

    path: str
    name: str
    old: str
    new: str
    line: int

    @property
    def kind(self) -> str:
        """Classify the bump: major, minor, patch, downgrade or other."""
        return classify(self.old, self.new)

    @property
    def breaking(self) -> bool:
        """Tell whether semver says the bump may break callers."""
        return self.kind == "major"


def version_tuple(version: str) -> tuple[int, ...]:
    """Read the leading numeric components of a version string."""
    parts = re.findall(r"\d+", version.split("-")[0].split("+")[0])
    return tuple(int(p) for p in parts[:3])


def classify(old: str, new: str) -> str:
    """Classify old → new as major, minor, patch, downgrade or other.

    Under semver's 0.x rule (npm and Cargo caret semantics) a 0.y → 0.z bump is major, and
    so is 0.0.y → 0.0.z, since ^0.0.y admits only 0.0.y.
    """
    a, b = version_tuple(old), version_tuple(new)
    if not a or not b:
        return "other"
    a, b = a + (0,) * (3 - len(a)), b + (0,) * (3 - len(b))
    if b < a:
        return "downgrade"
    if b[0] != a[0] or (a[0] == 0 and (b[1] != a[1] or (a[1] == 0 and b[2] != a[2]))):
        return "major"
    if b[1] != a[1]:
        return "minor"
    return "patch" if b != a else "other"


def is_manifest(path: str) -> bool:
    """Tell whether ``path`` is a dependency manifest cibot understands."""
    return any(pattern.search(path) for pattern, _ in MANIFESTS)


def _versions(path: str, lines: Iterable[tuple[int, str]]) -> dict[str, tuple[str, int]]:
    """Map package name to (version, line number) for the manifest lines given."""
    patterns = next((pats for rx, pats in MANIFESTS if rx.search(path)), ())
    found: dict[str, tuple[str, int]] = {}
    for number, text in lines:
        for pattern in patterns:
            match = pattern.search(text)
            if match:
                if match.group(1) not in NOT_DEPENDENCIES:
                    found[_normalise(match.group(1))] = (match.group(2), number)
                break
    return found


def _normalise(name: str) -> str:
    """Fold a Go module's /vN suffix and Python's case/underscore spelling into one key."""
    name = NAME_MAJOR.sub("", name)
    return name.lower().replace("_", "-") if "/" not in name else name


def bumps(files: Iterable[FileChange]) -> Iterator[Bump]:
    """Yield every dependency whose version differs between removed and added lines."""
    for change in files:
        if change.binary or not is_manifest(change.path):
            continue
        old = _versions(change.path, change.removed)
        new = _versions(change.path, change.added)
        for name, (version, line) in new.items():
            if name in old and old[name][0] != version:
                yield Bump(change.path, name, old[name][0], version, line)
