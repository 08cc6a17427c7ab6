"""Count the prompt tokens the summary and review jobs send for real commits, against PR-Agent.

Run: python tests/benchmarks/bench_prompts_real.py [--mirrors ROOT] [--cases] [--json]

The commits are the routing corpus's (tests/corpus/cases-*.jsonl, diffs rebuilt into
tests/corpus/diffs/ by tests/corpus/rebuild.py). The set is every case whose diff changes
at least one source file (a file whose role, by ``policies.anatomy.role_of``, is "source":
not a test, doc, config, deploy, lock, generated, vendored or fixture file), so nothing is
picked by its size. Each prompt is built by the job's own code, exactly as the pipeline
does: the router's decision, then ``summary.compute`` (its one call, or its map and reduce
calls, recorded) and ``review.request``. Tokens are o200k (``policies.tokens.count``) over
every message of every request, the way a recording model stand-in counts them.

With ``--mirrors ROOT`` (the snapshots the corpus was rebuilt from) each commit's subject and
body become the pull request's title and description, as they would on GitHub; without it
the title is the commit's short hash and there is no description, which lowers the figures.

PR-Agent 0.49.0 on 43 real commits: describe median 1,975 tokens (164,228 in total), review
median 3,494 (245,380 in total). Medians are compared as they are; totals per case (total
over 43 against ours over our set). Goal: summary and review both at or under 0.6x.

Last, a synthetic pull request that deletes a 31-file payment plugin (payments/) with one
security-relevant removed line shows what deleted files cost now.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from unidiff.patch import PatchSet  # noqa: E402

from policies import anatomy  # noqa: E402
from policies.evidence import evidence_from_diff  # noqa: E402
from policies.loading import load_policy  # noqa: E402
from policies.model import Policy  # noqa: E402
from policies.routing import route  # noqa: E402
from policies.tokens import count  # noqa: E402
from workers import pipeline  # noqa: E402
from workers.jobs import review, summary  # noqa: E402

CORPUS = ROOT / "tests" / "corpus"
REBUILD = (
    "rebuild them with: for f in tests/corpus/cases-*.jsonl; do "
    'python tests/corpus/rebuild.py --mirrors ROOT --cases "$f"; done'
)
MIN_CASES, MIN_REPOS = 40, 8
GOAL = 0.6
# PR-Agent 0.49.0 on 43 real commits: (median, total) prompt tokens per job.
PR_AGENT = {"summary": (1_975, 164_228), "review": (3_494, 245_380)}
PR_AGENT_CASES = 43
HUNK = re.compile(r"^(?:[RL]\d+\s+)?@@ ", re.MULTILINE)
# A changed line of the prompt's diff, labelled (review) or not; ---/+++ headers are not.
CHANGED = re.compile(r"^(?:[RL]\d+\s+)?[+-](?!-- |\+\+ )", re.MULTILINE)
SENSITIVE_LINE = "    return hmac.compare_digest(signature, expected)"
PLUGIN_FILES = 31


@dataclass(frozen=True)
class Pull:
    """Stand for the pull request a commit would be: its title, description and head."""

    title: str
    body: str
    head_sha: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Done:
    """Stand for a completion, so the summary's map step can go on to its reduce step."""

    data: Any
    calls: tuple[Any, ...] = ()
    fallbacks: int = 0
    fallback_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """Hold what one job sent for one pull request."""

    tokens: int  # every message of every request
    calls: int
    hunks_in: int  # hunks in the pull request's diff
    hunks_shown: int  # hunk headers in the prompt
    lines_in: int  # changed lines in the diff
    lines_shown: int  # changed lines in the prompt
    text: str  # every message of every request, joined


def cases() -> list[dict[str, Any]]:
    """Read every labelled case of the corpus."""
    out = []
    for path in sorted(CORPUS.glob("cases-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def changes_source(diff: str) -> bool:
    """Tell whether a diff changes at least one source file."""
    return any(anatomy.role_of(pf.path) == "source" for pf in PatchSet(diff))


def message(case: dict[str, Any], mirrors: Path | None) -> tuple[str, str]:
    """Return the commit's subject and body from its snapshot, or its short hash and nothing."""
    if mirrors is not None:
        folder = mirrors / case["repo"].replace("/", "+")
        git_dir = folder / "repo" if (folder / "repo").exists() else folder
        done = subprocess.run(
            ["git", f"--git-dir={git_dir}", "log", "-1", "--format=%s%n%n%b", case["commit"]],
            capture_output=True,
            check=False,
        )
        if done.returncode == 0:
            subject, _, body = done.stdout.decode("utf-8", "replace").partition("\n\n")
            return subject.strip(), body.strip()
    return f"Commit {case['commit'][:8]}", ""


def gathered(diff: str, pull: Pull, repo: str, policy: Policy) -> pipeline.Gathered:
    """Gather a pull request as the review job's gather step does (summary's is a subset)."""
    evidence = evidence_from_diff(diff, repo=repo)
    return pipeline.Gathered(
        pull=pull,
        diff=diff,
        evidence=evidence,
        policy=policy,
        state=review.ReviewState.of(diff),
    )


def summary_prompt(work: pipeline.Gathered) -> Prompt:
    """Run the summary job's compute step with a recording model; count what it sent."""
    sent: list[list[dict[str, str]]] = []

    def complete(tier: str, request: pipeline.ModelRequest, reason: str = "") -> Done:
        sent.append(request.messages)
        return Done({"what": "-", "why": "", "risks": [], "files": []})

    summary.compute(work, route("summary", work.evidence, work.policy), complete)
    return measured(work.diff, sent)


def review_prompt(work: pipeline.Gathered) -> Prompt:
    """Build the review job's request; count what it would send."""
    request = review.request(work, route("review", work.evidence, work.policy))
    return measured(work.diff, [request.messages])


def measured(diff: str, requests: list[list[dict[str, str]]]) -> Prompt:
    """Count the tokens, hunks and changed lines of a job's requests against its diff."""
    patch = PatchSet(diff)
    users = [m["content"] for r in requests for m in r if m["role"] == "user"]
    return Prompt(
        tokens=sum(count(m["content"]) for r in requests for m in r),
        calls=len(requests),
        hunks_in=sum(len(pf) for pf in patch),
        hunks_shown=sum(len(HUNK.findall(u)) for u in users),
        lines_in=sum(int(pf.added) + int(pf.removed) for pf in patch),
        lines_shown=sum(len(CHANGED.findall(u.split("\nDiff", 1)[-1])) for u in users),
        text="\n".join(m["content"] for r in requests for m in r),
    )


def ratios(job: str, prompts: list[Prompt]) -> tuple[float, float]:
    """Return our median and per-case total against PR-Agent's."""
    median, total = PR_AGENT[job]
    ours = [p.tokens for p in prompts]
    return (
        statistics.median(ours) / median,
        (sum(ours) / len(ours)) / (total / PR_AGENT_CASES),
    )


def report(job: str, prompts: list[Prompt]) -> dict[str, Any]:
    """Summarise one job's prompts over the set."""
    tokens = [p.tokens for p in prompts]
    by_median, by_total = ratios(job, prompts)
    return {
        "job": job,
        "cases": len(prompts),
        "calls": sum(p.calls for p in prompts),
        "median": statistics.median(tokens),
        "total": sum(tokens),
        "hunks_in": sum(p.hunks_in for p in prompts),
        "hunks_shown": sum(p.hunks_shown for p in prompts),
        "lines_in": sum(p.lines_in for p in prompts),
        "lines_shown": sum(p.lines_shown for p in prompts),
        "vs_pr_agent_median": round(by_median, 3),
        "vs_pr_agent_total_per_case": round(by_total, 3),
        "goal_met": by_median <= GOAL and by_total <= GOAL,
    }


def plugin_diff(lines_per_file: int = 420) -> str:
    """Build a diff that deletes a 31-file payment plugin and unhooks it from the settings."""
    parts = [
        "diff --git a/shop/settings.py b/shop/settings.py\n--- a/shop/settings.py\n"
        "+++ b/shop/settings.py\n@@ -10,4 +10,3 @@ INSTALLED_APPS = [\n"
        '     "shop.catalog",\n     "shop.orders",\n-    "plugins.payments",\n ]\n'
    ]
    for n in range(PLUGIN_FILES):
        path = f"plugins/payments/{'webhooks' if n == 0 else f'views_{n:02d}'}.py"
        body = list(plugin_module(n, lines_per_file))
        parts.append(
            f"diff --git a/{path} b/{path}\ndeleted file mode 100644\n--- a/{path}\n"
            f"+++ /dev/null\n@@ -1,{len(body)} +0,0 @@\n" + "".join(f"-{line}\n" for line in body)
        )
    return "".join(parts)


def plugin_module(n: int, lines: int) -> Iterator[str]:
    """Yield a plugin module's lines: page views, and in the first one a signature check."""
    yield f'"""Pages of the plugin, part {n}."""'
    yield ""
    yield "import hmac" if n == 0 else "from django.shortcuts import render"
    written = 3
    while written < lines - 8:
        yield ""
        yield ""
        yield f"def page_{n}_{written}(request):"
        yield f'    """Show page {written} of the plugin\'s help."""'
        yield f'    context = {{"title": "Help {written}", "section": {n}}}'
        yield f'    return render(request, "plugin/help_{written % 7}.html", context)'
        written += 6
    if n == 0:
        yield ""
        yield ""
        yield "def signature_ok(signature, expected):"
        yield '    """Tell whether the webhook was signed by the gateway."""'
        yield SENSITIVE_LINE


def plugin_case(policy: Policy) -> dict[str, Any]:
    """Build both prompts for the deleted plugin and say what they hold."""
    diff = plugin_diff()
    pull = Pull("Remove the legacy payment plugin", "It is replaced by the new one.", "f" * 40)
    work = gathered(diff, pull, "example/shop", policy)
    out: dict[str, Any] = {"diff_tokens": count(diff), "files": PLUGIN_FILES + 1}
    for job, build in (("summary", summary_prompt), ("review", review_prompt)):
        prompt = build(work)
        text = prompt.text
        out[job] = {
            "tokens": prompt.tokens,
            "sensitive_line_kept": SENSITIVE_LINE in text,
            "deleted_files_named": sum(
                f"plugins/payments/{name}" in text
                for name in ["webhooks.py", *(f"views_{n:02d}.py" for n in range(1, 31))]
            ),
            "deleted_body_lines_shown": text.count('-    context = {"title"'),
        }
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Render the per-job figures as a plain table."""
    head = (
        "job",
        "cases",
        "calls",
        "median",
        "total",
        "hunks shown/in",
        "lines shown/in",
        "vs PR-Agent median",
        "vs PR-Agent total/case",
    )
    body = [
        (
            r["job"],
            str(r["cases"]),
            str(r["calls"]),
            f"{r['median']:,.0f}",
            f"{r['total']:,}",
            f"{r['hunks_shown']:,}/{r['hunks_in']:,}",
            f"{r['lines_shown']:,}/{r['lines_in']:,}",
            f"{r['vs_pr_agent_median']:.2f}x",
            f"{r['vs_pr_agent_total_per_case']:.2f}x",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *body]) + 2 for i in range(len(head))]
    return "\n".join(
        "".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *body]
    )


def run(mirrors: Path | None, policy: Policy) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build both jobs' prompts for every chosen case; return the rows and the per-case figures."""
    chosen, per_case = [], []
    prompts: dict[str, list[Prompt]] = {"summary": [], "review": []}
    for case in cases():
        diff = (CORPUS / case["diff"]).read_text(encoding="utf-8", errors="replace")
        if not changes_source(diff):
            continue
        chosen.append(case)
        title, body = message(case, mirrors)
        work = gathered(diff, Pull(title, body, case["commit"]), case["repo"], policy)
        found = {"summary": summary_prompt(work), "review": review_prompt(work)}
        for job, prompt in found.items():
            prompts[job].append(prompt)
        per_case.append({"id": case["id"], **{j: p.tokens for j, p in found.items()}})
    repos = sorted({c["repo"] for c in chosen})
    rows = [report(job, found) for job, found in prompts.items()] if chosen else []
    return rows, {"cases": len(chosen), "repos": len(repos), "each": per_case}


def render(rows: list[dict[str, Any]], chosen: dict[str, Any], plugin: dict[str, Any]) -> str:
    """Write the figures for a person: the set, the table, PR-Agent's figures, the plugin."""
    lines = [
        f"{chosen['cases']} corpus cases from {chosen['repos']} repositories: every case whose "
        f"diff changes a source file; titles and descriptions {chosen['messages']}",
        table(rows),
        f"PR-Agent 0.49.0, {PR_AGENT_CASES} commits: describe median 1,975 / total 164,228, "
        f"review median 3,494 / total 245,380; goal <= {GOAL}x on both",
    ]
    for row in chosen["listed"]:
        lines.append(f"  {row['id']:<60} summary {row['summary']:>7,}  review {row['review']:>7,}")
    lines.append(
        f"deleted payment plugin ({PLUGIN_FILES} deleted files under plugins/payments/, "
        f"{plugin['diff_tokens']:,} diff tokens):"
    )
    for job in ("summary", "review"):
        found = plugin[job]
        lines.append(
            f"  {job}: {found['tokens']:,} tokens, sensitive removed line kept: "
            f"{found['sensitive_line_kept']}, deleted files named: "
            f"{found['deleted_files_named']}/{PLUGIN_FILES}, deleted body lines shown: "
            f"{found['deleted_body_lines_shown']}"
        )
    return "\n".join(lines)


def main() -> int:
    """Pick the cases, build every prompt, print the figures; 1 when a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=Path, help="snapshots to read commit messages from")
    parser.add_argument("--cases", action="store_true", help="print one line per case too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    labelled = cases()
    missing = [c for c in labelled if not (CORPUS / c["diff"]).exists()]
    if not labelled or missing:
        print(
            f"bench_prompts_real: {len(missing)} of {len(labelled)} corpus diffs are not on "
            f"disk; {REBUILD}",
            file=sys.stderr,
        )
        return 2
    policy = load_policy(None)
    rows, chosen = run(args.mirrors, policy)
    if chosen["cases"] < MIN_CASES or chosen["repos"] < MIN_REPOS:
        print(
            f"bench_prompts_real: only {chosen['cases']} cases from {chosen['repos']} "
            f"repositories change source files (need {MIN_CASES} from {MIN_REPOS})",
            file=sys.stderr,
        )
        return 2
    plugin = plugin_case(policy)
    if args.json:
        print(json.dumps({"jobs": rows, "plugin": plugin, "cases": chosen["each"]}, indent=2))
    else:
        chosen["messages"] = "from the commits" if args.mirrors else "not read (pass --mirrors)"
        chosen["listed"] = sorted(chosen["each"], key=lambda r: -r["review"]) if args.cases else []
        print(render(rows, chosen, plugin))
    plugin_ok = all(
        plugin[j]["sensitive_line_kept"] and plugin[j]["deleted_files_named"] == PLUGIN_FILES
        for j in ("summary", "review")
    )
    return 0 if all(r["goal_met"] for r in rows) and plugin_ok else 1


if __name__ == "__main__":
    sys.exit(main())
