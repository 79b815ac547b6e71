"""Backend names to backends: ``get_backend("bm25" | "local" | "hybrid" | "retriever" |
"ddg" | "tavily" | "serper", ...)`` returns the one shared instance per configuration.

Every built-in backend is registered here, from the modules that implement it; a plugin
adds its own with :func:`register_backend`. Instances are shared per process (one index,
one client), keyed by the settings that identify them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segresearch.core.shared_cache import LoadOnce
from segresearch.tools.search.base import SearchBackend, SearchSettings, SearchUnavailable
from segresearch.tools.search.bm25 import BM25KnowledgeBase
from segresearch.tools.search.cache import CachedBackend, get_cache
from segresearch.tools.search.hybrid import HybridKnowledgeBase
from segresearch.tools.search.kb.index import local_backend
from segresearch.tools.search.web import WEB_BACKENDS

_BACKENDS: LoadOnce[SearchBackend] = LoadOnce(name="search.backends")
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
    return sorted(_FACTORIES)


def get_backend(name: str, kb: str = "", **settings: Any) -> SearchBackend:
    """The shared backend instance for ``name`` (one index, one client per process)."""
    name = name.strip().lower()
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
    if name not in _FACTORIES:
        return False
    _, key_fn = _FACTORIES[name]
    try:
        return _BACKENDS.has((name, *key_fn(SearchSettings(kb=kb, **settings))))
    except SearchUnavailable:
        return False


def cached_backend(backend: SearchBackend, path: str, ttl: float) -> SearchBackend:
    """``backend`` behind the persistent search cache at ``path`` (shared per process)."""
    key = ("cached", id(backend), str(Path(path).expanduser()), float(ttl))
    return _BACKENDS.get(key, lambda: CachedBackend(backend, get_cache(path, ttl)))


# --------------------------------------------------------- knowledge-base folders


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


# How long a knowledge base's version stamp is trusted before its folder is listed again:
# every search asks for the backend, and listing and stating the folder each time cost more
# than a BM25 query. An edited knowledge base is picked up within this time.
KB_VERSION_TTL_S = 1.0
_KB_STAMPS: dict[str, tuple[float, tuple[Any, ...]]] = {}


def _kb_version(cfg: SearchSettings) -> tuple[Any, ...]:
    """A knowledge base is reloaded when any of its files changes."""
    now = time.monotonic()
    hit = _KB_STAMPS.get(cfg.kb)
    if hit is not None and now - hit[0] < KB_VERSION_TTL_S:
        return hit[1]
    folder = _kb_folder(cfg)
    stamp = max((p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()), default=0)
    version = (str(folder.resolve()), stamp)
    _KB_STAMPS[cfg.kb] = (now, version)
    return version


@register_backend("bm25", key=_kb_version)
def _bm25_backend(cfg: SearchSettings) -> SearchBackend:
    return BM25KnowledgeBase(_kb_folder(cfg))


# Dense FAISS knowledge base; faiss and the embedder load only when it is first used.
register_backend("local", key=_kb_version)(local_backend)


@register_backend("hybrid", key=_kb_version)
def _hybrid_backend(cfg: SearchSettings) -> SearchBackend:
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "kb"}
    return HybridKnowledgeBase(get_backend("local", cfg.kb, **settings),
                               get_backend("bm25", cfg.kb, **settings))


# ------------------------------------------------------------------ web backends

for _name, (_factory, _key) in WEB_BACKENDS.items():
    register_backend(_name, key=_key)(_factory)
