"""Report prompt tokens per job on small, medium and large PRs: raw input against packed.

Run: python tests/benchmarks/bench_prompt_tokens.py

Each PR is built as commits in a throwaway git repository, so the diff is git's own output
(renames, deletions, binary files, lock files). Each job packs only what it needs:

- summary: every code, test and manifest file; one line of context.
- review:  the same files with deletion-only hunks kept (deleted files by name), three lines of context, and
           context reaching up to the enclosing definition.
- tests:   the source files only (what new tests must cover).
- deps:    the manifests only (lock files never reach a prompt).
- ci:      the CI log of the PR, trimmed to its error blocks.

"Needed" is decided from the roles the builder gave each file, not by the packer, and the
last column says whether every needed hunk (or, for ci, every error line) was kept.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from unidiff.patch import PatchSet  # noqa: E402

from policies.loading import load_policy  # noqa: E402
from policies.tokens import count  # noqa: E402
from workers.logs import trim  # noqa: E402
from workers.packing import Flags, budget, pack  # noqa: E402

LOGS = ROOT / "tests" / "fixtures" / "logs"
PROMPTS = {
    "summary": "Summarise this pull request for its reviewers: what changes, why, and what to check. "
    "Name the risky parts. Answer in markdown with at most eight bullet points.",
    "review": "Review this diff. Report only real problems (bugs, security, data loss), each anchored "
    "to a changed line as JSON: path, line, severity, message, suggestion.",
    "tests": "Write unit tests for the changed functions below. Cover the changed lines and edge "
    "cases; use the project's test framework; output whole test files.",
    "deps": "Explain these dependency changes: what was bumped, breaking changes in the new "
    "versions, and any API the code uses that was removed or renamed.",
    "ci": "Explain why this CI run failed: the first real error, the failing test or step, the "
    "likely cause in the PR's changes, and the fix.",
}
SOURCE, TEST, MANIFEST, LOCK, GENERATED, VENDORED, BINARY = (
    "source",
    "test",
    "manifest",
    "lock",
    "generated",
    "vendored",
    "binary",
)
WORDS = [
    "order",
    "invoice",
    "amount",
    "session",
    "token",
    "user",
    "account",
    "cache",
    "retry",
    "timeout",
    "handler",
    "config",
    "value",
    "result",
    "status",
    "payload",
    "client",
    "queue",
    "event",
    "ledger",
    "refund",
    "discount",
    "price",
    "tax",
    "customer",
]


def sensitive(path: str) -> bool:
    """Call auth and payments code sensitive, as the default policy's categories do."""
    return path.startswith(("src/auth/", "services/payments/"))


@dataclass
class Repo:
    """Build a PR as two commits in a scratch git repository."""

    root: Path
    roles: dict[str, str] = field(default_factory=dict)

    def git(self, *args: str) -> str:
        """Run git in the repository and return its output."""
        env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
        done = subprocess.run(
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
            cwd=self.root,
            env=env,
            check=True,
            capture_output=True,
        )
        return done.stdout.decode("utf-8", errors="replace")

    def write(self, path: str, text: str | bytes, role: str) -> None:
        """Write a file and remember its role."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text, encoding="utf-8")
        self.roles[path] = role

    def read(self, path: str) -> str | None:
        """Return a file's text at the head, or None when it is gone."""
        target = self.root / path
        return target.read_text(encoding="utf-8") if target.exists() else None

    def commit(self, message: str) -> None:
        """Commit everything."""
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def diff(self, *paths: str) -> str:
        """Return the PR's diff, limited to ``paths`` when given."""
        return self.git("diff", "-M", "HEAD~1", "HEAD", "--", *paths)


def function(rnd: random.Random, name: str, lines: int) -> list[str]:
    """Return a Python function of about ``lines`` lines."""
    a, b, c = rnd.sample(WORDS, 3)
    body = [f"def {name}({a}, {b}=None):", f'    """Compute the {a} {c} for a {b}."""']
    for i in range(lines):
        x, y = rnd.sample(WORDS, 2)
        body.append(f"    {x}_{i} = {a}.get({y!r}, {i}) if {b} else {c}_{i % 3}({x})")
    body.append(f"    return {a}")
    return body


def module(rnd: random.Random, functions: int) -> list[list[str]]:
    """Return a module as a list of functions (lists of lines)."""
    return [function(rnd, f"{rnd.choice(WORDS)}_{i}", rnd.randint(4, 14)) for i in range(functions)]


def render(blocks: list[list[str]]) -> str:
    """Join functions into module text."""
    return '"""A module."""\n\nimport os\n\n\n' + "\n\n\n".join("\n".join(b) for b in blocks) + "\n"


def edit(
    rnd: random.Random, blocks: list[list[str]], changes: int, deletions: int
) -> list[list[str]]:
    """Change lines in some functions, add one, and delete ``deletions`` whole functions."""
    out = [list(b) for b in blocks]
    for index in rnd.sample(range(len(out)), min(changes, len(out))):
        line = rnd.randrange(2, len(out[index]))
        out[index][line] = out[index][line].replace(" if ", " if not ") + "  # fixed"
    for _ in range(deletions):
        out.pop(rnd.randrange(len(out)))
    out.insert(rnd.randrange(len(out) + 1), function(rnd, "added_helper", rnd.randint(3, 8)))
    return out


def lock_text(packages: int, bump: int) -> str:
    """Return a package-lock.json with ``packages`` entries, versions shifted by ``bump``."""
    entries = [
        f'    "node_modules/pkg-{i}": {{\n      "version": "1.{i}.{bump if i % 3 == 0 else 0}",\n'
        f'      "resolved": "https://registry.npmjs.org/pkg-{i}/-/pkg-{i}-1.{i}.0.tgz",\n'
        f'      "integrity": "sha512-{"ab" * 20}{i}{bump}"\n    }}'
        for i in range(packages)
    ]
    return (
        '{\n  "name": "web",\n  "lockfileVersion": 3,\n  "packages": {\n'
        + ",\n".join(entries)
        + "\n  }\n}\n"
    )


def go_sum(modules: int, bump: int) -> str:
    """Return a go.sum with ``modules`` modules, some bumped."""
    return "".join(
        f"github.com/acme/mod{i} v1.{i}.{bump if i % 4 == 0 else 0} h1:{'x' * 40}{i}{bump}=\n"
        for i in range(modules)
    )


def write_modules(
    repo: Repo, rnd: random.Random, paths: dict[str, str], size: int
) -> dict[str, list[list[str]]]:
    """Write base modules and return their functions for editing."""
    blocks = {}
    for path, role in paths.items():
        blocks[path] = module(rnd, size)
        repo.write(path, render(blocks[path]), role)
    return blocks


def small_pr(repo: Repo) -> None:
    """Build a one-bug fix: a source module and its test."""
    rnd = random.Random(1)
    files = {"services/billing/invoice.py": SOURCE, "services/billing/tests/test_invoice.py": TEST}
    blocks = write_modules(repo, rnd, files, 14)
    repo.commit("base")
    repo.write(
        "services/billing/invoice.py",
        render(edit(rnd, blocks["services/billing/invoice.py"], 3, 0)),
        SOURCE,
    )
    repo.write(
        "services/billing/tests/test_invoice.py",
        render(edit(rnd, blocks["services/billing/tests/test_invoice.py"], 0, 0)),
        TEST,
    )
    repo.commit("fix rounding")


def medium_pr(repo: Repo) -> None:
    """Build a feature: four services, tests, a manifest bump with its lock file, a rename."""
    rnd = random.Random(2)
    files = {
        "src/auth/session.py": SOURCE,
        "services/orders/api.py": SOURCE,
        "services/orders/store.py": SOURCE,
        "services/catalog/search.py": SOURCE,
        "services/orders/tests/test_api.py": TEST,
        "services/catalog/tests/test_search.py": TEST,
        "services/catalog/ranking_old.py": SOURCE,
    }
    blocks = write_modules(repo, rnd, files, 16)
    repo.write(
        "package.json",
        '{\n  "name": "web",\n  "dependencies": {\n    "react": "^18.2.0",\n    "zod": "^3.22.0"\n  }\n}\n',
        MANIFEST,
    )
    repo.write("package-lock.json", lock_text(120, 0), LOCK)
    repo.commit("base")
    for path in files:
        if path != "services/catalog/ranking_old.py":
            repo.write(path, render(edit(rnd, blocks[path], 4, 1)), files[path])
    old = repo.root / "services/catalog/ranking_old.py"
    old.rename(repo.root / "services/catalog/ranking.py")
    repo.roles["services/catalog/ranking.py"] = SOURCE
    repo.write(
        "package.json",
        '{\n  "name": "web",\n  "dependencies": {\n    "react": "^18.3.1",\n    "zod": "^3.23.8"\n  }\n}\n',
        MANIFEST,
    )
    repo.write("package-lock.json", lock_text(120, 1), LOCK)
    repo.commit("add order search")


def large_pr(repo: Repo) -> None:
    """Build a refactor: sixty modules, generated and vendored code, lock files, images."""
    rnd = random.Random(3)
    services = ("orders", "catalog", "billing", "shipping", "users", "payments")
    files = {f"services/{s}/mod_{i}.py": SOURCE for s in services for i in range(9)}
    files.update({f"services/{s}/tests/test_mod.py": TEST for s in services})
    blocks = write_modules(repo, rnd, files, 12)
    legacy = module(rnd, 40)
    repo.write("services/legacy/compat.py", render(legacy), SOURCE)
    repo.write(
        "services/api/proto/api_pb2.py",
        "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n" + render(module(rnd, 30)),
        GENERATED,
    )
    repo.write(
        "vendor/github.com/acme/retry/retry.go",
        "package retry\n" + "".join(f"func R{i}() int {{ return {i} }}\n" for i in range(200)),
        VENDORED,
    )
    repo.write(
        "go.mod",
        "module github.com/acme/shop\n\ngo 1.22\n\nrequire github.com/acme/mod0 v1.0.0\n",
        MANIFEST,
    )
    repo.write("go.sum", go_sum(300, 0), LOCK)
    repo.write("web/static/logo.png", bytes(range(256)) * 8, BINARY)
    repo.commit("base")
    for path, role in files.items():
        repo.write(path, render(edit(rnd, blocks[path], 2, rnd.choice((0, 0, 1)))), role)
    (repo.root / "services/legacy/compat.py").unlink()
    repo.write(
        "services/api/proto/api_pb2.py",
        "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n" + render(module(rnd, 32)),
        GENERATED,
    )
    repo.write(
        "vendor/github.com/acme/retry/retry.go",
        "package retry\n" + "".join(f"func R{i}() int {{ return {i + 1} }}\n" for i in range(200)),
        VENDORED,
    )
    repo.write(
        "go.mod",
        "module github.com/acme/shop\n\ngo 1.22\n\nrequire github.com/acme/mod0 v1.0.4\n",
        MANIFEST,
    )
    repo.write("go.sum", go_sum(300, 4), LOCK)
    repo.write("web/static/logo.png", bytes(range(255, -1, -1)) * 8, BINARY)
    repo.commit("split services")


def ci_log(fixtures: list[str], noise_lines: int, seed: int) -> bytes:
    """Return a CI log: passing output with the given failing fixtures spread through it."""
    rnd = random.Random(seed)
    parts = []
    for index in range(noise_lines):
        parts.append(
            f"2024-05-14T09:00:{index % 60:02d}.0000000Z PASSED tests/test_m{rnd.randrange(90)}.py::test_{index}\n".encode()
        )
        if fixtures and index % (noise_lines // len(fixtures) or 1) == noise_lines // (
            2 * len(fixtures)
        ):
            parts.append((LOGS / fixtures.pop(0)).read_bytes())
    return b"".join(parts)


def error_lines(log: bytes) -> list[str]:
    """Return the lines a reader must see: those naming a failure or an error."""
    keys = ("FAILED", "Error", "error", "FAIL", "panic:", "●")
    out = []
    for raw in log.decode("utf-8", errors="replace").splitlines():
        line = raw.split("Z ", 1)[1] if raw[:4].isdigit() and "Z " in raw[:30] else raw
        if any(key in line for key in keys) and "PASSED" not in line:
            out.append(line.rstrip())
    return out


@dataclass(frozen=True)
class Job:
    """Say which files a job reads, which hunks it needs, and how it packs them."""

    name: str
    roles: tuple[str, ...]
    deletions: bool
    context: int
    enclosing: bool


JOBS = (
    Job("summary", (SOURCE, TEST, MANIFEST), False, 1, False),
    Job("review", (SOURCE, TEST, MANIFEST), True, 3, True),
    Job("tests", (SOURCE,), False, 3, True),
    Job("deps", (MANIFEST, LOCK), False, 1, False),
)


def needed(diff: str, repo: Repo, job: Job) -> set[tuple[str, int]]:
    """Return the hunks a job needs, judged by file role alone."""
    out = set()
    for pf in PatchSet(diff):
        if repo.roles.get(pf.path) not in job.roles or repo.roles.get(pf.path) == LOCK:
            continue
        if pf.is_removed_file:
            continue  # a deleted file is named, its body is not needed (nothing is flagged here)
        for index, hunk in enumerate(pf):
            if job.deletions or hunk.added:
                out.add((pf.path, index))
    return out


def diff_rows(label: str, repo: Repo, window: int, reserve: int) -> list[tuple[str, ...]]:
    """Pack one PR for each diff job and return the table rows."""
    rows = []
    full = repo.diff()
    for job in JOBS:
        paths = [p for p, role in repo.roles.items() if role in job.roles]
        diff = repo.diff(*paths) if paths else ""
        limit = budget(window=window, prompt=PROMPTS[job.name], reserve=reserve)
        source: Callable[[str], str | None] | None = repo.read if job.enclosing else None
        packed = pack(
            diff,
            budget_tokens=limit,
            flags=Flags(paths=frozenset(p for p in repo.roles if sensitive(p))),
            source=source,
            context_lines=job.context,
            keep_deletions=job.deletions,
        )
        want = needed(diff, repo, job)
        kept = {(ref.path, ref.index) for ref in packed.hunks}
        rows.append(
            (
                label,
                job.name,
                f"{count(full):,}",
                f"{packed.tokens:,}",
                f"{100 * (1 - packed.tokens / max(1, count(full))):.0f}%",
                str(len(want)),
                str(len(want & kept)),
                "yes" if want <= kept else "no",
            )
        )
    return rows


def ci_row(label: str, fixtures: list[str], noise: int, seed: int, limit: int) -> tuple[str, ...]:
    """Trim one PR's CI log and return its table row."""
    log = ci_log(list(fixtures), noise, seed)
    want = error_lines(b"".join((LOGS / f).read_bytes() for f in fixtures))
    trimmed = trim([log], budget_tokens=limit)
    shown = set(trimmed.text.splitlines())
    kept = sum(1 for line in want if line in shown)
    raw = count(log.decode("utf-8", errors="replace"))
    return (
        label,
        "ci",
        f"{raw:,}",
        f"{trimmed.tokens:,}",
        f"{100 * (1 - trimmed.tokens / raw):.0f}%",
        str(len(want)),
        str(kept),
        "yes" if kept == len(want) else "no",
    )


def main() -> int:
    """Build the PRs, pack them for each job, and print the table."""
    policy = load_policy()
    local = policy.tiers["local"]
    reserve = local.max_output_tokens + policy.behaviour.context_reserve_tokens
    window = local.context_window
    rows = []
    logs = {
        "small": (["pytest_failure.log"], 2_000),
        "medium": (["tsc_error.log", "jest_failure.log"], 20_000),
        "large": (["go_test_failure.log", "rustc_error.log", "traceback.log"], 100_000),
    }
    for label, build in (("small", small_pr), ("medium", medium_pr), ("large", large_pr)):
        with tempfile.TemporaryDirectory(prefix="cibot-bench-pr-") as tmp:
            repo = Repo(Path(tmp))
            repo.git("init", "-q")
            build(repo)
            rows += diff_rows(label, repo, window, reserve)
        fixtures, noise = logs[label]
        rows.append(
            ci_row(
                label,
                fixtures,
                noise,
                len(rows),
                budget(window=window, prompt=PROMPTS["ci"], reserve=reserve),
            )
        )
    header = ("PR", "job", "raw tokens", "packed", "saved", "needed", "kept", "all needed kept?")
    widths = [max(len(r[i]) for r in [header, *rows]) + 2 for i in range(len(header))]
    print(
        f"local tier window {window:,} tokens, output reserve {reserve:,}; raw = the whole PR diff (ci: the whole log)"
    )
    for row in [header, *rows]:
        print(
            "".join(
                cell.rjust(width) if i > 1 else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
    return 0 if all(row[-1] == "yes" for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
