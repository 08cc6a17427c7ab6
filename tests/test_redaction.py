"""Check that redaction removes every planted secret, counts it by kind, and spares the rest:
digests, ids, names, alphabets and paths, and the visible difference of a changed line."""

from __future__ import annotations

import hashlib
import json
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.benchmarks.bench_redaction import PLANTS, identical_pairs, new_file, plant_into
from workers import redaction
from workers.jobs.review import annotate
from workers.redaction import Redacted, redact, redact_all, scan, shannon_entropy

AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GHP = "ghp_" + "R9d2kQx7Lm4Tz8Wc1Vb6Yn3Hs5Jp0Fa2Ge7K"
GH_PAT = "github_pat_11ABCDEFG0" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0u1V2w3X4y5Z6"
SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
SLACK_HOOK = "https://hooks.slack.com/services/" + "T0ABCDEFG/B0ABCDEFG/abcdefghijklmnopqrstuvwx"
PEM_BODY = [
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
]
PEM = "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *PEM_BODY, "-----END RSA PRIVATE KEY-----"])
ENV_TOKEN = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
DB_PASSWORD = "s3cr3tPassw0rd!"


def diff_of(path: str, *added: str) -> str:
    """Build a unified diff that adds lines to one file."""
    return "\n".join(
        [
            f"diff --git a/{path} b/{path}",
            f"--- a/{path}",
            f"+++ b/{path}",
            f"@@ -1,1 +1,{len(added) + 1} @@",
            " # header",
            *(f"+{line}" for line in added),
        ]
    )


@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        (f'AWS_ACCESS_KEY_ID = "{AWS_ID}"', AWS_ID, "aws_access_key"),
        (f"key id {AWS_ID} in a log line", AWS_ID, "aws_access_key"),
        (f'aws_secret_access_key = "{AWS_SECRET}"', AWS_SECRET, "aws_access_key"),
        (f"export GITHUB_TOKEN={GHP}", GHP, "github_token"),
        (f"token: {GH_PAT}", GH_PAT, "github_token"),
        (f'slack_token = "{SLACK}"', SLACK, "slack_token"),
        (f"curl -X POST {SLACK_HOOK}", SLACK_HOOK, "slack_token"),
        (f'config["api_key"] = "{ENV_TOKEN}"', ENV_TOKEN, "high_entropy"),
        (f"API_TOKEN={ENV_TOKEN}", ENV_TOKEN, "high_entropy"),
        ('db_password = "correct-horse-battery"', "correct-horse-battery", "keyword_assignment"),
    ],
)
def test_each_kind_is_replaced_and_counted(text, secret, kind):
    result = redact(text)
    assert secret not in result.text
    assert f"[REDACTED:{kind}]" in result.text
    assert result.counts.get(kind) == 1 and result.total == 1


def test_private_key_block_in_a_diff_keeps_the_line_structure():
    added = ['KEY = """', *PEM.split("\n"), '"""', "print('after')"]
    diff = diff_of("deploy/keys.py", *added)
    result = redact(diff)
    for line in PEM_BODY:
        assert line not in result.text
    assert "PRIVATE KEY" not in result.text
    assert result.counts == {"private_key": 1}
    assert result.text.count("\n") == diff.count("\n")
    assert all(line.startswith(("+", " ", "@", "-", "d")) for line in result.text.splitlines())
    assert "+print('after')" in result.text


def test_private_key_escaped_in_json_and_truncated_blocks_are_caught():
    escaped = json.dumps({"key": PEM + "\n"})
    result = redact(escaped)
    assert PEM_BODY[0] not in result.text and result.counts == {"private_key": 1}
    json.loads(result.text)  # still valid JSON
    truncated = diff_of("k.pem", "-----BEGIN OPENSSH PRIVATE KEY-----", *PEM_BODY)
    cut = redact(truncated)
    assert all(line not in cut.text for line in PEM_BODY)
    assert cut.counts == {"private_key": 1}


def test_config_files_may_hold_unquoted_secrets():
    result = redact(diff_of(".env", f"DB_PASSWORD={DB_PASSWORD}", "DEBUG=true"))
    assert DB_PASSWORD not in result.text and "+DEBUG=true" in result.text
    assert result.counts == {"keyword_assignment": 1}


def test_ordinary_code_is_left_alone():
    code = diff_of(
        "app/views.py",
        'password = request.form["password"]',
        "self.token = token",
        'PASSWORD_FIELD = "password"',
        'HEADER = "X-API-Key"',
        "secret_key = settings.SECRET_KEY",
        "url = 'https://example.com/api/v1/items?page=2'",
        "# fixed in 3f786850e387550fdab836ed7e6dc881de23001b",
        "def authenticate(user, password=None):",
    )
    result = redact(code)
    assert result.text == code and result.counts == {} and result.total == 0


def test_a_secret_seen_once_is_replaced_everywhere():
    text = f'GITHUB_TOKEN = "{GHP}"\nlater the log printed {GHP[:40]}'
    result = redact(f'api_key = "{ENV_TOKEN}"\necho {ENV_TOKEN}\n{text}')
    assert ENV_TOKEN not in result.text and GHP not in result.text
    assert result.counts["high_entropy"] == 2


def test_redaction_is_idempotent_and_counts_hold_no_values():
    text = diff_of("s.py", f'AWS = "{AWS_ID}"', f"t = '{GHP}'", *PEM.split("\n"))
    first = redact(text)
    again = redact(first.text)
    assert again.text == first.text and again.counts == {}
    assert all(isinstance(v, int) for v in first.counts.values())
    assert not any(s in repr(first.counts) for s in (AWS_ID, GHP, PEM_BODY[0]))


def test_redact_all_sums_counts():
    texts, counts = redact_all([f"a {AWS_ID}", f"b {AWS_ID} {GHP}", "nothing here"])
    assert texts[2] == "nothing here"
    assert counts == {"aws_access_key": 2, "github_token": 1}
    assert isinstance(redact(""), Redacted) and redact("").text == ""


def test_shannon_entropy():
    assert shannon_entropy("") == 0.0 and shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)


@settings(max_examples=60, deadline=None)
@given(
    before=st.text(max_size=200),
    after=st.text(max_size=200),
    secret=st.sampled_from([AWS_ID, GHP, GH_PAT, SLACK]),
)
def test_planted_tokens_never_survive_any_surroundings(before, after, secret):
    # Separate the token from arbitrary text, as any real file or log would.
    result = redact(f"{before}\n{secret}\n{after}")
    assert secret not in result.text
    assert result.total >= 1


# -- what changed lines may hold: planted secrets of every kind, and things that are not ------


@pytest.mark.parametrize("plant", PLANTS, ids=[p.what for p in PLANTS])
def test_every_planted_secret_is_redacted_in_its_file_type(plant):
    diff = new_file(plant.path, plant.lines)
    for text in (diff, annotate(diff)):  # as git prints it, and as the review prompt labels it
        result = redact(text)
        assert not [s for s in plant.secrets if s in result.text], plant.what
        assert result.total >= 1


@pytest.mark.parametrize(
    ("path", "line", "secret", "kind"),
    [
        (
            "app/cache.py",
            'URL = "redis://:Sup3rS3cretPw@cache:6379/0"',
            "Sup3rS3cretPw",
            "basic_auth",
        ),
        ("app/cache.py", 'URL = "redis://:pass@host:6379"', "pass", "basic_auth"),
        ("main.go", 'dsn := "postgres://app:G0secret@db/app"', "G0secret", "basic_auth"),
        (
            "db.py",
            'connect("host=db dbname=app user=app password=Xk9qLp2w")',
            "Xk9qLp2w",
            "dsn_password",
        ),
        (
            "Db.cs",
            'cs = "Server=sql;Database=app;User Id=sa;Password=Tr0ub4dor&3;";',
            "Tr0ub4dor&3",
            "dsn_password",
        ),
        (
            "a.js",
            'u = "jdbc:mysql://db/app?user=app&password=Qw3rty99"',
            "Qw3rty99",
            "dsn_password",
        ),
        ("docs/ops.md", "The admin password is `Hunter2-Prod!`.", "Hunter2-Prod!", "password"),
        ("docs/ops.md", "Password: **`c0rrect-h0rse`**", "c0rrect-h0rse", "password"),
        (
            "deploy/values.yaml",
            "signing: 8fJ2kL9mQ4rT7wX1zB5nV3cY6hG0dS2aP8eU",
            "8fJ2kL9mQ4rT7wX1zB5nV3cY6hG0dS2aP8eU",
            "high_entropy",
        ),
        (
            "app.toml",
            'webhook = "Zq8Xv2Lm9Nt4Rb7Wc1Yd5Kp3Hs6Jf0Ga2"',
            "Zq8Xv2Lm9Nt4Rb7Wc1Yd5Kp3Hs6Jf0Ga2",
            "high_entropy",
        ),
        (
            "app.json",
            '  "upstream": "Zq8Xv2Lm9Nt4Rb7Wc1Yd5Kp3Hs6Jf0Ga2",',
            "Zq8Xv2Lm9Nt4Rb7Wc1Yd5Kp3Hs6Jf0Ga2",
            "high_entropy",
        ),
        (
            ".env",
            "SESSION_SIGNER=Zq8Xv2Lm9Nt4Rb7Wc1Yd5Kp3Hs6Jf0Ga2",
            "Zq8Xv2Lm9Nt4Rb7Wc1Yd5Kp3Hs6Jf0Ga2",
            "high_entropy",
        ),
        (
            "pay.py",
            'stripe.api_key = "' + "sk_" + 'test_4eC39HqLyjWDarjtT1zdp7dc"',
            "sk_" + "test_4eC39HqLyjWDarjtT1zdp7dc",
            "stripe_key",
        ),
    ],
)
def test_shaped_secrets_are_redacted_by_kind(path, line, secret, kind):
    result = redact(line, path=path)
    assert secret not in result.text
    assert result.counts == {kind: 1}


def test_a_jwt_is_redacted_whole_signature_included():
    head, body = "eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiI0MiJ9"
    signature = "kLEK3FZZPsAlQNKR5yHyjRyrlCJFhvKmrh7o-GqDT_zaGQgvb0Dufp8uNS"
    result = redact(f'tokenString := "{head}.{body}.{signature}"', path="auth_test.go")
    assert signature not in result.text and body not in result.text
    assert result.text == 'tokenString := "[REDACTED:jwt]"'


NOT_SECRETS = [
    (
        "tests/test_etag.py",
        """    assert resp.headers["ETag"] == '"5d41402abc4b2a76b9719d911017c592"'""",
    ),
    ("tests/test_etag.py", 'ETAG = "W/\\"a1b2c3d4e5f60718293a4b5c6d7e8f90\\""'),
    ("app/ids.py", 'SALT_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"'),
    ("app/ids.py", 'alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"'),
    ("app/oauth.py", "        token = OAuth1Token.find(request.oauth_token)"),
    ("app/oauth.py", "        access_token = OAuth1Token.find_by_key(key)"),
    (
        ".github/workflows/deploy.yml",
        "          workload_identity_provider: projects/123456789/locations/global/"
        "workloadIdentityPools/github-pool/providers/github-provider",
    ),
    (
        ".github/workflows/ci.yml",
        "        uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4",
    ),
    (".github/workflows/ci.yml", "          rust: stable-x86_64-pc-windows-gnu"),
    (
        "deploy/app.yaml",
        "image: ghcr.io/org/app@sha256:3059df5ce3064de1833d4ecd8850721758953029feb5c154a623701b2fff9c38",
    ),
    ("deploy/app.yaml", "id: 123e4567-e89b-12d3-a456-426614174000"),
    ("Cargo.lock", 'checksum = "301b56658598e48f3648647ac6fc887be7e7108eddfa4e9b63fcf3ec58c0cadf"'),
    (
        "package-lock.json",
        '      "integrity": "sha512-oKarNCN1QUhG148M88mtZdOlBZWWGcInquef+U8QL7gwJkRuNo5WS45Fjsd+3hM9cDJWGpqSZ4Oo097KDx4IWA==",',
    ),
    ("vendor.json", '      "checksumSHA1": "CMfwCFcZRDJeIVVbIHa6t4Aewl8=",'),
    ("data.json", '  "sha": "3059df5ce3064de1833d4ecd8850721758953029",'),
    ("conf.yaml", "client_id: 1a2b3c4d5e6f7g8h9i0jKLMNOPqrst"),
    ("settings.py", 'OAUTH2_PROVIDER = {"CLIENT_SECRET_HASHER": "fast_pbkdf2"}'),
    ("lib/keys.js", "if (privateKey && typeof privateKey === 'string') {"),
    ("db.py", "conn = connect(host=host, user=user, password=password, dbname=name)"),
    ("README.md", "Set `password` in the config, or export `DB_PASSWORD`."),
    ("README.md", "The password is stored in `settings.DB_PASSWORD`."),
    ("tests/test_ws.py", '    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n"'),
    ("app/pem.py", 'if text.startswith("-----BEGIN RSA PRIVATE KEY-----"):'),
    (".env.example", "SECRET_KEY=changethis"),
]


@pytest.mark.parametrize(("path", "line"), NOT_SECRETS, ids=[line[:40] for _, line in NOT_SECRETS])
def test_digests_ids_names_alphabets_and_paths_are_left_alone(path, line):
    diff = diff_of(path, line)
    for text in (line, diff):
        result = redact(text, path=path)
        assert result.text == text and result.counts == {}


def test_a_documented_key_with_its_body_elided_is_not_a_key():
    doc = "clientAssertionSigningKey: '-----BEGIN PRIVATE KEY-----\\nMIIEo...PgCaw\\n-----END PRIVATE KEY-----'"
    assert redact(doc, path="docs/index.html").text == doc


def test_the_file_kind_comes_from_the_diff_header_or_the_path_argument():
    line = "signing: 8fJ2kL9mQ4rT7wX1zB5nV3cY6hG0dS2aP8eU"
    assert redact(line).text == line  # prose: a random word under a neutral key is not enough
    assert redact(line, path="values.yaml").counts == {"high_entropy": 1}
    other = "signing: Q7mW2xK9pL4vB8nR1tY6cZ3hJ5dF0gS2aE8u"
    both = diff_of("app/notes.py", other) + "\n" + diff_of("deploy/values.yaml", line)
    redacted = redact(both).text.split("\n")
    assert f"+{other}" in redacted[:6] and "+signing: [REDACTED:high_entropy]" in redacted[6:]
    assert redact(diff_of("tests/fixtures/values.yaml", line)).total == 0  # fixtures are data


def test_a_weak_value_is_replaced_where_found_but_not_everywhere():
    text = diff_of("app.properties", "spring.datasource.password=mysqlpw", "user: mysqlpw_admin")
    result = redact(text)
    assert "+spring.datasource.password=[REDACTED:keyword_assignment]" in result.text
    assert "+user: mysqlpw_admin" in result.text


# -- the -/+ pair rule ----------------------------------------------------------------------


def changed_pair(path: str, old: str, new: str) -> str:
    """Build a diff that changes one line of a file."""
    return "\n".join(
        [
            f"diff --git a/{path} b/{path}",
            f"--- a/{path}",
            f"+++ b/{path}",
            "@@ -1,3 +1,3 @@",
            " name: app",
            f"-{old}",
            f"+{new}",
            " debug: false",
        ]
    )


def minus_plus(text: str) -> tuple[str, str]:
    """Return the content of a diff's first - line and first + line, markers and labels cut."""
    lines = text.split("\n")
    minus = next(x for x in lines if x.lstrip("RL0123456789 ").startswith("-") and "---" not in x)
    plus = next(x for x in lines if x.lstrip("RL0123456789 ").startswith("+") and "+++" not in x)
    return minus.lstrip("RL0123456789 ")[1:], plus.lstrip("RL0123456789 ")[1:]


def test_a_changed_secret_shows_as_changed_and_reveals_nothing():
    old, new = "Zq8Xv2Lm9Nt4Rb7Wc1Yd5Kp3Hs6Jf0Ga2", "Pq1Zv8Lm2Nt9Rb4Wc6Yd0Kp5Hs3Jf7Ga8"
    diff = changed_pair("deploy/values.yaml", f"api_token: {old}", f"api_token: {new}")
    for text in (diff, annotate(diff)):
        result = redact(text)
        minus, plus = minus_plus(result.text)
        assert minus != plus and old not in result.text and new not in result.text
        tags = re.findall(r"\[REDACTED:high_entropy#([0-9a-f]{6})\]", result.text)
        assert len(tags) == 2 and tags[0] != tags[1]
        for tag, secret in zip(tags, (old, new), strict=True):
            for digest in (hashlib.sha256, hashlib.sha1, hashlib.md5):
                assert tag not in digest(secret.encode()).hexdigest()  # salted, not a bare hash
        assert result.counts == {"high_entropy": 2}
    assert " name: app" in redact(diff).text  # untouched lines stay as they were


def test_only_pairs_that_would_read_the_same_are_tagged():
    same = changed_pair("a.py", 'token = "ghp_' + "a" * 36 + '"', 'TOKEN = "ghp_' + "b" * 36 + '"')
    text = redact(same).text
    assert "#" not in text and text.count("[REDACTED:github_token]") == 2


def test_a_replaced_key_block_shows_which_lines_changed():
    body_old, body_new = PEM_BODY[0], PEM_BODY[1]
    diff = "\n".join(
        [
            "diff --git a/k.pem b/k.pem",
            "--- a/k.pem",
            "+++ b/k.pem",
            "@@ -1,3 +1,3 @@",
            " -----BEGIN RSA PRIVATE KEY-----",
            f"-{body_old}",
            f"+{body_new}",
            " -----END RSA PRIVATE KEY-----",
        ]
    )
    result = redact(diff)
    minus, plus = minus_plus(result.text)
    assert minus != plus and minus.startswith("[REDACTED:private_key#")
    assert body_old not in result.text and body_new not in result.text
    assert result.counts == {"private_key": 1}


def test_tags_are_salted_per_process():
    secret = "Zq8Xv2Lm9Nt4Rb7Wc1Yd5Kp3Hs6Jf0Ga2"
    diff = changed_pair(
        "v.yaml", f"api_token: {secret}", "api_token: Pq1Zv8Lm2Nt9Rb4Wc6Yd0Kp5Hs3Jf7Ga8"
    )
    here = re.findall(r"#([0-9a-f]{6})", redact(diff).text)[0]
    code = "import sys; from workers.redaction import redact; print(redact(sys.stdin.read()).text)"
    root = Path(__file__).resolve().parents[1]
    other = subprocess.run(
        [sys.executable, "-c", code],
        input=diff,
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
    ).stdout
    assert re.findall(r"#([0-9a-f]{6})", other)[0] != here  # equal with chance 2**-24


@settings(max_examples=50, deadline=None)
@given(
    old=st.text(alphabet=string.ascii_letters + string.digits, min_size=24, max_size=48),
    new=st.text(alphabet=string.ascii_letters + string.digits, min_size=24, max_size=48),
    key=st.sampled_from(["api_token", "password", "signing", "SECRET_KEY"]),
    path=st.sampled_from(["deploy/values.yaml", ".env", "app/settings.py"]),
)
def test_a_changed_pair_never_reads_the_same_after_redaction(old, new, key, path):
    assume(old != new)
    sep = " = " if path.endswith(".py") else ("=" if path == ".env" else ": ")
    quote = '"' if path.endswith(".py") else ""
    diff = changed_pair(path, f"{key}{sep}{quote}{old}{quote}", f"{key}{sep}{quote}{new}{quote}")
    for text in (diff, annotate(diff)):
        minus, plus = minus_plus(redact(text).text)
        assert minus != plus


def test_scan_reports_places_and_kinds_never_values():
    text = diff_of("s.py", f'AWS = "{AWS_ID}"', f"t = '{GHP}'")
    found = scan(text)
    assert [(f.line, f.kind) for f in found] == [(5, "aws_access_key"), (6, "github_token")]
    lines = text.split("\n")
    assert [lines[f.line][f.start : f.end] for f in found] == [AWS_ID, GHP]
    assert not any(s in repr(found) for s in (AWS_ID, GHP))


def test_redact_all_takes_a_path_for_every_text():
    texts, counts = redact_all(
        ["signing: 8fJ2kL9mQ4rT7wX1zB5nV3cY6hG0dS2aP8eU", "ok: 1"], path="v.yaml"
    )
    assert texts == ["signing: [REDACTED:high_entropy]", "ok: 1"] and counts == {"high_entropy": 1}


# -- the benchmark's measures can fail --------------------------------------------------------


def test_planting_puts_the_secret_into_a_file_of_its_type_or_a_new_one():
    base = diff_of("app/views.py", "x = 1")
    py = next(p for p in PLANTS if p.path.endswith(".py") and len(p.lines) == 1)
    into = plant_into(base, py)
    assert f"+{py.lines[0]}" in into and "@@ -1,1 +1,3 @@" in into  # same hunk, count bumped
    env = next(p for p in PLANTS if p.path == ".env")
    added = plant_into(base, env)
    assert "diff --git a/.env b/.env" in added and all(s in added for s in env.secrets)


def test_identical_pairs_counts_a_pair_that_lost_its_difference():
    diff = changed_pair("v.yaml", "k: old-value-1", "k: new-value-2")
    flattened = diff.replace("old-value-1", "[X]").replace("new-value-2", "[X]")
    assert identical_pairs(diff, flattened) == 1
    assert identical_pairs(diff, redact(diff).text) == 0


def test_the_benchmark_says_how_to_rebuild_missing_diffs(tmp_path):
    script = Path(__file__).resolve().parent / "benchmarks" / "bench_redaction.py"
    run = subprocess.run(
        [sys.executable, str(script), "--diffs", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and "rebuild.py" in run.stderr


def test_a_one_line_json_token_and_a_hand_picked_yaml_value_are_redacted() -> None:
    """A 32-digit hex token under a secret key is no checksum; a value with no repeated
    character is no alphabet unless it runs in order."""
    json_line = redaction.redact('{"api_token": "e8a1f0c2b94d4c7e9a3f5b6d7c8e9f01"}', path="k.json")
    assert "e8a1f0c2" not in json_line.text and json_line.total == 1
    yaml_line = redaction.redact("value: 9fK2mQ7xLp3Vt8Zr1Nb6Yc4Wd0Hs5Je", path="deploy/app.yaml")
    assert "9fK2mQ7x" not in yaml_line.text
    alphabet = "charset: ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"
    assert redaction.redact(alphabet, path="app.yaml").text == alphabet
    digest = "etag: e8a1f0c2b94d4c7e9a3f5b6d7c8e9f01"  # a neutral key keeps its checksum
    assert redaction.redact(digest, path="app.yaml").text == digest


def test_a_secret_the_model_echoes_in_prose_is_found_by_its_value() -> None:
    """In a post, a secret has no key around it; the values found in the inputs catch it."""
    diff = (
        "+++ b/.env\n+GITHUB_TOKEN=ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\n"
        "+HOOK=https://hooks.slack.com/services/T0000AAAA/B0000BBBB/XyZ123abcDEF456ghiJKL789\n"
    )
    values = redaction.secret_values(diff)
    post = "Rotate ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8 and XyZ123abcDEF456ghiJKL789 today."
    text, count = redaction.scrub(post, values)
    assert count == 2 and "ghp_a1B2" not in text and "XyZ123" not in text
    assert text.startswith("Rotate [REDACTED:echoed_secret]")
