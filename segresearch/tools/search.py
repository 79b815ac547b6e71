"""``text_search`` and ``image_search``: LangChain tools over a pluggable search backend.

A backend answers queries; the tools turn answers (or failures) into the observation
texts the model was trained on. Failures never stop a run: the model reads
``<information>Search failed: ...</information>`` and may try again. Every backend call is
bounded by a timeout here, whatever the backend does itself.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool, StructuredTool
from PIL import Image
from pydantic import BaseModel, Field

from segresearch.agents.protocol import (
    render_image_results,
    render_search_error,
    render_text_results,
)
from segresearch.jsonl import iter_jsonl  # noqa: F401 - re-exported for the KB readers
from segresearch.shared_cache import LoadOnce


@dataclass
class TextHit:
    title: str
    text: str
    score: float


@dataclass
class ImageHit:
    name: str
    image: Image.Image
    score: float


class SearchBackend(ABC):
    """One source of knowledge. Implementations must be safe to call from many threads."""

    name: str = "backend"

    @abstractmethod
    def search_text(self, query: str, k: int) -> list[TextHit]: ...

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        raise NotImplementedError(f"the {self.name} backend has no image search")

    def search_text_batch(self, queries: list[str], k: int) -> list[list[TextHit]]:
        """Many queries at once; backends that embed override this to embed in one call."""
        return [self.search_text(q, k) for q in queries]

    @property
    def cache_key(self) -> str:
        """Identifies what this backend answers from (for the search cache): two backends
        with the same key must give the same results for the same query."""
        return self.name


@dataclass(frozen=True)
class SearchSettings:
    """What a backend factory may need; every field comes from the Context."""

    kb: str = ""  # local knowledge-base folder
    retriever_url: str = ""  # a Search-R1 style /retrieve server
    timeout: float = 10.0  # seconds per network call
    allow_private_urls: bool = False  # image fetches from private / loopback addresses


class SearchUnavailable(RuntimeError):
    """The backend cannot serve at all (not configured); the message tells how to fix it."""


_WORD_RE = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def split_title(contents: str) -> tuple[str, str]:
    """Corpus convention: the first line of ``contents`` is the title."""
    title, _, body = contents.strip().partition("\n")
    return title.strip(), body.strip()


def _bm25(corpus: list[list[str]]) -> Any:
    """Okapi BM25 with Lucene's non-negative IDF: rank_bm25's classic IDF is zero or
    negative for terms in half the documents, which empties results on small corpora."""
    from rank_bm25 import BM25Okapi

    class _LuceneBM25(BM25Okapi):
        def _calc_idf(self, nd: dict[str, int]) -> None:
            self.idf = {w: math.log(1.0 + (self.corpus_size - n + 0.5) / (n + 0.5)) for w, n in nd.items()}

    return _LuceneBM25(corpus)


class BM25KnowledgeBase(SearchBackend):
    """Lexical search over a local knowledge-base folder (``text_corpus.jsonl`` and, if
    present, ``image_corpus.jsonl``; images are ranked by their names)."""

    name = "bm25"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        text_path = self.folder / "text_corpus.jsonl"
        if not text_path.is_file():
            raise SearchUnavailable(f"knowledge base {self.folder} has no text_corpus.jsonl")
        self.docs: list[tuple[str, str]] = []
        for _, row in iter_jsonl(text_path):
            if "contents" not in row:
                raise ValueError(f"{text_path}: every line needs a 'contents' field")
            self.docs.append(split_title(str(row["contents"])))
        if not self.docs:
            raise SearchUnavailable(f"knowledge base {self.folder} has an empty text corpus")
        self._text = _bm25([tokenize(t + " " + b) or ["_"] for t, b in self.docs])
        self.images: list[tuple[str, Path]] = []
        img_path = self.folder / "image_corpus.jsonl"
        if img_path.is_file():
            for _, row in iter_jsonl(img_path):
                self.images.append((str(row["name"]), self.folder / str(row["image_path"])))
        self._img = (
            _bm25([tokenize(n) or ["_"] for n, _ in self.images]) if self.images else None
        )

    @staticmethod
    def _top(scores: np.ndarray, k: int) -> list[int]:
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(i) for i in order if scores[i] > 0]

    @property
    def cache_key(self) -> str:
        return f"bm25:{self.folder.resolve()}"

    def search_text(self, query: str, k: int) -> list[TextHit]:
        scores = self._text.get_scores(tokenize(query))
        return [TextHit(*self.docs[i], float(scores[i])) for i in self._top(scores, k)]

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        if self._img is None:
            raise SearchUnavailable(f"knowledge base {self.folder} has no image_corpus.jsonl")
        scores = self._img.get_scores(tokenize(query))
        hits = []
        for i in self._top(scores, k):
            name, path = self.images[i]
            try:
                with Image.open(path) as im:
                    img = im.convert("RGB")
            except OSError as e:
                raise RuntimeError(f"cannot read image {path.name}: {e}") from None
            hits.append(ImageHit(name, img, float(scores[i])))
        return hits


_BACKENDS: LoadOnce[SearchBackend] = LoadOnce()
BackendFactory = Callable[[SearchSettings], SearchBackend]
_FACTORIES: dict[str, tuple[BackendFactory, Callable[[SearchSettings], tuple[Any, ...]]]] = {}


def register_backend(
    name: str, key: Callable[[SearchSettings], tuple[Any, ...]] | None = None
) -> Callable[[BackendFactory], BackendFactory]:
    """Make ``factory(settings)`` the backend for ``Context.search == name``. ``key`` says
    which settings identify one instance (default: all of them); instances are shared."""

    def deco(factory: BackendFactory) -> BackendFactory:
        _FACTORIES[name] = (factory, key or (lambda s: (s,)))
        return factory

    return deco


def backend_names() -> list[str]:
    _load_builtin_backends()
    return sorted(_FACTORIES)


def _load_builtin_backends() -> None:
    """Backends living in other modules register themselves when imported."""
    import importlib

    for module in _BUILTIN_BACKEND_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            pass


_BUILTIN_BACKEND_MODULES: list[str] = ["segresearch.tools.web_search"]


def get_backend(name: str, kb: str = "", **settings: Any) -> SearchBackend:
    """The shared backend instance for ``name`` (one index, one client per process)."""
    name = name.strip().lower()
    _load_builtin_backends()
    if name not in _FACTORIES:
        raise SearchUnavailable(
            f"unknown search backend {name!r} (available: {', '.join(backend_names())}, none)"
        )
    factory, key_fn = _FACTORIES[name]
    cfg = SearchSettings(kb=kb, **settings)
    key = (name, *key_fn(cfg))
    return _BACKENDS.get(key, lambda: factory(cfg))


def backend_loaded(name: str, kb: str = "", **settings: Any) -> bool:
    """Whether ``get_backend`` would return at once (no index to build or load)."""
    name = name.strip().lower()
    _load_builtin_backends()
    if name not in _FACTORIES:
        return False
    _, key_fn = _FACTORIES[name]
    try:
        return _BACKENDS.has((name, *key_fn(SearchSettings(kb=kb, **settings))))
    except SearchUnavailable:
        return False


def cached_backend(backend: SearchBackend, path: str, ttl: float) -> SearchBackend:
    """``backend`` behind the persistent search cache at ``path`` (shared per process)."""
    from segresearch.tools.search_cache import CachedBackend, get_cache

    key = ("cached", id(backend), str(Path(path).expanduser()), float(ttl))
    return _BACKENDS.get(key, lambda: CachedBackend(backend, get_cache(path, ttl)))


def _kb_folder(cfg: SearchSettings) -> Path:
    if not cfg.kb:
        raise SearchUnavailable(
            "no knowledge base configured: set Context.kb / --kb / SEGRESEARCH_KB to a folder "
            "with text_corpus.jsonl"
        )
    folder = Path(cfg.kb).expanduser()
    if not folder.is_dir():
        raise SearchUnavailable(f"knowledge base folder not found: {folder}")
    return folder


def _kb_version(cfg: SearchSettings) -> tuple[Any, ...]:
    """A knowledge base is reloaded when any of its files changes."""
    folder = _kb_folder(cfg)
    stamp = max((p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()), default=0)
    return (str(folder.resolve()), stamp)


@register_backend("bm25", key=_kb_version)
def _bm25_backend(cfg: SearchSettings) -> SearchBackend:
    return BM25KnowledgeBase(_kb_folder(cfg))


def _local_backend(cfg: SearchSettings) -> SearchBackend:
    """Dense FAISS knowledge base; imported here so faiss and the embedder load only when used
    (and because the kb package builds on this module)."""
    from segresearch.tools.kb import local_backend

    return local_backend(cfg)


register_backend("local", key=_kb_version)(_local_backend)


RRF_K = 60  # the usual reciprocal-rank-fusion constant: rank 1 weighs 1/61, rank 10 1/70


class HybridKnowledgeBase(SearchBackend):
    """The dense index and BM25 over the same folder, fused by reciprocal rank.

    The two disagree on many queries (exact names and numbers favour BM25, paraphrases the
    dense index); fusing ranks rather than scores needs no calibration between them, and a
    document both rank well comes first."""

    name = "hybrid"

    def __init__(self, dense: SearchBackend, lexical: SearchBackend, depth: int = 50) -> None:
        self.dense, self.lexical, self.depth = dense, lexical, depth

    @property
    def cache_key(self) -> str:
        return f"hybrid:{getattr(self.lexical, 'cache_key', '')}"

    @staticmethod
    def _fuse(runs: list[list[Any]], key: Callable[[Any], Any], k: int) -> list[tuple[Any, float]]:
        scores: dict[Any, float] = {}
        first: dict[Any, Any] = {}
        for run in runs:
            for rank, hit in enumerate(run):
                kk = key(hit)
                scores[kk] = scores.get(kk, 0.0) + 1.0 / (RRF_K + rank + 1)
                first.setdefault(kk, hit)
        order = sorted(scores, key=lambda kk: -scores[kk])[:k]
        return [(first[kk], scores[kk]) for kk in order]

    def search_text(self, query: str, k: int) -> list[TextHit]:
        n = max(k, self.depth)
        runs = [self.dense.search_text(query, n), self.lexical.search_text(query, n)]
        return [TextHit(h.title, h.text, s) for h, s in self._fuse(runs, lambda h: (h.title, h.text), k)]

    def search_text_batch(self, queries: list[str], k: int) -> list[list[TextHit]]:
        n = max(k, self.depth)
        dense = self.dense.search_text_batch(queries, n)
        return [[TextHit(h.title, h.text, s)
                 for h, s in self._fuse([d, self.lexical.search_text(q, n)], lambda h: (h.title, h.text), k)]
                for q, d in zip(queries, dense, strict=True)]

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        n = max(k, self.depth)
        runs = [self.dense.search_images(query, n), self.lexical.search_images(query, n)]
        return [ImageHit(h.name, h.image, s) for h, s in self._fuse(runs, lambda h: h.name, k)]


@register_backend("hybrid", key=_kb_version)
def _hybrid_backend(cfg: SearchSettings) -> SearchBackend:
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "kb"}
    return HybridKnowledgeBase(get_backend("local", cfg.kb, **settings),
                               get_backend("bm25", cfg.kb, **settings))


# ------------------------------------------------------------------------ tools

_POOL = cf.ThreadPoolExecutor(max_workers=16, thread_name_prefix="segresearch-search")


class TextSearchArgs(BaseModel):
    query: str = Field(description="What to look up, as a short web-search query.")


class ImageSearchArgs(BaseModel):
    query: str = Field(description="Name of the person, object or logo to see a picture of.")


def _call(fn: Any, timeout: float, *args: Any) -> Any:
    fut = _POOL.submit(fn, *args)
    try:
        return fut.result(timeout=timeout)
    except cf.TimeoutError:
        fut.cancel()
        raise TimeoutError(f"no answer within {timeout:g} s") from None


def _fail(e: BaseException) -> tuple[str, dict[str, Any]]:
    msg = str(e) or type(e).__name__
    return render_search_error(msg), {"images": [], "error": msg, "hits": []}


def make_search_tools(
    backend: SearchBackend | None,
    *,
    text_topk: int = 3,
    image_topk: int = 1,
    image_size: int = 256,
    timeout: float = 10.0,
    unavailable: str = "",
) -> dict[str, BaseTool]:
    """``text_search`` / ``image_search`` bound to ``backend``. With no backend, both tools
    answer with ``unavailable`` as a failure observation (the run goes on)."""

    def text_search(query: str) -> tuple[str, dict[str, Any]]:
        if backend is None:
            return _fail(SearchUnavailable(unavailable or "search is not configured"))
        try:
            hits = _call(backend.search_text, timeout, query, text_topk)
        except Exception as e:  # noqa: BLE001 - any backend failure becomes an observation
            return _fail(e)
        text = render_text_results([(h.title, h.text) for h in hits])
        return text, {"images": [], "hits": [{"title": h.title, "score": h.score} for h in hits]}

    def image_search(query: str) -> tuple[str, dict[str, Any]]:
        if backend is None:
            return _fail(SearchUnavailable(unavailable or "search is not configured"))
        try:
            hits = _call(backend.search_images, timeout, query, image_topk)
        except Exception as e:  # noqa: BLE001
            return _fail(e)
        images = [h.image.resize((image_size, image_size), Image.BICUBIC) for h in hits]
        text = render_image_results([h.name for h in hits])
        return text, {"images": images, "hits": [{"title": h.name, "score": h.score} for h in hits]}

    return {
        "text_search": StructuredTool.from_function(
            text_search,
            name="text_search",
            description="Search text passages (web or knowledge base) for a query.",
            args_schema=TextSearchArgs,
            response_format="content_and_artifact",
        ),
        "image_search": StructuredTool.from_function(
            image_search,
            name="image_search",
            description="Find a picture of a named person, object or logo.",
            args_schema=ImageSearchArgs,
            response_format="content_and_artifact",
        ),
    }
