"""The search stack: backends that answer queries, and the ``text_search`` /
``image_search`` tools over them.

Modules, each building only on those above it:

``base``      hits, :class:`SearchBackend`, :class:`SearchSettings`, :class:`SearchUnavailable`
``http``      bounded retries and a guarded image fetch (web backends)
``bm25``      the ``bm25`` backend (lexical, local knowledge base)
``hybrid``    the ``hybrid`` backend (dense + lexical by reciprocal rank)
``web``       the ``retriever``, ``ddg``, ``tavily`` and ``serper`` backends
``cache``     the persistent (SQLite) search cache and its backend wrapper
``kb``        the ``local`` backend: embedders and a FAISS index on disk
``backends``  name -> backend: :func:`get_backend`, :func:`register_backend`
``tools``     :func:`make_search_tools`, the LangChain tools
"""

from segresearch.tools.search.backends import (
    BackendFactory,
    backend_loaded,
    backend_names,
    cached_backend,
    get_backend,
    register_backend,
)
from segresearch.tools.search.base import (
    ImageHit,
    SearchBackend,
    SearchSettings,
    SearchUnavailable,
    TextHit,
    split_title,
    tokenize,
)
from segresearch.tools.search.bm25 import BM25KnowledgeBase
from segresearch.tools.search.hybrid import RRF_K, HybridKnowledgeBase
from segresearch.tools.search.tools import make_search_tools

__all__ = [
    "RRF_K",
    "BM25KnowledgeBase",
    "BackendFactory",
    "HybridKnowledgeBase",
    "ImageHit",
    "SearchBackend",
    "SearchSettings",
    "SearchUnavailable",
    "TextHit",
    "backend_loaded",
    "backend_names",
    "cached_backend",
    "get_backend",
    "make_search_tools",
    "register_backend",
    "split_title",
    "tokenize",
]
