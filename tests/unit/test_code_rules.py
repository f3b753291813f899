"""Rules on the code itself, checked on its syntax trees: no private name is imported across
modules (a name with a leading underscore is its module's own), and no function of the product
code is longer than 60 lines. Import cycles are import-linter's (``acyclic_siblings`` in
pyproject.toml, run by ``make lint``).

Tests are held to the first rule too: what a test needs of a module is public."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("barge", "db", "services", "api", "worker", "cli")
OURS = (*PRODUCT, "migrations", "tests", "bench", "scripts", "docs")
MAX_FUNCTION_LINES = 60
# Functions over the limit today whose packages another change is reworking; empty it as they
# are cut down (an entry that is no longer over the limit fails too).
LONG_FUNCTIONS_ALLOWED: frozenset[str] = frozenset()  # none left


def python_files(packages: tuple[str, ...], root: Path = ROOT) -> Iterator[Path]:
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if ".venv" not in path.parts and "__pycache__" not in path.parts:
                yield path


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, what) of each private name or private module imported, and of each private
    attribute read off something the file imported from our code (a module, a class)."""
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(is_private(part) for part in alias.name.split(".")):
                    yield node.lineno, f"import {alias.name}"
                if alias.name.split(".")[0] in OURS:
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            source = "." * node.level + (node.module or "")
            if any(is_private(part) for part in (node.module or "").split(".")):
                yield node.lineno, f"from {source} import ..."
            for alias in node.names:
                if is_private(alias.name):
                    yield node.lineno, f"from {source} import {alias.name}"
                elif node.level or (node.module or "").split(".")[0] in OURS:
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                yield node.lineno, f"{ast.unparse(node.value)}.{node.attr}"


def test_no_private_name_is_imported_across_modules() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in python_files(OURS)
        for line, what in private_imports(ast.parse(path.read_text(), str(path)))
    ]
    assert not found, "private names used outside their module (make them public):\n" + "\n".join(
        found
    )


def long_functions(packages: tuple[str, ...], root: Path = ROOT) -> dict[str, int]:
    """``path:name`` -> lines (decorators and docstring included) of every function over the
    limit."""
    found = {}
    for path in python_files(packages, root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - first + 1
                if lines > MAX_FUNCTION_LINES:
                    found[f"{path.relative_to(root).as_posix()}:{node.name}"] = lines
    return found


def test_no_function_of_the_product_is_longer_than_60_lines() -> None:
    found = long_functions(PRODUCT)
    over = {name: n for name, n in found.items() if name not in LONG_FUNCTIONS_ALLOWED}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them): {over}"
    stale = sorted(LONG_FUNCTIONS_ALLOWED - set(found))
    assert not stale, f"no longer over the limit: take them off LONG_FUNCTIONS_ALLOWED: {stale}"


SAMPLE = """
import worker.lease
from api import errors
from api.errors import _error_body, ApiError
from barge.records._base import Range
from . import _helpers
from celery import _state
x = errors._barge_error
y = worker.lease._Keeper
z = ApiError._private_method
ok = ApiError.public, errors.__doc__, self._own
"""


def test_the_private_rule_finds_what_it_is_about() -> None:
    found = sorted(what for _, what in private_imports(ast.parse(SAMPLE)))
    assert found == [
        "ApiError._private_method",
        "errors._barge_error",
        "from . import _helpers",
        "from api.errors import _error_body",
        "from barge.records._base import ...",
        "from celery import _state",
        "worker.lease._Keeper",
    ]


@pytest.mark.parametrize("lines", [60, 61])
def test_the_length_rule_counts_decorators_and_docstrings(tmp_path: Path, lines: int) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(lines - 3))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f'@decorator\ndef f():\n    """Doc."""\n{body}\n')
    assert long_functions(("pkg",), tmp_path) == ({} if lines == 60 else {"pkg/m.py:f": 61})
