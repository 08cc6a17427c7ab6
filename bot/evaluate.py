"""Run ``cibot eval``: score the router on labelled cases and list what it gets wrong."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.decide import policy_for, read_input
from bot.kernel.errors import InputError
from bot.kernel.settings import Settings
from policies import deps, detectors, scoring, tokens
from policies.evidence import CiFacts, Evidence, evidence_from_diff
from policies.model import CATEGORIES, Policy
from policies.routing import Decision, route, route_many
from policies.scoring import EVAL_TASKS, Case, CaseOutcome, Entry, LabelledBump, Report, Row

REQUIRED = ("id", "diff", "sensitive", "categories", "services_touched", "dependency_bump")
BUMP_KEYS = ("package", "from", "to", "breaking")
REBUILD = (
    "run `python tests/corpus/rebuild.py --mirrors ROOT` to rebuild the corpus's diffs and trees"
)
NO_SERVICES = (
    "service discovery (policies.services) is not in this build: ci was routed on the "
    "policy's service map and roots only, and services_touched accuracy is not scored"
)
HEADER = "cibot eval: {cases} cases from {sources}; tasks: {tasks}"
TABLE_ROW = "{name:<18} {cases:>5} {positives:>9}  {recall:<16} {false}"
CHECK_LINES = {
    "bump_detection": "bump detection:    {ratio} labelled bumps found with their from/to",
    "services_touched": "services_touched:  {ratio} cases where the touched services equal the label",
}
TIMING = (
    "timing:            median {median:.1f} ms, p95 {p95:.1f} ms per case; total {total:.1f} ms"
)
HEADINGS = {
    "missed": "{name}: missed {what}: {count} of {of}",
    "false": "{name}: {false_kind}: {count} of {of}",
    "wrong": "{name}: wrong: {count} of {of}",
}
# A small diff routed once before timing, so that the first case does not pay for loading
# the tokenizer and for what the router compiles on its first code line and first hit.
WARM_UP = b"""\
diff --git a/app/views.py b/app/views.py
--- a/app/views.py
+++ b/app/views.py
@@ -1,2 +1,4 @@
 def view(request):
-    return render(request, "page.html")
+    # Sign the session for the signed-in user.
+    token = jwt.encode({"sub": user.id}, key, algorithm="HS256")
+    return stripe.Charge.create(amount=total, api_key=settings.STRIPE_KEY)
"""
POSITIVE = {
    "summary": "sensitive changes",
    "review": "sensitive changes",
    "deps": "breaking bumps",
    "ci": "multi-service changes",
}
FALSE_KIND = {"task": "false escalations", "category": "false flags"}


@dataclass(frozen=True)
class Located:
    """Hold a case with its diff and tree resolved against the cases file's folder."""

    case: Case
    diff: Path
    tree: Path | None


@dataclass(frozen=True)
class ServicesApi:
    """Hold service discovery's two functions, when ``policies.services`` provides them."""

    discover: Callable[[Iterable[str], Callable[[str], str | None]], Any]
    touched: Callable[[Evidence, Policy], Mapping[str, str]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot eval``."""
    parser.add_argument(
        "--cases",
        required=True,
        action="append",
        metavar="FILE.jsonl",
        help="labelled cases, one JSON object a line (repeatable: the files are scored together)",
    )
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")
    parser.add_argument("--config", help="a repo's .github/cibot.yml to merge onto the policy")
    parser.add_argument(
        "--task",
        action="append",
        metavar="TASK",
        help=f"task to score (repeatable; default: {', '.join(EVAL_TASKS)})",
    )
    parser.add_argument(
        "--misses", type=int, help="print at most N cases per list (default: all; JSON lists all)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Load the cases, route and score them, and print the report."""
    tasks = chosen_tasks(args.task)
    if args.misses is not None and args.misses < 0:
        raise InputError("--misses must be 0 or more")
    policy = policy_for(args, Settings.from_env())
    located = load(args.cases)
    require_files(located)
    report = evaluate(located, policy, tasks, services=services_api())
    if args.json:
        print(json.dumps({"sources": args.cases, **scoring.report_json(report)}, indent=2))
    else:
        print(render(report, args.cases, limit=args.misses))
    return 0


def chosen_tasks(given: Sequence[str] | None) -> tuple[str, ...]:
    """Return the tasks to score, in the order given, without repeats."""
    tasks = tuple(dict.fromkeys(given or EVAL_TASKS))
    for task in tasks:
        if task not in EVAL_TASKS:
            raise InputError(f"cannot score task '{task}': choose from {', '.join(EVAL_TASKS)}")
    return tasks


def load(names: Sequence[str]) -> list[Located]:
    """Read every cases file and resolve each case's files; ids must be unique across them."""
    located: list[Located] = []
    seen: dict[str, str] = {}
    for name in names:
        for number, case in read_cases(name):
            if case.id in seen:
                raise InputError(f"{name}:{number}: case id '{case.id}' repeats {seen[case.id]}")
            seen[case.id] = f"{name}:{number}"
            base = Path(name).parent
            tree = base / case.tree if case.tree else None
            located.append(Located(case, base / case.diff, tree))
    return located


def read_cases(name: str) -> Iterable[tuple[int, Case]]:
    """Yield (line number, case) for each non-blank line of a cases file."""
    try:
        text = read_input(name).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, parse_line(line, f"{name}:{number}")


def parse_line(line: str, where: str) -> Case:
    """Parse one line into a Case; raise InputError naming the line when it is not one."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{where}: a case must be a JSON object")
    name = f"case '{raw['id']}'" if isinstance(raw.get("id"), str) else "case"
    try:
        return case_from(raw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {name}: {exc}") from exc


def case_from(raw: Mapping[str, Any]) -> Case:
    """Validate a case object's keys and types and build the Case."""
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise ValueError(
            f"missing required key '{missing[0]}' (a case needs {', '.join(REQUIRED)})"
        )
    categories = _strings(raw["categories"], "categories")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown category '{unknown[0]}': use {', '.join(CATEGORIES)}")
    return Case(
        id=_text(raw["id"], "id"),
        diff=_text(raw["diff"], "diff"),
        sensitive=_flag(raw["sensitive"], "sensitive"),
        categories=categories,
        services_touched=_strings(raw["services_touched"], "services_touched"),
        bump=_bump(raw["dependency_bump"]),
        tree=None if raw.get("tree") is None else _text(raw["tree"], "tree"),
        repo=_optional(raw, "repo"),
        commit=_optional(raw, "commit"),
        note=_optional(raw, "note"),
    )


def _text(value: Any, key: str) -> str:
    """Return a non-empty string, or refuse anything else."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string")
    return value


def _optional(raw: Mapping[str, Any], key: str) -> str:
    """Return an optional string key, or '' when it is absent or null."""
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    return value


def _flag(value: Any, key: str) -> bool:
    """Return a JSON boolean, or refuse anything else (0 and "no" are not labels)."""
    if not isinstance(value, bool):
        raise ValueError(f"'{key}' must be true or false")
    return value


def _strings(value: Any, key: str) -> tuple[str, ...]:
    """Return a list of strings, or refuse anything else."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{key}' must be a list of strings")
    return tuple(value)


def _bump(value: Any) -> LabelledBump | None:
    """Return the labelled bump, or None for null."""
    if value is None:
        return None
    if not isinstance(value, dict) or any(key not in value for key in BUMP_KEYS):
        raise ValueError(f"'dependency_bump' must be null or an object with {', '.join(BUMP_KEYS)}")
    versions = [value["from"], value["to"]]
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in versions):
        raise ValueError("'dependency_bump.from' and '.to' must be version strings")
    return LabelledBump(
        package=_text(value["package"], "dependency_bump.package"),
        old=str(versions[0]),
        new=str(versions[1]),
        breaking=_flag(value["breaking"], "dependency_bump.breaking"),
    )


def absent(located: Iterable[Located]) -> list[tuple[Located, Path]]:
    """Return each case whose diff or tree's PATHS file is not on disk, with what is missing."""
    missing: list[tuple[Located, Path]] = []
    for item in located:
        wanted = [item.diff] + ([item.tree / "PATHS"] if item.tree else [])
        missing += [(item, path) for path in wanted if not path.is_file()]
    return missing


def require_files(located: Sequence[Located]) -> None:
    """Refuse to score when a case's diff or tree is missing, naming the first such case."""
    missing = absent(located)
    if not missing:
        return
    item, path = missing[0]
    what = item.case.diff if path == item.diff else f"{item.case.tree}/PATHS"
    more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
    raise InputError(f"case '{item.case.id}': {what} does not exist{more}; {REBUILD}")


def services_api() -> ServicesApi | None:
    """Import service discovery lazily; None when this build does not have it yet."""
    try:
        module = importlib.import_module("policies.services")
    except ModuleNotFoundError as exc:
        if exc.name != "policies.services":
            raise
        return None
    discover, touched = getattr(module, "discover", None), getattr(module, "touched", None)
    has_field = "services" in {f.name for f in dataclasses.fields(Evidence)}
    if not (callable(discover) and callable(touched) and has_field):
        return None
    return ServicesApi(discover=discover, touched=touched)


def evaluate(
    located: Sequence[Located],
    policy: Policy,
    tasks: Sequence[str] = EVAL_TASKS,
    *,
    services: ServicesApi | None = None,
) -> Report:
    """Route every case and score the outcomes."""
    route_many(tasks, evidence_from_diff(WARM_UP, count=tokens.count), policy)
    outcomes = [outcome(item, policy, tasks, services) for item in located]
    notes = () if services is not None or "ci" not in tasks else (NO_SERVICES,)
    return scoring.score(outcomes, policy, tasks, notes=notes)


def outcome(
    item: Located, policy: Policy, tasks: Sequence[str], services: ServicesApi | None
) -> CaseOutcome:
    """Parse one case's diff, route its tasks, and time both."""
    data = _read(item.diff, item.case, item.case.diff)
    paths = None
    if services is not None and item.tree is not None:
        paths = _tree_paths(item.tree, item.case)
    start = time.perf_counter()
    evidence = _evidence(data, item, paths, services)
    decisions, ci = _route(evidence, policy, tasks)
    seconds = time.perf_counter() - start
    touched = dict(services.touched(evidence, policy)) if services is not None else None
    return CaseOutcome(
        case=item.case,
        decisions=decisions,
        bumps=tuple(deps.bumps(evidence.files)),
        ci_services=None if ci is None else detectors.failing_services(ci, policy),
        touched=touched,
        seconds=seconds,
    )


def _read(path: Path, case: Case, name: str) -> bytes:
    """Read a case's file, naming the case and the file as the case gives it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"case '{case.id}': cannot read {name}: {exc.strerror}") from exc


def _tree_paths(tree: Path, case: Case) -> list[str]:
    """Read the head tree's path list."""
    text = _read(tree / "PATHS", case, f"{case.tree}/PATHS").decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line]


def reader(tree: Path) -> Callable[[str], str | None]:
    """Return a reader of the tree's saved build and deploy files; None for any other path."""
    root = tree / "files"

    def read(path: str) -> str | None:
        parts = path.split("/")
        if path.startswith("/") or ".." in parts:
            return None
        try:
            return (root / path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    return read


def _evidence(
    data: bytes, item: Located, paths: list[str] | None, services: ServicesApi | None
) -> Evidence:
    """Build Evidence the way `cibot route` does, with the case's repo and service map."""
    try:
        # A binary-only commit is still a case to score, so text is not required here.
        evidence = evidence_from_diff(
            data, count=tokens.count, require_text=False, repo=item.case.repo
        )
    except InputError as exc:
        raise InputError(f"case '{item.case.id}': {item.case.diff}: {exc}") from exc
    if services is None or paths is None or item.tree is None:
        return evidence
    found = services.discover(paths, reader(item.tree))
    # Through a mapping: the field lands with policies.services, after this module.
    fields: dict[str, Any] = {"services": found}
    return dataclasses.replace(evidence, **fields)


def failed_paths(evidence: Evidence) -> tuple[str, ...]:
    """Return every path the diff changes, old names of renames included, once each."""
    paths = (p for change in evidence.files for p in (change.old_path, change.path) if p)
    return tuple(dict.fromkeys(paths))


def _route(
    evidence: Evidence, policy: Policy, tasks: Sequence[str]
) -> tuple[dict[str, Decision], Evidence | None]:
    """Route the tasks; ci sees a simulated CI failure in every changed path."""
    others = [t for t in tasks if t != "ci"]
    decisions = dict(zip(others, route_many(others, evidence, policy), strict=True))
    if "ci" not in tasks:
        return decisions, None
    broken = dataclasses.replace(evidence, ci=CiFacts(failed_paths=failed_paths(evidence)))
    decisions["ci"] = route("ci", broken, policy)
    return decisions, broken


def render(report: Report, sources: Sequence[str], *, limit: int | None = None) -> str:
    """Render the table, the detector checks, the timing, then the misses."""
    lines = [
        HEADER.format(
            cases=report.cases, sources=", ".join(sources), tasks=", ".join(report.tasks)
        ),
        "",
        TABLE_ROW.format(
            name="", cases="cases", positives="positives", recall="recall", false="false escalation"
        ),
    ]
    lines += [_table_row(r) for r in report.rows]
    lines.append("")
    lines += [
        CHECK_LINES[name].format(ratio=check.ratio.text())
        for name, check in report.checks.items()
        if check is not None
    ]
    timing = report.timing
    lines.append(TIMING.format(median=timing.median_ms, p95=timing.p95_ms, total=timing.total_ms))
    lines += [f"note: {note}" for note in report.notes]
    lines += _misses(report, limit)
    return "\n".join(lines)


def _table_row(row: Row) -> str:
    """Render one row of the table; categories are indented under the tasks."""
    name = row.name if row.kind == "task" else f"  {row.name}"
    return TABLE_ROW.format(
        name=name,
        cases=row.cases,
        positives=row.positives,
        recall=row.recall.text(),
        false=row.false.text(),
    )


def _misses(report: Report, limit: int | None) -> list[str]:
    """Render every non-empty list of misses, false escalations and detector errors."""
    lines: list[str] = []
    shown: dict[tuple[str, tuple[Entry, ...]], str] = {}
    for r in report.rows:
        what = POSITIVE.get(r.name, f"{r.name} changes")
        heading = HEADINGS["missed"].format(
            name=r.name, what=what, count=len(r.missed), of=r.recall.of
        )
        lines += _once(shown, r.name, heading, r.missed, "why not", limit)
        heading = HEADINGS["false"].format(
            name=r.name, false_kind=FALSE_KIND[r.kind], count=len(r.false_hits), of=r.false.of
        )
        lines += _once(shown, r.name, heading, r.false_hits, "fired", limit)
    for check in report.checks.values():
        if check is not None:
            heading = HEADINGS["wrong"].format(
                name=check.name, count=len(check.wrong), of=check.ratio.of
            )
            lines += _section(heading, check.wrong, "found", limit)
    return lines


def _once(
    shown: dict[tuple[str, tuple[Entry, ...]], str],
    name: str,
    heading: str,
    entries: tuple[Entry, ...],
    verb: str,
    limit: int | None,
) -> list[str]:
    """Render a list, or point back at an earlier row that listed exactly the same cases."""
    key = (verb, entries)
    if entries and key in shown and limit != 0:
        return ["", heading, f"  the same cases as {shown[key]} above"]
    shown.setdefault(key, name)
    return _section(heading, entries, verb, limit)


def _section(heading: str, entries: Sequence[Entry], verb: str, limit: int | None) -> list[str]:
    """Render one list: a heading, then each case's label, note and reasons."""
    if not entries or limit == 0:
        return []
    shown = entries if limit is None else entries[:limit]
    lines = ["", heading]
    for entry in shown:
        lines.append(f"  - {entry.id} — label: {entry.label}")
        if entry.note:
            lines.append(f"    note: {entry.note}")
        reasons = [f"{r.trigger}: {r.evidence}" for r in entry.reasons] or ["no trigger fired"]
        lines += [f"    {verb}: {text}" for text in reasons]
    if len(shown) < len(entries):
        lines.append(f"  … and {len(entries) - len(shown)} more (--misses to show more)")
    return lines
