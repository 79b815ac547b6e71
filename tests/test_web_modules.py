"""The web page's script modules without a browser (fast): what the page imports is what the
server serves, publicly and as JavaScript, the imports run one way, nothing else under the
page's prefix answers, and an installed package ships every file.

The page itself is driven in headless Chromium in test_web_page.py and test_review_web.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from segresearch.servers.gateway import Gateway
from segresearch.servers.graph_app import app
from segresearch.servers.web import PAGE_FILES, PAGE_PREFIX, WEB_DIR, public_paths

TOKEN = "web-modules-token-1234"
# ``import ... from "./x.js"``, ``import "./x.js"`` and ``export ... from "./x.js"``
_IMPORT = re.compile(r'^\s*(?:import|export)\b[^"\']*?(?:\bfrom\s+)?["\'](\.[^"\']+)["\']', re.M)


def _module_imports() -> dict[str, set[str]]:
    """Each served module's imports, as paths under PAGE_PREFIX."""
    graph: dict[str, set[str]] = {}
    for name, file in PAGE_FILES.items():
        if not file.endswith(".js"):
            continue
        here = Path(name).parent
        graph[name] = {(here / spec).as_posix().removeprefix("./")
                       for spec in _IMPORT.findall((WEB_DIR / file).read_text(encoding="utf-8"))}
    return graph


def test_the_page_loads_one_entry_module_and_every_import_is_served():
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts == ['<script type="module" src="js/main.js">'], scripts
    graph = _module_imports()
    assert "js/main.js" in graph
    for module, imports in graph.items():
        for target in imports:
            assert target in PAGE_FILES, f"{module} imports {target}, which the server does not serve"
    # every module is reached from the entry point: none is served but unused
    reached, todo = set(), ["js/main.js"]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo.extend(graph[m])
    assert reached == set(graph), set(graph) - reached


def test_module_imports_run_one_way():
    """No import circle: each module can be read knowing only the ones below it."""
    graph = _module_imports()
    done: set[str] = set()
    path: list[str] = []

    def visit(m: str) -> None:
        if m in done:
            return
        assert m not in path, "import circle: " + " -> ".join([*path[path.index(m):], m])
        path.append(m)
        for target in sorted(graph[m]):
            visit(target)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_every_file_of_the_web_folder_is_a_page_file():
    """A file added to the folder is either served (a module in ``js/``) or noticed here."""
    on_disk = {p.relative_to(WEB_DIR).as_posix() for p in WEB_DIR.rglob("*") if p.is_file()}
    assert on_disk == set(PAGE_FILES.values())
    assert public_paths() == {PAGE_PREFIX, *(f"{PAGE_PREFIX}/{name}" for name in PAGE_FILES)}


@pytest.fixture()
def locked(monkeypatch):
    """The served application behind the gateway, with a token required."""
    for name in ("SEGRESEARCH_CORS_ORIGINS", "SEGRESEARCH_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGRESEARCH_API_TOKEN", TOKEN)
    monkeypatch.setenv("SEGRESEARCH_LOOPBACK_ONLY", "1")
    return TestClient(Gateway(app), base_url="http://127.0.0.1:2024")


def test_page_files_are_served_without_the_token_with_their_type(locked):
    for name, file in PAGE_FILES.items():
        r = locked.get(f"{PAGE_PREFIX}/{name}")
        assert r.status_code == 200, name
        assert r.content == (WEB_DIR / file).read_bytes(), name
        kind = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}[Path(file).suffix]
        assert r.headers["content-type"] == f"{kind}; charset=utf-8", name
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert "script-src 'self'" in r.headers["content-security-policy"], name


@pytest.mark.parametrize("path", [
    "/js/", "/js", "/js/nothing.js", "/app.js", "/index.html", "/js/main.js/x", "/js/main.js.map",
    "/js/%2e%2e/app.css", "/js/..%2F..%2Fweb.py", "/js/%2e%2e/%2e%2e/web.py", "/js/../../web.py",
    "/../web.py", "/js/main.js%00", "/js/MAIN.js",
])
def test_nothing_else_under_the_page_prefix_is_public_or_served(locked, path):
    """Only the exact page files answer without the token; with it, anything else under the
    prefix (a module that does not exist, the folder, an escape from it) is not found."""
    url = PAGE_PREFIX + path
    assert locked.get(url).status_code == 401, url
    r = locked.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404, (url, r.status_code, r.text[:200])


def test_the_package_ships_every_page_file():
    """setuptools' package-data globs do not descend into folders: ``js/`` needs its own."""
    tomllib = pytest.importorskip("tomllib")  # the standard library's from Python 3.11
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["segresearch"]
    package = root / "segresearch"
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    for file in PAGE_FILES.values():
        assert WEB_DIR / file in shipped, file
