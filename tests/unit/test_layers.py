"""The package's layers go one way: no import cycle (module-level or inside functions, type-only
imports aside), and only kvorch/cli/ imports click or rich."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "kvorch"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """kvorch modules imported by a file (skipping ``if TYPE_CHECKING:`` blocks)."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for x in child.orelse:
                    visit(x)
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name.startswith("kvorch"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod.startswith("kvorch"):
                    for a in child.names:  # `from . import x` imports the module x
                        cand = f"{mod}.{a.name}"
                        out.add(cand if (PKG.parent / (cand.replace(".", "/") + ".py")).exists()
                                or (PKG.parent / cand.replace(".", "/")).is_dir() else mod)
            visit(child)

    visit(tree)
    out.discard(me)
    return out


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    g = {}
    for m, p in mods.items():
        deps = set()
        for d in imports_of(p):
            while d not in mods and "." in d:
                d = d.rsplit(".", 1)[0]
            if d in mods and d != m:
                deps.add(d)
        g[m] = deps
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(g, WHITE)
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        colour[n] = GREY
        stack.append(n)
        for d in sorted(g[n]):
            if d == "kvorch" or n == "kvorch":  # the package's lazy __getattr__ imports nothing at import time
                continue
            if colour[d] == GREY:
                return stack[stack.index(d):] + [d]
            if colour[d] == WHITE:
                c = dfs(d)
                if c:
                    return c
        stack.pop()
        colour[n] = BLACK
        return None

    for n in sorted(g):
        if colour[n] == WHITE:
            c = dfs(n)
            if c:
                return c
    return None


def test_the_import_graph_of_the_package_has_no_cycle():
    assert find_cycle(graph()) is None, " → ".join(find_cycle(graph()) or [])


def test_a_planted_cycle_is_found():
    g = graph()
    g["kvorch.hosts.ops"] = g["kvorch.hosts.ops"] | {"kvorch.cluster"}
    assert find_cycle(g) is not None


def test_only_the_cli_imports_click_or_rich():
    offenders = []
    for p in PKG.rglob("*.py"):
        if p.is_relative_to(PKG / "cli"):
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{p.relative_to(PKG.parent)}: {n}" for n in names if n.split(".")[0] in ("click", "rich")]
    assert offenders == []


def test_public_names_are_listed_and_importable():
    import kvorch

    assert set(kvorch.__all__) >= {"Cluster", "Events", "RecordingEvents", "Result", "UserError", "StartFailed",
                                   "Session", "ScenarioResult"}
    for name in kvorch.__all__:
        assert getattr(kvorch, name) is not None, name
    with pytest.raises(AttributeError):
        kvorch.NoSuchThing  # noqa: B018


def test_import_kvorch_loads_nothing_else():
    code = "import sys, kvorch; print(sorted(m for m in sys.modules if m.startswith(('kvorch', 'click', 'rich', 'pydantic'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PKG.parent).stdout
    assert out.strip() == "['kvorch']"
