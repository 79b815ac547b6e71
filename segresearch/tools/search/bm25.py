"""The ``bm25`` backend: lexical search over a local knowledge-base folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rank_bm25 import BM25Okapi

from segresearch.core.jsonl import iter_jsonl
from segresearch.tools.search.base import (
    ImageHit,
    SearchBackend,
    SearchUnavailable,
    TextHit,
    read_kb_image,
    split_title,
    tokenize,
)


class _LuceneBM25(BM25Okapi):
    """Okapi BM25 with Lucene's non-negative IDF: rank_bm25's classic IDF is zero or
    negative for terms in half the documents, which empties results on small corpora."""

    def _calc_idf(self, nd: dict[str, int]) -> None:
        self.idf = {w: math.log(1.0 + (self.corpus_size - n + 0.5) / (n + 0.5)) for w, n in nd.items()}


def _bm25(corpus: list[list[str]]) -> Any:
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
                img = read_kb_image(path)
            except OSError as e:
                raise RuntimeError(f"cannot read image {path.name}: {e}") from None
            hits.append(ImageHit(name, img, float(scores[i])))
        return hits
