"""Benchmark route() on a 5,000-file diff, parsing included, and print a table of medians.

Run: python tests/benchmarks/bench_route.py [--runs N]
Goal: parsing plus routing a 50,000-line, 5,000-file diff takes at most 1 s.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from timing import median_s  # tests/benchmarks/timing.py

from policies import tokens
from policies.evidence import evidence_from_diff, parse_diff
from policies.loading import load_policy
from policies.model import TASKS, Policy
from policies.routing import route, route_many

GOAL_S = 1.0
DIRS = [
    "src/app/models",
    "src/app/views",
    "lib/util",
    "web/components",
    "src/auth",
    "src/billing",
    "infra/k8s",
    "docs",
    "tests/unit",
    "cmd/tool",
]
CODE = [
    "    total = sum(item.price * item.quantity for item in order.items)",
    "    if not user.is_active:",
    "        raise PermissionDenied('inactive user')",
    "    return render(request, 'orders/detail.html', {'order': order})",
    "    logger.info('processed order', extra={'order_id': order.id})",
    "    for index, row in enumerate(rows):",
    "        result.append(transform(row, options=options))",
    "    cache.set(key, value, timeout=300)",
]
# One file in ten also carries a sensitive line, so content rules fire and report.
SENSITIVE = [
    "    token = jwt.encode({'sub': user.id}, settings.SECRET, algorithm='HS256')",
    "    client.charges.create(amount=total, currency='usd', customer=cid)",
]


def make_diff(files: int, lines_per_file: int, *, headers_count: bool) -> bytes:
    """Build a git diff of ``files`` files; each hunk removes and adds code lines.

    With ``headers_count`` the whole diff (headers included) has files × lines_per_file lines;
    otherwise every file changes lines_per_file lines on top of its five header lines.
    """
    body = lines_per_file - 5 if headers_count else lines_per_file
    removed, added = body // 2, body - body // 2
    out: list[str] = []
    for i in range(files):
        path = f"{DIRS[i % len(DIRS)]}/module_{i}.py"
        out.append(
            f"diff --git a/{path} b/{path}\nindex 3b18e51..a9f2c4d 100644\n"
            f"--- a/{path}\n+++ b/{path}\n@@ -{i + 1},{removed} +{i + 1},{added} @@\n"
        )
        out += [f"-{CODE[(i + j) % len(CODE)]}  # v1 {j}\n" for j in range(removed)]
        out += [f"+{CODE[(i + j + 3) % len(CODE)]}  # v2 {j}\n" for j in range(added - 1)]
        out.append(f"+{SENSITIVE[i % 2] if i % 10 == 0 else CODE[i % len(CODE)]}\n")
    return "".join(out).encode()


def time_shape(data: bytes, policy: Policy, runs: int) -> list[tuple[float, float]]:
    """Return (wall, CPU) medians: parse, route, parse+route, with tiktoken, all tasks."""
    evidence = evidence_from_diff(data)

    def parse() -> object:
        return evidence_from_diff(data)

    def route_only() -> object:
        return route("review", evidence, policy)

    def both() -> object:
        return route("review", evidence_from_diff(data), policy)

    def exact() -> object:
        return route("review", evidence_from_diff(data, count=tokens.count), policy)

    def every() -> object:
        return route_many(TASKS, evidence_from_diff(data), policy)

    return [median_s(fn, runs) for fn in (parse, route_only, both, exact, every)]


def main() -> int:
    """Time parse, route and both together on two diff shapes; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    policy = load_policy()
    shapes = {
        "50k diff lines": make_diff(5_000, 10, headers_count=True),
        "50k changed lines": make_diff(5_000, 10, headers_count=False),
    }
    load = os.getloadavg()[0]
    print(f"median of {runs} runs, seconds; load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"goal: parse + route <= {GOAL_S:.1f} s")
    print(
        f"{'diff (5,000 files)':<24} {'MiB':>4} {'parse':>7} {'route':>7} {'parse+route':>12} "
        f"{'+tiktoken':>10} {'all 7 tasks':>12}"
    )
    worst = 0.0
    for name, data in shapes.items():
        assert len(parse_diff(data)) == 5_000 and data.count(b"\n") >= 50_000
        row = time_shape(data, policy, runs)
        worst = max(worst, row[2][1])
        for clock, index in (("wall", 0), ("cpu", 1)):
            cells = " ".join(
                f"{pair[index]:>{w}.3f}" for pair, w in zip(row, (7, 7, 12, 10, 12), strict=True)
            )
            print(f"{name + ' ' + clock:<24} {len(data) / 2**20:>4.1f} {cells}")
    verdict = "meets" if worst <= GOAL_S else "misses"
    print(f"worst parse+route {worst:.3f} s CPU: {verdict} the goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
