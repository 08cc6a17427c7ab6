"""Build routing evidence from a unified diff plus optional CI, test and history facts."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from bot.kernel.errors import InputError

if TYPE_CHECKING:
    from policies.services import ServiceMap

LOCK_FILES = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "poetry.lock",
        "uv.lock",
        "Cargo.lock",
        "go.sum",
        "Pipfile.lock",
        "composer.lock",
        "Gemfile.lock",
        "requirements.lock",
    }
)
GENERATED = re.compile(
    r"(\.min\.(js|css)|\.map|_pb2(_grpc)?\.pyi?|\.pb\.go|\.generated\.\w+|\.snap)$"
    r"|(^|/)(vendor|dist|node_modules|third_party)/"
)


def file_kind(path: str) -> str | None:
    """Say whether a path is a lock file ("lock_file"), generated output ("generated"), or neither."""
    if path.rsplit("/", 1)[-1] in LOCK_FILES:
        return "lock_file"
    return "generated" if GENERATED.search(path) else None


DIFF_START = re.compile(r"^(diff --git |--- |\+\+\+ |@@ )", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Hunk:
    """Keep one hunk's lines in order: (sign, text), sign one of ' ', '+', '-'."""

    source_start: int
    target_start: int
    lines: tuple[tuple[str, str], ...]
    section: str = ""  # git's enclosing-scope line after the second @@ (a def, a class)


@dataclass(frozen=True, slots=True)
class FileChange:
    """Describe one file's change: its paths, status and the lines it adds and removes."""

    path: str
    old_path: str | None
    status: str  # added | modified | deleted | renamed
    binary: bool
    added: tuple[tuple[int, str], ...] = ()
    removed: tuple[tuple[int, str], ...] = ()
    hunks: int = 0
    # The hunks with their context lines, for the lexer and the mechanical-change check.
    body: tuple[Hunk, ...] = ()

    @property
    def changed_lines(self) -> int:
        """Return how many lines the change adds or removes."""
        return len(self.added) + len(self.removed)

    @property
    def is_lock_or_generated(self) -> bool:
        """Tell whether the file is a lock file or generated output."""
        return file_kind(self.path) is not None


@dataclass(frozen=True)
class CiFacts:
    """Name the CI jobs that failed and the files their errors point at."""

    failed_jobs: tuple[str, ...] = ()
    failed_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class TestFacts:
    """Report how generated tests fared: failed rounds and changed-line coverage (0..1)."""

    __test__ = False  # not a pytest test class, despite the name

    failed_rounds: int = 0
    coverage: float | None = None


@dataclass(frozen=True)
class Evidence:
    """Hold everything the router may look at; built by callers, never fetched by route()."""

    files: tuple[FileChange, ...]
    repo: str = ""
    labels: frozenset[str] = frozenset()
    ci: CiFacts | None = None
    tests: TestFacts | None = None
    removed_symbols: tuple[str, ...] = ()
    packed_tokens: int = 0
    acceptance: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    frontier_spend_usd: float = 0.0
    force_tier: str | None = None
    services: ServiceMap | None = None  # the checkout's services, when there is a checkout


def decode(data: bytes | str) -> str:
    """Decode diff bytes as UTF-8, replacing undecodable bytes, and fold CRLF to LF."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return text.replace("\r\n", "\n")


def parse_diff(data: bytes | str) -> tuple[FileChange, ...]:
    """Parse a unified diff into FileChanges; raise InputError when it is not one."""
    text = decode(data)
    if not text.strip():
        raise InputError("the diff is empty: pass the output of `git diff` or a PR's .diff")
    if not DIFF_START.search(text):
        raise InputError(
            "the input is not a unified diff (no 'diff --git', '---/+++' or '@@' lines)"
        )
    try:
        patch = PatchSet(text)
    except (UnidiffParseError, ValueError) as exc:
        raise InputError(f"the input is not a valid unified diff: {exc}") from exc
    files = tuple(_file_change(patched) for patched in patch)
    if not files:
        raise InputError("the input is not a unified diff: no file changes found")
    return files


def _strip_prefix(path: str | None) -> str | None:
    """Drop git's a/ and b/ prefixes; map /dev/null to None."""
    if path is None or path == "/dev/null":
        return None
    return path[2:] if path[:2] in ("a/", "b/") else path


def _file_change(patched: object) -> FileChange:
    """Turn one unidiff PatchedFile into a FileChange."""
    pf: object = patched
    source = _strip_prefix(getattr(pf, "source_file", None))
    target = _strip_prefix(getattr(pf, "target_file", None))
    path = getattr(pf, "path", None) or target or source or ""
    status = _status(pf, source, target)
    added: list[tuple[int, str]] = []
    removed: list[tuple[int, str]] = []
    body: list[Hunk] = []
    for hunk in pf:  # type: ignore[attr-defined]
        lines: list[tuple[str, str]] = []
        for line in hunk:
            kind = line.line_type  # one attribute read, not three property calls per line
            if kind == "+":
                text = line.value.rstrip("\n")
                added.append((line.target_line_no, text))
                lines.append(("+", text))
            elif kind == "-":
                text = line.value.rstrip("\n")
                removed.append((line.source_line_no, text))
                lines.append(("-", text))
            elif kind == " ":
                lines.append((" ", line.value.rstrip("\n")))
        section = (hunk.section_header or "").strip()
        body.append(Hunk(hunk.source_start, hunk.target_start, tuple(lines), section))
    return FileChange(
        path=path,
        old_path=source if status == "renamed" else None,
        status=status,
        binary=bool(getattr(pf, "is_binary_file", False)),
        added=tuple(added),
        removed=tuple(removed),
        hunks=len(body),
        body=tuple(body),
    )


def _status(pf: object, source: str | None, target: str | None) -> str:
    """Classify a file change as added, deleted, renamed or modified."""
    if getattr(pf, "is_added_file", False) or source is None:
        return "added"
    if getattr(pf, "is_removed_file", False) or target is None:
        return "deleted"
    if getattr(pf, "is_rename", False) or (source != target):
        return "renamed"
    return "modified"


def packed_estimate(files: Iterable[FileChange], count: Callable[[str], int]) -> int:
    """Estimate the prompt tokens of the diff after packing drops what packing drops.

    Packing keeps hunks that add lines, with their context, and drops deletion-only
    hunks, lock, generated and binary files; this estimate counts what it keeps.
    """
    total = 0
    for change in files:
        if change.binary or change.is_lock_or_generated or not change.added:
            continue
        body = "\n".join(text for _, text in change.added)
        total += count(body) + count(change.path) + 8 * change.hunks
    return total


def evidence_from_diff(
    data: bytes | str,
    *,
    count: Callable[[str], int] | None = None,
    require_text: bool = True,
    **facts: object,
) -> Evidence:
    """Parse a diff and attach facts (repo, labels, ci, tests, ...) into Evidence."""
    files = parse_diff(data)
    if require_text and all(change.binary for change in files):
        raise InputError("the diff changes only binary files: there is no text to route on")
    counter = count or _estimate
    return Evidence(files=files, packed_tokens=packed_estimate(files, counter), **facts)  # type: ignore[arg-type]


def _estimate(text: str) -> int:
    """Estimate tokens at about 3.5 characters each."""
    return (len(text) * 2 + 6) // 7
