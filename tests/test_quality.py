"""Hold the code to the project's own bar: ruff's lint rules and mypy in strict mode."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """Return the path of a dev tool installed beside this interpreter."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed: install requirements-dev.lock to run this check")
    return found


def test_ruff_finds_nothing() -> None:
    """Lint the whole tree with the rules in pyproject.toml."""
    result = subprocess.run(
        [tool("ruff"), "check", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_passes_on_every_package() -> None:
    """Type-check bot/, workers/ and policies/ in strict mode (configured in pyproject.toml)."""
    result = subprocess.run(
        [tool("mypy")], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
