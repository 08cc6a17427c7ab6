"""Name why a trigger fired: the reason every detector yields and every decision carries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reason:
    """Name the trigger that fired and its evidence (the file and, for content, the line)."""

    trigger: str
    evidence: str
    category: str | None = None
