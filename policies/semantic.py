"""Find sensitive changes in the code of changed lines: one table of detectors per category.

Each detector names the construct it recognises (a permission check, a TLS-verification
setting, arithmetic on an amount), so every reason says what matched and where. The
detectors run on the code tokens of changed lines only: ``policies.anatomy`` drops docs,
tests, fixtures, generated and vendored files, comments, docstrings, bare strings and
mechanical hunks before any pattern is tried.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from policies import anatomy, deps
from policies.anatomy import FileView
from policies.detectors import GlobSet, Reason, compiled
from policies.evidence import Evidence
from policies.model import Policy

MAX_LINE = 80
# Import lines name a module; the lines that use it carry the behaviour.
IMPORT = re.compile(r"\s*(import\s|from\s+\S+\s+import\s|#include\s|using\s+[\w.]+;|"
                    r"require\s*\(?['\"]|use\s+[\w:]+;|const\s+\w+\s*=\s*require\()")


@dataclass(frozen=True)
class Detector:
    """Recognise one construct of a sensitive category in a line's code."""

    category: str
    name: str
    pattern: re.Pattern[str]
    guard: re.Pattern[str] | None = None  # a line this matches is not a hit
    check: Callable[[str], bool] | None = None  # a further test on the line's code
    strings: bool = False  # also look inside string literals (header names, claim keys)
    files: re.Pattern[str] | None = None  # only in files whose path this matches


def _rx(pattern: str, flags: int = re.IGNORECASE) -> re.Pattern[str]:
    """Compile one detector pattern."""
    return re.compile(pattern, flags)


# Logging, metrics and tracing calls: telemetry inside a payment or auth module changes no
# amount, credential or flow (the routing specification's observability rule).
TELEMETRY = _rx(
    r"\b(log|logger|logging|_log|LOG|console|span|tracer|trace|metrics?|statsd|prometheus|"
    r"counter|histogram|gauge|meter|sentry_sdk|telemetry)\.\w+\(|\.labels\(|set_attribute|"
    r"add_event|\b(Counter|Histogram|Gauge|Summary)\(|record_metric|emit_metric|_total['\"]"
)
# UI text and translations: "payment" as a label is not the payment flow.
UI_TEXT = _rx(r"\b(gettext|ugettext|_lazy|i18n|t|_)\(\s*['\"]|\b(label|title|placeholder|"
              r"help_text|verbose_name|description|tooltip|aria-label)\s*[=:]")
ARITHMETIC = re.compile(
    r"(?<![-+*/=<>!%&|^])(\+|-|\*|/|%)=?(?![-+>=*/])|\bsum\(|\bround\(|\bquantize\b|"
    r"\bDecimal\(|\bMoney\(|\bBigDecimal\b|\.(add|subtract|multiply|divide|negate)\(|"
    r"\bmax\(|\bmin\(|\babs\("
)
MONEY = frozenset(
    {"amount", "amounts", "price", "prices", "balance", "balances", "subtotal", "tax", "taxes",
     "vat", "discount", "discounts", "fee", "fees", "refund", "refunds", "refunded", "credit",
     "credits", "debit", "debits", "currency", "money", "cents", "payable", "surcharge",
     "paid", "payment", "payments", "charge", "charges", "payout", "payouts", "invoice",
     "invoices", "grandtotal", "total", "totals", "cost", "costs", "tip", "shipping",
     "voucher", "gift", "wallet", "deposit", "withdrawal", "price_incl_tax", "incl", "excl"}
)
# "total" and "cost" alone are generic (total_count, cost of a cache miss): a line needs one
# of these too.
STRONG_MONEY = MONEY - {"total", "totals", "cost", "costs", "tip", "shipping", "incl", "excl",
                        "gift", "deposit", "credit", "credits", "charge", "charges"}
WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
IDENTS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MONEY_HINT = _rx(r"amount|price|balance|subtotal|tax|vat|discount|fee|refund|debit|currency|"
                 r"money|cent|payable|surcharge|paid|payment|payout|invoice|wallet|withdraw")


YAML_FILES = re.compile(r"\.(ya?ml|json|tpl|j2)$")


def _money_words(code: str) -> set[str]:
    """Return the lowercased words of a line's identifiers (snake_case and camelCase split)."""
    return {w.lower() for ident in IDENTS.findall(code) for w in WORDS.findall(ident)}


def _money_arithmetic(code: str) -> bool:
    """Tell whether a line computes, assigns or compares amounts, totals or balances."""
    code = _without_strings(code)
    if not _money_words(code) & STRONG_MONEY:
        return False
    if ARITHMETIC.search(code):
        return True
    # `total = order.amount_cents`, `if paid >= invoice.total`: money on both sides.
    sides = ASSIGN_OR_COMPARE.split(code, maxsplit=1)
    return len(sides) == 2 and all(_money_words(side) & MONEY for side in sides) and bool(
        _money_words(sides[1]) & STRONG_MONEY or _money_words(sides[0]) & STRONG_MONEY
    )


ASSIGN_OR_COMPARE = re.compile(r"(?<![=!<>])=(?!=)|[<>]=?|==|!=|\bis\b")
STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _without_strings(code: str) -> str:
    """Blank out string literals, so a '-' in text is not arithmetic."""
    return STRINGS.sub("''", code)


DETECTORS: tuple[Detector, ...] = (
    # auth
    Detector("auth", "permission check", _rx(
        r"\b(has_?perms?|has_?permissions?|has_object_permission|check_?(object_)?permissions?|"
        r"permission_classes|permission_required|permission_?denied|\w*permission(s)?_?(check|"
        r"required|mixin|policy|class(es)?)\w*|get_permissions|user_passes_test|"
        r"login_?required\w*|is_authenticated|isauthenticated|is_anonymous|is_superuser|"
        r"is_staff|is_?admin|requires?_(auth|login|role|permission|scope)\w*|has_?roles?|"
        r"has_?any_?role|has_?authority|preauthorize|rolesallowed|secured|isgranted|"
        r"authoriz\w+|unauthori[sz]ed|forbidden|access_?denied|can_(view|edit|delete|change|"
        r"manage|access|read|write|update|create|publish|moderate|admin|see|submit|approve)\w*|"
        r"user_can|current_user_can|allowed_(to|for|users|roles)\w*|acl|rbac|abac|"
        r"scopes?_required|require_scopes?|owner_only|only_owner|check_access|"
        r"ensure_access|permitted)\b"),
        guard=_rx(r"\bos\.chmod|\bchmod\b|file_?mode|0o[0-7]{3}|st_mode")),
    Detector("auth", "credential handling", _rx(
        r"\b(netrc|get_netrc_auth|credentials?|passwd|password\w*|passphrase|api_?key\w*|"
        r"apikey|client_?secret|auth_?header\w*|basic_?auth\w*|httpbasicauth|httpdigestauth|"
        r"digest_?auth|proxy_?auth\w*|keychain|keyring|x-api-key|www-authenticate|"
        r"authorization_?header|secret_?token|access_?key(_id)?|secret_?access_?key)\b|"
        r"['\"](proxy-)?authorization['\"]"),
        strings=True),
    Detector("auth", "token handling", _rx(
        r"\b(access|refresh|id|bearer|auth|csrf|xsrf|session|api|personal_access|oauth|"
        r"service_account|installation|jwt)[_-]?tokens?\b|\bbearer\b|(?<![a-z0-9])jw[tsek]s?"
        r"(?![a-z])|\bjsonwebtoken\b|\bjose\b|\b(verify|validate|decode|revoke|rotate|"
        r"refresh|issue|sign)_?tokens?\b|\btokens?_(verify|valid\w*|decode|expir\w*|revoke\w*|"
        r"ttl|lifetime|secret)\b"),
        strings=True),
    Detector("auth", "claim validation", _rx(
        r"""['"](exp|nbf|iat|iss|aud|azp|jti|sub)['"]|\b(leeway|verify_(exp|nbf|iat|iss|aud|"""
        r"""jti|sub|at_hash)|require_(exp|iat|nbf)|audiences?|issuers?|claims?|"""
        r"""expires_at|not_before|clock_skew)\b"""),
        strings=True),
    Detector("auth", "session cookie", _rx(
        r"\b(set_cookie|delete_cookie|set_signed_cookie|session_?cookie\w*|session_?id|"
        r"sessionid|http_?only|samesite|same_site|secure_?cookie\w*|cookie_?(secure|httponly|"
        r"samesite|domain|path|age)|csrf\w*|xsrf\w*|request\.session|session_(key|store|"
        r"engine|serializer|backend|interface)|session\[)")),
    Detector("auth", "login flow", _rx(
        r"\b(login|logout|log_in|log_out|sign_?in|sign_?out|signin|signout|authenticat\w+|"
        r"reauthenticat\w+|impersonat\w+|mfa|totp|hotp|otp|two_?factor|2fa|webauthn|passkeys?|"
        r"magic_?link|remember_me|lockout|brute_?force)\b")),
    Detector("auth", "OAuth or OIDC flow", _rx(
        r"\b(oauth2?\w*|oidc\w*|openid\w*|redirect_uris?|allowed_redirect\w*|code_verifier|"
        r"code_challenge\w*|pkce|authorization_(endpoint|code|url|server)|token_endpoint|"
        r"userinfo\w*|jwks_uri|id_token\w*|nonce|client_?id|grant_?type|response_type|"
        r"introspect\w*|saml\w*|sso)\b")),
    Detector("auth", "password hashing", _rx(
        r"\b(bcrypt|argon2\w*|scrypt|pbkdf2(_hmac)?|hashpw|check_password|make_password|"
        r"set_password|verify_password|password_hash\w*|hash_password|password_hasher\w*)\b")),
    # crypto
    Detector("crypto", "TLS verification", _rx(
        r"\bverify\s*[:=](?!=)|\bself\.verify\b|['\"]verify['\"]|\b(verify_?(ssl|tls|certs?|"
        r"mode|hostname|peer)|ssl_?verify\w*|tls_?verify\w*|insecure\w*|skip_?verify|"
        r"insecureskipverify|cert_?reqs|cert_none|cert_optional|cert_required|check_?hostname|"
        r"assert_?hostname|assert_?fingerprint|server_?hostname|ca_?certs?|ca_?bundle|"
        r"ca_?file|ca_?path|ca_?data|cafile|capath|certifi|ssl_?context|sslcontext|"
        r"create_default_context|create_urllib3_context|load_verify_locations|load_cert_chain|"
        r"cert_?file|key_?file|certfile|keyfile|client_?cert\w*|rejectunauthorized|"
        r"node_tls_reject_unauthorized|x509\w*|sslmode|tls_?config|tlsconfig|min_?version|"
        r"tlsv1\w*|ssl_version|protocol_tls\w*|pinned_?cert\w*|cert_?pin\w*|"
        r"hostname_?verifier|trust_?manager\w*|trust_?store|truststore)\b|\bssl\.\w+|"
        r"\btls\.\w+"),
        strings=True),
    Detector("crypto", "signature or constant-time check", _rx(
        r"\b(hmac\w*|compare_digest|constant_?time\w*|timing_?safe\w*|timingsafeequal|"
        r"secure_?compare|safe_str_cmp|signatures?|signers?|signing\w*|sign_\w+|\w+_sign|"
        r"verify_?signature\w*|signed_?(cookie|url|payload|data|request)\w*|itsdangerous|"
        r"webhook_?secret|unsign\w*|sig_?header|x-hub-signature\S*)\b|\.sign\(|\.verify\("),
        guard=_rx(r"\binspect\.signature|__signature__|\bSignature\(|\.parameters\b|"
                  r"\bsignature_?(help|info|text|string)|type_?signature|method_?signature|"
                  r"func\w*_signature|call_?signature")),
    Detector("crypto", "key handling", _rx(
        r"\b(private_?keys?|public_?keys?|secret_?key\w*|signing_?keys?|encryption_?keys?|"
        r"master_?keys?|key_?pairs?|keypair|generate_?(private_)?key\w*|keygen|key_?rotation|"
        r"rotate_?keys?|kms\w*|jwks?|pem\w*|pkcs\d*\w*|pkey|load_pem\w*|load_der\w*|"
        r"serialization\.|key_?derivation|kdf|hkdf|salt\w*|iv|nonce_?size|key_?size)\b|"
        r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----")),
    Detector("crypto", "cryptographic primitive", re.compile(
        r"\b(AES|RSA|ECDSA|ECDH|DSA|Ed25519|Ed448|X25519|ChaCha20|Poly1305|Fernet|HMAC|PKCS\d*|"
        r"GCM|CBC|CTR|OAEP|PSS|SecureRandom|getrandomvalues|randomBytes|urandom)\b|"
        r"\b(\w*(encrypt|decrypt)\w*\s*\(|\.(en|de)crypt\w*|cipher\w*|cryptography|hazmat|"
        r"nacl|libsodium|sodium|"
        r"openssl|crypto\.subtle|createcipheriv|createdecipheriv|createhmac|createsign|"
        r"createverify|javax\.crypto|bouncycastle|secrets\.token_\w+|secrets\.compare_digest|"
        r"os\.urandom|crypto/rand|crypto/tls|crypto/x509|crypto/hmac|x/crypto)\b",
        re.IGNORECASE)),
    Detector("crypto", "hash used for a secret", _rx(
        r"\b(sha\d+|md5|blake2\w*|sha3_\w+|hashlib\.\w+|digest)\b"),
        check=lambda code: bool(_rx(r"password|passwd|secret|token|api_?key|salt|\bpin\b|"
                                    r"signature|credential|otp").search(code))),
    # payments
    Detector("payments", "payment gateway", _rx(
        r"\b(stripe\w*|braintree|adyen|paypal\w*|razorpay|klarna|mollie|authorize_?net|"
        r"worldpay|paddle|chargebee|recurly|plaid|checkout_?com|square_?up|gocardless|"
        r"payment_?(gateway|provider|processor|intent|method|source)\w*)\b")),
    Detector("payments", "money movement", _rx(
        r"\b(refunds?|refunded|refunding|refund_(amount|payment|order|line|total|charge|"
        r"request|item|reason)s?|charges?\.|"
        r"create_charge|capture_payment|\.capture\(|captured_amount|payouts?\w*|invoices?\w*|"
        r"store_?credit\w*|gift_?cards?|vouchers?|bank_?transfer\w*|iban|sepa|wire_?transfer|"
        r"chargebacks?|settlements?|settle_\w+|payments?\w*|pay_\w+|\w+_paid|is_paid|"
        r"amount_(due|paid|captured|refunded|authorized|charged)|balance_?(due|after|before)|"
        r"ledger_?entr\w*|debit\w*|withdraw\w*)\b"),
        guard=UI_TEXT),
    Detector("payments", "amount arithmetic", MONEY_HINT, guard=UI_TEXT, check=_money_arithmetic),
    Detector("payments", "card data", _rx(
        r"\b(card_?number\w*|cardnumber|card_?num|cvv2?|cvc2?|luhn\w*|exp_?month|exp_?year|"
        r"card_?expir\w*|credit_?cards?|cc_?(number|num|exp)\w*|cardholder\w*|track_?data|"
        r"primary_account_number|card_?brand|bin_?range|mask_?card\w*|last4)\b")),
    # infra
    Detector("infra", "Kubernetes workload", _rx(
        r"^\s*kind:\s*(Deployment|StatefulSet|DaemonSet|Job|CronJob|Pod|ReplicaSet|Ingress|"
        r"Service|ServiceAccount|Role|ClusterRole|RoleBinding|ClusterRoleBinding|NetworkPolicy|"
        r"Secret|ConfigMap|PodSecurityPolicy|HorizontalPodAutoscaler|Gateway|HTTPRoute|"
        r"VirtualService)\b|^\s*(securityContext|runAsUser|runAsNonRoot|privileged|hostNetwork|"
        r"hostPID|serviceAccountName|automountServiceAccountToken|capabilities|"
        r"allowPrivilegeEscalation|secretKeyRef|imagePullSecrets)\s*:", re.MULTILINE),
        files=YAML_FILES),
    Detector("infra", "IAM or cloud identity", _rx(
        r"""['"](Action|Effect|Principal|NotAction|NotPrincipal)['"]\s*:|\b(iam|sts):"""
        r"""[A-Za-z*]+|\bresource\s+['"](aws|google|azurerm|kubernetes|helm)_\w*iam\w*|"""
        r"""\bworkload_?identity\w*|\bid-token:\s*write|\baws-actions/configure-aws-"""
        r"""credentials|\bgoogle-github-actions/auth"""),
        strings=True),
)

# How a deploy file is recognised, for the reason's text.
DEPLOY_KINDS = (
    (re.compile(r"(^|/)(Dockerfile|Containerfile)[^/]*$|\.dockerfile$"), "Dockerfile"),
    (re.compile(r"(^|/)(docker-)?compose[^/]*\.ya?ml$"), "Compose file"),
    (re.compile(r"\.(tf|tfvars|hcl)$"), "Terraform"),
    (re.compile(r"(^|/)\.github/(workflows|actions)/"), "GitHub Actions workflow"),
    (re.compile(r"(^|/)skaffold[^/]*\.ya?ml$"), "Skaffold config"),
    (re.compile(r"(^|/)kustomization\.ya?ml$"), "kustomize"),
    (re.compile(r"(^|/)(Chart\.ya?ml|values[^/]*\.ya?ml)$|(^|/)templates/"), "Helm chart"),
)
# Lines of deploy config that only document: Terraform descriptions, names and labels.
DOCUMENTING = _rx(r"^\s*[-+]?\s*['\"]?(description|title|summary|help|label|name|"
                  r"display_name)['\"]?\s*[=:]")


def _snippet(text: str) -> str:
    """Shorten a line for a reason's evidence."""
    text = text.strip()
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"


def _reason(view: FileView, sign: str, number: int, text: str, what: str, matched: str,
            category: str) -> Reason:
    """Build one explainable reason: file:line, the line, the construct and what matched."""
    return Reason(
        "sensitive_content",
        f"{view.change.path}:{number} {sign}'{_snippet(text)}' {what}: '{matched.strip()}'",
        category,
    )


@dataclass(frozen=True)
class RuleSet:
    """The built-in detectors plus the policy's own content rules, and its path globs."""

    detectors: tuple[Detector, ...]
    scoped: tuple[tuple[Detector, GlobSet], ...]
    paths: tuple[tuple[str, GlobSet], ...]
    quick: dict[str, re.Pattern[str]]


_RULES: dict[int, tuple[Policy, RuleSet]] = {}


def rules(policy: Policy) -> RuleSet:
    """Compile the policy's content rules beside the built-ins, once per policy object."""
    hit = _RULES.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    scoped: list[tuple[Detector, GlobSet]] = []
    own: list[Detector] = []
    for category, rule_set in policy.sensitive.items():
        for rule in rule_set.content:
            detector = Detector(category, "policy rule", re.compile(rule.pattern))
            (scoped.append((detector, GlobSet(rule.paths))) if rule.paths else own.append(detector))
    detectors = DETECTORS + tuple(own)
    quick = {
        category: re.compile("|".join(f"(?:{_inline(d.pattern)})" for d in group))
        for category in ("auth", "crypto", "payments", "infra")
        if (group := [d for d in detectors if d.category == category])
    }
    paths = tuple(
        (matcher.category, matcher.paths) for matcher in compiled(policy).categories
    )
    result = RuleSet(detectors, tuple(scoped), paths, quick)
    if len(_RULES) > 16:
        _RULES.clear()
    _RULES[id(policy)] = (policy, result)
    return result


def _inline(pattern: re.Pattern[str]) -> str:
    """Return a pattern's source with its flags made inline, so patterns can be joined."""
    flags = ""
    if pattern.flags & re.IGNORECASE:
        flags += "i"
    if pattern.flags & re.MULTILINE:
        flags += "m"
    source = pattern.pattern
    lead = re.match(r"^\(\?([aiLmsux]+)\)", source)
    if lead:
        flags += lead.group(1)
        source = source[lead.end():]
    return f"(?{''.join(sorted(set(flags)))}:{source})" if flags else source


def sensitive(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason for each sensitive construct in the code of the diff's changed lines."""
    ruleset = rules(policy)
    for change in evidence.files:
        if change.binary and anatomy.role_of(change.path) not in anatomy.QUIET_ROLES:
            yield from _paths(anatomy.FileView(change, "source"), ruleset)
    for view in anatomy.views(evidence.files):
        if view.role in anatomy.QUIET_ROLES or view.role == "lock":
            continue
        if deps.is_manifest(view.change.path) and view.role != "deploy":
            continue  # a manifest is judged by the packages it bumps, below
        yield from _scan(view, ruleset)
        yield from _deploy(view)
        yield from _paths(view, ruleset)
    yield from _bumps(evidence, policy)


def _scan(view: FileView, ruleset: RuleSet) -> Iterator[Reason]:
    """Yield the first confirmed hit of each detector in one file."""
    # Use sites before imports: the line that calls hmac says more than `import hmac`.
    lines = sorted(view.changed(), key=lambda line: bool(IMPORT.match(line[2])))
    if not lines:
        return
    body = "\n".join(text for _, _, text in lines)
    scoped = [d for d, globs in ruleset.scoped if globs.match(view.change.path)]
    for category, quick in ruleset.quick.items():
        pending = [d for d in ruleset.detectors if d.category == category]
        extra = [d for d in scoped if d.category == category]
        if not quick.search(body):
            pending = [d for d in extra if d.pattern.search(body)]
            if not pending:
                continue
            quick = re.compile("|".join(f"(?:{_inline(d.pattern)})" for d in pending))
        else:
            pending += extra
        for sign, number, text in lines:
            if not pending:
                break
            if not quick.search(text):
                continue
            for detector, reason in _confirm(view, pending, sign, number, text):
                pending.remove(detector)
                yield reason


def _confirm(
    view: FileView, pending: Iterable[Detector], sign: str, number: int, text: str
) -> list[tuple[Detector, Reason]]:
    """Return the detectors whose construct is in this line's code (lexing it if needed)."""
    hits: list[tuple[Detector, Reason]] = []
    lexed = None
    for detector in pending:
        if detector.pattern.search(text) is None:
            continue
        if detector.files is not None and not detector.files.search(view.change.path):
            continue
        lexed = lexed or view.line(sign, number, text)
        if lexed.kind != "code":
            return hits
        # Values are the point of config files; in source, words inside strings are prose.
        whole = detector.strings or view.role in ("config", "deploy")
        code = lexed.code if whole else lexed.bare
        match = detector.pattern.search(code)
        if match is None or not _holds(detector, lexed.code):
            continue
        reason = _reason(view, sign, number, text, detector.name, match.group(0),
                         detector.category)
        hits.append((detector, reason))
    return hits


def _holds(detector: Detector, code: str) -> bool:
    """Apply a detector's guard, its extra check and the telemetry rule to a line's code."""
    if detector.guard is not None and detector.guard.search(code):
        return False
    if detector.check is not None and not detector.check(code):
        return False
    return not (
        detector.category == "payments" and detector.name != "card data"
        and TELEMETRY.search(code)
    )


def _deploy(view: FileView) -> Iterator[Reason]:
    """Yield one infra reason for a deploy file whose changed code does more than document."""
    if view.role != "deploy":
        return
    what = next((name for rx, name in DEPLOY_KINDS if rx.search(view.change.path)),
                "deploy config")
    for sign, number, text, code in view.code_lines():
        if DOCUMENTING.search(code) or _documenting_only(code):
            continue
        yield Reason(
            "sensitive_content",
            f"{view.change.path}:{number} {sign}'{_snippet(text)}' {what} changed",
            "infra",
        )
        return


def _documenting_only(code: str) -> bool:
    """Tell whether a config line holds nothing but a quoted string (a wrapped description)."""
    stripped = code.strip().rstrip(",")
    return len(stripped) > 1 and stripped[0] in "'\"" and stripped[-1] == stripped[0]


def _paths(view: FileView, ruleset: RuleSet) -> Iterator[Reason]:
    """Yield a reason when a sensitive path's file has changed code beyond telemetry."""
    change = view.change
    for category, globs in ruleset.paths:
        path = next((p for p in (change.path, change.old_path) if p and globs.match(p)), None)
        glob = globs.match(path) if path else None
        if path is None or glob is None:
            continue
        lines = view.code_lines() if not change.binary else iter([("", 0, "", "binary")])
        for _sign, _number, _text, code in lines:
            if code.strip() and not TELEMETRY.search(code) and not IMPORT.match(code):
                yield Reason("sensitive_path", f"{path} matches '{glob}'", category)
                break


def _bumps(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason for each bump of a security-relevant package, Action or image."""
    finder = getattr(deps, "sensitive_bumps", None)
    if finder is None:
        return
    for bump, category in finder(evidence.files, policy):
        yield Reason(
            "sensitive_dependency",
            f"{bump.path}:{bump.line} {bump.name} {bump.old} → {bump.new} is a {category} "
            "package",
            category,
        )
