"""The linters CI runs: ruff on the Python, shellcheck on every shell script."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def shell_scripts() -> list[str]:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    scripts = []
    for name in tracked:
        path = ROOT / name
        shebang = path.is_file() and path.read_bytes().startswith((b"#!/bin/sh", b"#!/usr/bin/env bash"))
        if shebang or path.suffix == ".sh":
            scripts.append(name)
    return scripts


def run(tool: str, *arguments: str) -> subprocess.CompletedProcess:
    """`tool` from the test's virtualenv (requirements-dev.txt), else from PATH."""
    beside_python = Path(sys.executable).parent / tool
    path = str(beside_python) if beside_python.exists() else shutil.which(tool)
    assert path, f"{tool} is not installed: pip install -r requirements-dev.txt"
    return subprocess.run([path, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing():
    result = run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_finds_nothing():
    scripts = shell_scripts()
    assert {"deploy/docker-entrypoint.sh", "deploy/reload", ".ci/run"} <= set(scripts)
    result = run("shellcheck", "-x", *scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def imported_stack_modules(path: Path, modules: set[str]) -> set[str]:
    """The stack's modules that a module imports, at its top or inside a function."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {name for name in (node.module, *(f"{node.module}.{alias.name}" for alias in node.names))
                         if name in modules}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name in modules}
    return imported


def test_the_stack_s_modules_import_each_other_without_cycles():
    paths = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
             for path in (ROOT / "deploy").rglob("*.py")}
    graph = {module: imported_stack_modules(path, set(paths)) - {module} for module, path in paths.items()}

    def cycle_from(module: str, trail: list[str]) -> list[str] | None:
        if module in trail:
            return trail[trail.index(module):] + [module]
        for imported in sorted(graph[module]):
            found = cycle_from(imported, [*trail, module])
            if found:
                return found
        return None
    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(module, []))]
    assert cycles == [], " -> ".join(cycles[0])
