"""Build the one settings object from ``CIBOT_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.kernel.errors import ConfigError

TIERS_WITH_ENDPOINTS = ("LOCAL", "MID", "FRONTIER")
LOG_FORMATS = ("logfmt", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_WORKER_METRICS_PORT = 9808
DISABLED = ("off", "none", "disabled")
DEFAULT_CAPTURE_DAYS = 14


@dataclass(frozen=True, kw_only=True)
class TierOverride:
    """Hold an operator's override of one tier's first model and endpoint."""

    model: str | None = None
    api_base: str | None = None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Hold every operator setting; built once at startup, never read at import time."""

    webhook_secret: str = field(default="", repr=False)
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite:///cibot.db"
    policy_path: Path | None = None
    local_api_base: str | None = None
    tier_overrides: Mapping[str, TierOverride] = field(default_factory=dict)
    github_api_url: str = "https://api.github.com"
    github_app_id: str = ""
    github_private_key: str = field(default="", repr=False)
    spool_path: Path = Path("cibot-spool.db")
    bot_login: str = "cibot[bot]"
    log_format: str = "logfmt"
    log_level: str = ""  # empty: the command's own flag (or info) decides
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    admin_token: str = field(default="", repr=False)
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = DEFAULT_WORKER_METRICS_PORT
    # Capture for replay (workers.capture): off unless a directory is set.
    capture_dir: Path | None = None
    capture_days: int = DEFAULT_CAPTURE_DAYS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the ``CIBOT_*`` variables; raise ConfigError naming a bad one."""
        env = os.environ if environ is None else environ
        overrides = {
            tier.lower(): TierOverride(
                model=env.get(f"CIBOT_{tier}_MODEL") or None,
                api_base=env.get(f"CIBOT_{tier}_API_BASE") or None,
            )
            for tier in TIERS_WITH_ENDPOINTS
        }
        if env.get("CIBOT_LOCAL_API_BASE"):
            overrides["local"] = TierOverride(
                model=overrides["local"].model, api_base=env["CIBOT_LOCAL_API_BASE"]
            )
        policy = env.get("CIBOT_POLICY")
        return cls(
            webhook_secret=env.get("CIBOT_WEBHOOK_SECRET", ""),
            redis_url=env.get("CIBOT_REDIS_URL", cls.redis_url),
            database_url=env.get("CIBOT_DATABASE_URL", cls.database_url),
            policy_path=Path(policy) if policy else None,
            local_api_base=overrides["local"].api_base,
            tier_overrides=overrides,
            github_api_url=env.get("CIBOT_GITHUB_API_URL", cls.github_api_url).rstrip("/"),
            github_app_id=env.get("CIBOT_GITHUB_APP_ID", ""),
            github_private_key=_private_key(env),
            spool_path=Path(env.get("CIBOT_SPOOL_PATH", str(cls.spool_path))),
            bot_login=env.get("CIBOT_BOT_LOGIN", cls.bot_login),
            log_format=_choice(env, "CIBOT_LOG_FORMAT", LOG_FORMATS, cls.log_format),
            log_level=_choice(env, "CIBOT_LOG_LEVEL", LOG_LEVELS, ""),
            admin_host=env.get("CIBOT_ADMIN_HOST") or cls.admin_host,
            admin_port=_port(env, "CIBOT_ADMIN_PORT", cls.admin_port) or cls.admin_port,
            admin_token=env.get("CIBOT_ADMIN_TOKEN", ""),
            worker_metrics_host=env.get("CIBOT_WORKER_METRICS_HOST") or cls.worker_metrics_host,
            worker_metrics_port=_port(
                env, "CIBOT_WORKER_METRICS_PORT", DEFAULT_WORKER_METRICS_PORT, allow_off=True
            ),
            capture_dir=Path(env["CIBOT_CAPTURE_DIR"]) if env.get("CIBOT_CAPTURE_DIR") else None,
            capture_days=_days(env, "CIBOT_CAPTURE_DAYS", DEFAULT_CAPTURE_DAYS),
        )

    def require_webhook_secret(self) -> str:
        """Return the webhook secret or explain how to set it."""
        if not self.webhook_secret:
            raise ConfigError(
                "CIBOT_WEBHOOK_SECRET is not set: set it to the webhook secret you entered "
                "when registering the GitHub App",
                key="CIBOT_WEBHOOK_SECRET",
                source="environment",
            )
        return self.webhook_secret


def _choice(env: Mapping[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    """Return the variable's value (lower-cased) if it is one of ``choices``, else explain."""
    value = env.get(key, "").strip().lower()
    if not value:
        return default
    if value not in choices:
        raise ConfigError(
            f"{key}={value!r} is not valid: use one of {', '.join(choices)}",
            key=key,
            source="environment",
        )
    return value


def _port(env: Mapping[str, str], key: str, default: int, *, allow_off: bool = False) -> int | None:
    """Return a TCP port from the variable (``off`` disables it where allowed), else explain."""
    value = env.get(key, "").strip().lower()
    if not value:
        return default
    if allow_off and value in DISABLED:
        return None
    if value.isdigit() and 0 < int(value) < 65536:
        return int(value)
    also = " or off" if allow_off else ""
    raise ConfigError(
        f"{key}={value!r} is not a TCP port: use a number from 1 to 65535{also}",
        key=key,
        source="environment",
    )


def _days(env: Mapping[str, str], key: str, default: int) -> int:
    """Return a whole number of days (at least 1) from the variable, else explain."""
    value = env.get(key, "").strip()
    if not value:
        return default
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ConfigError(
        f"{key}={value!r} is not a number of days: use a whole number of 1 or more",
        key=key,
        source="environment",
    )


def _private_key(env: Mapping[str, str]) -> str:
    """Return the App key from CIBOT_GITHUB_PRIVATE_KEY or the file it names."""
    if env.get("CIBOT_GITHUB_PRIVATE_KEY"):
        return env["CIBOT_GITHUB_PRIVATE_KEY"]
    path = env.get("CIBOT_GITHUB_PRIVATE_KEY_FILE")
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"CIBOT_GITHUB_PRIVATE_KEY_FILE cannot be read ({exc.strerror}): "
            "point it at the App's .pem file",
            key="CIBOT_GITHUB_PRIVATE_KEY_FILE",
            source="environment",
        ) from exc
