"""Load the policy YAML, apply operator overrides, and merge a repo's `.github/cibot.yml`."""

from __future__ import annotations

import copy
import re
import re._parser as re_parser  # type: ignore[import-not-found]  # the stdlib's sre_parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, field_validator

from bot.kernel.errors import ConfigError
from policies import semantic
from policies.globs import check_globs, compiled
from policies.model import (
    Category,
    ContentRule,
    Ecosystem,
    Frozen,
    PackageName,
    Policy,
    Service,
    TaskName,
)

DEFAULT_SOURCE = "policies/default.yaml"


def default_policy_text() -> str:
    """Return the packaged default policy's YAML text."""
    return resources.files("policies").joinpath("default.yaml").read_text(encoding="utf-8")


def parse_yaml(text: str, *, source: str) -> dict[str, Any]:
    """Parse YAML into a mapping, or raise ConfigError naming the file and line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{source}: not valid YAML{where}: fix the syntax or remove the file",
            source=source,
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys", source=source)
    return data


# A repo's .github/cibot.yml is untrusted input: it is measured before it is parsed, so
# that a huge, deeply nested or alias-bombed file is refused in milliseconds.
REPO_MAX_BYTES = 64 * 1024
REPO_MAX_DEPTH = 12
REPO_MAX_NODES = 5_000  # scalars and collections, with every alias counted as what it copies
REPO_MAX_PATTERNS = 500  # path globs and content patterns in all


def check_repo_yaml(text: str, *, source: str) -> None:
    """Refuse a repo config over the size, depth or node limits, before building it.

    PyYAML's event parser is a state machine (no recursion), so walking its events is
    safe on input that would exhaust the stack of the composer that safe_load uses.
    """
    size = len(text.encode("utf-8", errors="replace"))
    if size > REPO_MAX_BYTES:
        raise ConfigError(
            f"{source}: {size:,} bytes is over the {REPO_MAX_BYTES:,}-byte limit for a repo "
            "config: keep it to the keys you change",
            source=source,
        )
    depth = nodes = 0
    anchored: dict[str, int] = {}
    open_anchors: list[tuple[str | None, int]] = []
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                nodes += anchored.get(event.anchor or "", 1)
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor:
                    anchored[event.anchor] = 1
            elif isinstance(event, yaml.CollectionStartEvent):
                nodes += 1
                depth += 1
                open_anchors.append((event.anchor, nodes))
                if depth > REPO_MAX_DEPTH:
                    raise ConfigError(
                        f"{source}: nested more than {REPO_MAX_DEPTH} levels deep: a repo "
                        "config needs three or four",
                        source=source,
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                anchor, start = open_anchors.pop()
                if anchor:
                    anchored[anchor] = nodes - start + 1
            if nodes > REPO_MAX_NODES:
                raise ConfigError(
                    f"{source}: more than {REPO_MAX_NODES:,} values (aliases counted as what "
                    "they copy): keep a repo config to the keys you change",
                    source=source,
                )
    except yaml.YAMLError:
        return  # parse_yaml reports the syntax error with its line


def check_pattern_count(data: Mapping[str, Any], *, source: str) -> None:
    """Refuse a repo config whose path globs and content patterns are too many to match."""
    count = _patterns(data)
    if count > REPO_MAX_PATTERNS:
        raise ConfigError(
            f"{source}: {count:,} path globs and content patterns, over the limit of "
            f"{REPO_MAX_PATTERNS}: use broader globs",
            source=source,
        )


def _patterns(value: Any) -> int:
    """Count the entries of every 'paths' and 'content' list in a parsed config."""
    if isinstance(value, dict):
        return sum(
            len(v) if k in ("paths", "content") and isinstance(v, list) else _patterns(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(_patterns(item) for item in value)
    return 0


def validation_message(exc: ValidationError, *, source: str) -> tuple[str, str]:
    """Turn pydantic's first error into (dotted key, one-line message naming the file)."""
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return key, f"{source}: key '{key}': {first['msg']}"


def build_policy(data: Mapping[str, Any], *, source: str) -> Policy:
    """Validate a mapping into a Policy, or raise ConfigError naming the bad key."""
    try:
        policy = Policy.model_validate(dict(data))
    except ValidationError as exc:
        key, message = validation_message(exc, source=source)
        raise ConfigError(message, key=key, source=source) from exc
    check_compiles(policy, source=source)
    return policy


def _compile_errors(policy: Policy) -> Iterator[tuple[str, str]]:
    """Yield (dotted key, problem) for each glob or pattern that does not compile."""
    globs = {"private_only.paths": policy.private_only.paths}
    globs.update({f"services.{name}.paths": svc.paths for name, svc in policy.services.items()})
    for name, rules in policy.sensitive.items():
        globs[f"sensitive.{name}.paths"] = rules.paths
        for index, rule in enumerate(rules.content):
            globs[f"sensitive.{name}.content.{index}.paths"] = rule.paths
            try:
                re.compile(rule.pattern)
            except re.error as exc:
                key = f"sensitive.{name}.content.{index}.pattern"
                yield key, f"{rule.pattern[:40]!r} is not a valid regex ({exc})"
    for key, values in globs.items():
        try:
            check_globs(values)
        except ValueError as exc:
            yield key, str(exc)


def check_compiles(policy: Policy, *, source: str) -> None:
    """Compile every glob and pattern now, so a bad one fails at load time, not mid-route."""
    for key, problem in _compile_errors(policy):
        raise ConfigError(f"{source}: key '{key}': {problem}", key=key, source=source)
    try:
        compiled(policy)
        semantic.rules(policy)
    except (ValueError, re.error) as exc:
        raise ConfigError(
            f"{source}: key 'sensitive': the content patterns cannot be combined ({exc}); "
            "drop named groups and backreferences",
            key="sensitive",
            source=source,
        ) from exc


def load_policy(path: Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> Policy:
    """Load the operator policy (default: the packaged one) and apply tier overrides.

    ``overrides`` maps a tier name to an object with optional ``model`` and ``api_base``
    attributes (``bot.kernel.settings.TierOverride``); these come from CIBOT_<TIER>_* variables.
    """
    source = str(path) if path else DEFAULT_SOURCE
    try:
        text = path.read_text(encoding="utf-8") if path else default_policy_text()
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read the policy ({exc.strerror}); check CIBOT_POLICY",
            key="CIBOT_POLICY",
            source=source,
        ) from exc
    data = parse_yaml(text, source=source)
    if overrides:
        data = _apply_tier_overrides(data, overrides)
    return build_policy(data, source=source)


def _apply_tier_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Put operator model and endpoint overrides in front of the policy's tier settings."""
    tiers = {name: dict(spec) for name, spec in (data.get("tiers") or {}).items()}
    for name, override in overrides.items():
        if name not in tiers:
            continue
        model = getattr(override, "model", None)
        api_base = getattr(override, "api_base", None)
        if model:
            rest = [m for m in tiers[name].get("models", []) if m != model]
            tiers[name]["models"] = [model, *rest]
        if api_base:
            tiers[name]["api_base"] = api_base
    return {**data, "tiers": tiers}


@dataclass(frozen=True)
class MergeResult:
    """Hold the merged policy and every error found in the repo file."""

    policy: Policy
    errors: tuple[ConfigError, ...]


REPO_SOURCE = ".github/cibot.yml"
# Keys a repo may never set: tiers, endpoints and money are the operator's alone.
OPERATOR_ONLY = {
    "tiers": "tiers, models and api_base come only from the operator's policy",
    "rungs": "hardware rungs come only from the operator's policy",
    "budgets": "use 'budget.monthly_frontier_usd' to lower the budget; raising it is not allowed",
    "history": "acceptance floors come only from the operator's policy",
    "version": "the policy version is the operator's",
}
# A repeat that holds another repeat, e.g. (a+)+, ((a+))+$ or (\w+\s?)*, or an alternation
# under a repeat, can backtrack exponentially in Python's engine
# (https://owasp.org/www-community/attacks/Regular_expression_Denial_of_Service_-_ReDoS).
# Repo patterns are parsed and such shapes refused, whatever parentheses wrap them.
REPEATS = frozenset({re_parser.MAX_REPEAT, re_parser.MIN_REPEAT, re_parser.POSSESSIVE_REPEAT})
# A glob with many wildcards becomes a regex of many .* runs, which backtracks polynomially.
MAX_GLOB_WILDCARDS = 6
# Adjacent runs such as .*x.*y.*z backtrack polynomially, one degree per run.
MAX_UNBOUNDED_REPEATS = 6
MAX_GLOB_LENGTH = 200


def risky_regex(pattern: str) -> str | None:
    """Say why a repo regex could backtrack badly, or None when its shape is safe."""
    try:
        parsed = re_parser.parse(pattern)
    except re.error as exc:
        return f"is not a valid regex: {exc}"
    if _nested(parsed, under_repeat=False):
        return "has nested quantifiers: it repeats a group that repeats or alternates"
    if _unbounded(parsed) > MAX_UNBOUNDED_REPEATS:
        return f"has more than {MAX_UNBOUNDED_REPEATS} unbounded repeats (slow backtracking)"
    return None


def _unbounded(items: Any) -> int:
    """Count the unbounded repeats (*, +, {n,}) anywhere in a parsed regex."""
    total = 0
    for op, arg in items:
        if op in REPEATS:
            total += arg[1] == re_parser.MAXREPEAT
            total += _unbounded(arg[2])
        elif op is re_parser.SUBPATTERN:
            total += _unbounded(arg[-1])
        elif op is re_parser.BRANCH:
            total += sum(_unbounded(branch) for branch in arg[1])
        elif op in (re_parser.ASSERT, re_parser.ASSERT_NOT):
            total += _unbounded(arg[1])
    return total


def _nested(items: Any, *, under_repeat: bool) -> bool:
    """Tell whether a parsed regex repeats something that repeats or alternates."""
    for op, arg in items:
        if op in REPEATS:
            _, high, body = arg
            unbounded = high == re_parser.MAXREPEAT or high > 16
            if under_repeat and unbounded:
                return True
            if _nested(body, under_repeat=under_repeat or unbounded):
                return True
        elif op is re_parser.SUBPATTERN:
            if _nested(arg[-1], under_repeat=under_repeat):
                return True
        elif op is re_parser.BRANCH:
            if under_repeat:
                return True
            if any(_nested(branch, under_repeat=False) for branch in arg[1]):
                return True
        elif op in (re_parser.ASSERT, re_parser.ASSERT_NOT) and _nested(
            arg[1], under_repeat=under_repeat
        ):
            return True
    return False


def check_repo_globs(globs: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse repo globs that are too long or too wild, then check that they compile."""
    for glob in globs:
        if len(glob) > MAX_GLOB_LENGTH or glob.count("*") + glob.count("?") > MAX_GLOB_WILDCARDS:
            raise ValueError(
                f"glob {glob[:40]!r} is over {MAX_GLOB_LENGTH} characters or "
                f"{MAX_GLOB_WILDCARDS} wildcards"
            )
    return check_globs(globs)


Globs = Annotated[tuple[str, ...], AfterValidator(check_repo_globs)]


class _RepoPrivateOnly(Frozen):
    """Let a repo add private_only paths and labels, or pin the whole repo private."""

    repo: bool = False
    paths: Globs = ()
    labels: tuple[str, ...] = ()


class _RepoReview(Frozen):
    """Let a repo tune review noise and auto-review."""

    auto: bool | None = None
    min_severity: Literal["nit", "minor", "major", "critical"] | None = None
    max_findings: int | None = Field(default=None, ge=0, le=50)


class _RepoSkip(Frozen):
    """Let a repo choose whether drafts and bot PRs are skipped."""

    drafts: bool | None = None
    bots: bool | None = None


class _RepoCommands(Frozen):
    """Let a repo choose who may run comment commands."""

    permission: Literal["read", "triage", "write", "maintain", "admin"] | None = None


class _RepoTests(Frozen):
    """Let a repo set its changed-line coverage target."""

    coverage_target: float | None = Field(default=None, ge=0, le=1)


class _RepoBudget(Frozen):
    """Let a repo lower (never raise) the monthly frontier budget."""

    monthly_frontier_usd: float | None = Field(default=None, ge=0)


class _RepoTask(Frozen):
    """Let a repo switch a task off."""

    enabled: bool | None = None


class _RepoContentRule(ContentRule):
    """Check a repo content rule's path globs."""

    paths: Globs = ()


class _RepoService(Service):
    """Check a repo service's path globs."""

    paths: Globs = ()


class _RepoCategory(Frozen):
    """Let a repo add sensitive paths and content patterns (never remove them)."""

    paths: Globs = ()
    content: tuple[_RepoContentRule, ...] = ()

    @field_validator("content")
    @classmethod
    def _safe_patterns(cls, rules: tuple[_RepoContentRule, ...]) -> tuple[_RepoContentRule, ...]:
        """Reject patterns that do not compile or could backtrack catastrophically."""
        for rule in rules:
            if len(rule.pattern) > 300:
                raise ValueError(f"pattern {rule.pattern[:40]!r} is over 300 characters")
            problem = risky_regex(rule.pattern)
            if problem is not None:
                raise ValueError(f"pattern {rule.pattern[:40]!r} {problem}")
        return rules


class _RepoDependencies(Frozen):
    """Let a repo add security-relevant packages (never remove the packaged or operator ones)."""

    packages: dict[
        Ecosystem, dict[Category, Annotated[tuple[PackageName, ...], Field(max_length=200)]]
    ] = Field(default_factory=dict)


REPO_KEYS: dict[str, Any] = {
    "private_only": _RepoPrivateOnly,
    "review": _RepoReview,
    "skip": _RepoSkip,
    "commands": _RepoCommands,
    "tests": _RepoTests,
    "budget": _RepoBudget,
    "tasks": dict[TaskName, _RepoTask],
    "sensitive": dict[Category, _RepoCategory],
    "services": dict[str, _RepoService],
    "dependencies": _RepoDependencies,
    "shadow": bool,
}


def merge_repo_config(
    policy: Policy, text: str | None, *, repo: str = "", source: str = REPO_SOURCE
) -> MergeResult:
    """Merge a repo's `.github/cibot.yml` onto the policy, key by key.

    A repo file may only narrow what leaves the private tiers: its private_only entries
    are added to the operator's, never replace them, and it cannot touch tiers, endpoints
    or budgets upward. A bad key is reported (naming key and file) and skipped; the
    policy's values stay in force for it.
    """
    if not text or not text.strip():
        return MergeResult(policy, ())
    try:
        check_repo_yaml(text, source=source)
        data = parse_yaml(text, source=source)
        check_pattern_count(data, source=source)
    except ConfigError as exc:
        return MergeResult(policy, (exc,))
    merged = policy.model_dump(mode="python")
    errors: list[ConfigError] = []
    for key, value in data.items():
        error = _merge_key(merged, str(key), value, repo=repo, source=source)
        if error is not None:
            errors.append(error)
    try:
        result = Policy.model_validate(merged)
        check_compiles(result, source=source)
    except ValidationError as exc:
        bad, message = validation_message(exc, source=source)
        return MergeResult(policy, (*errors, ConfigError(message, key=bad, source=source)))
    except ConfigError as exc:
        return MergeResult(policy, (*errors, exc))
    return MergeResult(result, tuple(errors))


def _merge_key(
    merged: dict[str, Any], key: str, value: Any, *, repo: str, source: str
) -> ConfigError | None:
    """Validate one top-level repo key and fold it into the policy dump."""
    if key in OPERATOR_ONLY:
        return ConfigError(
            f"{source}: key '{key}' is not allowed here: {OPERATOR_ONLY[key]}",
            key=key,
            source=source,
        )
    if key not in REPO_KEYS:
        allowed = ", ".join(sorted(REPO_KEYS))
        return ConfigError(
            f"{source}: unknown key '{key}' (allowed: {allowed})", key=key, source=source
        )
    try:
        parsed = TypeAdapter(REPO_KEYS[key]).validate_python(value)
    except ValidationError as exc:
        bad, message = validation_message(exc, source=source)
        full = f"{key}.{bad}" if bad != "(top level)" else key
        return ConfigError(
            message.replace(f"key '{bad}'", f"key '{full}'"), key=full, source=source
        )
    MERGERS[key](merged, parsed, repo)
    return None


def _union(old: Any, new: Any) -> list[Any]:
    """Return the operator's entries followed by the repo's new ones, without repeats."""
    out = list(old)
    out.extend(item for item in new if item not in out)
    return out


def _merge_private_only(merged: dict[str, Any], value: _RepoPrivateOnly, repo: str) -> None:
    """Add the repo's private_only entries to the operator's; nothing is ever removed."""
    residency = merged["private_only"]
    residency["paths"] = _union(residency["paths"], value.paths)
    residency["labels"] = _union(residency["labels"], value.labels)
    if value.repo:
        # The merged policy serves only this repo, so "*" pins it even when no name is known.
        residency["repos"] = _union(residency["repos"], [repo or "*"])


def _merge_review(merged: dict[str, Any], value: _RepoReview, repo: str) -> None:
    """Apply the repo's review settings."""
    merged["review"].update(value.model_dump(exclude_none=True))


def _merge_skip(merged: dict[str, Any], value: _RepoSkip, repo: str) -> None:
    """Apply the repo's draft and bot skipping."""
    if value.drafts is not None:
        merged["behaviour"]["skip_drafts"] = value.drafts
    if value.bots is not None:
        merged["behaviour"]["skip_bots"] = value.bots


def _merge_shadow(merged: dict[str, Any], value: bool, repo: str) -> None:
    """Turn shadow mode on for the repo; a repo can never turn off the operator's."""
    if value:
        merged["behaviour"]["shadow"] = True


PERMISSION_ORDER = ("read", "triage", "write", "maintain", "admin")


def _merge_commands(merged: dict[str, Any], value: _RepoCommands, repo: str) -> None:
    """Raise the permission comment commands need; a repo can never lower the operator's."""
    if value.permission is not None:
        current = merged["behaviour"]["command_permission"]
        if PERMISSION_ORDER.index(value.permission) > PERMISSION_ORDER.index(current):
            merged["behaviour"]["command_permission"] = value.permission


def _merge_tests(merged: dict[str, Any], value: _RepoTests, repo: str) -> None:
    """Apply the repo's coverage target."""
    if value.coverage_target is not None:
        merged["behaviour"]["coverage_target"] = value.coverage_target


def _merge_budget(merged: dict[str, Any], value: _RepoBudget, repo: str) -> None:
    """Lower the frontier budget; a higher figure is ignored."""
    if value.monthly_frontier_usd is not None:
        current = merged["budgets"]["monthly_frontier_usd"]
        merged["budgets"]["monthly_frontier_usd"] = min(current, value.monthly_frontier_usd)


def _merge_tasks(merged: dict[str, Any], value: dict[str, _RepoTask], repo: str) -> None:
    """Switch tasks off (or back on) for this repo."""
    for name, task in value.items():
        if task.enabled is not None:
            merged["tasks"][name]["enabled"] = task.enabled


def _keep_operator_rules(merged: dict[str, Any]) -> None:
    """Remember the operator's sensitive rules and packages before a repo adds to them."""
    if merged.get("operator_sensitive") is None:
        merged["operator_sensitive"] = copy.deepcopy(merged["sensitive"])
        merged["operator_dependencies"] = copy.deepcopy(merged["dependencies"])


def _merge_sensitive(merged: dict[str, Any], value: dict[str, _RepoCategory], repo: str) -> None:
    """Add the repo's sensitive paths and patterns to the operator's."""
    _keep_operator_rules(merged)
    for name, rules in value.items():
        target = merged["sensitive"].setdefault(name, {"paths": (), "content": ()})
        target["paths"] = _union(target["paths"], rules.paths)
        target["content"] = _union(target["content"], [r.model_dump() for r in rules.content])


def _merge_dependencies(merged: dict[str, Any], value: _RepoDependencies, repo: str) -> None:
    """Add the repo's security-relevant packages to the operator's, per ecosystem and category."""
    _keep_operator_rules(merged)
    packages = merged["dependencies"]["packages"]
    for ecosystem, categories in value.packages.items():
        target = packages.setdefault(ecosystem, {})
        for category, names in categories.items():
            target[category] = _union(target.get(category, ()), names)


def _merge_services(merged: dict[str, Any], value: dict[str, Service], repo: str) -> None:
    """Add or replace service-map entries."""
    merged["services"].update({name: svc.model_dump() for name, svc in value.items()})


MERGERS: dict[str, Any] = {
    "private_only": _merge_private_only,
    "review": _merge_review,
    "skip": _merge_skip,
    "commands": _merge_commands,
    "tests": _merge_tests,
    "budget": _merge_budget,
    "tasks": _merge_tasks,
    "sensitive": _merge_sensitive,
    "services": _merge_services,
    "dependencies": _merge_dependencies,
    "shadow": _merge_shadow,
}
