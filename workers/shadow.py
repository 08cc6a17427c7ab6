"""Shadow mode: run, route, price and record every job, and post nothing.

A team trying cibot turns it on for everyone (``behaviour.shadow``), for some
installations (``behaviour.shadow_installations``) or repos (``behaviour.shadow_repos``,
``owner/name`` or ``owner/*``); a repo's ``.github/cibot.yml`` may turn it on for itself,
never off. The pipeline hands jobs a ``ShadowGitHub`` that reads through to GitHub and
swallows every write, keeping a one-line description of what would have been posted for
the ledger (counts and sizes, never the text).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from policies.model import Policy

# The GitHub client's writes: comments, reviews, check runs, reactions, and the
# generated-tests branch.
WRITES = frozenset(
    {"upsert_comment", "create_review", "upsert_check_run", "add_reaction", "push_files"}
)
NOTE_LIMIT = 300
# What a swallowed write returns: no id (0) for posts, no SHA for a push, None otherwise.
SWALLOWED_RETURNS: dict[str, Any] = {
    "upsert_comment": 0,
    "create_review": 0,
    "upsert_check_run": 0,
    "push_files": "",
}


def shadowed(policy: Policy, *, installation_id: int, repo: str) -> bool:
    """Tell whether jobs for this installation and repo run in shadow mode."""
    behaviour = policy.behaviour
    if behaviour.shadow or installation_id in behaviour.shadow_installations:
        return True
    return any(fnmatch.fnmatchcase(repo.lower(), p.lower()) for p in behaviour.shadow_repos)


class ShadowGitHub:
    """Pass reads through to the GitHub client; in shadow mode, note writes instead."""

    def __init__(self, inner: Any, *, shadow: bool) -> None:
        """Wrap ``inner``; ``shadow`` may be switched on later (a repo's config turned it on)."""
        self._inner = inner
        self.shadow = shadow
        self.would_post: list[str] = []

    def __getattr__(self, name: str) -> Any:
        """Return the client's attribute, or a stand-in for a write in shadow mode."""
        attr = getattr(self._inner, name)
        if name not in WRITES or not self.shadow:
            return attr

        def swallowed(*args: Any, **kwargs: Any) -> Any:
            self.would_post.append(describe(name, args, kwargs))
            return SWALLOWED_RETURNS.get(name)

        return swallowed

    def note(self) -> str:
        """Return what would have been posted, in one line for the ledger."""
        return "; ".join(self.would_post)[:NOTE_LIMIT]

    def close(self) -> None:
        """Close the wrapped client."""
        self._inner.close()


def describe(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """Describe one swallowed write by its shape: what, how many, how long."""
    if name == "upsert_comment":
        return f"a comment of {len(str(kwargs.get('body', '')))} characters"
    if name == "create_review":
        comments = kwargs.get("comments") or ()
        return f"a review with {len(comments)} line comments"
    if name == "upsert_check_run":
        return f"a check run ({kwargs.get('conclusion') or kwargs.get('status') or 'queued'})"
    if name == "push_files":
        files = kwargs.get("files") or (args[3] if len(args) > 3 else ())
        return f"a branch commit of {len(files)} files"
    return name.replace("_", " ")
