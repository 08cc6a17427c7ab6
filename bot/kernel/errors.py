"""Hold cibot's one exception tree.

Every error cibot raises on purpose derives from ``CibotError``; adapters translate
third-party exceptions into this tree with ``raise ... from exc``::

    CibotError
    ├── ConfigError              bad settings, policy or repo config (names key and file)
    ├── InputError               input the user gave us is unusable (not a diff, unknown task)
    │   └── NothingToDo          a job found nothing to work on (no failed CI, no bump); dropped
    ├── WebhookError             a delivery we refuse
    │   ├── SignatureError       missing, forged or wrong-algorithm signature   → 401
    │   ├── PayloadError         malformed JSON or missing headers               → 400
    │   └── PayloadTooLarge      body over the size limit                        → 413
    ├── GitHubError              GitHub answered with an error (carries status)
    │   ├── GitHubTransient      5xx, retried with jittered backoff
    │   ├── RateLimited          403/429 rate limit (carries ``retry_after`` seconds)
    │   ├── GitHubNotFound       404
    │   ├── GitHubPermission     401/403 that is not a rate limit
    │   └── GitHubValidation     422 and other 4xx: never retried
    ├── ModelError               a model call failed
    │   ├── ModelUnavailable     refused, timed out or 5xx: transient
    │   ├── InvalidOutput        reply failed schema/anchoring validation
    │   └── PrivateTierDown      every private endpoint is down and data must stay private
    ├── BudgetExhausted          the installation's frontier budget is spent
    └── SandboxError             generated tests could not be run

``TRANSIENT`` lists the classes a worker may retry; everything else fails fast.
``describe`` turns any exception into the one line a person reads (what failed, what to
do) and the exit code a command returns: 2 for bad input or configuration, 1 for work
that failed. Tracebacks belong in the debug log, never in that line.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass


class CibotError(Exception):
    """Base of every error cibot raises on purpose."""


class ConfigError(CibotError):
    """Reject a setting, policy or repo config; the message names the key and the file."""

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        """Keep the offending key and file so callers can report them."""
        super().__init__(message)
        self.key = key
        self.source = source


class InputError(CibotError):
    """Reject input the user supplied (a diff, a task name, a file)."""


class NothingToDo(InputError):
    """Stop a job that has nothing to work on; ``posted`` says whether it told the PR itself."""

    def __init__(self, message: str, *, posted: bool = False) -> None:
        """Keep whether the job already posted its own reply."""
        super().__init__(message)
        self.posted = posted


class WebhookError(CibotError):
    """Refuse a webhook delivery; ``status`` is the HTTP answer."""

    status = 400


class SignatureError(WebhookError):
    """Refuse a delivery whose signature is missing, forged or of the wrong algorithm."""

    status = 401


class PayloadError(WebhookError):
    """Refuse a delivery with malformed JSON or missing headers."""

    status = 400


class PayloadTooLarge(WebhookError):
    """Refuse a delivery whose body exceeds the size limit."""

    status = 413


class GitHubError(CibotError):
    """Report an error answer from GitHub."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        """Keep the HTTP status for logs and retry decisions."""
        super().__init__(message)
        self.status = status


class GitHubTransient(GitHubError):
    """Report a 5xx or connection failure from GitHub; safe to retry."""


class RateLimited(GitHubError):
    """Report a primary or secondary rate limit; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, status: int = 403, retry_after: float = 60.0) -> None:
        """Keep how long GitHub asked us to wait."""
        super().__init__(message, status=status)
        self.retry_after = retry_after


class GitHubNotFound(GitHubError):
    """Report a 404 from GitHub."""


class GitHubPermission(GitHubError):
    """Report a 401 or non-rate-limit 403 from GitHub."""


class GitHubValidation(GitHubError):
    """Report a 422 or other 4xx from GitHub; never retried."""


class ModelError(CibotError):
    """Report a failed model call."""


class ModelUnavailable(ModelError):
    """Report a refused, timed-out or 5xx model endpoint; safe to retry or fall back."""


class InvalidOutput(ModelError):
    """Report a model reply that failed validation."""


class PrivateTierDown(ModelError):
    """Report that every private endpoint is down while the data must stay private."""


class BudgetExhausted(CibotError):
    """Report that the installation's monthly frontier budget is spent."""


class SandboxError(CibotError):
    """Report that generated tests could not be run in the sandbox."""


TRANSIENT: tuple[type[CibotError], ...] = (
    GitHubTransient,
    RateLimited,
    ModelUnavailable,
    PrivateTierDown,
)


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEBUG_HINT = "run again with CIBOT_LOG_LEVEL=debug to log the details"


@dataclass(frozen=True)
class Case:
    """One row of the table below: what failed (when the error says nothing), what to do."""

    kind: type[BaseException]
    summary: str
    hint: str
    exit_code: int


# Most specific first. The exception's own message says what failed (``summary`` stands in
# when it is empty); the hint is the next step. Built-in errors come last: they reached the
# edge without a cibot translation, so they are environment problems or bugs.
CASES: tuple[Case, ...] = (
    Case(NothingToDo, "nothing to work on", "", EXIT_OK),
    Case(ConfigError, "a setting is wrong", "fix that setting and run again", EXIT_BAD_INPUT),
    Case(
        InputError,
        "the input is unusable",
        "check the command's arguments (--help lists them) and run again",
        EXIT_BAD_INPUT,
    ),
    Case(
        WebhookError,
        "the delivery was refused",
        "check the webhook secret and the delivery's headers",
        EXIT_BAD_INPUT,
    ),
    Case(
        RateLimited,
        "GitHub's rate limit was hit",
        "wait a few minutes and run again",
        EXIT_FAILED,
    ),
    Case(
        GitHubPermission,
        "GitHub refused the token or App",
        "give it the permissions it needs (pull-requests: write, checks: write) and run again",
        EXIT_FAILED,
    ),
    Case(
        GitHubNotFound,
        "GitHub has no such repository or pull request",
        "check the repository and pull request number, and that the token or App can see it",
        EXIT_FAILED,
    ),
    Case(
        GitHubTransient,
        "GitHub did not answer",
        "GitHub is having trouble: run again in a few minutes",
        EXIT_FAILED,
    ),
    Case(GitHubError, "GitHub refused the request", DEBUG_HINT, EXIT_FAILED),
    Case(
        PrivateTierDown,
        "no private model answered and the data must stay private",
        "start the private model server (CIBOT_LOCAL_API_BASE) and run again; nothing was "
        "sent to an external model",
        EXIT_FAILED,
    ),
    Case(
        ModelUnavailable,
        "no model endpoint answered",
        "check that the tiers' model endpoints answer (CIBOT_<TIER>_API_BASE) and run again",
        EXIT_FAILED,
    ),
    Case(
        InvalidOutput,
        "the model's reply failed validation on every tier it was allowed",
        "run again, or comment `/cibot escalate frontier` on the PR for a stronger tier "
        "(`/cibot escalate human` once frontier has failed too)",
        EXIT_FAILED,
    ),
    Case(
        ModelError,
        "the model call failed",
        "check the policy's tiers and model endpoints, then run again",
        EXIT_FAILED,
    ),
    Case(
        BudgetExhausted,
        "the monthly external-model budget is spent",
        "raise budgets.monthly_frontier_usd in the policy, or wait for next month",
        EXIT_FAILED,
    ),
    Case(
        SandboxError,
        "the generated tests could not be run",
        "check that the project's tests run in the sandbox",
        EXIT_FAILED,
    ),
    Case(CibotError, "the work failed", DEBUG_HINT, EXIT_FAILED),
    Case(
        TimeoutError,
        "the work ran out of time",
        "run again, or allow it more time",
        EXIT_FAILED,
    ),
    Case(FileNotFoundError, "a file is missing", "check the path and run again", EXIT_BAD_INPUT),
    Case(PermissionError, "a file cannot be read", "check the file's permissions", EXIT_BAD_INPUT),
    Case(
        ConnectionError,
        "a service did not answer",
        "check that it is running and reachable, then run again",
        EXIT_FAILED,
    ),
)
UNEXPECTED = Case(
    Exception,
    "unexpected internal error",
    f"this is a bug in cibot: {DEBUG_HINT} and report the traceback",
    EXIT_FAILED,
)


@dataclass(frozen=True)
class Problem:
    """Say what failed, what to do about it, and the exit code, for a person to read."""

    what: str
    hint: str
    exit_code: int

    def line(self) -> str:
        """Return the one line to print: what failed; what to do."""
        return f"{self.what}; {self.hint}" if self.hint else self.what


def describe(exc: BaseException) -> Problem:
    """Map an exception to the one-line problem a person reads and the exit code."""
    what = scrub_class_names(_first_line(exc))
    case = next((c for c in CASES if isinstance(exc, c.kind)), UNEXPECTED)
    if case is UNEXPECTED:
        what = f"{case.summary} ({what})" if what else case.summary
    return Problem(what or case.summary, case.hint, case.exit_code)


def _first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message, without trailing punctuation."""
    text = str(exc).strip()
    return text.splitlines()[0].strip().rstrip(".:;,") if text else ""


def _class_names() -> list[str]:
    """Return the names of Python's built-in exceptions and of cibot's own tree."""
    names = {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    pending: list[type[BaseException]] = [CibotError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return sorted(names, key=len, reverse=True)


# A class name, perhaps dotted (httpx.ConnectError) and followed by ": ". Library classes
# are matched by shape: CamelCase ending in Error or Exception, or a CamelCase *Timeout.
_CLASS_NAME = re.compile(
    r"\b(?:[A-Za-z_]\w*\.)*(?:"
    + "|".join(map(re.escape, _class_names()))
    + r"|[A-Z][A-Za-z0-9]*(?:Error|Exception)|[A-Z][A-Za-z0-9]*[a-z]Timeout)\b(?::\s*)?"
)
MARK = "\x00"  # stands where a class name was, so tidying touches only those places
_TIDY = (
    (re.compile(rf"\(\s*{MARK}\s*\)"), ""),  # "(ValueError)" goes entirely
    (re.compile(rf"\s*[,;]\s*{MARK}(?=\))"), ""),  # "(timeout, ReadTimeout)" -> "(timeout)"
    (re.compile(rf"{MARK}\s*"), ""),
    (re.compile(r"\s{2,}"), " "),
)


def scrub_class_names(text: str) -> str:
    """Remove Python class names from text meant for a person: they tell a reader nothing."""
    text = _CLASS_NAME.sub(MARK, text.replace(MARK, ""))
    for pattern, replacement in _TIDY:
        text = pattern.sub(replacement, text)
    return text.strip().lstrip(":;, ").strip()
