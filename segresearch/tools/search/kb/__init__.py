"""Local dense knowledge base: embedders, a FAISS index on disk, and the ``local`` backend."""

from segresearch.tools.search.kb.embedders import (
    DEFAULT_EMBEDDER,
    Embedder,
    EmbedderError,
    HttpEmbedder,
    canonical_name,
    get_embedder,
)
from segresearch.tools.search.kb.index import (
    DEFAULT_APPROX_THRESHOLD,
    KBError,
    LocalKB,
    build_kb,
    ensure_index,
    index_progress,
    load_kb,
    local_backend,
    open_kb,
)

__all__ = [
    "DEFAULT_APPROX_THRESHOLD",
    "DEFAULT_EMBEDDER",
    "Embedder",
    "EmbedderError",
    "HttpEmbedder",
    "KBError",
    "LocalKB",
    "build_kb",
    "canonical_name",
    "ensure_index",
    "get_embedder",
    "index_progress",
    "load_kb",
    "local_backend",
    "open_kb",
]
