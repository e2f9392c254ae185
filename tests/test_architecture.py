"""The package boundaries of docs/ARCHITECTURE.md, checked on the source.

* ``worker.core`` is pure: importing it loads no IO library (checked in a fresh interpreter).
* Every SQL statement lives in ``worker.store`` (and migrations, and the sandbox's read-only view
  of the members table): no other module imports SQLAlchemy's statement builders or runs
  statements on a session or connection.
* No module keeps state that an entry point or a test swaps at run time (``global``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "worker"
IO_LIBRARIES = ("sqlalchemy", "httpx", "celery", "redis", "aiohttp", "kombu", "psycopg")
#: Modules allowed to hold SQL besides worker/store.
SQL_ALLOWED = ("worker/store/", "worker/sandbox/")
#: SQLAlchemy names that build or run statements.
SQL_NAMES = {
    "select", "insert", "update", "delete", "text", "func", "and_", "or_", "tuple_", "literal",
    "exists", "union",
}  # fmt: skip
SQL_METHODS = {"execute", "scalar", "scalars", "exec_driver_sql"}


def _modules() -> list[Path]:
    return sorted(p for p in WORKER.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_core_imports_no_io_library() -> None:
    """Importing every worker.core module pulls in none of the IO libraries."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import worker.core\n"
        "for m in pkgutil.iter_modules(worker.core.__path__):\n"
        "    importlib.import_module(f'worker.core.{m.name}')\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(IO_LIBRARIES), f"worker.core loaded {loaded & set(IO_LIBRARIES)}"


def _sql_uses(tree: ast.AST) -> list[str]:
    """Statement builders imported from SQLAlchemy, and statement-running calls in a module that
    uses SQLAlchemy at all (a Redis pipeline's ``execute`` is not SQL)."""
    uses_sqlalchemy = any(
        (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("sqlalchemy"))
        or (isinstance(n, ast.Import) and any(a.name.startswith("sqlalchemy") for a in n.names))
        for n in ast.walk(tree)
    )
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("sqlalchemy")
        ):
            names = {a.name for a in node.names} & SQL_NAMES
            if names:
                found.append(f"line {node.lineno}: imports {sorted(names)} from {node.module}")
        if (
            uses_sqlalchemy
            and isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SQL_METHODS
        ):
            found.append(f"line {node.lineno}: .{node.func.attr}(...)")
    return found


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_no_sql_outside_the_store(path: Path) -> None:
    """Only worker/store (and the sandbox's members view) builds or runs SQL statements."""
    if _rel(path).startswith(SQL_ALLOWED):
        return
    assert _sql_uses(ast.parse(path.read_text())) == []


def test_the_check_finds_sql() -> None:
    """The SQL check itself: it flags a statement builder and a session call."""
    tree = ast.parse("from sqlalchemy import select\nsession.execute(select(X))\n")
    assert len(_sql_uses(tree)) == 2
    assert _sql_uses(ast.parse("pipe.execute(raise_on_error=False)\n")) == []


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_no_module_globals_swapped_at_run_time(path: Path) -> None:
    """No ``global`` statement: runtimes, sinks and follow-ups are passed, not swapped."""
    tree = ast.parse(path.read_text())
    assert [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Global)] == []
