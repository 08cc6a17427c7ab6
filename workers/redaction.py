"""Redact secrets, and only secrets, from text before it goes to an external model tier.

Text is read line by line. A diff's file headers (``diff --git``, ``+++ b/...``) say what
kind of file each line belongs to; text outside any diff takes the kind of the ``path``
argument, or none. Three layers decide what is a secret:

* Token shapes that mean a credential wherever they appear: private key blocks, cloud,
  GitHub, Slack, Stripe and other vendor tokens, JWTs, passwords inside URLs
  (``scheme://user:pass@``, ``scheme://:pass@``), connection-string passwords
  (``password=...`` next to ``host=`` or ``Server=``), and passwords in backticks right
  after a password-ish word. Vendor shapes come from detect-secrets' plugins
  (https://github.com/Yelp/detect-secrets) through ``analyze_string`` only:
  ``analyze_line`` may verify a candidate against the vendor's API, which would send the
  secret out.
* Literal values under secret-sounding names (detect-secrets' keyword patterns for the
  file's type, plus unquoted ``NAME=value`` assignments), where the name ends in a secret
  word: ``CLIENT_SECRET_HASHER`` names a hasher, not a secret.
* In YAML, TOML, JSON, ``.env``, INI and properties files, random-looking values under any
  key, except in lock, swagger and test-fixture files.

detect-secrets' heuristic filters (templates, ``$`` references, indirect references,
sequential strings, UUIDs, id fields, non-alphanumeric strings, lock and swagger files)
and our own (digests, dotted identifiers, alphabets, resource paths) drop candidates
that are not secrets. Each secret becomes ``[REDACTED:<kind>]``. When a changed ``-`` line
and a ``+`` line of the same change would redact to the same text, their placeholders
carry a tag, a salted HMAC of the value truncated to six hex digits, so the reviewer
sees that the value changed without learning anything about it: the salt is random per
process and never leaves it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import pairwise
from typing import Any

from detect_secrets.filters import heuristic
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import (
    Base64HighEntropyString,
    HexHighEntropyString,
)
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import (
    CONFIG_DENYLIST_REGEX_TO_GROUP,
    DENYLIST_REGEX,
    QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
    REGEX_BY_FILETYPE,
)
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector
from detect_secrets.util.filetype import FileType, determine_file_type

PLACEHOLDER = "[REDACTED:{kind}]"
TAGGED_PLACEHOLDER = "[REDACTED:{kind}#{tag}]"
MIN_SECRET_LEN = 6  # shorter keyword values (password = "x") are placeholders, not secrets
MIN_SHAPED_LEN = 3  # a password inside a URL or a connection string is one at any length
PROPAGATE_LEN = 8  # a value this long, seen once, is replaced wherever it appears
ASSIGNMENT_ENTROPY = 3.5  # bits per character; English identifiers sit well below it
NEUTRAL_ENTROPY = 4.0  # stricter for values under a key that does not sound secret
NEUTRAL_MIN_LEN = 20
LABEL_WIDTH = 7  # review prompts pad each R<new>/L<old> label to this width
TAG_HEX = 6  # 24 bits: enough to tell two values apart, nothing to brute-force without the salt
_SALT = secrets.token_bytes(32)  # per process, so tags never link values across runs

# detect-secrets' secret_type → our kind (the ledger's vocabulary).
KINDS = {
    "AWS Access Key": "aws_access_key",
    "Azure Storage Account access key": "azure_storage_key",
    "Discord Bot Token": "discord_token",
    "GitHub Token": "github_token",
    "GitLab Token": "gitlab_token",
    "JSON Web Token": "jwt",
    "Mailchimp Access Key": "mailchimp_key",
    "NPM tokens": "npm_token",
    "OpenAI Token": "openai_key",
    "PyPI Token": "pypi_token",
    "SendGrid API Key": "sendgrid_key",
    "Slack Token": "slack_token",
    "Square OAuth Secret": "square_key",
    "Stripe Access Key": "stripe_key",
    "Telegram Bot Token": "telegram_token",
    "Twilio API Key": "twilio_key",
}
# Vendor shapes only: each matches a credential format, so none needs a filter.
_PLUGINS: tuple[Any, ...] = (
    AWSKeyDetector(),
    GitHubTokenDetector(),
    GitLabTokenDetector(),
    SlackDetector(),
    StripeDetector(),
    OpenAIDetector(),
    JwtTokenDetector(),
    NpmDetector(),
    PypiTokenDetector(),
    SendGridDetector(),
    TwilioKeyDetector(),
    DiscordBotTokenDetector(),
    AzureStorageKeyDetector(),
    MailchimpDetector(),
    SquareOAuthDetector(),
    TelegramBotTokenDetector(),
)


_B64 = Base64HighEntropyString(limit=4.5)
_HEX = HexHighEntropyString(limit=3.0)

# Tokens the plugins miss or match only partly.
_OWN: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("github_token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}")),
    ("github_token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("slack_token", re.compile(r"https://hooks\.slack\.com/(?:services|workflows)/[\w/]{20,}")),
    ("aws_access_key", re.compile(r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")),
    ("stripe_key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[0-9a-zA-Z]{24,}")),
    ("stripe_key", re.compile(r"\bwhsec_[0-9a-zA-Z]{24,}")),
    ("openai_key", re.compile(r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}")),
    ("anthropic_key", re.compile(r"\bsk-ant-[a-z0-9]+-[A-Za-z0-9_-]{20,}")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
)

# Every vendor token has a run this long of these characters: lines without one skip the
# plugins, which would otherwise run some thirty patterns over every line.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_\-+/=]{15}")

# A PEM private key block, BEGIN to END, across lines, diff prefixes or escaped newlines.
_PEM_BLOCK = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK|)-----.*?-----END \1PRIVATE KEY\2-----",
    re.DOTALL,
)
# A block whose END line was cut off (a truncated diff): the header plus at least one line
# of key body. A header alone is code that looks for keys, not a key.
_PEM_OPEN = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:(?:\n|\\n)(?:[RL]\d+ *)?[+\- ]?[ \t\"']*(?:[A-Za-z0-9+/=]{16,}|[A-Za-z-]+: .*)[\"',]*)+",
)
# scheme://user:pass@host and scheme://:pass@host; the password alone is replaced.
_URL_CREDENTIALS = re.compile(
    r"(?i)\b[a-z][a-z0-9+.-]{1,30}://[^\s:/?#@'\"`<>]*:(?P<value>[^\s/?#@'\"`<>]+)@(?=[\w\[])"
)
# libpq keyword/value and ADO.NET strings name the server next to the password.
_DSN_CONTEXT = re.compile(
    r"(?i)(?<![\w.])(?:host|hostaddr|port|dbname|user|user id|uid|sslmode|server|database"
    r"|data source|initial catalog)\s*=\s*[^\s;=]"
)
_DSN_PASSWORD = re.compile(
    r"(?i)(?<![\w.])(?:password|passwd|pwd)\s*=\s*"
    r"(?P<q>')?(?P<value>(?(q)[^'\n]+|[^\s'\";`,(){}\[\]]+))(?(q)'|(?=$|[\s;'\"`]))"
)
_QUERY_PASSWORD = re.compile(r"(?i)[?&](?:password|passwd|pwd)=(?P<value>[^&\s'\"#`]+)")
# "the password is `hunter2`", "Password: **`hunter2`**".
_BACKTICK_PASSWORD = re.compile(
    r"(?i)\b(?:passwords?|passwd|passphrase|pwd|contrase(?:ñ|n)a)\b\s*(?:is|was|=|:|->|→)?\s*"
    r"(?:\*\*|__)?`(?P<value>[^`\s]{3,64})`"
)
# NAME=value or NAME: value, unquoted, where NAME sounds secret and value looks random.
_ASSIGNMENT = re.compile(
    r"(?i)(?P<key>\b[\w.-]*(?:key|token|secret|passw(?:or)?d|pwd|credential|auth)[\w.-]*)"
    r"\s*[:=]\s*(?P<value>[A-Za-z0-9+/_.~-]{16,}={0,2})(?![\w+/=.(\[])"
)
_ASSIGNMENT_WORD = re.compile(r"(?i)key|token|secret|passw|pwd|credential|auth")
# Authorization header values in code, tests and logs.
_BEARER = re.compile(
    r"(?i)\b(?:bearer|basic|authorization:\s*token)\s+(?P<value>[A-Za-z0-9._~+/-]{20,}=*)"
)
# One key and one value per line: YAML, TOML, JSON, .env, INI, properties.
_CONFIG_VALUE = re.compile(
    r"""^\s*(?:[{\[]\s*)?(?:-\s+)?(?:export\s+)?["']?(?P<key>[\w.@/-]+)["']?\s*[:=]\s*"""
    r"""(?P<q>["']?)(?P<value>[^\s"'`,;#{}\[\]]{20,})(?P=q)\s*,?\s*[}\]]*\s*,?\s*(?:[#;].*)?$"""
)
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_\-+/=]*(?:\.[A-Za-z0-9_\-+/=]+)*")
_KEY_BODY = re.compile(r"[A-Za-z0-9+/]{32}")
_DENYLIST_WORD = re.compile(DENYLIST_REGEX, re.IGNORECASE)
_PLACEHOLDER_RE = re.compile(r"\[REDACTED:[a-z0-9_]+(?:#[0-9a-f]+)?\]")
_LABEL = re.compile(r"[RL]\d+")
_MARKS = frozenset("-+ \\")
_KEY_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_KEY_CHARS = re.compile(r"[\w.-]+$")


def _words(text: str) -> frozenset[str]:
    """Return the set of space-separated words in ``text``."""
    return frozenset(text.split())


# The last word of a key that holds a secret; words that may follow it; words that say
# the value is public.
_SECRET_WORDS = _words(
    "key keys secret secrets password passwords passwd pwd pass passphrase token tokens "
    "credential credentials apikey auth pw contraseña contrasena"
)
_TRAILING_WORDS = _words("base value b64 base64 hex raw")
_PUBLIC_WORDS = _words("public pub publishable socket")  # Sec-WebSocket-Key is a nonce
# Under these names a random value is a checksum, an id or a public value.
_NEUTRAL_NAMES = _words(
    "checksum checksums hash hashes digest integrity sha sha1 sha256 sha512 md5 etag "
    "fingerprint commit rev revision version ref id ids uuid guid image resolved nonce cert "
    "certificate crt ca signature sig thumbprint salt secure uses"
)
_DIGEST_LENGTHS = frozenset({32, 40, 56, 64, 96, 128})
_DIGEST_PREFIX = re.compile(r"(?i)^(?:sha(?:1|224|256|384|512)?|md5|blake2[bs]?|xxh\d*)[-:]")
_CONFIG_TYPES = frozenset({FileType.YAML, FileType.TOML, FileType.INI, FileType.PROPERTIES})
_CONFIG_SUFFIXES = (".json", ".jsonc", ".json5", ".env", ".cfg", ".conf")
_LOCK_NAMES = frozenset(
    {"uv.lock", "go.sum", "pnpm-lock.yaml", "bun.lock", "flake.lock", "mix.lock", "pubspec.lock"}
)
_FIXTURE_DIR = re.compile(r"(?i)(?:^|/)(?:tests?|__tests__|spec|fixtures?|testdata|mocks?)/")
# Values that are references, expressions or names rather than literals.
_NOT_A_SECRET = re.compile(
    r"(?i)[()\[\]{}$<>]|^\w+(\.\w+)+$|^change[_-]?(me|this|it)$"
    r"|^(none|null|nil|true|false|example|undefined|string|number|object|function|boolean)$"
    r"|^[A-Za-z_-]*(key|pass|pwd|secret|token)[A-Za-z_-]*$"
)
_MASK = re.compile(r"(?i)\*+|x{3,}|\.{3}|…")
_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*(?:(?:\.|::|->|#)[A-Za-z_$][\w$]*)+")
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]+")
# Letters only (settings.SECRET_KEY) or digits only: a name or a number, not a token.
_WORDS_ONLY = re.compile(r"[A-Za-z_.-]+|[0-9]+")
_HEX_ONLY = re.compile(r"[0-9a-fA-F]+")
_BASE64_ONLY = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


@dataclass(frozen=True)
class Redacted:
    """Hold redacted text and how many secrets of each kind were replaced (never the values)."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Return the number of secrets replaced."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class Finding:
    """Say where one secret sits (line index, columns) and its kind, never its value."""

    line: int
    start: int
    end: int
    kind: str
    tag: str  # salted HMAC of the value: tells two secrets apart and reveals nothing
    counted: bool = True  # False on a key block's later lines: the block counts once
    tagged: bool = False  # show the tag, because the -/+ pair would read the same without it
    # A key block's later lines render empty unless tagged: then as a tagged placeholder.


@dataclass(frozen=True, eq=False)
class _Scope:
    """Say how to read the values of one file kind."""

    keyword_rules: dict[re.Pattern[str], int]
    any_key: bool  # random values under any key are secrets (config files)
    lock: bool


@dataclass(frozen=True)
class _Line:
    """Hold one line with its place in a diff."""

    text: str
    prefix: int  # length of the review label and the +/- marker, 0 outside hunks
    mark: str  # "+", "-", " " inside a hunk, "" elsewhere
    scope: _Scope
    header: bool = False  # diff --git, ---, +++: paths, never scanned


@dataclass(frozen=True)
class _Hit:
    """Hold one candidate inside a line's content; the value stays in this module."""

    start: int
    end: int
    kind: str
    value: str


_Detector = Callable[[str, _Scope], Iterator[_Hit]]


def redact(text: str, *, path: str | None = None) -> Redacted:
    """Replace every secret in ``text`` with ``[REDACTED:<kind>]`` and count them by kind.

    ``path`` names the file ``text`` comes from when it is not a diff (a diff's own
    headers name its files).
    """
    lines = text.split("\n")
    found = scan(text, path=path)
    if not found:
        return Redacted(text=text, counts={})
    out = _render(lines, found)
    counts = Counter(f.kind for f in found if f.counted)
    return Redacted(text="\n".join(out), counts=dict(sorted(counts.items())))


def secret_values(text: str, *, path: str | None = None) -> frozenset[str]:
    """Return the secret values in ``text``, to find them again where a model echoes them.

    Only for use inside the worker that holds ``text``: the values never leave it, never
    reach a log or the ledger (``workers.pipeline`` strips them from posts).
    """
    lines = text.split("\n")
    values = set()
    for f in scan(text, path=path):
        value = lines[f.line][f.start : f.end]
        if len(value) >= MIN_SECRET_LEN:
            values.add(value)
        if "://" in value:  # a webhook or credentialed URL: its random parts stand alone too
            values.update(
                p for p in re.split(r"[/:@?&=]", value) if _looks_random(p, neutral=False)
            )
    return frozenset(values)


def scrub(text: str, values: Iterable[str]) -> tuple[str, int]:
    """Replace each of ``values`` in ``text`` (longest first); return the text and the count."""
    count = 0
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            count += text.count(value)
            text = text.replace(value, PLACEHOLDER.format(kind="echoed_secret"))
    return text, count


def redact_all(
    texts: Iterable[str], *, path: str | None = None
) -> tuple[list[str], dict[str, int]]:
    """Redact several texts and return them with the summed counts."""
    counts: Counter[str] = Counter()
    out = []
    for text in texts:
        result = redact(text, path=path)
        out.append(result.text)
        counts.update(result.counts)
    return out, dict(sorted(counts.items()))


def scan(text: str, *, path: str | None = None) -> list[Finding]:
    """Find every secret in ``text``: its line, columns and kind, with -/+ pairs tagged."""
    lines = text.split("\n")
    parsed = _parse(lines, path)
    by_line: dict[int, list[Finding]] = {}
    for finding in _pem_findings(text, parsed):
        by_line.setdefault(finding.line, []).append(finding)
    strong: dict[str, str] = {}
    for index, line in enumerate(parsed):
        if not line.header:
            by_line[index] = _scan_line(index, line, by_line.get(index, []), strong)
    _propagate(parsed, by_line, strong)
    found = sorted((f for fs in by_line.values() for f in fs), key=lambda f: (f.line, f.start))
    return _tag_pairs(parsed, found)


# ---- reading the diff -----------------------------------------------------------------------


def _parse(lines: list[str], path: str | None) -> list[_Line]:
    """Give each line its hunk prefix, its +/- mark and the scope of the file it is in."""
    default = _scope_for(path)
    scope, in_hunk, out = default, False, []
    for index, text in enumerate(lines):
        nxt = lines[index + 1] if index + 1 < len(lines) else ""
        if text.startswith("diff --git ") or _file_pair(text, nxt, in_hunk):
            scope, in_hunk = _scope_for(_header_path(text, nxt) or path), False
            out.append(_Line(text, 0, "", scope, header=True))
        elif not in_hunk and text.startswith(("+++ ", "--- ", "index ")):
            out.append(_Line(text, 0, "", scope, header=True))
        elif text.startswith("@@ "):
            in_hunk = True
            out.append(_Line(text, 0, "", scope))
        else:
            hunk = _hunk_prefix(text) if in_hunk else None
            in_hunk = hunk is not None
            prefix, mark = hunk or (0, "")
            out.append(_Line(text, prefix, mark, scope))
    return out


def _hunk_prefix(text: str) -> tuple[int, str] | None:
    """Return a hunk line's prefix length and mark, or None when the line ends the hunk.

    A review prompt labels each line ``R<new>``/``L<old>``, padded to seven characters,
    before the diff's own marker; a blank context line may be the label alone.
    """
    label = _LABEL.match(text)
    at = max(LABEL_WIDTH, label.end()) if label else 0
    if label and text[label.end() : at].strip(" "):
        return None
    mark = text[at : at + 1]
    if not mark:
        return len(text), " "
    return (at + 1, mark) if mark in _MARKS else None


def _file_pair(line: str, nxt: str, in_hunk: bool) -> bool:
    """Say whether a line opens a ``---``/``+++`` header pair (inside a hunk: a/ and b/ only)."""
    if not (line.startswith("--- ") and nxt.startswith("+++ ")):
        return False
    return not in_hunk or (
        line[4:].startswith(("a/", "/dev/null")) and nxt[4:].startswith(("b/", "/dev/null"))
    )


def _header_path(line: str, nxt: str) -> str | None:
    """Return the new path a ``diff --git`` or ``---``/``+++`` header names."""
    if line.startswith("diff --git "):
        name = line.rsplit(" b/", 1)[-1] if " b/" in line else line.split()[-1]
        return name.strip()
    name = nxt[4:].split("\t")[0].strip()
    if name == "/dev/null":
        name = line[4:].split("\t")[0].strip()
    return name[2:] if name.startswith(("a/", "b/")) else name


@lru_cache(maxsize=512)
def _scope_for(path: str | None) -> _Scope:
    """Return how to read a file's values, from its path (None: prose, read as code)."""
    if not path:
        return _Scope(QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP, any_key=False, lock=False)
    name = path.rsplit("/", 1)[-1].lower()
    lock = heuristic.is_lock_file(path) or name in _LOCK_NAMES or name.endswith(".lock")
    is_env = name.startswith(".env") or name.endswith(".env")
    filetype = determine_file_type(path)
    config = is_env or filetype in _CONFIG_TYPES or name.endswith(_CONFIG_SUFFIXES)
    rules = CONFIG_DENYLIST_REGEX_TO_GROUP if is_env or config else None
    rules = rules or REGEX_BY_FILETYPE.get(filetype, QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP)
    quiet = lock or heuristic.is_swagger_file(path) or bool(_FIXTURE_DIR.search(path))
    return _Scope(rules, any_key=config and not quiet, lock=lock)


# ---- finding secrets ------------------------------------------------------------------------


def _scan_line(
    index: int, line: _Line, taken: list[Finding], strong: dict[str, str]
) -> list[Finding]:
    """Return the findings on one line: those already made plus what the detectors add."""
    content = line.text[line.prefix :]
    spans = [(f.start - line.prefix, f.end - line.prefix) for f in taken]
    spans += [m.span() for m in _PLACEHOLDER_RE.finditer(content)]
    out = list(taken)
    for detector in _DETECTORS:
        for hit in detector(content, line.scope):
            if any(hit.start < end and start < hit.end for start, end in spans):
                continue
            spans.append((hit.start, hit.end))
            start, end = line.prefix + hit.start, line.prefix + hit.end
            out.append(Finding(index, start, end, hit.kind, _tag(hit.value)))
            if len(hit.value) >= PROPAGATE_LEN and not _WORDS_ONLY.fullmatch(hit.value):
                strong.setdefault(hit.value, hit.kind)
    return out


def _tag(value: str) -> str:
    """Return a salted, truncated HMAC of a secret: stable in this process, opaque outside."""
    return hmac.new(_SALT, value.encode(), hashlib.sha256).hexdigest()[:TAG_HEX]


def _pem_findings(text: str, parsed: list[_Line]) -> Iterator[Finding]:
    """Yield a finding for each private key block, one per line it spans, counted once."""
    starts = [0]
    for line in parsed:
        starts.append(starts[-1] + len(line.text) + 1)
    taken = -1
    for pattern in (_PEM_BLOCK, _PEM_OPEN):
        for match in pattern.finditer(text):
            if match.start() < taken or not _KEY_BODY.search(match.group(0)):
                continue  # inside a block already covered, or a documented "MIIE...xyz" stand-in
            taken = match.end()
            yield from _block_findings(match, starts, parsed)


def _block_findings(
    match: re.Match[str], starts: list[int], parsed: list[_Line]
) -> Iterator[Finding]:
    """Cover a key block: a placeholder where it starts, empty text on its later lines.

    The first line's tag stands for the whole block; a later line's for that line, so a
    changed line of key body can still be told from its old version.
    """
    first = _line_at(starts, match.start())
    last = _line_at(starts, match.end() - 1)
    for index in range(first, last + 1):
        text = parsed[index].text
        begin = match.start() - starts[index] if index == first else parsed[index].prefix
        end = match.end() - starts[index] if index == last else len(text)
        tag = _tag(match.group(0) if index == first else text[begin:end])
        yield Finding(index, begin, end, "private_key", tag, counted=index == first)


def _line_at(starts: list[int], offset: int) -> int:
    """Return the index of the line holding a character offset."""
    low, high = 0, len(starts) - 2
    while low < high:
        mid = (low + high + 1) // 2
        if starts[mid] <= offset:
            low = mid
        else:
            high = mid - 1
    return low


def _vendor_tokens(content: str, _scope: _Scope) -> Iterator[_Hit]:
    """Yield tokens whose shape alone names the vendor (detect-secrets plugins, then ours)."""
    if not _TOKEN_RUN.search(content):
        return
    for plugin in _PLUGINS:
        for value in set(plugin.analyze_string(content)):
            if len(value) >= MIN_SECRET_LEN:
                kind = KINDS.get(plugin.secret_type, "secret")
                for hit in _occurrences(content, value, kind):
                    yield _whole_token(content, hit)
    for kind, pattern in _OWN:
        for match in pattern.finditer(content):
            yield _Hit(match.start(), match.end(), kind, match.group(0))


def _whole_token(content: str, hit: _Hit) -> _Hit:
    """Extend a hit to the end of its token: the JWT plugin's pattern stops short of the signature."""
    run = _TOKEN_TAIL.match(content, hit.end)
    if run is None or not run.group(0):
        return hit
    return _Hit(hit.start, run.end(), hit.kind, content[hit.start : run.end()])


def _occurrences(content: str, value: str, kind: str) -> Iterator[_Hit]:
    """Yield a hit for every place ``value`` appears in ``content``."""
    start = content.find(value)
    while start >= 0:
        yield _Hit(start, start + len(value), kind, value)
        start = content.find(value, start + len(value))


def _shaped_passwords(content: str, _scope: _Scope) -> Iterator[_Hit]:
    """Yield passwords inside URLs, connection strings and backticks after a password word."""
    lower = content.lower()
    rules: list[tuple[re.Pattern[str], str]] = []
    if "@" in content and "://" in content:
        rules.append((_URL_CREDENTIALS, "basic_auth"))
    if "`" in content:
        rules.append((_BACKTICK_PASSWORD, "password"))
    if "=" in content and ("pass" in lower or "pwd" in lower):
        rules.append((_QUERY_PASSWORD, "dsn_password"))
        if _DSN_CONTEXT.search(content):
            rules.append((_DSN_PASSWORD, "dsn_password"))
    for pattern, kind in rules:
        for match in pattern.finditer(content):
            value = match.group("value")
            if _is_literal(value, kind):
                yield _Hit(match.start("value"), match.end("value"), kind, value)


def _is_literal(value: str, kind: str) -> bool:
    """Say whether a shaped password is a literal rather than a template or a name.

    Inside a URL or a connection string the slot says it is a password, so any word
    there counts (``redis://:pass@host``); in prose the value must not read as a name.
    """
    if len(value) < MIN_SHAPED_LEN or _is_template(value):
        return False
    if kind == "password":  # prose: `DB_PASSWORD`, `--password`, `password_hash` are names
        return not (
            _NOT_A_SECRET.search(value)
            or _ENV_NAME.fullmatch(value)
            or value.startswith("-")
            or _DENYLIST_WORD.search(value)
            or _IDENTIFIER.fullmatch(value)
        )
    return True


def _is_reference(value: str) -> bool:
    """Say whether a value is a template, a variable, a mask, an expression or a name."""
    return _is_template(value) or bool(_NOT_A_SECRET.search(value))


def _is_template(value: str) -> bool:
    """Say whether a value is a template, a variable or a mask (detect-secrets' filters)."""
    return bool(
        heuristic.is_templated_secret(value)
        or heuristic.is_prefixed_with_dollar_sign(value)
        or heuristic.is_not_alphanumeric_string(value)
        or "%" in value
        or "{" in value
        or _MASK.fullmatch(value)
    )


def _keyword_values(content: str, scope: _Scope) -> Iterator[_Hit]:
    """Yield literal values assigned to secret names, by detect-secrets' keyword patterns."""
    if scope.lock or not _DENYLIST_WORD.search(content):
        return
    for pattern, group in scope.keyword_rules.items():
        for match in pattern.finditer(content):
            value, start = match.group(group), match.start(group)
            key = _key_around(content, match)
            if (
                len(value) >= MIN_SECRET_LEN
                and _secret_key(key)
                and _plausible(value, content, key)
            ):
                kind = "high_entropy" if _entropic(value) else "keyword_assignment"
                yield _Hit(start, start + len(value), kind, value)


def _key_around(content: str, match: re.Match[str]) -> str:
    """Return the whole name around the denylist word a keyword pattern matched."""
    word = _DENYLIST_WORD.search(content, match.start())
    if word is None:
        return ""
    left = _KEY_CHARS.search(content[: word.start()])
    start = left.start() if left else word.start()
    right = re.match(r"[\w.-]*", content[word.end() :])
    return content[start : word.end() + (right.end() if right else 0)]


def _secret_key(key: str) -> bool:
    """Say whether a name holds a secret: its last word (past value, b64...) is a secret word."""
    words = _key_words(key.rsplit(".", 1)[-1] or key)
    while len(words) > 1 and words[-1] in _TRAILING_WORDS:
        words.pop()
    if not words or any(w in _PUBLIC_WORDS for w in words):
        return False
    return words[-1] in _SECRET_WORDS or "".join(words[-2:]) in _SECRET_WORDS


def _key_words(key: str) -> list[str]:
    """Split a name into lower-case words, dropping numbers: ``checksumSHA1`` → checksum, sha."""
    return [w.lower() for w in _KEY_PART.findall(key) if not w.isdigit()]


def _plausible(value: str, content: str, key: str) -> bool:
    """Say whether a value under a name could be a secret (detect-secrets' filters and ours)."""
    at = content.find(key) if key else 0
    return not (
        _is_reference(value)
        or heuristic.is_indirect_reference(content)
        or heuristic.is_sequential_string(value)
        or heuristic.is_potential_uuid(value)
        or heuristic.is_likely_id_string(value, content[max(at, 0) :])
        or _IDENTIFIER.fullmatch(value)
        or _is_alphabet(value)
        or _is_path(value)
    )


def _secret_assignments(content: str, scope: _Scope) -> Iterator[_Hit]:
    """Yield unquoted random values assigned to secret names (``export API_TOKEN=...``)."""
    if scope.lock or not _ASSIGNMENT_WORD.search(content):
        return
    for match in _ASSIGNMENT.finditer(content):
        value, key = match.group("value"), match.group("key")
        if (
            _secret_key(key)
            and shannon_entropy(value) >= ASSIGNMENT_ENTROPY
            and not _WORDS_ONLY.fullmatch(value)
            and _plausible(value, content, key)
        ):
            yield _Hit(match.start("value"), match.end("value"), "high_entropy", value)


def _bearer_tokens(content: str, _scope: _Scope) -> Iterator[_Hit]:
    """Yield random credentials after ``Bearer``, ``Basic`` or ``Authorization: token``."""
    for match in _BEARER.finditer(content):
        value = match.group("value")
        if _looks_random(value, neutral=False) and not _IDENTIFIER.fullmatch(value):
            yield _Hit(match.start("value"), match.end("value"), "bearer_token", value)


def _config_values(content: str, scope: _Scope) -> Iterator[_Hit]:
    """Yield random values under any key of a config file, except checksums, ids and paths."""
    if not scope.any_key:
        return
    match = _CONFIG_VALUE.match(content)
    if match is None:
        return
    value, key = match.group("value"), match.group("key")
    words = _key_words(key)
    if words and words[-1] in _NEUTRAL_NAMES:
        return
    # A secret-sounding key (api_token) gets the looser test: a 32-digit hex value under
    # it is a token, not the checksum it would be under a neutral key.
    neutral = not _secret_key(key)
    if _looks_random(value, neutral=neutral) and _plausible(value, content, key):
        yield _Hit(match.start("value"), match.end("value"), "high_entropy", value)


_DETECTORS: tuple[_Detector, ...] = (
    _vendor_tokens,
    _shaped_passwords,
    _keyword_values,
    _secret_assignments,
    _bearer_tokens,
    _config_values,
)


# ---- telling values apart -------------------------------------------------------------------


def _entropic(value: str) -> bool:
    """Say whether detect-secrets' entropy plugins would call a value random."""
    if _HEX_ONLY.fullmatch(value):
        return _HEX.calculate_shannon_entropy(value) > _HEX.entropy_limit
    if all(c in _B64.charset for c in value):
        return _B64.calculate_shannon_entropy(value) > _B64.entropy_limit
    return False


def _looks_random(value: str, *, neutral: bool) -> bool:
    """Say whether a value looks like a generated key rather than a word, digest or path."""
    if "://" in value or "@sha" in value or _DIGEST_PREFIX.match(value):
        return False
    if _HEX_ONLY.fullmatch(value):
        if neutral and len(value) in _DIGEST_LENGTHS:
            return False  # a checksum, as in lock files, ETags and test fixtures
        return len(value) >= 32 and _HEX.calculate_shannon_entropy(value) > _HEX.entropy_limit
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return False
    if neutral and not _base64_key(value):
        return False
    return shannon_entropy(value) >= (NEUTRAL_ENTROPY if neutral else ASSIGNMENT_ENTROPY)


def _base64_key(value: str) -> bool:
    """Say whether a value has a generated key's shape: long base64 mixing case and digits."""
    return (
        len(value) >= NEUTRAL_MIN_LEN
        and _BASE64_ONLY.fullmatch(value) is not None
        and any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and not _is_path(value)
        and not _is_alphabet(value)
    )


def _is_alphabet(value: str) -> bool:
    """Say whether a value is an alphabet: 26 or more characters, none repeated, in runs.

    26 random draws from 64 characters repeat one with probability above 99.5%, but a
    secret typed or picked by hand may not; an alphabet also runs in order (abc..., 012...)
    for at least half its length.
    """
    if len(value) < 26 or len(set(value)) != len(value):
        return False
    runs = sum(ord(b) - ord(a) == 1 for a, b in pairwise(value))
    return runs >= len(value) // 2


def _is_path(value: str) -> bool:
    """Say whether a value is a resource path: slash-separated words, ids and names."""
    parts = [p for p in value.split("/") if p]
    return len(parts) >= 2 and all(_wordish(p) for p in parts)


def _wordish(part: str) -> bool:
    """Say whether one path segment reads as a name (few capitals), not as random base64."""
    if not re.fullmatch(r"[A-Za-z0-9._@:-]+", part):
        return False
    capitals = sum(c.isupper() for c in part)
    return capitals <= max(1, len(part) // 5)


# ---- writing placeholders -------------------------------------------------------------------


def _propagate(
    parsed: list[_Line], by_line: dict[int, list[Finding]], strong: dict[str, str]
) -> None:
    """Replace a long secret wherever it appears as a whole token, not only where found."""
    if not strong:
        return
    values = sorted(strong, key=len, reverse=True)
    pattern = re.compile(
        r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, values)) + r")(?![A-Za-z0-9])"
    )
    for index, line in enumerate(parsed):
        if line.header:
            continue
        taken = by_line.setdefault(index, [])
        for match in pattern.finditer(line.text):
            if not any(match.start() < f.end and f.start < match.end() for f in taken):
                value = match.group(0)
                taken.append(Finding(index, *match.span(), strong[value], _tag(value)))


def _tag_pairs(parsed: list[_Line], found: list[Finding]) -> list[Finding]:
    """Tag placeholders on changed -/+ lines that would otherwise read the same."""
    by_line: dict[int, list[Finding]] = {}
    for finding in found:
        by_line.setdefault(finding.line, []).append(finding)
    flagged: set[int] = set()
    for block in _change_blocks(parsed):
        minus: dict[str, list[int]] = {}
        for i in (i for i in block if parsed[i].mark == "-"):
            minus.setdefault(_shown(parsed[i], by_line.get(i, [])), []).append(i)
        for i in (i for i in block if parsed[i].mark == "+" and i in by_line):
            same = [
                m
                for m in minus.get(_shown(parsed[i], by_line[i]), [])
                if _differ(parsed, by_line, m, i)
            ]
            flagged.update([i, *same] if same else [])
    return [replace(f, tagged=True) if f.line in flagged else f for f in found]


def _shown(line: _Line, findings: list[Finding]) -> str:
    """Return what a reader sees of a hunk line after redaction, without label and marker."""
    return _apply(line.text, findings)[line.prefix :] if findings else line.text[line.prefix :]


def _differ(parsed: list[_Line], by_line: dict[int, list[Finding]], a: int, b: int) -> bool:
    """Say whether two lines differ before redaction, or hold different secrets (key blocks)."""
    if parsed[a].text[parsed[a].prefix :] != parsed[b].text[parsed[b].prefix :]:
        return True
    tags = [[f.tag for f in by_line.get(i, [])] for i in (a, b)]
    return tags[0] != tags[1]


def _change_blocks(parsed: list[_Line]) -> Iterator[list[int]]:
    """Yield each run of consecutive - and + lines inside a hunk."""
    block: list[int] = []
    for index, line in enumerate(parsed):
        if line.mark in ("-", "+"):
            block.append(index)
            continue
        if block:
            yield block
        block = []
    if block:
        yield block


def _render(lines: list[str], found: list[Finding]) -> list[str]:
    """Return the lines with each finding replaced by its placeholder."""
    by_line: dict[int, list[Finding]] = {}
    for finding in found:
        by_line.setdefault(finding.line, []).append(finding)
    return [_apply(text, by_line[i]) if i in by_line else text for i, text in enumerate(lines)]


def _apply(text: str, findings: list[Finding]) -> str:
    """Replace spans of one line, left to right; a key block's later lines become empty."""
    out, at = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        out.append(text[at : f.start])
        if f.counted or f.tagged:
            template = TAGGED_PLACEHOLDER if f.tagged else PLACEHOLDER
            out.append(template.format(kind=f.kind, tag=f.tag))
        at = f.end
    out.append(text[at:])
    return "".join(out)


def shannon_entropy(value: str) -> float:
    """Return the Shannon entropy of ``value`` in bits per character."""
    if not value:
        return 0.0
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in Counter(value).values())
