"""State the contract every model job module follows, and the types it trades in.

A job module (``workers.jobs.summary`` is the model) gathers what it needs from GitHub,
packs a prompt for the decided tier, validates the reply, renders a payload and publishes
it. The pipeline drives those steps through ``JobModule`` (``workers.jobs.registry`` lists
the modules); the module never sees Redis, Celery or the ledger, only the ports below.

What a job gathered is a ``Gathered``: the PR, its diff and files, the routing evidence, the
merged policy and the job's own frozen ``JobState``. ``dump`` writes it as JSON and ``load``
reads it back equal, so dispatch gathers once and run_job reuses it (a CI log is downloaded
once per job). It is never pickled: stored text must not be able to run code. ``load``
raises ``StaleGathered`` on text another version wrote, so the caller can gather again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import secrets
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, Union, cast

from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

from bot.kernel.jobs import JobRef
from policies.evidence import Evidence, evidence_from_diff
from policies.model import Policy
from policies.routing import Decision
from policies.services import ServiceMap
from workers.github import (
    CheckRunInfo,
    CommentInfo,
    FileInfo,
    JobInfo,
    LineCommentInfo,
    PullInfo,
    ReviewComment,
    ReviewCommentInfo,
)

if TYPE_CHECKING:
    from workers.llm import Completion

# Bump when a state's meaning changes while its shape stays; a change of shape is caught anyway.
FORMAT = 1


# The user message of a job that shows the PR itself (summary, review): everything the PR's
# author wrote sits inside nonce-tagged delimiters the system prompt says never to obey.
PR_PROMPT = """\
<untrusted-{tag}>
Title: {title}

Description:
{description}

Diff{note}:
{diff}
</untrusted-{tag}>
"""


class GitHubPort(Protocol):
    """The workers.github.GitHubClient methods the pipeline and the jobs call."""

    @property
    def base_url(self) -> str:
        """Return the REST API's base URL (github.com's, or a GitHub Enterprise host's)."""

    def clone_url(self, repo: str) -> str:
        """Return an HTTPS git URL carrying the live token (a secret: keep it out of logs)."""

    def pull(self, repo: str, number: int) -> PullInfo:
        """Return the pull request."""

    def pull_diff(self, repo: str, number: int) -> str:
        """Return the PR's unified diff."""

    def pull_files(self, repo: str, number: int) -> list[FileInfo]:
        """Return the PR's changed files."""

    def pull_commits(self, repo: str, number: int) -> list[str]:
        """Return the SHAs of the PR's commits."""

    def check_runs(self, repo: str, sha: str) -> list[CheckRunInfo]:
        """Return every check run on a commit."""

    def workflow_jobs(self, repo: str, run_id: int) -> list[JobInfo]:
        """Return every job of a workflow run."""

    def job_log(self, repo: str, job_id: int) -> Iterator[bytes]:
        """Stream one Actions job's log."""

    def default_branch_file(self, repo: str, path: str) -> str | None:
        """Return a file from the default branch, or None."""

    def tree_paths(self, repo: str, sha: str) -> list[str]:
        """Return every file path of a commit's tree."""

    def file_at(self, repo: str, path: str, *, ref: str) -> str | None:
        """Return a file's text at ``ref``, or None when it is absent."""

    def find_comment(self, repo: str, number: int, marker: str) -> CommentInfo | None:
        """Return the bot's issue comment carrying ``marker``, or None."""

    def comment_reactions(self, repo: str, comment_id: int) -> dict[str, int]:
        """Return reaction counts on an issue comment."""

    def review_comments(self, repo: str, number: int) -> list[ReviewCommentInfo]:
        """Return the PR's review line comments."""

    def line_comments(self, repo: str, number: int) -> list[LineCommentInfo]:
        """Return the PR's review line comments with their threads and reactions."""

    def branch_head(self, repo: str, branch: str) -> str | None:
        """Return the SHA a branch points at, or None."""

    def upsert_comment(self, repo: str, number: int, *, marker: str, body: str) -> int:
        """Edit the comment carrying ``marker`` or create it; return its id."""

    def add_reaction(self, repo: str, *, comment_id: int, content: str) -> None:
        """React to an issue comment (say, "eyes" on a command)."""

    def permission(self, repo: str, user: str) -> str:
        """Return a user's permission level on the repo (admin, write, read...)."""

    def create_review(
        self,
        repo: str,
        number: int,
        *,
        commit_sha: str,
        body: str,
        comments: Sequence[ReviewComment],
        event: str = "COMMENT",
    ) -> int:
        """Post one review with all its line comments; return its id."""

    def upsert_check_run(
        self,
        repo: str,
        *,
        head_sha: str,
        name: str,
        status: str,
        conclusion: str | None,
        title: str,
        summary: str,
        text: str = "",
        external_id: str = "",
    ) -> int:
        """Update or create this App's check run of that name; return its id."""

    def push_files(
        self, repo: str, *, branch: str, base_sha: str, files: Mapping[str, str], message: str
    ) -> str:
        """Point ``branch`` at one new commit on ``base_sha``; return its SHA."""

    def close(self) -> None:
        """Release connections."""


class ModelPort(Protocol):
    """The part of workers.llm.ModelClient the pipeline uses."""

    def complete(
        self,
        tier: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        validate: Callable[[Any], None] | None = None,
        private_only: bool,
        installation_id: int,
        task: str = "",
        delivery_id: str = "",
        reason: str | None = None,
    ) -> Any:
        """Return a Completion (.text, .data, .tier, .model, .calls, .fallbacks, ...)."""


@dataclass(frozen=True)
class JobState:
    """Hold a job's own gathered facts; this base holds none (the summary needs only the PR).

    A job's state extends it with frozen, JSON-safe fields (see ``dump``). A field left out
    of equality (``compare=False``) is process-local, such as a checkout: it is not stored,
    and ``reopen`` rebuilds it after a ``load``.
    """

    def texts(self) -> tuple[str, ...]:
        """Return the free text this state read from the PR beyond its diff, title and body."""
        return ()

    def reopen(self, github: GitHubPort, ref: JobRef, gathered: Gathered[Any]) -> None:
        """Reacquire what the stored JSON cannot carry; nothing here."""


S = TypeVar("S", bound=JobState, default=Any, covariant=True)
T = TypeVar("T", bound=JobState)


@dataclass(frozen=True, kw_only=True)
class Gathered(Generic[S]):
    """Hold what a job read from GitHub: the PR, its diff, the evidence and the job's state."""

    pull: PullInfo
    diff: str
    evidence: Evidence
    policy: Policy
    state: S
    files: tuple[FileInfo, ...] = ()

    def texts(self) -> list[str]:
        """Return every text the job read from the PR (its diff, title, body, logs, notes)."""
        patches = [f.patch for f in self.files if f.patch]
        return [self.diff, self.pull.title, self.pull.body, *patches, *self.state.texts()]

    def with_state(self, state: T) -> Gathered[T]:
        """Return the same PR, diff, evidence and policy holding another job's state."""
        return Gathered(
            pull=self.pull,
            diff=self.diff,
            evidence=self.evidence,
            policy=self.policy,
            files=self.files,
            state=state,
        )

    def reopen(self, github: GitHubPort, ref: JobRef) -> None:
        """Reacquire what a loaded Gathered cannot carry (the tests job's checkout)."""
        self.state.reopen(github, ref, self)


def gather_pull(
    github: GitHubPort, ref: JobRef, policy: Policy, state: Callable[[str], T]
) -> Gathered[T]:
    """Read the PR, its diff and its files, build the routing evidence and the state of the diff."""
    number = ref.pr()
    pull = github.pull(ref.repo, number)
    diff = github.pull_diff(ref.repo, number)
    files = tuple(github.pull_files(ref.repo, number))
    evidence = evidence_from_diff(diff, repo=ref.repo, labels=frozenset(pull.labels))
    return Gathered(
        pull=pull, diff=diff, evidence=evidence, policy=policy, files=files, state=state(diff)
    )


@dataclass(frozen=True)
class ModelRequest:
    """Hold one model request: messages, an optional JSON schema and a validator."""

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None = None
    validate: Callable[[Any], None] | None = None


class Complete(Protocol):
    """Complete one request on one tier (the pipeline binds the job's ids and recorder)."""

    def __call__(self, tier: str, request: ModelRequest, reason: str = "") -> Completion:
        """Return the validated completion; ``reason`` names why this tier was chosen."""


class JobModule(Protocol):
    """The shape of a model job module in ``workers/jobs/`` (see workers.jobs.summary)."""

    MARKER: str
    SUPERSEDABLE: bool

    @property
    def STATE(self) -> type[JobState]:
        """Return the class of the job's state, which ``load`` needs."""

    def gather(self, github: GitHubPort, ref: JobRef, policy: Policy) -> Gathered[Any]:
        """Read the PR and build the routing evidence and the job's state."""

    def request(self, gathered: Gathered[Any], decision: Decision) -> ModelRequest:
        """Pack the (first) prompt for the decided tier."""

    def compute(
        self, gathered: Gathered[Any], decision: Decision, complete: Complete
    ) -> Completion:
        """Make the job's model calls (one request, or the job's own rounds); return the reply."""

    def validate(self, gathered: Gathered[Any], data: Any) -> None:
        """Raise ValueError when the reply is not usable (unanchored, empty)."""

    def render(
        self, gathered: Gathered[Any], decision: Decision, completion: Completion, cost_usd: float
    ) -> dict[str, Any]:
        """Return the JSON-safe payload to publish."""

    def publish(self, github: GitHubPort, ref: JobRef, payload: Mapping[str, Any]) -> int:
        """Post the payload (upsert by marker); return the posted object's id."""


def log_fields(ref: JobRef, tier: str = "", **extra: Any) -> dict[str, Any]:
    """Return the structured log fields every line carries."""
    return {
        "delivery_id": ref.delivery_id,
        "installation_id": ref.installation_id,
        "task": ref.task,
        "tier": tier,
        "repo": ref.repo,
        "pr": ref.pr_number,
        **extra,
    }


def nonce() -> str:
    """Return an unguessable tag for delimiting untrusted text in prompts."""
    return secrets.token_hex(6)


# ---- gather once: Gathered as JSON ------------------------------------------------------------


class StaleGathered(ValueError):
    """Refuse stored text that is not a Gathered this build reads; gather again instead."""


def dump(gathered: Gathered[Any]) -> str:
    """Return what a job gathered as JSON text; ``load`` reads it back equal."""
    body = {
        "format": FORMAT,
        "state": _name(type(gathered.state)),
        "gathered": _encode(gathered),
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def load(text: str, state: type[T]) -> Gathered[T]:
    """Read back what ``dump`` wrote for a job whose state is ``state``; else StaleGathered."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise StaleGathered(f"the stored gathered input is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.keys() != {"format", "state", "gathered"}:
        raise StaleGathered("the stored gathered input is not one this build wrote")
    if body["format"] != FORMAT or body["state"] != _name(state):
        raise StaleGathered(
            f"the stored gathered input is format {body['format']!r} of {body['state']!r}; "
            f"this build reads format {FORMAT} of {_name(state)!r}"
        )
    read = _dataclass(Gathered, {**_hints(Gathered), "state": state})
    try:
        return cast("Gathered[T]", read(body["gathered"]))
    except _Misfit as exc:
        where = "gathered" + "".join(reversed(exc.at))
        raise StaleGathered(f"{where}: {exc}") from None


def _name(cls: type[Any]) -> str:
    """Return a class's dotted name, as the stored text names the state."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode(value: Any) -> Any:
    """Turn a frozen value into JSON data: dataclasses by their compared fields."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _encode(getattr(value, name)) for name in _stored(type(value))}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {_key(k): _encode(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted((_encode(v) for v in value), key=json.dumps)
    raise TypeError(f"a {type(value).__name__} cannot be stored in a Gathered's JSON")


def _key(key: Any) -> str:
    """Return a mapping key as JSON keeps it (only text keys round-trip)."""
    if not isinstance(key, str):
        raise TypeError(f"a mapping key {key!r} is not text, so it cannot round-trip JSON")
    return key


@functools.cache
def _stored(cls: type[Any]) -> tuple[str, ...]:
    """Return the names of the fields a dataclass stores: those equality compares."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.compare)


# Names policies.evidence imports for type checkers only, which its hints still spell.
_HINT_NAMES: dict[str, Any] = {"ServiceMap": ServiceMap}

Read = Callable[[Any], Any]


class _Misfit(Exception):
    """Say why stored data does not fit its type; ``at`` gathers where, innermost first."""

    def __init__(self, why: str) -> None:
        """Keep the reason; the readers around add where it happened."""
        super().__init__(why)
        self.at: list[str] = []


def _wrong(data: Any, wanted: str) -> _Misfit:
    """Say what was wanted and what was found instead."""
    return _Misfit(f"expected {wanted}, found {type(data).__name__}")


def _hints(cls: type[Any]) -> dict[str, Any]:
    """Return a dataclass's field types, resolved."""
    return typing.get_type_hints(cls, localns=_HINT_NAMES)


@functools.cache
def _reader(kind: Any) -> Read:
    """Return the function that rebuilds a ``kind`` from JSON data (made once per type)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union or origin is types.UnionType:
        return _optional(args)
    if origin is tuple:
        return _tuple(args)
    if origin in (frozenset, set):
        each = _array(args[0])
        return lambda data: frozenset(each(data))
    if origin in (dict, Mapping):
        return _mapping(_reader(args[1]))
    if kind in (bool, int, float, str):
        return _scalar(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return functools.partial(_model, kind)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _dataclass(kind, _hints(kind))
    raise TypeError(f"a {kind!r} field cannot be read from a Gathered's JSON")


# json.loads makes exactly these types (never a subclass, and a bool is never an int).
EXACT = (bool, int, str)


def _scalar(kind: type[Any]) -> Read:
    """Read a bool, an int, a float (an int is one too) or a string, and nothing else."""

    def exact(data: Any) -> Any:
        if type(data) is not kind:
            raise _wrong(data, kind.__name__)
        return data

    def number(data: Any) -> float:
        if type(data) not in (int, float):
            raise _wrong(data, "a number")
        return float(data)

    return number if kind is float else exact


def _optional(options: tuple[Any, ...]) -> Read:
    """Read null or the one other type of an ``X | None`` (the only unions states hold)."""
    kinds = [k for k in options if k is not type(None)]
    if len(kinds) != 1:
        raise TypeError(f"a union of {kinds} cannot be read from a Gathered's JSON")
    inner = _reader(kinds[0])
    return lambda data: None if data is None else inner(data)


def _array(kind: Any) -> Callable[[Any], list[Any]]:
    """Read a JSON array item by item, saying which item misfits."""
    read, exact = _reader(kind), kind in EXACT

    def each(data: Any) -> list[Any]:
        if not isinstance(data, list):
            raise _wrong(data, "an array")
        if exact and all(type(item) is kind for item in data):
            return data
        try:
            return [read(item) for item in data]
        except _Misfit as exc:
            exc.at.append(f"[{next(n for n, v in enumerate(data) if _refuses(read, v))}]")
            raise

    return each


def _refuses(read: Read, data: Any) -> bool:
    """Tell whether ``read`` refuses ``data`` (on the error path, to say where it failed)."""
    try:
        read(data)
    except _Misfit:
        return True
    return False


def _tuple(args: tuple[Any, ...]) -> Read:
    """Read a ``tuple[X, ...]`` or a fixed ``tuple[X, Y]`` from a JSON array."""
    if len(args) == 2 and args[1] is Ellipsis:
        each = _array(args[0])
        return lambda data: tuple(each(data))
    reads, exact = [_reader(kind) for kind in args], all(kind in EXACT for kind in args)

    def fixed(data: Any) -> tuple[Any, ...]:
        if not isinstance(data, list) or len(data) != len(reads):
            raise _wrong(data, f"an array of {len(reads)}")
        if exact and all(type(v) is k for v, k in zip(data, args, strict=True)):
            return tuple(data)
        return tuple([read(item) for read, item in zip(reads, data, strict=True)])

    return fixed


def _mapping(read: Read) -> Read:
    """Read a mapping with text keys from a JSON object."""

    def pairs(data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise _wrong(data, "an object")
        return _members(dict.fromkeys(data, read), data)

    return pairs


def _members(reads: Mapping[str, Read], data: Mapping[str, Any]) -> dict[str, Any]:
    """Read each member of a JSON object with its reader, saying which member misfits."""
    try:
        return {key: reads[key](value) for key, value in data.items()}
    except _Misfit as exc:
        exc.at.append("." + next(k for k, v in data.items() if _refuses(reads[k], v)))
        raise


def _model(kind: type[BaseModel], data: Any) -> BaseModel:
    """Validate a pydantic model (the policy) from its JSON dump."""
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise _Misfit(f"{exc.error_count()} fields do not fit {kind.__name__}: {exc}") from None


def _dataclass(kind: Any, hints: Mapping[str, Any]) -> Read:
    """Read a dataclass from an object holding exactly its stored fields."""
    reads = {name: _reader(hints[name]) for name in _stored(kind)}

    def build(data: Any) -> Any:
        if not isinstance(data, dict):
            raise _wrong(data, f"a {kind.__name__} object")
        if data.keys() != reads.keys():
            odd = sorted(data.keys() ^ reads.keys())
            raise _Misfit(f"the fields {odd} differ from {kind.__name__}'s")
        return kind(**_members(reads, data))

    return build
