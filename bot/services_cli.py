"""Run ``cibot services``: print the service map of a checkout, and why each entry is there."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bot.decide import checkout_services, policy_for
from bot.kernel.settings import Settings
from policies.model import Policy
from policies.services import ServiceEntry, ServiceMap, merge

NONE_FOUND = """\
no services: the multi-service CI trigger only sees the configured map and the
service roots ({roots}). Map services by hand under `services:` in the policy or the
repo's .github/cibot.yml."""
ENTRY = "{name}  [{source}]"
SHOWN = 6  # evidence lines per service in the plain-text view; --json has them all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot services``."""
    parser.add_argument("--repo", required=True, help="a git checkout to read the head tree of")
    parser.add_argument("--config", help="a repo's .github/cibot.yml to merge onto the policy")
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")
    parser.add_argument("--json", action="store_true", help="print the map as JSON")


def run(args: argparse.Namespace) -> int:
    """Discover the checkout's services, lay the configured ones over them, and print the map."""
    policy = policy_for(args, Settings.from_env())
    merged = merge(checkout_services(args.repo), policy)
    print(json.dumps(to_json(merged, policy), indent=2) if args.json else render(merged, policy))
    return 0


def to_json(merged: ServiceMap, policy: Policy) -> dict[str, Any]:
    """Return the merged map as a JSON object: services, what was ruled out, the roots."""
    return {
        "services": [_entry_json(entry) for entry in merged.services],
        "excluded": [{"name": name, "why": why} for name, why in merged.excluded],
        "service_roots": list(policy.service_roots),
    }


def _entry_json(entry: ServiceEntry) -> dict[str, Any]:
    """Return one service as a JSON object."""
    return {
        "name": entry.name,
        "source": entry.source,
        "folders": list(entry.folders),
        "paths": list(entry.paths),
        "jobs": list(entry.jobs),
        "files": list(entry.files),
        "aliases": list(entry.aliases),
        "evidence": list(entry.evidence),
        "blocks": [
            {"path": b.path, "start": b.start, "end": b.end, "kind": b.kind, "name": b.name}
            for b in entry.blocks
        ],
    }


def render(merged: ServiceMap, policy: Policy) -> str:
    """Explain the map in plain text: each service, its folders and its evidence."""
    lines: list[str] = []
    for entry in merged.services:
        lines.append(ENTRY.format(name=entry.name, source=entry.source))
        lines.extend(_details(entry))
    if not merged.services:
        lines.append(NONE_FOUND.format(roots=", ".join(policy.service_roots) or "none"))
    if merged.excluded:
        lines.append("not services:")
        lines.extend(f"  {name}: {why}" for name, why in merged.excluded)
    return "\n".join(lines)


def _details(entry: ServiceEntry) -> list[str]:
    """Return the indented lines that describe one service."""
    rows = [
        ("folders", [f"{folder}/" for folder in entry.folders]),
        ("paths", list(entry.paths)),
        ("jobs", list(entry.jobs)),
        ("manifests", list(entry.files)),
        ("also named", list(entry.aliases)),
        ("evidence", list(entry.evidence[:SHOWN])),
    ]
    if len(entry.evidence) > SHOWN:
        rows.append(("", [f"and {len(entry.evidence) - SHOWN} more"]))
    lines: list[str] = []
    for label, values in rows:
        for index, value in enumerate(values):
            shown = f"{label}:" if label and index == 0 else ""
            lines.append(f"  {shown:<12}{value}")
    if entry.blocks:
        lines.append(f"  {'blocks:':<12}{len(entry.blocks)} in shared deploy files")
    return lines
