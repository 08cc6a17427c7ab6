"""Load the policy YAML, apply operator overrides, and merge a repo's `.github/cibot.yml`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.errors import ConfigError
from policies.model import Policy

DEFAULT_SOURCE = "policies/default.yaml"


def default_policy_text() -> str:
    """Return the packaged default policy's YAML text."""
    return resources.files("policies").joinpath("default.yaml").read_text(encoding="utf-8")


def parse_yaml(text: str, *, source: str) -> dict[str, Any]:
    """Parse YAML into a mapping, or raise ConfigError naming the file and line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{source}: not valid YAML{where}: fix the syntax or remove the file",
            source=source,
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys", source=source)
    return data


def validation_message(exc: ValidationError, *, source: str) -> tuple[str, str]:
    """Turn pydantic's first error into (dotted key, one-line message naming the file)."""
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return key, f"{source}: key '{key}': {first['msg']}"


def build_policy(data: Mapping[str, Any], *, source: str) -> Policy:
    """Validate a mapping into a Policy, or raise ConfigError naming the bad key."""
    try:
        return Policy.model_validate(dict(data))
    except ValidationError as exc:
        key, message = validation_message(exc, source=source)
        raise ConfigError(message, key=key, source=source) from exc


def load_policy(
    path: Path | None = None, *, overrides: Mapping[str, Any] | None = None
) -> Policy:
    """Load the operator policy (default: the packaged one) and apply tier overrides.

    ``overrides`` maps a tier name to an object with optional ``model`` and ``api_base``
    attributes (``bot.settings.TierOverride``); these come from CIBOT_<TIER>_* variables.
    """
    source = str(path) if path else DEFAULT_SOURCE
    try:
        text = path.read_text(encoding="utf-8") if path else default_policy_text()
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read the policy ({exc.strerror}); check CIBOT_POLICY",
            key="CIBOT_POLICY",
            source=source,
        ) from exc
    data = parse_yaml(text, source=source)
    if overrides:
        data = _apply_tier_overrides(data, overrides)
    return build_policy(data, source=source)


def _apply_tier_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Put operator model and endpoint overrides in front of the policy's tier settings."""
    tiers = {name: dict(spec) for name, spec in (data.get("tiers") or {}).items()}
    for name, override in overrides.items():
        if name not in tiers:
            continue
        model = getattr(override, "model", None)
        api_base = getattr(override, "api_base", None)
        if model:
            rest = [m for m in tiers[name].get("models", []) if m != model]
            tiers[name]["models"] = [model, *rest]
        if api_base:
            tiers[name]["api_base"] = api_base
    return {**data, "tiers": tiers}


@dataclass(frozen=True)
class MergeResult:
    """Hold the merged policy and every error found in the repo file."""

    policy: Policy
    errors: tuple[ConfigError, ...]
