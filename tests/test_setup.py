"""The README's quickstart is what CI runs, and the locks install on a stock Python's pip."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]+)\])?==(\S+)", re.MULTILINE)


def _sh_blocks(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^```sh\n(.*?)^```$", text, re.S | re.M)]


def _pins(lock: Path) -> dict[str, set[str]]:
    """Locked package name -> the extras its pin carries."""
    pins: dict[str, set[str]] = {}
    for name, extras, _version in PIN.findall(lock.read_text()):
        pins[canonicalize_name(name)] = {e.strip() for e in extras.split(",") if e.strip()}
    return pins


def test_ci_runs_the_readmes_test_command_word_for_word() -> None:
    readme = (ROOT / "README.md").read_text()
    install, test = _sh_blocks(readme)[:2]
    assert "requirements.lock" in install and "cibot assess" in install
    assert "requirements-dev.lock" in test and "pytest" in test
    extracted = subprocess.run(
        ["bash", "-c", "sed -n '/^cmd=\"\\$(awk/,/README.md)\"$/p' .ci/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "README.md" in extracted, ".ci/run no longer reads its command from the README"
    awk = re.search(r"awk '(.*?)' README.md", extracted, re.S)
    assert awk is not None
    out = subprocess.run(
        ["awk", awk.group(1), "README.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == test


def test_locks_are_hash_pinned() -> None:
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        entries = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
        assert entries, lock
        for line in entries:
            assert PIN.match(line) and line.endswith("\\"), f"{lock}: not hash-pinned: {line}"


def test_every_extra_a_locked_package_asks_for_is_pinned_with_it() -> None:
    """pip before 23.3 refuses a hash-checked install when a locked package requires
    `name[extra]` and the lock pins plain `name`: it treats the extra as an unpinned
    requirement. Python 3.11.7 bundles pip 23.2.1, so every such extra must be in the lock."""
    env = default_environment()
    for lock in ("requirements.lock", "requirements-dev.lock"):
        pins = _pins(ROOT / lock)
        missing = []
        for name in pins:
            try:
                requires = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                continue  # locked for another platform or only in the other lock
            for raw in requires:
                req = Requirement(raw)
                if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                    continue
                target = canonicalize_name(req.name)
                if req.extras and target in pins and not req.extras <= pins[target]:
                    missing.append(f"{name} needs {req.name}[{','.join(sorted(req.extras))}]")
        assert not missing, f"{lock}: {missing}"


def test_the_readmes_route_example_is_the_real_output() -> None:
    """The JSON the README shows for `cibot route --json` is what cibot prints for its diff."""
    import json

    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"With\s+`--json` the command prints exactly:\n\n```json\n(.*?)```", readme, re.S
    )
    assert block is not None, "the README lost its `cibot route --json` example"
    shown = json.loads(block.group(1))
    diff = ROOT / "tests" / "fixtures" / "readme" / "permission-check.diff"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "route",
            "--diff",
            str(diff),
            "--task",
            "review",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == shown
