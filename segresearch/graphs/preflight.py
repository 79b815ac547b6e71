"""Check every configured part before the model spends a turn.

A misconfigured run used to be found out mid-way: every search answering "Search failed"
while the model spent its turns, or no masks after a correct answer, with a success exit.
The first node now makes each part the run will use (model, search backend and knowledge
base, segmenter and checkpoint) and ends the run with ``error:config`` and the reason when
one cannot be made. Everything made here is what the run uses later (loads are shared per
process), so a preflight costs a cache lookup on every run after the first; the slow first
loads announce themselves as ``status`` events so a waiting user sees what is happening.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from segresearch.agents.backends.openai_compat import check_openai_endpoint
from segresearch.agents.context import Context
from segresearch.agents.model_spec import ModelSpec
from segresearch.agents.models import model_loaded, resolve_model
from segresearch.tools.search import SearchUnavailable, backend_loaded, get_backend
from segresearch.tools.search.cache import SearchCacheError, get_cache
from segresearch.tools.search.kb.index import index_progress
from segresearch.tools.segment import get_segmenter

# A model endpoint that answered is not probed again for this long (a server runs many
# runs a second against the same endpoint); one that did not answer is probed every run.
ENDPOINT_OK_SECONDS = 30.0
_ENDPOINTS: dict[str, float] = {}
_ENDPOINTS_LOCK = threading.Lock()


def _model_problem(ctx: Context, status: Callable[[str], None]) -> str | None:
    if not isinstance(ctx.model, str):
        return None  # a chat-model object from Python: nothing to load or reach
    spec = ModelSpec.parse(ctx.model)
    if not model_loaded(spec.text, timeout=ctx.request_timeout) and spec.backend == "hf":
        status(f"loading model {spec.target}")
    try:
        resolve_model(spec.text, timeout=ctx.request_timeout)
    except Exception as e:  # noqa: BLE001 - any failure to make the model is the answer
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if spec.backend != "openai":
        return None
    _, url = spec.openai_endpoint()
    # no URL: a hosted default endpoint, whose own errors are clear enough
    return probe_endpoint(url, ctx.request_timeout) if url else None


def probe_endpoint(url: str, timeout: float) -> str | None:
    """Why the OpenAI-compatible server at ``url`` cannot be used (None: it answered).
    Shared by the CLI's early check and the graph's, so a run probes a server once."""
    with _ENDPOINTS_LOCK:
        if time.monotonic() - _ENDPOINTS.get(url, -1e9) < ENDPOINT_OK_SECONDS:
            return None
    problem = check_openai_endpoint(url, timeout=min(timeout, 5.0))
    if problem is None:
        with _ENDPOINTS_LOCK:
            _ENDPOINTS[url] = time.monotonic()
    return problem


def _search_problem(ctx: Context, status: Callable[[str], None],
                    progress: Callable[[int, int], None] | None = None) -> str | None:
    if not ctx.use_search or not isinstance(ctx.search, str) or ctx.search_name == "none":
        return None
    settings = {"retriever_url": ctx.retriever_url, "timeout": ctx.search_timeout,
                "allow_private_urls": ctx.allow_private_urls}
    try:
        if ctx.kb and not backend_loaded(ctx.search, ctx.kb, **settings):
            status(f"opening the knowledge base {ctx.kb} (it is indexed on first use)")
        with index_progress(progress):  # a first-use index build reports as it embeds
            get_backend(ctx.search, ctx.kb, **settings)
    except SearchUnavailable as e:
        return f"search backend {ctx.search_name!r}: {e}"
    except Exception as e:  # noqa: BLE001 - a corrupt index or corpus file
        return f"search backend {ctx.search_name!r}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    return _search_cache_problem(ctx)


def _search_cache_problem(ctx: Context) -> str | None:
    """A search cache file that cannot be used (a folder, not SQLite, read-only) is the
    user's setting to fix, said before the first turn rather than as a failure inside the
    first search."""
    cache = (ctx.search_cache or "").strip()
    if not cache or cache.lower() == "off":
        return None
    try:
        get_cache(cache, ctx.search_cache_ttl)
    except SearchCacheError as e:
        return str(e)
    return None


def _segmenter_problem(ctx: Context, writes: bool, status: Callable[[str], None]) -> str | None:
    if not ctx.run_segmentation or not writes or (ctx.segmenter or "none").strip().lower() == "none":
        return None
    try:
        seg = get_segmenter(ctx.segmenter, sam2_checkpoint=ctx.sam2_checkpoint,
                            sam2_config=ctx.sam2_config, sam2_image_size=ctx.sam2_image_size or None)
        predictor = getattr(seg, "predictor", None)
        if predictor is not None:
            if not seg.loaded():
                status(f"loading the {seg.name} checkpoint {seg.describe().get('checkpoint', '')}")
            predictor()
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"segmenter {ctx.segmenter!r}: {msg}"
    return None


def preflight(ctx: Context, writes: bool, status: Callable[[str], None] | None = None,
              progress: Callable[[int, int], None] | None = None) -> str | None:
    """The first problem with the run's configuration, or None when every part is usable.

    ``writes``: the run has a folder for masks (segmentation happens only then).
    ``progress(done, total)``: hears how far a knowledge-base index built on first use is."""
    say: Callable[[str], None] = status or (lambda _m: None)
    problem = _model_problem(ctx, say) or _search_problem(ctx, say, progress)
    if problem:
        return problem
    return _segmenter_problem(ctx, writes, say)
