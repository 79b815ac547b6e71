"""The one door into the served graph: every request passes here before langgraph-api sees it.

langgraph-api is a framework for many deployments, so its defaults are permissive: it serves
development routes (``/internal/truncate`` wipes every thread, ``/internal/debug/...`` dumps
one, ``/deploy`` spawns a deployment), answers ``Access-Control-Allow-Origin: *`` with the
private-network header, accepts ``text/plain`` bodies as JSON, and its custom auth covers the
API routes but not ``/docs``, ``/openapi.json``, ``/metrics`` or ``/info``. Patching each of
those inside the library would be a hunt that the next release reopens. Instead the whole
application is wrapped in one ASGI layer that decides, from the request line and headers
alone, whether langgraph-api is asked at all:

- **An allow-list of routes.** Only what our clients and page use is reachable (the API for
  assistants, threads, runs and the store; ``/segresearch/*``; health and docs). Everything
  else is 404 whatever the token, so a route a future langgraph-api adds is closed until it
  is named here. WebSockets are refused: nothing of ours uses them and they skip the body
  checks.
- **One token check for every route** but the page's own static files.
- **No cross-origin use unless named.** A request carrying an ``Origin`` that is neither the
  server itself nor an origin the operator listed (``--cors-origin``) is refused before it
  runs, so a page on another site cannot make the browser of someone on the server's
  machine act for it. CORS headers from inside are dropped; ours are added for listed
  origins only, never the private-network header.
- **JSON bodies only** (415 otherwise): a foreign page can send ``text/plain`` or form
  bodies without a CORS preflight, but never ``application/json``. The upload route takes
  raw bytes and so requires a type outside the CORS-safelisted ones.
- **The Host header must name this machine** when the server listens on loopback, which
  defeats DNS rebinding (a foreign name that resolves to 127.0.0.1 would otherwise make the
  browser treat the server as same-origin with the attacker's page).

The lifespan (startup and shutdown of the runtime) goes straight to the inner router:
langgraph-api's app-level middleware expects a running runtime, and the PostgreSQL runtime's
store does not exist before its lifespan has started (the request middleware would fail the
lifespan, and uvicorn would then serve with no runtime at all).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segresearch.compat.langgraph_api import server_app
from segresearch.core.envvars import env_str, setting
from segresearch.servers.auth import expected_token, is_public, token_matches

CORS_ORIGINS_ENV = "SEGRESEARCH_CORS_ORIGINS"
# Set by ``serve graph`` from --host: whether Host headers must be loopback names.
LOOPBACK_ONLY_ENV = "SEGRESEARCH_LOOPBACK_ONLY"
# More names a loopback server answers to (``--allowed-host``): a reverse proxy on the same
# machine that forwards the public Host header.
ALLOWED_HOSTS_ENV = "SEGRESEARCH_ALLOWED_HOSTS"

_ID = r"[^/]+"
_ANY = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_READ = frozenset({"GET", "HEAD", "OPTIONS"})
# (methods, path pattern). Patterns match the whole path as the router sees it.
_ALLOWED: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = tuple(
    (methods, re.compile(pattern)) for methods, pattern in (
        (_READ, r"/ok"),
        (_READ, r"/info"),
        (_READ, r"/docs"),
        (_READ, r"/openapi\.json"),
        (_READ, r"/metrics"),
        (_ANY, r"/assistants(/.*)?"),
        (_ANY, r"/runs(/.*)?"),
        (_ANY, r"/store(/.*)?"),
        (_ANY, r"/segresearch(/.*)?"),
        (_ANY, r"/threads(/.*)?"),
    )
)
# Inside allowed prefixes but closed: the v2 event-streaming routes start runs from protocol
# messages that the request checks (graph_app.RunPayloadGuard) do not read.
_DENIED = tuple(re.compile(p) for p in (
    rf"/threads/{_ID}/commands(/.*)?",
    rf"/threads/{_ID}/stream/events(/.*)?",
    rf"/threads/{_ID}/runs/{_ID}/protocol(/.*)?",
))
# Content types a browser may send cross-origin without asking first (Fetch "CORS-safelisted").
_SIMPLE_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
_RAW_BODY_ROUTES = (("PUT", re.compile(r"/segresearch/uploads")),)
_EXPOSED = "x-pagination-total, x-pagination-next, content-location"


def route_allowed(method: str, path: str) -> bool:
    """Whether a request line may reach the application at all (before any token)."""
    if any(p.fullmatch(path) for p in _DENIED):
        return False
    return any(method in methods and pattern.fullmatch(path) for methods, pattern in _ALLOWED)


def allowed_origins() -> frozenset[str]:
    """The operator's ``--cors-origin`` values, normalised like a browser's Origin header."""
    raw = env_str(CORS_ORIGINS_ENV)
    return frozenset(o for o in (normalise_origin(x) for x in raw.split(",")) if o)


def normalise_origin(value: str) -> str | None:
    """``scheme://host[:port]`` as a browser sends it (default ports dropped, lower case), or
    None for anything that is not an http(s) origin (``null``, paths, user info)."""
    value = value.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _public(scope: Scope, method: str, path: str) -> bool:
    """What answers without the token: the page's own files (so it can ask for one), CORS
    preflights (browsers never send credentials on them), and the bare health check, which
    load balancers poll without headers; ``/ok?check_db=1`` touches the database and is not
    public."""
    if method == "OPTIONS" or is_public(method, path):
        return True
    return method in ("GET", "HEAD") and path == "/ok" and not scope.get("query_string")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _media_type(raw: bytes | None) -> str:
    return raw.decode("latin-1").split(";", 1)[0].strip().lower() if raw else ""


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if _header(scope, b"transfer-encoding") is not None:
        return True
    try:
        return length is not None and int(length) > 0
    except ValueError:
        return True  # malformed: treat as a body, so the type rule applies


def _host_name(host_header: bytes | str) -> str:
    """The name part of a Host header (no port, no IPv6 brackets), lower case."""
    host = host_header.decode("latin-1") if isinstance(host_header, bytes) else host_header
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_host(host_header: bytes | None) -> bool:
    """Whether a Host header names this machine's loopback interface (any port)."""
    if not host_header:
        return False
    host = _host_name(host_header)
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: bytes | None) -> bool:
    """A loopback name, or one the operator listed (``--allowed-host``, any port)."""
    if is_loopback_host(host_header):
        return True
    listed = {_host_name(h) for h in env_str(ALLOWED_HOSTS_ENV).split(",") if h.strip()}
    return bool(host_header) and _host_name(host_header or b"") in listed


def _own_origins(scope: Scope) -> set[str]:
    """The origins a page served by this server has: its Host over http or https (behind a
    TLS-terminating proxy the server itself sees plain http)."""
    host = _header(scope, b"host")
    if not host:
        return set()
    name = host.decode("latin-1")
    return {o for o in (normalise_origin(f"{scheme}://{name}") for scheme in ("http", "https")) if o}


async def _answer(send: Send, status: int, detail: str | list[str],
                  headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff"), *headers]})
    await send({"type": "http.response.body", "body": body})


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
            (b"access-control-expose-headers", _EXPOSED.encode())]


class Gateway:
    """Pure ASGI around the langgraph-api application (see the module docstring)."""

    def __init__(self, app: ASGIApp, lifespan_app: ASGIApp | None = None) -> None:
        self.app = app
        self.lifespan_app = lifespan_app or app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.lifespan_app({**scope, "app": self.app}, receive, send)
            return
        if kind != "http":  # websockets: nothing of ours uses them
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            status, detail, extra = refusal
            await _answer(send, status, detail, extra)
            return
        origin = self._foreign_origin(scope)
        if scope["method"] == "OPTIONS":
            await self._preflight(origin, send)
            return
        await self.app(scope, receive, self._rewrite_cors(send, origin))

    # ---------------------------------------------------------------- decisions

    def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """(status, detail, extra headers) when the request stops here, else None.

        Order matters: a closed route is 404 before the token is looked at, so probing
        without the token learns nothing the token would have hidden; the token comes
        before the body rules, so an unauthenticated client learns nothing about them."""
        method, path = scope["method"].upper(), scope.get("path", "")
        if setting(LOOPBACK_ONLY_ENV) and not host_allowed(_header(scope, b"host")):
            return 421, "this server answers only to requests for its loopback address (see --allowed-host)", []
        raw_origin = _header(scope, b"origin")
        if raw_origin is not None:
            origin = normalise_origin(raw_origin.decode("latin-1"))
            if origin is None or (origin not in _own_origins(scope) and origin not in allowed_origins()):
                return 403, "cross-origin requests are not allowed from this origin (see --cors-origin)", []
        if not route_allowed(method, path):
            return 404, "Not Found", []
        expected = expected_token()
        if expected and not _public(scope, method, path) \
                and not token_matches(_header(scope, b"authorization"), expected):
            return 401, "a valid 'Authorization: Bearer <token>' header is required", \
                [(b"www-authenticate", b"Bearer")]
        if method in ("POST", "PUT", "PATCH", "DELETE") and _has_body(scope):
            media = _media_type(_header(scope, b"content-type"))
            raw_route = any(m == method and p.fullmatch(path) for m, p in _RAW_BODY_ROUTES)
            if raw_route:
                if not media or media in _SIMPLE_TYPES:
                    return 415, "send the file as application/octet-stream", []
            elif media != "application/json":
                return 415, "request bodies must be application/json", []
        return None

    def _foreign_origin(self, scope: Scope) -> str | None:
        """The request's Origin when it is a listed foreign origin (CORS headers are then
        due); None for same-origin and origin-less requests (refusals happened before)."""
        raw = _header(scope, b"origin")
        origin = normalise_origin(raw.decode("latin-1")) if raw else None
        if origin is None or origin in _own_origins(scope):
            return None
        return origin

    async def _preflight(self, origin: str | None, send: Send) -> None:
        if origin is None:  # a same-origin or non-browser OPTIONS: nothing to negotiate
            await send({"type": "http.response.start", "status": 204,
                        "headers": [(b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 204, "headers": [
            *_cors_headers(origin),
            (b"access-control-allow-methods", b"GET, HEAD, POST, PUT, PATCH, DELETE"),
            (b"access-control-allow-headers", b"authorization, content-type, accept, last-event-id"),
            (b"access-control-max-age", b"600"),
        ]})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def _rewrite_cors(send: Send, origin: str | None) -> Send:
        """Drop every CORS header the application set; add ours for a listed origin."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if not k.lower().startswith(b"access-control-")
                           and not (origin and k.lower() == b"vary" and v.lower() == b"origin")]
                if origin:
                    headers += _cors_headers(origin)
                message = {**message, "headers": headers}
            await send(message)

        return wrapped


def build() -> Gateway:
    """The gateway around langgraph-api's application, configured from the environment that
    ``serve graph`` prepared (langgraph-api reads its configuration at import)."""
    inner, lifespan_app = server_app()
    return Gateway(inner, lifespan_app=lifespan_app)
