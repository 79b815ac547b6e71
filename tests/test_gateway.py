"""The gateway's decisions on their own, in front of a stand-in application (fast; the same
rules are exercised through real servers on both engines in test_server_deploy.py)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from segresearch.servers.gateway import Gateway, normalise_origin, route_allowed

TOKEN = "gw-token-123"


async def _inner(scope, receive, send):
    """Answers 200 with CORS headers of its own, as langgraph-api does; records the call."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    _inner.calls.append(scope["path"])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"access-control-allow-origin", b"*"),
                            (b"access-control-allow-private-network", b"true")]})
    await send({"type": "http.response.body", "body": b"ok"})


_inner.calls = []


@pytest.fixture()
def client(monkeypatch):
    for name in ("SEGRESEARCH_API_TOKEN", "SEGRESEARCH_CORS_ORIGINS", "SEGRESEARCH_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGRESEARCH_LOOPBACK_ONLY", "1")
    _inner.calls.clear()
    return TestClient(Gateway(_inner), base_url="http://127.0.0.1:2024")


def test_routes_outside_the_allow_list_never_reach_the_app(client):
    for method, path in (("POST", "/internal/truncate"), ("GET", "/deploy"), ("POST", "/mcp"),
                         ("GET", "/"), ("POST", "/threads/x/commands"), ("GET", "//internal/truncate"),
                         ("GET", "/threads/x/stream/events"), ("GET", "/okay"), ("POST", "/ok")):
        assert client.request(method, path).status_code == 404, (method, path)
    assert _inner.calls == []
    assert route_allowed("POST", "/threads/abc/runs/wait") and route_allowed("GET", "/segresearch/ui/")


def test_inner_cors_headers_are_dropped(client):
    r = client.get("/ok")
    assert r.status_code == 200 and not [k for k in r.headers if k.lower().startswith("access-control")]


def test_a_proxy_forwarding_its_public_name(client, monkeypatch):
    """On loopback only loopback names are answered, unless the operator names more; the
    page's own origin counts as same-origin over http and https (a TLS proxy in front)."""
    headers = {"Host": "seg.example.org"}
    assert client.get("/ok", headers=headers).status_code == 421
    monkeypatch.setenv("SEGRESEARCH_ALLOWED_HOSTS", "seg.example.org")
    assert client.get("/ok", headers=headers).status_code == 200
    for origin in ("https://seg.example.org", "http://seg.example.org"):
        r = client.post("/threads", json={}, headers={**headers, "Origin": origin})
        assert r.status_code == 200, origin
    assert client.post("/threads", json={}, headers={**headers, "Origin": "https://evil.example"}).status_code == 403
    assert client.get("/ok", headers={"Host": "other.example.org"}).status_code == 421


def test_token_covers_everything_but_the_page_and_health(client, monkeypatch):
    monkeypatch.setenv("SEGRESEARCH_API_TOKEN", TOKEN)
    for path in ("/docs", "/openapi.json", "/metrics", "/info", "/segresearch/info", "/ok?check_db=1"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
    assert client.get("/ok").status_code == 200
    assert client.get("/segresearch/ui/").status_code == 200  # the page's own file
    assert client.post("/threads", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 401


@pytest.mark.parametrize("raw, expected", [
    ("https://App.Example.org", "https://app.example.org"), ("http://h:80", "http://h"),
    ("https://h:443/", "https://h"), ("http://[::1]:9", "http://[::1]:9"), ("null", None),
    ("http://u@h", None), ("ftp://h", None), ("http://h/path", None), ("http://h:99999", None),
])
def test_origins_are_compared_normalised(raw, expected):
    assert normalise_origin(raw) == expected
