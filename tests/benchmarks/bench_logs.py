"""Time trimming a 200 MB CI log in a subprocess and report its peak RSS; print a table.

Run: python tests/benchmarks/bench_logs.py [--mb 200] [--runs 3] [--budget 8000]
Goals: the median trim of 200 MB takes at most 5 s, and the child's peak RSS stays at or
under 200 MB (read with getrusage(RUSAGE_CHILDREN), so it covers the whole process:
interpreter, tokenizer and the streaming pass). The CPU time is printed too: on a busy
machine the wall time also counts the time other processes held the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

GOAL_SECONDS = 5.0
GOAL_RSS_MB = 200.0
READ_BYTES = 1 << 20
FAILURES = sorted((ROOT / "tests" / "fixtures" / "logs").glob("*.log"))
NOISE = (
    "{t} \x1b[32mPASSED\x1b[0m tests/unit/test_mod{a}.py::test_case_{b} [ {p}%]",
    "{t}    Compiling serde_derive v1.0.{a} (registry+https://github.com/rust-lang/crates.io-index)",
    "{t} npm WARN deprecated inflight@1.0.{a}: This module is not supported, and leaks memory.",
    "{t} ok  \tgithub.com/acme/payments/internal/pkg{a}\t0.0{b}s",
    "{t} [INFO] Downloading from central: https://repo.maven.apache.org/maven2/org/apache/"
    "commons/commons-lang3/3.{a}/commons-lang3-3.{a}.pom",
    "{t} \x1b[36;1m  inflating: node_modules/@babel/core/lib/transformation/file{a}.js\x1b[0m",
    "{t} test_error_handling_{a} ... ok (handled {b} retries)",
    "{t} ##[group]Run actions/cache@v4",
    "{t} ##[endgroup]",
)


def noise_block(rnd: random.Random, size: int) -> bytes:
    """Return about ``size`` bytes of passing CI output with timestamps and colours."""
    lines, total = [], 0
    while total < size:
        stamp = f"2024-05-14T09:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}.{rnd.randrange(10**7):07d}Z"
        line = rnd.choice(NOISE).format(
            t=stamp, a=rnd.randrange(1000), b=rnd.randrange(100), p=rnd.randrange(100)
        )
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def generate(path: Path, megabytes: int, seed: int = 200) -> int:
    """Write a log of ``megabytes`` MB: passing output with a failure now and then."""
    rnd = random.Random(seed)
    blocks = [noise_block(rnd, READ_BYTES) for _ in range(16)]
    failures = [p.read_bytes().replace(b"\r\n", b"\n") for p in FAILURES]
    written = 0
    with path.open("wb") as out:
        while written < megabytes * 1_000_000:
            data = rnd.choice(blocks)
            if rnd.random() < 0.02:
                data += rnd.choice(failures)
            out.write(data)
            written += len(data)
    return written


def read(path: str) -> Iterator[bytes]:
    """Stream a file in 1 MB reads."""
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_BYTES):
            yield chunk


def child(path: str, budget: int) -> int:
    """Trim one log and print what it saw as JSON (runs in the measured subprocess)."""
    from policies.tokens import count
    from workers.logs import trim

    count("load the tokenizer before the clock starts")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started, cpu = time.perf_counter(), time.process_time()
    trimmed = trim(read(path), budget_tokens=budget)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu": cpu,
                "baseline_mb": baseline,
                "lines": trimmed.lines_seen,
                "bytes": trimmed.bytes_seen,
                "blocks_seen": trimmed.blocks_seen,
                "blocks_kept": len(trimmed.blocks),
                "tokens": trimmed.tokens,
            }
        )
    )
    return 0


def main() -> int:
    """Generate the log, trim it in subprocesses, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget", type=int, default=8_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.budget)
    with tempfile.TemporaryDirectory(prefix="cibot-bench-logs-") as tmp:
        path = Path(tmp) / "ci.log"
        size = generate(path, args.mb)
        results = []
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(path), "--budget", str(args.budget)],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(done.stdout)
            result["wall"] = time.perf_counter() - started
            results.append(result)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    trim_s = statistics.median(r["seconds"] for r in results)
    wall_s = statistics.median(r["wall"] for r in results)
    cpu_s = statistics.median(r["cpu"] for r in results)
    first = results[0]
    print(
        f"log: {size / 1e6:.1f} MB, {first['lines']:,} lines, {first['blocks_seen']} error blocks "
        f"({first['blocks_kept']} kept), trimmed to {first['tokens']:,} tokens (budget {args.budget:,})"
    )
    print(f"{'measure':<36}{'median':>10}{'goal':>10}")
    print(f"{'trim, streaming pass (s)':<36}{trim_s:>10.2f}{GOAL_SECONDS:>10.1f}")
    print(f"{'trim, CPU time (s)':<36}{cpu_s:>10.2f}{'-':>10}")
    print(f"{'child process, wall (s)':<36}{wall_s:>10.2f}{'-':>10}")
    print(f"{'throughput (MB/s)':<36}{size / 1e6 / trim_s:>10.0f}{'-':>10}")
    print(f"{'child peak RSS (MB, max of runs)':<36}{peak:>10.0f}{GOAL_RSS_MB:>10.0f}")
    print(f"{'  of which before trim (MB)':<36}{first['baseline_mb']:>10.0f}{'-':>10}")
    return 0 if trim_s <= GOAL_SECONDS and peak <= GOAL_RSS_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
