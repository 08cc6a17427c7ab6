"""Find sensitive changes in the code of changed lines: one table of detectors per category.

Each detector names the construct it recognises (a permission check, a TLS-verification
setting, arithmetic on an amount), so every reason says what matched and where. The
detectors run on the code tokens of changed lines only: ``policies.anatomy`` drops docs,
tests, fixtures, generated and vendored files, comments, docstrings, bare strings and
mechanical hunks before any pattern is tried.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ahocorasick

from policies import anatomy, deps
from policies.anatomy import FileView
from policies.evidence import Evidence
from policies.globs import GlobSet, compiled
from policies.model import Policy
from policies.reasons import Reason

log = logging.getLogger("cibot.policies")

MAX_LINE = 80
# Changed lines of code, config and deploy files read in detail per diff.
SCAN_BUDGET_LINES = 5_000
# Import lines name a module; the lines that use it carry the behaviour.
IMPORT = re.compile(
    r"\s*(import\s|from\s+\S+\s+import\s|#include\s|using\s+[\w.]+;|"
    r"require\s*\(?['\"]|use\s+[\w:]+;|const\s+\w+\s*=\s*require\(|"
    # a Go import spec inside `import ( ... )`: an optional alias and a path
    r"([\w.]+\s+)?\"[\w.-]+(/[\w.@-]+)+\"\s*$)"
)


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
    snake: bool = True  # match on code with camelCase split (False for YAML keys and kinds)
    # Lowercase literals one of which every match contains (in the line, lowercased): the
    # whole diff is scanned for these at once, and only lines holding one are matched.
    anchors: tuple[str, ...] = ()


def _rx(pattern: str, flags: int = re.IGNORECASE) -> re.Pattern[str]:
    """Compile one pattern."""
    return re.compile(pattern, flags)


# A word boundary where "_" separates words too, so `\bpassword\b` finds `reset_password`;
# detectors run on code whose camelCase is split the same way (`resetPassword`).
ALNUM_BOUNDARY = r"(?:(?<![A-Za-z0-9])(?=[A-Za-z0-9])|(?<=[A-Za-z0-9])(?![A-Za-z0-9]))"
CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _words(pattern: str) -> re.Pattern[str]:
    """Compile a detector pattern whose word boundaries also fall at `_` (case-insensitive)."""
    return re.compile(pattern.replace(r"\b", ALNUM_BOUNDARY), re.IGNORECASE)


def snake(text: str) -> str:
    """Split camelCase words with `_`, so one set of patterns reads every naming style."""
    return CAMEL.sub("_", text)


# Logging, metrics and tracing calls: telemetry inside a payment or auth module changes no
# amount, credential or flow (the routing specification's observability rule).
TELEMETRY = _rx(
    r"\b(log|logger|logging|_log|LOG|console|span|tracer|trace|metrics?|statsd|prometheus|"
    r"counter|histogram|gauge|meter|sentry_sdk|telemetry)\.\w+\(|\.labels\(|set_attribute|"
    r"add_event|\b(Counter|Histogram|Gauge|Summary)\(|record_metric|emit_metric|_total['\"]|"
    r"\.(inc|dec|observe|log_kv|set_tag|set_tags|add_tag|increment|timing)\(|"
    r"\b\w*(metrics?|span|tracer|tracing|instana)\w*\s*[\[=.]"
)
# UI text and translations: "payment" as a label is not the payment flow.
UI_TEXT = _rx(
    r"\b(gettext|ugettext|_lazy|i18n|t|_)\(\s*['\"]|\b(label|title|placeholder|"
    r"help_text|verbose_name|description|tooltip|aria-label)\s*[=:]"
)
# "payment" in a UI string, or naming a page, policy or template about payments.
PAGE_NAMES = _rx(
    UI_TEXT.pattern + r"|(refund|payment|invoice|checkout|billing)\w*_(policy|url|"
    r"page|link|text|label|template|email|path|view|form|help|title)s?\b"
)
ARITHMETIC = re.compile(
    r"(?<![-+*/=<>!%&|^])(\+|-|\*|/|%)=?(?![-+>=*/])|\bsum\(|\bround\b|\.(to_i|floor|ceil)\b|"
    r"\bMoney\.new\b|\bquantize\b|"
    r"\bDecimal\(|\bMoney\(|\bBigDecimal\b|\.(add|subtract|multiply|divide|negate)\(|"
    r"\bmax\(|\bmin\(|\babs\("
)
MONEY = frozenset(
    {
        "amount",
        "amounts",
        "price",
        "prices",
        "balance",
        "balances",
        "subtotal",
        "tax",
        "taxes",
        "vat",
        "discount",
        "discounts",
        "fee",
        "fees",
        "refund",
        "refunds",
        "refunded",
        "credit",
        "credits",
        "debit",
        "debits",
        "currency",
        "money",
        "cents",
        "payable",
        "surcharge",
        "paid",
        "payment",
        "payments",
        "charge",
        "charges",
        "payout",
        "payouts",
        "invoice",
        "invoices",
        "grandtotal",
        "total",
        "totals",
        "cost",
        "costs",
        "tip",
        "shipping",
        "voucher",
        "gift",
        "wallet",
        "deposit",
        "withdrawal",
        "price_incl_tax",
        "incl",
        "excl",
    }
)
# "total" and "cost" alone are generic (total_count, cost of a cache miss): a line needs one
# of these too.
STRONG_MONEY = MONEY - {
    "total",
    "totals",
    "cost",
    "costs",
    "tip",
    "shipping",
    "incl",
    "excl",
    "gift",
    "deposit",
    "credit",
    "credits",
    "charge",
    "charges",
}
WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
IDENTS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MONEY_HINT = _rx(
    r"amount|price|balance|subtotal|tax|vat|discount|fee|refund|debit|currency|"
    r"money|cent|payable|surcharge|paid|payment|payout|invoice|wallet|withdraw"
)


# A guard: the line decides whether to go on (not a query filter that scopes rows).
CONDITION = _rx(
    r"^\s*(\}\s*)?(if|unless|elif|elsif|else\s+if|guard|assert|when|return)\b|\bif\s*\("
)
SECRET_WORDS = _rx(r"password|passwd|secret|token|api_?key|salt|\bpin\b|signature|credential|otp")
IGNORE_FILES = re.compile(r"(^|/)\.[\w-]*ignore$")
MARKUP = re.compile(
    r"\.(html?|xhtml|jinja2?|hbs|handlebars|mustache|erb|twig|liquid|njk|ejs"
    r"|svg|css|scss|sass|less)$"
)
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
    return (
        len(sides) == 2
        and all(_money_words(side) & MONEY for side in sides)
        and bool(_money_words(sides[1]) & STRONG_MONEY or _money_words(sides[0]) & STRONG_MONEY)
    )


ASSIGN_OR_COMPARE = re.compile(r"(?<![=!<>])=(?!=)|[<>]=?|==|!=|\bis\b")
STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _without_strings(code: str) -> str:
    """Blank out string literals, so a '-' in text is not arithmetic."""
    return STRINGS.sub("''", code)


DETECTORS: tuple[Detector, ...] = (
    # auth
    Detector(
        "auth",
        "permission check",
        _words(
            r"\b(has_?perms?|has_?permissions?|has_object_permission|check_?(object_)?permissions?|"
            r"permission_?(classes|required|denied|check\w*|mixin|policy|policies|class|scope)|"
            r"get_permissions|user_passes_test|login_?required|is_authenticated|is_anonymous|"
            r"is_superuser|is_staff|is_?admin|requires?_(auth|login|role|permission|scope)\w*|"
            r"has_?(any_)?roles?|has_?authority|pre_?authorize|roles_?allowed|secured|is_?granted|"
            r"authoriz\w*|unauthori[sz]ed|forbidden|access_?denied|explorable_\w+|"
            r"can_(view|edit|delete|change|manage|access|read|write|update|create|publish|moderate|"
            r"admin|see|submit|approve)\w*|user_can|current_user_can|allowed_(to|for|users|roles)|"
            r"acl|rbac|abac|scopes?_required|require_scopes?|owner_only|check_access|ensure_access|"
            r"permitted|permissions?)\b|\b(status(_code)?|code)\s*[=:]\s*4?40[13]\b|"
            r"\babort\(\s*40[13]\b|\bHTTP_40[13]_\w+|"
            r"\.(admin|staff|owner|superuser|moderator)\?"
        ),
        guard=_rx(r"\bos\.chmod|\bchmod\b|file_?mode|0o[0-7]{3}|st_mode|\bPermissionError\b"),
        anchors=(
            "40",
            "perm",
            "passes_test",
            "login",
            "authent",
            "anonymous",
            "superuser",
            "staff",
            "admin",
            "require",
            "role",
            "authorit",
            "authoriz",
            "unauthori",
            "secured",
            "granted",
            "forbidden",
            "denied",
            "explorable",
            "can",
            "acl",
            "rbac",
            "abac",
            "scope",
            "owner",
            "access",
            "allowed",
        ),
    ),
    Detector(
        "auth",
        "ownership check",
        _words(
            r"\b(user|owner|author|creator)_?id\s*(!=|==)|(!=|==)\s*[\w.]*(current_user|get_user_id|"
            r"request\.user)"
        ),
        check=lambda code: bool(CONDITION.search(code)),
        anchors=("user", "owner", "author", "creator"),
    ),
    Detector(
        "auth",
        "credential handling",
        _words(
            r"\b(net_?rc\w*|credentials?|passwd|passwords?|passphrase|api_?keys?|client_?secret|"
            r"auth_?header\w*|http_?basic_?auth|http_?digest_?auth|basic_?auth|digest_?auth|"
            r"proxy_?auth\w*|keychain|keyring|x-api-key|www-authenticate|authorization_?header|"
            r"secret_?token|access_?key(_id)?|secret_?access_?key|userinfo|user_?pass)\b|"
            r"['\"](proxy-)?authorization['\"]"
        ),
        strings=True,
        anchors=(
            "netrc",
            "net_rc",
            "credential",
            "passwd",
            "password",
            "passphrase",
            "api",
            "secret",
            "auth",
            "keychain",
            "keyring",
            "access",
            "userinfo",
            "user",
        ),
    ),
    Detector(
        "auth",
        "token handling",
        _words(
            r"\b(access|refresh|id|bearer|auth|csrf|xsrf|session|api|personal_access|oauth|reset|"
            r"service_account|installation|jwt|verification|confirmation)[_-]?tokens?\b|"
            r"\bbearer\b|\bjw[tsek]s?\b|\bjson_?web_?token\b|\bjose\b|\b(verify|validate|decode|"
            r"revoke|rotate|issue|sign)_?tokens?\b|\btokens?_(verify|valid\w*|decode|expir\w*|"
            r"revoke\w*|ttl|lifetime|secret)\b"
        ),
        strings=True,
        anchors=(
            "token",
            "bearer",
            "jw",
            "json",
            "jose",
        ),
    ),
    Detector(
        "auth",
        "claim validation",
        _words(
            r"""['"](exp|nbf|iat|iss|aud|azp|jti|sub)['"]|\b(leeway|verify_(exp|nbf|iat|iss|aud|"""
            r"""jti|sub|at_hash)|require_(exp|iat|nbf)|audiences?|issuers?|claims?|"""
            r"""expires_at|not_before|clock_skew)\b"""
        ),
        strings=True,
        anchors=(
            "exp",
            "nbf",
            "iat",
            "iss",
            "aud",
            "azp",
            "jti",
            "sub",
            "leeway",
            "verify_",
            "require_",
            "claim",
            "before",
            "clock",
        ),
    ),
    Detector(
        "auth",
        "session cookie",
        _words(
            r"\b(set_cookie|delete_cookie|set_signed_cookie|session_?cookie\w*|session_?id|"
            r"http_?only|same_?site|secure_?cookie\w*|cookie_?(secure|http_?only|same_?site|domain|"
            r"path|age)|csrf\w*|xsrf\w*|request\.session|session_(key|store|engine|serializer|"
            r"backend|interface)|session\[)"
        ),
        anchors=(
            "cookie",
            "session",
            "csrf",
            "xsrf",
            "http",
            "same",
            "secure",
        ),
    ),
    Detector(
        "auth",
        "login flow",
        _words(
            r"\b(login|logout|log_in|log_out|sign_?in|sign_?out|authenticat\w*|re_?authenticat\w*|"
            r"impersonat\w*|mfa|totp|hotp|otp|two_?factor|2fa|web_?authn|pass_?keys?|magic_?link|"
            r"remember_me|lockout|brute_?force|connection_init\w*|connection_ack\w*)\b"
        ),
        anchors=(
            "log",
            "sign",
            "authenticat",
            "impersonat",
            "mfa",
            "totp",
            "hotp",
            "otp",
            "factor",
            "2fa",
            "authn",
            "pass",
            "magic",
            "remember",
            "lockout",
            "brute",
            "connection",
        ),
    ),
    Detector(
        "auth",
        "OAuth, OIDC or redirect validation",
        _words(
            r"\b(oauth2?|oidc|open_?id|redirect_uris?|allowed_redirect\w*|code_verifier|"
            r"code_challenge\w*|pkce|authorization_(endpoint|code|url|server)|token_endpoint|"
            r"jwks_uri|id_token\w*|nonce|client_?id|grant_?type|response_type|introspect\w*|"
            r"saml\w*|sso|sanitize_redirect|safe_redirect\w*|is_safe_url|allowed_hosts|"
            r"url_has_allowed_host\w*|validate_redirect\w*|redirect_(is_)?(allowed|valid|safe)\w*|"
            r"open_redirect\w*|is_\w*redirect\w*|same_origin\w*|is_same_origin|strip_auth\w*|"
            r"rebuild_auth|should_strip_auth)\b"
        ),
        anchors=(
            "oauth",
            "oidc",
            "open",
            "redirect",
            "verifier",
            "challenge",
            "pkce",
            "authoriz",
            "token",
            "jwks",
            "nonce",
            "client",
            "grant",
            "response",
            "introspect",
            "saml",
            "sso",
            "safe",
            "allowed",
            "origin",
            "strip",
            "rebuild",
        ),
    ),
    Detector(
        "auth",
        "password hashing",
        _words(
            r"\b(bcrypt|argon2\w*|scrypt|pbkdf2(_hmac)?|hashpw|check_password|make_password|"
            r"set_password|verify_password|password_hash\w*|hash_password|password_hasher\w*)\b"
        ),
        anchors=(
            "bcrypt",
            "argon",
            "scrypt",
            "pbkdf",
            "hashpw",
            "password",
            "hasher",
        ),
    ),
    # crypto
    Detector(
        "crypto",
        "TLS verification",
        _words(
            r"\bverify\s*[:=](?!=)|\bself\.verify\b|['\"]verify['\"]|\b(verify_?(ssl|tls|certs?|"
            r"mode|hostname|peer)|ssl_?verify\w*|tls_?verify\w*|insecure\w*|skip_?verify|"
            r"cert_?reqs|cert_none|cert_optional|cert_required|check_?hostname|assert_?hostname|"
            r"assert_?fingerprint|server_?hostname|ca_?certs?\w*|ca_?bundle|ca_?file|ca_?path|"
            r"ca_?data|certifi|ssl_\w+|\w+_ssl|tls_\w+|\w+_tls|ssl|tls|create_default_context|"
            r"create_urllib3_context|load_verify_locations|load_cert_chain|cert_?file|key_?file|"
            r"client_?cert\w*|reject_?unauthorized|x509\w*|sslmode|min_?version|tlsv1\w*|"
            r"protocol_tls\w*|pinned_?cert\w*|cert_?pin\w*|hostname_?verifier|trust_?manager\w*|"
            r"trust_?store)\b"
        ),
        strings=True,
        anchors=(
            "verify",
            "ssl",
            "tls",
            "insecure",
            "cert",
            "hostname",
            "fingerprint",
            "ca_",
            "cafile",
            "capath",
            "cadata",
            "cabundle",
            "context",
            "keyfile",
            "key_file",
            "reject",
            "x509",
            "min_version",
            "minversion",
            "pinned",
            "trust",
        ),
    ),
    Detector(
        "crypto",
        "signature or constant-time check",
        _words(
            r"\b(hmac\w*|compare_digest|constant_?time\w*|timing_?safe\w*|secure_?compare|"
            r"safe_str_cmp|signatures?|signers?|signing\w*|sign_\w+|\w+_sign|verify_?signature\w*|"
            r"signed_?(cookie|url|payload|data|request|value)\w*|itsdangerous|webhook_?secret|"
            r"un_?sign\w*|sig_?header|x-hub-signature\S*|verification_hash\w*)\b|\.sign\(|"
            r"\.verify\("
        ),
        guard=_rx(
            r"\binspect\.signature|__signature__|\bSignature\(|\.parameters\b|"
            r"\bsignature_?(help|info|text|string)|type_?signature|method_?signature|"
            r"func\w*_signature|call_?signature"
        ),
        anchors=(
            "hmac",
            "compare",
            "constant",
            "timing",
            "cmp",
            "sig",
            "itsdangerous",
            "webhook",
            "verification",
            "verify",
        ),
    ),
    Detector(
        "crypto",
        "key handling",
        _words(
            r"\b(private_?keys?|public_?keys?|secret_?key\w*|signing_?keys?|encryption_?keys?|"
            r"master_?keys?|key_?pairs?|generate_?(private_)?key\w*|keygen|key_?rotation|"
            r"rotate_?keys?|kms\w*|jwks?|pem\w*|pkcs\d*\w*|pkey|load_pem\w*|load_der\w*|"
            r"serialization\.|key_?derivation|kdf|hkdf|salt\w*|nonce_?size|key_?size)\b|"
            r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----"
        ),
        anchors=(
            "private",
            "public",
            "secret",
            "sig",
            "encryption",
            "master",
            "pair",
            "generate",
            "keygen",
            "rotation",
            "rotate",
            "kms",
            "jwk",
            "pem",
            "pkcs",
            "pkey",
            "load_der",
            "serialization",
            "derivation",
            "kdf",
            "salt",
            "nonce",
            "key_size",
            "keysize",
            "-----begin",
        ),
    ),
    Detector(
        "crypto",
        "cryptographic primitive or secure randomness",
        _words(
            r"\b(AES|RSA|ECDSA|ECDH|DSA|Ed25519|Ed448|X25519|ChaCha20|Poly1305|Fernet|PKCS\d*|"
            r"GCM|CBC|OAEP|secure_?random|get_?random_?values|random_?bytes|urandom|"
            r"system_?random|secrets\.\w+)\b|"
            r"\b(\w*(encrypt|decrypt)\w*\s*\(|\.(en|de)crypt\w*|cipher\w*|cryptography|hazmat|"
            r"nacl|libsodium|sodium|openssl|crypto\.subtle|create_?cipheriv|create_?decipheriv|"
            r"create_?hmac|create_?sign|create_?verify|javax\.crypto|bouncy_?castle|"
            r"crypto/rand|crypto/tls|crypto/x509|crypto/hmac|x/crypto)\b"
        ),
        anchors=(
            "aes",
            "rsa",
            "ecdsa",
            "ecdh",
            "dsa",
            "ed25519",
            "ed448",
            "x25519",
            "chacha",
            "poly1305",
            "fernet",
            "pkcs",
            "gcm",
            "cbc",
            "oaep",
            "random",
            "secrets.",
            "crypt",
            "cipher",
            "hazmat",
            "nacl",
            "sodium",
            "openssl",
            "hmac",
            "sign",
            "verify",
            "bouncy",
        ),
    ),
    Detector(
        "crypto",
        "hash used for a secret",
        _words(r"\b(sha\d+|md5|blake2\w*|sha3_\w+|hashlib\.\w+|digest)\b"),
        check=lambda code: bool(SECRET_WORDS.search(code)),
        anchors=(
            "sha",
            "md5",
            "blake",
            "hashlib",
            "digest",
        ),
    ),
    # payments
    Detector(
        "payments",
        "payment gateway",
        _words(
            r"\b(stripe\w*|braintree|adyen|paypal\w*|razorpay|klarna|mollie|authorize_?net|"
            r"worldpay|paddle|chargebee|recurly|plaid|checkout_?com|square_?up|gocardless|"
            r"payment_?(gateway|provider|processor|intent|method|source)\w*)\b"
        ),
        anchors=(
            "stripe",
            "braintree",
            "adyen",
            "paypal",
            "razorpay",
            "klarna",
            "mollie",
            "authorize",
            "worldpay",
            "paddle",
            "chargebee",
            "recurly",
            "plaid",
            "checkout",
            "square",
            "gocardless",
            "payment",
        ),
    ),
    Detector(
        "payments",
        "money movement",
        _words(
            r"\b(refunds?|refunded|refunding|refund_(amount|payment|order|line|total|charge|"
            r"request|item|reason)s?|charges?\.|create_charge|capture_payment|\.capture\(|"
            r"captured_amount|payouts?\w*|invoices?|store_?credit\w*|gift_?cards?|vouchers?|"
            r"bank_?transfer\w*|iban|sepa|wire_?transfer|chargebacks?|settlements?|payments?|"
            r"pay|paid|amount_(due|paid|captured|refunded|authorized|charged)|"
            r"balance_?(due|after|before)|ledger_?entr\w*|debit\w*|withdraw\w*)\b"
        ),
        guard=PAGE_NAMES,
        anchors=(
            "refund",
            "charge",
            "capture",
            "payout",
            "invoice",
            "credit",
            "gift",
            "voucher",
            "transfer",
            "iban",
            "sepa",
            "settle",
            "pay",
            "paid",
            "amount",
            "balance",
            "ledger",
            "debit",
            "withdraw",
        ),
    ),
    Detector(
        "payments",
        "amount arithmetic",
        MONEY_HINT,
        guard=UI_TEXT,
        check=_money_arithmetic,
        anchors=(
            "amount",
            "price",
            "balance",
            "subtotal",
            "tax",
            "vat",
            "discount",
            "fee",
            "refund",
            "debit",
            "currency",
            "money",
            "cent",
            "payable",
            "surcharge",
            "paid",
            "payment",
            "payout",
            "invoice",
            "wallet",
            "withdraw",
        ),
    ),
    Detector(
        "payments",
        "card data",
        _words(
            r"\b(card_?number\w*|card_?num|bank_?card\w*|cvv2?|cvc2?|luhn\w*|exp_?month|exp_?year|"
            r"card_?expir\w*|credit_?cards?|cc_?(number|num|exp)\w*|card_?holder\w*|track_?data|"
            r"primary_account_number|card_?brand|bin_?range|mask_?card\w*|last4)\b"
        ),
        anchors=(
            "card",
            "cvv",
            "cvc",
            "luhn",
            "exp",
            "cc",
            "primary_account",
            "bin",
            "last4",
        ),
    ),
    # infra
    Detector(
        "infra",
        "Kubernetes workload",
        _rx(
            r"^\s*kind:\s*(Deployment|StatefulSet|DaemonSet|Job|CronJob|Pod|ReplicaSet|Ingress|"
            r"Service|ServiceAccount|Role|ClusterRole|RoleBinding|ClusterRoleBinding|NetworkPolicy|"
            r"Secret|ConfigMap|PodSecurityPolicy|HorizontalPodAutoscaler|Gateway|HTTPRoute|"
            r"VirtualService|PodDisruptionBudget)\b|^\s*(securityContext|runAsUser|runAsNonRoot|"
            r"privileged|hostNetwork|hostPID|serviceAccountName|automountServiceAccountToken|"
            r"capabilities|allowPrivilegeEscalation|secretKeyRef|imagePullSecrets)\s*:",
            re.MULTILINE,
        ),
        files=YAML_FILES,
        snake=False,
        anchors=(
            "kind:",
            "securitycontext",
            "runasuser",
            "runasnonroot",
            "privileged",
            "hostnetwork",
            "hostpid",
            "serviceaccountname",
            "automountserviceaccounttoken",
            "capabilities",
            "allowprivilegeescalation",
            "secretkeyref",
            "imagepullsecrets",
        ),
    ),
    Detector(
        "infra",
        "IAM or cloud identity",
        _rx(
            r"""['"](Action|Effect|Principal|NotAction|NotPrincipal)['"]\s*:|\b(iam|sts):"""
            r"""[A-Za-z*]+|\bresource\s+['"](aws|google|azurerm|kubernetes|helm)_\w*iam\w*|"""
            r"""\bworkload_?identity\w*|\bid-token:\s*write|\baws-actions/configure-aws-"""
            r"""credentials|\bgoogle-github-actions/auth"""
        ),
        strings=True,
        snake=False,
        anchors=(
            "action",
            "effect",
            "principal",
            "iam",
            "sts:",
            "workload",
            "id-token",
            "configure-aws",
            "google-github-actions",
        ),
    ),
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
DOCUMENTING = _rx(
    r"^\s*[-+]?\s*['\"]?(description|title|summary|help|label|name|"
    r"display_name)['\"]?\s*[=:]"
)


def _snippet(text: str) -> str:
    """Shorten a line for a reason's evidence."""
    text = text.strip()
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"


def _reason(
    view: FileView, sign: str, number: int, text: str, what: str, matched: str, category: str
) -> Reason:
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
    anchors: Any  # an Aho-Corasick automaton of every anchor: anchor -> its detectors


_RULES: dict[int, tuple[Policy, RuleSet]] = {}
SEARCH_BUDGET_S = 0.05  # one search by a repo-supplied pattern; a pattern over it is dropped


class BudgetedPattern:
    """Search with a repo-supplied pattern under a time budget (the ``regex`` engine's timeout).

    Load-time checks (``policies.loading.risky_regex``) refuse the patterns known to
    backtrack; this bounds the ones they miss. A search over budget counts as no match, and
    the pattern is dropped for the rest of the process: one tenant's rule can cost a dispatch
    at most ``SEARCH_BUDGET_S``, never the minutes a catastrophic pattern would.
    """

    def __init__(self, pattern: str) -> None:
        """Compile the pattern with ``regex``, which takes a timeout per search."""
        import regex

        self.pattern = pattern
        self._compiled = regex.compile(pattern)
        self.tripped = False

    def search(self, text: str) -> Any:
        """Return the first match, or None (also when the budget ran out)."""
        if self.tripped:
            return None
        try:
            return self._compiled.search(text, timeout=SEARCH_BUDGET_S)
        except TimeoutError:
            self.tripped = True
            log.warning(
                "repo content pattern dropped: over its time budget",
                extra={"pattern": self.pattern[:60], "budget_s": SEARCH_BUDGET_S},
            )
            return None


def rules(policy: Policy) -> RuleSet:
    """Compile the policy's content rules beside the built-ins, once per policy object."""
    hit = _RULES.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    scoped: list[tuple[Detector, GlobSet]] = []
    own: list[Detector] = []
    operator = policy.operator_sensitive
    for category, rule_set in policy.sensitive.items():
        own_rules = operator.get(category) if operator is not None else rule_set
        kept = {r.pattern for r in own_rules.content} if own_rules is not None else set()
        for rule in rule_set.content:
            engine: Any = (
                re.compile(rule.pattern) if rule.pattern in kept else BudgetedPattern(rule.pattern)
            )
            detector = Detector(category, "policy rule", engine)
            (scoped.append((detector, GlobSet(rule.paths))) if rule.paths else own.append(detector))
    detectors = DETECTORS + tuple(own)
    automaton = ahocorasick.Automaton()
    for word in {w for d in detectors for w in d.anchors}:
        automaton.add_word(word, tuple(i for i, d in enumerate(detectors) if word in d.anchors))
    automaton.make_automaton()
    paths = tuple((matcher.category, matcher.paths) for matcher in compiled(policy).categories)
    result = RuleSet(detectors, tuple(scoped), paths, automaton)
    if len(_RULES) > 16:
        _RULES.clear()
    _RULES[id(policy)] = (policy, result)
    return result


def sensitive(evidence: Evidence, policy: Policy) -> Iterator[Reason]:
    """Yield a reason for each sensitive construct in the code of the diff's changed lines."""
    ruleset = rules(policy)
    for change in evidence.files:
        if change.binary and anatomy.role_of(change.path) not in anatomy.QUIET_ROLES:
            yield from _paths(anatomy.FileView(change, "source"), ruleset)
    unread, files = 0, 0
    for view in anatomy.views(evidence.files, SCAN_BUDGET_LINES):
        if view.role in anatomy.QUIET_ROLES or view.role == "lock":
            continue
        if deps.is_manifest(view.change.path) and view.role != "deploy":
            continue  # a manifest is judged by the packages it bumps, below
        if IGNORE_FILES.search(view.change.path):
            continue  # .gitignore and .dockerignore list paths; `*.pem` there is no key
        if view.unread:
            unread, files = unread + view.change.changed_lines, files + 1
            continue
        fired: set[str] = set()
        for name, reason in _scan(view, ruleset):
            fired.add(name)
            yield reason
        yield from _scopes(view, ruleset, fired)
        yield from _deploy(view)
        yield from _paths(view, ruleset)
    if unread:
        # Past the budget a diff is far over every tier's window anyway; reading on would
        # cost seconds, and skipping quietly could miss a sensitive change.
        yield Reason(
            "sensitive_content",
            f"{unread} changed lines in {files} more files were not read for sensitive code "
            f"(past the first {SCAN_BUDGET_LINES:,}): routed as sensitive to be safe",
        )
    yield from _bumps(evidence, policy)


def _scan(view: FileView, ruleset: RuleSet) -> Iterator[tuple[str, Reason]]:
    """Yield (detector name, reason) for the first confirmed hit of each detector in a file.

    One Aho-Corasick pass finds every detector anchor in the file's changed lines; only the lines that
    hold one are matched, and only against the detectors their anchors stand for.
    """
    # Imports name a module; the lines that use it carry the behaviour.
    lines = [line for line in view.changed() if not IMPORT.match(line[2])]
    if not lines:
        return
    candidates: dict[int, set[int]] = {}
    found = ruleset.anchors.iter
    for row, (_, _, text) in enumerate(lines):
        hits = {i for _, indexes in found(text.lower()) for i in indexes}
        if hits:
            candidates[row] = hits
    detectors = list(ruleset.detectors)
    for detector in [d for d in detectors if not d.anchors] + _unanchored(view, ruleset):
        if detector not in detectors:
            detectors.append(detector)
        for row, (_, _, text) in enumerate(lines):
            if detector.pattern.search(text):
                candidates.setdefault(row, set()).add(detectors.index(detector))
    fired: set[int] = set()
    for row in sorted(candidates):
        pending = [detectors[i] for i in sorted(candidates[row] - fired)]
        sign, number, text = lines[row]
        for detector, reason in _confirm(view, pending, sign, number, text):
            fired.add(detectors.index(detector))
            yield detector.name, reason


def _unanchored(view: FileView, ruleset: RuleSet) -> list[Detector]:
    """Return the policy's own rules that apply to this file (they carry no anchors)."""
    return [d for d, globs in ruleset.scoped if globs.match(view.change.path)]


def _confirm(
    view: FileView, pending: Iterable[Detector], sign: str, number: int, text: str
) -> list[tuple[Detector, Reason]]:
    """Return the detectors whose construct is in this line's code (lexing it if needed)."""
    hits: list[tuple[Detector, Reason]] = []
    lexed = None
    for detector in pending:
        if view.role == "deploy" and detector.category != "infra":
            continue  # deploy config is infra: `permissions:` in a workflow is no auth check
        raw = detector.pattern.search(text)
        if raw is None and (not detector.snake or detector.pattern.search(snake(text)) is None):
            continue
        if detector.files is not None and not detector.files.search(view.change.path):
            continue
        lexed = lexed or view.line(sign, number, text, raw.end() if raw else None)
        if lexed.kind != "code" or IMPORT.match(lexed.code):
            return hits
        # Values are the point of config files; in source, words inside strings are prose.
        whole = detector.strings or view.role in ("config", "deploy")
        code = lexed.code if whole else lexed.bare
        match = detector.pattern.search(snake(code) if detector.snake else code)
        if match is None or not _holds(detector, lexed.code):
            continue
        reason = _reason(view, sign, number, text, detector.name, match.group(0), detector.category)
        hits.append((detector, reason))
    return hits


def _scopes(view: FileView, ruleset: RuleSet, fired: set[str]) -> Iterator[Reason]:
    """Yield hits on the function or class a changed line sits in.

    A change inside `def sanitize_redirect(...)` or `def validate_payment_event(...)` is a
    change to that check even when no changed line names it.
    """
    done = set(fired)
    matches: dict[str, list[tuple[Detector, str]]] = {}
    for sign, number, text, scope in view.scoped():
        if scope not in matches:
            matches[scope] = _scope_hits(ruleset, scope)
        hits = [(d, m) for d, m in matches[scope] if d.name not in done]
        if not hits:
            continue
        lexed = view.line(sign, number, text)
        if lexed.kind != "code" or IMPORT.match(lexed.code) or TELEMETRY.search(lexed.code):
            continue
        for detector, matched in hits:
            done.add(detector.name)
            yield Reason(
                "sensitive_content",
                f"{view.change.path}:{number} {sign}'{_snippet(text)}' inside "
                f"'{_snippet(scope)}' {detector.name}: '{matched}'",
                detector.category,
            )


def _scope_hits(ruleset: RuleSet, scope: str) -> list[tuple[Detector, str]]:
    """Return the detectors that recognise a def or class line, with what they matched."""
    found = []
    for detector in ruleset.detectors:
        if not detector.snake or detector.files is not None:
            continue
        match = detector.pattern.search(snake(scope))
        if match is not None and _holds(detector, scope):
            found.append((detector, match.group(0).strip()))
    return found


def _holds(detector: Detector, code: str) -> bool:
    """Apply a detector's guard, its extra check and the telemetry rule to a line's code."""
    if detector.guard is not None and detector.guard.search(code):
        return False
    if detector.check is not None and not detector.check(code):
        return False
    return not (
        detector.category == "payments" and detector.name != "card data" and TELEMETRY.search(code)
    )


def _deploy(view: FileView) -> Iterator[Reason]:
    """Yield one infra reason for a deploy file whose changed code does more than document."""
    if view.role != "deploy":
        return
    what = next((name for rx, name in DEPLOY_KINDS if rx.search(view.change.path)), "deploy config")
    for sign, number, text, code in _config_lines(view):
        if DOCUMENTING.search(code) or _prose(code):
            continue
        yield Reason(
            "sensitive_content",
            f"{view.change.path}:{number} {sign}'{_snippet(text)}' {what} changed",
            "infra",
        )
        return


def _config_lines(view: FileView) -> Iterator[tuple[str, int, str, str]]:
    """Yield a deploy file's changed code and bare-value lines ("ec2:DescribeInstances",)."""
    for sign, number, text in view.changed():
        lexed = view.line(sign, number, text)
        if lexed.kind == "code" or (lexed.kind == "string" and not _prose(text)):
            yield sign, number, text, lexed.code or text


def _prose(code: str) -> bool:
    """Tell whether a config line is a quoted sentence (a wrapped description), not a value."""
    stripped = code.strip().rstrip(",")
    quoted = len(stripped) > 1 and stripped[0] in "'\"" and stripped[-1] == stripped[0]
    return quoted and " " in stripped


def _paths(view: FileView, ruleset: RuleSet) -> Iterator[Reason]:
    """Yield a reason when a sensitive path's file has changed code beyond telemetry."""
    change = view.change
    if MARKUP.search(change.path) or view.role == "deploy":
        return  # page templates are copy; deploy files are infra by their role
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
    for bump, category in deps.sensitive_bumps(evidence.files, policy):
        yield Reason(
            "sensitive_dependency",
            f"{bump.path}:{bump.line} {bump.name} {bump.old} → {bump.new}: a {category} package",
            category,
        )
