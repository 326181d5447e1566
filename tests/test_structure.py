"""The code base's shape, checked: no import cycle, one parser of series.toml."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "kpatch_tool"


def _module_imports() -> dict[str, set[str]]:
    """kpatch_tool module -> the kpatch_tool modules it imports at load time (top level)."""
    graph: dict[str, set[str]] = {}
    for f in PKG.glob("*.py"):
        deps: set[str] = set()
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kpatch_tool"):
                if node.module == "kpatch_tool":
                    deps |= {a.name for a in node.names if (PKG / f"{a.name}.py").exists()}
                else:
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("kpatch_tool.")}
        graph[f.stem] = deps - {f.stem}
    return graph


def test_no_import_cycle_between_modules():
    graph = _module_imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path[path.index(d):] + [d])}"
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_series_toml_is_parsed_in_one_place():
    """Only the series model reads series.toml; the other TOML readers own other files."""
    owners = {"series.py": "series.toml", "workspace.py": "kpt.toml", "matrix.py": "matrix files",
              "kconfig.py": "profiles.toml", "pytools.py": "a QEMU tree's pythondeps.toml"}
    readers = {f.name for f in PKG.glob("*.py") if "tomllib.load" in f.read_text()}
    assert readers <= set(owners), f"TOML read outside its model: {sorted(readers - set(owners))}"
    kconfig = (PKG / "kconfig.py").read_text()
    assert "series.toml" not in kconfig.split("def load_profiles", 1)[1].split("\ndef ", 1)[0]


def _tool(name: str) -> str:
    import shutil
    import sys

    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def test_ruff_finds_no_errors():
    """Lint gate (pyproject [tool.ruff]: errors and likely bugs, not style)."""
    import subprocess

    res = subprocess.run([_tool("ruff"), "check", "--output-format", "concise", str(PKG)], capture_output=True,
                         text=True, cwd=PKG.parent)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_finds_no_errors():
    """Type gate (pyproject [tool.mypy]; the modules still listed there are the known debt)."""
    import subprocess

    res = subprocess.run([_tool("mypy"), "--no-error-summary", str(PKG)], capture_output=True, text=True,
                         cwd=PKG.parent, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def test_no_function_is_longer_than_80_lines():
    """Counted from `def` (click's option decorators above it do not count) to its last line."""
    long = []
    for f in sorted(PKG.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{f.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these: " + ", ".join(long)
