"""Run-time configuration of one graph run.

Everything a caller may vary per run lives here, so that the same compiled graph serves
Python callers (``context=Context(...)``), the LangGraph server (``"context": {...}`` JSON in
the run payload) and verl rollouts. Every field has an environment default so a deployment
can be configured without code, and every field is a plain JSON value except ``model``,
which may also be a chat-model object when called from Python.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping
from dataclasses import field, fields
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from langchain_core.language_models import BaseChatModel
from pydantic import ConfigDict, Field, InstanceOf, ValidationError
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic.json_schema import SkipJsonSchema

from segresearch.core.envvars import check_settings, context_default
from segresearch.core.media import working_max_pixels
from segresearch.tools.search.backends import backend_names
from segresearch.tools.segmenters import SEGMENTER_NAMES

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
    rule = field_rules()[name.lower()]
    return context_default(rule.name, default, bounds=rule.bounds, choices=rule.choices)


def _env_opt_int(name: str, default: int | None) -> int | None:
    rule = field_rules()[name.lower()]
    return context_default(rule.name, default, "int", bounds=rule.bounds, none_words=("none", "0", "off"))


def _search_choices(schema: dict[str, Any]) -> None:
    """The published schema lists the search backends by name, so a client (the web page)
    offers a choice instead of a free-text field. Read from the registry when the schema is
    made: built-in backends and any plugin registered by then, plus 'none'."""
    schema["enum"] = [*backend_names(), "none"]


def _segmenter_choices(schema: dict[str, Any]) -> None:
    """As for ``search``: the names ``get_segmenter`` takes, from the segmenters package."""
    schema["enum"] = list(SEGMENTER_NAMES)


_T = TypeVar("_T")


def _refusing_with_context_errors(cls: type[_T]) -> type[_T]:
    """Python callers get what JSON clients get: the pydantic ``ValidationError`` of the
    generated ``__init__`` becomes a ``ContextError``, one line per problem, worded by
    ``_problem`` (``dataclasses.replace`` and LangGraph's ``Context(**context)`` too)."""
    validating_init = cls.__init__

    @functools.wraps(validating_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validating_init(self, *args, **kwargs)
        except ValidationError as e:
            raise ContextError(list(dict.fromkeys(_problem(err) for err in e.errors()))) from None

    cls.__init__ = __init__  # type: ignore[method-assign]  # the wrapper keeps the signature
    return cls


# The field annotations are the one statement of what a value may be: pydantic checks them
# on every construction and publishes them as the graph's context schema. ``model`` may be
# a chat-model object (checked by isinstance, left out of the schema) and ``search`` any
# SearchBackend; an unknown keyword is refused, as a plain dataclass would.
@_refusing_with_context_errors
@dataclass(kw_only=True, config=ConfigDict(extra="forbid"))
class Context:
    """Per-run settings of the Seg-ReSearch graph (env: ``SEGRESEARCH_<FIELD>`` upper-case)."""

    model: str | SkipJsonSchema[InstanceOf[BaseChatModel]] = field(
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
    search_cache_ttl: Annotated[float, Field(ge=0, allow_inf_nan=False)] = field(
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
    coord_style: Literal["auto", "qwen3", "qwen25", "gemini", "normalized"] = field(
        default_factory=lambda: _env("COORD_STYLE", "auto"),
        metadata={
            "description": "How the model writes positions: 'qwen3' integers 0-1000 relative to "
            "the frame (Qwen3-VL); 'qwen25' absolute pixels of the image as shown (Qwen2.5-VL); "
            "'gemini' [ymin, xmin, ymax, xmax] and [y, x] on 0-1000; 'normalized' fractions "
            "0-1; 'auto' the model family's own (with the tags protocol: qwen3, or qwen25 for "
            "a Qwen2.5-VL)."
        },
    )
    protocol: Literal["tags", "tools"] = field(
        default_factory=lambda: _env("PROTOCOL", "tags"),
        metadata={
            "description": "How the model acts: 'tags' (the published <search>/<keyframe>/<answer> "
            "text the Seg-ReSearch checkpoints were trained on) or 'tools' (native tool calls "
            "text_search, image_search, keyframe and answer bound with bind_tools, for general "
            "chat models)."
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
    max_response_tokens: Annotated[int | None, Field(ge=1, le=262144)] = field(
        default_factory=lambda: _env_opt_int("MAX_RESPONSE_TOKENS", 8192),
        metadata={
            "description": "Tokens all model turns together may generate; the run ends "
            "with stop reason 'max_tokens' past it (None: no limit)."
        },
    )
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] = field(
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
    request_timeout: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = field(
        default_factory=lambda: _env("REQUEST_TIMEOUT", 120.0),
        metadata={"description": "Seconds one model request may take."},
    )
    search_timeout: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)] = field(
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
    verify_rounds: Annotated[int, Field(ge=0, le=4)] = field(
        default_factory=lambda: _env("VERIFY_ROUNDS", 0),
        metadata={
            "description": "Times the model is shown its masks after segmentation (the keyframe "
            "and the frames where the masks change most) to accept them or correct them with "
            "points or a box, after which the masks are made again (0: never, as published)."
        },
    )
    ask_user: bool = field(
        default_factory=lambda: _env("ASK_USER", False),
        metadata={
            "description": "Offer the model an ask_user(question) tool that pauses the run "
            "until the user replies (LangGraph interrupt; needs a checkpointer unless "
            "ask_user_reply is set). Tools protocol only."
        },
    )
    ask_user_reply: str | None = field(
        default_factory=lambda: _env("ASK_USER_REPLY", None),
        metadata={
            "description": "Answer every ask_user question with this text at once, without "
            "pausing (what evaluations use); unset: pause for a person's reply."
        },
    )

    def __post_init__(self) -> None:
        # pydantic reports a ValueError here as a refusal like any other (``ContextError``)
        if self.ask_user and self.protocol != "tools":
            raise ValueError("ask_user: the tool exists only with protocol 'tools' "
                             "(the published tags have no question to the user); set "
                             "protocol 'tools' or turn ask_user off")

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


@dataclasses.dataclass(frozen=True)
class FieldRule:
    """What a Context field's constraints allow, in the form the environment parser
    (``core.envvars.context_default``) and the refusal wording need."""

    name: str
    bounds: tuple[float | None, bool, float | None] | None  # (lower, lower is exclusive, upper)
    choices: tuple[str, ...]
    whole: bool  # an integer field
    nullable: bool

    def allowed(self, error_type: str) -> str:
        """What the field must be, for a refusal of the kind pydantic calls ``error_type``."""
        if self.choices:
            quoted = [repr(c) for c in self.choices]
            return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        parts = []
        if error_type not in _BOUND_ERRORS:  # the value's type was wrong, not its size
            parts.append("a finite number" if error_type == "finite_number"
                         else "a whole number" if self.whole else "a number")
        lo, lo_open, hi = self.bounds or (None, False, None)
        limits = ([f"{'>' if lo_open else '>='} {lo:g}"] if lo is not None else []) + \
            ([f"<= {hi:g}"] if hi is not None else [])
        parts.append(" and ".join(limits))
        return " ".join(parts) + (" (or None)" if self.nullable else "")


_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


@functools.cache
def field_rules() -> dict[str, FieldRule]:
    """Bounds and choices of every Context field, read from the constraints its annotation
    carries (``Field(ge=..)``, ``Literal[..]``): the values pydantic checks and the JSON
    schema shows, so environment defaults and error messages cannot disagree with them."""
    out: dict[str, FieldRule] = {}
    infos: dict[str, FieldInfo] = Context.__pydantic_fields__  # type: ignore[attr-defined]
    for name, info in infos.items():
        lo: Any = None
        hi: Any = None
        lo_open = False
        for c in info.metadata:
            if isinstance(c, annotated_types.Ge):
                lo = c.ge
            elif isinstance(c, annotated_types.Gt):
                lo, lo_open = c.gt, True
            elif isinstance(c, annotated_types.Le):
                hi = c.le
        hint = info.annotation
        members = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
        choices = tuple(str(a) for a in get_args(hint)) if get_origin(hint) is Literal else ()
        bounds = (lo, lo_open, hi) if lo is not None or hi is not None else None
        out[name] = FieldRule(name, bounds, choices, int in members, type(None) in members)
    return out


def _problem(err: Mapping[str, Any]) -> str:
    """One line for one pydantic error, starting with the field's name (the web page puts
    the form's label in its place)."""
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    if not loc:  # a rule across fields (``__post_init__``): its message names the field itself
        return str(err.get("msg", "invalid context")).removeprefix("Value error, ")
    name = loc[0]
    kind = str(err.get("type", ""))
    if kind == "unexpected_keyword_argument":
        return f"unknown context key {name!r} (see the graph's context schema)"
    rule = field_rules().get(name)
    if rule is not None and (rule.bounds or rule.choices):
        return f"{name}: got {err.get('input')!r}; {name} must be {rule.allowed(kind)}"
    msg = str(err.get("msg", "invalid value"))
    return f"{name}: {msg.removeprefix('Value error, ')}"


FIELD_NAMES = frozenset(f.name for f in fields(Context))


def check_environment() -> None:
    """Parse every registered setting, every Context default and the media pixel cap now
    (a ValueError naming the variable on the first bad one), so a command refuses a
    malformed variable before it does any work."""
    check_settings()
    Context()
    working_max_pixels()
