"""Test diff packing: whole hunks within budget, policy omissions, context, and map-reduce parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from unidiff.patch import PatchSet

from bot.errors import InputError
from workers.packing import NOTHING, Flags, HunkRef, Omission, Packed, budget, chunks, pack
from workers.tokens import count

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
