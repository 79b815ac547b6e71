"""The package's layers run one way (README, Development): import-linter's contracts in
pyproject.toml hold, and no import hides inside a function to dodge them."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segresearch"


def _lazy_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, trailing comment) of every import inside a function body."""
    source = path.read_text(encoding="utf-8")
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    out = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = ["." * node.level + (node.module or "")]
            else:
                continue
            comment = " ".join(comments.get(n, "") for n in range(node.lineno, (node.end_lineno or node.lineno) + 1))
            out += [(node.lineno, m, comment) for m in mods]
    return out


def _reasoned(comment: str) -> bool:
    """A reason is a comment that says something besides a linter's ``noqa``."""
    text = comment.lstrip("#").strip()
    return bool(text) and not text.lower().startswith("noqa")


def test_no_function_level_import_of_our_own_modules():
    """Our own modules are imported at the top: a lazy one hides an upward edge or a circle
    from a reader, while grimp still sees it."""
    found = [f"{p.relative_to(PACKAGE.parent)}:{line} {mod}" for p in sorted(PACKAGE.rglob("*.py"))
             for line, mod, _ in _lazy_imports(p) if mod.startswith((".", "segresearch"))]
    assert found == []


def test_every_lazy_import_says_why():
    """A third-party import inside a function is allowed for a heavy or optional dependency,
    and its line says which (``# heavy: …``), so nobody moves it to the top by accident."""
    found = [f"{p.relative_to(PACKAGE.parent)}:{line} {mod}" for p in sorted(PACKAGE.rglob("*.py"))
             for line, mod, comment in _lazy_imports(p) if not _reasoned(comment)]
    assert found == []


def test_the_rule_finds_what_it_forbids(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from segresearch.core import events\n"
                   "    import torch  # heavy: optional [hf] extra\n    import json  # noqa: F401\n")
    found = _lazy_imports(src)
    assert [m for _, m, _ in found] == ["segresearch.core", "torch", "json"]
    assert [_reasoned(c) for _, _, c in found] == [False, True, False]


def test_import_contracts_hold():
    """The same check as ``make lint`` (``lint-imports``), so the suite alone catches an
    upward import. In its own process: import-linter configures logging when it runs, which
    would silence every logger of this one."""
    pytest.importorskip("importlinter")
    tool = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(tool), "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
