"""``text_search`` and ``image_search``: LangChain tools over a search backend.

The tools turn a backend's answers (or failures) into the observation texts the model was
trained on. Failures never stop a run: the model reads
``<information>Search failed: ...</information>`` and may try again. Every backend call is
bounded by a timeout here, whatever the backend does itself.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from PIL import Image
from pydantic import BaseModel, Field

from segresearch.core import cancel
from segresearch.core.media import SquareResize
from segresearch.core.protocol import (
    render_image_results,
    render_search_error,
    render_text_results,
)
from segresearch.core.shared_cache import LoadOnce, thread_pool
from segresearch.tools.search.base import SearchBackend, SearchUnavailable

# The published image search (verl_tool/servers/tools/local_retrieval.py) resizes each hit
# to 256×256 with LANCZOS.
SEARCH_IMAGE_RESIZE = SquareResize(256, Image.Resampling.LANCZOS)
# Hit images at the observation size, by source object: a knowledge base hands out one
# object per file, so the samples of a GRPO group resize it once. The entry holds the
# source, so its id cannot be reused by another image while the entry lives; the filter is
# part of the key.
_RESIZED: LoadOnce[tuple[Image.Image, Image.Image]] = LoadOnce(maxsize=256, name="search.resized_hits")


def _resized(img: Image.Image, size: int) -> Image.Image:
    key = (id(img), size, SEARCH_IMAGE_RESIZE.method)
    return _RESIZED.get(key, lambda: (img, SEARCH_IMAGE_RESIZE(img, size)))[1]


class TextSearchArgs(BaseModel):
    query: str = Field(description="What to look up, as a short web-search query.")


class ImageSearchArgs(BaseModel):
    query: str = Field(description="Name of the person, object or logo to see a picture of.")


def _call(fn: Any, timeout: float, *args: Any) -> Any:
    """``fn(*args)`` within ``timeout``; Ctrl-C stops the wait at once (``cancel.Cancelled``),
    leaving the call to finish or be abandoned with the process."""
    fut = thread_pool("search").submit(fn, *args)
    try:
        return cancel.result(fut, timeout=timeout)
    except cf.TimeoutError:
        fut.cancel()
        raise TimeoutError(f"no answer within {timeout:g} s") from None
    except cancel.Cancelled:
        fut.cancel()
        raise


def _fail(e: BaseException) -> tuple[str, dict[str, Any]]:
    msg = str(e) or type(e).__name__
    return render_search_error(msg), {"images": [], "error": msg, "hits": []}


def make_search_tools(
    backend: SearchBackend | None,
    *,
    text_topk: int = 3,
    image_topk: int = 1,
    image_size: int = SEARCH_IMAGE_RESIZE.side,
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
        images = [_resized(h.image, image_size) for h in hits]
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
