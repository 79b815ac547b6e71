"""The ``hybrid`` backend: a dense and a lexical backend fused by reciprocal rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segresearch.tools.search.base import ImageHit, SearchBackend, TextHit

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
