"""Serve a stateful fake of GitHub's REST API on loopback, so real clients run against it.

The fake speaks the documented paths, JSON shapes, status codes, pagination (``Link``)
and authentication of https://docs.github.com/en/rest: an RS256 App JWT for
``/app/...``, installation tokens it issued itself everywhere else. It records every
request in ``calls`` and can inject faults (rate limits, 5xx, slow answers).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from unidiff import PatchSet

DOCS = "https://docs.github.com/rest"
ACTIONS_APP_ID = 15368
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
CHECK_STATUSES = ("queued", "in_progress", "completed", "waiting", "requested", "pending")
CHECK_CONCLUSIONS = (
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
)
LEGACY_PERMISSION = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
GHE_PREFIX = "/api/v3"
REPO = r"/repos/(?P<repo>[^/]+/[^/]+)"


@functools.lru_cache(maxsize=1)
def _shared_key() -> rsa.RSAPrivateKey:
    """Generate one RSA key per test process; fakes share it to keep start-up fast."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def generate_private_key_pem() -> str:
    """Return a fresh RSA private key as PEM text (for "signed with another key" tests)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pem(key)


def _pem(key: rsa.RSAPrivateKey) -> str:
    """Serialize a private key as PKCS#1 PEM, the format GitHub hands out."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def _now_iso(offset: float = 0.0) -> str:
    """Return a GitHub-style UTC timestamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


def _sha(*parts: object) -> str:
    """Return a 40-hex object id derived from the parts."""
    return hashlib.sha1(repr(parts).encode(), usedforsecurity=False).hexdigest()


def _blob_sha(data: bytes) -> str:
    """Return the blob id git itself would compute."""
    header = f"blob {len(data)}\0".encode()
    return hashlib.sha1(header + data, usedforsecurity=False).hexdigest()


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Call:
    """Record one request the fake received (path as sent, including any /api/v3 prefix)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class _Injection:
    """Describe a fault to serve instead of the real answer."""

    method: str
    pattern: re.Pattern[str]
    status: int
    headers: dict[str, str]
    times: int
    delay: float
    body: Any


@dataclass
class _Grant:
    """Describe an issued token: who it acts as and which repos it may touch."""

    installation_id: int | None
    repos: frozenset[str]
    expires_at: float
    login: str
    app_id: int
    app_slug: str


@dataclass
class _Pull:
    """Hold one pull request's state."""

    number: int
    title: str
    body: str
    author: str
    author_type: str
    draft: bool
    head_sha: str
    base_sha: str
    head_ref: str
    base_ref: str
    head_repo: str
    diff: str
    files: list[dict[str, Any]]
    labels: list[str]
    commits: list[str]
    state: str = "open"
    merged: bool = False
    requested_reviewers: list[str] = field(default_factory=list)


@dataclass
class _Repo:
    """Hold one repository's state, including a tiny git object store."""

    full_name: str
    id: int
    default_branch: str = "main"
    pulls: dict[int, _Pull] = field(default_factory=dict)
    comments: list[dict[str, Any]] = field(default_factory=list)
    reactions: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)
    review_comments: list[dict[str, Any]] = field(default_factory=list)
    check_runs: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[int, list[int]] = field(default_factory=dict)
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    permissions: dict[str, str] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)
    trees: dict[str, dict[str, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Request:
    """Hold one parsed request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    base: str
    host: str
    params: dict[str, str] = field(default_factory=dict)
    grant: _Grant | None = None


@dataclass
class _Response:
    """Hold one answer; ``chunks`` streams the body with chunked transfer encoding."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    chunks: Iterable[bytes] | None = None


class HTTPError(Exception):
    """Answer a request with a GitHub-style error body."""

    def __init__(self, status: int, message: str, errors: list[Any] | None = None) -> None:
        """Keep the status and GitHub's message."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors

    def response(self) -> _Response:
        """Render the error the way GitHub does."""
        body: dict[str, Any] = {
            "message": self.message,
            "documentation_url": DOCS,
            "status": str(self.status),
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return _Response(self.status, body)


# ---------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    """Hand every request to the fake."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK adds ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        """Serve any method through the fake's dispatcher."""
        self.server.fake._serve(self)

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet; ``calls`` is the record."""


class _Server(ThreadingHTTPServer):
    """Carry a reference to the fake for the handlers."""

    daemon_threads = True
    fake: FakeGitHub

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hung up (a timed-out test client), report anything else."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _query(query_string: str) -> dict[str, str]:
    """Parse a query string into its first values."""
    return {k: v[0] for k, v in urllib.parse.parse_qs(query_string).items()}


def _write(handler: BaseHTTPRequestHandler, response: _Response) -> None:
    """Send a response: JSON, raw bytes, or a chunked stream."""
    handler.send_response(response.status)
    for name, value in response.headers.items():
        handler.send_header(name, value)
    if response.chunks is not None:
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for chunk in response.chunks:
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
        return
    data = response.raw
    if data is None:
        data = b"" if response.body is None else json.dumps(response.body).encode()
        if response.body is not None:
            handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


# ---------------------------------------------------------------- the fake


class FakeGitHub:
    """Pretend to be GitHub (or GitHub Enterprise under /api/v3) on 127.0.0.1."""

    def __init__(self, *, app_id: str = "12345", app_slug: str = "cibot") -> None:
        """Create the App key and empty state; call start() to listen."""
        self.app_id = app_id
        self.app_slug = app_slug
        self.token_ttl = 3600.0
        self.log_chunk_size = 16 * 1024
        key = _shared_key()
        self.private_key_pem = _pem(key)
        self._public_key = key.public_key()
        self.calls: list[Call] = []
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._installations: dict[int, frozenset[str]] = {}
        self._grants: dict[str, _Grant] = {}
        self._injections: list[_Injection] = []
        self._raw_logs: dict[str, tuple[str, int]] = {}
        self._log_gate: threading.Event | None = None
        self._ids = iter(range(1000, 10**9))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._routes = self._route_table()

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Return the github.com-style base URL."""
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def ghe_url(self) -> str:
        """Return the GitHub Enterprise-style base URL (``/api/v3``)."""
        return self.url + GHE_PREFIX

    def start(self) -> FakeGitHub:
        """Listen on a free loopback port in a background thread."""
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and release the port."""
        if self._log_gate is not None:
            self._log_gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGitHub:
        """Start the fake as a context manager."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the fake."""
        self.stop()

    # ------------------------------------------------------------ state setup

    def add_installation(self, installation_id: int, repos: Sequence[str]) -> None:
        """Install the App on repos; its tokens may touch only these."""
        with self._lock:
            for name in repos:
                self._repo(name)
            self._installations[installation_id] = frozenset(repos)

    def add_token(
        self, token: str, repos: Sequence[str], *, login: str = "github-actions[bot]"
    ) -> None:
        """Accept a plain token for repos, like an Actions job's GITHUB_TOKEN."""
        with self._lock:
            for name in repos:
                self._repo(name)
            self._grants[token] = _Grant(
                None,
                frozenset(repos),
                time.time() + self.token_ttl,
                login,
                ACTIONS_APP_ID,
                "github-actions",
            )

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far, as if they had expired early."""
        with self._lock:
            self._grants.clear()

    def add_pull(
        self,
        repo: str,
        number: int,
        *,
        title: str = "",
        body: str = "",
        author: str = "alice",
        author_type: str = "User",
        draft: bool = False,
        head_sha: str | None = None,
        base_sha: str | None = None,
        head_ref: str | None = None,
        base_ref: str = "main",
        head_repo: str | None = None,
        diff: str = "",
        files: list[dict[str, Any]] | None = None,
        labels: Sequence[str] = (),
        commits: Sequence[str] | None = None,
        default_branch: str = "main",
    ) -> None:
        """Open a pull request; its files are derived from ``diff`` when not given."""
        with self._lock:
            state = self._repo(repo)
            state.default_branch = default_branch
            head = head_sha or _sha(repo, number, "head")
            base = base_sha or _sha(repo, number, "base")
            self._ensure_commit(state, base, [])
            self._ensure_commit(state, head, [base])
            ref = head_ref or f"feature-{number}"
            state.refs.setdefault(ref, head)
            state.pulls[number] = _Pull(
                number,
                title,
                body,
                author,
                author_type,
                draft,
                head,
                base,
                ref,
                base_ref,
                head_repo or repo,
                diff,
                files if files is not None else files_from_diff(diff),
                list(labels),
                list(commits) if commits else [head],
            )

    def close_pull(self, repo: str, number: int, *, merged: bool = False) -> None:
        """Close (and optionally merge) a pull request."""
        with self._lock:
            pull = self._repo(repo).pulls[number]
            pull.state, pull.merged = "closed", merged

    def add_comment(
        self, repo: str, number: int, body: str, *, author: str = "alice", author_type: str = "User"
    ) -> int:
        """Post an issue comment as someone else (a human typing a command); return its id."""
        with self._lock:
            return int(self._new_comment(self._repo(repo), number, body, author, author_type)["id"])

    def react(self, repo: str, comment_id: int, content: str, *, user: str = "alice") -> None:
        """Add a reaction as a user (a 👍 on the bot's issue comment or review line comment)."""
        with self._lock:
            self._repo(repo).reactions.append(
                {
                    "id": next(self._ids),
                    "comment_id": comment_id,
                    "content": content,
                    "login": user,
                    "user_type": "User",
                }
            )

    def add_line_comment(
        self,
        repo: str,
        number: int,
        body: str,
        *,
        path: str = "",
        line: int = 0,
        in_reply_to: int | None = None,
        author: str = "alice",
    ) -> dict[str, Any]:
        """Post a review line comment as a person, or a reply in a thread; return its JSON.

        A reply takes its thread's path and line, as GitHub's replies endpoint does.
        """
        with self._lock:
            state = self._repo(repo)
            pull = state.pulls[number]
            anchor = {"path": path, "line": line, "side": "RIGHT"}
            if in_reply_to is not None:
                first = next(c for c in state.review_comments if c["id"] == in_reply_to)
                anchor = {k: first[k] for k in ("path", "line", "side")}
            review = {"id": next(self._ids), "number": number, "login": author}
            comment = self._stored_review_comment(
                {**review, "commit_id": pull.head_sha}, {**anchor, "body": body}, {}
            )
            comment["in_reply_to_id"] = in_reply_to
            comment["user_type"] = "User"
            state.review_comments.append(comment)
            return self._review_comment_json(state, comment, self.url)

    def push_pull(
        self, repo: str, number: int, files: Mapping[str, str], *, message: str = "Update"
    ) -> str:
        """Push one commit changing ``files`` onto a pull request's head; return its SHA."""
        with self._lock:
            state = self._repo(repo)
            pull = state.pulls[number]
            tree = dict(state.trees[state.commits[pull.head_sha]["tree"]])
            for path, text in files.items():
                tree[path] = self._put_blob(state, text.encode())
            sha = self._put_commit(state, self._put_tree(state, tree), [pull.head_sha], message)
            pull.head_sha = state.refs[pull.head_ref] = sha
            pull.commits.append(sha)
            return sha

    def fast_forward(self, repo: str, number: int, sha: str) -> None:
        """Move a pull request's head to a commit on top of it, as ``git merge --ff-only``."""
        with self._lock:
            state = self._repo(repo)
            pull = state.pulls[number]
            if not self._descends(state, sha, pull.head_sha):
                raise ValueError(f"{sha[:12]} is not on top of the head of #{number}")
            pull.head_sha = state.refs[pull.head_ref] = sha
            pull.commits.append(sha)

    def set_permission(self, repo: str, user: str, level: str) -> None:
        """Give a user a role on the repo: admin, maintain, write, triage, read or none."""
        if level not in LEGACY_PERMISSION:
            raise ValueError(f"unknown permission level {level!r}")
        with self._lock:
            self._repo(repo).permissions[user] = level

    def set_file(self, repo: str, path: str, text: str, ref: str = "main") -> None:
        """Commit a file onto a branch (created from the default branch when missing)."""
        with self._lock:
            state = self._repo(repo)
            head = state.refs.get(ref) or state.refs[state.default_branch]
            tree = dict(state.trees[state.commits[head]["tree"]])
            tree[path] = self._put_blob(state, text.encode())
            state.refs[ref] = self._put_commit(
                state, self._put_tree(state, tree), [head], f"Update {path}"
            )

    def add_workflow_job(
        self,
        repo: str,
        run_id: int,
        *,
        job_id: int,
        name: str,
        conclusion: str,
        log: bytes,
        steps: Sequence[tuple[str, str]] | None = None,
        head_sha: str | None = None,
    ) -> None:
        """Add a finished Actions job to a run; ``steps`` are (name, conclusion) pairs."""
        if steps is None:
            steps = [
                ("Set up job", "success"),
                ("Run tests", conclusion),
                ("Complete job", "success"),
            ]
        with self._lock:
            state = self._repo(repo)
            state.runs.setdefault(run_id, []).append(job_id)
            state.jobs[job_id] = {
                "id": job_id,
                "run_id": run_id,
                "name": name,
                "conclusion": conclusion,
                "log": log,
                "steps": list(steps),
                "head_sha": head_sha or _sha(repo, run_id),
            }

    def hold_logs(self) -> threading.Event:
        """Pause log downloads after their first chunk until the returned event is set.

        A download still held after 5 seconds is cut short (see ``_log_chunks``).
        """
        self._log_gate = threading.Event()
        return self._log_gate

    # ------------------------------------------------------------ fault injection

    def inject(
        self,
        method: str,
        path_regex: str,
        *,
        status: int,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
        body: Any = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` after ``delay`` seconds.

        ``path_regex`` is searched in the path without any /api/v3 prefix; ``method`` may be
        ``*``. A status of 200 only delays the request and then serves it normally.
        """
        with self._lock:
            self._injections.append(
                _Injection(
                    method.upper(),
                    re.compile(path_regex),
                    status,
                    dict(headers or {}),
                    times,
                    delay,
                    body,
                )
            )

    # ------------------------------------------------------------ inspection

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        """Return the recorded calls whose method matches and whose path matches the regex."""
        pattern = re.compile(path_regex)
        with self._lock:
            return [c for c in self.calls if c.method == method.upper() and pattern.search(c.path)]

    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        """Return the PR's issue comments in GitHub's JSON shape."""
        with self._lock:
            state = self._repo(repo)
            return [
                self._comment_json(state, c, self.url)
                for c in state.comments
                if c["number"] == number
            ]

    def reviews(self, repo: str, number: int) -> list[dict[str, Any]]:
        """Return the PR's reviews, each with its line comments under ``comments``."""
        with self._lock:
            state = self._repo(repo)
            return [
                {
                    **self._review_json(state, r, self.url),
                    "comments": [
                        self._review_comment_json(state, c, self.url)
                        for c in state.review_comments
                        if c["review_id"] == r["id"]
                    ],
                }
                for r in state.reviews
                if r["number"] == number
            ]

    def check_runs(self, repo: str) -> list[dict[str, Any]]:
        """Return every check run on the repo."""
        with self._lock:
            state = self._repo(repo)
            return [self._check_run_json(state, r, self.url) for r in state.check_runs]

    def reactions(self, repo: str, comment_id: int) -> list[dict[str, Any]]:
        """Return the reactions on an issue comment."""
        with self._lock:
            return [
                self._reaction_json(r, self.url)
                for r in self._repo(repo).reactions
                if r["comment_id"] == comment_id
            ]

    def labels(self, repo: str, number: int) -> list[str]:
        """Return the PR's label names."""
        with self._lock:
            return list(self._repo(repo).pulls[number].labels)

    def requested_reviewers(self, repo: str, number: int) -> list[str]:
        """Return the logins asked to review the PR."""
        with self._lock:
            return list(self._repo(repo).pulls[number].requested_reviewers)

    def branches(self, repo: str) -> dict[str, dict[str, str]]:
        """Return every branch's files as {branch: {path: text}}."""
        with self._lock:
            state = self._repo(repo)
            return {name: self._files_at(state, sha) for name, sha in state.refs.items()}

    def head_of(self, repo: str, number: int) -> str:
        """Return a pull request's head SHA."""
        with self._lock:
            return self._repo(repo).pulls[number].head_sha

    def ref_of(self, repo: str, branch: str) -> str:
        """Return the SHA a branch points at."""
        with self._lock:
            return self._repo(repo).refs[branch]

    def commit(self, repo: str, sha: str) -> dict[str, Any]:
        """Return a commit's message, tree files and parents."""
        with self._lock:
            state = self._repo(repo)
            commit = state.commits[sha]
            return {
                "message": commit["message"],
                "parents": list(commit["parents"]),
                "files": self._files_at(state, sha),
            }

    # ------------------------------------------------------------ internals: state

    def _repo(self, name: str) -> _Repo:
        """Return a repo's state, creating it with an empty root commit on ``main``."""
        state = self._repos.get(name)
        if state is None:
            state = _Repo(name, next(self._ids))
            state.refs["main"] = self._put_commit(state, self._put_tree(state, {}), [], "Initial")
            self._repos[name] = state
        return state

    def _put_blob(self, state: _Repo, data: bytes) -> str:
        """Store a blob; return its id."""
        sha = _blob_sha(data)
        state.blobs[sha] = data
        return sha

    def _put_tree(self, state: _Repo, entries: dict[str, str]) -> str:
        """Store a flat tree {path: blob id}; return its id."""
        sha = _sha("tree", sorted(entries.items()))
        state.trees[sha] = dict(entries)
        return sha

    def _put_commit(self, state: _Repo, tree: str, parents: list[str], message: str) -> str:
        """Store a commit; return its id."""
        sha = _sha("commit", tree, parents, message, next(self._ids))
        state.commits[sha] = {"tree": tree, "parents": list(parents), "message": message}
        return sha

    def _ensure_commit(self, state: _Repo, sha: str, parents: list[str]) -> None:
        """Register a commit id named by a test, with the default branch's tree."""
        if sha not in state.commits:
            tree = state.commits[state.refs[state.default_branch]]["tree"]
            state.commits[sha] = {"tree": tree, "parents": parents, "message": f"commit {sha[:7]}"}

    def _files_at(self, state: _Repo, sha: str) -> dict[str, str]:
        """Return a commit's files as text."""
        tree = state.trees[state.commits[sha]["tree"]]
        return {path: state.blobs[blob].decode("utf-8", "replace") for path, blob in tree.items()}

    def _new_comment(
        self, state: _Repo, number: int, body: str, login: str, user_type: str
    ) -> dict[str, Any]:
        """Store a new issue comment."""
        comment = {
            "id": next(self._ids),
            "number": number,
            "body": body,
            "login": login,
            "user_type": user_type,
            "created_at": _now_iso(),
            "updated_at": _now_iso(),
        }
        state.comments.append(comment)
        return comment

    # ------------------------------------------------------------ internals: serving

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        """Parse, record, maybe fault-inject, authenticate, dispatch and answer one request."""
        raw_path, _, query_string = handler.path.partition("?")
        length = int(handler.headers.get("Content-Length") or 0)
        data = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        body = _parse_body(data)
        prefix = GHE_PREFIX if raw_path.startswith(GHE_PREFIX + "/") else ""
        with self._lock:
            self.calls.append(Call(handler.command, raw_path, headers, body, _query(query_string)))
        host = f"http://{headers.get('host', '127.0.0.1')}"
        request = _Request(
            handler.command,
            raw_path[len(prefix) :],
            _query(query_string),
            headers,
            body,
            host + prefix,
            host,
        )
        response = self._answer(request)
        response.headers = {**self._rate_headers(), **response.headers}
        _write(handler, response)

    def _answer(self, request: _Request) -> _Response:
        """Return the injected fault or the real answer."""
        injection = self._take_injection(request.method, request.path)
        if injection is not None:
            time.sleep(injection.delay)
            if injection.status != 200:
                return _injected_response(injection)
        try:
            return self._dispatch(request)
        except HTTPError as exc:
            return exc.response()

    def _take_injection(self, method: str, path: str) -> _Injection | None:
        """Consume one matching injection, if any."""
        with self._lock:
            for injection in self._injections:
                if (
                    injection.times > 0
                    and injection.method in (method, "*")
                    and injection.pattern.search(path)
                ):
                    injection.times -= 1
                    return injection
        return None

    def _rate_headers(self) -> dict[str, str]:
        """Return the rate-limit headers GitHub puts on every answer."""
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "4999",
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-used": "1",
            "x-ratelimit-resource": "core",
            "x-github-request-id": secrets.token_hex(8),
        }

    def _dispatch(self, request: _Request) -> _Response:
        """Route a request to its handler after checking its credentials."""
        for method, pattern, auth, action in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None or method != request.method:
                continue
            request.params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
            if auth == "jwt":
                self._check_jwt(request)
            elif auth == "token":
                request.grant = self._check_token(request)
            if "repo" in request.params:
                with self._lock:
                    if request.params["repo"] not in self._repos:
                        raise HTTPError(404, "Not Found")
            if auth == "stream":
                return action(request)
            with self._lock:
                return action(request)
        raise HTTPError(404, "Not Found")

    def _check_jwt(self, request: _Request) -> None:
        """Accept only an unexpired RS256 JWT signed with the App key and issued by the App."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPError(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
                leeway=30,
            )
        except jwt.PyJWTError as exc:
            raise HTTPError(401, f"A JSON web token could not be decoded ({exc})") from exc
        if str(claims["iss"]) != self.app_id:
            raise HTTPError(401, "'Issuer' claim ('iss') must be the App's id")
        if float(claims["exp"]) - time.time() > 660:
            raise HTTPError(401, "'Expiration time' claim ('exp') is too far in the future")

    def _check_token(self, request: _Request) -> _Grant:
        """Accept only a live token this fake issued, for a repo it covers."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            grant = self._grants.get(token) if scheme.lower() in ("token", "bearer") else None
        if grant is None or grant.expires_at <= time.time():
            raise HTTPError(401, "Bad credentials")
        repo = request.params.get("repo")
        if repo is not None and repo not in grant.repos:
            raise HTTPError(404, "Not Found")
        return grant

    def _route_table(
        self,
    ) -> list[tuple[str, re.Pattern[str], str, Callable[[_Request], _Response]]]:
        """List every served endpoint: (method, path regex, auth kind, handler)."""
        n = r"(?P<number>\d+)"
        rows: list[tuple[str, str, str, Callable[[_Request], _Response]]] = [
            ("POST", r"/app/installations/(?P<iid>\d+)/access_tokens", "jwt", self._h_mint),
            ("GET", r"/app", "jwt", self._h_app),
            ("GET", REPO, "token", self._h_repo),
            ("GET", REPO + rf"/pulls/{n}", "token", self._h_pull),
            ("GET", REPO + rf"/pulls/{n}/files", "token", self._h_pull_files),
            ("GET", REPO + rf"/pulls/{n}/commits", "token", self._h_pull_commits),
            ("GET", REPO + rf"/pulls/{n}/comments", "token", self._h_review_comments),
            ("GET", REPO + rf"/pulls/{n}/reviews", "token", self._h_reviews),
            ("POST", REPO + rf"/pulls/{n}/reviews", "token", self._h_create_review),
            ("POST", REPO + rf"/pulls/{n}/requested_reviewers", "token", self._h_request_reviewers),
            ("GET", REPO + rf"/issues/{n}/comments", "token", self._h_comments),
            ("POST", REPO + rf"/issues/{n}/comments", "token", self._h_create_comment),
            ("GET", REPO + r"/issues/comments/(?P<cid>\d+)", "token", self._h_comment),
            ("PATCH", REPO + r"/issues/comments/(?P<cid>\d+)", "token", self._h_edit_comment),
            ("GET", REPO + r"/issues/comments/(?P<cid>\d+)/reactions", "token", self._h_reactions),
            ("POST", REPO + r"/issues/comments/(?P<cid>\d+)/reactions", "token", self._h_react),
            ("GET", REPO + rf"/issues/{n}/labels", "token", self._h_labels),
            ("POST", REPO + rf"/issues/{n}/labels", "token", self._h_add_labels),
            ("GET", REPO + r"/commits/(?P<ref>[^/]+)/check-runs", "token", self._h_check_runs),
            ("POST", REPO + r"/check-runs", "token", self._h_create_check_run),
            ("GET", REPO + r"/check-runs/(?P<rid>\d+)", "token", self._h_check_run),
            ("PATCH", REPO + r"/check-runs/(?P<rid>\d+)", "token", self._h_edit_check_run),
            ("GET", REPO + r"/actions/runs/(?P<run>\d+)", "token", self._h_run),
            ("GET", REPO + r"/actions/runs/(?P<run>\d+)/jobs", "token", self._h_jobs),
            ("GET", REPO + r"/actions/jobs/(?P<job>\d+)", "token", self._h_job),
            ("GET", REPO + r"/actions/jobs/(?P<job>\d+)/logs", "token", self._h_job_logs),
            ("GET", r"/_raw/logs/(?P<key>[\w-]+)", "stream", self._h_raw_log),
            (
                "GET",
                REPO + r"/collaborators/(?P<user>[^/]+)/permission",
                "token",
                self._h_permission,
            ),
            ("GET", REPO + r"/contents/(?P<path>.+)", "token", self._h_contents),
            ("GET", REPO + r"/git/commits/(?P<sha>\w+)", "token", self._h_git_commit),
            ("POST", REPO + r"/git/commits", "token", self._h_create_git_commit),
            ("POST", REPO + r"/git/blobs", "token", self._h_create_blob),
            ("GET", REPO + r"/git/trees/(?P<sha>\w+)", "token", self._h_git_tree),
            ("POST", REPO + r"/git/trees", "token", self._h_create_tree),
            ("GET", REPO + r"/git/refs?/(?P<ref>heads/.+)", "token", self._h_git_ref),
            ("POST", REPO + r"/git/refs", "token", self._h_create_ref),
            ("PATCH", REPO + r"/git/refs/(?P<ref>heads/.+)", "token", self._h_update_ref),
        ]
        return [(m, re.compile(p), a, h) for m, p, a, h in rows]

    # ------------------------------------------------------------ handlers: App

    def _h_mint(self, request: _Request) -> _Response:
        """POST /app/installations/{id}/access_tokens."""
        installation_id = int(request.params["iid"])
        repos = self._installations.get(installation_id)
        if repos is None:
            raise HTTPError(404, "Not Found")
        token = "ghs_" + secrets.token_urlsafe(27)
        expires_at = time.time() + self.token_ttl
        self._grants[token] = _Grant(
            installation_id,
            repos,
            expires_at,
            f"{self.app_slug}[bot]",
            int(self.app_id),
            self.app_slug,
        )
        return _Response(
            201,
            {
                "token": token,
                "expires_at": _now_iso(self.token_ttl),
                "permissions": {
                    "pull_requests": "write",
                    "issues": "write",
                    "checks": "write",
                    "contents": "write",
                    "actions": "read",
                    "metadata": "read",
                },
                "repository_selection": "selected",
            },
        )

    def _h_app(self, request: _Request) -> _Response:
        """GET /app."""
        return _Response(
            200,
            {
                "id": int(self.app_id),
                "slug": self.app_slug,
                "name": self.app_slug,
                "node_id": "A_" + self.app_id,
                "owner": self._user_json("acme", "Organization", request.base),
                "html_url": f"https://github.com/apps/{self.app_slug}",
                "events": [],
                "permissions": {},
            },
        )

    # ------------------------------------------------------------ handlers: pulls

    def _pull_of(self, request: _Request) -> tuple[_Repo, _Pull]:
        """Return the repo and pull a request names, or 404."""
        state = self._repos[request.params["repo"]]
        pull = state.pulls.get(int(request.params["number"]))
        if pull is None:
            raise HTTPError(404, "Not Found")
        return state, pull

    def _h_repo(self, request: _Request) -> _Response:
        """GET /repos/{owner}/{repo}."""
        return _Response(200, self._repo_json(self._repos[request.params["repo"]], request.base))

    def _h_pull(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/pulls/{n}; the diff media type returns the unified diff."""
        state, pull = self._pull_of(request)
        if "diff" in request.headers.get("accept", ""):
            return _Response(
                200, raw=pull.diff.encode(), headers={"Content-Type": "text/plain; charset=utf-8"}
            )
        return _Response(200, self._pull_json(state, pull, request.base))

    def _h_pull_files(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/pulls/{n}/files."""
        state, pull = self._pull_of(request)
        items = [self._file_json(state, pull, f, request.base) for f in pull.files]
        return _page(request, items)

    def _h_pull_commits(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/pulls/{n}/commits."""
        state, pull = self._pull_of(request)
        return _page(request, [self._commit_json(state, sha, request.base) for sha in pull.commits])

    def _h_review_comments(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/pulls/{n}/comments."""
        state, pull = self._pull_of(request)
        items = [
            self._review_comment_json(state, c, request.base)
            for c in state.review_comments
            if c["number"] == pull.number
        ]
        return _page(request, items)

    def _h_reviews(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/pulls/{n}/reviews."""
        state, pull = self._pull_of(request)
        items = [
            self._review_json(state, r, request.base)
            for r in state.reviews
            if r["number"] == pull.number
        ]
        return _page(request, items)

    def _h_create_review(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/pulls/{n}/reviews: all line comments land in one review."""
        state, pull = self._pull_of(request)
        body = _object(request.body)
        event = body.get("event")
        comments = body.get("comments") or []
        if event not in (None, "COMMENT", "APPROVE", "REQUEST_CHANGES"):
            raise HTTPError(422, "Unprocessable Entity", [f"event {event!r} is not valid"])
        if event == "REQUEST_CHANGES" and not body.get("body"):
            raise HTTPError(
                422, "Unprocessable Entity", ["Body is required when requesting changes"]
            )
        commit_id = body.get("commit_id") or pull.head_sha
        if commit_id not in pull.commits and commit_id != pull.head_sha:
            raise HTTPError(
                422, "Unprocessable Entity", ["commit_id is not part of the pull request"]
            )
        lines = {f["filename"]: commentable_lines(f.get("patch") or "") for f in pull.files}
        for comment in comments:
            _check_review_comment(comment, lines)
        grant = request.grant
        assert grant is not None
        state_name = {
            "APPROVE": "APPROVED",
            "REQUEST_CHANGES": "CHANGES_REQUESTED",
            "COMMENT": "COMMENTED",
            None: "PENDING",
        }[event]
        review = {
            "id": next(self._ids),
            "number": pull.number,
            "body": body.get("body") or "",
            "state": state_name,
            "commit_id": commit_id,
            "login": grant.login,
            "submitted_at": _now_iso(),
        }
        state.reviews.append(review)
        for comment in comments:
            state.review_comments.append(self._stored_review_comment(review, comment, lines))
        return _Response(200, self._review_json(state, review, request.base))

    def _stored_review_comment(
        self, review: dict[str, Any], comment: dict[str, Any], lines: dict[str, Any]
    ) -> dict[str, Any]:
        """Keep one line comment of a review."""
        return {
            "id": next(self._ids),
            "review_id": review["id"],
            "number": review["number"],
            "path": comment["path"],
            "line": comment["line"],
            "side": comment.get("side", "RIGHT"),
            "start_line": comment.get("start_line"),
            "body": comment["body"],
            "login": review["login"],
            "user_type": "Bot",
            "commit_id": review["commit_id"],
            "in_reply_to_id": None,
            "created_at": _now_iso(),
        }

    def _h_request_reviewers(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/pulls/{n}/requested_reviewers."""
        state, pull = self._pull_of(request)
        reviewers = _object(request.body).get("reviewers") or []
        if pull.author in reviewers:
            raise HTTPError(422, "Review cannot be requested from pull request author.")
        for login in reviewers:
            if login not in pull.requested_reviewers:
                pull.requested_reviewers.append(login)
        return _Response(201, self._pull_json(state, pull, request.base))

    # ------------------------------------------------------------ handlers: issues

    def _comment_of(self, request: _Request) -> tuple[_Repo, dict[str, Any]]:
        """Return the repo and issue comment a request names, or 404."""
        state = self._repos[request.params["repo"]]
        wanted = int(request.params["cid"])
        for comment in state.comments:
            if comment["id"] == wanted:
                return state, comment
        raise HTTPError(404, "Not Found")

    def _h_comments(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/issues/{n}/comments."""
        state = self._repos[request.params["repo"]]
        number = int(request.params["number"])
        items = [
            self._comment_json(state, c, request.base)
            for c in state.comments
            if c["number"] == number
        ]
        return _page(request, items)

    def _h_create_comment(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/issues/{n}/comments."""
        state = self._repos[request.params["repo"]]
        number = int(request.params["number"])
        if number not in state.pulls:
            raise HTTPError(404, "Not Found")
        text = _object(request.body).get("body")
        _check_text(text, "body")
        grant = request.grant
        assert grant is not None
        comment = self._new_comment(state, number, text, grant.login, "Bot")
        return _Response(201, self._comment_json(state, comment, request.base))

    def _h_comment(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/issues/comments/{id}."""
        state, comment = self._comment_of(request)
        return _Response(200, self._comment_json(state, comment, request.base))

    def _h_edit_comment(self, request: _Request) -> _Response:
        """PATCH /repos/{o}/{r}/issues/comments/{id}."""
        state, comment = self._comment_of(request)
        text = _object(request.body).get("body")
        _check_text(text, "body")
        comment["body"], comment["updated_at"] = text, _now_iso()
        return _Response(200, self._comment_json(state, comment, request.base))

    def _h_reactions(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/issues/comments/{id}/reactions."""
        state, comment = self._comment_of(request)
        items = [
            self._reaction_json(r, request.base)
            for r in state.reactions
            if r["comment_id"] == comment["id"]
        ]
        return _page(request, items)

    def _h_react(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/issues/comments/{id}/reactions (200 if it already exists)."""
        state, comment = self._comment_of(request)
        content = _object(request.body).get("content")
        if content not in REACTIONS:
            raise HTTPError(
                422,
                "Validation Failed",
                [{"resource": "Reaction", "field": "content", "code": "invalid"}],
            )
        grant = request.grant
        assert grant is not None
        for reaction in state.reactions:
            if (reaction["comment_id"], reaction["content"], reaction["login"]) == (
                comment["id"],
                content,
                grant.login,
            ):
                return _Response(200, self._reaction_json(reaction, request.base))
        reaction = {
            "id": next(self._ids),
            "comment_id": comment["id"],
            "content": content,
            "login": grant.login,
            "user_type": "Bot",
        }
        state.reactions.append(reaction)
        return _Response(201, self._reaction_json(reaction, request.base))

    def _h_labels(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/issues/{n}/labels."""
        state, pull = self._pull_of(request)
        return _page(request, [self._label_json(state, name, request.base) for name in pull.labels])

    def _h_add_labels(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/issues/{n}/labels; the body is a list or {"labels": [...]}."""
        state, pull = self._pull_of(request)
        body = request.body
        names = body.get("labels") if isinstance(body, dict) else body
        if not isinstance(names, list) or not all(isinstance(x, str) and x for x in names):
            raise HTTPError(422, "Invalid request.", ["labels must be a list of names"])
        for name in names:
            if name not in pull.labels:
                pull.labels.append(name)
        return _Response(200, [self._label_json(state, name, request.base) for name in pull.labels])

    # ------------------------------------------------------------ handlers: checks

    def _check_run_of(self, request: _Request) -> tuple[_Repo, dict[str, Any]]:
        """Return the repo and check run a request names, or 404."""
        state = self._repos[request.params["repo"]]
        wanted = int(request.params["rid"])
        for run in state.check_runs:
            if run["id"] == wanted:
                return state, run
        raise HTTPError(404, "Not Found")

    def _h_check_runs(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/commits/{ref}/check-runs (filters: check_name, app_id, status)."""
        state = self._repos[request.params["repo"]]
        ref = state.refs.get(request.params["ref"], request.params["ref"])
        query = request.query
        runs = [
            r
            for r in state.check_runs
            if r["head_sha"] == ref
            and query.get("check_name", r["name"]) == r["name"]
            and query.get("status", r["status"]) == r["status"]
            and int(query.get("app_id", r["app_id"])) == r["app_id"]
        ]
        items = [self._check_run_json(state, r, request.base) for r in runs]
        return _page(request, items, key="check_runs")

    def _h_create_check_run(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/check-runs."""
        state = self._repos[request.params["repo"]]
        body = _object(request.body)
        _check_text(body.get("name"), "name")
        _check_text(body.get("head_sha"), "head_sha")
        grant = request.grant
        assert grant is not None
        run = {
            "id": next(self._ids),
            "name": body["name"],
            "head_sha": body["head_sha"],
            "status": "queued",
            "conclusion": None,
            "output": {},
            "external_id": "",
            "app_id": grant.app_id,
            "app_slug": grant.app_slug,
            "started_at": _now_iso(),
            "completed_at": None,
        }
        _apply_check_run(run, body)
        state.check_runs.append(run)
        return _Response(201, self._check_run_json(state, run, request.base))

    def _h_check_run(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/check-runs/{id}."""
        state, run = self._check_run_of(request)
        return _Response(200, self._check_run_json(state, run, request.base))

    def _h_edit_check_run(self, request: _Request) -> _Response:
        """PATCH /repos/{o}/{r}/check-runs/{id}; only the App that created it may."""
        state, run = self._check_run_of(request)
        grant = request.grant
        assert grant is not None
        if run["app_id"] != grant.app_id:
            raise HTTPError(
                403,
                "Invalid app_id - check run can only be modified by the "
                "GitHub App that created it.",
            )
        updated = dict(run)
        _apply_check_run(updated, _object(request.body))
        run.update(updated)
        return _Response(200, self._check_run_json(state, run, request.base))

    # ------------------------------------------------------------ handlers: actions

    def _job_of(self, request: _Request) -> tuple[_Repo, dict[str, Any]]:
        """Return the repo and job a request names, or 404."""
        state = self._repos[request.params["repo"]]
        job = state.jobs.get(int(request.params["job"]))
        if job is None:
            raise HTTPError(404, "Not Found")
        return state, job

    def _h_run(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/actions/runs/{id}."""
        state = self._repos[request.params["repo"]]
        run_id = int(request.params["run"])
        if run_id not in state.runs:
            raise HTTPError(404, "Not Found")
        return _Response(200, self._run_json(state, run_id, request.base))

    def _h_jobs(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/actions/runs/{id}/jobs."""
        state = self._repos[request.params["repo"]]
        run_id = int(request.params["run"])
        if run_id not in state.runs:
            raise HTTPError(404, "Not Found")
        items = [self._job_json(state, state.jobs[j], request.base) for j in state.runs[run_id]]
        return _page(request, items, key="jobs")

    def _h_job(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/actions/jobs/{id}."""
        state, job = self._job_of(request)
        return _Response(200, self._job_json(state, job, request.base))

    def _h_job_logs(self, request: _Request) -> _Response:
        """GET .../actions/jobs/{id}/logs: 302 to a short-lived signed URL, as GitHub does."""
        state, job = self._job_of(request)
        key = secrets.token_urlsafe(16)
        self._raw_logs[key] = (state.full_name, job["id"])
        return _Response(302, headers={"Location": f"{request.host}/_raw/logs/{key}"})

    def _h_raw_log(self, request: _Request) -> _Response:
        """Serve a log behind a signed URL with chunked transfer encoding."""
        with self._lock:
            target = self._raw_logs.get(request.params["key"])
            if target is None:
                raise HTTPError(404, "Not Found")
            log = self._repos[target[0]].jobs[target[1]]["log"]
        size, gate = self.log_chunk_size, self._log_gate
        return _Response(
            200, headers={"Content-Type": "text/plain"}, chunks=_log_chunks(log, size, gate)
        )

    # ------------------------------------------------------------ handlers: repo data

    def _h_permission(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/collaborators/{user}/permission."""
        state = self._repos[request.params["repo"]]
        user = request.params["user"]
        level = state.permissions.get(user, "none")
        return _Response(
            200,
            {
                "permission": LEGACY_PERMISSION[level],
                "role_name": level,
                "user": self._user_json(user, "User", request.base),
            },
        )

    def _h_contents(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/contents/{path}?ref=: a file, a directory listing, or 404."""
        state = self._repos[request.params["repo"]]
        ref = request.query.get("ref", state.default_branch)
        sha = state.refs.get(ref, ref)
        if sha not in state.commits:
            raise HTTPError(404, f"No commit found for the ref {ref}")
        tree = state.trees[state.commits[sha]["tree"]]
        path = request.params["path"].strip("/")
        if path in tree:
            return _Response(200, self._content_json(state, path, tree[path], request.base))
        listing = sorted(
            {p[len(path) + 1 :].split("/")[0] for p in tree if p.startswith(path + "/")}
        )
        if not listing:
            raise HTTPError(404, "Not Found")
        return _Response(
            200,
            [
                {
                    "type": "file" if f"{path}/{name}" in tree else "dir",
                    "name": name,
                    "path": f"{path}/{name}",
                }
                for name in listing
            ],
        )

    def _h_git_commit(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/git/commits/{sha}."""
        state = self._repos[request.params["repo"]]
        if request.params["sha"] not in state.commits:
            raise HTTPError(404, "Not Found")
        return _Response(200, self._git_commit_json(state, request.params["sha"], request.base))

    def _h_create_blob(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/git/blobs."""
        state = self._repos[request.params["repo"]]
        body = _object(request.body)
        content = body.get("content")
        if not isinstance(content, str):
            raise HTTPError(422, "Invalid request.", ["content is missing"])
        data = base64.b64decode(content) if body.get("encoding") == "base64" else content.encode()
        sha = self._put_blob(state, data)
        return _Response(
            201, {"sha": sha, "url": f"{request.base}/repos/{state.full_name}/git/blobs/{sha}"}
        )

    def _h_git_tree(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/git/trees/{sha}."""
        state = self._repos[request.params["repo"]]
        if request.params["sha"] not in state.trees:
            raise HTTPError(404, "Not Found")
        return _Response(200, self._tree_json(state, request.params["sha"], request.base))

    def _h_create_tree(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/git/trees (entries with ``content`` create their blobs)."""
        state = self._repos[request.params["repo"]]
        body = _object(request.body)
        base_tree = body.get("base_tree")
        if base_tree is not None and base_tree not in state.trees:
            raise HTTPError(422, "Invalid tree info", ["base_tree is not a valid tree oid"])
        entries = dict(state.trees[base_tree]) if base_tree else {}
        for entry in body.get("tree") or []:
            self._apply_tree_entry(state, entries, entry)
        sha = self._put_tree(state, entries)
        return _Response(201, self._tree_json(state, sha, request.base))

    def _apply_tree_entry(
        self, state: _Repo, entries: dict[str, str], entry: dict[str, Any]
    ) -> None:
        """Add, replace or delete one path of a tree being built."""
        path = entry.get("path")
        if not isinstance(path, str) or not path or path.startswith("/"):
            raise HTTPError(422, "Invalid tree info", [f"path {path!r} is invalid"])
        if entry.get("mode") not in ("100644", "100755", "040000", "160000", "120000"):
            raise HTTPError(422, "Invalid tree info", [f"mode for {path} is invalid"])
        if "content" in entry:
            entries[path] = self._put_blob(state, str(entry["content"]).encode())
        elif entry.get("sha") is None:
            entries.pop(path, None)
        elif entry["sha"] in state.blobs:
            entries[path] = entry["sha"]
        else:
            raise HTTPError(422, "Invalid tree info", [f"sha for {path} does not exist"])

    def _h_create_git_commit(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/git/commits."""
        state = self._repos[request.params["repo"]]
        body = _object(request.body)
        tree, parents = body.get("tree"), body.get("parents") or []
        _check_text(body.get("message"), "message")
        if tree not in state.trees:
            raise HTTPError(422, "Tree SHA does not exist")
        if any(p not in state.commits for p in parents):
            raise HTTPError(422, "Parent SHA does not exist or is not a commit object")
        sha = self._put_commit(state, tree, list(parents), body["message"])
        return _Response(201, self._git_commit_json(state, sha, request.base))

    def _h_git_ref(self, request: _Request) -> _Response:
        """GET /repos/{o}/{r}/git/ref/heads/{branch}."""
        state = self._repos[request.params["repo"]]
        branch = request.params["ref"].removeprefix("heads/")
        if branch not in state.refs:
            raise HTTPError(404, "Not Found")
        return _Response(200, self._ref_json(state, branch, request.base))

    def _h_create_ref(self, request: _Request) -> _Response:
        """POST /repos/{o}/{r}/git/refs."""
        state = self._repos[request.params["repo"]]
        body = _object(request.body)
        ref, sha = body.get("ref"), body.get("sha")
        if not isinstance(ref, str) or not ref.startswith("refs/heads/") or ref.count("/") < 2:
            raise HTTPError(422, "Reference name is invalid")
        if sha not in state.commits:
            raise HTTPError(422, "Object does not exist")
        branch = ref.removeprefix("refs/heads/")
        if branch in state.refs:
            raise HTTPError(422, "Reference already exists")
        state.refs[branch] = sha
        return _Response(201, self._ref_json(state, branch, request.base))

    def _h_update_ref(self, request: _Request) -> _Response:
        """PATCH /repos/{o}/{r}/git/refs/heads/{branch}; non-fast-forward needs force."""
        state = self._repos[request.params["repo"]]
        branch = request.params["ref"].removeprefix("heads/")
        body = _object(request.body)
        sha = body.get("sha")
        if branch not in state.refs:
            raise HTTPError(422, "Reference does not exist")
        if sha not in state.commits:
            raise HTTPError(422, "Object does not exist")
        if not body.get("force") and not self._descends(state, sha, state.refs[branch]):
            raise HTTPError(422, "Update is not a fast forward")
        state.refs[branch] = sha
        return _Response(200, self._ref_json(state, branch, request.base))

    def _descends(self, state: _Repo, sha: str, ancestor: str) -> bool:
        """Tell whether ``ancestor`` is reachable from ``sha``."""
        todo, seen = [sha], set()
        while todo:
            current = todo.pop()
            if current == ancestor:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(state.commits.get(current, {}).get("parents", []))
        return False

    # ------------------------------------------------------------ JSON shapes

    def _user_json(self, login: str, user_type: str, base: str) -> dict[str, Any]:
        """Render a user (simple-user shape)."""
        return {
            "login": login,
            "id": int(_sha(login)[:8], 16),
            "node_id": f"U_{login}",
            "type": user_type,
            "site_admin": False,
            "url": f"{base}/users/{login}",
            "html_url": f"https://github.com/{login}",
            "avatar_url": "",
        }

    def _repo_json(self, state: _Repo, base: str) -> dict[str, Any]:
        """Render a repository."""
        owner, name = state.full_name.split("/")
        return {
            "id": state.id,
            "node_id": f"R_{state.id}",
            "name": name,
            "full_name": state.full_name,
            "private": True,
            "fork": False,
            "owner": self._user_json(owner, "Organization", base),
            "default_branch": state.default_branch,
            "url": f"{base}/repos/{state.full_name}",
            "html_url": f"https://github.com/{state.full_name}",
        }

    def _pull_json(self, state: _Repo, pull: _Pull, base: str) -> dict[str, Any]:
        """Render a pull request."""
        url = f"{base}/repos/{state.full_name}/pulls/{pull.number}"
        head_repo = self._repos.get(pull.head_repo, state)
        return {
            "url": url,
            "id": pull.number + state.id,
            "node_id": f"PR_{pull.number}",
            "html_url": f"https://github.com/{state.full_name}/pull/{pull.number}",
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "body": pull.body,
            "user": self._user_json(pull.author, pull.author_type, base),
            "labels": [self._label_json(state, name, base) for name in pull.labels],
            "draft": pull.draft,
            "merged": pull.merged,
            "merged_at": _now_iso() if pull.merged else None,
            "requested_reviewers": [
                self._user_json(u, "User", base) for u in pull.requested_reviewers
            ],
            "head": {
                "label": f"{pull.head_repo.split('/')[0]}:{pull.head_ref}",
                "ref": pull.head_ref,
                "sha": pull.head_sha,
                "user": self._user_json(pull.head_repo.split("/")[0], "User", base),
                "repo": {**self._repo_json(head_repo, base), "full_name": pull.head_repo},
            },
            "base": {
                "label": f"{state.full_name.split('/')[0]}:{pull.base_ref}",
                "ref": pull.base_ref,
                "sha": pull.base_sha,
                "user": self._user_json(state.full_name.split("/")[0], "User", base),
                "repo": self._repo_json(state, base),
            },
            "commits": len(pull.commits),
            "changed_files": len(pull.files),
            "additions": sum(f.get("additions", 0) for f in pull.files),
            "deletions": sum(f.get("deletions", 0) for f in pull.files),
            "created_at": _now_iso(-3600),
            "updated_at": _now_iso(),
        }

    def _file_json(
        self, state: _Repo, pull: _Pull, file: dict[str, Any], base: str
    ) -> dict[str, Any]:
        """Render one changed file of a pull request."""
        blob = _blob_sha(file["filename"].encode())
        data = {
            "sha": blob,
            "filename": file["filename"],
            "status": file.get("status", "modified"),
            "additions": file.get("additions", 0),
            "deletions": file.get("deletions", 0),
            "changes": file.get("additions", 0) + file.get("deletions", 0),
            "blob_url": f"https://github.com/{state.full_name}/blob/{pull.head_sha}/"
            f"{file['filename']}",
            "raw_url": f"https://github.com/{state.full_name}/raw/{pull.head_sha}/"
            f"{file['filename']}",
            "contents_url": f"{base}/repos/{state.full_name}/contents/{file['filename']}",
        }
        if file.get("patch") is not None:
            data["patch"] = file["patch"]
        if file.get("previous_filename"):
            data["previous_filename"] = file["previous_filename"]
        return data

    def _commit_json(self, state: _Repo, sha: str, base: str) -> dict[str, Any]:
        """Render a commit as the pulls/{n}/commits list does."""
        message = state.commits.get(sha, {}).get("message", "")
        return {
            "sha": sha,
            "node_id": f"C_{sha[:8]}",
            "url": f"{base}/repos/{state.full_name}/commits/{sha}",
            "commit": {
                "message": message,
                "tree": {"sha": _sha("tree", sha)},
                "author": {"name": "alice", "email": "a@example.com", "date": _now_iso()},
            },
            "parents": [],
        }

    def _comment_json(self, state: _Repo, comment: dict[str, Any], base: str) -> dict[str, Any]:
        """Render an issue comment, with its reaction roll-up."""
        prefix = f"{base}/repos/{state.full_name}/issues"
        counts = {name: 0 for name in REACTIONS}
        for reaction in state.reactions:
            if reaction["comment_id"] == comment["id"]:
                counts[reaction["content"]] += 1
        return {
            "id": comment["id"],
            "node_id": f"IC_{comment['id']}",
            "url": f"{prefix}/comments/{comment['id']}",
            "html_url": f"https://github.com/{state.full_name}/pull/{comment['number']}"
            f"#issuecomment-{comment['id']}",
            "issue_url": f"{prefix}/{comment['number']}",
            "body": comment["body"],
            "user": self._user_json(comment["login"], comment["user_type"], base),
            "created_at": comment["created_at"],
            "updated_at": comment["updated_at"],
            "author_association": "NONE",
            "reactions": {
                "url": f"{prefix}/comments/{comment['id']}/reactions",
                "total_count": sum(counts.values()),
                **counts,
            },
        }

    def _reaction_json(self, reaction: dict[str, Any], base: str) -> dict[str, Any]:
        """Render a reaction."""
        return {
            "id": reaction["id"],
            "node_id": f"REA_{reaction['id']}",
            "user": self._user_json(reaction["login"], reaction["user_type"], base),
            "content": reaction["content"],
            "created_at": _now_iso(),
        }

    def _label_json(self, state: _Repo, name: str, base: str) -> dict[str, Any]:
        """Render a label."""
        quoted = urllib.parse.quote(name)
        return {
            "id": int(_sha(name)[:8], 16),
            "node_id": f"LA_{quoted}",
            "name": name,
            "color": "ededed",
            "default": False,
            "description": None,
            "url": f"{base}/repos/{state.full_name}/labels/{quoted}",
        }

    def _review_json(self, state: _Repo, review: dict[str, Any], base: str) -> dict[str, Any]:
        """Render a pull request review."""
        pull_url = f"{base}/repos/{state.full_name}/pulls/{review['number']}"
        return {
            "id": review["id"],
            "node_id": f"PRR_{review['id']}",
            "user": self._user_json(review["login"], "Bot", base),
            "body": review["body"],
            "state": review["state"],
            "commit_id": review["commit_id"],
            "submitted_at": review["submitted_at"],
            "pull_request_url": pull_url,
            "html_url": f"https://github.com/{state.full_name}/pull/{review['number']}"
            f"#pullrequestreview-{review['id']}",
            "author_association": "NONE",
        }

    def _review_comment_json(
        self, state: _Repo, comment: dict[str, Any], base: str
    ) -> dict[str, Any]:
        """Render one line comment of a review, with its reaction roll-up."""
        counts = {name: 0 for name in REACTIONS}
        for reaction in state.reactions:
            if reaction["comment_id"] == comment["id"]:
                counts[reaction["content"]] += 1
        reply = {"in_reply_to_id": comment["in_reply_to_id"]} if comment["in_reply_to_id"] else {}
        return {
            **reply,
            "id": comment["id"],
            "node_id": f"PRRC_{comment['id']}",
            "url": f"{base}/repos/{state.full_name}/pulls/comments/{comment['id']}",
            "pull_request_review_id": comment["review_id"],
            "path": comment["path"],
            "line": comment["line"],
            "original_line": comment["line"],
            "side": comment["side"],
            "start_line": comment["start_line"],
            "original_start_line": comment["start_line"],
            "start_side": comment["side"] if comment["start_line"] else None,
            "position": None,
            "diff_hunk": "",
            "body": comment["body"],
            "commit_id": comment["commit_id"],
            "original_commit_id": comment["commit_id"],
            "user": self._user_json(comment["login"], comment["user_type"], base),
            "created_at": comment["created_at"],
            "updated_at": comment["created_at"],
            "pull_request_url": f"{base}/repos/{state.full_name}/pulls/{comment['number']}",
            "html_url": f"https://github.com/{state.full_name}/pull/{comment['number']}"
            f"#discussion_r{comment['id']}",
            "reactions": {
                "url": f"{base}/repos/{state.full_name}/pulls/comments/{comment['id']}/reactions",
                "total_count": sum(counts.values()),
                **counts,
            },
        }

    def _check_run_json(self, state: _Repo, run: dict[str, Any], base: str) -> dict[str, Any]:
        """Render a check run."""
        output = run["output"]
        url = f"{base}/repos/{state.full_name}/check-runs/{run['id']}"
        return {
            "id": run["id"],
            "node_id": f"CR_{run['id']}",
            "name": run["name"],
            "head_sha": run["head_sha"],
            "external_id": run["external_id"],
            "url": url,
            "html_url": f"https://github.com/{state.full_name}/runs/{run['id']}",
            "details_url": None,
            "status": run["status"],
            "conclusion": run["conclusion"],
            "started_at": run["started_at"],
            "completed_at": run["completed_at"],
            "output": {
                "title": output.get("title"),
                "summary": output.get("summary"),
                "text": output.get("text"),
                "annotations_count": 0,
                "annotations_url": f"{url}/annotations",
            },
            "check_suite": {"id": run["id"] + 1},
            "app": {
                "id": run["app_id"],
                "slug": run["app_slug"],
                "name": run["app_slug"],
                "node_id": f"A_{run['app_id']}",
            },
            "pull_requests": [],
        }

    def _run_json(self, state: _Repo, run_id: int, base: str) -> dict[str, Any]:
        """Render a workflow run."""
        url = f"{base}/repos/{state.full_name}/actions/runs/{run_id}"
        jobs = [state.jobs[j] for j in state.runs[run_id]]
        failed = any(j["conclusion"] not in ("success", "skipped") for j in jobs)
        return {
            "id": run_id,
            "name": "CI",
            "node_id": f"WR_{run_id}",
            "head_sha": jobs[0]["head_sha"],
            "run_number": run_id,
            "event": "pull_request",
            "status": "completed",
            "conclusion": "failure" if failed else "success",
            "url": url,
            "html_url": f"https://github.com/{state.full_name}/actions/runs/{run_id}",
            "jobs_url": f"{url}/jobs",
            "logs_url": f"{url}/logs",
            "check_suite_url": f"{url}/check-suite",
            "artifacts_url": f"{url}/artifacts",
            "cancel_url": f"{url}/cancel",
            "rerun_url": f"{url}/rerun",
            "workflow_url": f"{base}/repos/{state.full_name}/actions/workflows/1",
            "created_at": _now_iso(-600),
            "updated_at": _now_iso(),
        }

    def _job_json(self, state: _Repo, job: dict[str, Any], base: str) -> dict[str, Any]:
        """Render a workflow job with its steps."""
        steps = [
            {
                "name": name,
                "status": "completed",
                "conclusion": conclusion,
                "number": i + 1,
                "started_at": _now_iso(-60),
                "completed_at": _now_iso(),
            }
            for i, (name, conclusion) in enumerate(job["steps"])
        ]
        prefix = f"{base}/repos/{state.full_name}/actions"
        return {
            "id": job["id"],
            "run_id": job["run_id"],
            "node_id": f"CR_{job['id']}",
            "run_url": f"{prefix}/runs/{job['run_id']}",
            "head_sha": job["head_sha"],
            "url": f"{prefix}/jobs/{job['id']}",
            "html_url": f"https://github.com/{state.full_name}/actions/runs/{job['run_id']}"
            f"/job/{job['id']}",
            "status": "completed",
            "conclusion": job["conclusion"],
            "name": job["name"],
            "steps": steps,
            "check_run_url": f"{base}/repos/{state.full_name}/check-runs/{job['id']}",
            "labels": ["ubuntu-latest"],
            "started_at": _now_iso(-60),
            "completed_at": _now_iso(),
        }

    def _content_json(self, state: _Repo, path: str, blob: str, base: str) -> dict[str, Any]:
        """Render a file from the contents API (base64, wrapped at 60 columns like GitHub)."""
        encoded = base64.b64encode(state.blobs[blob]).decode()
        wrapped = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)) + "\n"
        url = f"{base}/repos/{state.full_name}/contents/{path}"
        return {
            "type": "file",
            "encoding": "base64",
            "size": len(state.blobs[blob]),
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "content": wrapped,
            "sha": blob,
            "url": url,
            "git_url": f"{base}/repos/{state.full_name}/git/blobs/{blob}",
            "html_url": f"https://github.com/{state.full_name}/blob/main/{path}",
            "download_url": None,
            "_links": {"self": url},
        }

    def _git_commit_json(self, state: _Repo, sha: str, base: str) -> dict[str, Any]:
        """Render a git commit object."""
        commit = state.commits[sha]
        prefix = f"{base}/repos/{state.full_name}/git"
        person = {"name": "cibot", "email": "cibot@example.com", "date": _now_iso()}
        return {
            "sha": sha,
            "node_id": f"C_{sha[:8]}",
            "url": f"{prefix}/commits/{sha}",
            "html_url": f"https://github.com/{state.full_name}/commit/{sha}",
            "author": person,
            "committer": person,
            "message": commit["message"],
            "tree": {"sha": commit["tree"], "url": f"{prefix}/trees/{commit['tree']}"},
            "parents": [
                {
                    "sha": p,
                    "url": f"{prefix}/commits/{p}",
                    "html_url": f"https://github.com/{state.full_name}/commit/{p}",
                }
                for p in commit["parents"]
            ],
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
            },
        }

    def _tree_json(self, state: _Repo, sha: str, base: str) -> dict[str, Any]:
        """Render a (flat, fully recursive) git tree."""
        prefix = f"{base}/repos/{state.full_name}/git"
        entries = [
            {
                "path": path,
                "mode": "100644",
                "type": "blob",
                "sha": blob,
                "size": len(state.blobs[blob]),
                "url": f"{prefix}/blobs/{blob}",
            }
            for path, blob in sorted(state.trees[sha].items())
        ]
        return {"sha": sha, "url": f"{prefix}/trees/{sha}", "tree": entries, "truncated": False}

    def _ref_json(self, state: _Repo, branch: str, base: str) -> dict[str, Any]:
        """Render a branch ref."""
        prefix = f"{base}/repos/{state.full_name}/git"
        sha = state.refs[branch]
        return {
            "ref": f"refs/heads/{branch}",
            "node_id": f"REF_{branch}",
            "url": f"{prefix}/refs/heads/{branch}",
            "object": {"type": "commit", "sha": sha, "url": f"{prefix}/commits/{sha}"},
        }


# ---------------------------------------------------------------- pure helpers


def files_from_diff(diff: str) -> list[dict[str, Any]]:
    """Derive the pulls/{n}/files entries (status, counts, patch) from a unified diff."""
    files = []
    for patched in PatchSet(diff) if diff.strip() else []:
        status = (
            "added"
            if patched.is_added_file
            else "removed"
            if patched.is_removed_file
            else "renamed"
            if patched.is_rename
            else "modified"
        )
        entry: dict[str, Any] = {
            "filename": patched.path,
            "status": status,
            "additions": patched.added,
            "deletions": patched.removed,
            "patch": "".join(str(hunk) for hunk in patched).rstrip("\n") or None,
        }
        if patched.is_rename:
            entry["previous_filename"] = patched.source_file.removeprefix("a/")
        files.append(entry)
    return files


_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def commentable_lines(patch: str) -> dict[str, set[int]]:
    """Return the lines a review comment may anchor to: RIGHT (new file) and LEFT (old file)."""
    lines: dict[str, set[int]] = {"RIGHT": set(), "LEFT": set()}
    old = new = 0
    for text in patch.splitlines():
        header = _HUNK.match(text)
        if header:
            old, new = int(header.group(1)), int(header.group(2))
        elif text.startswith("+"):
            lines["RIGHT"].add(new)
            new += 1
        elif text.startswith("-"):
            lines["LEFT"].add(old)
            old += 1
        elif text.startswith(" ") or text == "":
            lines["RIGHT"].add(new)
            lines["LEFT"].add(old)
            old, new = old + 1, new + 1
    return lines


def _check_review_comment(comment: Any, lines: dict[str, dict[str, set[int]]]) -> None:
    """Refuse a review line comment GitHub could not anchor, as GitHub does (422)."""
    if not isinstance(comment, dict) or not comment.get("path") or not comment.get("body"):
        raise HTTPError(422, "Unprocessable Entity", ["path and body are required"])
    side = comment.get("side", "RIGHT")
    valid = lines.get(comment["path"], {}).get(side, set())
    wanted = [comment.get("line")]
    if comment.get("start_line") is not None:
        if not isinstance(comment["line"], int) or comment["start_line"] >= comment["line"]:
            raise HTTPError(422, "Unprocessable Entity", ["start_line must precede line"])
        wanted.append(comment["start_line"])
    if any(line not in valid for line in wanted):
        raise HTTPError(422, "Unprocessable Entity", ["Line could not be resolved"])


def _apply_check_run(run: dict[str, Any], body: dict[str, Any]) -> None:
    """Apply a create/update body to a check run, validating as GitHub does."""
    status, conclusion = body.get("status"), body.get("conclusion")
    if status is not None and status not in CHECK_STATUSES:
        raise HTTPError(422, "Invalid request.", [f"status {status!r} is not valid"])
    if conclusion is not None and conclusion not in CHECK_CONCLUSIONS:
        raise HTTPError(422, "Invalid request.", [f"conclusion {conclusion!r} is not valid"])
    if conclusion is not None:
        status = "completed"  # GitHub: a conclusion implies completed
    if status == "completed" and conclusion is None and run.get("conclusion") is None:
        raise HTTPError(422, "Invalid request.", ["conclusion is required when completed"])
    output = body.get("output")
    if output is not None:
        if not isinstance(output, dict) or not output.get("title") or not output.get("summary"):
            raise HTTPError(422, "Invalid request.", ["output needs title and summary"])
        if any(len(str(output.get(k) or "")) > 65535 for k in ("summary", "text")):
            raise HTTPError(422, "Invalid request.", ["output text is too long (max 65535)"])
        run["output"] = {k: output.get(k) for k in ("title", "summary", "text")}
    for key in ("name", "external_id"):
        if body.get(key) is not None:
            run[key] = body[key]
    if status is not None:
        run["status"] = status
    if conclusion is not None:
        run["conclusion"], run["completed_at"] = conclusion, _now_iso()


def _check_text(value: Any, name: str) -> None:
    """Require a non-empty string field no longer than GitHub allows."""
    if not isinstance(value, str) or not value:
        raise HTTPError(422, "Invalid request.", [f"{name} is missing"])
    if len(value) > 65536:
        raise HTTPError(
            422,
            "Validation Failed",
            [
                {
                    "field": name,
                    "code": "custom",
                    "message": f"{name} is too long (maximum is 65536 characters)",
                }
            ],
        )


def _object(body: Any) -> dict[str, Any]:
    """Require a JSON object body."""
    if not isinstance(body, dict):
        raise HTTPError(400, "Problems parsing JSON")
    return body


def _parse_body(data: bytes) -> Any:
    """Decode a JSON body, keeping undecodable bodies as text."""
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _page(request: _Request, items: list[Any], *, key: str | None = None) -> _Response:
    """Return one page of a list with GitHub's ``Link`` header (per_page ≤ 100)."""
    try:
        per_page = min(max(int(request.query.get("per_page", 30)), 1), 100)
        page = max(int(request.query.get("page", 1)), 1)
    except ValueError as exc:
        raise HTTPError(422, "Invalid pagination parameter") from exc
    last = max((len(items) + per_page - 1) // per_page, 1)
    chunk = items[(page - 1) * per_page : page * per_page]
    links = []
    for rel, number in (("next", page + 1), ("last", last), ("first", 1), ("prev", page - 1)):
        if (rel in ("next", "last") and page < last) or (rel in ("first", "prev") and page > 1):
            query = urllib.parse.urlencode({**request.query, "page": number})
            links.append(f'<{request.base}{request.path}?{query}>; rel="{rel}"')
    headers = {"Link": ", ".join(links)} if links else {}
    body = {"total_count": len(items), key: chunk} if key else chunk
    return _Response(200, body, headers)


def _injected_response(injection: _Injection) -> _Response:
    """Render an injected fault with the message GitHub would send."""
    if injection.body is not None:
        return _Response(injection.status, injection.body, dict(injection.headers))
    headers = {k.lower(): v for k, v in injection.headers.items()}
    message = {
        401: "Bad credentials",
        404: "Not Found",
        422: "Validation Failed",
        500: "Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }.get(injection.status, "Error")
    if injection.status in (403, 429):
        if headers.get("x-ratelimit-remaining") == "0":
            message = "API rate limit exceeded for installation."
        elif "retry-after" in headers or injection.status == 429:
            message = (
                "You have exceeded a secondary rate limit. Please wait a few minutes "
                "before you try again."
            )
        else:
            message = "Resource not accessible by integration"
    body = {"message": message, "documentation_url": DOCS, "status": str(injection.status)}
    return _Response(injection.status, body, dict(injection.headers))


def _log_chunks(log: bytes, size: int, gate: threading.Event | None) -> Iterator[bytes]:
    """Yield a log in chunks, pausing after the first until ``gate`` is set.

    If nobody opens the gate within 5 seconds the log is cut short, so a client that
    waits for the whole body before yielding anything fails loudly instead of passing.
    """
    for start in range(0, len(log), size):
        yield log[start : start + size]
        if start == 0 and gate is not None and not gate.wait(timeout=5):
            return
