"""Run-time configuration of one graph run.

Everything a caller may vary per run lives here, so that the same compiled graph serves
Python callers (``context=Context(...)``), the LangGraph server (``"context": {...}`` JSON in
the run payload) and verl rollouts. Every field has an environment default so a deployment
can be configured without code, and every field is a plain JSON value except ``model``,
which may also be a chat-model object when called from Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel

DEFAULT_MODEL = "openai:Qwen/Qwen3-VL-4B-Instruct@http://127.0.0.1:8000/v1"


def _env(name: str, default: Any) -> Any:
    """Read ``SEGRESEARCH_<NAME>`` coerced to the type of ``default``."""
    raw = os.environ.get(f"SEGRESEARCH_{name}")
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def _env_opt_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(f"SEGRESEARCH_{name}")
    if raw is None or raw == "":
        return default
    return None if raw.lower() in ("none", "0", "off") else int(raw)


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
    search: Any = field(
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
    search_cache_ttl: float = field(
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
    text_topk: int = field(
        default_factory=lambda: _env("TEXT_TOPK", 3),
        metadata={"description": "Text search results shown to the model."},
    )
    image_topk: int = field(
        default_factory=lambda: _env("IMAGE_TOPK", 1),
        metadata={"description": "Image search results shown to the model."},
    )
    segmenter: str = field(
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
    sam2_image_size: int = field(
        default_factory=lambda: _env("SAM2_IMAGE_SIZE", 0),
        metadata={
            "description": "Input resolution SAM 2 runs at (0: the model's own, 1024); smaller "
            "is faster on CPU and coarser."
        },
    )
    max_turns: int = field(
        default_factory=lambda: _env("MAX_TURNS", 6),
        metadata={
            "description": "Most tool actions (search, keyframe) executed; the model "
            "generates at most max_turns + 1 times."
        },
    )
    num_frames: int = field(
        default_factory=lambda: _env("NUM_FRAMES", 6),
        metadata={"description": "Frames sampled uniformly from a video and shown first."},
    )
    frame_size: int = field(
        default_factory=lambda: _env("FRAME_SIZE", 448),
        metadata={"description": "Side of the square the sampled frames are resized to."},
    )
    keyframe_size: int = field(
        default_factory=lambda: _env("KEYFRAME_SIZE", 864),
        metadata={"description": "Side of the square a selected keyframe is shown at."},
    )
    search_image_size: int = field(
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
    max_new_tokens: int = field(
        default_factory=lambda: _env("MAX_NEW_TOKENS", 2048),
        metadata={"description": "Tokens one model turn may generate."},
    )
    max_response_tokens: int | None = field(
        default_factory=lambda: _env_opt_int("MAX_RESPONSE_TOKENS", 8192),
        metadata={
            "description": "Tokens all model turns together may generate; the run ends "
            "with stop reason 'max_tokens' past it (None: no limit)."
        },
    )
    temperature: float = field(
        default_factory=lambda: _env("TEMPERATURE", 0.0),
        metadata={"description": "Sampling temperature (0: greedy)."},
    )
    feedback_retries: int = field(
        default_factory=lambda: _env("FEEDBACK_RETRIES", 0),
        metadata={
            "description": "Times a turn with no recognisable action is answered with a "
            "format reminder instead of ending the run (0: end at once, as in training)."
        },
    )
    request_timeout: float = field(
        default_factory=lambda: _env("REQUEST_TIMEOUT", 120.0),
        metadata={"description": "Seconds one model request may take."},
    )
    search_timeout: float = field(
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

    def __post_init__(self) -> None:
        if self.coord_style not in ("qwen3", "qwen25"):
            raise ValueError(f"coord_style must be 'qwen3' or 'qwen25', not {self.coord_style!r}")
        if self.prompt_variant not in ("auto", "search", "no_search"):
            raise ValueError(f"unknown prompt_variant {self.prompt_variant!r}")
        for name in ("max_turns", "num_frames", "frame_size", "keyframe_size", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_turns > 64:
            raise ValueError("max_turns must be <= 64")

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
