"""Test dependency-bump detection and its major/minor/patch classification."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from policies import deps, detectors
from policies.evidence import Evidence, FileChange, parse_diff
from policies.loading import build_policy, default_policy_text, load_policy, merge_repo_config

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
        ("0.0.3", "0.0.4", "patch"),  # for 0.y only a change of y breaks (the spec)
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
        ("package-lock.json", True),
        ("go.sum", True),
        ("Cargo.lock", True),
        ("web/pnpm-lock.yaml", True),
        ("uv.lock", True),
        ("infra/.terraform.lock.hcl", True),
        ("gradle/libs.versions.toml", True),
        (".pre-commit-config.yaml", True),
        ("app.gemspec", True),
        # Configuration first: bumps() reads their versions, but they are not manifests.
        ("Dockerfile", False),
        (".github/workflows/ci.yml", False),
        ("infra/main.tf", False),
        ("k8s/deployment.yaml", False),
        ("setup.py", False),
        ("src/deps.py", False),
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


# ---- every ecosystem, from hand-written fixtures ------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "deps"


def fixture_bumps(name: str) -> list[tuple[str, str, str, str, str, str, int]]:
    """Return (path, ecosystem, name, old, new, kind, line) for each bump in a fixture diff."""
    files = parse_diff((FIXTURES / name).read_bytes())
    return [(b.path, b.ecosystem, b.name, b.old, b.new, b.kind, b.line) for b in deps.bumps(files)]


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        # pyproject's range yields to the lock's resolved versions; exclude-newer and the
        # [package.metadata] specifiers are no bumps.
        ("pip_uv_lock.diff", [("uv.lock", "pip", "pyjwt", "2.8.0", "2.9.0", "minor", 217)]),
        ("pip_poetry.diff", [("poetry.lock", "pip", "django", "4.2.7", "5.0.1", "major", 410)]),
        (
            "pip_tools.diff",
            [("requirements/base.txt", "pip", "cryptography", "41.0.7", "42.0.5", "major", 40)],
        ),
        ("pipfile_lock.diff", [("Pipfile.lock", "pip", "stripe", "7.14.0", "8.1.0", "major", 189)]),
        (
            "npm_lock_v3.diff",
            [
                ("package-lock.json", "npm", "jsonwebtoken", "8.5.1", "9.0.2", "major", 705),
                ("package-lock.json", "npm", "semver", "5.7.2", "7.6.0", "major", 1311),
            ],
        ),
        (
            "npm_lock_v1.diff",
            [
                ("package-lock.json", "npm", "ms", "2.0.0", "2.1.3", "minor", 415),
                ("package-lock.json", "npm", "node-forge", "1.3.0", "1.3.1", "patch", 962),
            ],
        ),
        ("pnpm_lock.diff", [("pnpm-lock.yaml", "npm", "jose", "4.15.4", "5.2.0", "major", 414)]),
        ("yarn_v1.diff", [("yarn.lock", "npm", "passport", "0.6.0", "0.7.0", "major", 2205)]),
        (
            "yarn_berry.diff",
            [("yarn.lock", "npm", "@stripe/stripe-js", "2.4.0", "3.0.6", "major", 3014)],
        ),
        (
            "go_major_path.diff",
            [
                ("go.mod", "go", "example.com/widgets", "2.4.0", "3.0.1", "major", 6),
                ("go.mod", "go", "golang.org/x/crypto", "0.17.0", "0.21.0", "major", 7),
                (
                    "go.mod",
                    "go",
                    "golang.org/x/exp",
                    "0.0.0-20231110203233-9a3e6036ecaa",
                    "0.0.0-20240213143201-ec583247a57a",
                    "other",  # a new commit of 0.0.0: the numbers do not move
                    8,
                ),
            ],
        ),
        (
            "cargo.diff",
            [
                ("Cargo.lock", "cargo", "quick-xml", "0.27.1", "0.28.2", "major", 614),
                ("Cargo.lock", "cargo", "ring", "0.17.7", "0.17.8", "patch", 705),
            ],
        ),
        (
            "maven_pom.diff",  # the project's own <version> and <java.version> are no bumps
            [
                ("pom.xml", "maven", "jackson", "2.15.3", "2.16.1", "minor", 12),
                ("pom.xml", "maven", "io.jsonwebtoken:jjwt-api", "0.11.5", "0.12.5", "major", 51),
            ],
        ),
        (
            "gradle_catalog.diff",
            [
                (
                    "gradle/libs.versions.toml",
                    "maven",
                    "nimbus-jose-jwt",
                    "9.31",
                    "9.37.3",
                    "minor",
                    3,
                ),
                (
                    "gradle/libs.versions.toml",
                    "maven",
                    "com.stripe:stripe-java",
                    "24.0.0",
                    "25.3.0",
                    "major",
                    14,
                ),
                (
                    "build.gradle.kts",
                    "maven",
                    "org.bouncycastle:bcprov-jdk18on",
                    "1.76",
                    "1.77",
                    "minor",
                    22,
                ),
            ],
        ),
        (
            "ruby.diff",  # Gemfile's ~> yields to Gemfile.lock; a platform build is no version
            [
                ("Gemfile.lock", "rubygems", "jwt", "2.7.1", "2.8.1", "minor", 142),
                ("Gemfile.lock", "rubygems", "nokogiri", "1.15.5", "1.16.2", "minor", 190),
            ],
        ),
        (
            "actions.diff",  # a SHA alone, and a rewritten comment on the same SHA, are no bumps
            [
                (".github/workflows/ci.yml", "docker", "postgres", "15.5", "16.2", "major", 21),
                (
                    ".github/workflows/ci.yml",
                    "actions",
                    "actions/checkout",
                    "v3",
                    "v4",
                    "major",
                    25,
                ),
                (
                    ".github/workflows/ci.yml",
                    "actions",
                    "actions/setup-python",
                    "v4.7.1",
                    "v5.0.0",
                    "major",
                    26,
                ),
            ],
        ),
        (
            "docker.diff",  # a digest change and a ${VAR} tag are no bumps
            [
                ("Dockerfile", "docker", "python", "3.11-slim", "3.12-slim", "minor", 2),
                (
                    "deploy/docker-compose.yml",
                    "docker",
                    "redis",
                    "7.0.11-alpine",
                    "7.2.4-alpine",
                    "minor",
                    4,
                ),
                (
                    "charts/orders/values.yaml",
                    "docker",
                    "ghcr.io/example/orders",
                    "1.8.2",
                    "1.9.0",
                    "minor",
                    12,
                ),
            ],
        ),
        (
            "terraform.diff",  # versions.tf's ~> 4.0 → ~> 5.0 yields to the lock's versions
            [
                (
                    "infra/network.tf",
                    "terraform",
                    "terraform-aws-modules/vpc/aws",
                    "4.0.2",
                    "5.5.1",
                    "major",
                    3,
                ),
                (
                    "infra/.terraform.lock.hcl",
                    "terraform",
                    "hashicorp/aws",
                    "4.67.0",
                    "5.31.0",
                    "major",
                    5,
                ),
            ],
        ),
        (
            "pre_commit.diff",
            [
                (
                    ".pre-commit-config.yaml",
                    "pre-commit",
                    "pre-commit/pre-commit-hooks",
                    "v4.4.0",
                    "v4.5.0",
                    "minor",
                    3,
                ),
                (
                    ".pre-commit-config.yaml",
                    "pre-commit",
                    "psf/black",
                    "23.12.1",
                    "24.2.0",
                    "major",
                    8,
                ),
            ],
        ),
        ("removal.diff", []),  # six and left-pad removed with their code: removals, not bumps
    ],
)
def test_fixture_bumps_in_every_ecosystem(fixture: str, expected: list[tuple[object, ...]]) -> None:
    assert fixture_bumps(fixture) == expected


def hunk(path: str, start: int, lines: str) -> tuple[FileChange, ...]:
    """Parse one hunk of ``path``; ``lines`` carry their ' ', '-', '+' prefixes."""
    body = [line or " " for line in lines.strip("\n").split("\n")]  # "" is a blank context line
    old = sum(1 for line in body if line[:1] in " -")
    new = sum(1 for line in body if line[:1] in " +")
    return parse_diff(
        f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n"
        f"@@ -{start},{old} +{start},{new} @@\n" + "\n".join(body) + "\n"
    )


def test_uv_exclude_newer_timestamp_is_never_a_version() -> None:
    files = hunk(
        "uv.lock",
        1,
        """
 version = 1
 requires-python = ">=3.11"

 [options]
-exclude-newer = "2026-05-14T08:12:03Z"
+exclude-newer = "2026-05-21T19:54:36Z"
""",
    )
    assert list(deps.bumps(files)) == []
    in_pyproject = manifest(
        "pyproject.toml",
        ['exclude-newer = "2026-05-14T08:12:03Z"'],
        ['exclude-newer = "2026-05-21T19:54:36Z"'],
    )
    assert list(deps.bumps(in_pyproject)) == []


def test_pyjwt_minor_bump_in_uv_lock_is_a_sensitive_auth_and_crypto_bump() -> None:
    files = parse_diff((FIXTURES / "pip_uv_lock.diff").read_bytes())
    found = [(b.name, b.kind, b.breaking, c) for b, c in deps.sensitive_bumps(files, load_policy())]
    assert found == [("pyjwt", "minor", False, "auth"), ("pyjwt", "minor", False, "crypto")]


def test_a_lock_without_context_lines_still_names_pip_versions_by_their_file_names() -> None:
    """A FileChange built without hunks has only its changed lines; wheel names still pair up."""
    full = parse_diff((FIXTURES / "pip_uv_lock.diff").read_bytes())
    bare = tuple(dataclasses.replace(f, body=()) for f in full)
    assert [(b.path, b.name, b.old, b.new) for b in deps.bumps(bare)] == [
        ("uv.lock", "pyjwt", "2.8.0", "2.9.0")
    ]
    cargo = tuple(
        dataclasses.replace(f, body=()) for f in parse_diff((FIXTURES / "cargo.diff").read_bytes())
    )
    # Cargo.lock's changed lines hold a version and a checksum but no name: the manifest's
    # range is what is left.
    assert [(b.path, b.name, b.old, b.new) for b in deps.bumps(cargo)] == [
        ("Cargo.toml", "quick-xml", "0.27", "0.28")
    ]


def test_terraform_provider_range_bump_without_a_lock() -> None:
    files = hunk(
        "infra/versions.tf",
        1,
        """
 terraform {
   required_providers {
     aws = {
       source  = "hashicorp/aws"
-      version = "~> 4.0"
+      version = "~> 5.0"
     }
     google = { source = "hashicorp/google", version = ">= 5.10, < 6" }
   }
""",
    )
    [bump] = deps.bumps(files)
    assert (bump.ecosystem, bump.name, bump.old, bump.new, bump.breaking) == (
        "terraform",
        "hashicorp/aws",
        "4.0",
        "5.0",
        True,
    )
    assert deps.category_of(bump, load_policy()) == "infra"


def test_inline_provider_and_legacy_provider_blocks() -> None:
    inline = manifest(
        "versions.tf",
        ['    random = { source = "hashicorp/random", version = "~> 3.5" }'],
        ['    random = { source = "hashicorp/random", version = "~> 3.6" }'],
    )
    assert [(b.name, b.old, b.new) for b in deps.bumps(inline)] == [
        ("hashicorp/random", "3.5", "3.6")
    ]
    legacy = hunk(
        "main.tf",
        1,
        """
 provider "aws" {
-  version = "~> 2.70"
+  version = "~> 3.0"
   region  = "eu-west-1"
 }
""",
    )
    assert [(b.name, b.old, b.new) for b in deps.bumps(legacy)] == [
        ("hashicorp/aws", "2.70", "3.0")
    ]


def test_go_module_path_major_bump_keeps_one_name_and_ignores_kept_go_mod_lines() -> None:
    go_sum = parse_diff((FIXTURES / "go_major_path.diff").read_bytes())[1]
    assert go_sum.path == "go.sum"
    # go.sum keeps widgets/v2's /go.mod line; only the module lines decide.
    assert [(b.name, b.old, b.new) for b in deps.bumps([go_sum])] == [
        ("example.com/widgets", "2.4.0", "3.0.1"),
        ("golang.org/x/crypto", "0.17.0", "0.21.0"),
        (
            "golang.org/x/exp",
            "0.0.0-20231110203233-9a3e6036ecaa",
            "0.0.0-20240213143201-ec583247a57a",
        ),
    ]


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        (
            "go.mod",
            "\tgopkg.in/yaml.v2 v2.4.0",
            "\tgopkg.in/yaml.v3 v3.0.1",
            ("gopkg.in/yaml", "2.4.0", "3.0.1", "major"),
        ),
        (
            "Gemfile",
            "gem 'devise', '>= 4.9', '< 5'",
            "gem 'devise', '>= 5.0', '< 6'",
            ("devise", "4.9", "5.0", "major"),
        ),
        (
            "acme.gemspec",
            '  spec.add_dependency "omniauth", "~> 2.0"',
            '  spec.add_dependency "omniauth", "~> 2.1"',
            ("omniauth", "2.0", "2.1", "minor"),
        ),
        (
            "build.gradle",
            "    id 'org.springframework.boot' version '3.1.5'",
            "    id 'org.springframework.boot' version '3.2.0'",
            ("org.springframework.boot", "3.1.5", "3.2.0", "minor"),
        ),
        (
            "gradle.properties",
            "jjwtVersion=0.11.5",
            "jjwtVersion=0.12.3",
            ("jjwt", "0.11.5", "0.12.3", "major"),
        ),
        (
            "gradle.lockfile",
            "com.auth0:java-jwt:4.4.0=compileClasspath,runtimeClasspath",
            "com.auth0:java-jwt:4.5.0=compileClasspath,runtimeClasspath",
            ("com.auth0:java-jwt", "4.4.0", "4.5.0", "minor"),
        ),
        (
            "Pipfile",
            'pyjwt = "==2.8.0"',
            'pyjwt = "==2.9.0"',
            ("pyjwt", "2.8.0", "2.9.0", "minor"),
        ),
        (
            "Dockerfile.prod",
            "FROM --platform=$BUILDPLATFORM node:18-alpine AS web",
            "FROM --platform=$BUILDPLATFORM node:20-alpine AS web",
            ("node", "18-alpine", "20-alpine", "major"),
        ),
        (
            "Dockerfile",
            "COPY --from=ghcr.io/astral-sh/uv:0.4.30 /uv /bin/",
            "COPY --from=ghcr.io/astral-sh/uv:0.5.1 /uv /bin/",
            ("ghcr.io/astral-sh/uv", "0.4.30", "0.5.1", "major"),
        ),
        (
            "Dockerfile",
            "ARG ALPINE_VERSION=3.19",
            "ARG ALPINE_VERSION=3.20",
            ("alpine", "3.19", "3.20", "minor"),
        ),
        (
            "k8s/api/deployment.yaml",
            "        - image: docker.io/library/nginx:1.25.3",
            "        - image: docker.io/library/nginx:1.25.4",
            ("nginx", "1.25.3", "1.25.4", "patch"),
        ),
        (
            ".github/workflows/release.yml",
            "      - uses: docker://alpine:3.18",
            "      - uses: docker://alpine:3.19",
            ("alpine", "3.18", "3.19", "minor"),
        ),
        (
            "action.yml",
            "    - uses: github/codeql-action/init@v2",
            "    - uses: github/codeql-action/init@v3",
            ("github/codeql-action/init", "v2", "v3", "major"),
        ),
        (
            "package.json",
            '    "@stripe/stripe-js": ">=1.54.0 <3.0.0",',
            '    "@stripe/stripe-js": ">=2.1.0 <4.0.0",',
            ("@stripe/stripe-js", "1.54.0", "2.1.0", "major"),
        ),
    ],
)
def test_more_manifest_lines(path: str, old: str, new: str, expected: tuple[str, ...]) -> None:
    assert found(path, old, new) == [expected]


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        # A SHA alone is no version; a branch is none either.
        (
            ".github/workflows/ci.yml",
            "      - uses: actions/cache@" + "a" * 40,
            "      - uses: actions/cache@" + "b" * 40,
        ),
        (
            ".github/workflows/ci.yml",
            "      - uses: acme/deploy@main",
            "      - uses: acme/deploy@next",
        ),
        ("Dockerfile", "FROM python@sha256:" + "1" * 64, "FROM python@sha256:" + "2" * 64),
        (
            "Dockerfile",
            "FROM python:3.12-slim@sha256:" + "1" * 64,
            "FROM python:3.12-slim@sha256:" + "2" * 64,
        ),
        ("Dockerfile", "FROM ubuntu:latest", "FROM ubuntu:rolling"),
        (
            "compose.yaml",
            "    image: ${REGISTRY}/api:${TAG}",
            "    image: ${REGISTRY}/api:${NEW_TAG}",
        ),
        ("go.mod", "toolchain go1.22.0", "toolchain go1.22.4"),
        (
            "go.mod",
            "replace example.com/a => example.com/b v1.0.0",
            "replace example.com/a => example.com/b v2.0.0",
        ),
        ("package.json", '  "packageManager": "pnpm@8.15.0",', '  "packageManager": "pnpm@9.0.0",'),
        ("pyproject.toml", 'python_version = "3.11"', 'python_version = "3.12"'),
        ("Gemfile.lock", "   2.4.10", "   2.5.3"),  # BUNDLED WITH
        (
            "Gemfile.lock",
            "      rack (>= 2.2.4)",
            "      rack (>= 3.0)",
        ),  # a dependency's constraint
        ("yarn.lock", "  version: 6", "  version: 8"),  # __metadata
    ],
)
def test_no_bump_for_hashes_branches_digests_and_toolchains(path: str, old: str, new: str) -> None:
    assert found(path, old, new) == []


def test_a_comment_rewritten_on_the_same_sha_is_no_bump() -> None:
    sha = "9c091bb21b7c1c1d1991bb908d89e4e9dddfe3e0"
    files = manifest(
        ".github/workflows/ci.yml",
        [f"      - uses: actions/checkout@{sha}  # v7"],
        [f"      - uses: actions/checkout@{sha}  # v7.0.0"],
    )
    assert list(deps.bumps(files)) == []


# ---- versions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "version"),
    [
        ("^1.2.0", "1.2.0"),
        ("~> 5.0", "5.0"),
        (">=2,<3", "2"),
        (">= 4.0, < 6.0", "4.0"),
        ("<3", "3"),
        ("==2.31.*", "2.31"),
        ("v0.3.0", "0.3.0"),
        ("[1.0,2.0)", "1.0"),
        ("latest", None),
        ("*", None),
        ("2026-05-21T19:54:36Z", None),
        ("20240101", None),
        ("9c091bb21b7c1c1d1991bb908d89e4e9dddfe3e0", None),
        ("d852ddb", None),
    ],
)
def test_pin_version_takes_the_numbers_of_a_range(spec: str, version: str | None) -> None:
    assert deps.pin_version(spec) == version


@pytest.mark.parametrize(
    ("old", "new", "ecosystem", "kind"),
    [
        ("2.31.0rc1", "2.31.0", "pip", "other"),
        ("1.0.post1", "1.0.post2", "pip", "other"),
        ("0.27.1", "0.28.0", "cargo", "major"),
        ("0.0.3", "0.0.4", "npm", "patch"),
        ("v1.2", "v1.3.0", "go", "minor"),
        ("0.0.0-20231110203233-9a3e6036ecaa", "0.0.0-20240213143201-ec583247a57a", "go", "other"),
        ("1.2.3-0.20231110203233-9a3e6036ecaa", "1.2.3", "go", "other"),
        ("2.0.0+incompatible", "2.1.0+incompatible", "go", "minor"),
        ("3.12-slim", "3.12-alpine", "docker", "other"),  # a variant, not a version
        ("3.12-slim", "3.11-slim", "docker", "downgrade"),
        ("18-alpine", "20-alpine", "docker", "major"),
        ("5.3.0.RELEASE", "5.3.1.RELEASE", "maven", "patch"),
        ("32.1.2-jre", "33.0.0-jre", "maven", "major"),
        ("3.1.4.1", "3.1.4.2", "", "patch"),
        ("==4.2.11", "v5.0.3", "", "major"),
        ("main", "v2", "actions", "other"),
    ],
)
def test_classify_per_ecosystem(old: str, new: str, ecosystem: str, kind: str) -> None:
    assert deps.classify(old, new, ecosystem) == kind


def test_downgrades_and_equal_versions_are_not_breaking() -> None:
    down = deps.Bump("requirements.txt", "django", "5.0.1", "4.2.7", 1)
    same = deps.Bump("requirements.txt", "django", "1.2", "1.2.0", 1)
    assert (down.ecosystem, down.kind, down.breaking) == ("pip", "downgrade", False)
    assert (same.kind, same.breaking) == ("other", False)


# ---- the knowledge base and the policy key ----------------------------------------------------


def bump_of(ecosystem: str, name: str) -> deps.Bump:
    """Return a minor bump of ``name`` as the detector would spell it."""
    return deps.Bump("x", deps.normalise(name, ecosystem), "1.0.0", "1.1.0", 1, ecosystem)


@pytest.mark.parametrize(
    ("ecosystem", "name", "categories"),
    [
        ("pip", "PyJWT", ("auth", "crypto")),
        ("pip", "python_jose", ("auth", "crypto")),
        ("pip", "Stripe", ("payments",)),
        ("pip", "certifi", ("crypto",)),
        ("pip", "urllib3", ()),  # an HTTP client: see packages.yaml for why
        ("pip", "requests", ()),
        ("npm", "jsonwebtoken", ("auth", "crypto")),
        ("npm", "passport-google-oauth20", ("auth",)),
        ("npm", "@stripe/stripe-js", ("payments",)),
        ("npm", "@auth/core", ("auth",)),
        ("npm", "react", ()),
        ("go", "github.com/golang-jwt/jwt/v5", ("auth", "crypto")),
        ("go", "golang.org/x/oauth2", ("auth",)),
        ("go", "golang.org/x/crypto", ("crypto",)),
        ("go", "github.com/stripe/stripe-go/v76", ("payments",)),
        ("cargo", "rustls-pemfile", ("crypto",)),
        ("cargo", "ring", ("crypto",)),
        ("maven", "org.springframework.security:spring-security-core", ("auth",)),
        ("maven", "io.jsonwebtoken:jjwt-api", ("auth", "crypto")),
        ("maven", "nimbus-jose-jwt", ("auth", "crypto")),  # a catalog alias
        ("maven", "org.bouncycastle:bcprov-jdk18on", ("crypto",)),
        ("maven", "com.stripe:stripe-java", ("payments",)),
        ("maven", "jackson", ()),
        ("rubygems", "devise-two-factor", ("auth",)),
        ("rubygems", "jwt", ("auth", "crypto")),
        ("rubygems", "nokogiri", ()),
        ("actions", "actions/checkout", ("infra",)),
        ("docker", "postgres", ("infra",)),
        ("terraform", "hashicorp/aws", ("infra",)),
        ("pre-commit", "psf/black", ()),
    ],
)
def test_knowledge_base_categories(ecosystem: str, name: str, categories: tuple[str, ...]) -> None:
    policy = load_policy()
    assert deps.categories_of(bump_of(ecosystem, name), policy) == categories
    assert deps.category_of(bump_of(ecosystem, name), policy) == (
        categories[0] if categories else None
    )


def test_the_packaged_knowledge_base_validates_and_covers_every_package_ecosystem() -> None:
    base = deps.knowledge_base()
    for ecosystem in ("pip", "npm", "go", "cargo", "maven", "rubygems"):
        assert {"auth", "crypto", "payments"} <= set(base.packages[ecosystem]), ecosystem
    for ecosystem in ("actions", "docker", "terraform"):
        assert base.packages[ecosystem] == {"infra": ("*",)}


def test_sensitive_bumps_names_each_sensitive_package_once_per_category() -> None:
    policy = load_policy()
    files = [
        *parse_diff((FIXTURES / "actions.diff").read_bytes()),
        *parse_diff((FIXTURES / "gradle_catalog.diff").read_bytes()),
        *parse_diff((FIXTURES / "cargo.diff").read_bytes()),
    ]
    assert [(b.name, c) for b, c in deps.sensitive_bumps(files, policy)] == [
        ("postgres", "infra"),
        ("actions/checkout", "infra"),
        ("actions/setup-python", "infra"),
        ("nimbus-jose-jwt", "auth"),
        ("nimbus-jose-jwt", "crypto"),
        ("com.stripe:stripe-java", "payments"),
        ("org.bouncycastle:bcprov-jdk18on", "crypto"),
        ("ring", "crypto"),
    ]


def test_an_operator_policy_adds_packages_to_the_knowledge_base() -> None:
    data = yaml.safe_load(default_policy_text())
    data["dependencies"] = {"packages": {"npm": {"payments": ["@acme/billing-*"]}}}
    policy = build_policy(data, source="test.yaml")
    billing = bump_of("npm", "@acme/billing-client")
    assert deps.categories_of(billing, policy) == ("payments",)
    assert deps.categories_of(billing, load_policy()) == ()
    assert deps.categories_of(bump_of("npm", "stripe"), policy) == ("payments",)  # still there


def test_a_repo_extends_the_knowledge_base_and_the_bump_becomes_sensitive() -> None:
    files = manifest("requirements.txt", ["Acme_Billing==1.4.0"], ["Acme_Billing==1.5.0"])
    assert list(deps.sensitive_bumps(files, load_policy())) == []
    repo = "dependencies:\n  packages:\n    pip:\n      payments: [acme-billing]\n"
    merged = merge_repo_config(load_policy(), repo)
    assert merged.errors == ()
    assert [(b.name, c) for b, c in deps.sensitive_bumps(files, merged.policy)] == [
        ("acme-billing", "payments")
    ]


def test_a_repo_can_only_add_packages_never_remove_them() -> None:
    operator = build_policy(
        {
            **yaml.safe_load(default_policy_text()),
            "dependencies": {"packages": {"pip": {"auth": ["acme-sso"]}}},
        },
        source="test.yaml",
    )
    merged = merge_repo_config(operator, "dependencies:\n  packages:\n    pip:\n      auth: []\n")
    assert merged.errors == ()
    assert merged.policy.dependencies.packages["pip"]["auth"] == ("acme-sso",)
    assert deps.categories_of(bump_of("pip", "PyJWT"), merged.policy) == ("auth", "crypto")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "dependencies:\n  packages:\n    nuget: {auth: [Foo]}\n",
            "dependencies.packages.nuget.[key]",
        ),
        (
            "dependencies:\n  packages:\n    pip: {secrets: [foo]}\n",
            "dependencies.packages.pip.secrets.[key]",
        ),
        (
            "dependencies:\n  packages:\n    pip: {auth: ['two words']}\n",
            "dependencies.packages.pip.auth.0",
        ),
        ("dependencies:\n  extra: 1\n", "dependencies.extra"),
    ],
)
def test_a_bad_repo_dependencies_key_is_named_and_skipped(text: str, key: str) -> None:
    merged = merge_repo_config(load_policy(), text)
    (error,) = merged.errors
    assert error.key == key and ".github/cibot.yml" in str(error)
    assert merged.policy.dependencies == load_policy().dependencies


def test_breaking_api_surface_reports_lock_file_majors_in_the_usual_form() -> None:
    files = parse_diff((FIXTURES / "npm_lock_v3.diff").read_bytes())
    reasons = [
        r.evidence for r in detectors.breaking_api_surface(Evidence(files=files), load_policy())
    ]
    assert reasons == [
        "package-lock.json:705 jsonwebtoken 8.5.1 → 9.0.2",
        "package-lock.json:1311 semver 5.7.2 → 7.6.0",
    ]


# ---- speed ---------------------------------------------------------------------------------------


def test_a_50000_line_lock_file_diff_is_read_whole() -> None:
    """Every one of 5,000 bumps in a 50,000-line lock diff is found (its speed is measured in
    tests/benchmarks/bench_route.py, not asserted here: this machine's load varies)."""
    hunks = []
    for i in range(5000):
        hunks.append(
            f"@@ -{10 + 20 * i},7 +{10 + 20 * i},7 @@\n"
            f'     "node_modules/pkg-{i}": {{\n'
            f'-      "version": "1.{i}.0",\n'
            f'-      "resolved": "https://registry.npmjs.org/pkg-{i}/-/pkg-{i}-1.{i}.0.tgz",\n'
            f'-      "integrity": "sha512-old{i}",\n'
            f'+      "version": "2.{i}.0",\n'
            f'+      "resolved": "https://registry.npmjs.org/pkg-{i}/-/pkg-{i}-2.{i}.0.tgz",\n'
            f'+      "integrity": "sha512-new{i}",\n'
            '       "dependencies": {\n         "ms": "^2.1.3"\n       }\n'
        )
    diff = "diff --git a/package-lock.json b/package-lock.json\n--- a/package-lock.json\n"
    files = parse_diff(diff + "+++ b/package-lock.json\n" + "".join(hunks))
    found = list(deps.bumps(files))
    breaking = sum(b.breaking for b in found)
    assert len(found) == 5000 and breaking == 5000
    assert found[1].name == "pkg-1" and found[1].old == "1.1.0"  # a name ending in a digit


def test_bump_sites_names_every_manifest_a_package_moves_in() -> None:
    """Two services' locks move pino: bumps merges equal moves, bump_sites keeps each file."""
    lock = '    "node_modules/pino": {{\n-      "version": "{old}",\n+      "version": "9.0.0",\n'
    diff = "".join(
        f"diff --git a/{folder}/package-lock.json b/{folder}/package-lock.json\n"
        f"--- a/{folder}/package-lock.json\n+++ b/{folder}/package-lock.json\n"
        "@@ -1,2 +1,2 @@\n" + lock.format(old=old)
        for folder, old in (("api", "8.1.0"), ("web", "8.1.0"), ("jobs", "8.2.0"))
    )
    root = (
        "diff --git a/package.json b/package.json\n--- a/package.json\n+++ b/package.json\n"
        '@@ -1,2 +1,2 @@\n   "dependencies": {\n-    "pino": "^8.0.0"\n+    "pino": "^9.0.0"\n'
        "diff --git a/package-lock.json b/package-lock.json\n"
        "--- a/package-lock.json\n+++ b/package-lock.json\n"
        "@@ -1,2 +1,2 @@\n" + lock.format(old="8.3.0")
    )
    files = parse_diff(diff + root)
    sites = [(b.path, b.old, b.new) for b in deps.bump_sites(files)]
    assert sites == [
        ("api/package-lock.json", "8.1.0", "9.0.0"),
        ("web/package-lock.json", "8.1.0", "9.0.0"),
        ("jobs/package-lock.json", "8.2.0", "9.0.0"),
        ("package-lock.json", "8.3.0", "9.0.0"),  # the root lock resolves package.json's range
    ]
    assert [(b.path, b.old) for b in deps.bumps(files)] == [
        ("api/package-lock.json", "8.1.0"),
        ("jobs/package-lock.json", "8.2.0"),
        ("package-lock.json", "8.3.0"),
    ]
