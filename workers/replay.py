"""Run ``cibot replay``: rerun captured tasks on 2 to 5 model endpoints and score them.

Each endpoint is ``[private:][LABEL=]MODEL[@BASE_URL]``:

- ``openai/gpt-5.5``: a litellm model name on its provider's own endpoint;
- ``qwen=hosted_vllm/Qwen/Qwen3-235B-A22B-Instruct-2507-FP8@http://10.0.0.7:8000/v1``: any
  OpenAI-compatible server (vLLM, SGLang, a gateway) at that base URL, labelled ``qwen``;
- ``private:`` in front (or ``--private LABEL``) marks a self-hosted endpoint. Only those
  may receive a ``private_only`` job's capture, and only they can take a task category
  onto the private tier.

Every captured prompt is sent to every endpoint through ``workers.llm.ModelClient``, the
production client (redaction before a non-private endpoint, one repair round on a private
one), concurrently within each endpoint's ``--slots``. What is scored needs no person:

- valid: the job's own validator accepts the reply, given the captured inputs;
- checks: review findings anchored to changed lines, ci evidence lines found in the
  failed job's log, summary walkthrough entries naming changed files, generated tests
  passing in the sandbox (tests; needs ``--source`` and bubblewrap, else skipped with a
  note);
- agree: when the PR accepted the captured reply, how much of it the new reply matches
  (review: accepted finding locations found again; ci: accepted evidence lines quoted
  again; other tasks: word overlap, Jaccard);
- judge: with ``--judge SPEC``, a model's 1-5 grade, named in the output;
- tokens, cost (``--price LABEL=IN,OUT`` in USD per million tokens, else the policy's
  price or rung for that model, else litellm's price map) and latency.

The score is the mean of the rates present (valid, checks, agree, judge/5). The
recommendation moves a task category to the private tier when the best private endpoint
is valid on at least ``--floor`` of at least ``--min-samples`` tasks and scores within
``--margin`` of the best endpoint; it is printed as a unified diff of the operator's
policy file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import difflib
import io
import json
import math
import os
import re
import statistics
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bot.kernel.errors import CibotError, ConfigError, InputError, InvalidOutput
from bot.kernel.settings import Settings
from policies.evidence import Evidence
from policies.loading import DEFAULT_SOURCE, default_policy_text, load_policy
from policies.model import Policy, Tier, TierPrice
from workers.capture import Capture, Captured, gathered_for

MIN_ENDPOINTS, MAX_ENDPOINTS = 2, 5
DEFAULT_SLOTS = 4
EMPTY_KEY_ENV = "CIBOT_REPLAY_EMPTY_KEY"
EMPTY_KEY = "EMPTY"  # what vLLM's docs pass to a server started without --api-key
UNUSED_TIER = Tier(models=("replay/unused",), private=False)
SPEC = re.compile(
    r"^(?P<private>private:)?(?:(?P<label>[\w.-]+)=)?(?P<model>[^@\s=]+)(?:@(?P<base>https?://\S+))?$"
)
JUDGE_PROMPT_CHARS = 12_000
REVIEW_REACH = 3  # lines a replayed finding may sit from an accepted one and still agree

JUDGE_SYSTEM = """\
You grade replies of a CI assistant. You see the task's prompt and one reply to it.
Grade how correct, specific and useful the reply is for the pull request's reviewers,
from 1 (wrong or useless) to 5 (correct and useful). Reply with only a JSON object:
{"score": <1-5>, "reason": <one sentence>}."""
JUDGE_USER = "Task: {task}\n\nPrompt:\n{prompt}\n\nReply:\n{reply}\n"
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string"},
    },
    "required": ["score", "reason"],
}

HEADER = "cibot replay: {count} captured tasks ({tasks}) on {endpoints} endpoints; judge: {judge}"
TABLE_HEAD = (
    "rank",
    "endpoint",
    "valid",
    "1st try",
    "checks",
    "agree",
    "judge",
    "tokens/task",
    "cost/task",
    "p50 s",
    "score",
)
NO_DIFF = "No policy change: no task category can move to the private tier on this evidence."
DIFF_HEAD = "Policy diff (save it and run `patch -p1 < FILE` where the policy file lives):"
DEFAULT_POLICY_NOTE = (
    "The diff is against the packaged policy: copy it, apply the diff, and point "
    "CIBOT_POLICY at the copy."
)


# ---- endpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Name one model endpoint to replay on: its label, litellm model, base URL and privacy."""

    label: str
    model: str
    api_base: str | None = None
    private: bool = False
    price: TierPrice | None = None
    key_env: str | None = None

    def describe(self) -> str:
        """Return the label with the model and privacy, for headings."""
        where = f" at {self.api_base}" if self.api_base else ""
        return f"{self.label} ({self.model}{where}{', private' if self.private else ''})"


def parse_endpoint(spec: str) -> Endpoint:
    """Parse ``[private:][LABEL=]MODEL[@BASE_URL]``; raise InputError saying the syntax."""
    match = SPEC.match(spec.strip())
    if match is None:
        raise InputError(
            f"model endpoint {spec[:80]!r} is not [private:][LABEL=]MODEL[@BASE_URL], e.g. "
            "qwen=hosted_vllm/Qwen/Qwen3-235B-A22B@http://10.0.0.7:8000/v1"
        )
    model = match["model"]
    return Endpoint(
        label=match["label"] or model,
        model=model,
        api_base=match["base"],
        private=bool(match["private"]),
    )


def endpoints_from(args: argparse.Namespace) -> list[Endpoint]:
    """Build the endpoints from --models, --private, --price and --api-key-env."""
    found = [parse_endpoint(s) for s in _list(args.models)]
    if not MIN_ENDPOINTS <= len(found) <= MAX_ENDPOINTS:
        raise InputError(
            f"--models names {len(found)} endpoint{'s' if len(found) != 1 else ''}: compare "
            f"{MIN_ENDPOINTS} to {MAX_ENDPOINTS} (3 to 5 is the usual shortlist)"
        )
    labels = [e.label for e in found]
    if len(set(labels)) != len(labels):
        raise InputError("two --models endpoints share a label: give each one LABEL=")
    private = set(_list(",".join(args.private or [])))
    prices = _pairs(args.price or [], "--price", labels)
    keys = _pairs(args.api_key_env or [], "--api-key-env", labels)
    unknown = private - set(labels)
    if unknown:
        raise InputError(f"--private names {sorted(unknown)[0]!r}, which no --models label is")
    return [
        replace(
            e,
            private=e.private or e.label in private,
            price=_price(prices[e.label]) if e.label in prices else None,
            key_env=keys.get(e.label),
        )
        for e in found
    ]


def _list(value: str | None) -> list[str]:
    """Split a comma-separated flag value."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _pairs(values: Sequence[str], flag: str, labels: Sequence[str]) -> dict[str, str]:
    """Parse repeated ``LABEL=VALUE`` flags, refusing unknown labels."""
    out: dict[str, str] = {}
    for item in values:
        label, sep, value = item.partition("=")
        if not sep or label not in labels:
            raise InputError(f"{flag} {item!r} must be LABEL=VALUE with a --models label")
        out[label] = value
    return out


def _price(value: str) -> TierPrice:
    """Parse ``IN,OUT`` USD per million tokens."""
    try:
        prompt, completion = (float(v) for v in value.split(","))
    except ValueError as exc:
        raise InputError(f"--price {value!r} must be IN,OUT in USD per million tokens") from exc
    return TierPrice(input_per_mtok=prompt, output_per_mtok=completion)


# ---- one endpoint as a one-tier policy ---------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Hold an endpoint's one-tier policy and the tier a request starts on."""

    endpoint: Endpoint
    policy: Policy
    tier: str


def target_for(endpoint: Endpoint, base: Policy, *, timeout_s: float) -> Target:
    """Build a policy whose only reachable tier is the endpoint (priced as described above)."""
    same = next((t for t in base.tiers.values() if endpoint.model in t.models), None)
    rung = same.rung if same else (base.tiers["local"].rung if endpoint.private else None)
    price = endpoint.price or (same.price if same else TierPrice())
    tier = Tier(
        models=(endpoint.model,),
        private=endpoint.private,
        api_base=endpoint.api_base,
        api_key_env=endpoint.key_env or (EMPTY_KEY_ENV if endpoint.api_base else None),
        context_window=max(t.context_window for t in base.tiers.values()),
        max_output_tokens=max(t.max_output_tokens for t in base.tiers.values()),
        timeout_s=timeout_s,
        rung=rung if endpoint.private else None,
        price=price,
    )
    # A private endpoint is the local tier (private_only keeps requests there); an external
    # one is frontier, the last tier, so nothing falls back past it.
    name = "local" if endpoint.private else "frontier"
    tiers = {"local": base.tiers["local"], "mid": UNUSED_TIER, "frontier": UNUSED_TIER, name: tier}
    policy = base.model_copy(update={"tiers": tiers})
    if not endpoint.private:
        _require_price(endpoint, tier)
    return Target(endpoint=endpoint, policy=policy, tier=name)


def _require_price(endpoint: Endpoint, tier: Tier) -> None:
    """Stop before any call when an external endpoint has no price."""
    from workers.llm import price_per_token

    try:
        price_per_token(endpoint.model, tier.price)
    except ConfigError as exc:
        raise InputError(
            f"endpoint {endpoint.label} ({endpoint.model}) has no price in litellm's price map: "
            f"give --price {endpoint.label}=IN,OUT (USD per million tokens), or mark it private"
        ) from exc


# ---- validators from the capture ----------------------------------------------------------------


@dataclass
class Checkouts:
    """Give tests captures a checkout of their head commit, from ``--source`` clones."""

    sources: Mapping[str, Path]
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cibot-replay-")))
    notes: list[str] = field(default_factory=list)
    sessions: dict[str, Any] = field(default_factory=dict)

    def session(self, captured: Captured, policy: Policy) -> Any | None:
        """Return a tests Session on the capture's head, or None (noted) when none can run."""
        from workers import sandbox

        found = sandbox.isolation()
        if not found.isolated:
            self._note(f"tests: generated tests not run: {found.note}")
            return None
        inputs = captured.data["inputs"]
        source = self.sources.get(inputs["repo"]) or self.sources.get("")
        if source is None:
            self._note(f"tests: no --source clone of {inputs['repo']}: tests not run")
            return None
        key = f"{inputs['repo']}@{inputs['head_sha']}"
        if key not in self.sessions:
            self.sessions[key] = self._open(source, captured, policy)
        return self.sessions[key]

    def _open(self, source: Path, captured: Captured, policy: Policy) -> Any | None:
        """Extract the head commit and wrap it in a Session (which removes it when dropped)."""
        from workers.jobs import tests

        root = Path(tempfile.mkdtemp(dir=self.root)) / "repo"
        root.mkdir()
        if not extract_commit(source, captured.data["inputs"]["head_sha"], root):
            self._note(
                f"tests: {captured.data['inputs']['head_sha'][:12]} is not in the --source clone"
            )
            return None
        check = captured.check
        targets = tuple(
            tests.Target(
                path=p, module="", qualname="", name="", lines=tuple(n), source="", imports=""
            )
            for p, n in check.get("changed", {}).items()
        )
        return tests.Session(
            root=root,
            targets=targets,
            test_path=str(check.get("test_path", "tests/test_cibot_replay.py")),
            evidence=Evidence(files=()),
            policy=policy,
        )

    def _note(self, text: str) -> None:
        """Keep a note once."""
        if text not in self.notes:
            self.notes.append(text)

    def close(self) -> None:
        """Remove every checkout."""
        from workers import sandbox

        for session in self.sessions.values():
            if session is not None:
                session.close()
        sandbox.remove_tree(self.root)


def extract_commit(source: Path, sha: str, dest: Path) -> bool:
    """Write the tree of ``sha`` from a local clone into ``dest``; False when it is not there."""
    ran = subprocess.run(
        ["git", "-C", str(source), "archive", "--format=tar", sha],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if ran.returncode != 0:
        return False
    with tarfile.open(fileobj=io.BytesIO(ran.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return True


def validator_for(
    captured: Captured, policy: Policy, checkouts: Checkouts
) -> tuple[Callable[[Any], None] | None, bool]:
    """Return the job's validator for a capture, and whether it ran the generated tests."""
    if captured.task == "tests":
        return _tests_validator(captured, policy, checkouts)
    job = _job(captured.task)
    if job is None:
        return None, False
    gathered = gathered_for(captured, policy)
    return (lambda data: job.validate(gathered, data)), False


def _tests_validator(
    captured: Captured, policy: Policy, checkouts: Checkouts
) -> tuple[Callable[[Any], None], bool]:
    """Run a reply's tests in the sandbox; without one, check only its shape."""
    from workers.jobs import tests

    session = checkouts.session(captured, policy)
    if session is None:
        return tests.shape_check, False

    def run(data: Any) -> None:
        done = session.attempt(data)
        if not done.passed:
            raise ValueError(f"the generated tests did not pass: {done.summary}")

    return run, True


def _job(task: str) -> Any:
    """Return a task's job module (``workers.jobs.registry``), or None for a task with none."""
    from workers.jobs.registry import job_for

    return job_for(task)


# ---- one replayed request -----------------------------------------------------------------------


@dataclass
class Run:
    """Hold one capture replayed on one endpoint: outcome, usage and scores."""

    capture: str
    task: str
    endpoint: str
    status: str  # ok, invalid, error, refused
    first_try: bool = False
    data: Any = None
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    calls: int = 0
    checks: float | None = None
    agreement: float | None = None
    judge: float | None = None


def replay_one(
    captured: Captured,
    target: Target,
    validate: Callable[[Any], None] | None,
    environ: Mapping[str, str],
) -> Run:
    """Send one captured prompt to one endpoint and record what came back."""
    from workers.llm import CallRecord, ModelClient

    run = Run(
        capture=captured.path.name, task=captured.task, endpoint=target.endpoint.label, status="ok"
    )
    if captured.private_only and not target.endpoint.private:
        run.status, run.error = "refused", "private_only capture, endpoint not marked private"
        return run
    records: list[CallRecord] = []
    seen: list[Any] = []
    client = ModelClient(target.policy, Settings(), None, recorder=records.append, environ=environ)

    def check(data: Any) -> None:
        seen.append(data)
        if validate is not None:
            validate(data)

    try:
        completion = client.complete(
            target.tier,
            captured.messages,
            schema=captured.schema,
            validate=check,
            private_only=target.endpoint.private,
            installation_id=0,
            task=captured.task,
        )
        run.data = completion.data
    except InvalidOutput as exc:
        run.status, run.error, run.data = "invalid", str(exc)[:300], seen[-1] if seen else None
    except CibotError as exc:
        run.status, run.error = "error", str(exc)[:300]
    _usage(run, records)
    return run


def _usage(run: Run, records: Sequence[Any]) -> None:
    """Add up a run's calls: tokens, cost, latency, and whether the first reply passed."""
    calls = [r for r in records if r.outcome != "skipped"]
    run.calls = len(calls)
    run.first_try = bool(calls) and calls[0].outcome == "ok"
    run.prompt_tokens = sum(r.prompt_tokens for r in calls)
    run.completion_tokens = sum(r.completion_tokens for r in calls)
    run.cost_usd = sum(r.cost_usd for r in calls)
    run.latency_s = sum(r.latency_s for r in calls)


# ---- checks and agreement -------------------------------------------------------------------------


def score_checks(captured: Captured, run: Run, policy: Policy, sandboxed: bool) -> float | None:
    """Return the share of a reply's checkable parts that check out, or None when none apply."""
    if run.status in ("refused", "error"):
        return None
    if captured.task == "tests":
        return (1.0 if run.status == "ok" else 0.0) if sandboxed else None
    if run.data is None:
        return 0.0 if captured.task in PART_CHECKS else None
    parts = PART_CHECKS.get(captured.task)
    return parts(captured, run.data, policy) if parts else None


def _review_parts(captured: Captured, data: Any, policy: Policy) -> float | None:
    """Return the share of the reply's findings that land on or near a changed line."""
    from workers.jobs import review

    gathered = gathered_for(captured, policy)
    findings = _findings(data)
    if not findings:
        return None
    hunks = gathered.state.hunks
    placed = sum(
        1
        for f in findings
        if any(review.place(hunks, p, f.line, f.side, f.start_line) for p in _paths(f.path))
    )
    return placed / len(findings)


def _findings(data: Any) -> list[Any]:
    """Return the findings a review reply holds (malformed ones left out)."""
    from workers.jobs import review

    items = data.get("findings") if isinstance(data, Mapping) else None
    out = []
    for item in items if isinstance(items, list) else []:
        with contextlib.suppress(ValueError):
            out.append(review.parse({"findings": [item]})[0])
    return out


def _paths(path: str) -> Iterator[str]:
    """Yield a finding's path as given and without a git-style prefix."""
    yield path
    for prefix in ("a/", "b/", "./", "/"):
        if path.startswith(prefix):
            yield path.removeprefix(prefix)


def _item_parts(
    key: str, base: Mapping[str, Any]
) -> Callable[[Captured, Any, Policy], float | None]:
    """Check a reply's list items one at a time with the job's own validator."""

    def parts(captured: Captured, data: Any, policy: Policy) -> float | None:
        job = _job(captured.task)
        items = data.get(key) if isinstance(data, Mapping) else None
        if job is None or not isinstance(items, list) or not items:
            return None
        gathered = gathered_for(captured, policy)
        good = 0
        for item in items:
            with contextlib.suppress(ValueError, LookupError, TypeError):
                job.validate(gathered, {**base, key: [item]})
                good += 1
        return good / len(items)

    return parts


PART_CHECKS: dict[str, Callable[[Captured, Any, Policy], float | None]] = {
    "review": _review_parts,
    "ci": _item_parts("evidence", {"root_cause": "replayed"}),
    "summary": _item_parts("files", {"what": "replayed"}),
}


def score_agreement(captured: Captured, run: Run) -> float | None:
    """Return how far a reply agrees with the reply the PR accepted, or None when unknown."""
    acceptance = captured.acceptance
    if not acceptance or not acceptance.get("accepted") or run.data is None:
        return None
    accepted = captured.reply_data
    if captured.task == "review":
        wanted = list(acceptance.get("findings") or []) or _locations(accepted)
        return _review_agreement(wanted, run.data)
    if captured.task == "ci":
        return _quote_agreement(accepted, run.data)
    return _jaccard(_words(accepted), _words(run.data)) if accepted is not None else None


def _locations(data: Any) -> list[dict[str, Any]]:
    """Return a review reply's finding locations."""
    return [{"path": f.path, "line": f.line, "side": f.side} for f in _findings(data)]


def _review_agreement(wanted: Sequence[Mapping[str, Any]], data: Any) -> float | None:
    """Return the share of accepted findings the reply flags again (same file, near line)."""
    if not wanted:
        return None
    found = _findings(data)
    hits = sum(
        1
        for w in wanted
        if any(
            f.path == str(w.get("path")) and abs(f.line - int(w.get("line", 0))) <= REVIEW_REACH
            for f in found
        )
    )
    return hits / len(wanted)


def _quote_agreement(accepted: Any, data: Any) -> float | None:
    """Return the share of accepted evidence lines the reply quotes again."""
    wanted = [_squash(e.get("line", "")) for e in _evidence(accepted)]
    got = [_squash(e.get("line", "")) for e in _evidence(data)]
    wanted = [w for w in wanted if w]
    if not wanted:
        return None
    return sum(1 for w in wanted if any(w in g or g in w for g in got if g)) / len(wanted)


def _evidence(data: Any) -> list[Mapping[str, Any]]:
    """Return a ci reply's evidence items."""
    items = data.get("evidence") if isinstance(data, Mapping) else None
    return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []


def _squash(text: Any) -> str:
    """Collapse whitespace."""
    return " ".join(str(text).split())


def _words(value: Any) -> set[str]:
    """Return the lower-cased words of every string inside a JSON-like value."""
    if isinstance(value, str):
        return set(re.findall(r"[a-z0-9_]+", value.lower()))
    if isinstance(value, Mapping):
        return set().union(*(_words(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_words(v) for v in value)) if value else set()
    return set()


def _jaccard(a: set[str], b: set[str]) -> float | None:
    """Return |a ∩ b| / |a ∪ b|, or None for two empty sets."""
    return len(a & b) / len(a | b) if a | b else None


# ---- the judge ------------------------------------------------------------------------------------


def judge_one(
    captured: Captured, run: Run, judge: Target, environ: Mapping[str, str]
) -> float | None:
    """Ask the judge to grade one reply; return the grade scaled to 0..1, or None."""
    from workers.llm import ModelClient

    if run.data is None or (captured.private_only and not judge.endpoint.private):
        return None
    prompt = "\n\n".join(str(m.get("content", "")) for m in captured.messages)[-JUDGE_PROMPT_CHARS:]
    reply = json.dumps(run.data, ensure_ascii=False)[:JUDGE_PROMPT_CHARS]
    messages = [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": JUDGE_USER.format(task=captured.task, prompt=prompt, reply=reply),
        },
    ]
    client = ModelClient(judge.policy, Settings(), None, environ=environ)
    try:
        completion = client.complete(
            judge.tier,
            messages,
            schema=JUDGE_SCHEMA,
            private_only=judge.endpoint.private,
            installation_id=0,
            task="judge",
        )
    except CibotError:
        return None
    return (int(completion.data["score"]) - 1) / 4


# ---- running everything -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Hold what one replay runs: captures, endpoint targets, the judge and the environment."""

    captures: Sequence[Captured]
    targets: Sequence[Target]
    judge: Target | None
    environ: Mapping[str, str]
    slots: int
    base: Policy


def run_all(plan: Plan, checkouts: Checkouts) -> list[Run]:
    """Replay every capture on every endpoint, one thread pool of ``slots`` per endpoint."""
    validators = {c.path.name: validator_for(c, plan.base, checkouts) for c in plan.captures}
    with contextlib.ExitStack() as stack:
        pools = {
            t.endpoint.label: stack.enter_context(
                concurrent.futures.ThreadPoolExecutor(plan.slots, thread_name_prefix="replay")
            )
            for t in plan.targets
        }

        def submit(captured: Captured, target: Target) -> concurrent.futures.Future[Run]:
            validate = validators[captured.path.name][0]
            pool = pools[target.endpoint.label]
            return pool.submit(replay_one, captured, target, validate, plan.environ)

        # litellm builds and caches one HTTP client per endpoint on first use; threads that
        # race to build it leave orphaned clients with open sockets. So each endpoint's
        # first request runs alone, and the rest fill its slots.
        first = {t.endpoint.label: _first_sendable(plan.captures, t) for t in plan.targets}
        warm = {
            (c.path.name, label): submit(c, t)
            for t in plan.targets
            for label, c in [(t.endpoint.label, first[t.endpoint.label])]
            if c is not None
        }
        for future in warm.values():
            future.result()
        futures = [
            (c, warm.get((c.path.name, t.endpoint.label)) or submit(c, t))
            for t in plan.targets
            for c in plan.captures
        ]
        runs = [_scored(c, f.result(), plan.base, validators[c.path.name][1]) for c, f in futures]
    if plan.judge is not None:
        _judge_all(plan, runs)
    return runs


def _first_sendable(captures: Sequence[Captured], target: Target) -> Captured | None:
    """Return the first capture the endpoint may receive."""
    return next((c for c in captures if target.endpoint.private or not c.private_only), None)


def _scored(captured: Captured, run: Run, policy: Policy, sandboxed: bool) -> Run:
    """Add the checks and the agreement to a finished run."""
    run.checks = score_checks(captured, run, policy, sandboxed)
    run.agreement = score_agreement(captured, run)
    return run


def _judge_all(plan: Plan, runs: list[Run]) -> None:
    """Grade every run with a reply on the judge endpoint, within its slots."""
    judge = plan.judge
    assert judge is not None
    by_name = {c.path.name: c for c in plan.captures}
    if runs:  # the first alone, as in run_all
        runs[0].judge = judge_one(by_name[runs[0].capture], runs[0], judge, plan.environ)
    with concurrent.futures.ThreadPoolExecutor(plan.slots) as pool:
        grades = pool.map(lambda r: judge_one(by_name[r.capture], r, judge, plan.environ), runs[1:])
        for run, grade in zip(runs[1:], grades, strict=True):
            run.judge = grade


# ---- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """Hold one endpoint's figures on one task."""

    task: str
    endpoint: str
    private: bool
    tasks: int
    refused: int
    errors: int
    valid: float | None
    first_try: float | None
    checks: float | None
    agreement: float | None
    judge: float | None
    tokens: float
    cost: float
    latency_p50: float
    score: float | None


def summarise(runs: Sequence[Run], endpoints: Sequence[Endpoint]) -> list[Row]:
    """Aggregate runs per (task, endpoint), ranked best first within each task."""
    private = {e.label: e.private for e in endpoints}
    rows = []
    for task in sorted({r.task for r in runs}):
        for endpoint in endpoints:
            mine = [r for r in runs if r.task == task and r.endpoint == endpoint.label]
            rows.append(_row(task, endpoint.label, private[endpoint.label], mine))
    return sorted(
        rows,
        key=lambda r: (r.task, -(r.score if r.score is not None else -1), r.cost, r.latency_p50),
    )


def _row(task: str, label: str, private: bool, runs: Sequence[Run]) -> Row:
    """Compute one row's rates and means (refused runs count in no rate)."""
    sent = [r for r in runs if r.status != "refused"]
    valid = _mean([1.0 if r.status == "ok" else 0.0 for r in sent])
    rates = {
        "checks": _mean([r.checks for r in sent if r.checks is not None]),
        "agreement": _mean([r.agreement for r in sent if r.agreement is not None]),
        "judge": _mean([r.judge for r in sent if r.judge is not None]),
    }
    present = [v for v in (valid, *rates.values()) if v is not None]
    return Row(
        task=task,
        endpoint=label,
        private=private,
        tasks=len(sent),
        refused=len(runs) - len(sent),
        errors=sum(r.status == "error" for r in sent),
        valid=valid,
        first_try=_mean([1.0 if r.first_try else 0.0 for r in sent]),
        checks=rates["checks"],
        agreement=rates["agreement"],
        judge=rates["judge"],
        tokens=_mean([float(r.prompt_tokens + r.completion_tokens) for r in sent]) or 0.0,
        cost=_mean([r.cost_usd for r in sent]) or 0.0,
        latency_p50=statistics.median([r.latency_s for r in sent]) if sent else 0.0,
        score=sum(present) / len(present) if present else None,
    )


def _mean(values: Sequence[float]) -> float | None:
    """Return the mean, or None for no values."""
    return sum(values) / len(values) if values else None


# ---- the recommendation and the policy diff ------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Say what one task category should do: move to a private tier, stay, or nothing."""

    task: str
    action: str  # move, confirmed, stay, none
    text: str
    tier: str = ""


@dataclass(frozen=True)
class Bar:
    """Hold the recommendation's thresholds."""

    floor: float
    margin: float
    min_samples: int


def recommend(rows: Sequence[Row], policy: Policy, bar: Bar) -> list[Verdict]:
    """Decide, task by task, whether the best private endpoint can take the category."""
    return [
        _verdict(task, [r for r in rows if r.task == task], policy, bar)
        for task in dict.fromkeys(r.task for r in rows)
    ]


def _verdict(task: str, rows: Sequence[Row], policy: Policy, bar: Bar) -> Verdict:
    """Decide one task category (rows are ranked best first)."""
    current = policy.tasks[task].tier if task in policy.tasks else "local"
    on_private = current in policy.tiers and policy.tiers[current].private
    private = [r for r in rows if r.private and r.score is not None]
    if not private:
        return Verdict(
            task, "none", f"{task}: no private endpoint was replayed (mark one with private:)"
        )
    best, top = private[0], rows[0]
    if best.tasks < bar.min_samples:
        return Verdict(
            task,
            "stay",
            f"{task}: only {best.tasks} tasks replayed on {best.endpoint}; "
            f"need {bar.min_samples} (--min-samples) to recommend",
        )
    close = (best.score or 0) >= (top.score or 0) - bar.margin
    if (best.valid or 0) < bar.floor or not close:
        why = (
            f"valid on {_pct(best.valid)} (< {_pct(bar.floor)})"
            if (best.valid or 0) < bar.floor
            else f"scores {best.score:.2f} against {top.score:.2f} for {top.endpoint}"
        )
        stay = "keep it there and watch" if on_private else f"keep it on {current}"
        return Verdict(task, "stay", f"{task}: best private endpoint {best.endpoint} {why}: {stay}")
    if on_private:
        return Verdict(
            task,
            "confirmed",
            f"{task}: already on {current}; {best.endpoint} confirms "
            f"it (valid {_pct(best.valid)}, score {best.score:.2f})",
        )
    tier = _private_tier(policy)
    against = (
        "and ranks first"
        if best is top
        else f"against {top.score:.2f} for {top.endpoint} ({_usd(top.cost)} a task)"
    )
    return Verdict(
        task,
        "move",
        f"{task}: move from {current} to {tier}: {best.endpoint} is valid on "
        f"{_pct(best.valid)}, scores {best.score:.2f} at {_usd(best.cost)} a task {against}",
        tier,
    )


def _private_tier(policy: Policy) -> str:
    """Return the private tier a category moves to: the cheapest private one."""
    return policy.private_tiers()[0]


def policy_diff(text: str, label: str, verdicts: Sequence[Verdict]) -> tuple[str, list[str]]:
    """Return the unified diff that sets ``tasks.<task>.tier`` for every move, and notes."""
    new, notes = text, []
    for verdict in verdicts:
        if verdict.action != "move":
            continue
        try:
            edited = set_task_tier(new, verdict.task, verdict.tier)
        except ConfigError as exc:
            notes.append(f"{exc}: set tasks.{verdict.task}.tier: {verdict.tier} by hand")
            continue
        if load_yaml_tier(edited, verdict.task) == verdict.tier:
            new = edited
        else:
            notes.append(f"tasks.{verdict.task} could not be edited: set its tier by hand")
    if new == text:
        return "", notes
    path = label.lstrip("/")
    diff = difflib.unified_diff(
        text.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    return "".join(diff), notes


TASKS_LINE = re.compile(r"^tasks:\s*(#.*)?$")


def set_task_tier(text: str, task: str, tier: str) -> str:
    """Set one task's ``tier:`` in block-style policy YAML, keeping every other line as it is."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if TASKS_LINE.match(line)), None)
    if start is None:
        raise ConfigError("the policy file has no top-level tasks: block to edit", key="tasks")
    for index in range(start + 1, len(lines)):
        line = lines[index]
        if line.strip() and not line[0].isspace() and not line.lstrip().startswith("#"):
            break  # the next top-level key: the task is not in the block
        head = re.match(rf"^(\s+){re.escape(task)}:\s*(\{{.*\}})?\s*(#.*)?$", line)
        if head:
            return "".join(_retier(lines, index, len(head[1]), tier))
    raise ConfigError(f"the policy file's tasks: block has no {task}: entry", key=f"tasks.{task}")


def _retier(lines: list[str], index: int, indent: int, tier: str) -> list[str]:
    """Replace the tier inside a task entry that starts at ``index``."""
    out = list(lines)
    flow = re.sub(r"(\btier:\s*)[\w-]+", rf"\g<1>{tier}", out[index], count=1)
    if flow != out[index]:
        out[index] = flow
        return out
    for at in range(index + 1, len(out)):
        line = out[at]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        if re.match(r"^\s+tier:\s*\S", line):
            out[at] = re.sub(r"(tier:\s*)[\w-]+", rf"\g<1>{tier}", line, count=1)
            return out
    out.insert(index + 1, " " * (indent + 2) + f"tier: {tier}\n")
    return out


# ---- output ----------------------------------------------------------------------------------


def render_text(report: Mapping[str, Any]) -> str:
    """Render the tables, notes, recommendation and diff for a terminal."""
    out = [HEADER.format(**report["header"]), ""]
    for task in report["tasks"]:
        rows = [r for r in report["rows"] if r["task"] == task]
        out.append(f"{task} ({rows[0]['tasks'] + rows[0]['refused']} captured)")
        out.extend(_table([TABLE_HEAD, *(_cells(n, r) for n, r in enumerate(rows, start=1))]))
        out.append("")
    out.extend(f"note: {n}" for n in report["notes"])
    out.append("Recommendation:")
    out.extend(f"- {v['text']}" for v in report["verdicts"])
    out.append("")
    if report["diff"]:
        out.append(DIFF_HEAD)
        out.append(report["diff"].rstrip("\n"))
        if report["policy_source"] == DEFAULT_SOURCE:
            out.append(DEFAULT_POLICY_NOTE)
    else:
        out.append(NO_DIFF)
    return "\n".join(out)


def _cells(rank: int, row: Mapping[str, Any]) -> tuple[str, ...]:
    """Format one table row."""
    label = row["endpoint"] + (" (private)" if row["private"] else "")
    return (
        str(rank),
        label,
        _pct(row["valid"]),
        _pct(row["first_try"]),
        _pct(row["checks"]),
        _pct(row["agreement"]),
        _pct(row["judge"]),
        f"{row['tokens']:,.0f}",
        _usd(row["cost"]),
        f"{row['latency_p50']:.2f}",
        "n/a" if row["score"] is None else f"{row['score']:.2f}",
    )


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Lay rows out in aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def _pct(value: float | None) -> str:
    """Render a share as a percentage, or n/a."""
    return "n/a" if value is None else f"{value:.0%}"


def _usd(value: float) -> str:
    """Render dollars with enough digits for a per-task figure (private calls cost little)."""
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.6f}" if value < 0.01 else f"${value:.4f}"


def svg_chart(rows: Sequence[Row], title: str) -> str:
    """Draw each task's score per endpoint: one bar per (task, endpoint), coloured by endpoint."""
    from workers.charts import bar_chart

    groups = {
        f"{r.task} · {r.endpoint}": {r.endpoint: r.score or 0.0}
        for r in sorted(rows, key=lambda r: (r.task, r.endpoint))
    }
    return bar_chart(groups, title=title, y_label="score (0-1)")


# ---- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot replay``."""
    parser.add_argument(
        "--models",
        required=True,
        help="2 to 5 endpoints, comma-separated: [private:][LABEL=]MODEL[@BASE_URL]",
    )
    parser.add_argument("--tasks", help="captured tasks to replay, comma-separated (default: all)")
    parser.add_argument("--last", help="replay only the newest N captured tasks")
    parser.add_argument("--capture-dir", help="the capture directory (default: CIBOT_CAPTURE_DIR)")
    parser.add_argument(
        "--judge", help="an endpoint that grades each reply 1-5 (named in the output)"
    )
    parser.add_argument(
        "--private", action="append", help="mark endpoint labels private (repeatable)"
    )
    parser.add_argument("--price", action="append", help="LABEL=IN,OUT in USD per million tokens")
    parser.add_argument("--api-key-env", action="append", help="LABEL=ENV: the API key's variable")
    parser.add_argument(
        "--slots", default=str(DEFAULT_SLOTS), help="concurrent requests per endpoint"
    )
    parser.add_argument("--timeout", default="300", help="seconds per model call")
    parser.add_argument(
        "--source",
        action="append",
        help="[OWNER/REPO=]PATH: a local clone, so tests captures can run",
    )
    parser.add_argument(
        "--policy", help="the operator's policy YAML (default: CIBOT_POLICY or built-in)"
    )
    parser.add_argument("--floor", default="0.9", help="valid share a private endpoint needs (0.9)")
    parser.add_argument("--margin", default="0.05", help="score it may trail the best by (0.05)")
    parser.add_argument("--min-samples", default="10", help="tasks it needs to be judged (10)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", help="write an SVG chart of the scores to this file")


def run(args: argparse.Namespace) -> int:
    """Replay, score, print the tables and the recommendation; 0 on success."""
    endpoints = endpoints_from(args)
    settings = Settings.from_env()
    policy_path = Path(args.policy) if args.policy else settings.policy_path
    base = load_policy(policy_path, overrides=settings.tier_overrides)
    captures = _captures(args, settings)
    timeout = _number(args.timeout, "--timeout", float, 1)
    judge = target_for(parse_endpoint(args.judge), base, timeout_s=timeout) if args.judge else None
    plan = Plan(
        captures=captures,
        targets=[target_for(e, base, timeout_s=timeout) for e in endpoints],
        judge=judge,
        environ=_environ(endpoints, judge),
        slots=_number(args.slots, "--slots", int, 1),
        base=base,
    )
    checkouts = Checkouts(sources=_sources(args.source or []))
    try:
        runs = run_all(plan, checkouts)
    finally:
        checkouts.close()
    report = build_report(plan, runs, checkouts.notes, _bar(args), policy_path)
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    if args.plot:
        Path(args.plot).write_text(
            svg_chart(summarise(runs, endpoints), report["title"]), encoding="utf-8"
        )
    return 0


def _captures(args: argparse.Namespace, settings: Settings) -> list[Captured]:
    """Load the captures to replay, or explain why there are none."""
    folder = Path(args.capture_dir) if args.capture_dir else settings.capture_dir
    if folder is None:
        raise InputError("no capture directory: give --capture-dir or set CIBOT_CAPTURE_DIR")
    tasks = _list(args.tasks) or None
    last = _number(args.last, "--last", int, 1) if args.last else None
    found = Capture(folder, days=settings.capture_days).load(tasks=tasks, last=last)
    if not found:
        what = f" for {', '.join(tasks)}" if tasks else ""
        raise InputError(
            f"no captured tasks{what} in {folder}: capture runs while CIBOT_CAPTURE_DIR "
            "is set on the workers"
        )
    return found


def _number(value: str, flag: str, kind: Callable[[str], Any], least: float) -> Any:
    """Parse a numeric flag no smaller than ``least``."""
    try:
        number = kind(value)
    except ValueError as exc:
        raise InputError(f"{flag} {value!r} is not a number") from exc
    if not math.isfinite(number) or number < least:
        raise InputError(f"{flag} must be at least {least:g}")
    return number


def _bar(args: argparse.Namespace) -> Bar:
    """Read the recommendation's thresholds."""
    floor = _number(args.floor, "--floor", float, 0)
    if floor > 1:
        raise InputError("--floor is a share from 0 to 1")
    return Bar(
        floor=floor,
        margin=_number(args.margin, "--margin", float, 0),
        min_samples=_number(args.min_samples, "--min-samples", int, 1),
    )


def _environ(endpoints: Iterable[Endpoint], judge: Target | None) -> dict[str, str]:
    """Return the API keys the endpoints name, plus vLLM's placeholder key."""
    names = {e.key_env for e in endpoints if e.key_env}
    if judge is not None and judge.endpoint.key_env:
        names.add(judge.endpoint.key_env)
    missing = sorted(n for n in names if not os.environ.get(n))
    if missing:
        raise InputError(f"--api-key-env names {missing[0]}, which is not set")
    return {EMPTY_KEY_ENV: EMPTY_KEY, **{n: os.environ[n] for n in names}}


def _sources(values: Sequence[str]) -> dict[str, Path]:
    """Parse ``--source [OWNER/REPO=]PATH`` (no repo: any capture's repo)."""
    out: dict[str, Path] = {}
    for value in values:
        repo, sep, path = value.rpartition("=")
        out[repo if sep else ""] = Path(path if sep else value)
    return out


def build_report(
    plan: Plan, runs: Sequence[Run], notes: Sequence[str], bar: Bar, policy_path: Path | None
) -> dict[str, Any]:
    """Assemble the report: header, ranked rows, notes, verdicts and the policy diff."""
    endpoints = [t.endpoint for t in plan.targets]
    rows = summarise(runs, endpoints)
    verdicts = recommend(rows, plan.base, bar)
    text = policy_path.read_text(encoding="utf-8") if policy_path else default_policy_text()
    source = str(policy_path) if policy_path else DEFAULT_SOURCE
    counts = {
        t: sum(c.task == t for c in plan.captures)
        for t in dict.fromkeys(c.task for c in plan.captures)
    }
    refused = sum(r.status == "refused" for r in runs)
    diff, diff_notes = policy_diff(text, source, verdicts)
    all_notes = [*notes, *diff_notes]
    if refused:
        all_notes.append(
            f"{refused} private_only replays were not sent to endpoints not marked private"
        )
    judge = plan.judge.endpoint.describe() if plan.judge else "none"
    return {
        "title": "cibot replay: score by task and endpoint",
        "header": {
            "count": len(plan.captures),
            "tasks": ", ".join(f"{t} {n}" for t, n in counts.items()),
            "endpoints": len(endpoints),
            "judge": judge,
        },
        "judge": plan.judge.endpoint.describe() if plan.judge else None,
        "endpoints": [
            asdict(e) | {"price": e.price.model_dump() if e.price else None} for e in endpoints
        ],
        "tasks": list(dict.fromkeys(r.task for r in rows)),
        "rows": [asdict(r) for r in rows],
        "notes": all_notes,
        "verdicts": [asdict(v) for v in verdicts],
        "policy_source": source,
        "diff": diff,
        "runs": [asdict(r) | {"data": None} for r in runs],
    }


def load_yaml_tier(text: str, task: str) -> str:
    """Return ``tasks.<task>.tier`` from policy YAML text (to check an edit took)."""
    data = yaml.safe_load(text) or {}
    return str(((data.get("tasks") or {}).get(task) or {}).get("tier", ""))
