"""What every part of the search stack shares: hits, the backend interface, settings, errors.

A backend answers queries; the tools (:mod:`segresearch.tools.search.tools`) turn answers (or
failures) into the observation texts the model was trained on. This module imports nothing
from the rest of the package, so every other module can build on it.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from segresearch.core.shared_cache import LoadOnce


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


# Decoded knowledge-base images by file and version: the samples of a GRPO group (and an
# evaluation's repeated queries) hit the same few images, and re-reading one per hit cost
# more than the search itself. Callers share the objects and must not modify them.
_KB_IMAGES: LoadOnce[Image.Image] = LoadOnce(maxsize=64, name="search.kb_images")


def read_kb_image(path: str | os.PathLike) -> Image.Image:
    """The RGB pixels of a knowledge-base image file (OSError when it cannot be read)."""
    p = Path(path)
    st = p.stat()

    def load() -> Image.Image:
        with Image.open(p) as im:
            return im.convert("RGB")

    return _KB_IMAGES.get((str(p), st.st_mtime_ns, st.st_size), load)
