"""Define the frozen, validated shape of a routing policy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

TierName = Literal["local", "mid", "frontier", "human"]
TIER_ORDER: tuple[str, ...] = ("local", "mid", "frontier", "human")
TaskName = Literal["summary", "review", "ci", "tests", "deps", "refactor", "incident"]
TASKS: tuple[str, ...] = ("summary", "review", "ci", "tests", "deps", "refactor", "incident")
Category = Literal["auth", "crypto", "payments", "infra"]
CATEGORIES: tuple[str, ...] = ("auth", "crypto", "payments", "infra")
# Gradle shares Maven's group:artifact coordinates, so both are "maven".
Ecosystem = Literal[
    "pip", "npm", "go", "cargo", "maven", "rubygems", "actions", "docker", "terraform", "pre-commit"
]
# A package name or fnmatch glob, as its ecosystem spells it: PyJWT, @auth/core,
# github.com/golang-jwt/jwt, org.springframework.security:*, passport-*.
PackageName = Annotated[str, StringConstraints(min_length=1, max_length=214, pattern=r"^\S+$")]


class Frozen(BaseModel):
    """Base for every policy object: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Rung(Frozen):
    """Describe one H200 hardware rung and what it costs a month."""

    gpus: int = Field(ge=1)
    model: str
    bought_monthly_usd: tuple[float, float]
    rented_monthly_usd: float
    # Aggregate tokens/s the rung sustains at full batch (prompt and completion blended).
    throughput_tokens_per_s: float = Field(gt=0)


class TierPrice(Frozen):
    """Price an API tier per million tokens; absent fields come from litellm's price map."""

    input_per_mtok: float | None = None
    output_per_mtok: float | None = None


class Tier(Frozen):
    """Describe one model tier: its models, privacy, limits and price."""

    models: tuple[str, ...] = Field(min_length=1)
    private: bool
    api_base: str | None = None
    api_key_env: str | None = None
    context_window: int = Field(default=128_000, ge=1024)
    max_output_tokens: int = Field(default=4096, ge=64)
    max_concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    rung: str | None = None
    price: TierPrice = TierPrice()


TriggerName = Literal[
    "sensitive_change",
    "multi_service_failure",
    "breaking_api_surface",
    "tests_failed_twice",
    "coverage_below_target",
]


class Escalation(Frozen):
    """Name a trigger and the tier the task moves to when it fires."""

    trigger: TriggerName
    to: TierName


class TaskPolicy(Frozen):
    """Give a task its default tier, its triggers and whether a human must review."""

    tier: TierName
    escalate: tuple[Escalation, ...] = ()
    human_review: bool = False
    expected_output_tokens: int = Field(default=800, ge=1)
    enabled: bool = True


class ContentRule(Frozen):
    """Match a regular expression on added or removed lines, optionally only in some paths."""

    pattern: str
    paths: tuple[str, ...] = ()


class CategoryRules(Frozen):
    """Mark a change sensitive by path globs (gitignore style) or content patterns."""

    paths: tuple[str, ...] = ()
    content: tuple[ContentRule, ...] = ()


class Service(Frozen):
    """Map a monorepo service to the paths and CI job names that belong to it."""

    paths: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()


class Residency(Frozen):
    """List the repos, paths and PR labels whose data must never leave private tiers."""

    repos: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()


class Budgets(Frozen):
    """Cap each installation's monthly spend on external tiers."""

    monthly_frontier_usd: float = Field(default=200.0, ge=0)


class History(Frozen):
    """Route a task up while its local acceptance rate sits below the floor."""

    acceptance_floor: float = Field(default=0.5, ge=0, le=1)
    min_samples: int = Field(default=20, ge=1)


class ReviewSettings(Frozen):
    """Tune review noise and auto-review."""

    auto: bool = False
    min_severity: Literal["nit", "minor", "major", "critical"] = "minor"
    max_findings: int = Field(default=8, ge=0)


class Behaviour(Frozen):
    """Control which PRs and commenters the bot acts for."""

    skip_drafts: bool = True
    skip_bots: bool = True
    command_permission: Literal["read", "triage", "write", "maintain", "admin"] = "write"
    coverage_target: float = Field(default=0.70, ge=0, le=1)
    context_reserve_tokens: int = Field(default=2048, ge=0)
    # Sensitive rules and packages a repo's .github/cibot.yml adds escalate only within
    # the private tiers unless the operator sets this: a repo file may not widen egress.
    repo_rules_reach_external: bool = False
    # How long a private_only job waits for a down private model before it fails (and the
    # PR is told); counted from the first time the job was held.
    hold_private_hours: float = Field(default=6.0, gt=0, le=168)
    # Shadow mode: every job runs, is routed, priced and recorded, and nothing is posted.
    # For all installations, or only those listed (installation ids, or repos by
    # "owner/name" or "owner/*"). A repo's .github/cibot.yml may turn it on, never off.
    shadow: bool = False
    shadow_installations: tuple[int, ...] = ()
    shadow_repos: tuple[str, ...] = ()


class Dependencies(Frozen):
    """List security-relevant packages per ecosystem and category.

    The policy's entries are added to the packaged knowledge base (policies/packages.yaml);
    a bump of a listed package is a sensitive change in that category.
    """

    packages: dict[Ecosystem, dict[Category, tuple[PackageName, ...]]] = {}


class Policy(Frozen):
    """Hold the whole routing policy."""

    version: int = 1
    tiers: dict[str, Tier]
    rungs: dict[str, Rung] = {}
    tasks: dict[TaskName, TaskPolicy]
    sensitive: dict[Category, CategoryRules] = {}
    services: dict[str, Service] = {}
    service_roots: tuple[str, ...] = ("services/", "apps/", "packages/", "cmd/")
    private_only: Residency = Residency()
    budgets: Budgets = Budgets()
    history: History = History()
    review: ReviewSettings = ReviewSettings()
    behaviour: Behaviour = Behaviour()
    dependencies: Dependencies = Dependencies()
    # Set by the repo-config merge when a repo adds sensitive rules or packages: the
    # operator's own, so routing can tell which escalations only the repo's rules caused.
    operator_sensitive: dict[Category, CategoryRules] | None = None
    operator_dependencies: Dependencies | None = None

    @model_validator(mode="after")
    def _check_references(self) -> Policy:
        """Require the model tiers, known rungs and tasks for every routing-table row."""
        for name in ("local", "mid", "frontier"):
            if name not in self.tiers:
                raise ValueError(f"tiers.{name} is missing")
        for name, tier in self.tiers.items():
            if name not in TIER_ORDER[:3]:
                raise ValueError(f"tiers.{name}: tier must be one of local, mid, frontier")
            if tier.rung is not None and tier.rung not in self.rungs:
                raise ValueError(f"tiers.{name}.rung: unknown rung {tier.rung!r}")
        if not self.tiers["local"].private:
            raise ValueError("tiers.local.private must be true: the local tier is self-hosted")
        missing = [t for t in TASKS if t not in self.tasks]
        if missing:
            raise ValueError(f"tasks.{missing[0]} is missing")
        return self

    def private_tiers(self) -> list[str]:
        """Return the private tiers, cheapest first."""
        return [t for t in TIER_ORDER[:3] if self.tiers[t].private]

    def best_private_tier(self) -> str:
        """Return the most capable private tier."""
        return self.private_tiers()[-1]
