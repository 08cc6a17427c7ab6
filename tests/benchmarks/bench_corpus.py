"""Score the router on the whole routing corpus and print the eval table and timing.

Run: python tests/benchmarks/bench_corpus.py [--misses N] [--json] [--policy FILE]
Reads every tests/corpus/cases*.jsonl together (case ids are unique across them). The
diffs are not committed: when some are missing this prints how to rebuild them and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bot import evaluate
from bot.decide import policy_for
from bot.kernel.errors import CibotError
from bot.kernel.settings import Settings
from policies.scoring import report_json

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def corpus_files() -> list[str]:
    """Return the corpus's label files, relative to the working directory when possible."""
    found = sorted(CORPUS.glob("cases*.jsonl"))
    here = Path.cwd()
    return [str(p.relative_to(here)) if p.is_relative_to(here) else str(p) for p in found]


def main() -> int:
    """Load the corpus, skip when it is not rebuilt, otherwise score it and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", type=int, default=0, help="cases to list per row (default 0)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")
    parser.add_argument("--config", help="a repo's .github/cibot.yml to merge onto the policy")
    args = parser.parse_args()
    files = corpus_files()
    if not files:
        print("skipped: no tests/corpus/cases*.jsonl yet")
        return 0
    try:
        located = evaluate.load(files)
        missing = evaluate.absent(located)
        if missing:
            cases = len({item.case.id for item, _ in missing})
            print(
                f"skipped: {cases} of {len(located)} cases have no diff or tree on disk; {evaluate.REBUILD}"
            )
            return 0
        policy = policy_for(args, Settings.from_env())
        report = evaluate.evaluate(located, policy, services=evaluate.services_api())
    except CibotError as exc:
        print(f"bench_corpus: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"sources": files, **report_json(report)}, indent=2))
    else:
        print(evaluate.render(report, files, limit=args.misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
