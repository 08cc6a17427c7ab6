"""Redact secrets from text before it goes to an external model tier.

Detection uses detect-secrets' plugins (https://github.com/Yelp/detect-secrets) through
their ``analyze_string`` method only: ``analyze_line`` may verify a candidate against the
vendor's API, which would send the secret out. Our own patterns add what the plugins miss:
whole ``-----BEGIN ... PRIVATE KEY-----`` blocks across lines, fine-grained GitHub tokens,
and unquoted ``NAME=value`` assignments of high-entropy values.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
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
    QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
    REGEX_BY_FILETYPE,
    KeywordDetector,
)
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector
from detect_secrets.util.filetype import determine_file_type

PLACEHOLDER = "[REDACTED:{kind}]"
MIN_SECRET_LEN = 6  # shorter "secrets" (password = "x") are placeholders, and replacing
# them everywhere would mangle the surrounding text

# detect-secrets' secret_type → our kind (the ledger's vocabulary).
KINDS = {
    "AWS Access Key": "aws_access_key",
    "Azure Storage Account access key": "azure_storage_key",
    "Basic Auth Credentials": "basic_auth",
    "Discord Bot Token": "discord_token",
    "GitHub Token": "github_token",
    "GitLab Token": "gitlab_token",
    "Base64 High Entropy String": "high_entropy",
    "Hex High Entropy String": "high_entropy",
    "JSON Web Token": "jwt",
    "Secret Keyword": "keyword_assignment",
    "NPM tokens": "npm_token",
    "OpenAI Token": "openai_key",
    "Private Key": "private_key",
    "PyPI Token": "pypi_token",
    "SendGrid API Key": "sendgrid_key",
    "Slack Token": "slack_token",
    "Stripe Access Key": "stripe_key",
    "Twilio API Key": "twilio_key",
}

# Specific detectors first: once a token is replaced, the generic ones cannot claim it.
_SPECIFIC: tuple[Any, ...] = (
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
    BasicAuthDetector(),
    PrivateKeyDetector(),
)
_ENTROPY: tuple[Any, ...] = (Base64HighEntropyString(limit=4.5), HexHighEntropyString(limit=3.0))
_KEYWORD = KeywordDetector()

# A PEM private key block, BEGIN to END, across lines, diff prefixes or escaped newlines.
_PEM_BLOCK = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK|)-----.*?-----END \1PRIVATE KEY\2-----",
    re.DOTALL,
)
# A block whose END line was cut off (a truncated diff): the header plus base64 lines.
_PEM_OPEN = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:(?:\n|\\n)[+\- ]?[ \t\"']*(?:[A-Za-z0-9+/=]{16,}|[A-Za-z-]+: .*)[\"',]*)*",
)
# Tokens the plugins miss or match only partly: fine-grained PATs, new-style GitHub tokens
# longer than 36 characters, Slack tokens of every prefix.
_OWN: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("github_token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}")),
    ("github_token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("aws_access_key", re.compile(r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")),
)
# NAME=value or NAME: value, unquoted, where NAME sounds secret and value looks random.
_ASSIGNMENT = re.compile(
    r"(?i)\b[\w.-]*(?:key|token|secret|passw(?:or)?d|pwd|credential|auth)[\w.-]*"
    r"\s*[:=]\s*([A-Za-z0-9+/_.~-]{16,}={0,2})(?![\w+/=])"
)
ASSIGNMENT_ENTROPY = 3.5  # bits per character; English identifiers sit well below it
# Letters only (settings.SECRET_KEY) or digits only: a name or a number, not a token.
_WORDS_ONLY = re.compile(r"[A-Za-z_.-]+|[0-9]+")
_FILE_HEADER = re.compile(r"^(?:\+\+\+ b/|diff --git a/\S+ b/)(\S+)")
_KEYWORD_HINT = re.compile(r"(?i)key|pass|pwd|secret|contrase")
# Values that are references, expressions or names rather than literals: skip them, or a
# word like "password" would be replaced everywhere in the text.
_NOT_A_SECRET = re.compile(
    r"(?i)[()\[\]{}$<>]|^\w+(\.\w+)+$|^(none|null|nil|true|false|changeme|example)$"
    r"|^[A-Za-z_-]*(key|pass|pwd|secret|token)[A-Za-z_-]*$"
)


@dataclass(frozen=True)
class Redacted:
    """Hold redacted text and how many secrets of each kind were replaced (never the values)."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Return the number of secrets replaced."""
        return sum(self.counts.values())


def redact(text: str) -> Redacted:
    """Replace every secret found in ``text`` with ``[REDACTED:<kind>]`` and count them."""
    counts: Counter[str] = Counter()
    text = _redact_pem_blocks(text, counts)
    for kind, pattern in _OWN:
        text, hits = pattern.subn(PLACEHOLDER.format(kind=kind), text)
        counts[kind] += hits
    found: dict[str, str] = {}
    for value, kind in _scan_lines(text):
        found.setdefault(value, kind)  # the first, most specific detector names the kind
    # Longest first, so a secret that contains another is replaced whole.
    for value in sorted(found, key=len, reverse=True):
        kind = found[value]
        counts[kind] += text.count(value)
        text = text.replace(value, PLACEHOLDER.format(kind=kind))
    return Redacted(text=text, counts={k: n for k, n in sorted(counts.items()) if n})


def redact_all(texts: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """Redact several texts and return them with the summed counts."""
    counts: Counter[str] = Counter()
    out = []
    for text in texts:
        result = redact(text)
        out.append(result.text)
        counts.update(result.counts)
    return out, dict(sorted(counts.items()))


def _redact_pem_blocks(text: str, counts: Counter[str]) -> str:
    """Replace whole private-key blocks, keeping the line structure of a diff intact."""
    for pattern in (_PEM_BLOCK, _PEM_OPEN):
        text, hits = pattern.subn(_blank_block, text)
        counts["private_key"] += hits
    return text


def _blank_block(match: re.Match[str]) -> str:
    """Turn a key block into one placeholder line plus empty lines with their diff markers."""
    lines = match.group(0).split("\n")
    kept = [re.match(r"[+\- ]?", line).group(0) for line in lines[1:]]  # type: ignore[union-attr]
    return "\n".join([PLACEHOLDER.format(kind="private_key"), *kept])


def _scan_lines(text: str) -> Iterator[tuple[str, str]]:
    """Yield (secret value, kind) for every candidate the detect-secrets plugins find."""
    keyword_rules = QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP
    for line in text.splitlines():
        header = _FILE_HEADER.match(line)
        if header:
            # Like detect-secrets, config files may hold unquoted secrets; code needs quotes.
            keyword_rules = _keyword_rules_for(header.group(1))
            continue
        if len(line) < MIN_SECRET_LEN:
            continue
        for plugin in _SPECIFIC:
            for value in plugin.analyze_string(line):
                yield from _keep(value, KINDS.get(plugin.secret_type, "secret"), line)
        yield from _entropy_hits(line)
        if _KEYWORD_HINT.search(line):
            yield from _keyword_hits(line, keyword_rules)


def _keyword_rules_for(path: str) -> dict[re.Pattern[str], int]:
    """Return detect-secrets' keyword patterns for a file, treating .env files as config."""
    name = path.rsplit("/", 1)[-1]
    if name.startswith(".env") or name.endswith(".env"):
        return CONFIG_DENYLIST_REGEX_TO_GROUP
    rules = REGEX_BY_FILETYPE.get(
        determine_file_type(path), QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP
    )
    return rules


def _keep(value: str, kind: str, line: str) -> Iterator[tuple[str, str]]:
    """Yield a finding unless it is too short or an existing placeholder."""
    if len(value) >= MIN_SECRET_LEN and "[REDACTED:" not in value and value in line:
        if kind == "private_key":
            # The plugin yields only the header words; take the rest of the line with them.
            value = line[line.index(value) :]
        yield value, kind


def _entropy_hits(line: str) -> Iterator[tuple[str, str]]:
    """Yield quoted strings (detect-secrets) and unquoted assignments with high entropy."""
    for plugin in _ENTROPY:
        for value in plugin.analyze_string(line):
            if plugin.calculate_shannon_entropy(value) > plugin.entropy_limit:
                yield from _keep(value, "high_entropy", line)
    for match in _ASSIGNMENT.finditer(line):
        value = match.group(1)
        if shannon_entropy(value) >= ASSIGNMENT_ENTROPY and not _WORDS_ONLY.fullmatch(value):
            yield from _keep(value, "high_entropy", line)


def _keyword_hits(line: str, rules: dict[re.Pattern[str], int]) -> Iterator[tuple[str, str]]:
    """Yield literal values assigned to secret-sounding names (never names or expressions)."""
    for value in _KEYWORD.analyze_string(line, denylist_regex_to_group=rules):
        if not _NOT_A_SECRET.search(value):
            yield from _keep(value, "keyword_assignment", line)


def shannon_entropy(value: str) -> float:
    """Return the Shannon entropy of ``value`` in bits per character."""
    if not value:
        return 0.0
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in Counter(value).values())
