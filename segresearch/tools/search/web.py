"""Remote search backends: ``retriever``, ``ddg``, ``tavily`` and ``serper``.

The model sees at most one line about any failure, so every failure here becomes a
:class:`WebSearchError` (or :class:`~segresearch.tools.search.base.SearchUnavailable` when the
backend is not configured) whose message starts with the backend's name and says what to
fix. API keys come from the environment only and never appear in messages or reprs.

Every search call is bounded by the backend's ``timeout``: the API request, its retries and
the image downloads share that budget, so a failing backend answers with its own message
before the search tool's own timeout of the same length gives up on it.

Retriever image search (``collection: "image"``)
    The same ``POST /retrieve`` with ``"collection": "image"`` added. Each document names
    its picture (``name``, else ``title``, else the first line of ``contents``) and holds
    it as one of: ``image`` (base64 or a ``data:`` URL), ``image_url`` / ``url`` (an
    absolute http(s) URL) or ``image_path``: an absolute http(s) URL, or a path relative to
    the knowledge-base folder (``image_root``, from ``SearchSettings.kb``), read from disk
    when the file is there (a retriever usually serves the local knowledge base, and
    returns paths into it), else fetched relative to the retriever's base URL. URLs on the
    retriever's own origin are trusted even when private (the operator configured that
    address); all others get the same address checks as web image results.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures as cf
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from segresearch.core.envvars import env_str
from segresearch.core.shared_cache import thread_pool
from segresearch.tools.search.base import (
    ImageHit,
    SearchBackend,
    SearchSettings,
    SearchUnavailable,
    TextHit,
    split_title,
)
from segresearch.tools.search.http import (
    DEFAULT_MAX_BYTES,
    USER_AGENT,
    AddressPolicy,
    ImageFetchError,
    RequestFailed,
    call_with_retries,
    decode_image,
    fetch_image,
    request_with_retries,
    same_origin,
    seconds,
)

log = logging.getLogger(__name__)

SERPER_KEY_ENV = "SERPER_API_KEY"
TAVILY_KEY_ENV = "TAVILY_API_KEY"
SERPER_URL_ENV = "SEGRESEARCH_SERPER_URL"
TAVILY_URL_ENV = "SEGRESEARCH_TAVILY_URL"
DEFAULT_SERPER_URL = "https://google.serper.dev"
DEFAULT_TAVILY_URL = "https://api.tavily.com"
# Image results whose picture cannot be fetched are replaced by later ones, so image
# searches ask for this many more results than they show.
IMAGE_SPARE = 4
_BATCH_WORKERS = 8


class WebSearchError(RuntimeError):
    """A search that failed; the message is what the model reads."""


class _Secret:
    """Holds an API key so that no repr, str or traceback local shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__


def _key_from_env(env: str, service: str) -> _Secret:
    value = env_str(env)
    if not value:
        raise SearchUnavailable(f"{service}: no API key; set the {env} environment variable")
    return _Secret(value)


def _fingerprint(env: str) -> str:
    """Tells keys apart (a rotated key gets a fresh backend) without keeping the key."""
    value = env_str(env)
    return hashlib.sha256(value.encode()).hexdigest()[:16] if value else ""


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_detail(response: httpx.Response | None, secret: _Secret | None = None) -> str:
    """A server's own explanation of a refused request ("Not enough credits"), if short."""
    if response is None:
        return ""
    try:
        body = response.json()
    except (ValueError, httpx.ResponseNotRead):
        return ""
    detail: Any = None
    if isinstance(body, dict):
        for field_name in ("message", "detail", "error"):
            if body.get(field_name):
                detail = body[field_name]
                break
    if isinstance(detail, dict):
        detail = detail.get("error") or detail.get("message")
    if not isinstance(detail, str) or not detail.strip():
        return ""
    if secret is not None:
        detail = secret.scrub(detail)
    return f" ({_short(detail, 120)})"


@dataclass
class _ImageCandidate:
    name: str
    score: float
    urls: list[str] = field(default_factory=list)
    data: bytes | None = None
    path: Path | None = None  # a local file, tried before the URLs
    trusted: bool = False  # on the configured retriever's origin: private addresses allowed


class WebBackend(SearchBackend):
    """What every network backend shares: the time budget, retry policy and image fetching."""

    name = "web"

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        allow_private: AddressPolicy = False,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_image_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = float(timeout)
        self.allow_private = allow_private
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_image_bytes = max_image_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(timeout={self.timeout:g})"

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _fail(self, message: str) -> WebSearchError:
        return WebSearchError(f"{self.name}: {message}")

    def _retry_kwargs(self, deadline: float) -> dict[str, Any]:
        return {
            "retries": self.retries,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "deadline": deadline,
        }

    def _map_queries(
        self, fn: Callable[[str, int], list[TextHit]], queries: list[str], k: int
    ) -> list[list[TextHit]]:
        """Independent queries in parallel: a batch from an RL step should take about as
        long as its slowest query, not the sum."""
        if len(queries) <= 1:
            return [fn(q, k) for q in queries]
        with cf.ThreadPoolExecutor(min(_BATCH_WORKERS, len(queries))) as pool:
            return list(pool.map(lambda q: fn(q, k), queries))

    # ---------------------------------------------------------------- images

    def _fetch_candidate(self, cand: _ImageCandidate, deadline: float) -> Image.Image:
        if cand.data is not None:
            if len(cand.data) > self.max_image_bytes:
                raise ImageFetchError(f"image larger than {self.max_image_bytes:,} bytes")
            return decode_image(cand.data)
        policy: AddressPolicy = True if cand.trusted else self.allow_private
        last: ImageFetchError | None = None
        if cand.path is not None:
            try:
                if cand.path.stat().st_size > self.max_image_bytes:
                    raise ImageFetchError(f"image larger than {self.max_image_bytes:,} bytes")
                return decode_image(cand.path.read_bytes())
            except OSError:
                last = ImageFetchError(f"cannot read image {cand.path.name}")
        for url in cand.urls:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return fetch_image(
                    url,
                    timeout=min(self.timeout, left),
                    max_bytes=self.max_image_bytes,
                    allow_private=policy,
                    deadline=deadline,
                )
            except ImageFetchError as e:
                last = e
        raise last or ImageFetchError("no time left to fetch the image")

    def _fetch_images(
        self, candidates: list[_ImageCandidate], k: int, deadline: float
    ) -> list[ImageHit]:
        """Up to ``k`` pictures, in result order. Fetches run in waves of as many as are
        still missing, so one slow host does not serialise the rest and no more pictures
        are downloaded than needed when all goes well."""
        hits: list[ImageHit] = []
        errors: list[str] = []
        pos = 0
        while len(hits) < k and pos < len(candidates) and time.monotonic() < deadline:
            wave = candidates[pos : pos + k - len(hits)]
            pos += len(wave)
            futures = [thread_pool("imgfetch").submit(self._fetch_candidate, c, deadline) for c in wave]
            for cand, fut in zip(wave, futures, strict=True):
                try:
                    image = fut.result()
                except Exception as e:  # noqa: BLE001 - any failure: try the next result
                    errors.append(str(e) or type(e).__name__)
                    log.debug("%s: skipped image %r: %s", self.name, cand.name, e)
                    continue
                hits.append(ImageHit(cand.name, image, cand.score))
        if not hits and candidates:
            tried = len(errors)
            first = _short(errors[0], 120) if errors else "out of time"
            raise self._fail(f"none of the {tried or len(candidates)} images could be fetched ({first})")
        return hits[:k]


# ------------------------------------------------------------------ retriever


class RetrieverBackend(WebBackend):
    """A Search-R1 / Seg-ReSearch retrieval server (``POST /retrieve``)."""

    name = "retriever"

    def __init__(
        self,
        url: str,
        *,
        client: httpx.Client | None = None,
        image_collection: str = "image",
        image_root: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_root = Path(image_root).expanduser().resolve() if image_root else None
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise SearchUnavailable(f"retriever: URL must start with http:// or https:// ({url!r})")
        self.base_url = url.removesuffix("/retrieve")
        self.endpoint = self.base_url + "/retrieve"
        self.image_collection = image_collection
        self._client = client or httpx.Client(headers={"User-Agent": USER_AGENT})

    def __repr__(self) -> str:
        return f"RetrieverBackend({self.endpoint!r}, timeout={self.timeout:g})"

    @property
    def cache_key(self) -> str:
        return f"retriever:{self.endpoint}"

    def _retrieve(
        self, queries: list[str], k: int, collection: str | None, deadline: float
    ) -> list[list[tuple[dict[str, Any], float]]]:
        payload: dict[str, Any] = {"queries": queries, "topk": k, "return_scores": True}
        if collection:
            payload["collection"] = collection
        try:
            resp = request_with_retries(
                self._client, "POST", self.endpoint, json=payload, timeout=self.timeout,
                **self._retry_kwargs(deadline),
            )
        except RequestFailed as e:
            detail = _error_detail(e.response) if e.status and e.status < 500 else ""
            raise self._fail(f"{e}{detail}") from None
        if resp.status_code != 200:
            raise self._fail(f"unexpected HTTP {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            raise self._fail("answer is not JSON") from None
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list):
            raise self._fail("answer has no 'result' list")
        if len(result) != len(queries):
            raise self._fail(f"answered {len(result)} result lists for {len(queries)} queries")
        out: list[list[tuple[dict[str, Any], float]]] = []
        for items in result:
            if not isinstance(items, list):
                raise self._fail("a result is not a list of documents")
            docs: list[tuple[dict[str, Any], float]] = []
            for rank, item in enumerate(items[:k]):
                if not isinstance(item, dict):
                    continue
                doc = item.get("document", item)  # without scores, servers list documents
                if not isinstance(doc, dict):
                    continue
                score = item.get("score") if "document" in item else None
                try:
                    value = float(score) if score is not None else 1.0 / (rank + 1)
                except (TypeError, ValueError):
                    value = 1.0 / (rank + 1)
                docs.append((doc, value))
            out.append(docs)
        return out

    @staticmethod
    def _text_hit(doc: dict[str, Any], score: float) -> TextHit:
        if isinstance(doc.get("contents"), str):
            title, text = split_title(doc["contents"])
        else:
            title, text = str(doc.get("title", "")).strip(), str(doc.get("text", "")).strip()
        return TextHit(title, text, score)

    def search_text(self, query: str, k: int) -> list[TextHit]:
        return self.search_text_batch([query], k)[0]

    def search_text_batch(self, queries: list[str], k: int) -> list[list[TextHit]]:
        """All queries in one request: retrieval servers embed a batch in one pass."""
        if not queries:
            return []
        results = self._retrieve(list(queries), k, None, self._deadline())
        return [[self._text_hit(d, s) for d, s in docs] for docs in results]

    def _image_candidate(self, doc: dict[str, Any], score: float, query: str) -> _ImageCandidate:
        name = doc.get("name") or doc.get("title")
        if not name and isinstance(doc.get("contents"), str):
            name = split_title(doc["contents"])[0]
        cand = _ImageCandidate(str(name or query), score)
        inline = doc.get("image")
        if isinstance(inline, str) and not inline.startswith(("http://", "https://")):
            b64 = inline.split(",", 1)[1] if inline.startswith("data:") else inline
            try:
                cand.data = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                cand.data = b""  # fails to decode: the candidate is skipped
            return cand
        for key in ("image_url", "url", "image", "image_path"):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                if key == "image_path":
                    cand.path = self._local_path(value.strip())
                try:
                    url = str(httpx.URL(self.base_url + "/").join(value.strip()))
                except (httpx.InvalidURL, ValueError):
                    continue
                cand.urls.append(url)
                cand.trusted = same_origin(url, self.base_url)
                break
        return cand

    def _local_path(self, value: str) -> Path | None:
        """``value`` inside the knowledge-base folder, if it names a file there; paths that
        lead outside the folder are not read."""
        if self.image_root is None or value.startswith(("http://", "https://")):
            return None
        path = (self.image_root / value).resolve()
        if not path.is_relative_to(self.image_root) or not path.is_file():
            return None
        return path

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        deadline = self._deadline()
        docs = self._retrieve([query], k + IMAGE_SPARE, self.image_collection, deadline)[0]
        return self._fetch_images([self._image_candidate(d, s, query) for d, s in docs], k, deadline)


# ------------------------------------------------------------------ serper


class SerperBackend(WebBackend):
    """Google results through Serper's HTTP API (key from ``SERPER_API_KEY``)."""

    name = "serper"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        client: httpx.Client | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._key = _key_from_env(SERPER_KEY_ENV, self.name)
        self.base_url = (base_url or env_str(SERPER_URL_ENV) or DEFAULT_SERPER_URL).rstrip("/")
        self._client = client or httpx.Client(headers={"User-Agent": USER_AGENT})

    def __repr__(self) -> str:
        return f"SerperBackend(base_url={self.base_url!r}, timeout={self.timeout:g})"

    @property
    def cache_key(self) -> str:
        return "serper" if self.base_url == DEFAULT_SERPER_URL else f"serper:{self.base_url}"

    def _post(self, path: str, payload: dict[str, Any], deadline: float) -> dict[str, Any]:
        try:
            resp = request_with_retries(
                self._client, "POST", self.base_url + path, json=payload,
                headers={"X-API-KEY": self._key.reveal()}, timeout=self.timeout,
                **self._retry_kwargs(deadline),
            )
        except RequestFailed as e:
            if e.status in (401, 403):
                raise self._fail(f"HTTP {e.status} (check {SERPER_KEY_ENV})") from None
            detail = _error_detail(e.response, self._key) if e.status and e.status < 500 else ""
            raise self._fail(f"{self._key.scrub(str(e))}{detail}") from None
        if resp.status_code != 200:
            raise self._fail(f"unexpected HTTP {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            raise self._fail("answer is not JSON") from None
        if not isinstance(body, dict):
            raise self._fail("answer is not a JSON object")
        return body

    @staticmethod
    def _rows(body: dict[str, Any], field_name: str) -> list[dict[str, Any]]:
        rows = body.get(field_name) or []
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def search_text(self, query: str, k: int) -> list[TextHit]:
        body = self._post("/search", {"q": query, "num": k}, self._deadline())
        rows = self._rows(body, "organic")[:k]
        return [
            TextHit(str(r.get("title", "")), str(r.get("snippet", "")), 1.0 / (i + 1))
            for i, r in enumerate(rows)
        ]

    def search_text_batch(self, queries: list[str], k: int) -> list[list[TextHit]]:
        return self._map_queries(self.search_text, queries, k)

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        deadline = self._deadline()
        body = self._post("/images", {"q": query, "num": k + IMAGE_SPARE}, deadline)
        cands = []
        for i, r in enumerate(self._rows(body, "images")):
            urls = [u for u in (r.get("imageUrl"), r.get("thumbnailUrl")) if isinstance(u, str) and u]
            if urls:
                cands.append(_ImageCandidate(str(r.get("title") or query), 1.0 / (i + 1), urls))
        return self._fetch_images(cands, k, deadline)


# ------------------------------------------------------------------ tavily


def _exception_names(e: BaseException) -> set[str]:
    """Class names along the MRO: matches library errors without importing the library."""
    return {c.__name__ for c in type(e).__mro__}


class TavilyBackend(WebBackend):
    """Tavily's search API via tavily-python (key from ``TAVILY_API_KEY``).

    ``client`` replaces the ``TavilyClient`` (tests pass a fake with a ``search`` method)."""

    name = "tavily"

    def __init__(self, *, client: Any = None, base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = (base_url or env_str(TAVILY_URL_ENV) or DEFAULT_TAVILY_URL).rstrip("/")
        # Kept with an injected client too: server messages are scrubbed of the key.
        self._key = _Secret(env_str(TAVILY_KEY_ENV))
        if client is None:
            self._key = _key_from_env(TAVILY_KEY_ENV, self.name)
            try:
                from tavily import TavilyClient  # heavy: ~0.2 s; only --search tavily needs it
            except ImportError:
                raise SearchUnavailable("tavily: the tavily-python package is not installed") from None
            client = TavilyClient(api_key=self._key.reveal(), api_base_url=self.base_url)
        self._client = client

    def __repr__(self) -> str:
        return f"TavilyBackend(base_url={self.base_url!r}, timeout={self.timeout:g})"

    @property
    def cache_key(self) -> str:
        return "tavily" if self.base_url == DEFAULT_TAVILY_URL else f"tavily:{self.base_url}"

    def _scrub(self, text: str) -> str:
        return self._key.scrub(text)

    @staticmethod
    def _should_retry(e: Exception) -> bool | float:
        names = _exception_names(e)
        if "UsageLimitExceededError" in names:
            after = getattr(e, "retry_after_seconds", None)
            return float(after) if isinstance(after, (int, float)) else True
        if "ConnectionError" in names and "TimeoutError" not in names:
            return True
        status = getattr(getattr(e, "response", None), "status_code", None)
        return isinstance(status, int) and status >= 500

    def _describe(self, e: Exception, timeout: float) -> str:
        names = _exception_names(e)
        if "UsageLimitExceededError" in names:
            return "rate limited or out of credits (HTTP 429)"
        if "InvalidAPIKeyError" in names:
            return f"HTTP 401 (check {TAVILY_KEY_ENV})"
        if "ForbiddenError" in names:
            return f"HTTP 403 (check {TAVILY_KEY_ENV} and the plan's limits)"
        if "BadRequestError" in names:
            detail = self._scrub(str(e))
            return f"bad request ({_short(detail, 120)})" if detail.strip() else "bad request"
        if "TimeoutError" in names or "Timeout" in names:
            return f"no answer within {seconds(timeout)} s"
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            return f"HTTP {status}"
        if "ConnectionError" in names:
            return "cannot connect"
        return f"search failed ({type(e).__name__})"

    def _search(self, query: str, deadline: float, **kwargs: Any) -> dict[str, Any]:
        timeout = max(0.1, min(self.timeout, deadline - time.monotonic()))
        try:
            body = call_with_retries(
                lambda: self._client.search(query, timeout=timeout, **kwargs),
                self._should_retry,
                **self._retry_kwargs(deadline),
            )
        except Exception as e:  # noqa: BLE001 - every library failure becomes one message
            raise self._fail(self._describe(e, timeout)) from None
        if not isinstance(body, dict):
            raise self._fail("answer is not a JSON object")
        return body

    def search_text(self, query: str, k: int) -> list[TextHit]:
        body = self._search(query, self._deadline(), max_results=k)
        rows = [r for r in body.get("results") or [] if isinstance(r, dict)][:k]
        hits = []
        for i, r in enumerate(rows):
            try:
                score = float(r.get("score", 1.0 / (i + 1)))
            except (TypeError, ValueError):
                score = 1.0 / (i + 1)
            hits.append(TextHit(str(r.get("title", "")), str(r.get("content", "")), score))
        return hits

    def search_text_batch(self, queries: list[str], k: int) -> list[list[TextHit]]:
        return self._map_queries(self.search_text, queries, k)

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        deadline = self._deadline()
        body = self._search(
            query, deadline, max_results=k + IMAGE_SPARE, include_images=True,
            include_image_descriptions=True,
        )
        cands = []
        for i, item in enumerate(body.get("images") or []):
            if isinstance(item, str):
                url, name = item, query
            elif isinstance(item, dict) and isinstance(item.get("url"), str):
                url, name = item["url"], str(item.get("description") or query)
            else:
                continue
            cands.append(_ImageCandidate(_short(name, 200), 1.0 / (i + 1), [url]))
        return self._fetch_images(cands, k, deadline)


# ------------------------------------------------------------------ duckduckgo


class DDGBackend(WebBackend):
    """DuckDuckGo and friends through the ``ddgs`` package; no key needed.

    ``client`` replaces ``ddgs.DDGS`` (an object with ``text`` and ``images`` methods); by
    default every call makes its own ``DDGS``, whose engine cache is not thread-safe."""

    name = "ddg"

    def __init__(
        self,
        *,
        client: Any = None,
        region: str | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._client = client
        self._options: dict[str, Any] = {}
        if region:
            self._options["region"] = region
        if backend:
            self._options["backend"] = backend
        if client is None:
            try:
                import ddgs  # guarded: a missing package is a clear SearchUnavailable  # noqa: F401
            except ImportError:
                raise SearchUnavailable("ddg: the ddgs package is not installed") from None

    @property
    def cache_key(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self._options.items()))
        return f"ddg:{extra}" if extra else "ddg"

    def _ddgs(self) -> Any:
        if self._client is not None:
            return self._client
        from ddgs import DDGS  # guarded: a missing package is a clear SearchUnavailable

        return DDGS(timeout=max(1, round(self.timeout)))

    @staticmethod
    def _should_retry(e: Exception) -> bool:
        return "RatelimitException" in _exception_names(e) or "ratelimit" in str(e).lower()

    def _describe(self, e: Exception) -> str:
        names = _exception_names(e)
        if self._should_retry(e):
            return "rate limited"
        if names & {"TimeoutException", "TimeoutError"}:
            return f"no answer within {seconds(self.timeout)} s"
        if "DDGSException" in names and str(e).strip():
            return f"search failed ({_short(str(e), 120)})"
        return f"search failed ({type(e).__name__})"

    def _call(self, method: str, query: str, max_results: int, deadline: float) -> list[dict[str, Any]]:
        def once() -> list[dict[str, Any]]:
            try:
                return getattr(self._ddgs(), method)(query, max_results=max_results, **self._options)
            except Exception as e:
                if "DDGSException" in _exception_names(e) and "no results" in str(e).lower():
                    return []  # ddgs reports an empty answer as an error
                raise

        try:
            rows = call_with_retries(once, self._should_retry, **self._retry_kwargs(deadline))
        except Exception as e:  # noqa: BLE001
            raise self._fail(self._describe(e)) from None
        if not isinstance(rows, list):
            raise self._fail("unexpected answer")
        return [r for r in rows if isinstance(r, dict)]

    def search_text(self, query: str, k: int) -> list[TextHit]:
        rows = self._call("text", query, k, self._deadline())[:k]
        return [
            TextHit(str(r.get("title", "")), str(r.get("body", "")), 1.0 / (i + 1))
            for i, r in enumerate(rows)
        ]

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        deadline = self._deadline()
        rows = self._call("images", query, k + IMAGE_SPARE, deadline)
        cands = []
        for i, r in enumerate(rows):
            urls = [u for u in (r.get("image"), r.get("thumbnail")) if isinstance(u, str) and u]
            if urls:
                cands.append(_ImageCandidate(str(r.get("title") or query), 1.0 / (i + 1), urls))
        return self._fetch_images(cands, k, deadline)


# ------------------------------------------------ factories (registered in backends.py)


def _common(cfg: SearchSettings) -> dict[str, Any]:
    return {"timeout": cfg.timeout, "allow_private": cfg.allow_private_urls}


def retriever_key(cfg: SearchSettings) -> tuple[Any, ...]:
    return (cfg.retriever_url.strip().rstrip("/"), cfg.kb, cfg.timeout, cfg.allow_private_urls)


def retriever_backend(cfg: SearchSettings) -> SearchBackend:
    if not cfg.retriever_url.strip():
        raise SearchUnavailable(
            "retriever: no server configured; set retriever_url (SEGRESEARCH_RETRIEVER_URL) "
            "to the base URL of a /retrieve server, e.g. http://127.0.0.1:8001"
        )
    return RetrieverBackend(cfg.retriever_url, image_root=cfg.kb or None, **_common(cfg))


def serper_key(cfg: SearchSettings) -> tuple[Any, ...]:
    return (
        env_str(SERPER_URL_ENV), _fingerprint(SERPER_KEY_ENV), cfg.timeout,
        cfg.allow_private_urls,
    )


def serper_backend(cfg: SearchSettings) -> SearchBackend:
    return SerperBackend(**_common(cfg))


def tavily_key(cfg: SearchSettings) -> tuple[Any, ...]:
    return (
        env_str(TAVILY_URL_ENV), _fingerprint(TAVILY_KEY_ENV), cfg.timeout,
        cfg.allow_private_urls,
    )


def tavily_backend(cfg: SearchSettings) -> SearchBackend:
    return TavilyBackend(**_common(cfg))


def ddg_key(cfg: SearchSettings) -> tuple[Any, ...]:
    return (cfg.timeout, cfg.allow_private_urls)


def ddg_backend(cfg: SearchSettings) -> SearchBackend:
    return DDGBackend(**_common(cfg))


WEB_BACKENDS: dict[
    str,
    tuple[Callable[[SearchSettings], SearchBackend], Callable[[SearchSettings], tuple[Any, ...]]],
] = {
    "retriever": (retriever_backend, retriever_key),
    "ddg": (ddg_backend, ddg_key),
    "tavily": (tavily_backend, tavily_key),
    "serper": (serper_backend, serper_key),
}

__all__ = [
    "DDGBackend",
    "IMAGE_SPARE",
    "RetrieverBackend",
    "SerperBackend",
    "TavilyBackend",
    "WEB_BACKENDS",
    "WebBackend",
    "WebSearchError",
]
