"""Read a diff the way a reviewer does: each file's role, each changed line's kind, and
which hunks are mechanical. Pure; the router's detectors look only at what this keeps.

- **Roles** come from the path (and, for YAML, from the keys a manifest carries): source,
  test, docs, config, deploy, lock, generated, vendored, fixture.
- **Kinds** come from Pygments' lexer for the file's language: code, comment, docstring,
  string or blank. Lexing is lazy and bounded: a hunk is lexed only when a detector's
  pattern matched one of its lines, and past ``LEX_BUDGET_LINES`` a line counts as code,
  so a huge diff can only be routed up, never quietly down.
- **Mechanical hunks** change no behaviour: whitespace or formatting only, lines only
  reordered, or identifiers swapped the same way at least twice in the diff (a rename or
  a type-alias swap such as ``interface{}`` to ``any``).
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from pygments.lexer import Lexer
from pygments.lexers import find_lexer_class_for_filename
from pygments.token import Comment, Error, Punctuation, String, Text, Whitespace
from pygments.util import ClassNotFound

from policies.evidence import LOCK_FILES, FileChange, Hunk

ROLES = ("source", "test", "docs", "config", "deploy", "lock", "generated", "vendored", "fixture")
KINDS = ("code", "comment", "docstring", "string", "blank")
# Roles whose content never escalates: prose, tests and their data, output nobody wrote.
QUIET_ROLES = frozenset({"docs", "test", "fixture", "generated", "vendored"})
LEX_BUDGET_LINES = 200
# Characters that can start a comment or a string. A line without them before the
# construct a detector found, in a hunk with no multi-line string or comment, is code
# without asking the lexer (most lines of a huge diff are like that).
MARKERS = re.compile(r"[#\"'`]|//|/\*|^\s*\*|--|^\s*;|<!--|^\s*%")
BLOCKS = re.compile(r'"""|\'\'\'|/\*|\*/|`|<!--|-->|^=begin|<<[-~]?\s*[\'"]?[A-Z_]{2,}', re.M)

VENDORED = re.compile(r"(^|/)(vendor|vendored|third_party|third-party|node_modules|external)/")
GENERATED = re.compile(
    r"(\.min\.(js|css)|\.map|_pb2(_grpc)?\.pyi?|\.pb\.go|\.pb\.gw\.go|\.generated\.\w+"
    r"|_generated\.\w+|\.g\.dart|\.snap|\.svg)$|(^|/)(dist|build|gen|generated)/"
)
FIXTURE = re.compile(
    r"(^|/)(fixtures?|testdata|test_data|test-data|__snapshots__|__fixtures__|testfixtures)/"
    r"|(^|/)(dummy\w*|fake\w*|mock\w*|samples?|examples?)/(.+/)?[^/]+\.(pem|key|crt|cer|csr|der"
    r"|p12|pfx|jks|srl)$"
    r"|(^|/)(tests?|spec|__tests__)/.*\.(pem|key|crt|cer|der|p12|pfx|jks|csr|json|ya?ml|txt"
    r"|xml|html|bin|srl|cnf)$"
)
TEST = re.compile(
    r"(^|/)(tests?|__tests__|spec|specs|e2e|integration[-_]tests?|unit[-_]tests?|testing)/"
    r"|(^|/)(test_[^/]+|[^/]+_tests?\.\w+|[^/]+\.(test|spec)\.\w+|[^/]+Tests?\.(java|kt|cs|swift"
    r"|scala|groovy)|[^/]+_spec\.rb|conftest\.py|[^/]+Spec\.\w+)$"
)
DOCS = re.compile(
    r"\.(md|markdown|rst|adoc|asciidoc|txt|rdoc|org|tex)$"
    r"|(^|/)(docs?|documentation|site|website|examples?/docs)/[^/]+\.(html?|ipynb)$"
    r"|(^|/)(README|CHANGELOG|CHANGES|HISTORY|NEWS|AUTHORS|CONTRIBUTORS|LICENSE|COPYING"
    r"|NOTICE|CODEOWNERS|SECURITY|CONTRIBUTING)(\.(md|markdown|rst|txt|adoc|rdoc))?$"
    r"|(^|/)(docs?|documentation)/",
    re.IGNORECASE,
)
OBSERVABILITY = re.compile(
    r"(^|/|[-_.])(prometheus|grafana|alertmanager|alerts?|alerting|dashboards?|otel|"
    r"opentelemetry|collector|monitoring|loki|tempo|jaeger|fluent(d|bit)?|vector|"
    r"servicemonitor|recording[-_]rules)([-_./]|$)",
    re.IGNORECASE,
)
DEPLOY = re.compile(
    r"(^|/)(Dockerfile|Containerfile)[^/]*$|\.dockerfile$"
    r"|(^|/)(docker-)?compose[^/]*\.ya?ml$"
    r"|\.(tf|tfvars|hcl)$|(^|/)terraform/"
    r"|(^|/)\.github/workflows/[^/]+\.ya?ml$|(^|/)\.github/actions/.+\.ya?ml$"
    r"|(^|/)\.gitlab-ci\.ya?ml$|(^|/)Jenkinsfile$|(^|/)\.circleci/|(^|/)azure-pipelines\.ya?ml$"
    r"|(^|/)(k8s|kubernetes|kube|manifests|kubernetes-manifests|helm|charts?|kustomize|"
    r"overlays|deploy|deployment|deployments|ansible|cloudformation|infra|infrastructure|"
    r"iac|pulumi)/.*\.(ya?ml|json|j2|tpl|jsonnet|libsonnet|cue|sh)(\.(erb|j2|tpl|tmpl|gotmpl))?$"
    r"|(^|/)(Chart|kustomization|skaffold[^/]*|app|cloudbuild|fly|render|Procfile)\.ya?ml$"
    r"|(^|/)templates/[^/]+\.(ya?ml|tpl)$|(^|/)values[^/]*\.ya?ml$|(^|/)Procfile$"
    r"|(^|/)[^/]*iam[^/]*\.json$|(^|/)iam/.*\.(json|ya?ml)$",
)
CONFIG = re.compile(
    r"\.(ya?ml|toml|ini|cfg|conf|json|jsonc|json5|properties|env|xml|plist|editorconfig)$"
    r"|(^|/)\.[^/]+rc$|(^|/)(Makefile|setup\.cfg|\.env[^/]*)$"
)
# Plain-text files that are dependency manifests or build input, not prose.
MANIFEST_TXT = re.compile(r"^(requirements|constraints)[^/]*\.(txt|in)$|^CMakeLists\.txt$", re.I)
YAMLISH = re.compile(r"\.(ya?ml|json)(\.(erb|j2|tpl|tmpl|gotmpl))?$")
# A function, method or class opening, for the scope a changed line sits in.
SCOPE = re.compile(
    r"^\s*(export\s+)?(async\s+)?(def|class|func|function|fn|sub|module|interface|struct)\s+\w"
    r"|^\s*(public|private|protected|internal|static|override)\s[^=;]*\w+\s*\("
)
# A YAML document is a Kubernetes-style manifest when it names both.
MANIFEST_KEYS = re.compile(r"^\s*(apiVersion|kind):\s*\S", re.MULTILINE)
# Extra lock files beyond the ones packing already knows.
MORE_LOCKS = frozenset(
    {
        ".terraform.lock.hcl",
        "gradle.lockfile",
        "packages.lock.json",
        "bun.lock",
        "bun.lockb",
        "mix.lock",
        "pubspec.lock",
        "Podfile.lock",
        "flake.lock",
        "deno.lock",
    }
)
# In order, the first match names the role: (pattern, role, whether it reads the file name
# alone rather than the whole path).
ROLE_RULES: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (VENDORED, "vendored", False),
    (FIXTURE, "fixture", False),
    (TEST, "test", False),
    (MANIFEST_TXT, "config", True),
    (DOCS, "docs", False),
    (GENERATED, "generated", False),
    (OBSERVABILITY, "config", False),
    (DEPLOY, "deploy", False),
)


def role_of(path: str, sample: str = "") -> str:
    """Give a changed file its role from its path; ``sample`` (hunk text) settles YAML."""
    name = path.rsplit("/", 1)[-1]
    if name in LOCK_FILES or name in MORE_LOCKS or name.endswith(".lock"):
        return "lock"
    for pattern, role, by_name in ROLE_RULES:
        if pattern.search(name if by_name else path):
            return role
    if YAMLISH.search(name) and len(set(MANIFEST_KEYS.findall(sample))) == 2:
        return "deploy"
    return "config" if CONFIG.search(path) else "source"


# Lexers that read keys, certificates or plain text as one comment or text run: their
# lines are data, and a changed key is a changed key.
OPAQUE_LEXERS = frozenset({"AscLexer", "TextLexer", "OutputLexer"})
# Punctuation that joins strings into a list or a concatenation, leaving the line prose.
JOINERS = frozenset({",", "(", ")", "[", "]", "+", ";", "\\", "{", "}"})


@lru_cache(maxsize=512)
def _lexer_for(name: str) -> Lexer | None:
    """Return a Pygments lexer for a file name (cached by the name's suffix), or None."""
    try:
        cls = find_lexer_class_for_filename(name)
    except ClassNotFound:
        return None
    if cls is None or cls.__name__ in OPAQUE_LEXERS:
        return None
    return cls(stripnl=False, stripall=False, ensurenl=True)


def lexer_for(path: str) -> Lexer | None:
    """Return the lexer for a path's language, keyed by its extension or whole name."""
    name = path.rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    key = (
        f"x.{ext}"
        if dot and stem and not name.startswith(("Dockerfile", "Containerfile"))
        else name
    )
    if name.startswith(("Dockerfile", "Containerfile")):
        key = "Dockerfile"
    return _lexer_for(key)


def _kind_of(tokens: list[tuple[object, str]]) -> str:
    """Classify one line from its tokens: code wins, then docstring, string, comment, blank."""
    seen = set()
    for ttype, value in tokens:
        if not value.strip():
            continue
        if ttype in Comment:
            seen.add("comment")
        elif ttype in String.Doc:
            seen.add("docstring")
        elif ttype in String:
            seen.add("string")
        elif ttype in Punctuation and value.strip() not in JOINERS:
            return "code"  # a key: value or call around strings is data, not prose
        elif ttype in Punctuation or ttype in Text or ttype in Whitespace:
            seen.add("punct")
        else:
            return "code"
    for kind in ("docstring", "string", "comment"):
        if kind in seen:
            return kind
    return "code" if "punct" in seen else "blank"


@dataclass(frozen=True, slots=True)
class Lexed:
    """Hold one changed line's kind and its text without comments."""

    kind: str
    code: str  # the line without its comments
    bare: str = ""  # the code with every string literal emptied, for word-level detectors


def _markup(lexer: Lexer) -> bool:
    """Tell whether a lexer reads markup, whose text runs are page copy, not code."""
    lexer = getattr(lexer, "lexer", lexer)
    return any(
        word in type(lexer).__name__
        for word in ("Html", "Xml", "Erb", "Handlebars", "Mustache", "Twig", "Liquid")
    )


def lex_side(lexer: Lexer, lines: list[str]) -> list[Lexed]:
    """Lex consecutive lines of one side of a hunk and classify each line."""
    prose = (String, Text) if _markup(lexer) else (String,)
    text = "\n".join(lines) + "\n"
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    per_line: list[list[tuple[object, str]]] = [[] for _ in lines]
    for index, ttype, value in lexer.get_tokens_unprocessed(text):
        row = bisect.bisect_right(starts, index) - 1
        # A token may span lines (a docstring): give each line its own piece.
        for offset, piece in enumerate(value.split("\n")):
            if row + offset < len(lines) and piece:
                per_line[row + offset].append((ttype, piece))
    out = []
    for tokens in per_line:
        kind = _kind_of(tokens)
        code = "".join(v for t, v in tokens if t not in Comment)
        bare = "".join(
            '""' if any(t in kind for kind in prose) and v.strip() else v
            for t, v in tokens
            if t not in Comment
        )
        out.append(Lexed(kind, code, bare))
    return out


BLANK = Lexed("blank", "", "")
# A hunk can start inside a docstring, a block comment or a template literal; lexed from
# its first line, the closing quote then reads as an opening one and the code after it as a
# string. When a probe line after the hunk does not lex as code, the hunk is lexed again
# as if it began inside each of these, and the reading that ends in code wins.
OPENERS = ('"""', "'''", "/*", "`")
PROBE = "cibot_probe = 1"
DOCSTRINGS = ('"""', "'''")  # prose in one can run past a hunk's end


def lex_hunk_side(lexer: Lexer, lines: list[str]) -> list[Lexed]:
    """Lex one side of a hunk, repairing the lexer's state when the hunk starts mid-string.

    Prose read as code leaves error tokens (a backtick, an apostrophe) in most languages,
    so a clean reading that starts inside a docstring beats one with errors.
    """
    first, errors = _lex_counting(lexer, [*lines, PROBE])
    if (first[-1].kind == "code" and not errors) or not lines:
        return first[:-1]
    best, fewest = (first[:-1] if first[-1].kind == "code" else None), errors
    text = "\n".join(lines)
    closers = {"/*": "*/"}
    # Errors alone (prose read as code) justify trying every opener; a failed probe only
    # the openers whose closer the hunk holds.
    for opener in (o for o in OPENERS if errors or closers.get(o, o) in text):
        again, wrong = _lex_counting(lexer, [opener, *lines, PROBE])
        # With no closer in the hunk, the string runs past it: the probe cannot end in code.
        runs_on = opener in DOCSTRINGS and opener not in text and wrong < errors
        if (again[-1].kind == "code" or runs_on) and (best is None or wrong < fewest):
            best, fewest = again[1:-1], wrong
    return best if best is not None else first[:-1]


def _lex_counting(lexer: Lexer, lines: list[str]) -> tuple[list[Lexed], int]:
    """Lex lines and count the error tokens the lexer met on the way."""
    counter = _ErrorCount(lexer)
    return lex_side(counter, lines), counter.errors


class _ErrorCount:
    """Wrap a lexer and count the Error tokens it yields."""

    def __init__(self, lexer: Lexer) -> None:
        """Keep the lexer to wrap."""
        self.lexer = lexer
        self.errors = 0

    def get_tokens_unprocessed(self, text: str) -> Iterator[tuple[int, object, str]]:
        """Yield the wrapped lexer's tokens, counting errors."""
        for index, ttype, value in self.lexer.get_tokens_unprocessed(text):
            if ttype in Error:
                self.errors += 1
            yield index, ttype, value


@dataclass
class Budget:
    """Count the lines lexed for one diff; past the limit every line counts as code."""

    left: int = LEX_BUDGET_LINES


@dataclass
class FileView:
    """Look at one changed file: its role, its mechanical hunks, and lazily its line kinds."""

    change: FileChange
    role: str
    mechanical: frozenset[int] = frozenset()  # indexes of mechanical hunks
    budget: Budget = field(default_factory=Budget)
    unread: bool = False  # past the diff's reading budget: not looked at line by line
    _kinds: dict[tuple[str, int], Lexed] = field(default_factory=dict)
    _lexed: set[int] = field(default_factory=set)
    _where: dict[tuple[str, int], int] = field(default_factory=dict)
    _blocky: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        """Index which hunk holds each changed line, and which hunks hold block openers."""
        if self.unread:
            return
        for index, hunk in enumerate(self.change.body):
            if BLOCKS.search("\n".join(t for _, t in hunk.lines)):
                self._blocky.add(index)
            old, new = hunk.source_start, hunk.target_start
            for sign, _ in hunk.lines:
                if sign == "+":
                    self._where[("+", new)] = index
                    new += 1
                elif sign == "-":
                    self._where[("-", old)] = index
                    old += 1
                else:
                    old, new = old + 1, new + 1

    def changed(self) -> Iterator[tuple[str, int, str]]:
        """Yield (sign, line number, text) of changed lines outside mechanical hunks.

        A line removed in one place and added unchanged (but for indentation) in another
        only moved: it is left out too.
        """
        moved = Counter(t.strip() for _, t in self.change.removed) & Counter(
            t.strip() for _, t in self.change.added
        )
        for sign, lines in (("+", self.change.added), ("-", self.change.removed)):
            left = Counter(moved)
            for number, text in lines:
                if left[text.strip()] > 0:
                    left[text.strip()] -= 1
                    continue
                if self._where.get((sign, number)) not in self.mechanical:
                    yield sign, number, text

    def line(self, sign: str, number: int, text: str, upto: int | None = None) -> Lexed:
        """Return a changed line's kind and code text, lexing its hunk on first use.

        ``upto`` is where the construct of interest ends: a line with no comment or string
        marker before it, in a hunk with no block openers, is code without lexing.
        """
        if not text.strip():
            return BLANK
        hit = self._kinds.get((sign, number))
        if hit is not None:
            return hit
        index = self._where.get((sign, number))
        plain = index is not None and index not in self._blocky and index not in self._lexed
        if plain and not MARKERS.search(text if upto is None else text[:upto]):
            return Lexed("code", text, text)
        lexer = lexer_for(self.change.path)
        if lexer is None or index in self._lexed or self.budget.left <= 0:
            return Lexed("code", text, text)
        if index is None:  # a change built without its hunks: lex the line on its own
            self.budget.left -= 1
            found = lex_side(lexer, [text])[0]
            self._kinds[(sign, number)] = found
            return found
        self._lex_hunk(index, lexer)
        return self._kinds.get((sign, number), Lexed("code", text, text))

    def scoped(self) -> Iterator[tuple[str, int, str, str]]:
        """Yield (sign, number, text, scope) for changed lines outside mechanical hunks.

        The scope is the nearest def or class line above the changed line in its hunk, or
        else the one git names after the hunk's second @@.
        """
        wanted = {(sign, number) for sign, number, _ in self.changed()}
        for hunk in self.change.body:
            scope = {"+": hunk.section, "-": hunk.section}
            line = {"+": hunk.target_start, "-": hunk.source_start}
            for sign, text in hunk.lines:
                sides = ("+", "-") if sign == " " else (sign,)
                if sign != " " and (sign, line[sign]) in wanted and scope[sign]:
                    yield sign, line[sign], text, scope[sign]
                if SCOPE.match(text):
                    for side in sides:
                        scope[side] = text.strip()
                for side in sides:
                    line[side] += 1

    def _lex_hunk(self, index: int, lexer: Lexer) -> None:
        """Lex both sides of one hunk and remember every changed line's kind.

        A hunk whose two sides hold the same code once comments are dropped changes only
        comments (a version note after a pinned SHA, say): its lines count as comments.
        """
        self._lexed.add(index)
        hunk = self.change.body[index]
        found: dict[str, list[tuple[int, Lexed]]] = {}
        for sign, start in (("+", hunk.target_start), ("-", hunk.source_start)):
            side = [(s, t) for s, t in hunk.lines if s in (" ", sign)]
            self.budget.left -= len(side)
            lexed = lex_hunk_side(lexer, [t for _, t in side])
            number = start
            for (s, _), result in zip(side, lexed, strict=True):
                if s == sign:
                    found.setdefault(sign, []).append((number, result))
                number += 1
        codes = {
            sign: [r.code.strip() for _, r in rows if r.kind == "code"]
            for sign, rows in found.items()
        }
        comment_only = len(codes) == 2 and codes["+"] == codes["-"]
        for sign, rows in found.items():
            for number, result in rows:
                quiet = comment_only and result.kind == "code"
                self._kinds[(sign, number)] = Lexed("comment", "", "") if quiet else result

    def code_lines(self) -> Iterator[tuple[str, int, str, str]]:
        """Yield (sign, number, text, code) for changed code lines outside mechanical hunks."""
        for sign, number, text in self.changed():
            lexed = self.line(sign, number, text)
            if lexed.kind == "code":
                yield sign, number, text, lexed.code


TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d[\w.]*|\S")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
LITERALS = frozenset({"True", "False", "None", "true", "false", "null", "nil", "undefined"})
FORMAT_NOISE = re.compile(r"[\s,;'\"()\\`]+")
MAX_SWAP_TOKENS = 4
MAX_SWAPS = 3
MAX_SWAP_HUNK_TOKENS = 4000


def _tokens(lines: Iterable[str]) -> list[str]:
    """Split lines into identifier, number and single-symbol tokens."""
    return [t for line in lines for t in TOKEN.findall(line)]


def _swaps(hunk: Hunk) -> list[tuple[tuple[str, ...], tuple[str, ...]]] | None:
    """Return the token swaps that turn a hunk's old side into its new side.

    None when the hunk does more than swap identifiers: it inserts or deletes tokens,
    changes a literal, or swaps long runs.
    """
    # A rename or an alias swap rewrites lines in place: as many lines go as come.
    if sum(s == "-" for s, _ in hunk.lines) != sum(s == "+" for s, _ in hunk.lines):
        return None
    old = _tokens(t for s, t in hunk.lines if s == "-")
    new = _tokens(t for s, t in hunk.lines if s == "+")
    if not old or not new or len(old) + len(new) > MAX_SWAP_HUNK_TOKENS:
        return None
    # Cheap first: a few swaps leave only a few distinct tokens on either side.
    left, right = Counter(old), Counter(new)
    if len(left - right) + len(right - left) > 2 * MAX_SWAPS * MAX_SWAP_TOKENS:
        return None
    pairs = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        gone, came = tuple(old[i1:i2]), tuple(new[j1:j2])
        words = [t for t in gone + came if t[0].isalpha() or t[0] == "_"]
        if op != "replace" or len(gone) > MAX_SWAP_TOKENS or len(came) > MAX_SWAP_TOKENS:
            return None
        if not words or any(t in LITERALS or t[0].isdigit() for t in gone + came):
            return None
        if i1 > 0 and old[i1 - 1] in (".", "->", ":"):
            return None  # `url.authority` to `url.host` reads another value; it is no rename
        pairs.append((gone, came))
    return pairs


def _formatting_only(hunk: Hunk) -> bool:
    """Tell whether the hunk changes only whitespace, quotes, commas, parentheses or order."""
    old = [t for s, t in hunk.lines if s == "-"]
    new = [t for s, t in hunk.lines if s == "+"]
    if not old or not new:
        return False
    if FORMAT_NOISE.sub("", "".join(old)) == FORMAT_NOISE.sub("", "".join(new)):
        return True
    return Counter(t.strip() for t in old if t.strip()) == Counter(
        t.strip() for t in new if t.strip()
    )


def mechanical_hunks(files: Iterable[FileChange]) -> dict[str, frozenset[int]]:
    """Map each path to the indexes of its hunks that cannot change behaviour."""
    swaps: dict[tuple[str, int], list[tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    seen: Counter[tuple[tuple[str, ...], tuple[str, ...]]] = Counter()
    found: dict[str, set[int]] = {}
    for change in files:
        for index, hunk in enumerate(change.body):
            if _formatting_only(hunk):
                found.setdefault(change.path, set()).add(index)
                continue
            pairs = _swaps(hunk)
            if pairs and len(set(pairs)) <= MAX_SWAPS:
                swaps[(change.path, index)] = pairs
                seen.update(pairs)
    # A swap is a rename or an alias swap only when the diff makes the same one twice or
    # more; a single changed call could be a change of behaviour.
    for (path, index), pairs in swaps.items():
        if all(seen[pair] >= 2 or _unused_mark(pair) for pair in pairs) and _consistent(
            pairs, seen
        ):
            found.setdefault(path, set()).add(index)
    return {path: frozenset(indexes) for path, indexes in found.items()}


def _unused_mark(pair: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
    """Tell whether a swap only adds or drops a leading `_` (marking a name unused)."""
    (gone, came) = pair
    return (len(gone) == len(came) == 1 and "_" + gone[0] == came[0]) or "_" + came[0] == gone[0]


def _consistent(
    pairs: list[tuple[tuple[str, ...], tuple[str, ...]]],
    seen: Counter[tuple[tuple[str, ...], tuple[str, ...]]],
) -> bool:
    """Tell whether each old token run is always swapped for the same new run."""
    targets: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for gone, came in seen:
        targets.setdefault(gone, set()).add(came)
    return all(len(targets[gone]) == 1 for gone, _ in pairs)


def _sample(change: FileChange) -> str:
    """Return the first lines of a YAML or JSON file's hunks, which settle its role."""
    if not YAMLISH.search(change.path):
        return ""
    return "\n".join(t for h in change.body[:3] for _, t in h.lines[:60])


def views(files: Iterable[FileChange], read_lines: int | None = None) -> list[FileView]:
    """Build a FileView for every text file of a diff, sharing one lexing budget.

    With ``read_lines``, only the files whose changed lines fit that budget (counting
    files that can escalate, in diff order) are read in detail; the rest come back with
    ``unread`` set, and the caller decides what an unread file means.
    """
    files = [f for f in files if not f.binary]
    roles = [role_of(c.path, _sample(c)) for c in files]
    left = read_lines if read_lines is not None else sum(c.changed_lines for c in files)
    read: list[bool] = []
    for change, role in zip(files, roles, strict=True):
        quiet = role in QUIET_ROLES or role == "lock"
        read.append(quiet or left > 0)
        if not quiet:
            left -= change.changed_lines
    mechanical = mechanical_hunks(c for c, r in zip(files, read, strict=True) if r)
    budget = Budget()
    return [
        FileView(change, role, mechanical.get(change.path, frozenset()), budget, unread=not r)
        for change, role, r in zip(files, roles, read, strict=True)
    ]
