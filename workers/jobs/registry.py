"""List the model job modules by task, so the pipeline finds a job without importing by name."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from workers.jobs import ci, deps, review, summary, tests
from workers.jobs.contract import JobModule

# bot.kernel.jobs.JOB_TASKS names these tasks; refactor and incident have no job yet.
JOBS: Mapping[str, JobModule] = MappingProxyType(
    {"summary": summary, "review": review, "ci": ci, "tests": tests, "deps": deps}
)


def job_for(task: str) -> JobModule | None:
    """Return the job module of a model task, or None when the task has no job."""
    return JOBS.get(task)
