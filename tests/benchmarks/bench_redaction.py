"""Measure redaction on real diffs: what it rewrites that is not a secret, and what it lets through.

Run: python tests/benchmarks/bench_redaction.py [--runs 5] [--list N] [--diffs DIR]

(a) Redacts every routing-corpus diff (tests/corpus/diffs/*.diff) as it is and as the
    review prompt labels it, and lists each changed line it rewrote: the case, the file,
    the kinds, the redacted line and the shape (length, character classes) of each value
    it removed, never the value, so a person can judge whether it was a secret.
(b) Plants PLANTS (vendor tokens, private keys, URL and connection-string passwords,
    Markdown passwords, values under neutral keys in YAML, TOML, JSON and .env) into
    copies of those diffs, in files of the matching type, and counts those that reach
    the output unredacted. Goal: 0.
(c) Counts changed -/+ pairs that redaction made identical (goal 0), prints a table,
    and the median time per MB.

Exit 0 when no planted secret leaks and no pair reads the same, 1 otherwise, and 2 when
the corpus diffs are missing (they are rebuilt from snapshots, never committed).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import string
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.benchmarks.timing import median_s
from workers.jobs.review import annotate
from workers.redaction import Finding, redact, scan

DIFFS = Path(__file__).resolve().parents[1] / "corpus" / "diffs"
REBUILD = (
    "the corpus diffs are missing: rebuild them from repository snapshots with\n"
    "  for f in tests/corpus/cases-*.jsonl; do "
    'python tests/corpus/rebuild.py --mirrors ROOT --cases "$f"; done\n'
    "(see tests/corpus/README.md)"
)
_RNG = random.Random(20240514)  # fixed, so every run plants the same values
_PLACEHOLDER = re.compile(r"\[REDACTED:([a-z0-9_]+)(?:#[0-9a-f]+)?\]")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _random(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """Return a fixed-seed random string: fake secrets, so no real one is ever committed."""
    return "".join(_RNG.choice(alphabet) for _ in range(n))


def _jwt() -> str:
    """Return a formally valid JWT (base64url JSON header and claims, random signature)."""

    def part(claims: dict[str, str]) -> str:
        raw = json.dumps(claims, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    head, body = part({"alg": "HS256", "typ": "JWT"}), part({"sub": "42", "name": "Plant"})
    return f"{head}.{body}.{_random(43, string.ascii_letters + string.digits + '-_')}"


def _pem_body(lines: int) -> list[str]:
    """Return the body lines of a fake PEM key: 64 base64 characters each."""
    return ["MIIE" + _random(60, string.ascii_letters + string.digits + "+/")] + [
        _random(64, string.ascii_letters + string.digits + "+/") for _ in range(lines - 1)
    ]


@dataclass(frozen=True)
class Plant:
    """Hold one planted secret: what it is, the file it goes in, its lines, the value."""

    what: str
    path: str
    lines: tuple[str, ...]
    secrets: tuple[str, ...]


def _plant(what: str, path: str, template: str, secret: str) -> Plant:
    """Build a one-line plant: ``template`` holds ``{s}`` where the secret goes."""
    return Plant(what, path, (template.format(s=secret),), (secret,))


def _pem_plants() -> list[Plant]:
    """Build the key-block plants: one across lines in Python, one escaped inside JSON."""
    body, escaped = _pem_body(4), _pem_body(3)
    block = ["-----BEGIN RSA PRIVATE KEY-----", *body, "-----END RSA PRIVATE KEY-----"]
    one_line = "\\n".join(["-----BEGIN PRIVATE KEY-----", *escaped, "-----END PRIVATE KEY-----"])
    return [
        Plant("PEM private key block", "deploy/keys.py", ('KEY = """', *block, '"""'), tuple(body)),
        Plant(
            "PEM key escaped in JSON",
            "config/service-account.json",
            (f'  "private_key": "{one_line}\\n",',),
            tuple(escaped),
        ),
    ]


def _plants() -> list[Plant]:
    """Return the planted secrets: every kind redaction must catch, in every file type."""
    alnum = string.ascii_letters + string.digits
    one = [
        (
            "AWS access key id",
            "app/aws.py",
            'AWS_ACCESS_KEY_ID = "{s}"',
            "AKIA" + _random(16, string.ascii_uppercase + string.digits),
        ),
        (
            "AWS secret key",
            "deploy/aws.yaml",
            'aws_secret_access_key: "{s}"',
            _random(40, alnum + "/+"),
        ),
        ("GitHub classic token", ".env", "GITHUB_TOKEN={s}", "ghp_" + _random(36)),
        (
            "GitHub fine-grained token",
            "web/src/api.js",
            'const token = "{s}";',
            "github_pat_" + _random(22) + "_" + _random(59),
        ),
        (
            "Slack bot token",
            "cmd/notify/main.go",
            'slackToken := "{s}"',
            "xoxb-"
            + _random(12, string.digits)
            + "-"
            + _random(13, string.digits)
            + "-"
            + _random(24),
        ),
        (
            "Slack webhook URL",
            "docs/alerts.md",
            "Alerts post to {s} on every page.",
            "https://hooks.slack.com/services/T"
            + _random(8, string.ascii_uppercase)
            + "/B"
            + _random(8, string.ascii_uppercase)
            + "/"
            + _random(24),
        ),
        (
            "Stripe live key",
            "app/billing.py",
            'stripe.api_key = "{s}"',
            "sk_" + "live_" + _random(24),
        ),
        ("Stripe test key", "config/billing.toml", 'stripe = "{s}"', "sk_" + "test_" + _random(24)),
        (
            "JWT bearer token",
            "web/src/client.js",
            'headers: {{ Authorization: "Bearer {s}" }},',
            _jwt(),
        ),
        (
            "OpenAI project key",
            "app/llm.py",
            'OPENAI_API_KEY = "{s}"',
            "sk-proj-" + _random(48, alnum + "_-"),
        ),
        (
            "Google API key",
            "web/src/maps.js",
            'const mapsKey = "{s}";',
            "AIza" + _random(35, alnum + "_-"),
        ),
        (
            "URL user:password",
            "deploy/values.yaml",
            "url: postgres://app:{s}@db.internal:5432/app",
            _random(14),
        ),
        (
            "URL password only",
            "app/cache.py",
            'REDIS_URL = "redis://:{s}@cache.internal:6379/0"',
            _random(16),
        ),
        (
            "URL password in .env",
            ".env",
            "DATABASE_URL=mysql://root:{s}@mysql:3306/app",
            _random(12),
        ),
        (
            "URL password in Go",
            "internal/mq/conn.go",
            'conn, err := amqp.Dial("amqp://svc:{s}@mq:5672/")',
            _random(10),
        ),
        (
            "libpq DSN password",
            "app/db.py",
            'conn = psycopg.connect("host=db port=5432 dbname=app user=app password={s}")',
            _random(12),
        ),
        (
            "libpq DSN in Go",
            "internal/store/pg.go",
            'dsn := "host=pg user=svc password={s} dbname=orders sslmode=require"',
            _random(11),
        ),
        (
            "ADO.NET Password=...;",
            "config/appsettings.json",
            '    "Default": "Server=sql;Database=app;User Id=sa;Password={s};"',
            _random(10) + "!4",
        ),
        (
            "ADO.NET Pwd in TOML",
            "config/db.toml",
            'conn = "Data Source=db;Initial Catalog=app;Pwd={s};"',
            _random(9) + "#5",
        ),
        (
            "JDBC query password",
            "web/src/db.js",
            'const url = "jdbc:postgresql://db/app?user=app&password={s}";',
            _random(10),
        ),
        (
            "Markdown password",
            "docs/staging.md",
            "The staging password is `{s}`.",
            _random(10) + "-!",
        ),
        ("Markdown list password", "README.md", "- Password: `{s}`", _random(9)),
        ("YAML neutral key, unquoted", "deploy/values.yaml", "signing: {s}", _random(36)),
        ("TOML neutral key", "config/app.toml", 'webhook = "{s}"', _random(32)),
        ("JSON neutral key", "config/settings.json", '  "upstream_hmac": "{s}",', _random(40)),
        (".env neutral key", ".env", "SESSION_SIGNER={s}", _random(32)),
        ("YAML password, unquoted", "deploy/db.yaml", "password: {s}", _random(8) + "-2024"),
        (
            "Python password literal",
            "app/settings.py",
            'db_password = "{s}"',
            "correct-" + _random(6, string.ascii_lowercase) + "-battery",
        ),
        (
            "Go API key literal",
            "internal/client/client.go",
            'apiKey := "{s}"',
            "k3y-" + _random(16),
        ),
        (
            "Bearer header in Go",
            "internal/client/auth.go",
            'req.Header.Set("Authorization", "Bearer {s}")',
            _random(40, alnum + "-_"),
        ),
        ("npm token in .env", ".env", "NPM_TOKEN={s}", "npm_" + _random(36)),
    ]
    return [_plant(*row) for row in one] + _pem_plants()


PLANTS: tuple[Plant, ...] = tuple(_plants())


# ---- planting -------------------------------------------------------------------------------


def _sections(diff: str) -> list[tuple[str, int]]:
    """Return (path, index of the first hunk header) for each file section of a diff."""
    lines, out, path = diff.split("\n"), [], ""
    for index, line in enumerate(lines):
        if line.startswith("diff --git "):
            path = line.rsplit(" b/", 1)[-1]
        elif line.startswith("@@ ") and path:
            out.append((path, index))
            path = ""
    return out


def plant_into(diff: str, plant: Plant) -> str:
    """Return a copy of ``diff`` with the plant's lines added: into the first hunk of a file
    with the same extension when there is one (its header count bumped), else as a new file."""
    lines = diff.split("\n")
    ext = Path(plant.path).suffix or Path(plant.path).name
    for path, index in _sections(diff):
        if (Path(path).suffix or Path(path).name) == ext:
            lines[index] = _bump(lines[index], len(plant.lines))
            lines[index + 1 : index + 1] = [f"+{line}" for line in plant.lines]
            return "\n".join(lines)
    return diff.rstrip("\n") + "\n" + new_file(plant.path, plant.lines)


def new_file(path: str, added: Iterable[str]) -> str:
    """Render a diff section that creates ``path`` with ``added`` lines."""
    body = [f"+{line}" for line in added]
    head = [
        f"diff --git a/{path} b/{path}",
        "new file mode 100644",
        "--- /dev/null",
        f"+++ b/{path}",
    ]
    return "\n".join([*head, f"@@ -0,0 +1,{len(body)} @@", *body]) + "\n"


def _bump(header: str, added: int) -> str:
    """Add ``added`` lines to a hunk header's new-side count."""
    match = _HUNK.match(header)
    if match is None:
        return header
    count = int(match.group(4) if match.group(4) is not None else 1) + added
    tail = header[match.end() :]
    old = f"-{match.group(1)}" + (f",{match.group(2)}" if match.group(2) is not None else "")
    return f"@@ {old} +{match.group(3)},{count} @@{tail}"


# ---- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewrite:
    """Describe one changed line redaction rewrote, without the values it removed."""

    case: str
    path: str
    number: int
    kinds: tuple[str, ...]
    shown: str
    shapes: tuple[str, ...]


def shape(value: str) -> str:
    """Describe a value by length and character classes only (the value is never printed)."""
    tests = (("upper", str.isupper), ("lower", str.islower), ("digit", str.isdigit))
    classes = "+".join(name for name, test in tests if any(test(c) for c in value)) or "-"
    other = "".join(sorted({c for c in value if not c.isalnum()}))
    return f"{len(value)} chars {classes} {other}".rstrip()


def rewrites(case: str, diff: str) -> list[Rewrite]:
    """Return every changed (-/+) line of ``diff`` that redaction rewrote."""
    lines = diff.split("\n")
    out_lines = redact(diff).text.split("\n")
    found: dict[int, list[Finding]] = {}
    for finding in scan(diff):
        found.setdefault(finding.line, []).append(finding)
    paths = _path_by_line(lines)
    out = []
    for index, line in enumerate(lines):
        if index in found and line[:1] in "+-" and not line.startswith(("+++ ", "--- ")):
            kinds = tuple(sorted({f.kind for f in found[index]}))
            shapes = tuple(shape(line[f.start : f.end]) for f in found[index] if f.counted)
            out.append(Rewrite(case, paths[index], index + 1, kinds, out_lines[index], shapes))
    return out


def _path_by_line(lines: list[str]) -> list[str]:
    """Return the file path each diff line belongs to."""
    path, out = "", []
    for line in lines:
        if line.startswith("diff --git "):
            path = line.rsplit(" b/", 1)[-1]
        out.append(path)
    return out


def identical_pairs(diff: str, redacted: str) -> int:
    """Count changed -/+ lines that differed before redaction and read the same after it."""
    before, after = diff.split("\n"), redacted.split("\n")
    count, minus = 0, dict[str, set[str]]()
    for index, line in enumerate(before):
        mark = line[:1]
        if mark not in "+-" or line.startswith(("+++ ", "--- ")):
            minus = {}
            continue
        if mark == "-":
            minus.setdefault(after[index][1:], set()).add(line[1:])
        elif after[index] != line and any(
            old != line[1:] for old in minus.get(after[index][1:], ())
        ):
            count += 1
    return count


def load(directory: Path) -> dict[str, str]:
    """Read every diff in ``directory`` by case id."""
    return {
        p.stem: p.read_text(encoding="utf-8", errors="replace")
        for p in sorted(directory.glob("*.diff"))
    }


def planted(diffs: dict[str, str]) -> list[tuple[Plant, str, str]]:
    """Plant each secret into a copy of a corpus diff, round robin: (plant, case, diff)."""
    names = sorted(diffs)
    return [
        (plant, names[n % len(names)], plant_into(diffs[names[n % len(names)]], plant))
        for n, plant in enumerate(PLANTS)
    ]


def leaks(copies: list[tuple[Plant, str, str]]) -> list[tuple[Plant, str, str]]:
    """Return (plant, case, form) for each planted secret that survives redaction.

    Each planted diff is redacted raw and as the review prompt labels it.
    """
    out = []
    for plant, case, diff in copies:
        for form, text in (("raw", diff), ("labelled", annotate(diff))):
            result = redact(text).text
            if any(secret in result for secret in plant.secrets):
                out.append((plant, case, form))
    return out


def changed_lines(diff: str) -> int:
    """Count a diff's changed (-/+) lines, not its file headers."""
    return sum(
        1 for line in diff.split("\n") if line[:1] in "+-" and not line.startswith(("+++ ", "--- "))
    )


def main() -> int:
    """Run the three measurements, print them, and exit by the goals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs for the median (default 5)")
    parser.add_argument("--list", type=int, default=1000, help="rewrites to list (default all)")
    parser.add_argument("--diffs", type=Path, default=DIFFS, help="folder of *.diff files")
    args = parser.parse_args()
    diffs = load(args.diffs) if args.diffs.is_dir() else {}
    if not diffs:
        print(REBUILD, file=sys.stderr)
        return 2
    found = [r for case, diff in diffs.items() for r in rewrites(case, diff)]
    _print_rewrites(found, args.list)
    copies = planted(diffs)
    leaked = leaks(copies)
    for plant, case, form in leaked:
        print(f"LEAK  {plant.what:32} {plant.path:30} into {case} ({form})")
    texts = [*diffs.values(), *(diff for _, _, diff in copies)]
    same = sum(identical_pairs(text, redact(text).text) for text in texts)
    megabytes = sum(len(d.encode()) for d in diffs.values()) / 1e6
    wall, cpu = median_s(lambda: [redact(d) for d in diffs.values()], args.runs)
    _print_table(diffs, found, leaked, same, megabytes, wall, cpu)
    return 1 if leaked or same else 0


def _print_rewrites(found: list[Rewrite], limit: int) -> None:
    """List rewritten changed lines: case, file, line, kinds, redacted text, value shapes."""
    print(f"# rewritten changed lines in the real diffs ({len(found)})")
    for r in found[:limit]:
        print(
            f"{r.case}  {r.path}:{r.number}  [{', '.join(r.kinds)}]  ({'; '.join(r.shapes) or 'key body'})"
        )
        print(f"    {r.shown[:160]}")


def _print_table(
    diffs: dict[str, str],
    found: list[Rewrite],
    leaked: list[tuple[Plant, str, str]],
    same: int,
    megabytes: float,
    wall: float,
    cpu: float,
) -> None:
    """Print the summary table."""
    kinds = Counter(k for r in found for k in r.kinds)
    changed = sum(changed_lines(d) for d in diffs.values())
    rows = [
        ("real diffs", f"{len(diffs)}"),
        ("diffs with a rewritten changed line", f"{len({r.case for r in found})}"),
        ("changed lines", f"{changed}"),
        ("changed lines rewritten", f"{len(found)} ({len(found) / max(changed, 1):.3%})"),
        ("  by kind", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-"),
        ("planted secrets", f"{len(PLANTS)} x 2 forms (raw, labelled)"),
        ("planted secrets through", f"{len(leaked)}  (goal 0)"),
        ("-/+ pairs made identical", f"{same}  (goal 0)"),
        ("corpus size", f"{megabytes:.2f} MB"),
        ("median time per MB", f"{wall / megabytes:.3f} s wall, {cpu / megabytes:.3f} s CPU"),
    ]
    print("\n| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    sys.exit(main())
