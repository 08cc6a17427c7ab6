"""Keep an opt-in, private record of model tasks, so ``cibot replay`` can rerun them elsewhere.

Capture is off unless ``CIBOT_CAPTURE_DIR`` names a directory. When it is on, each model
call a job makes leaves one JSON file, ``<dir>/<task>/<time>-<key>-<id>.json``, holding:

- ``inputs``: the job by reference only: repo, PR number, head SHA, installation, task,
  and the tier and model that answered (never a token, never the raw diff);
- ``request``: the prompt messages with secrets redacted (``workers.redaction``, applied
  here again whatever the tier was) and the reply's JSON schema;
- ``check``: what the job's validator needs to judge another reply, derived from the
  gathered inputs: changed paths (summary), changed line numbers without their text
  (review), the trimmed failed-job logs the prompt showed, redacted (ci), the test file
  and the changed lines (tests), the detected upgrades and paths (deps);
- ``reply`` (redacted) and ``outcome``: validated or not, tier, model, tokens, cost,
  latency, calls and fallbacks; ``acceptance`` once the PR tells (see ``accept``).

Files are 0600 in 0700 directories, written atomically (a temporary file, then a
rename), and removed once older than ``CIBOT_CAPTURE_DAYS`` days (14 by default) on every
write and by ``prune``. Nothing here opens a network connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.kernel.errors import CibotError, ConfigError
from bot.kernel.jobs import MODEL_TASKS, JobRef
from bot.kernel.settings import Settings
from policies.evidence import Evidence
from policies.model import Policy
from workers.github import FileInfo, PullInfo
from workers.jobs.contract import Gathered, JobState
from workers.redaction import redact

log = logging.getLogger("cibot.capture")

VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
STAMP = "%Y%m%dT%H%M%S%fZ"
STALE_TMP = timedelta(hours=1)  # a temporary file this old was left by a crashed write
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Captured:
    """Hold one captured task as loaded from its file."""

    path: Path
    data: Mapping[str, Any]

    @property
    def task(self) -> str:
        """Return the task name (summary, review, ...)."""
        return str(self.data["inputs"]["task"])

    @property
    def private_only(self) -> bool:
        """Tell whether the job's data must stay on private endpoints."""
        return bool(self.data.get("private_only"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Return the redacted prompt messages."""
        return [dict(m) for m in self.data["request"]["messages"]]

    @property
    def schema(self) -> dict[str, Any] | None:
        """Return the reply's JSON schema, or None for a free-text task."""
        schema = self.data["request"].get("schema")
        return dict(schema) if isinstance(schema, Mapping) else None

    @property
    def check(self) -> Mapping[str, Any]:
        """Return what the job's validator needs (see ``check_context``)."""
        check = self.data.get("check")
        return check if isinstance(check, Mapping) else {}

    @property
    def acceptance(self) -> Mapping[str, Any] | None:
        """Return what the PR said of the captured reply, when known."""
        value = self.data.get("acceptance")
        return value if isinstance(value, Mapping) else None

    @property
    def reply_data(self) -> Any:
        """Return the captured reply's parsed data (None when it had none)."""
        reply = self.data.get("reply")
        return reply.get("data") if isinstance(reply, Mapping) else None


class Capture:
    """Write, annotate, load and prune captured tasks under one private directory."""

    def __init__(self, root: Path, *, days: int, clock: Clock = lambda: datetime.now(UTC)) -> None:
        """Keep the directory and the retention; the directory is made on first write."""
        if days < 1:
            raise ConfigError("capture retention must be 1 day or more", key="CIBOT_CAPTURE_DAYS")
        self.root = root
        self.days = days
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> Capture | None:
        """Return the capture store the settings ask for, or None when capture is off."""
        if settings.capture_dir is None:
            return None
        return cls(settings.capture_dir, days=settings.capture_days)

    # -- writing ------------------------------------------------------------------------

    def record(
        self,
        ref: JobRef,
        task: str,
        messages: Sequence[Mapping[str, Any]],
        reply_text: str | None,
        data: Any,
        outcome: Mapping[str, Any],
        *,
        private_only: bool,
        schema: Mapping[str, Any] | None = None,
        check: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write one captured task (redacted) and prune what is past retention; return its path."""
        counts: Counter[str] = Counter()
        now = self.clock()
        body = {
            "version": VERSION,
            "captured_at": now.isoformat(),
            "private_only": private_only,
            "inputs": _inputs(ref, task, outcome),
            "request": {
                "messages": [_redacted_message(m, counts) for m in messages],
                "schema": dict(schema) if schema is not None else None,
            },
            "check": _scrub(dict(check or {}), counts),
            "reply": {
                "text": _scrub(reply_text, counts) if reply_text is not None else None,
                "data": _scrub(data, counts),
            },
            "outcome": dict(outcome),
            "redactions": dict(sorted(counts.items())),
            "acceptance": None,
        }
        folder = self._folder(task)
        name = f"{now.strftime(STAMP)}-{pr_key(ref.repo, ref.pr_number)}-{secrets.token_hex(4)}"
        path = folder / f"{name}.json"
        write_private(path, body)
        self.prune()
        return path

    def accept(
        self,
        *,
        repo: str,
        pr_number: int,
        task: str,
        accepted: bool,
        signal: str,
        findings: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Note on a PR's captured tasks what its people did with the reply; return how many."""
        folder = self.root / task
        if not folder.is_dir():
            return 0
        updated = 0
        for path in sorted(folder.glob(f"*-{pr_key(repo, pr_number)}-*.json")):
            body = _read(path)
            if body is None or body["inputs"].get("repo") != repo:
                continue
            body["acceptance"] = {
                "accepted": accepted,
                "signal": signal,
                "at": self.clock().isoformat(),
                "findings": [dict(f) for f in findings or ()],
            }
            write_private(path, body)
            updated += 1
        return updated

    def prune(self) -> int:
        """Remove captured tasks older than the retention (and stale temporary files)."""
        if not self.root.is_dir():
            return 0
        cutoff = self.clock() - timedelta(days=self.days)
        removed = 0
        for folder in self._task_folders():
            for path in folder.iterdir():
                if _expired(path, cutoff, self.clock()):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
        return removed

    # -- reading ------------------------------------------------------------------------

    def load(
        self, *, tasks: Iterable[str] | None = None, last: int | None = None
    ) -> list[Captured]:
        """Return captured tasks within retention, oldest first; ``last`` keeps the newest N."""
        wanted = set(tasks) if tasks is not None else None
        cutoff = self.clock() - timedelta(days=self.days)
        found: list[tuple[str, Captured]] = []
        for folder in self._task_folders():
            if wanted is not None and folder.name not in wanted:
                continue
            for path in folder.glob("*.json"):
                when = stamp_of(path)
                body = _read(path) if when is not None and when >= cutoff else None
                if body is not None:
                    found.append((path.name, Captured(path=path, data=body)))
        found.sort(key=lambda item: item[0])
        chosen = [c for _, c in found]
        return chosen[-last:] if last else chosen

    # -- helpers ------------------------------------------------------------------------

    def _folder(self, task: str) -> Path:
        """Return the task's private folder, making it (and the root) 0700."""
        if task not in MODEL_TASKS:
            raise ValueError(f"no capture folder for task {task!r}")
        folder = self.root / task
        for where in (self.root, folder):
            where.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(where, DIR_MODE)  # mkdir's mode is narrowed by the umask, never widened
        return folder

    def _task_folders(self) -> list[Path]:
        """Return the existing per-task folders."""
        if not self.root.is_dir():
            return []
        return [self.root / t for t in MODEL_TASKS if (self.root / t).is_dir()]


def pr_key(repo: str, pr_number: int | None) -> str:
    """Return the short digest that names a PR in file names (no repo name on disk)."""
    return hashlib.sha256(f"{repo}#{pr_number}".encode()).hexdigest()[:12]


def stamp_of(path: Path) -> datetime | None:
    """Return the capture time a file's name starts with, or None for a foreign file."""
    try:
        return datetime.strptime(path.name.split("-", 1)[0], STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def write_private(path: Path, body: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), FILE_MODE)
            json.dump(body, out, ensure_ascii=False, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _expired(path: Path, cutoff: datetime, now: datetime) -> bool:
    """Tell whether a file in a task folder is past retention (or a stale temporary file)."""
    if path.name.startswith(".") and path.name.endswith(".tmp"):
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return modified < now - STALE_TMP
    when = stamp_of(path)
    return when is not None and when < cutoff


def _read(path: Path) -> dict[str, Any] | None:
    """Read one capture file, or None (logged) when it is unreadable or not a capture."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("capture file unreadable", extra={"file": path.name, "error": str(exc)})
        return None
    ok = isinstance(body, dict) and isinstance(body.get("inputs"), dict) and "request" in body
    return body if ok else None


def _inputs(ref: JobRef, task: str, outcome: Mapping[str, Any]) -> dict[str, Any]:
    """Return the job's inputs by reference: identifiers, tier and model only."""
    return {
        "repo": ref.repo,
        "pr_number": ref.pr_number,
        "head_sha": ref.head_sha,
        "installation_id": ref.installation_id,
        "delivery_id": ref.delivery_id,
        "task": task,
        "tier": outcome.get("tier", ""),
        "model": outcome.get("model", ""),
    }


def _redacted_message(message: Mapping[str, Any], counts: Counter[str]) -> dict[str, Any]:
    """Return a message with its text redacted, counting what was removed."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    else:
        text = str(content or "")
    return {"role": str(message.get("role", "user")), "content": _scrub(text, counts)}


def _scrub(value: Any, counts: Counter[str]) -> Any:
    """Redact every string inside a JSON-like value."""
    if isinstance(value, str):
        result = redact(value)
        counts.update(result.counts)
        return result.text
    if isinstance(value, Mapping):
        return {str(k): _scrub(v, counts) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, counts) for v in value]
    return value


# ---- what a validator needs, and back ---------------------------------------------------------


def check_context(task: str, gathered: Gathered[Any]) -> dict[str, Any]:
    """Derive from a job's gathered inputs what its validator needs to judge another reply."""
    builder = CONTEXT_BUILDERS.get(task)
    return builder(gathered) if builder is not None else {}


def _summary_context(gathered: Gathered[Any]) -> dict[str, Any]:
    """Keep the changed paths a walkthrough may name."""
    paths = {f.path for f in gathered.files} | {c.path for c in gathered.evidence.files}
    return {"paths": sorted(paths)}


def _review_context(gathered: Gathered[Any]) -> dict[str, Any]:
    """Keep each hunk's line numbers and kinds, without the lines' text."""
    return {
        "min_severity": gathered.policy.review.min_severity,
        "hunks": {
            path: [[[d.kind, d.old, d.new] for d in hunk] for hunk in file_hunks]
            for path, file_hunks in gathered.state.hunks.items()
        },
    }


def _ci_context(gathered: Gathered[Any]) -> dict[str, Any]:
    """Keep the failed jobs' names and the trimmed logs the prompt showed."""
    jobs = gathered.state.jobs
    return {"jobs": [{"name": j.name, "log": j.log, "missing": j.missing} for j in jobs]}


def _tests_context(gathered: Gathered[Any]) -> dict[str, Any]:
    """Keep where the test module goes and the changed lines it should run."""
    from workers.jobs.tests import changed_lines

    state = gathered.state
    changed = {path: sorted(lines) for path, lines in changed_lines(state.targets).items()}
    return {"test_path": state.test_path, "changed": changed}


def _deps_context(gathered: Gathered[Any]) -> dict[str, Any]:
    """Keep the detected upgrades (versions, kinds, sites) and the paths a reply may name."""
    survey = gathered.state
    return {
        "changed": list(survey.changed),
        "upgrades": [
            {
                "bump": dataclasses.asdict(u.bump),
                "move": list(u.move) if u.move else None,
                "sites": [dataclasses.asdict(b) for b in u.sites],
                "affected": list(u.affected),
            }
            for u in survey.upgrades
        ],
    }


CONTEXT_BUILDERS: dict[str, Callable[[Gathered[Any]], dict[str, Any]]] = {
    "summary": _summary_context,
    "review": _review_context,
    "ci": _ci_context,
    "tests": _tests_context,
    "deps": _deps_context,
}


def gathered_for(captured: Captured, policy: Policy) -> Gathered[Any]:
    """Rebuild the part of a job's Gathered its validator reads, from a capture's check."""
    check, task = captured.check, captured.task
    state = JobState()
    files: tuple[FileInfo, ...] = ()
    if task == "summary":
        files = tuple(FileInfo(p, None, "modified", 0, 0, None) for p in check.get("paths", []))
    elif task == "review":
        state = _hunks(check.get("hunks", {}))
        severity = check.get("min_severity", policy.review.min_severity)
        review = policy.review.model_copy(update={"min_severity": severity})
        policy = policy.model_copy(update={"review": review})
    elif task == "ci":
        state = _failed_jobs(check.get("jobs", []))
    elif task == "deps":
        state = _survey(check)
    return Gathered(
        pull=_pull(captured),
        diff="",
        evidence=Evidence(files=()),
        policy=policy,
        files=files,
        state=state,
    )


def _pull(captured: Captured) -> PullInfo:
    """Stand in for the captured PR: its number and head (the validators read no more)."""
    inputs = captured.data["inputs"]
    return PullInfo(
        number=int(inputs.get("pr_number") or 0),
        title="",
        body="",
        author="",
        author_is_bot=False,
        draft=False,
        state="open",
        merged=False,
        head_sha=str(inputs.get("head_sha", "")),
        head_ref="",
        base_ref="",
        base_sha="",
        labels=(),
        default_branch="",
    )


def _hunks(data: Mapping[str, Any]) -> JobState:
    """Rebuild numbered hunks (text left empty: placement reads only numbers and kinds)."""
    from workers.jobs.review import DiffLine, ReviewState

    return ReviewState(
        {
            path: tuple(tuple(DiffLine(str(k), int(o), int(n), "") for k, o, n in h) for h in hunks)
            for path, hunks in data.items()
        }
    )


def _failed_jobs(jobs: Iterable[Mapping[str, Any]]) -> JobState:
    """Rebuild the failed CI jobs as the ci validator reads them."""
    from workers.jobs.ci import CiState, FailedJob

    failed = tuple(
        FailedJob(name=str(j["name"]), steps=(), log=str(j["log"]), missing=str(j["missing"]))
        for j in jobs
    )
    return CiState(jobs=failed, more=(), head_sha="")


def _survey(check: Mapping[str, Any]) -> JobState:
    """Rebuild the dependency survey as the deps validator reads it."""
    from policies.deps import Bump
    from workers.jobs.deps import Survey, Upgrade

    upgrades = tuple(
        Upgrade(
            bump=Bump(**u["bump"]),
            move=tuple(u["move"]) if u.get("move") else None,
            sites=tuple(Bump(**b) for b in u.get("sites", [])),
            importers=tuple(u.get("affected", [])),
        )
        for u in check.get("upgrades", [])
    )
    return Survey(upgrades=upgrades, scope="", changed=tuple(check.get("changed", [])))


# ---- the pipeline's hook ----------------------------------------------------------------------


def wrap(
    capture: Capture | None,
    complete: Callable[..., Any],
    *,
    ref: JobRef,
    gathered: Any,
    private_only: bool,
) -> Callable[..., Any]:
    """Return ``complete`` recording every request it is given (unchanged when capture is off).

    A failed capture only logs: it never fails the job it watches.
    """
    if capture is None:
        return complete
    store = capture
    context: dict[str, Any] = {}

    def captured(tier: str, request: Any, reason: str = "") -> Any:
        """Complete the request, then capture it with its outcome (also when it failed)."""
        if not context:
            context["check"] = _safely(lambda: check_context(ref.task, gathered), {})
        try:
            completion = complete(tier, request, reason)
        except CibotError as exc:
            _keep(store, ref, request, None, None, failed_outcome(tier, exc), private_only, context)
            raise
        outcome = completion_outcome(completion)
        _keep(store, ref, request, completion.text, completion.data, outcome, private_only, context)
        return completion

    return captured


def completion_outcome(completion: Any) -> dict[str, Any]:
    """Summarise a validated completion: who served it, its tokens, cost and latency."""
    calls = [c for c in completion.calls if c.outcome != "skipped"]
    return {
        "validated": True,
        "tier": completion.tier,
        "model": completion.model,
        "cost_usd": sum(float(c.cost_usd) for c in calls),
        "prompt_tokens": sum(int(c.prompt_tokens) for c in calls),
        "completion_tokens": sum(int(c.completion_tokens) for c in calls),
        "latency_s": sum(float(c.latency_s) for c in calls),
        "calls": len(calls),
        "fallbacks": int(completion.fallbacks),
        "error": "",
    }


def failed_outcome(tier: str, exc: Exception) -> dict[str, Any]:
    """Summarise a request that ended without a usable reply."""
    return {"validated": False, "tier": tier, "model": "", "error": type(exc).__name__}


def _keep(
    store: Capture,
    ref: JobRef,
    request: Any,
    text: str | None,
    data: Any,
    outcome: Mapping[str, Any],
    private_only: bool,
    context: Mapping[str, Any],
) -> None:
    """Record one request, logging rather than raising when the store fails."""
    try:
        store.record(
            ref,
            ref.task,
            request.messages,
            text,
            data,
            outcome,
            private_only=private_only,
            schema=request.schema,
            check=context.get("check"),
        )
    except (OSError, ValueError, TypeError) as exc:
        log.warning(
            "capture not written",
            extra={
                "delivery_id": ref.delivery_id,
                "installation_id": ref.installation_id,
                "task": ref.task,
                "tier": outcome.get("tier", ""),
                "error": str(exc),
            },
        )


def _safely(build: Callable[[], dict[str, Any]], default: dict[str, Any]) -> dict[str, Any]:
    """Build a capture's check context; an odd Gathered leaves it empty rather than fail."""
    try:
        return build()
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        log.warning("capture check context not built", extra={"error": str(exc)})
        return default
