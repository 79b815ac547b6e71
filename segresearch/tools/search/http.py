"""HTTP plumbing shared by the web search backends: bounded retries and a guarded image fetch.

Web search APIs fail transiently (rate limits, overloaded servers) and the model only ever
sees one short line about a failure, so the retry helper absorbs transient trouble within a
bounded time and turns the rest into a sentence a model can act on.

Image URLs in search results are chosen by whoever wrote the pages the search engine
indexed. Fetching them from inside a cluster would let anyone on the web aim our requests
at internal services (server-side request forgery), so :func:`fetch_image` resolves every
host itself, refuses non-public addresses, and connects to exactly the address it checked:
a second DNS lookup by the HTTP library could return a different, internal address (DNS
rebinding). Redirects are followed by hand so that every hop gets the same checks.
"""

from __future__ import annotations

import email.utils
import io
import ipaddress
import logging
import random
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from PIL import Image

from segresearch.core.shared_cache import LoadOnce
from segresearch.core.urls import redact_url

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# Pixels, not bytes, bound decoding memory: a tiny PNG can declare a gigapixel canvas.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_REDIRECTS = 3
USER_AGENT = "Mozilla/5.0 (compatible; SegResearch/0.1; +https://arxiv.org/abs/2602.04454)"

# Connection-level failures worth another attempt; a read timeout is not among them, since
# a server that was too slow once will likely be too slow again and each retry would cost
# another full timeout.
_RETRYABLE_TRANSPORT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)

_sleep = time.sleep  # module attributes so tests can observe or shorten waits
_random = random.random

AddressPolicy = bool | Sequence[str]
Resolver = Callable[[str, int], Sequence[str]]
T = TypeVar("T")


class RequestFailed(RuntimeError):
    """A request that did not produce a usable response; ``str()`` is model-readable."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "http",
        status: int | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind  # "http", "rate_limited", "timeout", "connect", "invalid"
        self.status = status
        self.response = response


class ImageFetchError(RuntimeError):
    """An image URL that could not be turned into a picture (message is model-readable)."""


class BlockedAddress(ImageFetchError):
    """The URL points at an address we refuse to contact (private, loopback, ...)."""


# ------------------------------------------------------------------ retries


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(
    attempt: int, backoff: float, max_backoff: float, retry_after: float | None = None
) -> float:
    """Exponential backoff with jitter, so that many rollouts hitting the same rate limit
    do not retry in lock-step; a server's ``Retry-After`` wins but is capped, because one
    search must never stall a rollout for minutes."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), max_backoff)
    base = min(max_backoff, backoff * (2**attempt))
    return base * (0.5 + 0.5 * _random())


def seconds(value: float | None) -> str:
    """A duration for a message: "0.3", "10", not "0.299961" left over from a deadline."""
    x = float(value or 0.0)
    return f"{round(x, 1):g}" if x >= 0.1 else f"{x:.2g}"


def _timeout_seconds(timeout: Any) -> float | None:
    if isinstance(timeout, httpx.Timeout):
        return timeout.read
    if timeout is None:
        return None
    return float(timeout)


def request_with_retries(
    client: httpx.Client,
    method: str,
    url: str | httpx.URL,
    *,
    retries: int = 3,
    backoff: float = 0.5,
    max_backoff: float = 8.0,
    deadline: float | None = None,
    stream: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """``client.request`` retried on 429, 5xx and connection errors, never on other 4xx.

    ``deadline`` (a ``time.monotonic()`` value) bounds the whole exchange: each attempt's
    timeout shrinks to the time left and no retry starts that could not finish in time.
    Returns responses with a status below 400; otherwise raises :class:`RequestFailed`
    whose message says what went wrong ("rate limited (HTTP 429) after 4 attempts",
    "no answer within 3 s"). With ``stream=True`` the caller must close the response.
    """
    per_attempt = _timeout_seconds(kwargs.pop("timeout", client.timeout))
    last: RequestFailed | None = None
    attempts = max(1, retries + 1)
    made = 0
    for attempt in range(attempts):
        timeout = per_attempt
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            timeout = left if timeout is None else min(timeout, left)
        delay = 0.0
        made += 1
        try:
            if stream:
                request = client.build_request(method, url, timeout=timeout, **kwargs)
                response = client.send(request, stream=True)
            else:
                response = client.request(method, url, timeout=timeout, **kwargs)
        except _RETRYABLE_TRANSPORT as e:
            if "certificate" in str(e).lower():  # not transient: retrying cannot help
                raise RequestFailed("TLS certificate rejected", kind="connect") from None
            last = RequestFailed(f"cannot connect ({_transport_reason(e)})", kind="connect")
            delay = retry_delay(attempt, backoff, max_backoff)
        except httpx.TimeoutException:
            raise RequestFailed(f"no answer within {seconds(timeout)} s", kind="timeout") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:
            raise RequestFailed(f"invalid URL ({e})", kind="invalid") from None
        except httpx.HTTPError as e:
            raise RequestFailed(f"request failed ({type(e).__name__})", kind="connect") from None
        else:
            status = response.status_code
            if status < 400:
                return response
            if status != 429 and status < 500:
                if stream:
                    response.close()
                raise RequestFailed(f"HTTP {status}", status=status, response=response)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if stream:
                response.close()
            if status == 429:
                last = RequestFailed(
                    "rate limited (HTTP 429)", kind="rate_limited", status=status, response=response
                )
            else:
                last = RequestFailed(f"HTTP {status}", status=status, response=response)
            delay = retry_delay(attempt, backoff, max_backoff, retry_after)
        if attempt == attempts - 1:
            break
        if deadline is not None and time.monotonic() + delay >= deadline:
            break  # the wait alone would use up the budget: report now
        log.debug("%s %s: %s; retrying in %.2f s", method, redact_url(str(url), drop_query=True), last, delay)
        _sleep(delay)
    if last is None:  # the deadline passed before the first attempt
        raise RequestFailed("no time left for the request", kind="timeout")
    suffix = f" after {made} attempts" if made > 1 else ""
    raise RequestFailed(
        f"{last}{suffix}", kind=last.kind, status=last.status, response=last.response
    )


def call_with_retries(
    fn: Callable[[], T],
    should_retry: Callable[[Exception], bool | float],
    *,
    retries: int = 3,
    backoff: float = 0.5,
    max_backoff: float = 8.0,
    deadline: float | None = None,
) -> T:
    """The same retry policy for client libraries that do their own HTTP (ddgs, tavily):
    ``should_retry(e)`` is False to give up, True to back off, or a number of seconds the
    service asked us to wait. The last exception propagates unchanged."""
    attempts = max(1, retries + 1)
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as e:
            verdict = should_retry(e)
            if verdict is False or attempt == attempts - 1:
                raise
            after = None if verdict is True else float(verdict)
            delay = retry_delay(attempt, backoff, max_backoff, after)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise
            _sleep(delay)
    raise AssertionError("unreachable")


def _transport_reason(e: httpx.TransportError) -> str:
    if isinstance(e, httpx.ConnectTimeout):
        return "timed out"
    text = str(e).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service" in text or "nodename" in text or "resolution" in text:
        return "host not found"
    if isinstance(e, httpx.RemoteProtocolError):
        return "server closed the connection"
    return type(e).__name__


# ------------------------------------------------------------------ addresses


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """IPv4 addresses hidden in IPv6 forms that reach IPv4 hosts (mapped, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """True for globally routable unicast addresses; private, loopback, link-local (cloud
    metadata lives there), multicast, reserved and unspecified addresses are not."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        address.split("%", 1)[0]
    )
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            ip = inner
    return not (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _allowed(address: str, policy: AddressPolicy) -> bool:
    if policy is True:
        return True
    if is_public_address(address):
        return True
    if policy is False:
        return False
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return any(ip in ipaddress.ip_network(net, strict=False) for net in policy)


def _system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_checked(
    host: str, port: int, policy: AddressPolicy, resolver: Resolver | None = None
) -> str:
    """The address to connect to, after checking every address the host resolves to: a
    host with one public and one internal address could be steered to the internal one."""
    try:
        addresses = list((resolver or _system_resolve)(host, port))
    except (OSError, UnicodeError) as e:
        raise ImageFetchError(f"cannot resolve {host} ({type(e).__name__})") from None
    if not addresses:
        raise ImageFetchError(f"cannot resolve {host}")
    for address in addresses:
        try:
            ok = _allowed(address, policy)
        except ValueError:
            raise ImageFetchError(f"{host} resolved to an invalid address") from None
        if not ok:
            raise BlockedAddress(
                f"refused to fetch from {host}: {address} is a private, loopback, "
                "link-local or reserved address"
            )
    return addresses[0].split("%", 1)[0]


# ------------------------------------------------------------------ images

# One client per process, under one key; it pools no connection, so dropping it (clearing
# "search.fetch_client") leaves nothing open.
_FETCH_CLIENT: LoadOnce[httpx.Client] = LoadOnce(name="search.fetch_client")


def _fetch_client() -> httpx.Client:
    """One client for all image fetches. No proxies from the environment (a proxy would
    make the address check meaningless) and no connection reuse (a pooled connection to an
    address, verified for one host name, must not carry a request for another)."""
    return _FETCH_CLIENT.get(None, lambda: httpx.Client(
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": USER_AGENT, "Accept": "image/*"},
    ))


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes to an RGB image, refusing canvases larger than ``max_pixels`` before the
    pixels are decoded (the header is read first; decoding is lazy)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageFetchError(
                    f"image too large ({width}×{height} pixels, at most {max_pixels:,})"
                )
            im.load()
            return im.convert("RGB")
    except ImageFetchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageFetchError("image too large (decompression bomb)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageFetchError(f"not a decodable image ({type(e).__name__})") from None


def _read_capped(response: httpx.Response, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ImageFetchError(f"image larger than {max_bytes:,} bytes")
    buf = bytearray()
    try:
        for chunk in response.iter_bytes():  # decoded bytes: gzip bombs count in full
            buf += chunk
            if len(buf) > max_bytes:
                raise ImageFetchError(f"image larger than {max_bytes:,} bytes")
            if time.monotonic() > deadline:  # a server trickling bytes forever
                raise ImageFetchError("image download too slow")
    except httpx.TimeoutException:
        raise ImageFetchError("image download timed out") from None
    except httpx.HTTPError as e:
        raise ImageFetchError(f"image download broken ({type(e).__name__})") from None
    return bytes(buf)


def fetch_image(
    url: str,
    *,
    timeout: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_private: AddressPolicy = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    deadline: float | None = None,
    retries: int = 1,
    resolver: Resolver | None = None,
    client: httpx.Client | None = None,
) -> Image.Image:
    """Download an http(s) image and decode it to RGB, within ``timeout`` seconds overall.

    ``allow_private``: True allows any address; a list of networks ("127.0.0.1/32")
    allows just those besides public addresses (what tests use to reach their own
    loopback server while checking that everything else stays refused). ``resolver``
    replaces DNS for tests. Raises :class:`ImageFetchError` (:class:`BlockedAddress` for
    refused addresses) with a short message.
    """
    end = time.monotonic() + timeout
    deadline = end if deadline is None else min(deadline, end)
    client = client or _fetch_client()
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ImageFetchError("invalid image URL") from None
    for _hop in range(max_redirects + 1):
        if current.scheme not in ("http", "https"):
            raise ImageFetchError(f"refused to fetch a {current.scheme or 'schemeless'} URL")
        host = current.host
        if not host:
            raise ImageFetchError("image URL has no host")
        port = current.port or (443 if current.scheme == "https" else 80)
        address = resolve_checked(host, port, allow_private, resolver)
        pinned = current.copy_with(host=address)
        extensions = {"sni_hostname": host} if current.scheme == "https" else {}
        try:
            response = request_with_retries(
                client,
                "GET",
                pinned,
                retries=retries,
                backoff=0.25,
                max_backoff=1.0,
                deadline=deadline,
                stream=True,
                headers={"Host": current.netloc.decode("ascii")},
                extensions=extensions,
                timeout=timeout,
            )
        except RequestFailed as e:
            raise ImageFetchError(f"image at {host}: {e}") from None
        try:
            if response.is_redirect:
                try:
                    current = current.join(response.headers["Location"])
                except (httpx.InvalidURL, ValueError):
                    raise ImageFetchError(f"image at {host}: invalid redirect") from None
                continue
            if response.status_code != 200:
                raise ImageFetchError(f"image at {host}: HTTP {response.status_code}")
            ctype = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if not ctype.startswith("image/"):
                raise ImageFetchError(f"image at {host}: not an image ({ctype or 'no type'})")
            data = _read_capped(response, max_bytes, deadline)
        finally:
            response.close()
        return decode_image(data, max_pixels=max_pixels)
    raise ImageFetchError(f"too many redirects (more than {max_redirects})")


def same_origin(a: str, b: str) -> bool:
    ua, ub = httpx.URL(a), httpx.URL(b)
    return (ua.scheme, ua.host, ua.port) == (ub.scheme, ub.host, ub.port)

