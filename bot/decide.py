"""Run ``cibot route``: explain how one task on one diff would be routed."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.kernel.errors import ConfigError, InputError
from bot.kernel.settings import Settings
from policies import tokens
from policies.evidence import CiFacts, Evidence, TestFacts, evidence_from_diff, packed_estimate
from policies.loading import load_policy, merge_repo_config
from policies.model import TASKS, TIER_ORDER, Policy
from policies.routing import Decision, route
from policies.services import Reader, ServiceMap, discover

HUMAN = """\
{task} → {tier} ({model})
categories:   {categories}
private_only: {private}
why:
{why}"""
MAX_FILE = 1024 * 1024  # build and deploy files are small; skip anything larger


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot route``."""
    parser.add_argument(
        "--diff", help="unified diff file, or - for stdin (the default when stdin is a pipe)"
    )
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    parser.add_argument("--config", help="a repo's .github/cibot.yml to merge onto the policy")
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")
    parser.add_argument("--facts", help="JSON file of extra facts: repo, labels, ci, tests, ...")
    parser.add_argument(
        "--repo", help="a git checkout of the PR head: discover its services from the tree"
    )
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def read_input(name: str) -> bytes:
    """Read a file, or stdin for '-', as bytes; raise InputError when it cannot be read."""
    if name == "-":
        if sys.stdin.isatty():
            raise InputError("no diff given: pipe one in (`git diff | cibot ...`) or pass --diff")
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from exc


def read_checkout(repo: str) -> tuple[list[str], Reader]:
    """List a git checkout's tracked files and return a reader over its working tree."""
    root = Path(repo)
    if not root.is_dir():
        what = "not a directory" if root.exists() else "no such directory"
        raise InputError(f"--repo {repo}: {what}; pass the path of a git checkout")
    top = _git(repo, "rev-parse", "--show-toplevel").decode("utf-8", "replace").strip()
    listed = _git(top, "ls-files", "-z").decode("utf-8", "replace").split("\0")
    return [path for path in listed if path], _reader(Path(top))


def _git(repo: str, *args: str) -> bytes:
    """Run git in a checkout; raise InputError saying how to fix a failure."""
    try:
        done = subprocess.run(["git", "-C", repo, *args], capture_output=True, timeout=120)
    except FileNotFoundError as exc:
        raise InputError("git is not installed: install git to read --repo") from exc
    except subprocess.TimeoutExpired as exc:
        raise InputError(
            f"--repo {repo}: git took over {exc.timeout:.0f}s to list the tree"
        ) from exc
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f" ({said[0]})" if said else ""
        raise InputError(f"--repo {repo}: not a git checkout{detail}; pass a clone of the repo")
    return done.stdout


def _reader(root: Path) -> Reader:
    """Return a reader of the checkout's files: text, or None for what it must not read."""

    def read(path: str) -> str | None:
        if path.startswith("/") or ".." in path.split("/"):
            return None
        target = root / path
        try:
            # A tracked symlink may point outside the checkout: never read through one.
            if target.is_symlink() or not target.is_file() or target.stat().st_size > MAX_FILE:
                return None
            return target.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    return read


def checkout_services(repo: str) -> ServiceMap:
    """Discover the services of a git checkout from its tracked files."""
    paths, read = read_checkout(repo)
    return discover(paths, read)


def policy_for(args: argparse.Namespace, settings: Settings) -> Policy:
    """Load the operator policy and merge the repo config; any config error is fatal here."""
    path = Path(args.policy) if args.policy else settings.policy_path
    policy = load_policy(path, overrides=settings.tier_overrides)
    if not args.config:
        return policy
    text = read_input(args.config).decode("utf-8", errors="replace")
    merged = merge_repo_config(policy, text, source=args.config)
    if merged.errors:
        first = merged.errors[0]
        raise ConfigError(str(first), key=first.key, source=first.source)
    return merged.policy


def facts_from(name: str | None) -> dict[str, Any]:
    """Read the optional facts file into Evidence keyword arguments."""
    if not name:
        return {}
    try:
        raw = json.loads(read_input(name))
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except ValueError as exc:  # bytes that are not UTF-8, UTF-16 or UTF-32
        raise InputError(f"{name}: not valid JSON text ({exc})") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{name}: facts must be a JSON object")
    try:
        return _facts(raw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: {exc}") from exc


def _strings(value: Any, key: str) -> tuple[str, ...]:
    """Return a JSON list as strings; a bare string would be split into characters, so refuse it."""
    if not isinstance(value, list):
        raise ValueError(f"'{key}' must be a list of strings")
    return tuple(map(str, value))


def _object(value: Any, key: str) -> dict[str, Any]:
    """Return a JSON object, or refuse anything else."""
    if not isinstance(value, dict):
        raise ValueError(f"'{key}' must be an object")
    return value


def _facts(raw: dict[str, Any]) -> dict[str, Any]:
    """Convert a facts object into typed Evidence fields."""
    facts: dict[str, Any] = {}
    if "repo" in raw:
        facts["repo"] = str(raw["repo"])
    if "labels" in raw:
        facts["labels"] = frozenset(_strings(raw["labels"], "labels"))
    if "ci" in raw:
        ci = _object(raw["ci"], "ci")
        facts["ci"] = CiFacts(
            _strings(ci.get("failed_jobs", []), "ci.failed_jobs"),
            _strings(ci.get("failed_paths", []), "ci.failed_paths"),
        )
    if "tests" in raw:
        tests = _object(raw["tests"], "tests")
        coverage = tests.get("coverage")
        facts["tests"] = TestFacts(
            int(tests.get("failed_rounds", 0)), None if coverage is None else float(coverage)
        )
    if "removed_symbols" in raw:
        facts["removed_symbols"] = _strings(raw["removed_symbols"], "removed_symbols")
    if "frontier_spend_usd" in raw:
        facts["frontier_spend_usd"] = float(raw["frontier_spend_usd"])
    if "force_tier" in raw:
        if raw["force_tier"] not in TIER_ORDER:
            raise ValueError(f"'force_tier' must be one of {', '.join(TIER_ORDER)}")
        facts["force_tier"] = raw["force_tier"]
    return facts


def render(decision: Decision) -> str:
    """Explain a decision in one screen."""
    reasons = decision.reasons or ()
    why = (
        "\n".join(f"  - {r.trigger}: {r.evidence}" for r in reasons)
        or "  - default tier, no trigger fired"
    )
    return HUMAN.format(
        task=decision.task,
        tier=decision.tier,
        model=decision.model,
        categories=", ".join(decision.categories) or "none",
        private="yes" if decision.private_only else "no",
        why=why,
    )


def exact_near_windows(task: str, evidence: Evidence, policy: Policy) -> Evidence:
    """Count the packed tokens exactly (tiktoken) only when the estimate is near a window.

    The estimate (about 3.5 characters a token) only decides whether the work fits each
    tier's context window. Loading the o200k tokenizer costs more than routing a
    50,000-line diff, so it is paid only where an exact count could change the decision.
    On the routing corpus the estimate was 0.43 to 1.56 times the exact count, so a
    limit between estimate / 1.75 and estimate × 2.5 gets an exact count.
    """
    output = policy.tasks[task].expected_output_tokens  # type: ignore[index]
    reserve = policy.behaviour.context_reserve_tokens
    limits = [t.context_window - output - reserve for t in policy.tiers.values()]
    estimate = evidence.packed_tokens
    if not any(estimate / 1.75 <= limit <= estimate * 2.5 for limit in limits):
        return evidence
    return replace(evidence, packed_tokens=packed_estimate(evidence.files, tokens.count))


def run(args: argparse.Namespace) -> int:
    """Route the task and print the decision."""
    if args.task not in TASKS:
        raise InputError(f"unknown task '{args.task}': choose one of {', '.join(TASKS)}")
    settings = Settings.from_env()
    policy = policy_for(args, settings)
    facts = facts_from(args.facts)
    if args.repo:
        facts["services"] = checkout_services(args.repo)
    diff = read_input(args.diff or "-")
    if args.diff is None and not diff:
        raise InputError("no diff on stdin: pipe one in (`git diff | cibot ...`) or pass --diff")
    evidence: Evidence = evidence_from_diff(diff, **facts)
    decision = route(args.task, exact_near_windows(args.task, evidence, policy), policy)
    print(json.dumps(decision.to_json(), indent=2) if args.json else render(decision))
    return 0
