"""Time packing a 50,000-line diff into a 16k-token budget; print a table of medians.

Run: python tests/benchmarks/bench_packing.py [--runs 7] [--lines 50000] [--budget 16000]
Goal: the median pack() time stays at or under 1 s.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from policies.tokens import count
from workers.packing import Flags, chunks, pack

T = TypeVar("T")
GOAL_SECONDS = 1.0
WORDS = [
    "request",
    "response",
    "session",
    "token",
    "user",
    "account",
    "invoice",
    "order",
    "amount",
    "total",
    "cache",
    "retry",
    "timeout",
    "handler",
    "config",
    "value",
    "result",
    "error",
    "status",
    "payload",
    "client",
    "server",
    "queue",
    "event",
]
SHAPES = (
    ("py", "def {a}_{b}(self, {c}):", "    {a} = self.{b}({c}, retries={n})", "    return {a}"),
    ("ts", "export function {a}{B}({c}: {B}) {{", "  const {a} = await {b}({c}, {n});", "}}"),
    ("go", "func (s *{B}) {A}({c} int) error {{", "\t{a}, err := s.{b}({c}, {n})", "}}"),
)
DIRS = ("src/auth", "src/billing", "src/api", "web/src/cart", "internal/ledger", "pkg/queue")


def code_line(rnd: random.Random, template: str) -> str:
    """Fill one code-shaped line with words."""
    a, b, c = rnd.sample(WORDS, 3)
    return template.format(a=a, b=b, c=c, A=a.title(), B=b.title(), n=rnd.randrange(100))


def file_diff(rnd: random.Random, index: int, budget_lines: int) -> tuple[str, int]:
    """Return one file's diff with a few hunks, and how many lines it has."""
    ext, head, body, tail = SHAPES[index % len(SHAPES)]
    path = f"{DIRS[index % len(DIRS)]}/module_{index}.{ext}"
    out = [
        f"diff --git a/{path} b/{path}",
        "index 1a2b3c4..5d6e7f8 100644",
        f"--- a/{path}",
        f"+++ b/{path}",
    ]
    start = 1
    for _ in range(rnd.randint(1, 8)):
        removed = rnd.randint(0, 12)
        added = 0 if rnd.random() < 0.08 else rnd.randint(1, 30)
        lines = [" " + code_line(rnd, head), " " + code_line(rnd, body), " " + code_line(rnd, body)]
        lines += ["-" + code_line(rnd, body) for _ in range(removed)]
        lines += ["+" + code_line(rnd, body) for _ in range(added)]
        lines += [
            " " + code_line(rnd, body),
            " " + code_line(rnd, body),
            " " + code_line(rnd, tail),
        ]
        old, new = 6 + removed, 6 + added
        section = code_line(rnd, head)
        out.append(f"@@ -{start},{old} +{start},{new} @@ {section}")
        out += lines
        start += old + rnd.randint(20, 80)
        if len(out) >= budget_lines:
            break
    return "\n".join(out) + "\n", len(out)


def lock_diff(lines: int) -> str:
    """Return a package-lock.json diff of about ``lines`` lines."""
    body = []
    for i in range(lines // 2):
        body += [f'-      "version": "1.{i}.0",', f'+      "version": "1.{i}.1",']
    head = f"diff --git a/package-lock.json b/package-lock.json\n--- a/package-lock.json\n+++ b/package-lock.json\n@@ -1,{len(body) // 2} +1,{len(body) // 2} @@\n"
    return head + "\n".join(body) + "\n"


def make_diff(total_lines: int, seed: int = 50_000) -> str:
    """Build a realistic diff of ``total_lines`` lines: many code files and one lock file."""
    rnd = random.Random(seed)
    parts = [lock_diff(total_lines // 10)]
    lines = total_lines // 10
    index = 0
    while lines < total_lines:
        text, size = file_diff(rnd, index, total_lines - lines)
        parts.append(text)
        lines += size
        index += 1
    return "".join(parts)


def timed(func: Callable[[], T], runs: int) -> tuple[float, T]:
    """Return the median wall time of ``runs`` calls and the last result."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--budget", type=int, default=16_000)
    args = parser.parse_args()
    diff = make_diff(args.lines)
    count("warm up the tokenizer")
    # The jobs pass the router's flags (packing.flags_for); the auth files stand for them.
    paths = re.findall(r"^\+\+\+ b/(src/auth/\S+)$", diff, re.MULTILINE)
    flags = Flags(paths=frozenset(paths))
    pack_s, packed = timed(lambda: pack(diff, budget_tokens=args.budget, flags=flags), args.runs)
    parts_s, parts = timed(lambda: chunks(diff, budget_tokens=args.budget, flags=flags), args.runs)
    # A caller with no flags (tests, deps, ci) has the packer run the detectors itself.
    own_s, own = timed(lambda: pack(diff, budget_tokens=args.budget), args.runs)
    raw_tokens = count(diff)
    print(
        f"diff: {diff.count(chr(10)):,} lines, {len(diff):,} chars, {raw_tokens:,} tokens; budget {args.budget:,}"
    )
    print(f"{'operation':<28}{'median s':>10}{'goal s':>8}{'result':>44}")
    print(
        f"{'pack (one budget)':<28}{pack_s:>10.3f}{GOAL_SECONDS:>8.1f}{f'{packed.tokens:,} tokens, {len(packed.hunks)} hunks kept':>44}"
    )
    print(
        f"{'pack, detectors run inside':<28}{own_s:>10.3f}{'-':>8}{f'{own.tokens:,} tokens, {len(own.hunks)} hunks kept':>44}"
    )
    print(
        f"{'chunks (map-reduce parts)':<28}{parts_s:>10.3f}{'-':>8}{f'{len(parts)} parts, max {max(p.tokens for p in parts):,} tokens':>44}"
    )
    return 0 if pack_s <= GOAL_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
