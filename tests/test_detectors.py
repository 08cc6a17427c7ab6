"""Test diff parsing and the trigger detectors: sensitive paths and content, services, residency."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.kernel.errors import InputError
from policies import detectors, semantic
from policies.evidence import CiFacts, Evidence, FileChange, evidence_from_diff, parse_diff
from policies.globs import GlobSet, check_globs, compiled
from policies.loading import build_policy, default_policy_text, parse_yaml
from policies.model import Policy
from policies.reasons import Reason

DIFFS = Path(__file__).parent / "fixtures" / "diffs"
POLICY = build_policy(parse_yaml(default_policy_text(), source="default"), source="default")


def unified(path: str, added: Sequence[str] = (), removed: Sequence[str] = ()) -> str:
    """Return a one-hunk git diff that removes and adds the given lines in ``path``."""
    head = f"diff --git a/{path} b/{path}\nindex 1111111..2222222 100644\n"
    body = "".join(f"-{line}\n" for line in removed) + "".join(f"+{line}\n" for line in added)
    return f"{head}--- a/{path}\n+++ b/{path}\n@@ -1,{len(removed)} +1,{len(added)} @@\n{body}"


def change(path: str, added: tuple[str, ...] = (), removed: tuple[str, ...] = ()) -> FileChange:
    """Build a modified-file change with numbered lines."""
    return FileChange(
        path=path,
        old_path=None,
        status="modified",
        binary=False,
        added=tuple(enumerate(added, 1)),
        removed=tuple(enumerate(removed, 1)),
        hunks=1,
    )


def found(*files: FileChange, policy: Policy = POLICY) -> list[Reason]:
    """Run the sensitive detector on these files."""
    return list(detectors.sensitive(Evidence(files=files), policy))


def categories(reasons: list[Reason]) -> set[str]:
    """Return the categories the reasons name."""
    return {r.category for r in reasons if r.category}


# ---- parsing --------------------------------------------------------------------------------


def test_parse_fixture_with_rename_deletion_and_binary() -> None:
    files = {f.path: f for f in parse_diff((DIFFS / "auth_mixed.diff").read_bytes())}
    assert set(files) == {
        "assets/logo.png",
        "src/app/author.py",
        "src/auth/users.py",
        "src/crypto/legacy.py",
        "src/nlp/tokenizer.py",
    }
    renamed = files["src/auth/users.py"]
    assert (renamed.status, renamed.old_path) == ("renamed", "src/app/users.py")
    assert renamed.added[-1] == (
        21,
        "    return bcrypt.checkpw(password.encode(), user.password_hash)",
    )
    deleted = files["src/crypto/legacy.py"]
    assert (deleted.status, len(deleted.removed), deleted.added) == ("deleted", 6, ())
    assert files["assets/logo.png"].binary
    assert files["assets/logo.png"].changed_lines == 0


def test_pure_rename_without_hunks_keeps_both_paths() -> None:
    diff = (
        "diff --git a/lib/old.py b/lib/auth/new.py\nsimilarity index 100%\n"
        "rename from lib/old.py\nrename to lib/auth/new.py\n"
    )
    (only,) = parse_diff(diff)
    assert (only.path, only.old_path, only.status, only.hunks) == (
        "lib/auth/new.py",
        "lib/old.py",
        "renamed",
        0,
    )


def test_crlf_diff_parses_like_lf() -> None:
    lf = unified("src/auth/session.py", ["token = make_session()", "x = 1"], ["old = 0"])
    crlf = lf.replace("\n", "\r\n").encode()
    assert parse_diff(crlf) == parse_diff(lf)
    assert not any("\r" in text for _, text in parse_diff(crlf)[0].added)


def test_non_utf8_bytes_are_replaced_not_fatal() -> None:
    raw = unified("src/app/names.py", ["NAME = 'Jos\udce9'", "hash = bcrypt.hashpw(pw, salt)"])
    data = raw.encode("utf-8", "surrogateescape")  # a lone latin-1 0xE9 byte
    (only,) = parse_diff(data)
    assert only.added[0][1] == "NAME = 'Jos\ufffd'"
    # bcrypt is password hashing (auth) and hashpw with a salt is key derivation (crypto).
    assert categories(found(only)) == {"auth", "crypto"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"  \n\t\n", "empty"),
        (b"def main():\n    return 1\n", "not a unified diff"),
        (b'{"files": ["a.py"]}', "not a unified diff"),
        (b"--- a/x\n+++ b/x\n@@ -1,1 +1,1 @@\n+a\n+b\n+c\n", "not a valid unified diff"),
        (b"\x00\x01\x02\xff\xfe", "not a unified diff"),
    ],
)
def test_parse_rejects_what_is_not_a_diff(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_diff(data)


def test_binary_only_diff_is_refused_unless_allowed() -> None:
    data = (DIFFS / "binary_only.diff").read_bytes()
    with pytest.raises(InputError, match="only binary files"):
        evidence_from_diff(data)
    evidence = evidence_from_diff(data, require_text=False)
    assert [f.binary for f in evidence.files] == [True, True]
    assert evidence.packed_tokens == 0


def test_packed_estimate_drops_binary_lock_generated_and_deletion_only() -> None:
    diff = "".join(
        [
            unified("package-lock.json", ['"stripe": "1.0.0"'] * 50),
            unified("web/app.min.js", ["var a=1;"] * 50),
            unified("src/old.py", [], ["x = 1"] * 50),
            unified("src/new.py", ["y = 2"]),
        ]
    )
    evidence = evidence_from_diff(diff, count=lambda text: len(text.split()))
    # Only src/new.py counts: 3 words of body, 1 for the path, 8 per hunk.
    assert evidence.packed_tokens == 3 + 1 + 8


def test_five_thousand_file_diff_parses_and_routes_within_the_reading_budget() -> None:
    parts = [
        unified(f"pkg{i % 50}/mod{i}.py", [f"value_{i} = {i}"], [f"value_{i} = 0"])
        for i in range(4_990)
    ]
    parts += [unified(f"svc/auth/h{i}.py", ["ok = True"]) for i in range(10)]
    files = parse_diff("".join(parts))
    assert len(files) == 5_000
    assert files[4_999].path == "svc/auth/h9.py"
    reasons = found(*files)
    # 9,980 changed lines come before the auth files: past the reading budget the rest is
    # not read, and the diff routes as sensitive with a reason that says so.
    (unread,) = reasons
    read = semantic.SCAN_BUDGET_LINES // 2  # files of two changed lines each fit the budget
    assert unread.category is None
    assert unread.evidence.startswith(
        f"{2 * (4_990 - read) + 10} changed lines in {5_000 - read} more files were not read"
    )
    # Within the budget every file is read, and the auth files count by their path.
    assert categories(found(*files[-20:])) == {"auth"}
    assert len(found(*files[-20:])) == 10


# ---- sensitive paths ------------------------------------------------------------------------

PATH_POSITIVES = [
    ("auth", "src/auth/views.py"),
    ("auth", "auth/middleware.go"),
    ("auth", "app/login.py"),
    ("auth", "api/session.py"),
    ("auth", "accounts/passwords/reset.py"),
    ("auth", "lib/jwt_utils.ts"),
    ("auth", "services/sso/saml_handler.py"),
    ("auth", "web/oauth2/callback.js"),
    ("auth", "core/permissions.py"),
    ("crypto", "pkg/crypto/aes.go"),
    ("crypto", "certs/server.pem"),
    ("crypto", "ops/keys/id_ed25519"),
    ("crypto", "src/signing/envelope.py"),
    ("crypto", "src/utils/crypto.py"),
    ("payments", "src/billing/plans.py"),
    ("payments", "shop/checkout/cart.ts"),
    ("payments", "integrations/stripe_webhook.py"),
    ("payments", "api/invoices/pdf.py"),
    ("infra", "Dockerfile"),
    ("infra", "docker/Dockerfile.dev"),
    ("infra", "infra/main.tf"),
    ("infra", "envs/prod.tfvars"),
    ("infra", "k8s/api-deployment.yaml"),
    ("infra", "deploy/helm/values.yaml"),
    ("infra", ".github/workflows/ci.yml"),
    ("infra", "policies/iam/admin.json"),
    ("infra", "config/app-iam-policy.json"),
    ("infra", "docker-compose.prod.yml"),
]


@pytest.mark.parametrize(("category", "path"), PATH_POSITIVES)
def test_sensitive_by_path(category: str, path: str) -> None:
    reasons = found(change(path, ("x = 1",)))
    assert categories(reasons) == {category}
    # A deploy file is infra by its role; other files count by the policy's globs.
    trigger = "sensitive_content" if category == "infra" else "sensitive_path"
    (first,) = [r for r in reasons if r.trigger == trigger]
    assert first.evidence.startswith(f"{path}")


@pytest.mark.parametrize(
    "path",
    [
        "src/app/author.py",
        "src/nlp/tokenizer.py",
        "docs/authoring-guide.md",
        "lib/authority.py",
        "src/cryptic_names.py",
        "ui/keyboard.py",
        "src/invoiced_total_view.py",
        "docs/docker.md",
        "src/sessionize.py",
        "README.md",
        "github/workflows.md",
    ],
)
def test_look_alike_paths_are_not_sensitive(path: str) -> None:
    assert found(change(path, ("x = 1",))) == []


def test_fixture_negatives_author_and_tokenizer_stay_quiet() -> None:
    files = {f.path: f for f in parse_diff((DIFFS / "auth_mixed.diff").read_bytes())}
    assert found(files["src/app/author.py"], files["src/nlp/tokenizer.py"]) == []


# ---- sensitive content ----------------------------------------------------------------------

CONTENT_POSITIVES = [
    ("auth", "hashed = bcrypt.hashpw(password, bcrypt.gensalt())"),
    ("auth", "return check_password(raw, user.password_hash)"),
    ("auth", "claims = jwt.decode(raw, key, algorithms=['RS256'])"),
    ("auth", "refresh_token = issue(user)"),
    ("auth", "headers['Authorization'] = f'Bearer {access_token}'"),
    ("auth", "@login_required"),
    ("auth", "response.set_cookie('sid', session_id, httponly=True)"),
    ("crypto", "cipher = AES.new(key, AES.MODE_GCM)"),
    ("crypto", "ok = hmac.compare_digest(expected, given)"),
    ("crypto", "key = serialization.load_pem_private_key(data, password=None)"),
    ("crypto", "-----BEGIN RSA PRIVATE KEY-----"),
    ("crypto", "signing_key = load(path)"),
    ("crypto", "const c = crypto.createCipheriv('aes-256-gcm', key, iv)"),
    ("payments", "stripe.api_key = settings.STRIPE_KEY"),
    ("payments", "charge = client.charges.create(amount=500, currency='usd')"),
    ("payments", "api.refunds.create(charge=charge_id)"),
    ("payments", "invoice.finalize(auto_advance=True)"),
    ("payments", "intent = PaymentIntent.confirm(intent_id)"),
    ("payments", "total = order.amount_cents"),
    ("infra", 'resource "aws_iam_role" "deployer" {'),
    ("infra", '  "Effect": "Allow",'),
    ("infra", "  - iam:PassRole"),
]


@pytest.mark.parametrize(("category", "line"), CONTENT_POSITIVES)
def test_sensitive_by_content_names_file_and_line(category: str, line: str) -> None:
    neutral = change("src/app/handlers.py", ("a = 1", "b = 2", line))
    reasons = found(neutral)
    # A line can carry more than one category (stripe.api_key is a credential too).
    assert category in categories(reasons)
    content = [r for r in reasons if r.trigger == "sensitive_content"]
    assert content, reasons
    assert content[0].evidence.startswith("src/app/handlers.py:3 +'")


@pytest.mark.parametrize(
    "line",
    [
        "author = post.author",
        "tokens = tokenizer.encode(text)",
        "max_tokens = 4096",
        "session = requests.Session()",
        "charged = False",
        "aesthetic = 'PARSAR'",
        "encrypted_at_rest = True",
        "kind: Service",
        "refund_policy_url = '/help'",
        "print('invoice total')",
    ],
)
def test_look_alike_content_is_not_sensitive(line: str) -> None:
    assert found(change("src/app/handlers.py", (line,))) == []


def test_removed_lines_count_and_carry_a_minus_sign() -> None:
    files = {f.path: f for f in parse_diff((DIFFS / "auth_mixed.diff").read_bytes())}
    reasons = found(files["src/crypto/legacy.py"])
    assert categories(reasons) == {"crypto"}
    evidence = [r.evidence for r in reasons if r.trigger == "sensitive_content"]
    assert (
        "src/crypto/legacy.py:6 -'return hmac.new(key, message, \"sha256\").hexdigest()'"
        in (evidence[0])
    )


def test_rename_into_and_out_of_a_sensitive_path_counts_when_code_changes() -> None:
    edit = ((3, "if user.active:"),)
    into = FileChange("src/auth/users.py", "src/app/users.py", "renamed", False, added=edit)
    out_of = FileChange("src/app/users.py", "src/auth/users.py", "renamed", False, added=edit)
    assert categories(found(into)) == {"auth"}
    (reason,) = found(out_of)
    assert reason.evidence == "src/auth/users.py matches '**/auth/**'"


def test_a_pure_move_into_a_sensitive_path_is_mechanical() -> None:
    moved = FileChange("src/auth/users.py", "src/app/users.py", "renamed", False)
    assert found(moved) == []


def test_binary_files_match_by_path_but_never_by_content() -> None:
    key = FileChange("config/keys/prod.key", None, "modified", True)
    assert categories(found(key)) == {"crypto"}
    image = FileChange("assets/logo.png", None, "modified", True, added=((1, "stripe"),))
    assert found(image) == []


def test_lock_and_generated_files_are_not_content_scanned() -> None:
    lock = change("package-lock.json", ('"stripe": "^12.0.0",',))
    generated = change("web/dist/app.min.js", ("jwt.decode(t)",))
    protobuf = change("api/billing_pb2.py", ("import stripe",))
    assert found(lock, generated) == []
    # The generated file still counts by its path: billing_pb2.py is not under billing/.
    assert found(protobuf) == []


def test_long_lines_are_shortened_in_evidence() -> None:
    line = "value = jwt.decode(" + "x" * 200 + ")"
    (reason,) = found(change("src/app/settings.py", (line,)))
    snippet = reason.evidence.split("'")[1]
    assert len(snippet) == semantic.MAX_LINE and snippet.endswith("…")


def test_import_lines_alone_do_not_escalate() -> None:
    # An import names a module; the lines that use it carry the behaviour.
    assert found(change("src/app/util.py", ("from cryptography.hazmat import backends",))) == []


def test_a_diff_past_the_reading_budget_routes_as_sensitive_and_says_why() -> None:
    lines = tuple(f"value_{i} = compute({i})" for i in range(semantic.SCAN_BUDGET_LINES))
    first = change("src/app/big.py", lines)
    rest = change("src/app/other.py", ("x = 1", "y = 2"))
    (reason,) = found(first, rest)
    assert reason.category is None
    assert reason.evidence.startswith("2 changed lines in 1 more files were not read")


def test_kubernetes_workloads_count_in_yaml_whatever_the_folder() -> None:
    manifest = change("ops/app.yaml", ("apiVersion: apps/v1", "kind: Deployment"))
    assert categories(found(manifest)) == {"infra"}
    # The same words in Python are not a manifest.
    assert found(change("src/app/handlers.py", ("kind: Deployment",))) == []


def test_one_reason_per_rule_per_file_and_path_plus_content() -> None:
    lines = tuple(f"token_{i} = jwt.encode(payload_{i})" for i in range(30))
    reasons = found(change("src/auth/tokens.py", lines))
    triggers = [r.trigger for r in reasons]
    assert triggers.count("sensitive_path") == 1
    # Only the token detector fires, once, on its first line, and says what it matched.
    (content,) = [r for r in reasons if r.trigger == "sensitive_content"]
    assert content.evidence.startswith("src/auth/tokens.py:1 +'token_0 = jwt.encode(payload_0)'")
    assert content.evidence.endswith("token handling: 'jwt'")


def test_content_rule_scoped_to_paths_only_fires_there() -> None:
    data = parse_yaml(default_policy_text(), source="default")
    data["sensitive"]["payments"]["content"] = [
        {"pattern": r"\bledger\.post\(", "paths": ["finance/**"]}
    ]
    policy = build_policy(data, source="scoped")
    line = ("ledger.post(entry)",)
    assert categories(found(change("finance/books.py", line), policy=policy)) == {"payments"}
    assert found(change("tools/books.py", line), policy=policy) == []


# ---- globs, services, residency -------------------------------------------------------------


def test_globset_reports_which_glob_matched_and_ignores_negations() -> None:
    globs = GlobSet(["docs/**", "!**/auth/**", "**/auth/**", "*.pem"])
    assert globs.match("src/auth/x.py") == "**/auth/**"
    assert globs.match("certs/a.pem") == "*.pem"
    assert globs.match("docs/auth/readme.md") == "docs/**"
    assert globs.match("src/app.py") is None
    assert globs.match("") is None
    assert GlobSet([]).match("anything") is None


@pytest.mark.parametrize("bad", ["a\\", "[z-a]", "\\"])
def test_check_globs_names_the_bad_glob(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a valid gitignore-style pattern"):
        check_globs(("ok/**", bad))
    assert check_globs(("ok/**", "*.pem")) == ("ok/**", "*.pem")


def service_policy() -> Policy:
    """Return the default policy with a two-service map."""
    data = parse_yaml(default_policy_text(), source="default")
    data["services"] = {
        "api": {"paths": ["backend/api/**"], "jobs": ["test-api*", "lint-api"]},
        "web": {"paths": ["frontend/**"], "jobs": ["test-web*"]},
    }
    return build_policy(data, source="services")


@pytest.mark.parametrize(
    ("ci", "services"),
    [
        (CiFacts(failed_jobs=("test-api (3.11)", "test-web")), ["api", "web"]),
        (CiFacts(failed_paths=("backend/api/views.py", "frontend/src/App.tsx")), ["api", "web"]),
        (CiFacts(failed_jobs=("lint-api",), failed_paths=("frontend/x.ts",)), ["api", "web"]),
        (CiFacts(failed_paths=("services/pay/a.py", "apps/admin/b.ts")), ["admin", "pay"]),
        (CiFacts(failed_paths=("packages/ui/a.ts", "cmd/cli/main.go")), ["cli", "ui"]),
    ],
)
def test_multi_service_failure_fires_for_two_services(ci: CiFacts, services: list[str]) -> None:
    reasons = list(detectors.multi_service_failure(Evidence((), ci=ci), service_policy()))
    assert [r.evidence.split("'")[1] for r in reasons] == services
    assert all(r.trigger == "multi_service_failure" for r in reasons)


@pytest.mark.parametrize(
    "ci",
    [
        None,
        CiFacts(),
        CiFacts(failed_jobs=("test-api (3.11)", "test-api (3.12)", "lint-api")),
        CiFacts(failed_paths=("backend/api/a.py", "backend/api/b.py")),
        CiFacts(failed_jobs=("docs", "build")),
        CiFacts(failed_paths=("services/readme.md", "README.md")),
    ],
)
def test_multi_service_failure_quiet_for_one_or_no_service(ci: CiFacts | None) -> None:
    assert list(detectors.multi_service_failure(Evidence((), ci=ci), service_policy())) == []


def residency_policy() -> Policy:
    """Return the default policy with every kind of private_only entry."""
    data = parse_yaml(default_policy_text(), source="default")
    data["private_only"] = {
        "repos": ["acme/secret-*"],
        "paths": ["secret/**", "**/*.sealed"],
        "labels": ["cibot:private-only"],
    }
    return build_policy(data, source="residency")


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        (Evidence((), repo="acme/secret-ledger"), "repo 'acme/secret-ledger' matches"),
        (Evidence((), repo="Acme/Secret-Ledger"), "repo 'Acme/Secret-Ledger' matches"),
        (Evidence((change("secret/keys.txt"),)), "secret/keys.txt matches private_only"),
        (
            Evidence((FileChange("public/a.txt", "secret/a.txt", "renamed", False),)),
            "public/a.txt matches private_only path 'secret/**'",
        ),
        (Evidence((change("cfg/db.sealed"),)), "cfg/db.sealed matches"),
        (Evidence((), labels=frozenset({"cibot:private-only"})), "PR label 'cibot:private-only'"),
        (Evidence((), labels=frozenset({"CIBOT:Private-Only"})), "PR label 'CIBOT:Private-Only'"),
    ],
)
def test_private_only_detects_repo_path_and_label(evidence: Evidence, expected: str) -> None:
    reasons = list(detectors.private_only(evidence, residency_policy()))
    assert len(reasons) == 1 and expected in reasons[0].evidence
    assert reasons[0].trigger == "private_only"


@pytest.mark.parametrize(
    "evidence",
    [
        Evidence((), repo="acme/public"),
        Evidence((), repo=""),
        Evidence((change("src/secret.py"),)),
        Evidence((), labels=frozenset({"private-only", "cibot"})),
    ],
)
def test_private_only_quiet_without_a_hit(evidence: Evidence) -> None:
    assert list(detectors.private_only(evidence, residency_policy())) == []


def test_tests_triggers_fire_at_their_thresholds() -> None:
    from policies.evidence import TestFacts

    def fired(name: str, facts: TestFacts | None) -> bool:
        return bool(list(detectors.TRIGGERS[name](Evidence((), tests=facts), POLICY)))

    assert fired("tests_failed_twice", TestFacts(failed_rounds=2))
    assert not fired("tests_failed_twice", TestFacts(failed_rounds=1))
    assert not fired("tests_failed_twice", None)
    assert fired("coverage_below_target", TestFacts(coverage=0.69))
    assert not fired("coverage_below_target", TestFacts(coverage=0.70))
    assert not fired("coverage_below_target", TestFacts(coverage=None))


def test_compiled_matchers_are_cached_per_policy_object() -> None:
    assert compiled(POLICY) is compiled(POLICY)
    copy = POLICY.model_copy()
    assert compiled(copy) is not compiled(POLICY)


def test_prose_that_mentions_sensitive_words_is_not_a_sensitive_change() -> None:
    """A README line about JWT and Stripe is documentation; the same words in code count."""
    from policies.detectors import sensitive
    from policies.evidence import evidence_from_diff
    from policies.loading import load_policy

    def diff(path: str, line: str) -> str:
        return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1,2 @@\n x\n+{line}\n"

    policy = load_policy()
    prose = evidence_from_diff(diff("docs/auth-guide.md", "Tokens are JWT signed; Stripe charges."))
    code = evidence_from_diff(diff("src/billing.py", "token = jwt.encode(claims, key)"))
    assert [r for r in sensitive(prose, policy) if r.trigger == "sensitive_content"] == []
    assert {r.category for r in sensitive(code, policy)} == {"auth"}


# ---- the anchors the scan looks for first ---------------------------------------------------------


_WORDS = [
    "bcrypt",
    "BCrypt",
    "hashpw",
    "jwt",
    "JWT_SECRET",
    "my_jwt",
    "jsonwebtoken",
    "access_token",
    "Refresh-Tokens",
    "id_token",
    "SESSION_COOKIE_AGE",
    "login_required",
    "AES",
    "aes",
    "RSA",
    "hmac.new",
    "cryptography.hazmat",
    "private_key",
    "Decrypt(",
    "verify=",
    "ssl.",
    "-----BEGIN RSA PRIVATE KEY-----",
    "stripe",
    "charges.create",
    "refund",
    "amount",
    "total",
    "PaymentIntent",
    '"Action":',
    "kind: Deployment",
    "iam:PassRole",
    "has_perm",
    "tokenizer",
    "author",
    "x",
    "=",
    "+",
    "(",
    ")",
    ".",
    "_",
    "-",
    " ",
    "\n",
    "é",
    "'",
    "#",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=12))
def test_a_detector_never_matches_a_line_without_one_of_its_anchors(words: list[str]) -> None:
    """Whatever the text, a detector's match (on it or its camelCase split) holds an anchor."""
    text = "".join(words)
    for detector in semantic.DETECTORS:
        variants = [text, semantic.snake(text)] if detector.snake else [text]
        if any(detector.pattern.search(v) for v in variants):
            assert any(a in text.lower() for a in detector.anchors), (detector.name, text)
