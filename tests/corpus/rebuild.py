"""Rebuild the routing corpus's diffs and head trees from repository snapshots.

The corpus commits only labels (``cases-*.jsonl``): the diffs and trees are third-party
code, so this script writes them next to the labels, into ``diffs/`` and ``trees/``,
which git ignores. Each case names ``repo`` (owner/name) and ``commit``; its diff is the
commit against its first parent, and its tree is the commit's file list (``PATHS``) plus
the build and deploy files that service discovery reads.

    python tests/corpus/rebuild.py --mirrors ROOT [--cases tests/corpus/cases-web.jsonl ...]

ROOT holds one bare or normal git directory per repository, found as ``ROOT/owner+name``,
``ROOT/owner+name/repo``, ``ROOT/owner/name`` or ``ROOT/owner/name.git``. Clone them with
``git clone --mirror https://github.com/<owner>/<name> ROOT/<owner>+<name>`` anywhere
with network access.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Files service discovery and the deploy detectors read by content; everything else is
# listed in PATHS only.
BUILD_FILES = re.compile(
    r"(^|/)(Dockerfile[^/]*|[^/]*\.dockerfile|(docker-)?compose[^/]*\.ya?ml|Chart\.yaml"
    r"|values[^/]*\.ya?ml|skaffold[^/]*\.ya?ml|kustomization\.ya?ml|package\.json|go\.mod"
    r"|pyproject\.toml|setup\.py|setup\.cfg|Cargo\.toml|pom\.xml|build\.gradle(\.kts)?"
    r"|Gemfile|requirements[^/]*\.txt|Makefile|Procfile|app\.yaml)$"
    r"|(^|/)(k8s|kubernetes|manifests|deploy|kustomize|helm|charts)/.*\.ya?ml$"
)
MAX_FILE = 512 * 1024


def git_dir(root: Path, repo: str) -> Path:
    """Find the snapshot of ``owner/name`` under ``root``."""
    owner, name = repo.split("/", 1)
    for candidate in (
        root / f"{owner}+{name}" / "repo",
        root / f"{owner}+{name}",
        root / owner / name,
        root / owner / f"{name}.git",
    ):
        if (candidate / "HEAD").exists() or (candidate / ".git").exists():
            return candidate
    raise SystemExit(f"no snapshot of {repo} under {root}")


def git(directory: Path, *args: str) -> bytes:
    """Run git against one snapshot and return its output."""
    return subprocess.run(
        [
            "git",
            f"--git-dir={directory / '.git' if (directory / '.git').exists() else directory}",
            *args,
        ],
        check=True,
        capture_output=True,
    ).stdout


def diff_of(directory: Path, commit: str) -> bytes:
    """Return the commit's diff against its first parent (or the root commit's whole tree)."""
    parents = git(directory, "rev-list", "--parents", "-n", "1", commit).split()[1:]
    base = parents[0].decode() if parents else "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    return git(directory, "diff", "--no-color", "--no-ext-diff", "-M", base, commit)


def write_tree(directory: Path, commit: str, out: Path) -> None:
    """Write the commit's path list and its build and deploy files under ``out``."""
    paths = (
        git(directory, "ls-tree", "-r", "--name-only", "-z", commit)
        .decode("utf-8", "replace")
        .split("\0")
    )
    paths = [p for p in paths if p]
    out.mkdir(parents=True, exist_ok=True)
    (out / "PATHS").write_text("\n".join(paths) + "\n")
    for path in paths:
        if not BUILD_FILES.search(path) or ".." in path.split("/"):
            continue
        try:
            blob = git(directory, "show", f"{commit}:{path}")
        except subprocess.CalledProcessError:
            continue
        if len(blob) > MAX_FILE or b"\0" in blob[:8192]:
            continue
        target = out / "files" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)


def main(argv: list[str] | None = None) -> int:
    """Rebuild every case's diff and tree; report what could not be rebuilt."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=Path, required=True)
    parser.add_argument(
        "--cases",
        type=Path,
        action="append",
        help="a cases file (repeatable); default: every cases-*.jsonl here",
    )
    parser.add_argument("--only", help="rebuild just the case with this id")
    args = parser.parse_args(argv)
    failed = 0
    for cases in args.cases or sorted(HERE.glob("cases-*.jsonl")):
        failed += rebuild(cases, args.mirrors, args.only)
    return 1 if failed else 0


def rebuild(cases: Path, mirrors: Path, only: str | None) -> int:
    """Rebuild one cases file's diffs and trees; return how many cases failed."""
    base = cases.resolve().parent
    failed = 0
    for line in cases.read_text().splitlines():
        if not line.strip():
            continue
        case = json.loads(line)
        if only and case["id"] != only:
            continue
        try:
            directory = git_dir(mirrors, case["repo"])
            diff = base / case["diff"]
            diff.parent.mkdir(parents=True, exist_ok=True)
            diff.write_bytes(diff_of(directory, case["commit"]))
            if case.get("tree"):
                write_tree(directory, case["commit"], base / case["tree"])
        except (SystemExit, subprocess.CalledProcessError) as exc:
            failed += 1
            print(f"{case['id']}: not rebuilt ({exc})", file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
