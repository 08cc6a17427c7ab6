"""Test diff packing: whole hunks within budget, policy omissions, context, and map-reduce parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from unidiff.patch import PatchSet

from bot.kernel.errors import InputError
from policies.evidence import evidence_from_diff
from policies.loading import load_policy
from policies.reasons import Reason
from policies.routing import route
from policies.tokens import count
from workers import pipeline
from workers.jobs import ci, deps, review, summary
from workers.jobs import tests as tests_job
from workers.jobs.contract import JobState
from workers.packing import (
    NOTHING,
    Flags,
    HunkRef,
    Omission,
    Packed,
    budget,
    chunks,
    flags,
    pack,
)

DIFFS = Path(__file__).parent / "fixtures" / "diffs"
FIVE = (DIFFS / "packing_five_hunks.diff").read_text(encoding="utf-8")
HEAD = (DIFFS / "packing_five_hunks.head.txt").read_text(encoding="utf-8")
MIXED = (DIFFS / "packing_mixed.diff").read_text(encoding="utf-8")
INVOICE = "services/billing/invoice.py"


# The auth module flagged as sensitive, as the router's reasons would flag it.
AUTH = Flags(paths=frozenset({"src/auth/session.py"}))


def hunk_texts(text: str) -> dict[tuple[str, int, int], list[str]]:
    """Map each hunk of a diff to its changed lines, keyed by file and old/new line numbers."""
    out = {}
    for pf in PatchSet(text):
        for hunk in pf:
            changed = [str(line) for line in hunk if line.line_type in "+-"]
            first = next(line for line in hunk if line.line_type in "+-")
            out[(pf.path, first.source_line_no or 0, first.target_line_no or 0)] = changed
    return out


def assert_matches_head(text: str, head: str, path: str) -> None:
    """Check every context and added line of ``path`` sits at its line number in the head file."""
    lines = head.split("\n")
    for pf in PatchSet(text):
        if pf.path != path:
            continue
        for hunk in pf:
            for line in hunk:
                if line.target_line_no:
                    assert lines[line.target_line_no - 1] == line.value.rstrip("\n")


def test_everything_fits_in_a_big_budget() -> None:
    """Keep all five hunks, with the same changed lines, and say nothing was left out."""
    packed = pack(FIVE, budget_tokens=100_000)
    assert packed.files == (INVOICE,)
    assert packed.hunks == tuple(HunkRef(INVOICE, i) for i in range(5))
    assert packed.omitted == ()
    assert packed.note == ""  # no boilerplate when nothing was left out
    assert packed.complete
    assert not packed.text.startswith("#")
    assert packed.noted == packed.text
    assert hunk_texts(packed.text) == hunk_texts(FIVE)
    assert packed.tokens == count(packed.text)
    assert_matches_head(packed.text, HEAD, INVOICE)


def test_every_budget_keeps_whole_hunks_and_reports_the_rest() -> None:
    """Never exceed the budget, never cut a hunk, and account for every hunk left out."""
    full = pack(FIVE, budget_tokens=100_000)
    whole = hunk_texts(full.text)
    dropped_some = False
    for limit in range(1, full.tokens + 40, 7):
        packed = pack(FIVE, budget_tokens=limit)
        assert packed.tokens <= limit
        assert packed.tokens == count(packed.noted)
        kept = hunk_texts(packed.text) if packed.text else {}
        for key, lines in kept.items():
            assert whole[key] == lines  # a kept hunk is never cut
        left = sum(o.hunks for o in packed.omitted if o.reason == "budget")
        assert len(packed.hunks) + left == 5
        assert len(kept) == len(packed.hunks)
        if 0 < len(packed.hunks) < 5:
            dropped_some = True
            assert packed.noted.startswith("# cibot: Left out: over the token budget")
            assert not packed.text.startswith("#")  # the note is said once, by the caller
            assert "over the token budget" in packed.note
            assert not packed.complete
    assert dropped_some


def test_a_budget_for_three_hunks_drops_two_and_names_them() -> None:
    """Keep the hunks that fit and report the others in the note."""
    full = pack(FIVE, budget_tokens=100_000)
    limit = full.tokens * 2 // 3
    packed = pack(FIVE, budget_tokens=limit)
    assert 0 < len(packed.hunks) < 5
    (omission,) = packed.omitted
    assert omission.path == INVOICE
    assert omission.reason == "budget"
    assert omission.hunks == 5 - len(packed.hunks)
    assert omission.lines > 0
    assert f"({omission.lines} changed lines) in {INVOICE}" in packed.note


def test_context_is_cut_to_the_requested_lines() -> None:
    """Keep no context with context_lines=0, and headers that still match the lines."""
    packed = pack(FIVE, budget_tokens=100_000, context_lines=0)
    patch = PatchSet(packed.text)  # the counts in every @@ header must match
    for hunk in patch[0]:
        lines = list(hunk)
        assert lines[0].line_type in "+-"
        assert lines[-1].line_type in "+-"  # context inside a hunk stays, at its edges it goes
    assert hunk_texts(packed.text) == hunk_texts(FIVE)
    assert packed.tokens < pack(FIVE, budget_tokens=100_000).tokens


def test_context_reaches_up_to_the_enclosing_function() -> None:
    """Extend a hunk's context to its def line when the head file is given."""
    plain = pack(FIVE, budget_tokens=100_000, context_lines=1)
    extended = pack(FIVE, budget_tokens=100_000, context_lines=1, source=lambda p: HEAD)
    signature = "    def add(self, line: Line) -> None:\n"
    assert signature not in plain.text
    assert " " + signature in extended.text
    # git's @@ line already names merge(), so its signature is not repeated as context
    assert "@@ def merge(first: Invoice, second: Invoice) -> Invoice:\n" in extended.text
    assert "\n def merge(" not in extended.text
    assert hunk_texts(extended.text) == hunk_texts(FIVE)
    assert_matches_head(extended.text, HEAD, INVOICE)


def test_a_stale_head_file_is_not_used() -> None:
    """Leave context alone when the head file does not match the diff."""
    stale = "\n".join(f"def line_{i}():" for i in range(200))
    plain = pack(FIVE, budget_tokens=100_000, context_lines=1)
    assert pack(FIVE, budget_tokens=100_000, context_lines=1, source=lambda p: stale) == plain
    assert pack(FIVE, budget_tokens=100_000, context_lines=1, source=lambda p: None) == plain


def test_policy_leaves_out_lock_generated_binary_and_deletion_only() -> None:
    """Drop lock, generated, vendored and binary files, deleted bodies and deletion-only hunks."""
    packed = pack(MIXED, budget_tokens=100_000, flags=NOTHING)
    reasons = {(o.path, o.reason) for o in packed.omitted}
    assert reasons == {
        ("package-lock.json", "lock_file"),
        ("services/api/mock_store.go", "generated"),  # "DO NOT EDIT" in the first lines
        ("services/api/proto/api_pb2.py", "generated"),
        ("vendor/github.com/pkg/errors/errors.go", "generated"),
        ("web/static/logo.png", "binary"),
        ("scripts/util.py", "deletion_only"),
        ("scripts/obsolete.py", "deleted"),
        ("src/auth/session.py", "deletion_only"),
    }
    assert packed.complete
    for name in ("package-lock.json", "mock_store.go", "api_pb2.py", "errors.go", "logo.png"):
        assert name in packed.note
    assert "2 deletion-only hunks" in packed.note
    deleted = "deleted files, only lines flagged as sensitive shown: scripts/obsolete.py (2 lines)"
    assert deleted in packed.note
    assert "old_unused" not in packed.text
    assert "left-pad" not in packed.text


def test_renames_and_deleted_files_keep_their_headers() -> None:
    """Show a pure rename and a rename with changes as valid diff headers; name a deletion."""
    packed = pack(MIXED, budget_tokens=100_000, flags=NOTHING)
    files = {pf.path: pf for pf in PatchSet(packed.text)}
    assert files["scripts/release_notes.py"].is_rename
    assert files["scripts/config.py"].is_rename
    assert "+    return {'debug': False}\n" in packed.text
    # ---/+++ already say the rename: git's own header lines for it are not repeated
    assert "--- a/scripts/config_loader.py\n+++ b/scripts/config.py\n" in packed.text
    assert "rename from scripts/config_loader.py" not in packed.text
    assert "diff --git a/scripts/util.py" not in packed.text
    assert "scripts/obsolete.py" not in packed.text  # named once, in the note
    assert "scripts/obsolete.py (2 lines)" in packed.note


def test_sensitive_files_come_first_and_keep_their_deletions() -> None:
    """Rank the sensitive file first and keep its deletion-only hunk."""
    packed = pack(MIXED, budget_tokens=100_000, flags=AUTH)
    assert packed.files[0] == "src/auth/session.py"
    assert '-        audit("bad password", user)\n' in packed.text
    assert ("src/auth/session.py", "deletion_only") not in {
        (o.path, o.reason) for o in packed.omitted
    }
    plain = pack(MIXED, budget_tokens=100_000, flags=NOTHING)
    assert plain.files[0] != "src/auth/session.py"


def test_a_sensitive_rename_source_counts() -> None:
    """Call a file sensitive when its old path is."""
    packed = pack(
        MIXED, budget_tokens=100_000, flags=Flags(paths=frozenset({"scripts/config_loader.py"}))
    )
    assert packed.files[0] == "scripts/config.py"


def test_larger_changes_rank_first() -> None:
    """Rank files by the size of their change when none is sensitive."""
    packed = pack(MIXED, budget_tokens=100_000, flags=NOTHING)
    assert packed.files[0] == "scripts/util.py"  # 10 changed lines, the largest


def test_deletion_only_hunks_go_first_under_budget_pressure() -> None:
    """Keep other hunks and drop a sensitive deletion-only hunk when the budget is short."""
    full = pack(MIXED, budget_tokens=100_000, flags=AUTH)
    packed = pack(MIXED, budget_tokens=full.tokens - 5, flags=AUTH)
    assert packed.tokens <= full.tokens - 5
    budget_cut = [o for o in packed.omitted if o.reason == "budget"]
    assert budget_cut == [Omission("src/auth/session.py", "budget", 1, 1)]
    assert HunkRef("src/auth/session.py", 1) in packed.hunks
    assert HunkRef("src/auth/session.py", 0) not in packed.hunks


def test_keep_deletions_keeps_every_deletion_only_hunk() -> None:
    """Keep deletion-only hunks of ordinary files when asked to."""
    packed = pack(MIXED, budget_tokens=100_000, keep_deletions=True, flags=NOTHING)
    assert "-def old_unused():\n" in packed.text
    assert not [o for o in packed.omitted if o.reason == "deletion_only"]


def test_crlf_and_bytes_that_are_not_utf8() -> None:
    """Parse a CRLF diff with Latin-1 bytes, replacing what does not decode."""
    raw = (DIFFS / "packing_crlf_latin1.diff").read_bytes()
    packed = pack(raw, budget_tokens=1_000)
    assert packed.files == ("legacy/report.bas",)
    assert "\r" not in packed.text
    assert "r\ufffdsum\ufffd" in packed.text
    assert '+    FormatTotal = "€ " & s\n' in packed.text
    assert len(PatchSet(packed.text)[0]) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello, this is not a diff\n", "not a unified diff"),
        ("--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n x\n", "not a well-formed unified diff"),
    ],
)
def test_bad_input_is_a_clear_error(text: str, message: str) -> None:
    """Reject text that is not a diff with an InputError that says so."""
    with pytest.raises(InputError, match=message):
        pack(text, budget_tokens=100)


def test_bad_budgets_are_clear_errors() -> None:
    """Reject a budget or a context size that cannot work."""
    with pytest.raises(InputError, match="budget_tokens"):
        pack(FIVE, budget_tokens=0)
    with pytest.raises(InputError, match="context_lines"):
        pack(FIVE, budget_tokens=100, context_lines=-1)
    with pytest.raises(InputError, match="too small"):
        chunks(MIXED, budget_tokens=50)


def test_an_empty_diff_packs_to_nothing() -> None:
    """Return an empty result for an empty diff."""
    assert pack("", budget_tokens=100) == Packed("", 0, (), (), "")
    assert chunks("", budget_tokens=1_000) == []


def test_budget_is_the_window_minus_prompt_and_reserve() -> None:
    """Subtract the prompt's tokens and the output reserve from the window."""
    prompt = "Summarise this pull request for a reviewer."
    assert budget(window=8192, prompt=prompt, reserve=2048) == 8192 - count(prompt) - 2048
    assert budget(window=100, prompt=prompt, reserve=2048) == 0


def huge_diff(files: int = 120, hunks: int = 6) -> tuple[str, set[str]]:
    """Build a large diff whose every hunk adds one unique marker line."""
    parts, markers = [], set()
    for f in range(files):
        path = f"pkg/mod{f:03d}/service.py"
        parts.append(f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n")
        for h in range(hunks):
            start = 1 + h * 40
            body = [f" def handler_{h}(request):\n", f"     value = load(request, {h})\n"]
            if (f + h) % 11 == 0:  # a deletion-only hunk now and then
                body += ["-    legacy(value)\n", "-    legacy_again(value)\n"]
                parts.append(f"@@ -{start},4 +{start},2 @@\n" + "".join(body))
                continue
            marker = f"marker-{f}-{h}"
            markers.add(marker)
            added = [f"+    record('{marker}', value, {i})\n" for i in range(1 + (f * h) % 9)]
            parts.append(f"@@ -{start},2 +{start},{2 + len(added)} @@\n" + "".join(body + added))
    parts.append(
        "diff --git a/yarn.lock b/yarn.lock\n--- a/yarn.lock\n+++ b/yarn.lock\n"
        "@@ -1,1 +1,1 @@\n-left-pad@1.3.0\n+left-pad@1.3.1\n"
    )
    return "".join(parts), markers


def test_map_reduce_parts_hold_every_hunk_exactly_once() -> None:
    """Split a huge diff into parts within budget; lose no hunk and duplicate none."""
    text, markers = huge_diff()
    parts = chunks(text, budget_tokens=1_500)
    assert len(parts) > 5
    refs = [ref for part in parts for ref in part.hunks]
    assert len(refs) == len(set(refs)) == len(markers)
    joined = "".join(part.text for part in parts)
    for marker in markers:
        assert (
            joined.count(f"'{marker}'")
            == 1 + (int(marker.split("-")[1]) * int(marker.split("-")[2])) % 9
        )
    for i, part in enumerate(parts, start=1):
        assert part.tokens <= 1_500
        assert part.tokens == count(part.noted)
        assert part.note.startswith(
            f"This diff is too large for one call: this is part {i} of {len(parts)}, "
        )
        assert "too large" not in part.text  # the part line is said once, in the note
        assert part.complete
        PatchSet(part.text)  # each part is a valid diff on its own
    first_reasons = {o.reason for o in parts[0].omitted}
    assert first_reasons == {"deletion_only", "lock_file"}
    assert all(not part.omitted for part in parts[1:])
    deletions = sum(o.hunks for o in parts[0].omitted if o.reason == "deletion_only")
    assert deletions + len(refs) == 120 * 6


def test_a_hunk_bigger_than_a_part_is_truncated_with_a_marker() -> None:
    """Cut an oversized hunk to fit its own part, mark it, and report it."""
    added = "".join(
        f"+    step_{i} = compute({i})  # a long generated table row\n" for i in range(800)
    )
    text = (
        "diff --git a/app/table.py b/app/table.py\n--- a/app/table.py\n+++ b/app/table.py\n"
        f"@@ -1,1 +1,801 @@ def table():\n def table():\n{added}"
        "diff --git a/app/small.py b/app/small.py\n--- a/app/small.py\n+++ b/app/small.py\n"
        "@@ -1,1 +1,1 @@\n-x = 1\n+x = 2\n"
    )
    parts = chunks(text, budget_tokens=600)
    assert all(part.tokens <= 600 for part in parts)
    big = next(part for part in parts if HunkRef("app/table.py", 0) in part.hunks)
    assert "[cibot: hunk truncated, " in big.text
    (cut,) = [o for o in big.omitted if o.reason == "truncated"]
    assert cut.path == "app/table.py"
    assert 0 < cut.lines < 800
    assert "cut to fit" in big.note
    assert not big.complete
    hunk = PatchSet(big.text)[0][0]
    assert hunk.added == 800 - cut.lines
    assert sum(HunkRef("app/small.py", 0) in part.hunks for part in parts) == 1


def test_a_single_line_over_the_budget_is_cut_by_characters() -> None:
    """Cut even one enormous line so the part stays within budget."""
    line = "+const bundle = '" + "abcdefghij" * 5_000 + "';\n"
    text = f"diff --git a/web/app.js b/web/app.js\n--- a/web/app.js\n+++ b/web/app.js\n@@ -0,0 +1,1 @@\n{line}"
    (part,) = chunks(text, budget_tokens=400)
    assert part.tokens <= 400
    assert "[cibot: hunk truncated, 1 of 1 lines shown]" in part.text
    assert PatchSet(part.text)[0][0].added == 1


def test_pack_of_the_huge_diff_fits_and_reports_the_rest() -> None:
    """Pack a huge diff into one budget and account for every hunk."""
    text, markers = huge_diff()
    packed = pack(text, budget_tokens=4_000)
    assert packed.tokens <= 4_000
    left = sum(o.hunks for o in packed.omitted if o.reason == "budget")
    assert len(packed.hunks) + left == len(markers)
    # Past NOTE_ALL files the note counts them and names the first few.
    assert "files, among them pkg/mod" in packed.note
    assert packed.note.count("pkg/mod") <= 2 * 5


def test_a_hunk_ending_without_a_newline_does_not_swallow_the_next_file() -> None:
    """A '\\ No newline at end of file' line closes its hunk; the next file appears once."""
    diff = (
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n+b = 3\n"
        "\\ No newline at end of file\n"
        "diff --git a/y.py b/y.py\n--- a/y.py\n+++ b/y.py\n@@ -1 +1 @@\n-c = 1\n+c = 2\n"
    )
    packed = pack(diff, budget_tokens=10_000)
    assert packed.text.count("+c = 2") == 1
    assert packed.text.count("+++ b/y.py") == 1
    assert "\\ No newline at end of file" in packed.text


# ---- what each job's prompt keeps -------------------------------------------------------

# git's diff of one commit (blank context lines written empty, as unidiff and git accept):
# a source change with a plain deletion-only hunk, a test, a doc,
# a lock file, a deleted sensitive file (one flagged line), a deleted plain file, a
# sensitive removal in an ordinary file, a rename with a change, and a binary file.
JOBS_DIFF = '''\
diff --git a/app/auth/tokens.py b/app/auth/tokens.py
deleted file mode 100644
index 2a3436f..0000000
--- a/app/auth/tokens.py
+++ /dev/null
@@ -1,17 +0,0 @@
-"""Token settings for the API."""
-
-import datetime
-
-LIFETIME = datetime.timedelta(minutes=15)
-
-JWT_VERIFY_EXPIRATION = False
-
-
-def lifetime():
-    """Return how long a token lives."""
-    return LIFETIME
-
-
-def describe():
-    """Describe the settings."""
-    return "tokens"
diff --git a/app/config.py b/app/config.py
index f2a8767..cc95419 100644
--- a/app/config.py
+++ b/app/config.py
@@ -2,5 +2,4 @@

 DEBUG = False
 JWT_ALGORITHM = "HS256"
-JWT_EXPIRE = True
 PAGE_SIZE = 50
diff --git a/app/util.py b/app/helpers.py
similarity index 82%
rename from app/util.py
rename to app/helpers.py
index 98ce95a..0e69b58 100644
--- a/app/util.py
+++ b/app/helpers.py
@@ -8,4 +8,4 @@ def clamp(value, low, high):

 def first(items):
     """Return the first item."""
-    return items[0]
+    return items[0] if items else None
diff --git a/app/orders.py b/app/orders.py
index 0f66aa0..5cec843 100644
--- a/app/orders.py
+++ b/app/orders.py
@@ -3,7 +3,7 @@

 def line_count(order):
     """Count the order's lines."""
-    return len(order.lines)
+    return sum(line.quantity for line in order.lines)


 def describe(order):
@@ -17,7 +17,3 @@ def total_lines(orders):
     for order in orders:
         count += line_count(order)
     return count
-
-
-def legacy_name(order):
-    return order.name
diff --git a/docs/guide.md b/docs/guide.md
index 05af336..33649eb 100644
--- a/docs/guide.md
+++ b/docs/guide.md
@@ -1,3 +1,5 @@
 # Guide

 Run the app.
+
+Line counts add quantities.
diff --git a/poetry.lock b/poetry.lock
index 7a88959..744029b 100644
--- a/poetry.lock
+++ b/poetry.lock
@@ -1,3 +1,3 @@
 [[package]]
 name = "requests"
-version = "2.31.0"
+version = "2.32.3"
diff --git a/scripts/old_report.py b/scripts/old_report.py
deleted file mode 100644
index b8e0366..0000000
--- a/scripts/old_report.py
+++ /dev/null
@@ -1,10 +0,0 @@
-"""Print an old report."""
-
-
-def main():
-    print("report")
-    print("done")
-
-
-if __name__ == "__main__":
-    main()
diff --git a/static/logo.png b/static/logo.png
index ac6c544..e666ad4 100644
Binary files a/static/logo.png and b/static/logo.png differ
diff --git a/tests/test_orders.py b/tests/test_orders.py
index 20a424a..c457595 100644
--- a/tests/test_orders.py
+++ b/tests/test_orders.py
@@ -3,3 +3,7 @@ from app.orders import line_count

 def test_line_count():
     assert line_count(Order([])) == 0
+
+
+def test_line_count_adds_quantities():
+    assert line_count(Order([Line(quantity=2)])) == 2
'''

# In every job's prompt: the changed lines a reader needs, and the router-flagged removals.
NEEDED = (
    "-JWT_EXPIRE = True",  # a deletion-only hunk the router flagged, in an ordinary file
    "-JWT_VERIFY_EXPIRATION = False",  # the flagged line of a deleted file
    "+    return sum(line.quantity for line in order.lines)",
    "+    return items[0] if items else None",
    "--- a/app/util.py\n+++ b/app/helpers.py\n",  # the rename, said by ---/+++
    "+def test_line_count_adds_quantities():",
    "+Line counts add quantities.",
)
# In no job's prompt: lock and binary content, deleted bodies, banners, repeated headers.
NEVER = (
    'version = "2.32.3"',
    "Binary files",
    '-    """Return how long a token lives."""',  # unflagged body of the deleted auth file
    "-def describe():",
    'print("report")',  # body of the deleted plain file
    "of 1",
    "this is part",
    "diff --git a/app/orders.py",
    "rename from",
    "index ",
)
# The note names every file left out, with a deleted file's line count.
NAMED = (
    "scripts/old_report.py (10 lines)",
    "app/auth/tokens.py (12 lines)",  # 17 lines, 5 shown around the flagged one
    "lock files: poetry.lock",
    "binary files: static/logo.png",
)


@dataclass(frozen=True)
class Pull:
    """Stand for the pull request the jobs read."""

    title: str = "Count quantities"
    body: str = "Line counts add quantities."
    head_sha: str = "a" * 40
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Done:
    """Stand for a completion of the summary's map step."""

    data: Any
    calls: tuple[Any, ...] = ()
    fallbacks: int = 0
    fallback_reasons: tuple[str, ...] = ()


def gathered(state: JobState | None = None) -> pipeline.Gathered:
    """Gather the jobs' fixture as the jobs' own gather steps would."""
    evidence = evidence_from_diff(JOBS_DIFF)
    return pipeline.Gathered(
        pull=Pull(),
        diff=JOBS_DIFF,
        evidence=evidence,
        policy=load_policy(None),
        state=state or JobState(),
    )


def user_of(messages: list[dict[str, str]]) -> str:
    """Return the user message of a request."""
    return next(m["content"] for m in messages if m["role"] == "user")


def summary_prompts() -> list[str]:
    """Return every user message the summary job sends, by the pipeline's path (compute)."""
    sent: list[str] = []

    def complete(tier: str, request: pipeline.ModelRequest, reason: str = "") -> Done:
        sent.append(user_of(request.messages))
        return Done({"what": "x", "why": "", "risks": [], "files": []})

    work = gathered()
    summary.compute(work, route("summary", work.evidence, work.policy), complete)
    return sent


def job_prompt(job: str, tmp_path: Path) -> str:
    """Build one job's user message with that job's own prompt builder."""
    if job == "summary":
        (only,) = summary_prompts()
        return only
    if job == "review":
        work = gathered(review.ReviewState.of(JOBS_DIFF))
        return user_of(review.request(work, route("review", work.evidence, work.policy)).messages)
    if job == "deps":
        work = gathered(deps.Survey(upgrades=(), scope="diff"))
        return user_of(deps.request(work, route("deps", work.evidence, work.policy)).messages)
    if job == "ci":
        work = gathered(ci.CiState(jobs=(), more=(), head_sha=""))
        return user_of(ci.request(work, route("ci", work.evidence, work.policy)).messages)
    work = gathered(tests_job.TestsState(targets=(), test_path="tests/test_generated.py"))
    decision = route("tests", work.evidence, work.policy)
    return user_of(tests_job.first_messages(work, decision, "t" * 12))


@pytest.mark.parametrize("job", ["summary", "review", "tests", "deps", "ci"])
def test_every_job_keeps_the_hunks_it_needs_and_names_the_rest_once(
    job: str, tmp_path: Path
) -> None:
    """Each job's prompt holds the needed lines, none of the waste, and one note naming all."""
    prompt = job_prompt(job, tmp_path)
    for text in NEEDED:
        assert text in prompt, f"{job}: {text!r} missing"
    for text in NEVER:
        assert text not in prompt, f"{job}: {text!r} present"
    for text in NAMED:
        assert prompt.count(text) == 1, f"{job}: {text!r} not named once"
    assert prompt.count("Left out:") == 1, f"{job}: the note is not said exactly once"
    # The deleted sensitive file shows its flagged line with two removed lines each side.
    assert "-LIFETIME = datetime.timedelta(minutes=15)" in prompt
    assert "-def lifetime():" not in prompt


def test_a_plain_deletion_only_hunk_is_for_the_review_only(tmp_path: Path) -> None:
    """The review reads a removed function; the summary is told it was left out."""
    removed = "-def legacy_name(order):"
    assert removed in job_prompt("review", tmp_path)
    brief = job_prompt("summary", tmp_path)
    assert removed not in brief
    assert "1 deletion-only hunk (4 removed lines) in app/orders.py" in brief


def test_the_summary_request_and_the_pipeline_path_send_the_same_diff() -> None:
    """summary.request (one call) and summary.compute (what the pipeline runs) agree."""
    work = gathered()
    decision = route("summary", work.evidence, work.policy)
    single = user_of(summary.request(work, decision).messages)
    (computed,) = summary_prompts()
    assert diff_part(single) == diff_part(computed)


def diff_part(user: str) -> str:
    """Return a user message from its Diff header to the closing tag (the tags differ per call)."""
    return user.split("\nDiff", 1)[1].split("</untrusted-")[0]


def test_flags_read_the_router_reasons_by_path_and_removed_line() -> None:
    """Name the file a reason starts with (longest first) and the old line of a removal."""
    paths = ["app/auth.py", "app/auth.py.bak", "app/config.py", "go.mod"]
    found = flags(
        [
            Reason("sensitive_content", "app/auth.py.bak:3 +'x = jwt.decode(t)' token handling"),
            Reason("sensitive_content", "app/config.py:5 -'JWT_EXPIRE = True' token handling"),
            Reason("sensitive_path", "app/auth.py matches '**/auth.*'"),
            Reason("sensitive_dependency", "go.mod:7 jwt 4.0 → 5.0: a crypto package"),
            Reason("major_version_bump", "app/config.py:9 x 1 → 2"),  # not a sensitive one
            Reason("sensitive_content", "12 changed lines in 2 more files were not read"),
        ],
        paths,
    )
    assert found.paths == frozenset(paths)
    assert found.removed == {"app/config.py": frozenset({5})}


def test_without_flags_the_packer_asks_the_router_itself() -> None:
    """pack() with no flags keeps a sensitive removal the packaged policy flags."""
    assert "-JWT_EXPIRE = True" in pack(JOBS_DIFF, budget_tokens=10_000).text
    assert "-JWT_EXPIRE = True" not in pack(JOBS_DIFF, budget_tokens=10_000, flags=NOTHING).text


def test_a_diff_that_fits_one_part_has_no_part_line() -> None:
    """chunks() of a small diff is one part with only the policy note."""
    (part,) = chunks(JOBS_DIFF, budget_tokens=10_000)
    assert part.note.startswith("Left out: ")
    assert "part" not in part.note
    assert part.text == pack(JOBS_DIFF, budget_tokens=10_000).text


def test_a_diff_of_only_left_out_files_still_says_what_they_were() -> None:
    """A lock-and-deletion-only diff gives one part whose note names them."""
    text = JOBS_DIFF.split("diff --git a/app/config.py")[0]  # the deleted auth file alone
    (part,) = chunks(text, budget_tokens=1_000, flags=NOTHING)
    assert part.text == ""
    assert part.note == "Left out: deleted files, only lines flagged as sensitive shown: " + (
        "app/auth/tokens.py (17 lines)."
    )


def test_many_deleted_files_are_counted_with_the_first_few_named() -> None:
    """Past NOTE_ALL files the note gives the count, the lines and the first five names."""
    parts = []
    for n in range(45):
        path = f"plugins/legacy/mod_{n:02d}.py"
        parts.append(
            f"diff --git a/{path} b/{path}\ndeleted file mode 100644\n--- a/{path}\n+++ /dev/null\n"
            f"@@ -1,2 +0,0 @@\n-def f_{n}():\n-    return {n}\n"
        )
    packed = pack("".join(parts), budget_tokens=2_000, flags=NOTHING)
    assert packed.text == ""
    assert "45 files (90 lines), among them plugins/legacy/mod_00.py (2 lines)" in packed.note
    assert "mod_05.py" not in packed.note


def test_a_generator_annotation_marks_a_file_generated() -> None:
    """A class a generator wrote (javax/jakarta @Generated) is named, not shown."""
    java = (
        "diff --git a/ui/client/Tag.java b/ui/client/Tag.java\n--- a/ui/client/Tag.java\n"
        "+++ b/ui/client/Tag.java\n@@ -7,3 +7,3 @@ import java.util.Map;\n"
        ' @jakarta.annotation.Generated("com.microsoft.kiota")\n public class Tag {\n'
        "-  private String name;\n+  private String displayName;\n"
    )
    packed = pack(java, budget_tokens=1_000, flags=NOTHING)
    assert packed.omitted == (Omission("ui/client/Tag.java", "generated", 0, 2),)
    assert packed.text == ""
    assert packed.note == "Left out: generated or vendored files: ui/client/Tag.java."
