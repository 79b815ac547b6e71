"""Web search backends and the guarded HTTP helpers, against loopback fakes only.

Every server here is the test's own, on 127.0.0.1; library clients (ddgs, tavily) are
replaced by fakes. Addresses that are not loopback appear only in tests where the request
must be refused before any connection is attempted.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from segresearch.tools.search import SearchUnavailable, get_backend
from segresearch.tools.search import http as http_util
from segresearch.tools.search.http import (
    BlockedAddress,
    ImageFetchError,
    RequestFailed,
    fetch_image,
    is_public_address,
    parse_retry_after,
    request_with_retries,
    retry_delay,
)
from segresearch.tools.search.web import (
    IMAGE_SPARE,
    DDGBackend,
    RetrieverBackend,
    SerperBackend,
    TavilyBackend,
    WebSearchError,
)

LOOPBACK = ["127.0.0.1/32"]  # what tests allow besides public addresses
SERPER_KEY = "sk-serper-SECRET-0123456789"
TAVILY_KEY = "tvly-SECRET-9876543210"


# ------------------------------------------------------------------ fake server


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length
    length: int | None = None  # Content-Length to declare (None: the true length)
    close_delimited: bool = False  # no length at all: the body ends when the socket closes


def json_reply(obj: Any, status: int = 200, **kw: Any) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"}, **kw)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (24, 16), color=(200, 40, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def image_reply(fmt: str = "PNG", **kw: Any) -> Reply:
    ctype = "image/png" if fmt == "PNG" else "image/jpeg"
    return Reply(200, image_bytes(fmt, **kw), {"Content-Type": ctype})


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """Scripted replies per path; the last reply of a path repeats."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                server.seen.append(
                    Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                queue = server.routes.get(self.path.split("?")[0]) or [Reply(404, b"not found")]
                reply = queue.pop(0) if len(queue) > 1 else queue[0]
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on purpose (size caps)

            def _send(self, reply: Reply) -> None:
                if reply.close_delimited:
                    self.protocol_version = "HTTP/1.0"
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Connection", "close")
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif not reply.close_delimited:
                    length = len(reply.body) if reply.length is None else reply.length
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                if reply.chunked:
                    for i in range(0, len(reply.body), 16384):
                        part = reply.body[i : i + 16384]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(reply.body)
                self.close_connection = True

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def route(self, path: str, *replies: Reply) -> str:
        self.routes[path] = list(replies)
        return self.url + path

    def hits(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path.split("?")[0] == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def client():
    with httpx.Client() as c:
        yield c


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ retries


def test_retry_after_429_is_honoured_but_capped(server, client):
    url = server.route("/api", Reply(429, headers={"Retry-After": "30"}), json_reply({"ok": 1}))
    t0 = time.monotonic()
    resp = request_with_retries(client, "GET", url, backoff=0.01, max_backoff=0.3, timeout=2)
    took = time.monotonic() - t0
    assert resp.json() == {"ok": 1}
    assert len(server.hits("/api")) == 2
    assert 0.25 <= took < 2.0  # waited the capped Retry-After, not 30 s


def test_5xx_exhaustion_gives_readable_error(server, client):
    url = server.route("/api", Reply(503))
    with pytest.raises(RequestFailed) as ei:
        request_with_retries(client, "POST", url, retries=2, backoff=0.01, timeout=2)
    assert str(ei.value) == "HTTP 503 after 3 attempts"
    assert ei.value.status == 503
    assert len(server.hits("/api")) == 3


def test_other_4xx_is_not_retried(server, client):
    url = server.route("/api", Reply(404))
    with pytest.raises(RequestFailed) as ei:
        request_with_retries(client, "GET", url, backoff=0.01, timeout=2)
    assert str(ei.value) == "HTTP 404" and ei.value.status == 404
    assert len(server.hits("/api")) == 1


def test_connection_errors_are_retried_then_reported(client, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(http_util, "_sleep", waits.append)
    with pytest.raises(RequestFailed) as ei:
        request_with_retries(client, "GET", f"http://127.0.0.1:{closed_port()}/", retries=2,
                             backoff=0.1, max_backoff=0.15, timeout=2)
    assert ei.value.kind == "connect"
    assert str(ei.value).startswith("cannot connect") and "after 3 attempts" in str(ei.value)
    assert len(waits) == 2 and all(0.05 <= w <= 0.15 for w in waits)


def test_slow_server_times_out_within_bound(server, client):
    url = server.route("/slow", Reply(200, b"late", delay=2.0))
    t0 = time.monotonic()
    with pytest.raises(RequestFailed) as ei:
        request_with_retries(client, "GET", url, timeout=0.3, backoff=0.01)
    assert time.monotonic() - t0 < 1.5
    assert str(ei.value) == "no answer within 0.3 s" and ei.value.kind == "timeout"
    assert len(server.hits("/slow")) == 1  # a read timeout is not retried


def test_deadline_bounds_the_whole_exchange(server, client):
    url = server.route("/api", Reply(503, headers={"Retry-After": "0.3"}))
    t0 = time.monotonic()
    with pytest.raises(RequestFailed, match="HTTP 503"):
        request_with_retries(client, "GET", url, retries=10, max_backoff=1.0, timeout=5,
                             deadline=time.monotonic() + 0.7)
    assert time.monotonic() - t0 < 1.2
    assert 2 <= len(server.hits("/api")) <= 3


def test_backoff_grows_with_jitter_and_cap():
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (6, 8.0)]:
        delays = {retry_delay(attempt, 0.5, 8.0) for _ in range(50)}
        assert all(base / 2 <= d <= base for d in delays)
        assert len(delays) > 1  # jittered
    assert retry_delay(0, 0.5, 8.0, retry_after=100) == 8.0
    assert retry_delay(3, 0.5, 8.0, retry_after=1.5) == 1.5


def test_parse_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(date, now=1445412480 - 20) == pytest.approx(20.0)


# ------------------------------------------------------------------ addresses and images


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False),
        ("10.1.2.3", False), ("192.168.0.1", False), ("172.16.5.4", False),
        ("169.254.169.254", False), ("224.0.0.1", False), ("0.0.0.0", False),
        ("240.0.0.1", False), ("100.64.0.1", False), ("::1", False), ("fe80::1%2", False),
        ("fc00::1", False), ("::ffff:127.0.0.1", False), ("64:ff9b::a01:203", False),
    ],
)
def test_public_address_classification(address, public):
    assert is_public_address(address) is public


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fetch_good_image(server, fmt):
    url = server.route("/img", image_reply(fmt, size=(30, 20), color=(10, 200, 30)))
    img = fetch_image(url, timeout=3, allow_private=LOOPBACK)
    assert img.mode == "RGB" and img.size == (30, 20)
    r, g, b = img.getpixel((15, 10))
    assert abs(r - 10) < 8 and abs(g - 200) < 8 and abs(b - 30) < 8


def test_loopback_refused_unless_allowed(server):
    url = server.route("/img", image_reply())
    with pytest.raises(BlockedAddress, match="127.0.0.1"):
        fetch_image(url, timeout=3)
    assert server.seen == []  # refused before connecting
    assert fetch_image(url, timeout=3, allow_private=True).size == (24, 16)


def test_wrong_content_type_refused(server):
    url = server.route("/page", Reply(200, b"<html></html>", {"Content-Type": "text/html"}))
    with pytest.raises(ImageFetchError, match="not an image \\(text/html\\)"):
        fetch_image(url, timeout=3, allow_private=LOOPBACK)


def test_http_error_status_reported(server):
    url = server.route("/gone", Reply(404))
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        fetch_image(url, timeout=3, allow_private=LOOPBACK)


def _big_png(nbytes: int) -> bytes:
    """A PNG followed by padding: any reader that stops at the cap fails the same way."""
    return image_bytes() + b"\0" * nbytes


def test_declared_length_over_cap_refused_before_reading(server):
    # Declares 10 MB but sends a few bytes: only the declaration can trigger the refusal.
    url = server.route("/big", Reply(200, image_bytes(), {"Content-Type": "image/png"}, length=10**7))
    with pytest.raises(ImageFetchError, match="larger than 100,000 bytes"):
        fetch_image(url, timeout=3, allow_private=LOOPBACK, max_bytes=100_000)


def test_chunked_body_over_cap_aborted(server):
    url = server.route(
        "/big", Reply(200, _big_png(300_000), {"Content-Type": "image/png"}, chunked=True)
    )
    with pytest.raises(ImageFetchError, match="larger than 100,000 bytes"):
        fetch_image(url, timeout=3, allow_private=LOOPBACK, max_bytes=100_000)


def test_close_delimited_body_over_cap_aborted(server):
    url = server.route(
        "/big", Reply(200, _big_png(300_000), {"Content-Type": "image/png"}, close_delimited=True)
    )
    with pytest.raises(ImageFetchError, match="larger than 100,000 bytes"):
        fetch_image(url, timeout=3, allow_private=LOOPBACK, max_bytes=100_000)


def test_lying_content_length_does_not_return_an_image(server):
    # Declares a small body, sends far more: the client reads only what was declared and
    # the truncated bytes are not an image; nothing past the declaration is accepted.
    url = server.route(
        "/lie", Reply(200, _big_png(300_000)[40:], {"Content-Type": "image/png"}, length=1000)
    )
    with pytest.raises(ImageFetchError):
        fetch_image(url, timeout=3, allow_private=LOOPBACK, max_bytes=100_000)


def test_decompression_bomb_refused(server):
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")  # 100 Mpx in a few KB
    assert len(buf.getvalue()) < 100_000
    url = server.route("/bomb", Reply(200, buf.getvalue(), {"Content-Type": "image/png"}))
    with pytest.raises(ImageFetchError, match="too large"):
        fetch_image(url, timeout=3, allow_private=LOOPBACK)


def test_redirect_followed_and_rechecked(server):
    server.route("/img", image_reply())
    url = server.route("/r", Reply(302, headers={"Location": "/img"}))
    assert fetch_image(url, timeout=3, allow_private=LOOPBACK).size == (24, 16)
    assert [s.path for s in server.seen] == ["/r", "/img"]


def test_redirect_to_private_address_refused(server):
    url = server.route(
        "/r", Reply(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    )
    t0 = time.monotonic()
    with pytest.raises(BlockedAddress, match="169.254.169.254"):
        fetch_image(url, timeout=3, allow_private=LOOPBACK)
    assert time.monotonic() - t0 < 1.0  # refused, not attempted
    assert len(server.seen) == 1


def test_redirect_to_other_scheme_and_loops_refused(server):
    url = server.route("/r", Reply(302, headers={"Location": "file:///etc/passwd"}))
    with pytest.raises(ImageFetchError, match="refused to fetch a file URL"):
        fetch_image(url, timeout=3, allow_private=LOOPBACK)
    loop = server.route("/loop", Reply(301, headers={"Location": "/loop"}))
    with pytest.raises(ImageFetchError, match="too many redirects"):
        fetch_image(loop, timeout=3, allow_private=LOOPBACK, max_redirects=3)
    assert len(server.hits("/loop")) == 4


def test_connects_to_the_checked_address(server):
    """The resolved, checked address is the one connected to (no second DNS lookup that a
    rebinding attacker could answer differently); the Host header keeps the name."""
    server.route("/img", image_reply())
    looked_up: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["127.0.0.1"]

    img = fetch_image(f"http://images.invalid:{server.port}/img", timeout=3,
                      allow_private=LOOPBACK, resolver=resolver)
    assert img.size == (24, 16)
    assert looked_up == ["images.invalid"]
    assert server.seen[0].headers["host"] == f"images.invalid:{server.port}"


def _self_signed(tmp_path, hostname: str) -> tuple[str, str]:
    """A certificate for ``hostname`` (also its own CA) and its key, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return str(cert_path), str(key_path)


def test_https_pinned_address_still_verifies_the_host_name(server, tmp_path):
    """Connecting to the checked address must not weaken TLS: the certificate is checked
    against the URL's host name (sent as SNI), not the address."""
    cert, key = _self_signed(tmp_path, "images.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server.httpd.socket = server_ctx.wrap_socket(server.httpd.socket, server_side=True)
    server.route("/img", image_reply())
    resolve = lambda h, p: ["127.0.0.1"]  # noqa: E731
    with httpx.Client(verify=ssl.create_default_context(cafile=cert), trust_env=False) as c:
        img = fetch_image(f"https://images.test:{server.port}/img", timeout=3,
                          allow_private=LOOPBACK, resolver=resolve, client=c)
        assert img.size == (24, 16)
        assert server.seen[0].headers["host"] == f"images.test:{server.port}"
        with pytest.raises(ImageFetchError, match="TLS certificate rejected"):
            fetch_image(f"https://impostor.test:{server.port}/img", timeout=3,
                        allow_private=LOOPBACK, resolver=resolve, client=c)
    assert len(server.seen) == 1


def test_every_resolved_address_is_checked(server):
    server.route("/img", image_reply())
    with pytest.raises(BlockedAddress, match="10.1.2.3"):
        fetch_image(f"http://mixed.invalid:{server.port}/img", timeout=3, allow_private=LOOPBACK,
                    resolver=lambda h, p: ["127.0.0.1", "10.1.2.3"])
    assert server.seen == []


def test_non_http_urls_refused():
    for url in ("file:///etc/passwd", "ftp://example.com/a.png", "data:image/png;base64,AA"):
        with pytest.raises(ImageFetchError, match="refused"):
            fetch_image(url, timeout=1)


# ------------------------------------------------------------------ serper


@pytest.fixture
def serper_env(server, monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", SERPER_KEY)
    monkeypatch.setenv("SEGRESEARCH_SERPER_URL", server.url)
    return server


def serper(**kw: Any) -> SerperBackend:
    opts = {"timeout": 3.0, "retries": 2, "backoff": 0.01, "max_backoff": 0.05, **kw}
    return SerperBackend(**opts)


def organic(n: int) -> dict[str, Any]:
    return {"organic": [{"title": f"T{i}", "snippet": f"S{i}", "link": f"https://x/{i}"} for i in range(n)]}


def test_serper_text_parsing_and_k(serper_env):
    serper_env.route("/search", json_reply(organic(5)))
    hits = serper().search_text("who won", 3)
    assert [(h.title, h.text) for h in hits] == [("T0", "S0"), ("T1", "S1"), ("T2", "S2")]
    assert hits[0].score > hits[1].score > hits[2].score
    (req,) = serper_env.hits("/search")
    assert req.json() == {"q": "who won", "num": 3}
    assert req.headers["x-api-key"] == SERPER_KEY


def test_serper_batch_one_request_per_query(serper_env):
    serper_env.route("/search", json_reply(organic(2)))
    out = serper().search_text_batch(["a", "b", "c"], 1)
    assert [[h.title for h in hits] for hits in out] == [["T0"]] * 3
    assert sorted(r.json()["q"] for r in serper_env.hits("/search")) == ["a", "b", "c"]


def test_serper_429_then_success(serper_env):
    serper_env.route("/search", Reply(429, headers={"Retry-After": "0.05"}), json_reply(organic(1)))
    t0 = time.monotonic()
    assert [h.title for h in serper().search_text("q", 3)] == ["T0"]
    assert time.monotonic() - t0 < 1.5
    assert len(serper_env.hits("/search")) == 2


def test_serper_5xx_exhaustion(serper_env):
    serper_env.route("/search", Reply(502))
    with pytest.raises(WebSearchError) as ei:
        serper().search_text("q", 3)
    assert str(ei.value) == "serper: HTTP 502 after 3 attempts"


def test_serper_rejected_key_is_named_not_shown(serper_env):
    serper_env.route("/search", json_reply({"message": f"Unauthorized key {SERPER_KEY}"}, 403))
    backend = serper()
    with pytest.raises(WebSearchError) as ei:
        backend.search_text("q", 3)
    assert str(ei.value) == "serper: HTTP 403 (check SERPER_API_KEY)"
    assert len(serper_env.hits("/search")) == 1
    assert SERPER_KEY not in repr(backend) and SERPER_KEY not in repr(vars(backend))


def test_serper_error_detail_is_scrubbed(serper_env):
    serper_env.route("/search", json_reply({"message": f"Not enough credits for {SERPER_KEY}"}, 400))
    with pytest.raises(WebSearchError) as ei:
        serper().search_text("q", 3)
    assert str(ei.value).startswith("serper: HTTP 400 (Not enough credits")
    assert SERPER_KEY not in str(ei.value)


def test_serper_timeout(serper_env):
    serper_env.route("/search", json_reply(organic(1), delay=2.0))
    t0 = time.monotonic()
    with pytest.raises(WebSearchError, match=r"^serper: no answer within 0.3 s$"):
        serper(timeout=0.3).search_text("q", 3)
    assert time.monotonic() - t0 < 1.5


def test_serper_malformed_json(serper_env):
    serper_env.route("/search", Reply(200, b"{not json", {"Content-Type": "application/json"}))
    with pytest.raises(WebSearchError, match="^serper: answer is not JSON$"):
        serper().search_text("q", 3)


def test_serper_missing_key(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    with pytest.raises(SearchUnavailable, match="SERPER_API_KEY"):
        SerperBackend()
    with pytest.raises(SearchUnavailable, match="SERPER_API_KEY"):
        get_backend("serper")


def test_serper_images_skip_unfetchable(serper_env):
    s = serper_env
    s.route("/bad.png", Reply(404))
    s.route("/good.png", image_reply(size=(12, 9)))
    s.route("/images", json_reply({"images": [
        {"title": "broken", "imageUrl": s.url + "/bad.png"},
        {"title": "Blue Square logo", "imageUrl": s.url + "/good.png"},
        {"title": "unused", "imageUrl": s.url + "/good.png"},
    ]}))
    hits = serper(allow_private=LOOPBACK).search_images("blue square logo", 1)
    assert [(h.name, h.image.size) for h in hits] == [("Blue Square logo", (12, 9))]
    assert s.hits("/images")[0].json() == {"q": "blue square logo", "num": 1 + IMAGE_SPARE}
    assert len(s.hits("/good.png")) == 1  # only as many downloads as needed


def test_serper_images_all_unfetchable(serper_env):
    s = serper_env
    s.route("/images", json_reply({"images": [
        {"title": "a", "imageUrl": s.url + "/a.png"}, {"title": "b", "imageUrl": s.url + "/b.png"},
    ]}))
    s.route("/a.png", image_reply())
    with pytest.raises(WebSearchError, match="^serper: none of the 2 images could be fetched"):
        serper().search_images("q", 1)  # loopback image URLs refused by default
    assert s.hits("/a.png") == []


# ------------------------------------------------------------------ retriever


def retriever(url: str, **kw: Any) -> RetrieverBackend:
    opts = {"timeout": 3.0, "retries": 2, "backoff": 0.01, "max_backoff": 0.05, **kw}
    return RetrieverBackend(url, **opts)


def docs_for(query: str, n: int) -> list[dict[str, Any]]:
    return [
        {"document": {"id": f"{query}-{i}", "contents": f"{query} title {i}\nbody {i} of {query}"},
         "score": 10.0 - i}
        for i in range(n)
    ]


def test_retriever_batch_is_one_request(server):
    server.route("/retrieve", json_reply({"result": [docs_for("a", 4), docs_for("b", 4), docs_for("c", 1)]}))
    out = retriever(server.url).search_text_batch(["a", "b", "c"], 2)
    assert len(server.seen) == 1
    assert server.seen[0].json() == {"queries": ["a", "b", "c"], "topk": 2, "return_scores": True}
    assert [[(h.title, h.text, h.score) for h in hits] for hits in out] == [
        [("a title 0", "body 0 of a", 10.0), ("a title 1", "body 1 of a", 9.0)],
        [("b title 0", "body 0 of b", 10.0), ("b title 1", "body 1 of b", 9.0)],
        [("c title 0", "body 0 of c", 10.0)],
    ]


def test_retriever_accepts_url_with_endpoint_and_unscored_documents(server):
    server.route("/retrieve", json_reply({"result": [[{"id": 1, "contents": "Only\nline"}]]}))
    hits = retriever(server.url + "/retrieve/").search_text("q", 3)
    assert [(h.title, h.text) for h in hits] == [("Only", "line")]


def test_retriever_server_errors(server):
    server.route("/retrieve", Reply(500))
    with pytest.raises(WebSearchError, match=r"^retriever: HTTP 500 after 3 attempts$"):
        retriever(server.url).search_text("q", 3)
    server.route("/retrieve", json_reply({"detail": "field required: queries"}, 422))
    with pytest.raises(WebSearchError, match=r"^retriever: HTTP 422 \(field required: queries\)$"):
        retriever(server.url).search_text("q", 3)
    server.route("/retrieve", json_reply({"result": [docs_for("a", 1)]}))
    with pytest.raises(WebSearchError, match="answered 1 result lists for 2 queries"):
        retriever(server.url).search_text_batch(["a", "b"], 3)
    server.route("/retrieve", Reply(200, b"<html>", {"Content-Type": "text/html"}))
    with pytest.raises(WebSearchError, match="^retriever: answer is not JSON$"):
        retriever(server.url).search_text("q", 3)


def test_retriever_timeout_and_refused_connection(server):
    server.route("/retrieve", json_reply({"result": [[]]}, delay=2.0))
    t0 = time.monotonic()
    with pytest.raises(WebSearchError, match=r"^retriever: no answer within 0.3 s$"):
        retriever(server.url, timeout=0.3).search_text("q", 3)
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(WebSearchError, match=r"^retriever: cannot connect"):
        retriever(f"http://127.0.0.1:{closed_port()}").search_text("q", 3)


def test_retriever_images(server):
    png = image_bytes(size=(8, 6))
    server.route("/images/missing.png", Reply(404))
    server.route("/images/logo.png", image_reply(size=(10, 7)))
    server.route("/retrieve", json_reply({"result": [[
        {"document": {"id": 0, "name": "missing", "image_path": "images/missing.png"}, "score": 3.0},
        {"document": {"id": 1, "name": "Blue logo", "image_path": "images/logo.png"}, "score": 2.0},
        {"document": {"id": 2, "name": "Inline", "image": base64.b64encode(png).decode()}, "score": 1.0},
    ]]}))
    # The retriever's own origin is trusted even though it is loopback.
    hits = retriever(server.url, allow_private=False).search_images("blue logo", 2)
    assert [(h.name, h.image.size, h.score) for h in hits] == [
        ("Blue logo", (10, 7), 2.0), ("Inline", (8, 6), 1.0)
    ]
    req = server.hits("/retrieve")[0].json()
    assert req["collection"] == "image" and req["topk"] == 2 + IMAGE_SPARE


def test_retriever_images_from_the_knowledge_base_folder(server, kb_dir):
    """A retriever over the local knowledge base returns paths into it, read from disk;
    paths leading out of the folder are not read (they are tried as URLs instead)."""
    outside = kb_dir.parent / "outside_kb.png"
    Image.new("RGB", (3, 3)).save(outside)
    server.route("/retrieve", json_reply({"result": [[
        {"document": {"id": 9, "name": "escape", "image_path": "../outside_kb.png"}},
        {"document": {"id": 0, "name": "Blue Square logo", "image_path": "images/blue.png"}, "score": 0.7},
    ]]}))
    hits = retriever(server.url, image_root=kb_dir).search_images("blue square", 2)
    assert [(h.name, h.image.size, h.score) for h in hits] == [("Blue Square logo", (40, 30), 0.7)]
    assert hits[0].image.getpixel((0, 0)) == (30, 60, 220)
    assert [s.path for s in server.seen] == ["/retrieve", "/outside_kb.png"]


def test_retriever_unconfigured():
    with pytest.raises(SearchUnavailable, match="retriever_url"):
        get_backend("retriever")
    with pytest.raises(SearchUnavailable, match="http"):
        RetrieverBackend("127.0.0.1:8001")


# ------------------------------------------------------------------ ddg


class FakeDDGS:
    """Stands in for ddgs.DDGS: returns canned rows, or raises the scripted errors first."""

    def __init__(self, text=(), images=(), errors=()) -> None:
        self.rows = {"text": list(text), "images": list(images)}
        self.errors = list(errors)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def _answer(self, kind: str, query: str, **kw: Any) -> list[dict[str, Any]]:
        self.calls.append((kind, query, kw))
        if self.errors:
            raise self.errors.pop(0)
        return list(self.rows[kind])

    def text(self, query: str, **kw: Any) -> list[dict[str, Any]]:
        return self._answer("text", query, **kw)

    def images(self, query: str, **kw: Any) -> list[dict[str, Any]]:
        return self._answer("images", query, **kw)


def ddg(fake: FakeDDGS, **kw: Any) -> DDGBackend:
    opts = {"timeout": 3.0, "retries": 2, "backoff": 0.01, "max_backoff": 0.05, **kw}
    return DDGBackend(client=fake, **opts)


TEXT_ROWS = [{"title": f"T{i}", "body": f"B{i}", "href": f"https://x/{i}"} for i in range(5)]


def test_ddg_text_parsing_and_k():
    fake = FakeDDGS(text=TEXT_ROWS)
    hits = ddg(fake).search_text("zephyr prize", 2)
    assert [(h.title, h.text) for h in hits] == [("T0", "B0"), ("T1", "B1")]
    assert fake.calls == [("text", "zephyr prize", {"max_results": 2})]


def test_ddg_rate_limit_retried_then_reported():
    from ddgs.exceptions import RatelimitException

    fake = FakeDDGS(text=TEXT_ROWS, errors=[RatelimitException("202 Ratelimit")])
    assert len(ddg(fake).search_text("q", 3)) == 3
    assert len(fake.calls) == 2
    fake = FakeDDGS(text=TEXT_ROWS, errors=[RatelimitException("202 Ratelimit")] * 5)
    with pytest.raises(WebSearchError, match="^ddg: rate limited$"):
        ddg(fake).search_text("q", 3)
    assert len(fake.calls) == 3


def test_ddg_no_results_and_timeout():
    from ddgs.exceptions import DDGSException, TimeoutException

    assert ddg(FakeDDGS(errors=[DDGSException("No results found.")])).search_text("q", 3) == []
    fake = FakeDDGS(errors=[TimeoutException("timed out")])
    with pytest.raises(WebSearchError, match=r"^ddg: no answer within 3 s$"):
        ddg(fake).search_text("q", 3)
    assert len(fake.calls) == 1


def test_ddg_images_fall_back_to_thumbnail_and_next_result(server):
    server.route("/full1.png", Reply(500))
    server.route("/full2.png", Reply(200, b"<html>", {"Content-Type": "text/html"}))
    server.route("/thumb2.png", image_reply(size=(5, 4)))
    fake = FakeDDGS(images=[
        {"title": "first", "image": server.url + "/full1.png"},
        {"title": "second", "image": server.url + "/full2.png", "thumbnail": server.url + "/thumb2.png"},
    ])
    hits = ddg(fake, allow_private=LOOPBACK).search_images("q", 1)
    assert [(h.name, h.image.size) for h in hits] == [("second", (5, 4))]
    assert fake.calls[0][2] == {"max_results": 1 + IMAGE_SPARE}


# ------------------------------------------------------------------ tavily


class FakeTavily:
    def __init__(self, answer: dict[str, Any] | None = None, errors=()) -> None:
        self.answer = answer or {}
        self.errors = list(errors)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def search(self, query: str, **kw: Any) -> dict[str, Any]:
        self.calls.append((query, kw))
        if self.errors:
            raise self.errors.pop(0)
        return self.answer


def tavily(fake: FakeTavily, **kw: Any) -> TavilyBackend:
    opts = {"timeout": 3.0, "retries": 2, "backoff": 0.01, "max_backoff": 0.05, **kw}
    return TavilyBackend(client=fake, **opts)


TAVILY_ANSWER = {"results": [
    {"title": f"T{i}", "url": f"https://x/{i}", "content": f"C{i}", "score": 0.9 - i / 10}
    for i in range(4)
]}


def test_tavily_text_parsing_and_k():
    fake = FakeTavily(TAVILY_ANSWER)
    hits = tavily(fake).search_text("q", 3)
    assert [(h.title, h.text, h.score) for h in hits] == [
        ("T0", "C0", 0.9), ("T1", "C1", 0.8), ("T2", "C2", 0.7)
    ]
    assert fake.calls[0][1]["max_results"] == 3 and 0 < fake.calls[0][1]["timeout"] <= 3


def test_tavily_errors(monkeypatch):
    from tavily.errors import BadRequestError, InvalidAPIKeyError, UsageLimitExceededError

    monkeypatch.setenv("TAVILY_API_KEY", TAVILY_KEY)
    fake = FakeTavily(TAVILY_ANSWER, errors=[UsageLimitExceededError("slow down")])
    assert len(tavily(fake).search_text("q", 2)) == 2 and len(fake.calls) == 2
    fake = FakeTavily(errors=[UsageLimitExceededError("")] * 5)
    with pytest.raises(WebSearchError, match=r"^tavily: rate limited or out of credits \(HTTP 429\)$"):
        tavily(fake).search_text("q", 2)
    assert len(fake.calls) == 3
    fake = FakeTavily(errors=[InvalidAPIKeyError(f"bad key {TAVILY_KEY}")])
    with pytest.raises(WebSearchError) as ei:
        tavily(fake).search_text("q", 2)
    assert str(ei.value) == "tavily: HTTP 401 (check TAVILY_API_KEY)" and len(fake.calls) == 1
    fake = FakeTavily(errors=[BadRequestError(f"query too long for {TAVILY_KEY}")])
    with pytest.raises(WebSearchError) as ei:
        tavily(fake).search_text("q", 2)
    assert str(ei.value).startswith("tavily: bad request (query too long")
    assert TAVILY_KEY not in str(ei.value)


def test_tavily_missing_key_and_repr(monkeypatch):
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    with pytest.raises(SearchUnavailable, match="TAVILY_API_KEY"):
        TavilyBackend()
    with pytest.raises(SearchUnavailable, match="TAVILY_API_KEY"):
        get_backend("tavily")
    monkeypatch.setenv("TAVILY_API_KEY", TAVILY_KEY)
    backend = TavilyBackend(timeout=2)
    assert TAVILY_KEY not in repr(backend) and TAVILY_KEY not in repr(vars(backend))


def test_tavily_real_client_against_loopback(server, monkeypatch):
    """The real tavily-python client, pointed at the fake: request shape and 401 mapping."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TAVILY_API_KEY", TAVILY_KEY)
    monkeypatch.setenv("SEGRESEARCH_TAVILY_URL", server.url)
    server.route("/search", json_reply(TAVILY_ANSWER))
    hits = TavilyBackend(timeout=3).search_text("zephyr", 2)
    assert [h.title for h in hits] == ["T0", "T1"]
    req = server.hits("/search")[0]
    assert req.json()["query"] == "zephyr" and req.json()["max_results"] == 2
    assert req.headers["authorization"] == f"Bearer {TAVILY_KEY}"
    server.route("/search", json_reply({"detail": {"error": f"Unauthorized: {TAVILY_KEY}"}}, 401))
    with pytest.raises(WebSearchError) as ei:
        TavilyBackend(timeout=3).search_text("zephyr", 2)
    assert str(ei.value) == "tavily: HTTP 401 (check TAVILY_API_KEY)"


def test_tavily_images_both_forms(server):
    server.route("/a.png", Reply(404))
    server.route("/b.png", image_reply(size=(6, 6)))
    server.route("/c.png", image_reply(size=(7, 7)))
    fake = FakeTavily({"results": [], "images": [
        server.url + "/a.png",
        {"url": server.url + "/b.png", "description": "A blue square"},
        server.url + "/c.png",
    ]})
    hits = tavily(fake, allow_private=LOOPBACK).search_images("blue square", 2)
    assert [(h.name, h.image.size) for h in hits] == [("A blue square", (6, 6)), ("blue square", (7, 7))]
    assert fake.calls[0][1]["include_images"] is True


# ------------------------------------------------------------------ registry


def test_backends_registered_with_keys(server, monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", SERPER_KEY)
    from segresearch.tools.search import backend_names

    assert {"retriever", "ddg", "tavily", "serper"} <= set(backend_names())
    r = get_backend("retriever", retriever_url=server.url, timeout=2.0)
    assert isinstance(r, RetrieverBackend) and r is get_backend("retriever", retriever_url=server.url, timeout=2.0)
    assert r.cache_key == f"retriever:{server.url}/retrieve"
    s = get_backend("serper", timeout=2.0, allow_private_urls=True)
    assert isinstance(s, SerperBackend) and s.allow_private is True and s.timeout == 2.0
    monkeypatch.setenv("SERPER_API_KEY", SERPER_KEY + "-rotated")
    assert get_backend("serper", timeout=2.0, allow_private_urls=True) is not s
    assert isinstance(get_backend("ddg", timeout=2.0), DDGBackend)
