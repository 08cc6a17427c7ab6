"""Benchmark storing what a review job gathered (dump) and reading it back (load).

Run: python tests/benchmarks/bench_gathered.py [--runs N]
It compares load with what run_job would do instead besides its GitHub reads: parse the
diff again into the evidence and the numbered hunks. A ratio near 1 means loading costs
about that CPU, and the reads it saves (the PR, its diff, its files, CI logs) come free.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from timing import median_s  # tests/benchmarks/timing.py

from policies.evidence import evidence_from_diff
from policies.loading import load_policy
from workers.github import PullInfo
from workers.jobs import review
from workers.jobs.contract import Gathered, dump, load
from workers.state import pack

LINE = "+value_{n} = compute_something_long({n}, 'argument text')\n"


def make_diff(files: int, lines: int) -> str:
    """Return a diff adding ``lines`` lines to each of ``files`` new files."""
    body = "".join(LINE.format(n=n) for n in range(lines))
    return "".join(
        f"diff --git a/src/mod_{f}.py b/src/mod_{f}.py\n--- a/src/mod_{f}.py\n"
        f"+++ b/src/mod_{f}.py\n@@ -0,0 +1,{lines} @@\n{body}"
        for f in range(files)
    )


def gathered(diff: str) -> Gathered[review.ReviewState]:
    """Build what the review job gathers for this diff, without GitHub."""
    pull = PullInfo(7, "Big change", "", "alice", False, False, "open", False, "a" * 40, "b", "main", "c" * 40, (), "main")  # fmt: skip
    return Gathered(
        pull=pull,
        diff=diff,
        evidence=evidence_from_diff(diff),
        policy=load_policy(None),
        state=review.ReviewState.of(diff),
    )


def main() -> int:
    """Time dump, load and a fresh parse on three diff sizes; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    print(f"median of {runs} runs, CPU seconds; load average {os.getloadavg()[0]:.1f}")
    print(
        f"{'diff':<22} {'diff MiB':>8} {'JSON MiB':>8} {'kept MiB':>8} {'dump':>7} {'load':>7} {'parse':>7} "
        f"{'load/parse':>10}"
    )
    for files, lines in ((10, 50), (50, 100), (200, 100)):
        diff = make_diff(files, lines)
        work = gathered(diff)
        text = dump(work)
        assert load(text, review.ReviewState) == work
        _, dumped = median_s(lambda w=work: dump(w), runs)
        _, loaded = median_s(lambda t=text: load(t, review.ReviewState), runs)
        _, parsed = median_s(lambda d=diff: (evidence_from_diff(d), review.hunks_of(d)), runs)
        name = f"{files * lines:,} lines, {files} files"
        print(
            f"{name:<22} {len(diff) / 2**20:>8.2f} {len(text) / 2**20:>8.2f} "
            f"{len(pack(text)) / 2**20:>8.2f} "
            f"{dumped:>7.3f} {loaded:>7.3f} {parsed:>7.3f} {loaded / parsed:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
