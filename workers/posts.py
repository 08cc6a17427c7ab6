"""Make model-written post bodies safe to publish: no images, foreign links or raw HTML.

Model output is untrusted: a pull request can carry a prompt injection that steers the model
into writing a tracking image, a link to the attacker's host, raw HTML, or a one-click
suggestion that adds ``os.system('curl …')``. Everything here is pure text work (no I/O).

The scanner splits a body into code (fenced blocks that open at column 0 and single-line code
spans, left exactly as written) and prose (cleaned). Where GitHub's parse could differ from
this split (HTML blocks, indented or nested fences, multi-line code spans), the text is
treated as prose, so a mismatch can only over-clean, never let markup through. Cleaning
repeats until nothing changes, so the result is a fixed point: cleaning it again changes
nothing. See https://github.github.com/gfm/ for the rules the scanner follows.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

GITHUB_HOSTS = frozenset({"github.com", "githubusercontent.com"})
"""Hosts always allowed, with their subdomains (gist.github.com, raw.githubusercontent.com)."""

MAX_PASSES = 8
WITHHELD_POST = "(This post was withheld: its text could not be made safe to show.)"
LINK_REMOVED = "(link removed)"
SUGGESTION_WITHHELD = "Suggestion withheld: {reason}"
KEPT_TAGS = ("details", "summary", "sub")  # what the bot's own templates emit, bare
MARKER = re.compile(r"<!-- cibot:[a-z0-9:-]{1,64}(?: [0-9a-f]{1,64})? -->")

FENCE_OPEN = re.compile(r"^(`{3,}|~{3,})(.*)$")
BLANK = re.compile(r"^[ \t]*$")
HTML_START = re.compile(r"^ {0,3}<[A-Za-z/!?]")
BACKTICKS = re.compile(r"`+")
FENCE_LIKE = re.compile(
    r"^(?:[ \t]*(?:>|[-*+](?=[ \t])|\d{1,9}[.)](?=[ \t])))*[ \t]*(?:`{3,}|~{3,})"
)
PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")

COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
IMG_TAG = re.compile(r"<img\b[^>]*>?", re.IGNORECASE)
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>`]*)>")
KEPT_TAG = re.compile(rf"<(/?)({'|'.join(KEPT_TAGS)})((?:\s[^<>]*)?)/?>", re.IGNORECASE)
TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_TEXT = r"(?:[^\[\]\\\n]|\\.|\[[^\[\]\n]*\])*"
_DEST = r"<[^<>\n]*>|(?:[^\s()\\]|\\.|\((?:[^\s()\\]|\\.)*\))*"
_TITLE = r"\"[^\"]*\"|'[^']*'|\([^()]*\)"
_TAIL = rf"\(\s*({_DEST})(?:\s+(?:{_TITLE}))?\s*\)"
INLINE = re.compile(rf"(!?)\[({_TEXT})\]{_TAIL}|\]{_TAIL}|\]\(")
REF_IMAGE = re.compile(rf"!\[({_TEXT})\](?:\[([^\[\]\n]*)\])?")
DEFINITION = re.compile(
    r"^((?:[ \t>]|[-*+][ \t]|\d{1,9}[.)][ \t])*)\[([^\[\]\n]{1,999})\]:[ \t]*(\S*)[^\n]*$",
    re.MULTILINE,
)
_SCHEME_START = r"(?:https?(?::|&#0*58;|&#x0*3a;|&colon;)//|www\.)"
BARE_URL = re.compile(rf"{_SCHEME_START}(?:(?!{_SCHEME_START})[^\s<>\"'`])*", re.IGNORECASE)
JAVASCRIPT = re.compile(r"javascript:", re.IGNORECASE)
HOST = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$")
SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):", re.IGNORECASE)
ESCAPABLE = re.compile(r"\\([!-/:-@\[-`{-~])")


@dataclass(frozen=True)
class Sanitized:
    """A cleaned post body and how many things of each kind were taken out of it."""

    text: str
    images: int = 0
    links: int = 0
    html: int = 0
    suggestions: int = 0

    def removed(self) -> dict[str, int]:
        """Return the non-zero counts by kind, for a log line."""
        kinds = ("images", "links", "html", "suggestions")
        return {kind: getattr(self, kind) for kind in kinds if getattr(self, kind)}


@dataclass
class _Counts:
    """Running totals while cleaning one body, and the labels its images use."""

    image_labels: frozenset[str] = frozenset()
    images: int = 0
    links: int = 0
    html: int = 0


def sanitize(markdown: str, *, allowed_hosts: frozenset[str] = frozenset()) -> Sanitized:
    """Remove images, links off the allowlist and raw HTML from prose, leaving code as written."""
    counts = _Counts()
    text = markdown.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    allowed = _hosts(allowed_hosts)
    for _ in range(MAX_PASSES):
        counts.image_labels = _image_labels(text)
        cleaned = "".join(
            _clean_piece(piece, is_code, allowed, counts) for piece, is_code in _split(text)
        )
        if cleaned == text:
            return Sanitized(text, counts.images, counts.links, counts.html)
        text = cleaned
    return Sanitized(WITHHELD_POST, counts.images, counts.links, counts.html)


def _hosts(extra: frozenset[str]) -> frozenset[str]:
    """Lower-case the caller's hosts and add GitHub's."""
    return GITHUB_HOSTS | {h.strip().lower().rstrip(".") for h in extra if h.strip()}


def _clean_piece(piece: str, is_code: bool, allowed: frozenset[str], counts: _Counts) -> str:
    """Return code untouched and prose cleaned."""
    return piece if is_code else _clean_prose(piece, allowed, counts)


# --- splitting code from prose -------------------------------------------------------------


def _split(text: str) -> Iterator[tuple[str, bool]]:
    """Yield (piece, is_code) pieces that join back into ``text``."""
    lines = text.split("\n")
    regions = _fence_regions(lines)
    if regions is None:
        yield from _prose_pieces(lines, trailing=False)
        return
    pos = 0
    for start, end in regions:
        yield from _prose_pieces(lines[pos:start], trailing=True)
        yield "\n".join(lines[start:end]) + ("\n" if end < len(lines) else ""), True
        pos = end
    yield from _prose_pieces(lines[pos:], trailing=False)


def _fence_regions(lines: Sequence[str]) -> list[tuple[int, int]] | None:
    """Return the fenced blocks as line ranges, or None when any fence could be read two ways."""
    regions: list[tuple[int, int]] = []
    index = 0
    while index < len(lines):
        fence = _fence_opening(lines[index])
        if fence is None:
            if FENCE_LIKE.match(lines[index]):
                return None  # an indented, nested or odd fence: GitHub may pair fences otherwise
            index += 1
            continue
        if _after_html(lines, index):
            return None  # an HTML block right above would swallow the fence
        end = _fence_end(lines, index, fence)
        regions.append((index, end))
        index = end
    return regions


def _fence_opening(line: str) -> str | None:
    """Return the fence string when ``line`` opens a fenced block at column 0."""
    match = FENCE_OPEN.match(line)
    if match is None or (match.group(1)[0] == "`" and "`" in match.group(2)):
        return None  # an info string with a backtick makes it inline code, not a fence
    return match.group(1)


def _fence_end(lines: Sequence[str], start: int, fence: str) -> int:
    """Return the index just past the line that closes the fence (or the end of text)."""
    closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    for index in range(start + 1, len(lines)):
        if closing.match(lines[index]):
            return index + 1
    return len(lines)


def _after_html(lines: Sequence[str], index: int) -> bool:
    """Tell whether an HTML line sits in the paragraph run just above line ``index``."""
    while index > 0 and not BLANK.match(lines[index - 1]):
        index -= 1
        if _starts_html(lines[index]):
            return True
    return False


def _starts_html(line: str) -> bool:
    """Tell whether a line may open an HTML block (a lone bot marker ends where it starts)."""
    return bool(HTML_START.match(line)) and not MARKER.fullmatch(line.strip())


def _prose_pieces(lines: Sequence[str], *, trailing: bool) -> Iterator[tuple[str, bool]]:
    """Yield prose lines split at single-line code spans (lines in an HTML block have none)."""
    in_html = False
    for number, line in enumerate(lines):
        end = "\n" if trailing or number < len(lines) - 1 else ""
        in_html = _starts_html(line) or (in_html and not BLANK.match(line))
        if in_html:
            yield line + end, False
        else:
            yield from _spans(line)
            yield end, False


def _spans(line: str) -> Iterator[tuple[str, bool]]:
    """Split one line into text and code spans; a backtick run with no partner is escaped."""
    pos = start = 0
    while pos < len(line):
        if line[pos] == "\\" and pos + 1 < len(line) and line[pos + 1] in PUNCTUATION:
            pos += 2
            continue
        if line[pos] != "`":
            pos += 1
            continue
        run = BACKTICKS.match(line, pos)
        assert run is not None
        size = len(run.group())
        partner = next(
            (m for m in BACKTICKS.finditer(line, run.end()) if len(m.group()) == size), None
        )
        yield line[start:pos], False
        if partner is None:
            yield "\\`" * size, False
            pos = start = run.end()
            continue
        span = line[pos : partner.end()]
        yield span, "|" not in span  # a pipe can split a table cell through a code span
        pos = start = partner.end()
    yield line[start:], False


# --- cleaning prose ------------------------------------------------------------------------


def _clean_prose(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Apply each cleaning step to one piece of prose."""
    steps: tuple[Callable[[str, frozenset[str], _Counts], str], ...] = (
        _drop_comments,
        _drop_img_tags,
        _autolinks,
        _definitions,
        _inline_links,
        _reference_images,
        _html_tags,
        _bare_urls,
        _defang,
    )
    for step in steps:
        text = step(text, allowed, counts)
    return text


def _drop_comments(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Remove HTML comments except the bot's own ``<!-- cibot:... -->`` markers."""

    def one(match: re.Match[str]) -> str:
        if MARKER.fullmatch(match.group()):
            return match.group()
        counts.html += 1
        return ""

    return COMMENT.sub(one, text)


def _drop_img_tags(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Remove ``<img>`` tags whatever their source."""
    text, n = IMG_TAG.subn("", text)
    counts.images += n
    return text


def _autolinks(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Keep ``<https://allowed/...>`` autolinks; replace the others with a note."""

    def one(match: re.Match[str]) -> str:
        if _allowed_url(match.group(1), allowed, relative=False):
            return match.group()
        counts.links += 1
        return LINK_REMOVED

    return AUTOLINK.sub(one, text)


def _definitions(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Drop reference definitions that point off the allowlist or that an image uses."""
    image_labels = counts.image_labels

    def one(match: re.Match[str]) -> str:
        label = _label(match.group(2))
        dest = match.group(3)
        if label not in image_labels and dest and _allowed_url(dest, allowed, relative=True):
            return match.group()
        counts.images += label in image_labels
        counts.links += label not in image_labels
        return match.group(1).rstrip()

    return DEFINITION.sub(one, text)


def _inline_links(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Remove inline images; keep allowed links and unwrap the others to their text."""

    def one(match: re.Match[str]) -> str:
        if match.group(3) is not None:
            return _inline_link(match, allowed, counts)
        if match.group(4) is None:
            return "]\\("  # a ]( whose target this scanner cannot read: make it plain text
        if _allowed_url(match.group(4), allowed, relative=True):
            return match.group()  # the tail of a link whose text holds a code span
        counts.links += 1
        return "]"

    return INLINE.sub(one, text)


def _inline_link(match: re.Match[str], allowed: frozenset[str], counts: _Counts) -> str:
    """Drop an inline image; keep a link on an allowed host, or unwrap it to its text."""
    if match.group(1):
        counts.images += 1
        return ""
    if _allowed_url(match.group(3), allowed, relative=True):
        return match.group()
    counts.links += 1
    return match.group(2)


def _reference_images(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Remove reference-style images (``![alt][ref]``, ``![alt]``) and escape any other ``![``."""
    text, n = REF_IMAGE.subn("", text)
    counts.images += n
    return text.replace("![", "!\\[")


def _html_tags(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Keep the template tags bare and escape every other tag so GitHub shows it as text."""
    kept: list[str] = []

    def keep(match: re.Match[str]) -> str:
        counts.html += bool(match.group(3).strip()) or match.group().endswith("/>")
        kept.append(f"<{match.group(1)}{match.group(2).lower()}>")
        return f"\x02{len(kept) - 1}\x03"

    def marker(match: re.Match[str]) -> str:  # a bot marker or an autolink checked above
        kept.append(match.group())
        return f"\x02{len(kept) - 1}\x03"

    text = KEPT_TAG.sub(keep, AUTOLINK.sub(marker, MARKER.sub(marker, text)))
    text, n = TAG_START.subn("&lt;", text)
    counts.html += n
    return re.sub(r"\x02(\d+)\x03", lambda m: kept[int(m.group(1))], text)


def _bare_urls(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Replace bare URLs (which GitHub would link) that point off the allowlist."""

    def one(match: re.Match[str]) -> str:
        url = match.group()
        target = "http://" + url if url.lower().startswith("www.") else url
        if _allowed_url(target, allowed, relative=False):
            return url
        counts.links += 1
        return LINK_REMOVED

    return BARE_URL.sub(one, text)


def _defang(text: str, allowed: frozenset[str], counts: _Counts) -> str:
    """Break any ``javascript:`` left in prose, so nothing can turn it into a link."""
    return JAVASCRIPT.sub("javascript&#58;", text)


def _image_labels(text: str) -> frozenset[str]:
    """Return the reference labels that images in ``text`` use (their definitions go too)."""
    return frozenset(_label(m.group(2) or m.group(1)) for m in REF_IMAGE.finditer(text))


def _label(label: str) -> str:
    """Normalise a reference label as CommonMark matches it: case- and space-insensitive."""
    return " ".join(label.split()).casefold()


def _allowed_url(raw: str, allowed: frozenset[str], *, relative: bool) -> bool:
    """Tell whether a link target stays on an allowed host (relative targets stay on GitHub)."""
    url = raw[1:-1] if raw.startswith("<") and raw.endswith(">") else raw
    url = html.unescape(ESCAPABLE.sub(r"\1", url))
    url = re.sub(r"[\x00-\x20\x7f]", "", url).replace("\\", "/")
    scheme = SCHEME.match(url)
    if scheme is None and not url.startswith("//"):
        return relative and not url.lower().startswith(("javascript", "data", "vbscript"))
    if scheme is not None and scheme.group(1).lower() not in ("http", "https"):
        return False
    rest = url[scheme.end() :] if scheme else url
    if not rest.startswith("//"):
        return False  # "http:evil.example" has no host GitHub would keep on its own pages
    return _allowed_host(re.split(r"[/?#]", rest[2:], maxsplit=1)[0], allowed)


def _allowed_host(netloc: str, allowed: frozenset[str]) -> bool:
    """Tell whether a URL authority names an allowed host (no user part, ASCII only)."""
    if "@" in netloc:
        return False
    host = netloc.lower().rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc.lower()
    host = host.rstrip(".")
    if not HOST.match(host):
        return False
    return host in allowed or any(host.endswith("." + base) for base in GITHUB_HOSTS)


# --- committable suggestions ---------------------------------------------------------------

PROCESS, NETWORK, EVAL, FILES, SHELL = (
    "a process call",
    "a network call",
    "an eval/exec call",
    "a file-system call",
    "a shell command",
)
RISKY: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        (PROCESS, r"\bos\.(?:system|popen|exec[lv]p?e?|spawn\w*|fork\w*|posix_spawn\w*)\b"),
        (PROCESS, r"\bfrom os import\b[^\n]*\b(?:system|popen|exec\w*|spawn\w*)\b"),
        (PROCESS, r"\bsubprocess\b(?:\.\w+)?"),
        (PROCESS, r"\bpty\.spawn\b|\bcommands\.getoutput\b|\bIO\.popen\b|\bOpen3\b"),
        (PROCESS, r"\bchild_process\b|\bexecSync\b|\bspawnSync\b|\bexecFile\w*"),
        (PROCESS, r"(?<![\w.])(?:spawn|system)\("),
        (
            PROCESS,
            r"\bexec\.Command\w*|\bos/exec\b|\bsyscall\.Exec\b|\bKernel\.(?:system|exec|spawn)\b",
        ),
        (PROCESS, r"%x[\[({|]"),
        (EVAL, r"(?<![\w.])(?:eval|exec|compile|execfile)\("),
        (EVAL, r"\b__import__\b|\bimportlib\b|\b__builtins__\b|\bbuiltins\.\w+"),
        (EVAL, r"\bgetattr\((?:os|subprocess|builtins|__builtins__|sys)\b"),
        (EVAL, r"\bnew Function\b|(?<![\w.])Function\("),
        (EVAL, r"\b(?:pickle|cPickle|marshal|dill|shelve)\.loads?\b|\byaml\.unsafe_load\b"),
        (NETWORK, r"\burllib\d?\b(?:\.\w+)*|\burlopen\b|\bhttp\.client\b|\baiohttp\b"),
        (NETWORK, r"\b(?:requests|httpx|socket)\.\w+"),
        (NETWORK, r"(?<![\w.])fetch\(|\bXMLHttpRequest\b|\bWebSocket\("),
        (NETWORK, r"require\(['\"](?:node:)?(?:https?|net|dgram|tls)['\"]\)"),
        (NETWORK, r"from ['\"](?:node:)?(?:https?|net|dgram|tls)['\"]"),
        (
            NETWORK,
            r"\bnet/http\b|\bhttp\.(?:Get|Post|PostForm|Head|NewRequest\w*)\b|\bnet\.Dial\w*",
        ),
        (NETWORK, r"\bNet::HTTP\b|\bopen-uri\b|\bURI\.open\b"),
        (FILES, r"(?<![\w.])open\([^)\n]*['\"][rbt]*[wax+][rbt+]*['\"]"),
        (FILES, r"\bshutil\.(?:rmtree|move|chown)\b|\bos\.(?:remove|unlink|rmdir|removedirs)\b"),
        (FILES, r"\.(?:write_text|write_bytes|unlink|rmdir)\("),
        (FILES, r"\bfs\.(?:write\w*|unlink\w*|rm\w*|appendFile\w*|chmod\w*)"),
        (FILES, r"\bos\.(?:Remove|RemoveAll|WriteFile|Create)\b|\bFile\.(?:write|delete|unlink)\b"),
        (FILES, r"\bFileUtils\.rm\w*"),
        (SHELL, r"\b(?:curl|wget)\b|/dev/tcp/"),
        (SHELL, r"\b(?:nc|ncat|netcat)\s+(?:-[A-Za-z]+\s+)*[A-Za-z0-9][\w.-]*\s+\d{1,5}\b"),
        (SHELL, r"\b(?:nc|ncat|netcat)\s+-[A-Za-z]*[elc]"),
        (SHELL, r"\b(?:ba|z|da|k)?sh\s+-c\b|\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b"),
    )
)
BACKTICK_LANGUAGES = (".rb", ".sh", ".bash", ".zsh", ".pl", ".php")
BACKTICK_CALL = re.compile(r"`[^`\n]+`")
DECODE = re.compile(
    r"\bb64decode\b|\bbase64\.decode\w*|\batob\(|['\"]base64['\"]|\bbase64\s+(?:-d|--decode)\b"
    r"|\bBase64\.(?:decode64|strict_decode64)\b|\bDecodeString\b|\bcodecs\.decode\b"
)
LONG_BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def check_suggestion(suggested: str, replaced: str, *, path: str) -> str | None:
    """Return why a suggestion is unsafe when it adds a risky call the replaced lines lack."""
    before = set(_risky_calls(replaced, path))
    added: dict[str, list[str]] = {}
    for kind, token in _risky_calls(suggested, path):
        if (kind, token) not in before and token not in added.setdefault(kind, []):
            added[kind].append(token)
    if _decodes_then_runs(
        _normal(suggested), _normal(replaced), bool(_risky_calls(suggested, path))
    ):
        added.setdefault("a decode-then-run pattern", []).append("base64")
    parts = [f"{kind} ({', '.join(tokens)})" for kind, tokens in added.items() if tokens]
    if not parts:
        return None
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return f"it adds {listed} that the replaced lines do not make."


def _normal(code: str) -> str:
    """Join continued lines and drop spaces around dots and before calls, to see through them."""
    code = re.sub(r"\\\n", "", code)
    code = re.sub(r"[ \t]*\.[ \t]*", ".", code)
    return re.sub(r"[ \t]+\(", "(", code)


def _risky_calls(code: str, path: str) -> list[tuple[str, str]]:
    """Return (kind, token) for every risky call in ``code``, in the order they appear."""
    text = _normal(code)
    found = [(m.start(), kind, _token(m.group())) for kind, rx in RISKY for m in rx.finditer(text)]
    if path.lower().endswith(BACKTICK_LANGUAGES):
        found += [(m.start(), PROCESS, "backticks") for m in BACKTICK_CALL.finditer(text)]
    return [(kind, token) for _, kind, token in sorted(found)]


def _token(matched: str) -> str:
    """Name a matched call in a few safe characters (no quotes, spaces or markup)."""
    name = re.sub(r"[^\w./:%-]+", " ", matched).split()
    return (name[0] if name else "call")[:40] if not matched.startswith("%x") else "%x"


def _decodes_then_runs(suggested: str, replaced: str, runs: bool) -> bool:
    """Tell whether the suggestion adds a base64 decode (or a long base64 blob) next to a run."""
    adds_decode = bool(DECODE.search(suggested)) and not DECODE.search(replaced)
    adds_blob = bool(LONG_BASE64.search(suggested)) and not LONG_BASE64.search(replaced)
    return runs and (adds_decode or adds_blob)


SUGGESTION_BLOCK = re.compile(
    r"^[ \t>]*(`{3,}|~{3,})[ \t]*suggestion\b[^\n]*\n(.*?)(?:^[ \t>]*\1[`~]*[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL | re.IGNORECASE,
)


def sanitize_review_comment(
    body: str,
    replaced_lines: str | Sequence[str],
    *,
    path: str,
    allowed_hosts: frozenset[str] = frozenset(),
) -> Sanitized:
    """Withhold risky suggestion blocks (saying why), then sanitize the comment body."""
    replaced = replaced_lines if isinstance(replaced_lines, str) else "\n".join(replaced_lines)
    withheld = 0

    def one(match: re.Match[str]) -> str:
        nonlocal withheld
        reason = check_suggestion(match.group(2), replaced, path=path)
        if reason is None:
            return match.group()
        withheld += 1
        return SUGGESTION_WITHHELD.format(reason=reason) + "\n"

    text = SUGGESTION_BLOCK.sub(one, body.replace("\r\n", "\n"))
    result = sanitize(text, allowed_hosts=allowed_hosts)
    return Sanitized(result.text, result.images, result.links, result.html, withheld)
