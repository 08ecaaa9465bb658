"""The code's shape, checked: no import cycles in lorafarm/, ``policy`` and ``spec`` free of Ray and
torch, the CLI reaching the library only through its public face, every command registered the
one way, and ``lorafarm --help`` cheap."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lorafarm"
# What the CLI may import: the public API, the spec, storage, errors, events, and the user-facing
# libraries (try/eval, plot/top, simulate). Worker, model, adapter, scheduler internals go through lorafarm.api.
CLI_MAY_IMPORT = ("lorafarm.api", "lorafarm.spec", "lorafarm.storage", "lorafarm.errors", "lorafarm.events",
                  "lorafarm.use", "lorafarm.ops", "lorafarm.sim", "lorafarm.cli")
HEAVY = ("ray", "torch", "transformers", "deepspeed", "peft")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, at module level or inside functions (``TYPE_CHECKING`` blocks
    aside): ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([child.module] if child.module else []))
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(name)
    return found


def import_cycles() -> list[list[str]]:
    """Strongly connected components (Tarjan) of lorafarm's import graph with more than one module."""
    graph = {n: {m for m in imports_of(n) if m in MODULES} for n in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            connect(v)
    return cycles


def test_the_import_graph_finds_a_known_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "lorafarm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {_module_name(p): p for p in pkg.rglob("*.py")})
    assert import_cycles() == [["lorafarm.a", "lorafarm.b"]]


def test_no_import_cycles_in_lorafarm():
    assert import_cycles() == []


@pytest.mark.parametrize("package", ["lorafarm.policy", "lorafarm.spec"])
def test_policy_and_spec_never_import_heavy_libraries(package):
    for name in (n for n in MODULES if n == package or n.startswith(package + ".")):
        heavy = {m for m in imports_of(name) if m.split(".")[0] in HEAVY}
        assert not heavy, f"{name} imports {sorted(heavy)}"
    code = (f"import sys, {package}; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {package} loads {out.strip()}"


def test_the_cli_imports_only_the_public_face():
    for name in (n for n in MODULES if n.startswith("lorafarm.cli")):
        inside = {m for m in imports_of(name) if m.split(".")[0] == "lorafarm"}
        internal = {m for m in inside if not m.startswith(CLI_MAY_IMPORT)}
        assert not internal, f"{name} reaches into {sorted(internal)} — go through lorafarm.api"


def _leaves(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every runnable command's parser by name (``models export`` as ``export``)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_leaves(sub) or {name: sub})
    return out


def test_every_command_is_registered_with_a_handler():
    from lorafarm.cli import main as cli_main

    found = _leaves(cli_main.build_parser())
    assert {"run", "co-train", "validate", "schema", "pull", "merge", "export", "serve", "submit", "status", "list", "cancel",
            "events", "logs", "tenants", "try", "eval", "simulate", "plot", "top"} == set(found)
    for name, parser in found.items():
        assert callable(parser.get_default("handler")), f"{name} has no handler"
    for module in cli_main.COMMAND_MODULES:
        assert callable(module.register), module.__name__


def test_help_imports_nothing_heavy():
    code = ("import sys; from lorafarm.cli.main import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY + ('pydantic', 'fsspec')!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"`lorafarm --help` imports {out.strip()}"
    proc = subprocess.run([sys.executable, "-m", "lorafarm.cli.main", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "simulate" in proc.stdout
