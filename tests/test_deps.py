"""Test dependency-bump detection and its major/minor/patch classification."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import deps, detectors
from policies.evidence import Evidence, FileChange, parse_diff
from policies.loading import load_policy

DIFFS = Path(__file__).parent / "fixtures" / "diffs"


def manifest(path: str, old: list[str], new: list[str]) -> tuple[FileChange, ...]:
    """Parse a diff that replaces ``old`` lines with ``new`` lines in a manifest."""
    body = "".join(f"-{line}\n" for line in old) + "".join(f"+{line}\n" for line in new)
    return parse_diff(
        f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n"
        f"@@ -1,{len(old)} +1,{len(new)} @@\n{body}"
    )


def found(path: str, old: str, new: str) -> list[tuple[str, str, str, str]]:
    """Return (name, old, new, kind) for each bump in a one-line manifest change."""
    return [(b.name, b.old, b.new, b.kind) for b in deps.bumps(manifest(path, [old], [new]))]


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ("1.2.3", "2.0.0", "major"),
        ("1.2.3", "1.3.0", "minor"),
        ("1.2.3", "1.2.4", "patch"),
        ("1.2.3", "1.2.3", "other"),
        ("2.0.0", "1.9.9", "downgrade"),
        ("1.2", "1.2.0", "other"),
        ("1", "1.1", "minor"),
        ("0.9", "0.10", "major"),  # the 0.x rule: a 0.y → 0.z bump may break callers
        ("0.3.1", "0.3.2", "patch"),
        ("0.0.3", "0.0.4", "major"),  # ^0.0.3 admits only 0.0.3
        ("0.9.0", "1.0.0", "major"),
        ("2.31.0rc1", "2.31.0", "other"),
        ("1.0.0-beta.2", "1.0.0", "other"),
        ("1.4.0+build.7", "1.5.0+build.1", "minor"),
        ("latest", "1.0", "other"),
        ("1.0", "next", "other"),
    ],
)
def test_classify(old: str, new: str, kind: str) -> None:
    assert deps.classify(old, new) == kind


def test_version_tuple_reads_leading_numbers() -> None:
    assert deps.version_tuple("1.26.4") == (1, 26, 4)
    assert deps.version_tuple("2.0.0-rc.1") == (2, 0, 0)
    assert deps.version_tuple("3.1.4.1") == (3, 1, 4)
    assert deps.version_tuple("v") == ()


def test_fixture_bumps_across_every_manifest_kind() -> None:
    files = parse_diff((DIFFS / "deps_bumps.diff").read_bytes())
    got = [(b.path, b.name, b.old, b.new, b.kind, b.line) for b in deps.bumps(files)]
    assert got == [
        ("requirements.txt", "django", "4.2.1", "5.0.1", "major", 1),
        ("requirements.txt", "requests", "2.31.0", "2.32.0", "minor", 2),
        ("package.json", "react", "17.0.2", "18.2.0", "major", 1),
        ("go.mod", "github.com/foo/bar", "1.2.3", "2.0.0", "major", 1),
        ("Cargo.toml", "serde", "0.9", "0.10", "major", 1),
        ("pyproject.toml", "pydantic", "1.10", "2.5", "major", 1),
        ("pyproject.toml", "httpx", "0.27.0", "0.27.2", "patch", 2),
    ]


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        (
            "requirements.txt",
            "numpy==1.26.4",
            "numpy==2.0.0",
            ("numpy", "1.26.4", "2.0.0", "major"),
        ),
        (
            "requirements/dev.in",
            "Flask_SQLAlchemy[async]==2.5.1  # pinned",
            "flask-sqlalchemy[async]==3.0.0  # pinned",
            ("flask-sqlalchemy", "2.5.1", "3.0.0", "major"),
        ),
        ("requirements-test.txt", "pytest>=7.4", "pytest>=8.0", ("pytest", "7.4", "8.0", "major")),
        ("requirements.txt", "attrs~=23.1", "attrs~=23.2", ("attrs", "23.1", "23.2", "minor")),
        (
            "pyproject.toml",
            '  "requests[socks]>=2.31,<3",',
            '  "requests[socks]>=2.32,<3",',
            ("requests", "2.31", "2.32", "minor"),
        ),
        ("pyproject.toml", 'django = "^4.2"', 'django = "^5.0"', ("django", "4.2", "5.0", "major")),
        (
            "pyproject.toml",
            'rich = {version = "^13.3", optional = true}',
            'rich = {version = "^13.7", optional = true}',
            ("rich", "13.3", "13.7", "minor"),
        ),
        (
            "package.json",
            '    "@types/node": "~18.11.0",',
            '    "@types/node": "~20.1.0",',
            ("@types/node", "18.11.0", "20.1.0", "major"),
        ),
        (
            "web/package.json",
            '    "lodash": "4.17.20",',
            '    "lodash": "4.17.21",',
            ("lodash", "4.17.20", "4.17.21", "patch"),
        ),
        (
            "go.mod",
            "require github.com/x/y v0.3.0",
            "require github.com/x/y v0.4.0",
            ("github.com/x/y", "0.3.0", "0.4.0", "major"),
        ),
        (
            "go.mod",
            "\tgithub.com/jackc/pgx/v4 v4.18.1",
            "\tgithub.com/jackc/pgx/v5 v5.5.0",
            ("github.com/jackc/pgx", "4.18.1", "5.5.0", "major"),
        ),
        (
            "go.mod",
            "\tgolang.org/x/sync v1.1.0 // indirect",
            "\tgolang.org/x/sync v1.2.0 // indirect",
            ("golang.org/x/sync", "1.1.0", "1.2.0", "minor"),
        ),
        (
            "crates/core/Cargo.toml",
            'tokio = { version = "1.2", features = ["full"] }',
            'tokio = { version = "1.3", features = ["full"] }',
            ("tokio", "1.2", "1.3", "minor"),
        ),
        ("Cargo.toml", 'rand = "0.8.5"', 'rand = "0.9.0"', ("rand", "0.8.5", "0.9.0", "major")),
    ],
)
def test_bumps_per_manifest(path: str, old: str, new: str, expected: tuple[str, ...]) -> None:
    assert found(path, old, new) == [expected]


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        ("Cargo.toml", 'version = "1.2.0"', 'version = "2.0.0"'),  # the crate's own release
        ("Cargo.toml", 'edition = "2018"', 'edition = "2021"'),
        ("package.json", '  "version": "1.0.0",', '  "version": "2.0.0",'),
        ("pyproject.toml", 'version = "0.1.0"', 'version = "1.0.0"'),
        ("pyproject.toml", 'requires-python = ">=3.8"', 'requires-python = ">=3.11"'),
        ("go.mod", "go 1.21", "go 1.22"),
        ("requirements.txt", "numpy==1.26.4", "numpy==1.26.4"),
        ("requirements.txt", "# numpy==1.26.4", "# numpy==2.0.0"),
        ("src/requirements.py", "numpy==1.26.4", "numpy==2.0.0"),  # not a manifest
        ("docs/package.json.md", '"react": "^17.0.2",', '"react": "^18.2.0",'),
    ],
)
def test_no_bump_for_own_versions_comments_and_non_manifests(path: str, old: str, new: str) -> None:
    assert found(path, old, new) == []


def test_a_dependency_only_added_or_only_removed_is_no_bump() -> None:
    files = manifest("requirements.txt", ["six==1.16.0"], ["attrs==23.2.0"])
    assert list(deps.bumps(files)) == []


def test_binary_manifest_is_ignored() -> None:
    files = (FileChange("package.json", None, "modified", True, added=((1, '"a": "2.0.0"'),)),)
    assert list(deps.bumps(files)) == []


@pytest.mark.parametrize(
    ("path", "manifest_kind"),
    [
        ("requirements.txt", True),
        ("requirements-dev.in", True),
        ("requirements/base.txt", True),
        ("docs/requirements.md", False),
        ("backend/pyproject.toml", True),
        ("package.json", True),
        ("go.mod", True),
        ("Cargo.toml", True),
        ("package-lock.json", False),
        ("go.sum", False),
        ("Cargo.lock", False),
        ("setup.py", False),
    ],
)
def test_is_manifest(path: str, manifest_kind: bool) -> None:
    assert deps.is_manifest(path) is manifest_kind


def test_breaking_api_surface_reports_majors_and_removed_apis_only() -> None:
    policy = load_policy()
    files = parse_diff((DIFFS / "deps_bumps.diff").read_bytes())
    evidence = Evidence(files=files, removed_symbols=("requests.packages.urllib3",))
    reasons = list(detectors.breaking_api_surface(evidence, policy))
    majors = [r.evidence for r in reasons if r.trigger == "major_version_bump"]
    assert majors == [
        "requirements.txt:1 django 4.2.1 → 5.0.1",
        "package.json:1 react 17.0.2 → 18.2.0",
        "go.mod:1 github.com/foo/bar 1.2.3 → 2.0.0",
        "Cargo.toml:1 serde 0.9 → 0.10",
        "pyproject.toml:1 pydantic 1.10 → 2.5",
    ]
    (removed,) = [r for r in reasons if r.trigger == "removed_api"]
    assert removed.evidence.startswith("requests.packages.urllib3 is removed or renamed")


def test_minor_and_patch_bumps_are_not_breaking() -> None:
    files = manifest(
        "requirements.txt", ["requests==2.31.0", "idna==3.6"], ["requests==2.32.0", "idna==3.7"]
    )
    assert [b.breaking for b in deps.bumps(files)] == [False, False]
    assert list(detectors.breaking_api_surface(Evidence(files=files), load_policy())) == []
