"""Keep cibot's dependencies pointing one way: kernel ← policies ← workers ← bot.

The test reads every module with ``ast`` (module-level and function-level imports alike)
and fails on any import against that order, and on any import cycle. The layers:

- ``bot.kernel``: errors, settings, logging and the job contract. Imports nothing else
  from the project.
- ``policies``: the pure router and its detectors. Imports only the kernel.
- ``workers``: the GitHub and model clients, the pipeline, the jobs, the ledger.
  Imports the kernel and policies, never the web edge or the CLI.
- ``bot``: the web edge and the CLI. Imports the kernel and policies; it reaches the
  workers only through the entry points below, or by name through ``bot.cli``'s
  subcommand table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "workers", "policies")
KERNEL = "bot.kernel"
RANK = {KERNEL: 0, "policies": 1, "workers": 2, "bot": 3}

# The workers' modules bot may import, and what for. Anything else bot needs from the
# workers is a subcommand named in bot.cli.SUBCOMMANDS (imported by name when it runs).
ENTRY_POINTS = {
    "workers.inline": "`cibot ci` runs one job in this process (GitHub Actions mode)",
    "workers.dashboard": "the web server's GET /dashboard page reads the ledger",
}


def module_name(path: Path) -> str:
    """Return the dotted module name of a source file under ROOT."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def modules() -> dict[str, Path]:
    """Return every project module by name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def layer(name: str) -> str:
    """Return the layer a module belongs to."""
    if name == KERNEL or name.startswith(KERNEL + "."):
        return KERNEL
    return name.split(".")[0]


def _type_only(tree: ast.Module) -> set[int]:
    """Return the ids of import nodes under ``if TYPE_CHECKING:`` (no runtime edge)."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids |= {id(child) for child in ast.walk(node)}
    return ids


def imports(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int, bool]]:
    """Yield (imported project module, line, type-only) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    typing_only = _type_only(tree)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = here.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        resolved = set()
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES and target not in resolved:
                resolved.add(target)
                yield target, node.lineno, id(node) in typing_only


def graph() -> dict[str, set[str]]:
    """Return each module's runtime imports of other project modules."""
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _, type_only in imports(path, known):
            if target != name and not name.startswith(target + ".") and not type_only:
                edges[name].add(target)
    return edges


def violations() -> list[str]:
    """Return every import that points against the layer order."""
    known = modules()
    found = []
    for name, path in known.items():
        for target, line, _ in imports(path, known):
            src, dst = layer(name), layer(target)
            if src == dst:
                continue
            allowed = RANK[dst] < RANK[src]
            if src == "bot" and dst == "workers":
                allowed = target in ENTRY_POINTS
            if not allowed:
                found.append(f"{path.relative_to(ROOT)}:{line}: {name} ({src}) imports {target}")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return the import cycles (strongly connected components of two or more modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_imports_point_one_way() -> None:
    assert violations() == []


def test_no_module_imports_itself_back_through_others() -> None:
    assert cycles(graph()) == []


def test_entry_points_exist() -> None:
    known = modules()
    assert set(ENTRY_POINTS) <= set(known)


def test_the_cli_names_real_subcommand_modules() -> None:
    from bot.cli import SUBCOMMANDS

    known = modules()
    missing = [module for module, _ in SUBCOMMANDS.values() if module not in known]
    assert missing == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from workers.pipeline import run_job\n", "workers.pipeline"),
        ("def f():\n    import workers.ledger\n", "workers.ledger"),
        ("from workers import llm\n", "workers.llm"),
    ],
)
def test_the_walk_sees_every_kind_of_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: str
) -> None:
    """A bot module importing a worker's internals is caught, however it is written."""
    fake_root = tmp_path
    for package in PACKAGES:
        (fake_root / package).mkdir()
        (fake_root / package / "__init__.py").write_text("")
    for name in ("pipeline", "ledger", "llm", "inline"):
        (fake_root / "workers" / f"{name}.py").write_text("")
    (fake_root / "bot" / "edge.py").write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    (found,) = violations()
    assert found.endswith(f"bot.edge (bot) imports {expected}")


def test_the_walk_catches_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
