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
"""

from __future__ import annotations


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
