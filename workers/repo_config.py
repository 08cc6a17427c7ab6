"""Read a repository's ``.github/cibot.yml`` from its default branch and merge it onto the policy.

One read per job: the pipeline merges it while gathering (and explains a refused file on
the PR), and a comment command's replies and follow-up jobs use the same merge.
"""

from __future__ import annotations

import logging

from bot.kernel.errors import CibotError
from policies.loading import REPO_SOURCE, MergeResult, merge_repo_config
from policies.model import Policy
from workers.jobs.contract import GitHubPort

log = logging.getLogger("cibot.repo_config")


def read(github: GitHubPort, repo: str, policy: Policy) -> tuple[MergeResult, str]:
    """Return the merge of the repo's config onto ``policy``, and the file's text.

    An unreadable file leaves the operator's policy in force (it is logged); bad keys are
    logged and skipped, and the merge's errors name them.
    """
    try:
        text = github.default_branch_file(repo, REPO_SOURCE) or ""
    except CibotError as exc:
        log.warning("repo config unreadable", extra={"repo": repo, "error": str(exc)})
        return MergeResult(policy=policy, errors=()), ""
    merged = merge_repo_config(policy, text or None, repo=repo)
    for error in merged.errors:
        log.warning("repo config key skipped", extra={"repo": repo, "error": str(error)})
    return merged, text
