"""Trim a CI log to its error blocks, in one streaming pass with bounded memory.

The log arrives as byte chunks of any size. Each chunk is cut at its last newline and
decoded (bytes that are not UTF-8 become U+FFFD). A prefilter regex finds the lines that
could start an error block, so the lines between them are only counted, never handled one
by one in Python; a ring buffer keeps the last ``window`` lines for the context above the
next block. Only the lines that are shown are cleaned of GitHub Actions timestamps, ANSI
escape codes and ``##[group]`` markers.

Blocks: Python tracebacks; pytest failures (section headers, ``E`` lines, ``FAILED``,
the short test summary); jest ``●`` blocks and ``FAIL``; go test ``--- FAIL:``, ``panic:``
and ``FAIL``; compiler errors (rustc, gcc/clang, tsc, ``error:``); non-zero exits (Actions'
``Process completed with exit code N``, ``make: ***``, ``exit status N``, ``npm ERR!``);
``##[error]`` annotations; and bare ``SomethingError:`` lines. The first and the last
``KEEP`` blocks are kept, since the first failure is usually the cause and the last one the
summary; the budget is then spent on block cores in priority order (first, last, the rest
in log order), and what remains on the context around them, nearest lines first.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.kernel.errors import InputError
from policies.tokens import count

BLOCK_BYTES = 1 << 20  # decode and scan the log a megabyte at a time
MAX_CARRY = 1 << 20  # a "line" longer than this with no newline is cut into pieces
MAX_LINE_CHARS = 1000  # longer lines are cut when kept; a minified bundle says nothing
MAX_RAW_CHARS = 4 * MAX_LINE_CHARS  # what the ring keeps of a raw line before cleaning
HEAD_LINES = 120  # lines kept from the start of a long block ...
TAIL_LINES = 40  # ... and from its end, where a traceback names the exception
MAX_BLOCK_LINES = 2000  # a block that runs longer is closed; the rest is plain log
KEEP = 8  # blocks kept from the start of the log, and as many from its end

GAP = "[… {n} lines omitted …]"

_PREFIX = r"(?:\d{4}-\d\d-\d\dT[\d:.]+Z ?)?[ \t\r]*(?:\x1b\[[0-9;?]*[A-Za-z][ \t\r]*)*"
# The first characters of _STARTS, checked before trying its branches one by one.
_FIRST = r"(?=[A-Z=_\-pe#mnf●])"
_STARTS = (
    r"Traceback \(|During handling|The above exception|=+ short test summary|FAILED |ERROR"
    r"|E(?: {2,}|\s*\n)|_{3,} |--- FAIL|FAIL|panic: |●|error[:\[]|##\[error\]|make(?:\[\d+\])?: "
    r"|exit status|npm ERR!|(?:[A-Z]\w*)?(?:Error|Exception):|FATAL:|fatal:"
)
# A line may start a block only if it matches this (or holds an INLINE marker); every other
# line is skipped at C speed.
CANDIDATE = re.compile(r"\n" + _PREFIX + _FIRST + r"(?:" + _STARTS + r")")
CANDIDATE_HEAD = re.compile(_PREFIX + _FIRST + r"(?:" + _STARTS + r")")
INLINE = (": error", "error TS", "exit code", "exited with code", "non-zero exit status")

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z ?")
# CSI sequences (colours, cursor moves), OSC sequences (titles, links) and two-byte escapes.
ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


@dataclass(frozen=True)
class Rule:
    """Say what starts a block, how the block goes on, and whether it absorbs its own kind."""

    kind: str
    pattern: str
    mode: str
    merge: bool


RULES = (
    Rule(
        "exit",
        r".*?(?:Process completed with exit code|exited with code|returned non-zero exit status)"
        r" [1-9]|make(?:\[\d+\])?: \*\*\* |exit status [1-9]|npm ERR! ",
        "single",
        True,
    ),
    Rule(
        "traceback",
        r"\s*(?:Traceback \(most recent call last\):|During handling of the above exception"
        r"|The above exception was the direct cause)",
        "traceback",
        False,
    ),
    Rule("pytest", r"=+ short test summary info =+", "pytest", False),
    Rule("pytest", r"(?:FAILED|ERROR) \S+(?:::|\.py)", "pytest", True),
    Rule("pytest", r"E(?: {2,}\S|\s*$)", "pytest", True),
    Rule("pytest", r"_{3,} .+ _{3,}$", "pytest_section", False),
    Rule("go_test", r"--- FAIL: ", "indent", False),
    Rule("go_test", r"\s+--- FAIL: |FAIL(?:\t|\s*$)", "single", True),
    Rule("go_test", r"panic: ", "panic", False),
    Rule("jest", r"\s*● ", "jest", False),
    Rule("jest", r"\s*FAIL +\S", "single", False),
    Rule("compiler", r"error(?:\[E\d+\])?: ", "compiler", False),
    Rule("compiler", r"\S+?(?:\(\d+,\d+\):|:\d+:\d+ -) error TS\d+", "compiler", False),
    Rule("compiler", r"\S+?:\d+(?::\d+)?: (?:fatal )?error: ", "compiler", False),
    Rule("annotation", r"##\[error\]", "single", True),
    Rule("error", r"(?:[A-Z]\w*)?(?:Error|Exception):\s|(?:ERROR|FATAL|fatal):\s", "indent", False),
)
CLASSIFY = re.compile("|".join(f"(?P<r{i}>{rule.pattern})" for i, rule in enumerate(RULES)))

BLANKS = {
    "single": 0,
    "traceback": 0,
    "indent": 1,
    "pytest": 1,
    "pytest_section": 3,
    "compiler": 1,
    "jest": 2,
    "panic": 2,
}
BLANK_MAX = max(BLANKS.values())
PYTEST_MORE = re.compile(r"[ \t>]|E(?:\s|$)")
PYTEST_LAST = re.compile(r"\S+:\d+: \w|=+ .* =+$")
# A failure section runs to "path:line: SomeError" or to the next section rule.
SECTION_LAST = re.compile(r"\S+:\d+: [A-Z]\w*$")
SECTION_STOP = re.compile(r"[-=]{3,} .* [-=]{3,}$")
COMPILER_MORE = re.compile(r"[ \t]|\d+\s*\||\d+ ")

# Paths in error blocks, as written by pytest, tracebacks, compilers, jest and go.
PATH = re.compile(
    r"(?<![\w./-])(/?(?:[\w.@+-]+/)*[\w.@+-]+\.(?:py|pyi|js|jsx|mjs|cjs|ts|tsx|go|rs|c|cc|cpp"
    r"|cxx|h|hpp|java|kt|kts|scala|rb|php|cs|swift|sh|tf|ya?ml|toml|json|proto|sql|vue|svelte"
    r"|dart|ex|exs|lua))\b"
)
# Checkout roots of common CI runners; a path under one is made relative to the repo.
WORKSPACE = re.compile(
    r"^/(?:home/runner/_?work/[^/]+/[^/]+|__w/[^/]+/[^/]+|github/workspace|builds/[^/]+/[^/]+)/"
)
FOREIGN = ("site-packages/", "dist-packages/", "node_modules/", "go/pkg/mod/", ".cargo/registry/")

MORE, LAST, STOP = "more", "last", "stop"


@dataclass(frozen=True)
class ErrorBlock:
    """Describe one error block: its kind, its line span, its first line and the paths it names."""

    kind: str
    start_line: int
    end_line: int
    first_line: str
    paths: tuple[str, ...] = ()
    shown: bool = True  # False when the budget left the block out of ``text``


@dataclass(frozen=True)
class TrimmedLog:
    """Hold the trimmed log text and what the pass saw."""

    text: str
    blocks: tuple[ErrorBlock, ...]
    lines_seen: int
    bytes_seen: int
    omitted_lines: int
    tokens: int = 0
    blocks_seen: int = 0  # every block found, including those not kept in memory


@dataclass(eq=False)
class _Block:
    """Collect one block while the log streams past: context above, core, context below."""

    rule: Rule
    start: int
    first: str
    before: list[tuple[int, str]]
    end: int = 0
    head: list[tuple[int, str]] = field(default_factory=list)
    tail: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    after: list[tuple[int, str]] = field(default_factory=list)
    paths: dict[str, None] = field(default_factory=dict)
    size: int = 0
    blanks: int = 0

    def add(self, number: int, line: str) -> None:
        """Add a line to the block's core, keeping its head and its tail."""
        self.size += 1
        if line.strip():
            self.blanks = 0
            self.end = number
            _collect_paths(line, self.paths)
        else:
            self.blanks += 1
        if len(self.head) < HEAD_LINES:
            self.head.append((number, line))
        else:
            self.tail.append((number, line))

    def core(self) -> list[tuple[int, str]]:
        """Return the kept core lines, without trailing blank lines."""
        return [(n, s) for n, s in [*self.head, *self.tail] if n <= self.end]

    def trailing_blanks(self) -> int:
        """Return how many blank lines ended the core; they count as context below."""
        return sum(
            1 for n, _ in [*self.head[-BLANK_MAX:], *list(self.tail)[-BLANK_MAX:]] if n > self.end
        )

    def context(self) -> list[tuple[int, str]]:
        """Return the kept lines around the core, above and below."""
        trailing = [(n, s) for n, s in [*self.head, *self.tail] if n > self.end]
        return self.before + trailing + self.after

    def public(self, shown: bool) -> ErrorBlock:
        """Describe the block for callers."""
        first = self.first if len(self.first) <= 200 else self.first[:200] + "…"
        return ErrorBlock(self.rule.kind, self.start, self.end, first, tuple(self.paths), shown)


def clean(raw: str) -> str:
    """Strip a log line's timestamp, ANSI codes, carriage-return overdraws and group markers."""
    if "\r" in raw:
        parts = [p for p in raw.split("\r") if p.strip()]
        raw = parts[-1] if parts else ""
    stamp = TIMESTAMP.match(raw)
    if stamp:
        raw = raw[stamp.end() :]
    if "\x1b" in raw:
        raw = ANSI.sub("", raw)
    if raw.startswith("##["):
        raw = raw.removeprefix("##[group]").removeprefix("##[endgroup]")
    raw = raw.rstrip()
    return raw if len(raw) <= MAX_LINE_CHARS else raw[:MAX_LINE_CHARS] + "…"


def classify(line: str) -> Rule | None:
    """Return the rule a cleaned line starts a block by, or None."""
    match = CLASSIFY.match(line)
    if match is None or match.lastgroup is None:
        return None
    return RULES[int(match.lastgroup[1:])]


def _verdict(block: _Block, line: str, rule: Rule | None) -> str:
    """Decide whether ``line`` goes on the open block, ends it, or falls outside it."""
    if block.size >= MAX_BLOCK_LINES:
        return STOP
    if rule is not None and rule.merge and rule.kind == block.rule.kind:
        return MORE
    mode = block.rule.mode
    if mode == "traceback":
        if (rule is not None and rule.kind == "traceback") or not line.strip():
            return STOP
        return MORE if line[0] in " \t" else LAST  # the exception line ends a traceback
    if rule is not None:
        return STOP
    if not line.strip():
        return MORE if block.blanks < BLANKS[mode] else STOP
    return _goes_on(mode, line)


def _goes_on(mode: str, line: str) -> str:
    """Decide, by the block's mode, whether a plain non-blank line continues it."""
    if mode in ("indent", "jest"):
        return MORE if line[0] in " \t" else STOP
    if mode == "pytest":
        if PYTEST_MORE.match(line):
            return MORE
        return LAST if PYTEST_LAST.match(line) else STOP
    if mode == "pytest_section":
        if SECTION_STOP.match(line):
            return STOP
        return LAST if SECTION_LAST.match(line) else MORE
    if mode == "compiler":
        return MORE if COMPILER_MORE.match(line) else STOP
    return MORE if mode == "panic" else STOP


def _collect_paths(line: str, into: dict[str, None]) -> None:
    """Add the repository paths named in ``line`` to ``into``."""
    for match in PATH.finditer(line):
        path = WORKSPACE.sub("", match.group(1)).removeprefix("./")
        if path.startswith("/") or any(part in path for part in FOREIGN):
            continue  # the interpreter's, the toolchain's or a dependency's file
        into.setdefault(path, None)


class _Trimmer:
    """Run the streaming pass; ``feed`` bytes, then ``finish``."""

    def __init__(self, window: int) -> None:
        """Start with an empty ring buffer and no blocks."""
        self.window = window
        self.ring: deque[tuple[int, str]] = deque(maxlen=window)
        self.pending = bytearray()
        self.lines = 0
        self.bytes = 0
        self.block: _Block | None = None
        self.after_block: _Block | None = None
        self.after_left = 0
        self.first: list[_Block] = []
        self.last: deque[_Block] = deque(maxlen=KEEP)
        self.seen = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the log, of any size."""
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", errors="replace")
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InputError(f"log chunks must be bytes, got {type(chunk).__name__}")
        self.bytes += len(chunk)
        for start in range(0, len(chunk), BLOCK_BYTES):
            self.pending += chunk[start : start + BLOCK_BYTES]
            if len(self.pending) >= BLOCK_BYTES:
                self._drain()

    def _drain(self, force: bool = False) -> None:
        """Scan the complete lines buffered so far; keep a partial last line for later."""
        cut = self.pending.rfind(b"\n")
        if cut < 0 and (len(self.pending) <= MAX_CARRY or force):
            return
        if cut < 0:
            data = bytes(self.pending) + b"\n"
            self.pending.clear()
        else:
            data = bytes(self.pending[: cut + 1])
            del self.pending[: cut + 1]
        self._scan(data.decode("utf-8", errors="replace"))

    def _scan(self, text: str) -> None:
        """Walk whole lines: skip quiet stretches in C, handle candidate lines one by one."""
        candidates = _candidates(text)
        pos, index, size = 0, 0, len(text)
        while pos < size:
            if self.block is None and self.after_left <= 0:
                while index < len(candidates) and candidates[index] < pos:
                    index += 1
                nxt = candidates[index] if index < len(candidates) else size
                self._skip(text, pos, nxt)
                pos = nxt
                if pos >= size:
                    break
            end = text.index("\n", pos)
            self._line(text[pos:end])
            pos = end + 1

    def _skip(self, text: str, start: int, stop: int) -> None:
        """Count the lines in ``text[start:stop]`` and keep the last few in the ring."""
        lines = text.count("\n", start, stop)
        take = min(self.window, lines)
        tail: list[str] = []
        end = stop - 1
        for _ in range(take):
            previous = text.rfind("\n", start, end)
            begin = previous + 1 if previous >= 0 else start
            tail.append(text[begin : min(end, begin + MAX_RAW_CHARS)])
            end = previous
        first = self.lines + lines - take + 1
        self.ring.extend((first + i, line) for i, line in enumerate(reversed(tail)))
        self.lines += lines

    def _line(self, raw: str) -> None:
        """Handle one line that may start, continue or end a block."""
        self.lines += 1
        line = clean(raw)
        self._step(self.lines, line, classify(line))
        self.ring.append((self.lines, raw[:MAX_RAW_CHARS]))

    def _step(self, number: int, line: str, rule: Rule | None) -> None:
        """Advance the block state machine by one line."""
        block = self.block
        if block is not None:
            verdict = _verdict(block, line, rule)
            if verdict != STOP:
                block.add(number, line)
                if verdict == LAST:
                    self._close()
                return
            self._close()
        if rule is not None:
            self._open(rule, number, line)
        elif self.after_block is not None and self.after_left > 0:
            self.after_block.after.append((number, line))
            self.after_left -= 1

    def _open(self, rule: Rule, number: int, line: str) -> None:
        """Start a block at ``line``, with the ring buffer as its context above."""
        block = _Block(rule, number, line, [(n, clean(s)) for n, s in self.ring])
        block.add(number, line)
        self.block, self.after_block, self.after_left = block, None, 0
        self.seen += 1
        if len(self.first) < KEEP:
            self.first.append(block)
        else:
            self.last.append(block)

    def _close(self) -> None:
        """End the open block; the next ``window`` lines become its context below."""
        block = self.block
        if block is None:
            return
        self.block, self.after_block = None, block
        self.after_left = self.window - block.trailing_blanks()

    def finish(self, budget_tokens: int) -> TrimmedLog:
        """Flush the last partial line and choose what fits in the budget."""
        self._drain(force=True)
        if self.pending:  # a last line with no newline
            self.pending += b"\n"
            self._drain(force=True)
        self._close()
        blocks = [*self.first, *self.last]
        chosen, shown = _choose(blocks, list(self.ring), budget_tokens, self.window, self.lines)
        text = _render(chosen, self.lines)
        tokens = count(text)
        if tokens > budget_tokens:  # not even the "lines omitted" marker fits
            text, tokens, chosen, shown = "", 0, {}, set()
        return TrimmedLog(
            text=text,
            blocks=tuple(b.public(b in shown) for b in blocks),
            lines_seen=self.lines,
            bytes_seen=self.bytes,
            omitted_lines=self.lines - len(chosen),
            tokens=tokens,
            blocks_seen=self.seen,
        )


def _candidates(text: str) -> list[int]:
    """Return the offsets of the lines in ``text`` that might start a block."""
    found = [m.start() + 1 for m in CANDIDATE.finditer(text)]
    if CANDIDATE_HEAD.match(text):
        found.append(0)
    for marker in INLINE:
        hit = text.find(marker)
        while hit >= 0:
            found.append(text.rfind("\n", 0, hit) + 1)
            hit = text.find(marker, text.index("\n", hit) + 1)
    return sorted(set(found))


def _priority(blocks: list[_Block]) -> list[_Block]:
    """Order blocks for the budget: the first, the last, then the rest in log order."""
    if len(blocks) < 2:
        return list(blocks)
    return [blocks[0], blocks[-1], *blocks[1:-1]]


class _Budget:
    """Spend a token budget on lines, remembering the order they were chosen in."""

    def __init__(self, limit: int) -> None:
        """Start with ``limit`` tokens and one gap's worth spent on the final marker."""
        self.limit = limit
        self.gap_tokens = count(GAP.format(n=99999) + "\n")
        self.used = self.gap_tokens
        self.chosen: dict[int, str] = {}

    def take(self, number: int, line: str, extra: int = 0) -> bool:
        """Choose one line if it fits; return whether it did."""
        if number in self.chosen:
            return True
        cost = count(line) + 1 + extra
        if self.used + cost > self.limit:
            return False
        self.chosen[number] = line
        self.used += cost
        return True

    def take_all(self, lines: list[tuple[int, str]], extra: int) -> bool:
        """Choose all of ``lines`` or none of them."""
        fresh = [(n, s) for n, s in lines if n not in self.chosen]
        cost = sum(count(s) + 1 for _, s in fresh) + extra
        if self.used + cost > self.limit:
            return False
        self.chosen.update(fresh)
        self.used += cost
        return True


def _choose(
    blocks: list[_Block], ring: list[tuple[int, str]], limit: int, window: int, total: int
) -> tuple[dict[int, str], set[_Block]]:
    """Spend the budget: block cores by priority, then context nearest-first."""
    budget = _Budget(limit)
    shown: set[_Block] = set()
    if not blocks:
        for number, raw in reversed(ring):  # no error found: show the end of the log
            if not budget.take(number, clean(raw)):
                break
        return _fit(budget.chosen, limit, total), shown
    for block in _priority(blocks):
        gaps = budget.gap_tokens * (
            2 if block.tail and block.tail[0][0] > block.head[-1][0] + 1 else 1
        )
        if budget.take_all(block.core(), gaps):
            shown.add(block)
        elif not shown:
            for number, line in block.core():  # the first failure matters most: show its start
                if not budget.take(number, line):
                    break
            shown.add(block)
    _add_context(budget, [b for b in _priority(blocks) if b in shown], window)
    return _fit(budget.chosen, limit, total), shown


def _add_context(budget: _Budget, blocks: list[_Block], window: int) -> None:
    """Add context lines around shown blocks, nearest first, while the budget lasts."""
    around = [dict(b.context()) for b in blocks]
    for distance in range(1, window + 1):
        for block, lines in zip(blocks, around, strict=True):
            for number in (block.start - distance, block.end + distance):
                if number in lines:
                    budget.take(number, lines[number])


def _fit(chosen: dict[int, str], limit: int, total: int) -> dict[int, str]:
    """Drop the last-chosen lines until the rendered text is within ``limit`` tokens."""
    over = count(_render(chosen, total)) - limit
    while chosen and over > 0:
        for number in list(chosen)[-max(1, over // 8) :]:
            del chosen[number]
        over = count(_render(chosen, total)) - limit
    return chosen


def _render(chosen: dict[int, str], total: int) -> str:
    """Render chosen lines in log order, with a marker for every stretch left out."""
    out: list[str] = []
    previous = 0
    for number in sorted(chosen):
        if number > previous + 1:
            out.append(GAP.format(n=number - previous - 1))
        out.append(chosen[number])
        previous = number
    if total > previous:
        out.append(GAP.format(n=total - previous))
    return "\n".join(out)


def trim(chunks: Iterable[bytes], *, budget_tokens: int, window: int = 20) -> TrimmedLog:
    """Trim a CI log, given as byte chunks, to its error blocks within ``budget_tokens``."""
    if budget_tokens < 1:
        raise InputError(f"budget_tokens must be a positive number of tokens, got {budget_tokens}")
    if window < 0:
        raise InputError(f"window must be 0 or more lines, got {window}")
    trimmer = _Trimmer(window)
    for chunk in chunks:
        trimmer.feed(chunk)
    return trimmer.finish(budget_tokens)


def paths_in(trimmed: TrimmedLog) -> list[str]:
    """Return the repository paths named in the log's error blocks, first mention first."""
    seen: dict[str, None] = {}
    for block in trimmed.blocks:
        for path in block.paths:
            seen.setdefault(path, None)
    return list(seen)
