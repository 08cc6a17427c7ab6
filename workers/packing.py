"""Pack a unified diff into a token budget: rank files, keep whole hunks, say what was left out.

The rules, in the order they apply:

- Binary, lock and generated files never enter the prompt: they carry no reviewable text.
- Deletion-only hunks are left out of ordinary files (the note still counts them). In files
  the caller calls sensitive they are kept, but only after every other hunk, so they are the
  first to go when the budget is short; ``keep_deletions=True`` treats every file that way.
- Files are ranked sensitive first, then by the size of their change, largest first.
- A hunk is kept whole or not at all. Its leading and trailing context is cut to
  ``context_lines``, and when ``source`` gives the head version of the file, the context
  is extended up to the enclosing ``def``/``class``/``func``/``function`` line when that
  line is within ``ENCLOSING_REACH`` lines above the first change and git's ``@@`` line
  does not already name it (git names the nearest top-level line, not a method).
- The packed text stays a valid unified diff; the note, when anything was left out, is a
  ``#`` line above it.

``chunks`` splits a diff too large for one call into budget-sized parts for map-reduce:
every kept hunk lands in exactly one part, and a single hunk larger than a part is cut
with a marker in its hunk header and reported as ``truncated``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from bot.errors import InputError
from policies.evidence import file_kind
from workers.tokens import count

Reason = Literal["deletion_only", "lock_file", "generated", "binary", "budget", "truncated"]

GENERATED_MARKERS = ("@generated", "DO NOT EDIT")
MARKER_LINES = 10  # how many lines of the first hunk may carry a generated marker
ENCLOSING_REACH = 20  # how far above a hunk to look for its enclosing definition
ENCLOSING = re.compile(
    r"^\s*(?:export\s+)?(?:default\s+)?(?:pub(?:\([\w:]+\))?\s+)?(?:async\s+)?"
    r"(?:def|class|func|function|fn)\b"
)
# Header lines worth their tokens; "index" hashes and e-mail headers of format-patch are not.
HEADER_LINES = (
    "diff ",
    "new file mode",
    "deleted file mode",
    "old mode",
    "new mode",
    "rename from",
    "rename to",
    "copy from",
    "copy to",
)
NOTE_PATHS = 4  # paths named per reason in the note before "and N more"

NOTE_PREFIX = "# cibot: "
NOTE_NOTHING = "Nothing was left out."
NOTE_LEFT_OUT = "Left out of this diff: {items}."
NOTE_PART = (
    "Part {index} of {total} of a diff too large for one call: {hunks} hunks in {files} files."
)
TRUNCATED_MARKER = "[cibot: hunk truncated, {shown} of {total} lines shown]"
TRUNCATED_NOTE_TOKENS = 64  # what one "hunks cut to fit" item may add to a part's note
# One template per reason; whole-file reasons list names, hunk reasons count hunks and lines.
REASON_TEXT: dict[str, str] = {
    "deletion_only": "{hunks} deletion-only {hunk_word} ({lines} removed lines) in {names}",
    "lock_file": "lock files: {names}",
    "generated": "generated or vendored files: {names}",
    "binary": "binary files: {names}",
    "budget": "over the token budget, {hunks} {hunk_word} ({lines} changed lines) in {names}",
    "truncated": "cut to fit, {hunks} {hunk_word} ({lines} changed lines not shown) in {names}",
}


@dataclass(frozen=True)
class HunkRef:
    """Name one hunk of the input diff: its file and its position within that file."""

    path: str
    index: int


@dataclass(frozen=True)
class Omission:
    """Record what was left out of the prompt and why."""

    path: str
    reason: Reason
    hunks: int = 0  # hunks left out of this file; 0 when the whole file is left out
    lines: int = 0  # changed lines left out


@dataclass(frozen=True)
class Packed:
    """Hold a diff packed into a budget, with what was left out."""

    text: str
    tokens: int
    files: tuple[str, ...]
    omitted: tuple[Omission, ...]
    note: str
    hunks: tuple[HunkRef, ...] = ()

    @property
    def complete(self) -> bool:
        """Return True when the budget forced nothing out (policy omissions do not count)."""
        return not any(o.reason in ("budget", "truncated") for o in self.omitted)


class _Line(NamedTuple):
    """Hold one hunk line; a side the line is not on holds the number of the line before it."""

    kind: str
    value: str
    old: int
    new: int

    @property
    def next_old(self) -> int:
        """Return the old-side number of this line, or of the next old line."""
        return self.old if self.kind in " -" else self.old + 1

    @property
    def next_new(self) -> int:
        """Return the new-side number of this line, or of the next new line."""
        return self.new if self.kind in " +" else self.new + 1


@dataclass(eq=False)
class _Hunk:
    """Hold one rendered hunk and what it costs; ``index`` -1 stands for a header-only file."""

    ref: HunkRef
    raw: Any  # the parsed unidiff hunk; None for a header-only file
    numbered: list[_Line] | None  # its lines as packed, numbered when context was changed
    keep: int
    section: str
    text: str
    tokens: int
    added: int
    removed: int

    @property
    def lines(self) -> list[_Line]:
        """Return the hunk's lines as packed, numbering them on first use."""
        if self.numbered is None:
            self.numbered = _trim_context(_number(self.raw), self.keep) if self.raw else []
        return self.numbered

    @property
    def deletion_only(self) -> bool:
        """Return True when the hunk only removes lines."""
        return self.added == 0 and self.removed > 0


@dataclass
class _File:
    """Hold one file of the diff, ready to rank and pack."""

    path: str
    order: int
    header: str
    bare: str  # the header without ---/+++, for a file shown with none of its hunks
    header_tokens: int
    sensitive: bool
    skip: Reason | None
    changed: int
    removed: bool
    hunks: list[_Hunk] = field(default_factory=list)


def budget(*, window: int, prompt: str, reserve: int) -> int:
    """Return the tokens left for the diff: the window minus the prompt and the output reserve."""
    return max(0, window - count(prompt) - reserve)


def pack(
    diff_text: str | bytes,
    *,
    budget_tokens: int,
    sensitive: Callable[[str], bool] = lambda p: False,
    source: Callable[[str], str | None] | None = None,
    context_lines: int = 3,
    keep_deletions: bool = False,
) -> Packed:
    """Pack the most important whole hunks of ``diff_text`` into ``budget_tokens``."""
    _check_budget(budget_tokens)
    files = _prepare(diff_text, sensitive, source, context_lines)
    policy, wanted, late = _plan(files, keep_deletions)
    reserve = 0
    for attempt in range(1, 5):
        packed = _fill(files, wanted + late, policy, budget_tokens - reserve)
        if packed.tokens <= budget_tokens:
            return packed
        reserve += packed.tokens - budget_tokens + 16 * attempt
    packed = _fill(files, [], policy + _budget_omissions(wanted + late), 0)
    return packed if packed.tokens <= budget_tokens else replace(packed, text="", tokens=0)


def chunks(
    diff_text: str | bytes,
    *,
    budget_tokens: int,
    sensitive: Callable[[str], bool] = lambda p: False,
    source: Callable[[str], str | None] | None = None,
    context_lines: int = 3,
    keep_deletions: bool = False,
) -> list[Packed]:
    """Split ``diff_text`` into parts of at most ``budget_tokens`` each, every hunk in one part."""
    _check_budget(budget_tokens)
    files = _prepare(diff_text, sensitive, source, context_lines)
    policy, wanted, late = _plan(files, keep_deletions)
    by_path = {f.path: f for f in files}
    policy_note = _note(policy)
    reserve = count(NOTE_PREFIX + policy_note) + count(_part_line(99999, 99999, 99999, 99999)) + 8
    room = budget_tokens - reserve
    if room < 16:
        raise InputError(
            f"budget_tokens={budget_tokens} is too small to split this diff into parts"
        )
    groups = _group(_rank_hunks(files, wanted + late), by_path, room)
    return [_part(i, groups, by_path, policy, room) for i in range(len(groups))]


def _check_budget(budget_tokens: int) -> None:
    """Reject a budget that cannot hold anything."""
    if budget_tokens < 1:
        raise InputError(f"budget_tokens must be a positive number of tokens, got {budget_tokens}")


@dataclass(frozen=True)
class _Options:
    """Carry what every file of one diff is packed with."""

    sensitive: Callable[[str], bool]
    source: Callable[[str], str | None] | None
    context_lines: int
    diff_lines: list[str]  # the diff's own lines, to copy hunks that need no change


def _parse(diff_text: str | bytes) -> tuple[PatchSet, list[str]]:
    """Parse a unified diff, tolerating CRLF line ends and bytes that are not UTF-8."""
    if isinstance(diff_text, bytes | bytearray):
        diff_text = bytes(diff_text).decode("utf-8", errors="replace")
    text = diff_text.replace("\r\n", "\n")
    try:
        patch = PatchSet(text)
    except UnidiffParseError as exc:
        raise InputError(f"the input is not a well-formed unified diff: {exc}") from exc
    if not len(patch) and text.strip():
        raise InputError("the input is not a unified diff: no file headers (diff --git, ---/+++)")
    return patch, text.split("\n")  # unidiff numbers lines split at "\n" alone


def _prepare(
    diff_text: str | bytes,
    sensitive: Callable[[str], bool],
    source: Callable[[str], str | None] | None,
    context_lines: int,
) -> list[_File]:
    """Parse the diff and turn each file into rendered, counted hunks."""
    if context_lines < 0:
        raise InputError(f"context_lines must be 0 or more, got {context_lines}")
    patch, lines = _parse(diff_text)
    options = _Options(sensitive, source, context_lines, lines)
    return [_file(pf, i, options) for i, pf in enumerate(patch)]


def _file(pf: Any, order: int, options: _Options) -> _File:
    """Build one file: classify it, render its header and its hunks."""
    path = str(pf.path)
    old = _strip_prefix(str(pf.source_file))
    header = _header(pf)
    skip = _skip_reason(pf, path)
    head = None
    if skip is None and options.source is not None and not pf.is_removed_file:
        text = options.source(path)
        head = text.replace("\r\n", "\n").split("\n") if text is not None else None
    sensitive = options.sensitive
    return _File(
        path=path,
        order=order,
        header=header,
        bare=_header(pf, bare=True),
        header_tokens=count(header),
        sensitive=bool(sensitive(path) or (old != path and old and sensitive(old))),
        skip=skip,
        changed=int(pf.added) + int(pf.removed),
        removed=bool(pf.is_removed_file),
        hunks=[] if skip else _hunks(pf, path, head, options),
    )


def _strip_prefix(name: str) -> str:
    """Drop git's ``a/``/``b/`` prefix from a ``---``/``+++`` file name."""
    if name == "/dev/null":
        return ""
    return name[2:] if name.startswith(("a/", "b/")) else name


def _header(pf: Any, *, bare: bool = False) -> str:
    """Render a file's header: the git line, what happened to the file, and ---/+++."""
    info = [str(line) for line in (pf.patch_info or [])]
    kept = [line for line in info if line.startswith(HEADER_LINES)]
    if not kept:
        kept = [f"diff --git a/{pf.path} b/{pf.path}\n"]
    if len(pf) and not bare:
        kept += [f"--- {pf.source_file}\n", f"+++ {pf.target_file}\n"]
    return "".join(line if line.endswith("\n") else line + "\n" for line in kept)


def _skip_reason(pf: Any, path: str) -> Reason | None:
    """Say why a whole file stays out of the prompt, or None when it may go in."""
    if pf.is_binary_file:
        return "binary"
    kind = file_kind(path)
    if kind == "lock_file":
        return "lock_file"
    if kind == "generated" or (len(pf) and _has_marker(pf[0])):
        return "generated"
    return None


def _has_marker(hunk: Any) -> bool:
    """Return True when the first lines of a hunk say the file is generated."""
    head = "".join(str(line.value) for line in list(hunk)[:MARKER_LINES])
    return any(marker in head for marker in GENERATED_MARKERS)


def _hunks(pf: Any, path: str, source: list[str] | None, options: _Options) -> list[_Hunk]:
    """Render a file's hunks with trimmed context, extended to the enclosing definition."""
    context_lines = options.context_lines
    out: list[_Hunk] = []
    floor = 0  # last new-side line of the previous hunk: extension never reaches above it
    for index, hunk in enumerate(pf):
        section = str(hunk.section_header or "").strip()
        lines = None
        if source is not None or not len(hunk) or _edge_context(hunk) > context_lines:
            lines = _trim_context(_number(hunk), context_lines)
            if source is not None:
                lines = _extend(lines, source, floor, section)
            text = _render(lines, section)
        else:
            text = _render_as_is(hunk, section, options.diff_lines)  # git's -U3, 3 kept
        ref = HunkRef(path, index)
        added, removed = int(hunk.added), int(hunk.removed)
        tokens = count(text)
        out.append(_Hunk(ref, hunk, lines, context_lines, section, text, tokens, added, removed))
        floor = int(hunk.target_start) + int(hunk.target_length) - 1
    return out


def _edge_context(hunk: Any) -> int:
    """Return the larger of a hunk's leading and trailing runs of context lines."""
    kinds = "".join(str(line.line_type) for line in hunk)
    body = kinds.strip(" \\")
    lead = len(kinds) - len(kinds.lstrip(" "))
    trail = len(kinds) - len(kinds.rstrip(" \\")) if body else 0
    return max(lead, trail)


def _render_as_is(hunk: Any, section: str, diff_lines: list[str]) -> str:
    """Copy a hunk from the diff unchanged, under a header in the same form as ``_render``."""
    head = (
        f"@@ -{hunk.source_start},{hunk.source_length} +{hunk.target_start},{hunk.target_length} @@"
        f"{' ' + section if section else ''}\n"
    )
    # unidiff leaves "\ No newline at end of file" unnumbered: take the numbered span and
    # keep such a marker right after it, never slicing to the end of the diff.
    numbered = [line.diff_line_no for line in hunk if line.diff_line_no is not None]
    first, last = numbered[0], numbered[-1]
    if last < len(diff_lines) and diff_lines[last].startswith("\\"):
        last += 1
    return head + "\n".join(diff_lines[first - 1 : last]) + "\n"


def _number(hunk: Any) -> list[_Line]:
    """Number a hunk's lines on both sides from its header, git's way."""
    # An empty side's start is the line before the hunk, so its next line is start + 1.
    old = int(hunk.source_start) + (0 if hunk.source_length else 1)
    new = int(hunk.target_start) + (0 if hunk.target_length else 1)
    out: list[_Line] = []
    for line in hunk:
        kind, value = str(line.line_type), str(line.value)
        out.append(_Line(kind, value, old - (kind not in " -"), new - (kind not in " +")))
        old += kind in " -"
        new += kind in " +"
    return out


def _trim_context(lines: list[_Line], keep: int) -> list[_Line]:
    """Cut leading and trailing context lines down to ``keep``."""
    changed = [i for i, x in enumerate(lines) if x.kind in "+-"]
    if not changed:
        return lines
    first, last = changed[0], changed[-1]
    tail = last + 1
    while tail < len(lines) and lines[tail].kind == "\\":
        tail += 1  # keep a "\\ No newline at end of file" marker with its line
    return lines[max(0, first - keep) : tail] + _context(lines[tail:], keep)


def _context(lines: Sequence[_Line], keep: int) -> list[_Line]:
    """Return up to ``keep`` trailing context lines, with any no-newline marker they carry."""
    out: list[_Line] = []
    seen = 0
    for line in lines:
        if line.kind == " ":
            if seen >= keep:
                break
            seen += 1
        out.append(line)
    return out


def _extend(lines: list[_Line], source: list[str], floor: int, section: str) -> list[_Line]:
    """Prepend context from the head file up to the enclosing definition, when it is near."""
    anchor = next((x for x in lines if x.kind in " +"), None)
    if not lines or anchor is None or anchor.new > len(source):
        return lines
    if source[anchor.new - 1] != anchor.value.rstrip("\n"):
        return lines  # the head file does not match the diff: do not guess
    top = next((x.next_new for x in lines if x.kind in "+-"), anchor.new)
    first = lines[0].next_new
    for number in range(top - 1, max(floor, top - ENCLOSING_REACH - 1), -1):
        if ENCLOSING.match(source[number - 1]):
            if number >= first:
                return lines  # the definition is already inside the hunk
            if section and source[number - 1].strip().startswith(section):
                return lines  # git's @@ line already names it; the lines between cost tokens
            return _prepend(lines, source, number)
    return lines


def _prepend(lines: list[_Line], source: list[str], start: int) -> list[_Line]:
    """Prepend head lines from ``start`` up to the hunk's first line as context."""
    gap = lines[0].next_new - start
    old = lines[0].next_old - gap
    extra = [_Line(" ", source[start - 1 + i] + "\n", old + i, start + i) for i in range(gap)]
    return extra + lines


def _render(lines: list[_Line], section: str, marker: str = "") -> str:
    """Render hunk lines under a fresh ``@@`` header that matches them."""
    old = sum(1 for x in lines if x.kind in " -")
    new = sum(1 for x in lines if x.kind in " +")
    old_start = next((x.old for x in lines if x.kind in " -"), lines[0].old if lines else 0)
    new_start = next((x.new for x in lines if x.kind in " +"), lines[0].new if lines else 0)
    tail = " ".join(part for part in (section, marker) if part)
    head = f"@@ -{old_start},{old} +{new_start},{new} @@{' ' + tail if tail else ''}\n"
    body = "".join(x.kind + (x.value if x.value.endswith("\n") else x.value + "\n") for x in lines)
    return head + body


def _plan(
    files: list[_File], keep_deletions: bool
) -> tuple[list[Omission], list[_Hunk], list[_Hunk]]:
    """Split the hunks into policy omissions, wanted hunks, and deletion-only hunks kept last."""
    policy: list[Omission] = []
    wanted: list[_Hunk] = []
    late: list[_Hunk] = []
    for f in _ranked(files):
        if f.skip:
            policy.append(Omission(f.path, f.skip, len(f.hunks), f.changed))
            continue
        if not f.hunks:
            wanted.append(_bare(f))
            continue
        keep = f.sensitive or keep_deletions
        dropped = [h for h in f.hunks if h.deletion_only and not keep]
        if dropped:
            policy.append(Omission(f.path, "deletion_only", len(dropped), _lines(dropped)))
        if len(dropped) == len(f.hunks) and f.removed:
            wanted.append(_bare(f))  # say the file was deleted
        wanted += [h for h in f.hunks if not h.deletion_only]
        late += [h for h in f.hunks if h.deletion_only and keep]
    return policy, wanted, late


def _bare(f: _File) -> _Hunk:
    """Stand for a file shown by its header alone (a rename, a mode change, a deletion)."""
    return _Hunk(HunkRef(f.path, -1), None, [], 0, "", "", 0, 0, 0)


def _ranked(files: Iterable[_File]) -> list[_File]:
    """Rank files: sensitive first, then the largest change, then diff order."""
    return sorted(files, key=lambda f: (not f.sensitive, -f.changed, f.order))


def _rank_hunks(files: list[_File], hunks: list[_Hunk]) -> list[_Hunk]:
    """Order hunks by their file's rank, then by position in the file."""
    rank = {f.path: i for i, f in enumerate(_ranked(files))}
    return sorted(hunks, key=lambda h: (rank[h.ref.path], h.ref.index))


def _lines(hunks: Iterable[_Hunk]) -> int:
    """Return the changed lines in ``hunks``."""
    return sum(h.added + h.removed for h in hunks)


def _cost(hunk: _Hunk, opened: set[str], by_path: dict[str, _File]) -> int:
    """Return what adding ``hunk`` costs: its tokens, plus its file header the first time."""
    return hunk.tokens + (0 if hunk.ref.path in opened else by_path[hunk.ref.path].header_tokens)


def _fill(files: list[_File], hunks: list[_Hunk], policy: list[Omission], room: int) -> Packed:
    """Greedily keep hunks in the given order while they fit in ``room``, then render."""
    by_path = {f.path: f for f in files}
    kept: set[HunkRef] = set()
    opened: set[str] = set()
    used = 0
    left: list[_Hunk] = []
    for hunk in hunks:
        cost = _cost(hunk, opened, by_path)
        if used + cost > room:
            left.append(hunk)
            continue
        kept.add(hunk.ref)
        opened.add(hunk.ref.path)
        used += cost
    return _render_packed(files, opened, kept, policy + _budget_omissions(left), ())


def _budget_omissions(hunks: list[_Hunk]) -> list[Omission]:
    """Group hunks left out for the budget into one omission per file."""
    per_file: dict[str, list[_Hunk]] = {}
    for hunk in hunks:
        per_file.setdefault(hunk.ref.path, []).append(hunk)
    return [
        Omission(p, "budget", sum(1 for h in hs if h.ref.index >= 0), _lines(hs))
        for p, hs in per_file.items()
    ]


def _render_packed(
    files: list[_File],
    opened: set[str],
    kept: set[HunkRef],
    omitted: list[Omission],
    prefix: Sequence[str],
    override: dict[HunkRef, str] | None = None,
) -> Packed:
    """Render kept files in rank order with the note on top, and count the result."""
    body: list[str] = []
    refs: list[HunkRef] = []
    paths: list[str] = []
    for f in _ranked(files):
        if f.path not in opened:
            continue
        paths.append(f.path)
        shown = [h for h in f.hunks if h.ref in kept]
        body.append(f.header if shown else f.bare)
        for hunk in shown:
            body.append((override or {}).get(hunk.ref, hunk.text))
            refs.append(hunk.ref)
    note = " ".join([*prefix, _note(omitted)] if omitted or not prefix else prefix)
    top = [NOTE_PREFIX + note + "\n"] if omitted or prefix else []
    text = "".join(top + body)
    return Packed(text, count(text), tuple(paths), tuple(omitted), note, tuple(refs))


def _note(omitted: Sequence[Omission]) -> str:
    """Write one sentence that says what was left out, by reason."""
    if not omitted:
        return NOTE_NOTHING
    items = []
    for reason, template in REASON_TEXT.items():
        group = [o for o in omitted if o.reason == reason]
        if group:
            items.append(_note_item(template, group))
    return NOTE_LEFT_OUT.format(items="; ".join(items))


def _note_item(template: str, group: list[Omission]) -> str:
    """Describe one reason's omissions: how many, and the first few paths."""
    hunks = sum(o.hunks for o in group)
    names = ", ".join(o.path for o in group[:NOTE_PATHS])
    if len(group) > NOTE_PATHS:
        names += f" and {len(group) - NOTE_PATHS} more"
    return template.format(
        hunks=hunks,
        hunk_word="hunk" if hunks == 1 else "hunks",
        lines=sum(o.lines for o in group),
        names=names,
    )


def _part_line(index: int, total: int, hunks: int, files: int) -> str:
    """Render the line that places a part within the whole diff."""
    return NOTE_PART.format(index=index, total=total, hunks=hunks, files=files)


def _group(hunks: list[_Hunk], by_path: dict[str, _File], room: int) -> list[list[_Hunk]]:
    """Fill parts in rank order; a hunk that fits no part goes alone into its own."""
    groups: list[list[_Hunk]] = []
    current: list[_Hunk] = []
    opened: set[str] = set()
    used = 0
    for hunk in hunks:
        if current and used + _cost(hunk, opened, by_path) > room:
            groups.append(current)
            current, opened, used = [], set(), 0
        used += _cost(hunk, opened, by_path)
        current.append(hunk)
        opened.add(hunk.ref.path)
    if current:
        groups.append(current)
    return groups


def _part(
    i: int, groups: list[list[_Hunk]], by_path: dict[str, _File], policy: list[Omission], room: int
) -> Packed:
    """Render part ``i``; the first part also reports what policy left out."""
    group = groups[i]
    files = list({h.ref.path: by_path[h.ref.path] for h in group}.values())
    real = sum(1 for h in group if h.ref.index >= 0)
    line = _part_line(i + 1, len(groups), real, len(files))
    kept = {h.ref for h in group}
    override: dict[HunkRef, str] = {}
    cut: list[Omission] = []
    for hunk in group:
        header = by_path[hunk.ref.path].header_tokens
        if hunk.tokens + header > room:
            # The note grows by one item for the cut; leave room for it.
            override[hunk.ref], shown = _truncate(hunk, room - header - TRUNCATED_NOTE_TOKENS)
            cut.append(Omission(hunk.ref.path, "truncated", 1, _lines([hunk]) - shown))
    omitted = (policy if i == 0 else []) + cut
    return _render_packed(files, {f.path for f in files}, kept, omitted, [line], override)


def _truncate(hunk: _Hunk, room: int) -> tuple[str, int]:
    """Cut a hunk to the most lines that fit in ``room``; return its text and changed lines kept."""
    lines, total = hunk.lines, len(hunk.lines)
    lo, hi = 1, total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (
            (mid, hi)
            if count(_cut_text(hunk.lines, hunk.section, mid, total)) <= room
            else (lo, mid - 1)
        )
    kept = lines[:lo]
    if lo == 1 and count(_cut_text(kept, hunk.section, 1, total)) > room:
        kept = [_cut_line(kept[0], hunk.section, total, room)]
    shown = sum(1 for x in kept if x.kind in "+-")
    return _cut_text(kept, hunk.section, lo, total), shown


def _cut_line(line: _Line, section: str, total: int, room: int) -> _Line:
    """Shorten one line that alone is over the budget to the longest prefix that fits."""
    lo, hi = 0, len(line.value)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text = _cut_text([line._replace(value=line.value[:mid])], section, 1, total)
        lo, hi = (mid, hi) if count(text) <= room else (lo, mid - 1)
    return line._replace(value=line.value[:lo])


def _cut_text(lines: list[_Line], section: str, keep: int, total: int) -> str:
    """Render the first ``keep`` lines of a hunk with the truncation marker in its header."""
    marker = TRUNCATED_MARKER.format(shown=keep, total=total)
    return _render(lines[:keep], section, marker)
