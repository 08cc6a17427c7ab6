"""Talk to GitHub's REST API as the App and as its installations; the one module importing PyGithub.

Everything leaves this module as a frozen dataclass defined here, never as a PyGithub
object, and every failure leaves it as a ``bot.kernel.errors.GitHubError``. ``decipher`` is
the one place that maps an HTTP answer to that tree. ``RetryPolicy`` owns all waiting:
PyGithub's own retries and throttling are switched off so the policy is ours and tests
can count it (https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, TypeVar

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from github import Auth, Github, GithubException, InputGitTreeElement
from github.CheckRun import CheckRun
from github.IssueComment import IssueComment
from github.PullRequest import PullRequest
from github.Repository import Repository

from bot.kernel.errors import (
    ConfigError,
    GitHubError,
    GitHubNotFound,
    GitHubPermission,
    GitHubTransient,
    GitHubValidation,
    InputError,
    RateLimited,
)
from bot.kernel.settings import Settings
from workers import posts, redaction
from workers.retry import Backoff, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.github.com"
ACTIONS_BOT_LOGIN = "github-actions[bot]"
USER_AGENT = "cibot"
API_VERSION = "2022-11-28"
# GitHub tokens live an hour; refresh 5 minutes early so no call starts with a dying token.
TOKEN_REFRESH_MARGIN = 300.0
LOG_CHUNK_SIZE = 64 * 1024
# Comment bodies and check-run output fields are capped at 65,536 characters by GitHub.
MAX_TEXT_CHARS = 65_000
MAX_PAGES = 30  # of 100 items: a list read stops there
TRUNCATED_NOTE = "\n\n_(truncated: the full text exceeded GitHub's size limit)_"
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
PERMISSIONS = ("admin", "maintain", "write", "triage", "read", "none")
REVIEW_EVENTS = ("COMMENT", "APPROVE", "REQUEST_CHANGES")
CHECK_STATUSES = ("queued", "in_progress", "completed")
CHECK_CONCLUSIONS = (
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "timed_out",
)
FAILED_STEP_CONCLUSIONS = ("failure", "timed_out")
_REPO_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

_STATUS_ERRORS: dict[int, type[GitHubError]] = {
    401: GitHubPermission,
    403: GitHubPermission,
    404: GitHubNotFound,
}
# The operator's fix for each answer: in the error's message and in the log line's `fix`.
_STATUS_HINTS: dict[int, str] = {
    401: "check CIBOT_GITHUB_APP_ID and the private key; the App key may be revoked (generate "
    "a new one on the App's settings page), or the token expired, or this host's clock is off",
    403: "the App lacks a permission for this call: compare the App's permissions with "
    ".github/app-manifest.json and accept any pending permission request on the installation",
    404: "not found: the repository, pull request or object does not exist, or the App is not "
    "installed on that repository",
    422: "GitHub rejected the request as invalid",
}


# ---------------------------------------------------------------- plain results


@dataclass(frozen=True)
class PullInfo:
    """Describe one pull request."""

    number: int
    title: str
    body: str
    author: str
    author_is_bot: bool
    draft: bool
    state: str
    merged: bool
    head_sha: str
    head_ref: str
    base_ref: str
    base_sha: str
    labels: tuple[str, ...]
    default_branch: str
    head_repo: str = ""


@dataclass(frozen=True)
class FileInfo:
    """Describe one changed file of a pull request; ``patch`` is None for binary or huge files."""

    path: str
    previous_path: str | None
    status: str
    additions: int
    deletions: int
    patch: str | None


@dataclass(frozen=True)
class CheckRunInfo:
    """Describe one check run on a commit."""

    id: int
    name: str
    status: str
    conclusion: str | None
    external_id: str
    app_id: int | None = None


@dataclass(frozen=True)
class JobInfo:
    """Describe one Actions job of a workflow run and the names of its failed steps."""

    id: int
    name: str
    status: str
    conclusion: str | None
    failed_steps: tuple[str, ...]


@dataclass(frozen=True)
class CommentInfo:
    """Describe one issue comment."""

    id: int
    body: str
    author: str


@dataclass(frozen=True)
class ReviewCommentInfo:
    """Describe one line comment of a pull request review; ``line`` is None when outdated."""

    id: int
    path: str
    line: int | None
    body: str
    author: str


@dataclass(frozen=True)
class LineCommentInfo:
    """Describe one review line comment with its thread, anchor and reaction counts.

    ``original_*`` fields name the lines as they were in ``original_commit_id``, the commit
    the comment was written on; ``line`` is None once a later push made it outdated.
    """

    id: int
    review_id: int | None
    in_reply_to_id: int | None
    path: str
    line: int | None
    start_line: int | None
    original_line: int | None
    original_start_line: int | None
    original_commit_id: str
    body: str
    author: str
    reactions: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ReviewComment:
    """Describe one line comment to post in a review; ``start_line`` makes it multi-line."""

    path: str
    line: int
    side: str = "RIGHT"
    body: str
    start_line: int | None = None


# ---------------------------------------------------------------- errors and waiting


def decipher(
    status: int, headers: Mapping[str, str], message: str, *, now: float, attempt: int = 1
) -> GitHubError:
    """Map one GitHub error answer to the exception tree; rate limits carry their wait."""
    lower = {key.lower(): value for key, value in headers.items()}
    text = f"GitHub answered {status}: {message or 'no message'}"
    if status == 429 or (status == 403 and _is_rate_limit(lower, message)):
        wait = _rate_limit_wait(lower, now)
        # Without headers GitHub asks for at least a minute, growing on repeats.
        retry_after = wait if wait is not None else 60.0 * 2 ** (attempt - 1)
        return RateLimited(f"{text} (rate limited)", status=status, retry_after=retry_after)
    if status >= 500:
        return GitHubTransient(f"{text} (GitHub-side error, retried)", status=status)
    error_class = _STATUS_ERRORS.get(status, GitHubValidation)
    hint = _STATUS_HINTS.get(status)
    return error_class(f"{text} ({hint})" if hint else text, status=status)


def _is_rate_limit(headers: Mapping[str, str], message: str) -> bool:
    """Tell a rate-limit 403 from a permission 403."""
    if "retry-after" in headers or headers.get("x-ratelimit-remaining") == "0":
        return True
    return "rate limit" in message.lower()


def _rate_limit_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Return the seconds GitHub's headers ask us to wait, or None when they say nothing."""
    # https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api
    try:
        if "retry-after" in headers:
            return max(float(headers["retry-after"]), 0.0)
        if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
            # One second of slack covers clock skew between us and GitHub.
            return max(float(headers["x-ratelimit-reset"]) - now, 0.0) + 1.0
    except ValueError:
        return None
    return None


def _translate(exc: Exception, *, now: float, attempt: int) -> GitHubError:
    """Turn a PyGithub, httpx or socket exception into the exception tree."""
    if isinstance(exc, GithubException):
        return decipher(exc.status, exc.headers or {}, _message(exc.data), now=now, attempt=attempt)
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        return decipher(
            response.status_code,
            response.headers,
            _response_message(response),
            now=now,
            attempt=attempt,
        )
    return GitHubTransient(
        f"GitHub is unreachable ({type(exc).__name__}: {exc}); check the network and "
        "CIBOT_GITHUB_API_URL",
        status=0,
    )


def _message(data: Any) -> str:
    """Pull GitHub's ``message`` out of an error body."""
    if isinstance(data, dict):
        return str(data.get("message", ""))
    return str(data or "")


def _response_message(response: httpx.Response) -> str:
    """Read GitHub's error message from an httpx response."""
    try:
        return _message(response.json())
    except ValueError:
        return response.text[:200]


RATE_LIMIT_FIX = (
    "the installation is rate limited; cibot waits as long as GitHub asks. If it happens "
    "often, turn off tasks the repos do not use or spread the work over time"
)
SERVER_ERROR_FIX = (
    "GitHub answered with a server error; cibot retries with backoff. If it persists, "
    "check https://www.githubstatus.com"
)
UNREACHABLE_FIX = "check the network, any HTTPS_PROXY, and CIBOT_GITHUB_API_URL"


def operator_fix(error: GitHubError) -> str:
    """Return what an operator should do about a failed GitHub call."""
    if isinstance(error, RateLimited):
        return RATE_LIMIT_FIX
    if isinstance(error, GitHubTransient):
        return UNREACHABLE_FIX if error.status == 0 else SERVER_ERROR_FIX
    return _STATUS_HINTS.get(error.status, "read GitHub's message in `error`")


def _failure_level(error: GitHubError, expected: Collection[int]) -> int:
    """Log refused credentials or permissions at ERROR, other failures at WARNING.

    A status the caller expects (a 404 for a file that may be absent) is an answer, not a
    failure: DEBUG.
    """
    if error.status in expected:
        return logging.DEBUG
    return logging.ERROR if isinstance(error, GitHubPermission) else logging.WARNING


_RAW_ERRORS = (GithubException, httpx.HTTPError, OSError)


def _failure_fields(error: GitHubError) -> dict[str, object]:
    """Return the log fields of a failed call: status, kind, GitHub's words and the fix."""
    return {
        "status": error.status,
        "error_kind": type(error).__name__,
        "error": str(error).replace(f" ({_STATUS_HINTS.get(error.status)})", "")[:300],
        "fix": operator_fix(error),
    }


# A rate-limit wait over the cap is the caller's to schedule (RateLimited.retry_after).
GITHUB_BACKOFF = Backoff(base=1.0, cap=120.0, attempts=4)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retry rate limits and 5xx answers with bounded, jittered waits; fail fast on the rest."""

    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    backoff: Backoff = GITHUB_BACKOFF

    def run(
        self,
        call: Callable[[], T],
        *,
        context: Mapping[str, object],
        expected: Collection[int] = (),
    ) -> T:
        """Run ``call``, waiting and retrying as the policy allows; raise a GitHubError.

        A failure is logged with its HTTP status and the operator's fix; ``expected``
        statuses (an absent file's 404) are logged at DEBUG only.
        """

        def pause(exc: Exception, attempt: int) -> float:
            error = _translate(exc, now=self.clock(), attempt=attempt)
            wait = self.wait_before_retry(error, attempt)
            fields = {**context, **_failure_fields(error), "call_attempt": attempt}
            if wait is None:
                log.log(_failure_level(error, expected), "github call failed", extra=fields)
                raise error from exc
            log.warning("github call retried", extra={**fields, "wait_s": round(wait, 3)})
            return wait

        return retrying(call, on=_RAW_ERRORS, pause=pause, sleep=self.sleep)

    def wait_before_retry(self, error: GitHubError, attempt: int) -> float | None:
        """Return the seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if isinstance(error, RateLimited) and error.retry_after > self.backoff.cap:
            return None
        if isinstance(error, RateLimited | GitHubTransient):
            return self.backoff.pause(error, attempt)
        return None


# ---------------------------------------------------------------- the App


@dataclass(frozen=True)
class _Token:
    """Hold one installation token and when it expires (epoch seconds)."""

    value: str = field(repr=False)
    expires_at: float


class GitHubApp:
    """Authenticate as the GitHub App and hand out per-installation clients."""

    def __init__(
        self,
        *,
        app_id: str,
        private_key: str,
        base_url: str = DEFAULT_BASE_URL,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        bot_login: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Check the App id and key now, so a bad key fails at startup, not mid-task."""
        self.app_id = _require_app_id(app_id)
        self.base_url = base_url.rstrip("/")
        self._auth = _app_auth(self.app_id, private_key)
        self._policy = RetryPolicy(sleep=sleep, clock=clock)
        self._clock = clock
        self._timeout = timeout
        self._http = _http_client(self.base_url, timeout)
        self._tokens: dict[int, _Token] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._bot_login = bot_login

    @classmethod
    def from_settings(cls, settings: Settings) -> GitHubApp:
        """Build the App from CIBOT_GITHUB_APP_ID, the private key and CIBOT_GITHUB_API_URL."""
        if not settings.github_private_key:
            raise ConfigError(
                "the GitHub App's private key is missing: set CIBOT_GITHUB_PRIVATE_KEY_FILE to "
                "the .pem file downloaded from the App's settings page",
                key="CIBOT_GITHUB_PRIVATE_KEY_FILE",
                source="environment",
            )
        default_login = {f.name: f.default for f in fields(Settings)}["bot_login"]
        return cls(
            app_id=settings.github_app_id,
            private_key=settings.github_private_key,
            base_url=settings.github_api_url,
            bot_login=None if settings.bot_login == default_login else settings.bot_login,
        )

    def installation_token(self, *, installation_id: int) -> str:
        """Return a token for the installation, minting one when none is cached or it is near expiry."""
        # One lock per installation: a slow or rate-limited mint for one installation
        # never holds up another, and concurrent callers of one installation mint once.
        with self._lock_for(installation_id):
            cached = self._tokens.get(installation_id)
            if cached is None or self._clock() >= cached.expires_at - TOKEN_REFRESH_MARGIN:
                cached = self._policy.run(
                    lambda: self._mint(installation_id),
                    context={"installation_id": installation_id, "operation": "mint_token"},
                )
                self._tokens[installation_id] = cached
            return cached.value

    def forget_token(self, *, installation_id: int) -> None:
        """Drop the cached token, e.g. after GitHub refused it, so the next call mints anew."""
        with self._lock_for(installation_id):
            self._tokens.pop(installation_id, None)

    def _lock_for(self, installation_id: int) -> threading.Lock:
        """Return the lock that serializes minting for one installation."""
        with self._locks_guard:
            return self._locks.setdefault(installation_id, threading.Lock())

    def bot_login(self) -> str:
        """Return the login the App's comments carry (``<slug>[bot]``), asking GitHub once."""
        if self._bot_login is None:
            data = self._policy.run(lambda: self._app_get("/app"), context={"operation": "get_app"})
            self._bot_login = f"{data['slug']}[bot]"
        return self._bot_login

    def client(self, *, installation_id: int) -> GitHubClient:
        """Return a client acting as one installation; tokens refresh behind it."""
        return GitHubClient(
            token=lambda: self.installation_token(installation_id=installation_id),
            forget_token=lambda: self.forget_token(installation_id=installation_id),
            base_url=self.base_url,
            bot_login=self.bot_login,
            app_id=int(self.app_id) if self.app_id.isdigit() else None,
            installation_id=installation_id,
            policy=self._policy,
            timeout=self._timeout,
            http=self._http,
        )

    def close(self) -> None:
        """Close the App's HTTP connections."""
        self._http.close()

    def _mint(self, installation_id: int) -> _Token:
        """Exchange a fresh JWT for an installation token (one POST)."""
        response = self._http.post(
            f"/app/installations/{installation_id}/access_tokens",
            headers={"Authorization": f"Bearer {self._auth.create_jwt()}"},
        )
        response.raise_for_status()
        try:
            data = response.json()
            token = _Token(
                value=str(data["token"]),
                expires_at=datetime.fromisoformat(str(data["expires_at"])).timestamp(),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GitHubTransient(
                "GitHub's access-token answer had no usable token or expires_at",
                status=response.status_code,
            ) from exc
        log.info(
            "installation token minted",
            extra={"installation_id": installation_id, "expires_at": data["expires_at"]},
        )
        return token

    def _app_get(self, path: str) -> dict[str, Any]:
        """GET an App-level endpoint with a JWT."""
        response = self._http.get(
            path, headers={"Authorization": f"Bearer {self._auth.create_jwt()}"}
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


def _require_app_id(app_id: str) -> str:
    """Return the App id as text or explain how to set it."""
    text = str(app_id).strip()
    if not text:
        raise ConfigError(
            "CIBOT_GITHUB_APP_ID is not set: copy the App ID from the GitHub App's settings page",
            key="CIBOT_GITHUB_APP_ID",
            source="environment",
        )
    return text


def _app_auth(app_id: str, private_key: str) -> Auth.AppAuth:
    """Build PyGithub's App JWT signer around a key parsed once (parsing costs ~40 ms)."""
    try:
        key = serialization.load_pem_private_key(private_key.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _bad_key() from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _bad_key()

    def sign(claims: dict[str, Any]) -> str:
        return jwt.encode(claims, key, algorithm="RS256")

    return Auth.AppAuth(app_id, sign_func=sign)


def _bad_key() -> ConfigError:
    """Explain how to fix an unusable App key."""
    return ConfigError(
        "the GitHub App private key is not a usable RSA PEM key: download a new key from the "
        "App's settings page and point CIBOT_GITHUB_PRIVATE_KEY_FILE at it",
        key="CIBOT_GITHUB_PRIVATE_KEY_FILE",
        source="environment",
    )


def _host(url: str) -> str:
    """Return the lower-case host of a URL (a GitHub Enterprise API base)."""
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def _http_client(base_url: str, timeout: float) -> httpx.Client:
    """Build the httpx client used for the calls PyGithub does not cover.

    These calls are rare (token mints, diffs, logs), so no idle connection is kept: an
    App object that lives as long as the process then never holds a socket open.
    """
    return httpx.Client(
        base_url=base_url,
        timeout=timeout,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        },
    )


# ---------------------------------------------------------------- one installation


class _DynamicToken(Auth.Auth):
    """Give PyGithub the current installation token on every request."""

    def __init__(self, token: Callable[[], str]) -> None:
        """Keep the function that returns a live token."""
        self._token = token

    @property
    def token_type(self) -> str:
        """Return GitHub's scheme for installation tokens."""
        return "token"

    @property
    def token(self) -> str:
        """Return a live token."""
        return self._token()


class GitHubClient:
    """Act on repositories as one installation (or with one plain token in Actions mode)."""

    def __init__(
        self,
        *,
        token: Callable[[], str],
        base_url: str = DEFAULT_BASE_URL,
        bot_login: Callable[[], str] | str = ACTIONS_BOT_LOGIN,
        app_id: int | None = None,
        installation_id: int | None = None,
        forget_token: Callable[[], None] | None = None,
        policy: RetryPolicy | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """Wire PyGithub with its retries and throttling off; our policy does the waiting.

        ``http`` (for diffs and logs) may be shared with the App; it is then not closed here.
        """
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._forget = forget_token
        self._bot_login = bot_login
        self._app_id = app_id
        self._installation_id = installation_id
        self._policy = policy or RetryPolicy()
        self._gh = Github(
            auth=_DynamicToken(token),
            base_url=self.base_url,
            timeout=max(1, int(timeout)),
            user_agent=USER_AGENT,
            per_page=100,
            retry=None,
            seconds_between_requests=None,
            seconds_between_writes=None,
            lazy=True,
        )
        self._owns_http = http is None
        self._http = http or _http_client(self.base_url, timeout)
        # What the post scan took out of this client's posts, by kind (the ledger counts it).
        self.removed: Counter[str] = Counter()

    @classmethod
    def from_token(
        cls,
        *,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        bot_login: str = ACTIONS_BOT_LOGIN,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> GitHubClient:
        """Build a client from a plain token, such as the GITHUB_TOKEN of an Actions job."""
        if not token:
            raise ConfigError(
                "the GitHub token is empty: pass GITHUB_TOKEN to the step",
                key="GITHUB_TOKEN",
                source="environment",
            )
        return cls(
            token=lambda: token,
            base_url=base_url,
            bot_login=bot_login,
            policy=RetryPolicy(sleep=sleep, clock=clock),
        )

    def clone_url(self, repo: str) -> str:
        """Return an HTTPS git URL for ``repo`` carrying the live token.

        The token is a secret: callers pass it to git through its environment, never on a
        command line or in a log (see workers.jobs.tests.fetch_commit).
        """
        _check_repo(repo)
        api = self.base_url
        # github.com's API lives on its own host; Enterprise serves it under /api/v3.
        web = "https://github.com" if api == DEFAULT_BASE_URL else api.removesuffix("/api/v3")
        scheme, _, host = web.partition("://")
        return f"{scheme}://x-access-token:{self._token()}@{host}/{repo}.git"

    def close(self) -> None:
        """Close the client's HTTP connections."""
        self._gh.close()
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> GitHubClient:
        """Use the client as a context manager."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the client."""
        self.close()

    # ------------------------------------------------------------ plumbing

    def _call(
        self, operation: str, repo: str, call: Callable[[], T], *, expected: Collection[int] = ()
    ) -> T:
        """Run one logical operation under the retry policy; re-mint once on a refused token.

        ``expected`` lists statuses the caller turns into an answer (404: the file is absent).
        """
        context = {"installation_id": self._installation_id, "repo": repo, "operation": operation}
        # A 401 the client can heal by minting a new token is not yet worth an ERROR line.
        first = (*expected, 401) if self._forget is not None else expected
        try:
            return self._policy.run(call, context=context, expected=first)
        except GitHubPermission as exc:
            if exc.status != 401 or self._forget is None:
                raise
            log.info("github token refused; minting a new one", extra=context)
            self._forget()
            return self._policy.run(call, context=context, expected=expected)

    def _repo(self, repo: str) -> Repository:
        """Return a lazy PyGithub repository (no request is made)."""
        return self._gh.get_repo(_check_repo(repo))

    def _pull(self, repo: str, number: int) -> PullRequest:
        """Return a lazy PyGithub pull request (no request is made)."""
        return self._repo(repo).get_pull(number)

    def _comment(self, repo: str, comment_id: int) -> IssueComment:
        """Return a lazy PyGithub issue comment (no request is made)."""
        path = f"/repos/{_check_repo(repo)}/issues/comments/{comment_id}"
        return IssueComment(self._gh.requester, url=path)

    def _login(self) -> str:
        """Return the login the bot's own comments carry."""
        return self._bot_login if isinstance(self._bot_login, str) else self._bot_login()

    def _auth_header(self) -> dict[str, str]:
        """Return the Authorization header for httpx calls."""
        return {"Authorization": f"token {self._token()}"}

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        """Send one JSON request through PyGithub's requester, for shapes PyGithub lacks."""
        _, data = self._gh.requester.requestJsonAndCheck(method, path, input=body)
        return data

    # ------------------------------------------------------------ reads

    def pull(self, repo: str, number: int) -> PullInfo:
        """Return one pull request (one GET)."""
        return self._call("pull", repo, lambda: _pull_info(self._pull(repo, number)))

    def pull_files(self, repo: str, number: int) -> list[FileInfo]:
        """Return the pull request's changed files with their patches."""
        return self._call(
            "pull_files",
            repo,
            lambda: [_file_info(f) for f in self._pull(repo, number).get_files()],
        )

    def pull_diff(self, repo: str, number: int) -> str:
        """Return the pull request as one unified diff (GitHub caps it at 20,000 lines)."""

        def fetch() -> str:
            response = self._http.get(
                f"/repos/{_check_repo(repo)}/pulls/{number}",
                headers={**self._auth_header(), "Accept": "application/vnd.github.diff"},
            )
            response.raise_for_status()
            return response.text

        return self._call("pull_diff", repo, fetch)

    def pull_commits(self, repo: str, number: int) -> list[str]:
        """Return the SHAs of the pull request's commits, oldest first."""
        return self._call(
            "pull_commits", repo, lambda: [c.sha for c in self._pull(repo, number).get_commits()]
        )

    def check_runs(self, repo: str, sha: str) -> list[CheckRunInfo]:
        """Return the check runs on a commit."""
        return self._call(
            "check_runs",
            repo,
            lambda: [_check_info(r) for r in self._repo(repo).get_commit(sha).get_check_runs()],
        )

    def workflow_jobs(self, repo: str, run_id: int) -> list[JobInfo]:
        """Return the jobs of one workflow run (latest attempt) with their failed steps."""
        return self._call(
            "workflow_jobs",
            repo,
            lambda: [_job_info(j) for j in self._repo(repo).get_workflow_run(run_id).jobs()],
        )

    def job_log(self, repo: str, job_id: int) -> Iterator[bytes]:
        """Stream one job's log in chunks, following GitHub's redirect to the log storage."""
        response = self._call("job_log", repo, lambda: self._open_log(repo, job_id))
        return _Chunks(response, LOG_CHUNK_SIZE)

    def _open_log(self, repo: str, job_id: int) -> httpx.Response:
        """Ask for the log URL, then stream the signed URL it redirects to without our token."""
        path = f"/repos/{_check_repo(repo)}/actions/jobs/{job_id}/logs"
        first = self._stream(self._http.build_request("GET", path, headers=self._auth_header()))
        if not first.is_redirect:
            return first
        first.close()
        # The location is a short-lived signed URL: it needs no token, so none is sent.
        target = first.url.join(first.headers["location"])
        return self._stream(httpx.Request("GET", target, headers={"User-Agent": USER_AGENT}))

    def _stream(self, request: httpx.Request) -> httpx.Response:
        """Send a request whose body is read later; raise at once on an error status."""
        response = self._http.send(request, stream=True, follow_redirects=False)
        if response.is_error:
            response.read()
            response.close()
            response.raise_for_status()
        return response

    def permission(self, repo: str, user: str) -> str:
        """Return the user's role on the repo: admin, maintain, write, triage, read or none."""
        path = f"/repos/{_check_repo(repo)}/collaborators/{urllib.parse.quote(user, safe='')}/permission"
        try:
            data = self._call("permission", repo, lambda: self._api("GET", path), expected=(404,))
        except GitHubNotFound:
            return "none"
        role = str(data.get("role_name") or "")
        level = role if role in PERMISSIONS else str(data.get("permission") or "none")
        return level if level in PERMISSIONS else "none"

    def default_branch_file(self, repo: str, path: str) -> str | None:
        """Return a text file from the default branch, or None when it is absent."""
        try:
            content = self._call(
                "default_branch_file",
                repo,
                lambda: self._repo(repo).get_contents(path),
                expected=(404,),
            )
        except GitHubNotFound:
            return None
        if isinstance(content, list):
            return None
        if content.encoding != "base64":
            raise InputError(f"{path} in {repo} is too large to read through the contents API")
        return content.decoded_content.decode("utf-8", errors="replace")

    def tree_paths(self, repo: str, sha: str) -> list[str]:
        """List every file path of the commit ``sha`` (its recursive git tree)."""

        def fetch() -> list[str]:
            repository = self._repo(repo)
            tree = repository.get_git_commit(sha).tree.sha
            entries = repository.get_git_tree(tree, recursive=True).tree
            return [entry.path for entry in entries if entry.type == "blob"]

        return list(self._call("tree_paths", repo, fetch))

    def file_at(self, repo: str, path: str, *, ref: str) -> str | None:
        """Return a text file as it is at ``ref``, or None when it is absent or too large."""
        try:
            content = self._call(
                "file_at",
                repo,
                lambda: self._repo(repo).get_contents(path, ref=ref),
                expected=(404,),
            )
        except GitHubNotFound:
            return None
        if isinstance(content, list) or content.encoding != "base64":
            return None
        return content.decoded_content.decode("utf-8", errors="replace")

    def find_comment(self, repo: str, number: int, marker: str) -> CommentInfo | None:
        """Return the bot's own comment on the PR that carries ``marker``, if any."""
        login = self._login()
        return self._call("find_comment", repo, lambda: self._find(repo, number, marker, login))

    def _find(self, repo: str, number: int, marker: str, login: str) -> CommentInfo | None:
        """Scan the PR's issue comments authored by the bot for the marker."""
        _check_marker(marker)
        for comment in self._repo(repo).get_issue(number).get_comments():
            if comment.user.login == login and marker in (comment.body or ""):
                return CommentInfo(id=comment.id, body=comment.body, author=login)
        return None

    def comment_reactions(self, repo: str, comment_id: int) -> dict[str, int]:
        """Count each reaction on an issue comment, e.g. ``{"+1": 2, "-1": 0, ...}``."""

        def count() -> dict[str, int]:
            totals = dict.fromkeys(REACTIONS, 0)
            for reaction in self._comment(repo, comment_id).get_reactions():
                totals[reaction.content] = totals.get(reaction.content, 0) + 1
            return totals

        return self._call("comment_reactions", repo, count)

    def review_comments(self, repo: str, number: int) -> list[ReviewCommentInfo]:
        """Return the PR's existing line comments."""
        return self._call(
            "review_comments",
            repo,
            lambda: [
                _review_comment_info(c) for c in self._pull(repo, number).get_review_comments()
            ],
        )

    def line_comments(self, repo: str, number: int) -> list[LineCommentInfo]:
        """Return the PR's line comments with their review, thread and reaction counts.

        The reaction roll-up comes with each comment in the list, so one paged GET reads
        the 👍/👎 of every comment (https://docs.github.com/en/rest/pulls/comments).
        """
        path = f"/repos/{_check_repo(repo)}/pulls/{number}/comments"
        return self._call(
            "line_comments", repo, lambda: [_line_comment_info(c) for c in self._pages(path)]
        )

    def _pages(self, path: str) -> Iterator[dict[str, Any]]:
        """Yield the raw items of a paged list, at most ``MAX_PAGES`` of 100.

        Raw JSON, not PyGithub objects: reading a key GitHub leaves out (``in_reply_to_id``
        on a thread's first comment) would make PyGithub fetch each item once more.
        """
        for page in range(1, MAX_PAGES + 1):
            _, items = self._gh.requester.requestJsonAndCheck(
                "GET", path, parameters={"per_page": 100, "page": page}
            )
            chunk = (
                [item for item in items if isinstance(item, dict)]
                if isinstance(items, list)
                else []
            )
            yield from chunk
            if len(chunk) < 100:
                return

    def branch_head(self, repo: str, branch: str) -> str | None:
        """Return the SHA a branch points at, or None when there is no such branch."""
        quoted = urllib.parse.quote(branch, safe="/")
        path = f"/repos/{_check_repo(repo)}/git/ref/heads/{quoted}"
        try:
            data = self._call("branch_head", repo, lambda: self._api("GET", path), expected=(404,))
        except GitHubNotFound:
            return None
        target = data.get("object") if isinstance(data, dict) else None
        sha = target.get("sha") if isinstance(target, dict) else None
        return sha if isinstance(sha, str) else None

    # ------------------------------------------------------------ writes

    def _clean(self, kind: str, repo: str, body: str) -> str:
        """Strip secrets, images, foreign links and raw HTML from text about to be posted.

        Every post may carry model output, which is untrusted: a model may echo a secret
        it saw in the diff, and an injected PR can make it write an image that leaks what
        it saw to another host (workers/posts.py, workers/redaction.py).
        """
        api = self.base_url
        hosts = frozenset() if api == DEFAULT_BASE_URL else frozenset({_host(api)})
        hidden = redaction.redact(body)
        cleaned = posts.sanitize(hidden.text, allowed_hosts=hosts)
        removed = {**cleaned.removed(), **{f"secret_{k}": n for k, n in hidden.counts.items()}}
        if removed:
            log.warning("removed from a post", extra={"call": kind, "repo": repo, **removed})
            self.removed.update(removed)
        return cleaned.text

    def upsert_comment(self, repo: str, number: int, *, marker: str, body: str) -> int:
        """Edit the bot's comment carrying ``marker``, or create it; return its id."""
        _check_marker(marker)
        body = self._clean("upsert_comment", repo, body)
        text = _fit(body if marker in body else f"{body}\n\n{marker}", marker)
        login = self._login()

        def upsert() -> int:
            existing = self._find(repo, number, marker, login)
            if existing is None:
                return int(self._repo(repo).get_issue(number).create_comment(text).id)
            if existing.body != text:
                self._comment(repo, existing.id).edit(text)
            return existing.id

        return self._call("upsert_comment", repo, upsert)

    def create_review(
        self,
        repo: str,
        number: int,
        *,
        commit_sha: str,
        body: str,
        comments: Sequence[ReviewComment],
        event: str = "COMMENT",
    ) -> int:
        """Post one review with all its line comments in a single API call; return its id."""
        if event not in REVIEW_EVENTS:
            raise InputError(f"review event {event!r} is not one of {', '.join(REVIEW_EVENTS)}")
        comments = [replace(c, body=self._clean("create_review", repo, c.body)) for c in comments]
        payload = {
            "commit_id": commit_sha,
            "body": self._clean("create_review", repo, body),
            "event": event,
            "comments": [_review_comment_payload(c) for c in comments],
        }
        path = f"/repos/{_check_repo(repo)}/pulls/{number}/reviews"
        data = self._call("create_review", repo, lambda: self._api("POST", path, payload))
        return int(data["id"])

    def upsert_check_run(
        self,
        repo: str,
        *,
        head_sha: str,
        name: str,
        status: str,
        conclusion: str | None,
        title: str,
        summary: str,
        text: str = "",
        external_id: str = "",
    ) -> int:
        """Update this App's check run of that name on the commit, or create it; return its id."""
        _check_run_state(status, conclusion)
        summary, text = (self._clean("upsert_check_run", repo, t) for t in (summary, text))
        output: dict[str, str | list[dict[str, str | int]]] = {
            "title": title[:255] or name,
            "summary": _fit(summary or title or name, ""),
        }
        if text:
            output["text"] = _fit(text, "")
        state = {
            "status": status,
            "conclusion": conclusion,
            "output": output,
            "external_id": external_id,
        }

        def upsert() -> int:
            existing = self._own_check_run(repo, head_sha, name)
            if existing is not None:
                existing.edit(**_set_only(state))
                return int(existing.id)
            created = self._repo(repo).create_check_run(name, head_sha, **_set_only(state))
            return int(created.id)

        return self._call("upsert_check_run", repo, upsert)

    def _own_check_run(self, repo: str, head_sha: str, name: str) -> CheckRun | None:
        """Return this App's check run named ``name`` on the commit, if there is one."""
        runs = self._repo(repo).get_commit(head_sha).get_check_runs(check_name=name)
        for run in runs:
            if self._app_id is None or (run.app is not None and run.app.id == self._app_id):
                return run
        return None

    def add_reaction(self, repo: str, *, comment_id: int, content: str) -> None:
        """React to an issue comment, e.g. ``eyes`` to acknowledge a command."""
        if content not in REACTIONS:
            raise InputError(f"reaction {content!r} is not one of {', '.join(REACTIONS)}")
        self._call(
            "add_reaction",
            repo,
            lambda: self._comment(repo, comment_id).create_reaction(content),
        )

    def push_files(
        self, repo: str, *, branch: str, base_sha: str, files: Mapping[str, str], message: str
    ) -> str:
        """Point ``branch`` at one new commit on ``base_sha`` holding ``files``; return its SHA.

        The branch is created, or force-moved when it exists, so a retried job leaves the
        same result. The repository's default branch is refused.
        """
        _check_push(branch, files)
        return self._call(
            "push_files", repo, lambda: self._push(repo, branch, base_sha, files, message)
        )

    def _push(
        self, repo: str, branch: str, base_sha: str, files: Mapping[str, str], message: str
    ) -> str:
        """Write blobs, tree and commit through the git data API, then move the ref."""
        target = self._repo(repo)
        if branch == target.default_branch:
            raise InputError(f"refusing to push generated files to {repo}'s default branch")
        base = target.get_git_commit(base_sha)
        elements = [
            InputGitTreeElement(path, "100644", "blob", content=text)
            for path, text in sorted(files.items())
        ]
        tree = target.create_git_tree(elements, base_tree=base.tree)
        commit = target.create_git_commit(message, tree, [base])
        self._move_ref(repo, branch, commit.sha)
        return str(commit.sha)

    def _move_ref(self, repo: str, branch: str, sha: str) -> None:
        """Create the branch at ``sha``, or force it there when it already exists."""
        refs = f"/repos/{_check_repo(repo)}/git/refs"
        try:
            self._api("POST", refs, {"ref": f"refs/heads/{branch}", "sha": sha})
        except GithubException as exc:
            if exc.status != 422:
                raise
            quoted = urllib.parse.quote(branch, safe="/")
            self._api("PATCH", f"{refs}/heads/{quoted}", {"sha": sha, "force": True})


# ---------------------------------------------------------------- helpers


class _Chunks(Iterator[bytes]):
    """Yield a streamed body as it arrives, in pieces of at most ``size`` bytes; close at the end."""

    def __init__(self, response: httpx.Response, size: int) -> None:
        """Take ownership of an open streaming response."""
        self._response = response
        self._size = size
        # iter_bytes() without a size yields whatever the socket delivered, without
        # waiting to fill a buffer; __next__ slices it down to ``size``.
        self._arrivals = response.iter_bytes()
        self._pending = b""

    def __next__(self) -> bytes:
        """Return the next piece; a broken stream becomes GitHubTransient."""
        while not self._pending:
            self._pending = self._receive()
        piece, self._pending = self._pending[: self._size], self._pending[self._size :]
        return piece

    def _receive(self) -> bytes:
        """Read what the network delivered next; close and stop at the end."""
        try:
            return next(self._arrivals)
        except StopIteration:
            self.close()
            raise
        except httpx.HTTPError as exc:
            self.close()
            raise GitHubTransient(f"the job log stream broke off ({exc})") from exc

    def close(self) -> None:
        """Release the connection."""
        self._response.close()


def _check_repo(repo: str) -> str:
    """Return ``owner/name`` or raise InputError."""
    if not _REPO_NAME.match(repo):
        raise InputError(f"{repo!r} is not a repository name of the form owner/name")
    return repo


def _check_marker(marker: str) -> None:
    """Require a hidden HTML-comment marker such as ``<!-- cibot:summary -->``."""
    if not (marker.startswith("<!--") and marker.endswith("-->") and len(marker) > 7):
        raise InputError(f"comment marker {marker!r} must be a hidden HTML comment <!-- ... -->")


def _check_run_state(status: str, conclusion: str | None) -> None:
    """Reject a status/conclusion pair GitHub would refuse."""
    if status not in CHECK_STATUSES:
        raise InputError(f"check run status {status!r} is not one of {', '.join(CHECK_STATUSES)}")
    if conclusion is not None and conclusion not in CHECK_CONCLUSIONS:
        raise InputError(
            f"check run conclusion {conclusion!r} is not one of {', '.join(CHECK_CONCLUSIONS)}"
        )
    if status == "completed" and conclusion is None:
        raise InputError("a completed check run needs a conclusion")


def _check_push(branch: str, files: Mapping[str, str]) -> None:
    """Reject an unusable branch name or file path before anything is written."""
    if not branch or branch.startswith(("refs/", "/")) or ".." in branch or " " in branch:
        raise InputError(f"{branch!r} is not a usable branch name")
    if not files:
        raise InputError("push_files needs at least one file")
    for path in files:
        parts = path.split("/")
        if not path or path.startswith("/") or ".." in parts or "" in parts:
            raise InputError(f"{path!r} is not a relative file path inside the repository")


def _fit(text: str, marker: str) -> str:
    """Cut text to GitHub's size limit, keeping the marker at the end."""
    if len(text) <= MAX_TEXT_CHARS:
        return text
    tail = f"{TRUNCATED_NOTE}\n\n{marker}" if marker else TRUNCATED_NOTE
    return text[: MAX_TEXT_CHARS - len(tail)] + tail


def _set_only(values: Mapping[str, Any]) -> dict[str, Any]:
    """Drop empty values, which PyGithub must not send."""
    return {key: value for key, value in values.items() if value not in (None, "")}


def _review_comment_payload(comment: ReviewComment) -> dict[str, object]:
    """Shape one review comment for POST /pulls/{n}/reviews."""
    payload: dict[str, object] = {
        "path": comment.path,
        "line": comment.line,
        "side": comment.side,
        "body": comment.body,
    }
    if comment.start_line is not None:
        payload["start_line"] = comment.start_line
        payload["start_side"] = comment.side
    return payload


def _pull_info(pull: PullRequest) -> PullInfo:
    """Copy the fields cibot needs out of a PyGithub pull request."""
    head_repo = pull.head.repo
    return PullInfo(
        number=pull.number,
        title=pull.title or "",
        body=pull.body or "",
        author=pull.user.login,
        author_is_bot=pull.user.type == "Bot",
        draft=bool(pull.draft),
        state=pull.state,
        merged=bool(pull.merged),
        head_sha=pull.head.sha,
        head_ref=pull.head.ref,
        base_ref=pull.base.ref,
        base_sha=pull.base.sha,
        labels=tuple(label.name for label in pull.labels),
        default_branch=pull.base.repo.default_branch,
        head_repo=head_repo.full_name if head_repo is not None else "",
    )


def _file_info(file: Any) -> FileInfo:
    """Copy one changed file out of a PyGithub File."""
    return FileInfo(
        path=file.filename,
        previous_path=file.previous_filename,
        status=file.status,
        additions=file.additions,
        deletions=file.deletions,
        patch=file.patch,
    )


def _check_info(run: CheckRun) -> CheckRunInfo:
    """Copy one check run out of PyGithub."""
    return CheckRunInfo(
        id=run.id,
        name=run.name,
        status=run.status,
        conclusion=run.conclusion,
        external_id=run.external_id or "",
        app_id=run.app.id if run.app is not None else None,
    )


def _job_info(job: Any) -> JobInfo:
    """Copy one workflow job out of PyGithub, naming its failed steps."""
    failed = tuple(s.name for s in job.steps if s.conclusion in FAILED_STEP_CONCLUSIONS)
    return JobInfo(
        id=job.id, name=job.name, status=job.status, conclusion=job.conclusion, failed_steps=failed
    )


def _review_comment_info(comment: Any) -> ReviewCommentInfo:
    """Copy one review comment out of PyGithub."""
    return ReviewCommentInfo(
        id=comment.id,
        path=comment.path,
        line=comment.line,
        body=comment.body,
        author=comment.user.login,
    )


def _line_comment_info(item: Mapping[str, Any]) -> LineCommentInfo:
    """Copy one review comment, its thread links and its reaction counts out of its JSON."""
    rollup = item.get("reactions")
    counts = rollup if isinstance(rollup, dict) else {}
    user = item.get("user")
    return LineCommentInfo(
        id=int(item["id"]),
        review_id=_int_or_none(item.get("pull_request_review_id")),
        in_reply_to_id=_int_or_none(item.get("in_reply_to_id")),
        path=str(item.get("path") or ""),
        line=_int_or_none(item.get("line")),
        start_line=_int_or_none(item.get("start_line")),
        original_line=_int_or_none(item.get("original_line")),
        original_start_line=_int_or_none(item.get("original_start_line")),
        original_commit_id=str(item.get("original_commit_id") or item.get("commit_id") or ""),
        body=str(item.get("body") or ""),
        author=str(user.get("login") or "") if isinstance(user, dict) else "",
        reactions={k: _int_or_none(counts.get(k)) or 0 for k in REACTIONS},
    )


def _int_or_none(value: Any) -> int | None:
    """Return an integer JSON value, or None for null, absent or anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
