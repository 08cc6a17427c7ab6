"""Parse ``/cibot <command> [args]`` (or ``@cibot``) out of a comment body, purely.

A command must start a line. Lines inside fenced code blocks, indented code blocks
and quotations (``> /cibot review``) are not commands, so quoting or documenting a
command never runs it. Only the first command in a comment counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMMANDS: dict[str, str] = {
    "help": "list the commands",
    "summary": "write or refresh the PR summary",
    "review": "review the change",
    "explain": "explain the latest CI failure on this PR",
    "tests": "generate unit tests for the changed code",
    "deps": "write dependency-upgrade notes",
    "escalate": "redo the work on a stronger tier: `escalate [mid|frontier|human] [task]`",
    "cost": "show what the bot spent on this PR",
    "config": "show the configuration in force for this repo",
}
ESCALATION_TIERS = ("mid", "frontier", "human")
MAX_ARGS = 8
MAX_ARG_CHARS = 64

_COMMAND = re.compile(r"^ {0,3}[/@]cibot(?:$|\s+(?P<rest>.*)$)", re.IGNORECASE)
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})")


@dataclass(frozen=True)
class Command:
    """Name one parsed command and its arguments."""

    name: str
    args: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        """Return whether the command is one the bot implements."""
        return self.name in COMMANDS

    @property
    def argv(self) -> str:
        """Return the arguments as one space-separated string."""
        return " ".join(self.args)


def parse(body: str) -> Command | None:
    """Return the first command in a comment body, or None when there is none."""
    for line in _prose_lines(body):
        match = _COMMAND.match(line)
        if match is None:
            continue
        words = (match.group("rest") or "").split()
        if not words:
            return Command("help")
        args = tuple(word[:MAX_ARG_CHARS] for word in words[1 : 1 + MAX_ARGS])
        return Command(words[0].lower()[:MAX_ARG_CHARS], args)
    return None


def _prose_lines(body: str) -> list[str]:
    """Return the lines of a Markdown body that are neither code nor quotation."""
    lines: list[str] = []
    fence = ""
    for line in body.splitlines():
        opening = _FENCE.match(line)
        if fence:
            if (
                opening
                and opening.group("fence")[0] == fence[0]
                and len(opening.group("fence")) >= len(fence)
            ):
                fence = ""
            continue
        if opening:
            fence = opening.group("fence")
            continue
        if line.startswith(("    ", "\t")) or line.lstrip().startswith(">"):
            continue
        lines.append(line)
    return lines


def command_list() -> str:
    """Return the Markdown bullet list of commands, for help and unknown-command replies."""
    return "\n".join(f"- `/cibot {name}`: {text}" for name, text in COMMANDS.items())
