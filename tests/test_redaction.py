"""Check that redaction removes every planted secret, counts it by kind, and spares code."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.redaction import Redacted, redact, redact_all, shannon_entropy

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
