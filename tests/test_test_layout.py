"""How the tests find what lies outside the repository: ``../shared`` only through the
``shared_dir``/``shared_path`` fixtures of conftest.py, so a bare checkout skips exactly the
tests that need it, each naming the missing file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# a path built to ../shared by hand: parents[N] / "shared", or the folder named in a string
_OWN_SHARED = re.compile(r"""parents\[\d\]\s*/\s*["']shared["']|["']\.\./shared""")


def test_only_conftest_locates_the_shared_folder():
    offenders = [f"{p.name}:{n}" for p in sorted(TESTS.glob("*.py")) if p.name != "conftest.py"
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if _OWN_SHARED.search(line) and p.name != Path(__file__).name]
    assert offenders == [], f"use the shared_path fixture instead: {offenders}"
    assert _OWN_SHARED.search('SHARED = Path(__file__).resolve().parents[2] / "shared"')


def test_test_modules_share_through_conftest_not_imports():
    """A helper one test module imports from another drags that module's fixtures and
    skips along with it; shared fixtures live in conftest.py, shared code in
    ``segresearch.testing``."""
    own = {p.stem for p in TESTS.glob("*.py")}
    offenders = []
    for p in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{p.name}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in own or n.startswith("tests")]
    assert offenders == []
