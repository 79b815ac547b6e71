"""Run-time configuration of one graph run.

Everything a caller may vary per run lives here, so that the same compiled graph serves
Python callers (``context=Context(...)``), the LangGraph server (``"context": {...}`` JSON in
the run payload) and verl rollouts. Every field has an environment default so a deployment
can be configured without code, and every field is a plain JSON value except ``model``,
which may also be a chat-model object when called from Python.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from langchain_core.language_models import BaseChatModel
from pydantic import Field, TypeAdapter, ValidationError

from segresearch.core.envvars import check_settings, context_default
from segresearch.core.media import working_max_pixels

DEFAULT_MODEL = "openai:Qwen/Qwen3-VL-4B-Instruct@http://127.0.0.1:8000/v1"
# Bounds that keep one run's cost sane (10,000 frames or 4096-px frames are mistakes, and
# on a server they are a way to make it spend seconds and megabytes per request).
MAX_FRAMES = 64
MAX_FRAME_SIZE = 1536
MAX_KEYFRAME_SIZE = 2048


class ContextError(ValueError):
    """Settings a caller sent cannot be used; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def _env(name: str, default: Any) -> Any:
    """``SEGRESEARCH_<NAME>`` as the field's type, checked against the field's own bounds
    and choices (``segresearch.core.envvars``: a bad value is an error naming the variable)."""
    field_name = name.lower()
    return context_default(field_name, default, bounds=_bounds().get(field_name),
                           choices=_choices().get(field_name, ()))


def _env_opt_int(name: str, default: int | None) -> int | None:
    field_name = name.lower()
    return context_default(field_name, default, "int", bounds=_bounds().get(field_name),
                           none_words=("none", "0", "off"))


def _search_choices(schema: dict[str, Any]) -> None:
    """The published schema lists the search backends by name, so a client (the web page)
    offers a choice instead of a free-text field. Read from the registry when the schema is
    made: built-in backends and any plugin registered by then, plus 'none'."""
    from segresearch.tools.search.backends import backend_names

    schema["enum"] = [*backend_names(), "none"]


def _segmenter_choices(schema: dict[str, Any]) -> None:
    """As for ``search``: the names ``get_segmenter`` takes, from the segmenters package."""
    from segresearch.tools.segmenters import SEGMENTER_NAMES

    schema["enum"] = list(SEGMENTER_NAMES)


@dataclass(kw_only=True)
class Context:
    """Per-run settings of the Seg-ReSearch graph (env: ``SEGRESEARCH_<FIELD>`` upper-case)."""

    model: str | BaseChatModel = field(
        default_factory=lambda: _env("MODEL", DEFAULT_MODEL),
        metadata={
            "description": "Chat model: a LangChain chat model object, or a spec string "
            "'openai:NAME@URL', 'hf:/path/to/checkpoint' or 'replay:cassette.json'."
        },
    )
    search: Annotated[Any, Field(json_schema_extra=_search_choices)] = field(
        default_factory=lambda: _env("SEARCH", "local"),
        metadata={
            "description": "Search backend for text_search/image_search: 'local' (dense index "
            "over the knowledge base folder `kb`), 'bm25' (lexical, same folder), 'retriever' "
            "(a /retrieve server at `retriever_url`), 'ddg', 'tavily', 'serper' (web; keys "
            "from TAVILY_API_KEY / SERPER_API_KEY), 'none', or (from Python) a SearchBackend."
        },
    )
    kb: str = field(
        default_factory=lambda: _env("KB", ""),
        metadata={
            "description": "Local knowledge-base folder (text_corpus.jsonl, optional "
            "image_corpus.jsonl) used by the 'local' search backend."
        },
    )
    retriever_url: str = field(
        default_factory=lambda: _env("RETRIEVER_URL", ""),
        metadata={
            "description": "Base URL of a Search-R1 style retrieval server (POST /retrieve) "
            "for the 'retriever' search backend, e.g. http://127.0.0.1:8001."
        },
    )
    search_cache: str = field(
        default_factory=lambda: _env("SEARCH_CACHE", ""),
        metadata={
            "description": "SQLite file caching search results (backend, tool, query, top-k), "
            "so repeated queries cost one call and stay reproducible; '' or 'off' disables."
        },
    )
    search_cache_ttl: Annotated[float, Field(ge=0)] = field(
        default_factory=lambda: _env("SEARCH_CACHE_TTL", 7 * 24 * 3600.0),
        metadata={"description": "Seconds a cached search result stays valid."},
    )
    allow_private_urls: bool = field(
        default_factory=lambda: _env("ALLOW_PRIVATE_URLS", False),
        metadata={
            "description": "Let web image search fetch from private or loopback addresses "
            "(off: such URLs are refused)."
        },
    )
    text_topk: Annotated[int, Field(ge=1, le=20)] = field(
        default_factory=lambda: _env("TEXT_TOPK", 3),
        metadata={"description": "Text search results shown to the model."},
    )
    image_topk: Annotated[int, Field(ge=1, le=10)] = field(
        default_factory=lambda: _env("IMAGE_TOPK", 1),
        metadata={"description": "Image search results shown to the model."},
    )
    segmenter: Annotated[str, Field(json_schema_extra=_segmenter_choices)] = field(
        default_factory=lambda: _env("SEGMENTER", "auto"),
        metadata={
            "description": "Mask producer after the answer, for every frame: 'sam2' (the "
            "published box-then-point prompting), 'grabcut' (OpenCV, no weights: the "
            "keyframe's mask carried by optical flow), 'none' (answer only), or 'auto' "
            "(sam2 when installed with a checkpoint, else grabcut)."
        },
    )
    sam2_checkpoint: str = field(
        default_factory=lambda: _env("SAM2_CHECKPOINT", ""),
        metadata={"description": "Path to a SAM 2 checkpoint (.pt) for segmenter 'sam2'."},
    )
    sam2_config: str = field(
        default_factory=lambda: _env("SAM2_CONFIG", ""),
        metadata={
            "description": "SAM 2 config shipped in the sam2 package, e.g. "
            "'configs/sam2.1/sam2.1_hiera_l.yaml' (empty: inferred from the checkpoint name)."
        },
    )
    sam2_image_size: Annotated[int, Field(ge=0, le=4096)] = field(
        default_factory=lambda: _env("SAM2_IMAGE_SIZE", 0),
        metadata={
            "description": "Input resolution SAM 2 runs at (0: the model's own, 1024); smaller "
            "is faster on CPU and coarser."
        },
    )
    max_turns: Annotated[int, Field(ge=1, le=64)] = field(
        default_factory=lambda: _env("MAX_TURNS", 6),
        metadata={
            "description": "Most tool actions (search, keyframe) executed; the model "
            "generates at most max_turns + 1 times."
        },
    )
    num_frames: Annotated[int, Field(ge=1, le=MAX_FRAMES)] = field(
        default_factory=lambda: _env("NUM_FRAMES", 6),
        metadata={"description": "Frames sampled uniformly from a video and shown first."},
    )
    frame_size: Annotated[int, Field(ge=28, le=MAX_FRAME_SIZE)] = field(
        default_factory=lambda: _env("FRAME_SIZE", 448),
        metadata={"description": "Side of the square the sampled frames are resized to."},
    )
    keyframe_size: Annotated[int, Field(ge=28, le=MAX_KEYFRAME_SIZE)] = field(
        default_factory=lambda: _env("KEYFRAME_SIZE", 864),
        metadata={"description": "Side of the square a selected keyframe is shown at."},
    )
    search_image_size: Annotated[int, Field(ge=28, le=1024)] = field(
        default_factory=lambda: _env("SEARCH_IMAGE_SIZE", 256),
        metadata={"description": "Side of the square image-search results are shown at."},
    )
    coord_style: Literal["qwen3", "qwen25"] = field(
        default_factory=lambda: _env("COORD_STYLE", "qwen3"),
        metadata={
            "description": "'qwen3': integers 0-1000 relative to the frame (Qwen3-VL); "
            "'qwen25': absolute pixels of the image as shown (Qwen2.5-VL)."
        },
    )
    prompt_variant: Literal["auto", "search", "no_search"] = field(
        default_factory=lambda: _env("PROMPT_VARIANT", "auto"),
        metadata={
            "description": "System prompt: with search tools, without (in-video), or "
            "'auto' (follows whether `search` is 'none')."
        },
    )
    system_prompt_file: str = field(
        default_factory=lambda: _env("SYSTEM_PROMPT_FILE", ""),
        metadata={"description": "A text file that replaces the built-in system prompt."},
    )
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = field(
        default_factory=lambda: _env("MAX_NEW_TOKENS", 2048),
        metadata={"description": "Tokens one model turn may generate."},
    )
    max_response_tokens: Annotated[int, Field(ge=1, le=262144)] | None = field(
        default_factory=lambda: _env_opt_int("MAX_RESPONSE_TOKENS", 8192),
        metadata={
            "description": "Tokens all model turns together may generate; the run ends "
            "with stop reason 'max_tokens' past it (None: no limit)."
        },
    )
    temperature: Annotated[float, Field(ge=0, le=2)] = field(
        default_factory=lambda: _env("TEMPERATURE", 0.0),
        metadata={"description": "Sampling temperature (0: greedy)."},
    )
    feedback_retries: Annotated[int, Field(ge=0, le=8)] = field(
        default_factory=lambda: _env("FEEDBACK_RETRIES", 0),
        metadata={
            "description": "Times a turn with no recognisable action is answered with a "
            "format reminder instead of ending the run (0: end at once, as in training)."
        },
    )
    request_timeout: Annotated[float, Field(gt=0, le=3600)] = field(
        default_factory=lambda: _env("REQUEST_TIMEOUT", 120.0),
        metadata={"description": "Seconds one model request may take."},
    )
    search_timeout: Annotated[float, Field(gt=0, le=600)] = field(
        default_factory=lambda: _env("SEARCH_TIMEOUT", 10.0),
        metadata={"description": "Seconds one search call may take."},
    )
    output_dir: str = field(
        default_factory=lambda: _env("OUTPUT_DIR", ""),
        metadata={
            "description": "Folder for this run's trajectory.json, annotated keyframe and "
            "masks ('' writes nothing)."
        },
    )
    run_segmentation: bool = field(
        default_factory=lambda: _env("RUN_SEGMENTATION", True),
        metadata={"description": "Run the segment step after an answer (off in RL)."},
    )
    review: bool = field(
        default_factory=lambda: _env("REVIEW", False),
        metadata={
            "description": "Pause before segmentation with the answer for a person to accept, "
            "edit or reject (LangGraph interrupt; needs a checkpointer, which the server has)."
        },
    )

    def __post_init__(self) -> None:
        if self.coord_style not in ("qwen3", "qwen25"):
            raise ValueError(f"coord_style must be 'qwen3' or 'qwen25', not {self.coord_style!r}")
        if self.prompt_variant not in ("auto", "search", "no_search"):
            raise ValueError(f"unknown prompt_variant {self.prompt_variant!r}")
        for name, (lo, lo_open, hi) in _bounds().items():
            v = getattr(self, name)
            if v is None and name == "max_response_tokens":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number, not {type(v).__name__}")
            if not math.isfinite(v):  # NaN passes every comparison below
                raise ValueError(f"{name} must be a finite number {_describe((lo, lo_open, hi))}; got {v}")
            if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
                raise ValueError(f"{name} must be {_describe((lo, lo_open, hi))}; got {v}")

    @property
    def use_search(self) -> bool:
        if self.prompt_variant == "no_search":
            return False
        if self.prompt_variant == "search":
            return True
        return self.search_name != "none"

    @property
    def search_name(self) -> str:
        return self.search.strip().lower() if isinstance(self.search, str) else "custom"

    def public_dict(self) -> dict[str, Any]:
        """JSON-safe view for trajectories (a model object is shown by its class name)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
        return out


def _describe(bound: tuple[float | None, bool, float | None]) -> str:
    lo, lo_open, hi = bound
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    return " and ".join(parts)


@functools.cache
def _bounds() -> dict[str, tuple[float | None, bool, float | None]]:
    """(lower, lower is exclusive, upper) per bounded field, read from the ``Field``
    constraints in the annotations, so the JSON schema the server publishes and the checks
    made here cannot disagree."""
    out: dict[str, tuple[float | None, bool, float | None]] = {}
    for name, hint in get_type_hints(Context, include_extras=True).items():
        for part in (hint, *get_args(hint)):
            if get_origin(part) is not Annotated:
                continue
            lo = hi = None
            lo_open = False
            for meta in get_args(part)[1:]:
                for c in getattr(meta, "metadata", []):
                    if hasattr(c, "ge"):
                        lo = c.ge
                    elif hasattr(c, "gt"):
                        lo, lo_open = c.gt, True
                    elif hasattr(c, "le"):
                        hi = c.le
            if lo is not None or hi is not None:  # an annotation may carry only schema extras
                out[name] = (lo, lo_open, hi)
    return out


@functools.cache
def _choices() -> dict[str, tuple[str, ...]]:
    """The allowed words of each ``Literal`` field (``coord_style``, ``prompt_variant``)."""
    return {name: tuple(str(a) for a in get_args(hint))
            for name, hint in get_type_hints(Context).items() if get_origin(hint) is Literal}


@functools.cache
def _adapter() -> TypeAdapter[Context]:
    return TypeAdapter(Context)


FIELD_NAMES = frozenset(f.name for f in fields(Context))


def validate_context(data: Mapping[str, Any] | None) -> Context:
    """A Context from JSON a client sent: unknown keys, wrong types and values out of bounds
    are refused (a ContextError listing every problem), and paths must pass the serving
    path policy (``PathRefused``). The graph applies the same policy again when it runs."""
    from segresearch.agents.path_policy import check_context_paths

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ContextError(f"context must be a JSON object, not {type(data).__name__}")
    problems = [f"unknown context key {k!r} (see the graph's context schema)"
                for k in data if k not in FIELD_NAMES]
    for k in ("model", "search"):
        if k in data and not isinstance(data[k], str):
            problems.append(f"{k}: must be a string")
    known = {k: v for k, v in data.items() if k in FIELD_NAMES and k not in ("model", "search")
             or k in ("model", "search") and isinstance(v, str)}
    try:  # every problem in one answer, not one per request
        ctx = _adapter().validate_python(known)
    except ValidationError as e:
        problems += [_pydantic_problem(err) for err in e.errors()]
    if problems:
        raise ContextError(problems)
    check_context_paths(ctx, given=set(data))
    return ctx


def _pydantic_problem(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)) or "context"
    msg = str(err.get("msg", "invalid value"))
    return f"{loc}: {msg.removeprefix('Value error, ')}"


def check_environment() -> None:
    """Parse every registered setting, every Context default and the media pixel cap now
    (a ValueError naming the variable on the first bad one), so a command refuses a
    malformed variable before it does any work."""
    check_settings()
    Context()
    working_max_pixels()
