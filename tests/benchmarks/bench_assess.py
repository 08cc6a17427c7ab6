"""Benchmark `cibot assess`: commits per second, and the jobs' prompt tokens against the old estimate.

Run: python tests/benchmarks/bench_assess.py [--commits N] [--runs N] [--repo PATH] [--last N]

The timing part builds a repo in a temporary directory with `git fast-import`: ordinary
commits, some sensitive ones, manifest bumps, and a --no-ff style merge every tenth change.
Goal: at least 50 commits/s for the replay with the added-lines estimate (``--quick``).

The token part replays the last ``--last`` changes (default 200) of ``--repo`` (default: the
generated repo) twice: with the added-lines estimate (added lines plus a fixed 700-token
overhead) and with the jobs' own prompts, and prints, per task, the total and median prompt
tokens of each and their ratio, and the measured replay's commits per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from timing import median_s  # tests/benchmarks/timing.py

from policies import tokens
from policies.loading import build_policy, default_policy_text, parse_yaml
from policies.model import Policy
from workers import history
from workers.assess import tier_prices
from workers.assess_prompts import prompts_for

GOAL = 50.0
START = 1_700_000_000
PATHS = [
    "src/app/orders.py",
    "src/app/views.py",
    "src/app/models.py",
    "lib/util/text.py",
    "web/components/Cart.tsx",
    "docs/guide.md",
    "tests/test_orders.py",
    "src/auth/session.py",
    "src/billing/invoices.py",
    "infra/main.tf",
]
SENSITIVE_LINES = [
    "token = jwt.encode({'sub': user.id}, key, algorithm='HS256')",
    "client.charges.create(amount=total, currency='usd')",
]


def content(path: str, version: int) -> str:
    """Return a ~60-line file whose lines near the version change from one version to the next."""
    lines = [f"value_{j} = compute({j}, scale=2)  # {path}" for j in range(60)]
    for j in range(5):
        lines[(version * 7 + j * 11) % 60] = f"value_{j} = compute({j}, scale={version})"
    if version % 9 == 0:
        lines[30] = SENSITIVE_LINES[version % 2]
    return "\n".join(lines) + "\n"


def blob(path: str, text: str) -> str:
    """Return a fast-import inline file modification."""
    data = text.encode()
    return f"M 100644 inline {path}\ndata {len(data)}\n{text}\n"


def commit(ref: str, mark: int, ts: int, message: str, parents: list[int], body: str) -> str:
    """Return one fast-import commit command."""
    msg = message.encode()
    lines = [
        f"commit {ref}",
        f"mark :{mark}",
        f"author Dev <dev@example.com> {ts} +0000",
        f"committer Dev <dev@example.com> {ts} +0000",
        f"data {len(msg)}",
        message,
    ]
    if parents:
        lines.append(f"from :{parents[0]}")
    lines += [f"merge :{parent}" for parent in parents[1:]]
    return "\n".join(lines) + "\n" + body + "\n"


def stream(changes: int) -> str:
    """Return a fast-import stream with ``changes`` first-parent changes; every tenth merges."""
    out: list[str] = []
    versions: dict[str, int] = {}
    mark = 0
    tip: int | None = None  # the mark of main's last commit
    for n in range(changes):
        ts = START + n * 3_600
        parents = [] if tip is None else [tip]
        paths = [PATHS[(n * 3 + k) % len(PATHS)] for k in range(1 + n % 3)]
        body = ""
        for path in paths:
            versions[path] = versions.get(path, 0) + 1
            body += blob(path, content(path, versions[path]))
        if n % 25 == 5:  # a dependency bump; every other one is a django major
            django = f"{4 + n // 50}.{n % 7}.0"
            body += blob("requirements.txt", f"django=={django}\nrequests==2.{n // 25}.0\n")
        if n and n % 10 == 0:
            mark += 1
            out.append(commit("refs/heads/feature", mark, ts - 60, f"feature {n}", parents, body))
            mark += 1
            out.append(
                commit("refs/heads/main", mark, ts, f"Merge #{n}", [*parents, mark - 1], body)
            )
        else:
            mark += 1
            out.append(commit("refs/heads/main", mark, ts, f"change {n}", parents, body))
        tip = mark
    return "".join(out)


def build_repo(where: Path, changes: int) -> Path:
    """Create a bare-free repo with ``changes`` first-parent changes via git fast-import."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", "-b", "main", str(where)], check=True, env=env)
    subprocess.run(
        ["git", "fast-import", "--quiet"],
        cwd=where,
        input=stream(changes).encode(),
        check=True,
        env=env,
    )
    subprocess.run(["git", "checkout", "-q", "main"], cwd=where, check=True, env=env)
    return where


def priced_policy() -> tuple[Policy, dict[str, object]]:
    """Return the default policy with explicit API prices (and its data, for the CLI)."""
    data = parse_yaml(default_policy_text(), source="default")
    data["tiers"]["mid"]["price"] = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
    data["tiers"]["frontier"]["price"] = {"input_per_mtok": 5.0, "output_per_mtok": 25.0}
    return build_policy(data, source="priced"), data


def per_task(tally: history.Tally) -> dict[str, list[int]]:
    """Return each task's prompt tokens, one entry per task run, from a replay's rows."""
    out: dict[str, list[int]] = {}
    for row in tally.rows:
        for task in row["tasks"]:
            out.setdefault(task["task"], []).append(task["prompt_tokens"])
    return out


def compare(repo: Path, last: int, policy: Policy) -> dict[str, Any]:
    """Replay ``repo`` with the added-lines estimate and with the jobs' prompts; time the second."""
    prices = tier_prices(policy)
    old = history.replay(history.walk(repo, last), policy, prices, tokens.count)
    started = time.perf_counter()
    new = history.replay(
        history.walk(repo, last), policy, prices, tokens.count, prompts_for(repo, policy)
    )
    return {"old": per_task(old), "new": per_task(new), "changes": new.changes,
            "seconds": time.perf_counter() - started}  # fmt: skip


def print_comparison(where: str, found: dict[str, Any]) -> None:
    """Print the per-task token table of ``compare``."""
    print(f"\nprompt tokens on {where}: {found['changes']} changes, jobs' prompts replayed in "
          f"{found['seconds']:.1f} s ({found['changes'] / found['seconds']:.1f} commits/s)")  # fmt: skip
    print(f"{'task':<8} {'runs':>5} {'old total':>11} {'jobs total':>11} {'ratio':>6} "
          f"{'old median':>11} {'jobs median':>12} {'ratio':>6}")  # fmt: skip
    old_all = new_all = 0
    for task, new in sorted(found["new"].items()):
        old = found["old"][task]
        old_all, new_all = old_all + sum(old), new_all + sum(new)
        mo, mn = statistics.median(old), statistics.median(new)
        print(f"{task:<8} {len(new):>5} {sum(old):>11,} {sum(new):>11,} "
              f"{sum(new) / max(sum(old), 1):>6.2f} {mo:>11,.0f} {mn:>12,.0f} "
              f"{mn / max(mo, 1):>6.2f}")  # fmt: skip
    print(f"{'all':<8} {'':>5} {old_all:>11,} {new_all:>11,} {new_all / max(old_all, 1):>6.2f}")


def main() -> int:
    """Build the repo, time the replay in-process and through the CLI, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", type=Path, help="a real checkout for the token comparison")
    parser.add_argument("--last", type=int, default=200, help="changes in the token comparison")
    args = parser.parse_args()
    policy, data = priced_policy()
    if args.repo is not None:
        print_comparison(str(args.repo), compare(args.repo, args.last, policy))
        return 0
    timing(args, policy, data)
    return 0


def timing(args: argparse.Namespace, policy: Policy, data: dict[str, object]) -> None:
    """Time the added-lines replay and the CLI on a generated repo, then compare the tokens."""
    prices = tier_prices(policy)
    with tempfile.TemporaryDirectory(prefix="cibot-bench-") as tmp:
        started = time.perf_counter()
        repo = build_repo(Path(tmp) / "repo", args.commits)
        built = time.perf_counter() - started
        (Path(tmp) / "priced.yml").write_text(yaml.safe_dump(data), encoding="utf-8")
        walk_only = median_s(lambda: sum(1 for _ in history.walk(repo, args.commits)), args.runs)
        tally = history.replay(history.walk(repo, args.commits), policy, prices, tokens.count)
        assert tally.changes == args.commits and tally.merges == (args.commits - 1) // 10
        replay = median_s(
            lambda: history.replay(history.walk(repo, args.commits), policy, prices, tokens.count),
            args.runs,
        )
        command = [
            sys.executable, "-m", "bot.cli", "assess", "--repo", str(repo), "--json", "--quick",
            "--last", str(args.commits), "--policy", str(Path(tmp) / "priced.yml"),
        ]  # fmt: skip
        cli = median_s(
            lambda: subprocess.run(command, check=True, capture_output=True, timeout=600),
            args.runs,
        )
        found = compare(repo, min(args.last, args.commits), policy)
    n = args.commits
    print(f"repo: {n} first-parent changes ({tally.merges} merges), built in {built:.2f} s")
    print(f"median of {args.runs} runs; tasks routed per replay: {sum(tally.tiers.values())}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'what':<36} {'wall s':>7} {'cpu s':>7} {'commits/s wall':>15} {'commits/s cpu':>14}")
    for name, (wall, cpu) in [
        ("git log -p stream and split", walk_only),
        ("history.replay(history.walk(...))", replay),
        ("cibot assess --json --quick", cli),
    ]:
        print(f"{name:<36} {wall:>7.3f} {cpu:>7.3f} {n / wall:>15.1f} {n / cpu:>14.1f}")
    rate = n / max(replay[0], cli[0])
    print(
        f"slowest {rate:.1f} commits/s (wall): {'meets' if rate >= GOAL else 'misses'} the "
        f"{GOAL:.0f}/s goal"
    )
    print_comparison("the generated repo", found)


if __name__ == "__main__":
    sys.exit(main())
