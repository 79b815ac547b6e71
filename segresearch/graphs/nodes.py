"""The nodes of the Seg-ReSearch graph: plain functions of (state, runtime).

``reason`` and ``verify`` are the nodes that wait on a model, so each also has an async
twin that awaits the model instead of blocking a thread (RL rollouts run hundreds of graphs
in one event loop). Every other node is quick CPU work or bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableBinding
from langgraph.config import get_config
from langgraph.errors import GraphInterrupt
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from PIL import Image

from segresearch.agents import ask_user as ask_rules
from segresearch.agents import review as review_rules
from segresearch.agents.backends.replay import approx_tokens
from segresearch.agents.content import content_text, media_block, text_block
from segresearch.agents.context import Context, ContextError
from segresearch.agents.coord_style import resolved_coord_style
from segresearch.agents.model_spec import ModelSpec
from segresearch.agents.models import model_loaded, resolve_model
from segresearch.agents.path_policy import (
    PathRefused,
    media_paths,
    policy_active,
    resolve_output,
    resolved_context,
    resolved_field,
    served_output,
)
from segresearch.agents.providers import image_placement, messages_for
from segresearch.compat.langgraph import run_has_checkpointer
from segresearch.core.coords import CoordFrame, describe_convention, to_internal
from segresearch.core.events import (
    ANSWER,
    ASK_USER,
    ERROR,
    FEEDBACK,
    FINAL,
    KEYFRAME,
    MEDIA,
    MODEL,
    NONE,
    PROGRESS,
    REVIEW,
    SEARCH,
    SEGMENT,
    START,
    STATUS,
    TOOL,
    TURN,
    VERIFY,
    Action,
    ActionAnswer,
    ActionAskUser,
    ActionKeyframe,
    ActionNone,
    ActionObject,
    ActionSearch,
    AskUserEvent,
    AskUserRequest,
    Correction,
    ErrorEvent,
    FeedbackEvent,
    FinalEvent,
    KeyframeEvent,
    MediaEvent,
    ModelEvent,
    PendingAnswer,
    PendingFeedback,
    ProgressEvent,
    ReviewEvent,
    ReviewRefusedEvent,
    ReviewRequest,
    SearchEvent,
    SegmentEvent,
    SegmentObject,
    StartEvent,
    StatusEvent,
    StreamEvent,
    ToolEvent,
    TurnEvent,
    VerifyEvent,
)
from segresearch.core.media import (
    FRAME_RESIZE,
    MediaError,
    SquareResize,
    open_media,
    resize_square,
    sample_frame_ids,
)
from segresearch.core.media_recipes import FrameRecipe
from segresearch.core.media_store import get_store
from segresearch.core.prompts import (
    FEEDBACK_PROMPT,
    TOOLS_FEEDBACK_PROMPT,
    TOOLS_VERIFY_RETRY_PROMPT,
    VERIFY_RETRY_PROMPT,
    frame_label,
    system_prompt,
    tools_system_prompt,
    verify_prompt,
)
from segresearch.core.protocol import (
    STOP_STRINGS,
    AnswerAction,
    KeyframeAction,
    NoAction,
    SearchAction,
    clamp_answer,
    clean_text,
    degenerate_box,
    parse_action,
    render_search_error,
)
from segresearch.core.shared_cache import LoadOnce, thread_pool
from segresearch.core.tool_protocol import (
    AskUserAction,
    interleave_images,
    not_run_message,
    offered_tools,
    parse_tool_calls,
    tool_calls_in_order,
    tool_definitions,
    tool_observation,
)
from segresearch.core.verify_protocol import (
    VERIFY_STOP,
    VerifyCorrect,
    VerifyProblem,
    VerifyReply,
    parse_verify_calls,
    parse_verify_tags,
    verify_tool_definitions,
    verify_tool_too_early,
)
from segresearch.graphs.outputs import one_line, write_outputs, write_verify_picture
from segresearch.graphs.preflight import preflight
from segresearch.graphs.state import State
from segresearch.tools.keyframe import KEYFRAME_RESIZE, make_keyframe_tool
from segresearch.tools.search import (
    SearchBackend,
    SearchUnavailable,
    cached_backend,
    get_backend,
    make_search_tools,
)
from segresearch.tools.search.cache import SearchCacheError
from segresearch.tools.segment import get_segmenter, make_segment_tool
from segresearch.tools.segmenters import Prompt, prompt_from_answer
from segresearch.tools.verify_view import verify_frames, verify_picture, verify_sheet
from segresearch.tools.visualize import (
    OBJECT_COLOURS,
    DrawnObject,
    annotate_objects,
    draw_answer,
    side_by_side,
)

logger = logging.getLogger(__name__)


def _error(kind: str, exc: BaseException | str) -> dict[str, Any]:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return {
        "stop_reason": f"error:{kind}",
        "error": msg,
        "pending": None,
        "events": [ErrorEvent(type=ERROR, kind=kind, message=msg)],
    }


def _tool_call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}


def _observation(text: str, images: list[Any], recipes: list[Any] | None = None) -> HumanMessage:
    """A user turn: the tool text, with each ``<image>`` placeholder (or, if there are none,
    the end of the text) followed by one image (a store reference, not the pixels); an
    item of ``images`` may already be an image block."""
    if not images:
        return HumanMessage(content=text)
    blocks = [img if isinstance(img, dict) else media_block(img, recipes[k] if recipes else None)
              for k, img in enumerate(images)]
    return HumanMessage(content=interleave_images(text, blocks))


# ------------------------------------------------------------------ load_media


def _fresh_run(update: dict[str, Any]) -> dict[str, Any]:
    """Start from a clean slate: a thread of a checkpointed graph (or of the LangGraph
    server) may be invoked again, and nothing of an earlier run may leak into this one."""
    out: dict[str, Any] = {
        "stop_reason": None, "error": None, "pending": None, "run_dir": None,
        "answer": None, "answer_px": None, "answer_note": None, "masks_dir": None, "keyframe": None,
        "objects": None, "objects_px": None, "object_masks_dirs": None,
        "segmenter": None, "reviewed": None, "verify_round": 0, "verify_done": False,
        "turns": 0, "tool_calls": 0, "tokens_used": 0, "feedback_used": 0, "frame_ids": [],
        **update,
    }
    out["messages"] = [RemoveMessage(id=REMOVE_ALL_MESSAGES), *update.get("messages", [])]
    out["events"] = [StartEvent(type=START, time=time.time()), *update.get("events", [])]
    out["searches"] = None
    out["corrections"] = None
    out["questions"] = None
    return out


# A dataset may ship the shown frames already made (``segresearch data okvos
# --presize-frames``: lossless files). A run's config names them under this key, aligned
# with its list of frame paths and with the size and filter they were made at:
# ``{"frames": [...], "size": 448, "method": "square-bicubic"}``. Where size and filter
# are the run's, ``load_media`` reads them instead of decoding and resizing the sources
# (the keyframe is still made from the source). The files go through the media roots
# like any frame.
PRESIZED_FRAMES = "segresearch_presized_frames"


@dataclass(frozen=True)
class PresizedFrames:
    """A run's pre-sized frames: their paths (aligned with the run's frame list) and media."""

    spec: list[str]
    media: Any


def _presized_frames(spec: Any, size: int) -> PresizedFrames | None:
    """The run's pre-sized frames when they fit ``spec`` at ``size`` with the frame filter."""
    try:
        conf = (get_config().get("configurable") or {}).get(PRESIZED_FRAMES)
    except RuntimeError:  # called outside a graph run
        return None
    if not isinstance(conf, dict) or not isinstance(spec, list):
        return None
    frames = conf.get("frames")
    if (conf.get("size") != size or conf.get("method") != FRAME_RESIZE.method
            or not isinstance(frames, list) or len(frames) != len(spec)):
        return None
    try:
        media = open_media([str(f) for f in frames])
    except MediaError as e:  # the sources are still there: show those, as without the option
        logger.warning("pre-sized frames not used: %s", e)
        return None
    return PresizedFrames([str(f) for f in frames], media) if len(media) == len(spec) else None


# The samples of an RL group (and repeated queries on a video) show the same frames: each is
# decoded and resized once, also when the samples all start at the same moment.
_FRAME_BLOCKS: LoadOnce[dict[str, Any]] = LoadOnce(maxsize=512, name="graph.frame_blocks")


def _frame_recipe(media: Any, spec: Any, fid: int, size: int,
                  resize: SquareResize = FRAME_RESIZE) -> Callable[[], Image.Image]:
    """How to remake a shown frame from its source if the media store has dropped it: a
    ``FrameRecipe``, which the store also writes beside the PNG so that any process can
    remake an evicted frame (SEGRESEARCH_MEDIA_MAX_GB)."""
    return FrameRecipe.for_frame(media, spec, fid, size, resize.resample)


def _frame_block(media: Any, spec: Any, fid: int, size: int,
                 resize: SquareResize = FRAME_RESIZE, pre: PresizedFrames | None = None) -> dict[str, Any]:
    """The image block of a shown frame, made with the showing tool's filter (sampled frames
    and keyframes differ); the same reference also keeps prompts cacheable. With ``pre``,
    the frame's pre-sized file is read instead of the source when it already has the shown
    size (it was made at data time exactly as below; nothing is resized again)."""
    return _FRAME_BLOCKS.get(_block_key(media, fid, size, resize, pre),
                             lambda: _make_frame_block(media, spec, fid, size, resize, pre))


def _make_frame_block(media: Any, spec: Any, fid: int, size: int, resize: SquareResize,
                      pre: PresizedFrames | None) -> dict[str, Any]:
    if pre is not None:
        pfid = pre.media.frame_ids[media.index_of(fid)]
        img = pre.media.frame(pfid)
        if img.size == (size, size):  # the recipe remakes it from the same file
            return media_block(img, _frame_recipe(pre.media, pre.spec, pfid, size, resize))
    return media_block(resize_square(media.frame(fid), size, resize.resample),
                       _frame_recipe(media, spec, fid, size, resize))


def _block_key(media: Any, fid: int, size: int, resize: SquareResize,
               pre: PresizedFrames | None) -> tuple[Any, ...]:
    key = (get_store().serial, *media.frame_key(fid), size, resize.method)
    if pre is None:
        return key
    return (*key, *pre.media.frame_key(pre.media.frame_ids[media.index_of(fid)]))


# Decoding and resizing release the GIL: the frames a run has not seen yet are made side by
# side, so a new clip's first turn waits for its slowest frame rather than for all of them,
# and an RL worker's frame work spreads over the cores the node has beside the event loop
# (the "frames" pool, SEGRESEARCH_FRAME_THREADS).


def _frame_blocks(media: Any, spec: Any, fids: list[int], size: int,
                  pre: PresizedFrames | None = None) -> list[dict[str, Any]]:
    missing = [f for f in fids if not _FRAME_BLOCKS.has(_block_key(media, f, size, FRAME_RESIZE, pre))]
    if len(missing) > 1 and media.kind != "video":  # a video decoder reads one frame at a time
        for _ in thread_pool("frames").map(lambda f: _frame_block(media, spec, f, size, pre=pre), missing):
            pass
    return [_frame_block(media, spec, f, size, pre=pre) for f in fids]


def _emit(runtime: Runtime[Context], event: StreamEvent) -> None:
    """A live progress event for ``stream_mode="custom"`` (a no-op when nobody streams)."""
    runtime.stream_writer(event)


def query_problem(query: Any) -> str | None:
    """Why ``query`` cannot be asked (None when it can): not text, blank, or holding lone
    surrogates. Those are bytes that were not UTF-8 (Python decodes them so from a command
    line or a file) or a caller's broken string; no model request can carry them, and
    guessing what they stood for would ask another question, so the run is refused the
    same way from the CLI and from Python."""
    if not isinstance(query, str):
        return f"the query must be a string, not {type(query).__name__}"
    if not query.strip():
        return "the query is empty; say what to segment"
    bad = next((i for i, ch in enumerate(query) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        return (f"the query is not valid Unicode text (a lone surrogate U+{ord(query[bad]):04X} at "
                f"character {bad + 1}, e.g. bytes that were not UTF-8); decode it as UTF-8 first")
    return None


def load_media(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Open the media, sample the frames and write the first two messages."""
    ctx = runtime.context
    t0 = time.perf_counter()
    query = state.get("query")
    problem = query_problem(query)
    if problem:
        return _fresh_run(_error("input", problem))
    query = query.strip()
    try:
        media_paths(state.get("media"))  # its type; open_media below checks the roots
        used = resolved_context(ctx)  # every file a client named, as checked and as opened
        if ctx.protocol == "tools":  # answers come after a keyframe: its size for pixel grids
            sys_text = tools_system_prompt(
                ctx.use_search, describe_convention(resolved_coord_style(used), ctx.keyframe_size,
                                                    ctx.frame_size),
                used.system_prompt_file, verify=ctx.verify_rounds > 0)
        else:
            sys_text = system_prompt(ctx.use_search, resolved_coord_style(used), used.system_prompt_file)
    except ContextError as e:
        kind = "media" if str(e).startswith("media") else "config"
        return _fresh_run(_error(kind, e))
    except ValueError as e:
        return _fresh_run(_error("config", e))
    if ctx.review and not run_has_checkpointer():
        return _fresh_run(_error("config", "review pauses the run before segmentation, which needs "
                                           "a checkpointer: build_graph(checkpointer=...), the CLI's "
                                           "--db, or the LangGraph server"))
    if ctx.ask_user and ctx.ask_user_reply is None and not run_has_checkpointer():
        return _fresh_run(_error("config", "ask_user pauses the run for the user's reply, which needs "
                                           "a checkpointer: build_graph(checkpointer=...), the CLI, or "
                                           "the LangGraph server; or set ask_user_reply to answer "
                                           "every question without pausing"))
    try:
        spec = state["media"]
        media = open_media(spec)
        shown = sample_frame_ids(media.frame_ids, ctx.num_frames)
        blocks = _frame_blocks(media, spec, shown, ctx.frame_size, _presized_frames(spec, ctx.frame_size))
    except (MediaError, KeyError) as e:
        return _fresh_run(_error("media", e if not isinstance(e, KeyError) else "no media given"))
    info = {
        "source": media.source,
        "kind": media.kind,
        "num_frames": len(media),
        "width": media.width,
        "height": media.height,
    }
    source_size = list(getattr(media, "source_size", (media.width, media.height)))
    if source_size != [media.width, media.height]:
        info["source_size"] = source_size  # decoded smaller than the file (pixel cap)
    if getattr(media, "note", None):
        info["note"] = media.note  # e.g. a truncated video: how many frames really decode
    seconds = round(time.perf_counter() - t0, 4)
    shown_media = MediaEvent(type=MEDIA, **info, frame_ids=shown, seconds=seconds)
    _emit(runtime, shown_media.copy())  # the stream's own dict, apart from the state's
    problem = preflight(used, bool(ctx.output_dir),
                        lambda m: _emit(runtime, StatusEvent(type=STATUS, message=m)),
                        _progress(runtime, "index", Path(str(used.kb or "")).name))
    if problem:
        return _fresh_run(_error("config", problem))
    content: list[dict[str, Any]] = []
    for i, (fid, block) in enumerate(zip(shown, blocks, strict=True)):
        content.append(text_block(("\n" if i else "") + frame_label(fid)))
        content.append(block)
    content.append(text_block("\n\n" + query))
    return _fresh_run({
        "messages": [SystemMessage(content=sys_text), HumanMessage(content=content)],
        "frame_ids": shown,
        "media_info": info,
        "events": [shown_media],
    })


# ---------------------------------------------------------------------- reason


def _model_call(state: State, ctx: Context) -> tuple[Any, list[BaseMessage], dict[str, Any]]:
    model = resolve_model(ctx.model, timeout=ctx.request_timeout)
    budget = ctx.max_new_tokens
    if ctx.max_response_tokens is not None:
        budget = max(1, min(budget, ctx.max_response_tokens - state.get("tokens_used", 0)))
    messages = messages_for(model, state["messages"])  # a provider's class gets data URLs
    if ctx.protocol == "tools":  # the actions as native tools; no stop strings
        runnable, tool_kwargs = _with_tools(model, ctx)
        return runnable, messages, {**tool_kwargs, "max_tokens": budget, "temperature": ctx.temperature}
    kwargs = {"stop": STOP_STRINGS, "max_tokens": budget, "temperature": ctx.temperature}
    return model, messages, kwargs


def _offered_tools(ctx: Context) -> tuple[str, ...]:
    """The tools a reasoning turn may call. With ``verify_rounds`` the run's bound tools
    (``_with_tools``) also hold the verify tools, which only a verify turn reads."""
    return offered_tools(ctx.use_search, ctx.ask_user)


# What ``bind_tools`` gave for a model and a tool set, kept per model object (by id, with a
# weak reference that removes the entry when the model goes: chat models are unhashable),
# since a run binds the same tools on every turn.
_BoundTools = dict[tuple, Any]
_BOUND_TOOL_KWARGS: dict[int, tuple[weakref.ref, _BoundTools]] = {}


def _bound_tools_of(model: Any) -> _BoundTools:
    entry = _BOUND_TOOL_KWARGS.get(id(model))
    if entry is not None and entry[0]() is model:
        return entry[1]
    key = id(model)

    def forget(ref: weakref.ref, table: dict = _BOUND_TOOL_KWARGS) -> None:  # also at exit
        if table.get(key, (None,))[0] is ref:
            del table[key]

    try:
        ref = weakref.ref(model, forget)
    except TypeError:  # a model object that cannot be weakly referenced: bound every turn
        return {}
    per_model: _BoundTools = {}
    _BOUND_TOOL_KWARGS[key] = (ref, per_model)
    return per_model


def _with_tools(model: BaseChatModel, ctx: Context) -> tuple[Any, dict[str, Any]]:
    """What to invoke for ``model`` with the run's tools bound, and the keyword arguments the
    binding adds. The answer tool states the coordinate convention in the same words as the
    system prompt, for the keyframe and the sampled frames alike, so the tools stay the same
    all run (a rollout's tools are fixed by its system turn). With ``verify_rounds`` > 0 the
    set also holds accept_masks and correct_masks, and verify turns bind the same set.

    ``bind_tools`` returns a ``RunnableBinding``; when it only adds keyword arguments (what
    LangChain's chat models and ours do), the model is invoked with them directly, which is
    what the binding's ``invoke`` does, without its per-call config merging (a tenth of the
    graph's cost per turn, ``bench/graph_overhead.py``). Anything else is invoked as bound."""
    key = (resolved_coord_style(ctx), ctx.keyframe_size, ctx.use_search, ctx.frame_size, ctx.ask_user,
           ctx.verify_rounds > 0)
    per_model = _bound_tools_of(model)
    found = per_model.get(key)
    if found is not None:
        return found
    defs = tool_definitions(*key[:5])
    if ctx.verify_rounds > 0:  # positions on the keyframe-size pictures of a verify turn
        defs += verify_tool_definitions(describe_convention(key[0], ctx.keyframe_size))
    try:
        bound = model.bind_tools(defs)
    except NotImplementedError:
        raise ValueError(f"{type(model).__name__} does not support tool calling; use protocol "
                         f"'tags' with this model") from None
    plain = (isinstance(bound, RunnableBinding) and bound.bound is model and not bound.config
             and not bound.config_factories and bound.custom_input_type is None
             and bound.custom_output_type is None)
    found = (model, dict(bound.kwargs)) if plain else (bound, {})
    per_model[key] = found
    return found


def _answer_grid(state: State, ctx: Context) -> CoordFrame:
    """The grid the model answered on: Qwen2.5-VL style answers are absolute pixels of the
    image the model last saw of the frame (the keyframe when it picked one); every other
    convention is kept on the 0-1000 grid once read (``_answered``)."""
    shown = ctx.keyframe_size if state.get("keyframe") is not None else ctx.frame_size
    return CoordFrame.of(resolved_coord_style(ctx), shown)


def _answer(state: State, ctx: Context, action: AnswerAction) -> tuple[dict, dict, list[str]]:
    info = state["media_info"]
    keyframe = state.get("keyframe")
    if keyframe is None and info["num_frames"] == 1:
        keyframe = state["frame_ids"][0]
    coords = _answer_grid(state, ctx)
    box, point, notes = clamp_answer(action, coords.size, coords.size)
    w, h = info["width"], info["height"]
    extra: list[str] = []
    if action.keyframe is not None and action.keyframe != keyframe:  # the answer tool names it
        if action.keyframe in state["frame_ids"]:
            keyframe = action.keyframe
        else:
            extra.append(f"keyframe {action.keyframe} was not shown; frame {keyframe} was used")
    answer = {"keyframe": keyframe, "bbox_2d": box, "point_2d": point}
    answer_px = {"keyframe": keyframe, "bbox_2d": coords.to_px(box, w, h),
                 "point_2d": coords.to_px(point, w, h)}
    return answer, answer_px, list(action.warnings) + notes + extra


def _answered(state: State, ctx: Context, action: AnswerAction, event: ModelEvent) -> dict[str, Any]:
    """The update for a well-formed answer. A zero or degenerate box is still the model's
    answer (DESIGN: the published loop ends it as the model's choice to finish): it is kept
    with ``answer_note`` saying why it outlines nothing, and segmentation writes empty masks.
    An answer naming several objects is read object by object (``_answered_objects``)."""
    if action.objects:
        return _answered_objects(state, ctx, action, event)
    # the model's convention (gemini's y-first, fractions) read once onto the x-first grid
    box, point, _ = to_internal(resolved_coord_style(ctx), action.bbox_2d, action.point_2d)
    action = replace(action, bbox_2d=box, point_2d=point)
    answer, answer_px, notes = _answer(state, ctx, action)
    note = degenerate_box(action, answer["bbox_2d"])
    if notes:
        event["notes"] = notes
    if note:
        event["answer_note"] = note
    return {"answer": answer, "answer_px": answer_px, "answer_note": note, "stop_reason": "answer",
            "objects": [{**answer, "label": None}], "objects_px": [{**answer_px, "label": None}],
            "pending": PendingAnswer(type=ANSWER)}


def _answered_objects(state: State, ctx: Context, action: AnswerAction, event: ModelEvent) -> dict[str, Any]:
    """An answer naming several objects: each converted as a single answer is, on its own
    keyframe (the run's when it names none). An object that outlines nothing (a degenerate
    box, no known frame) is left out, with a note, when another object is usable; when none
    is, all are kept and ``answer_note`` says why the first outlines nothing, as for one."""
    style = resolved_coord_style(ctx)
    notes = list(action.warnings)
    read: list[tuple[dict[str, Any], dict[str, Any], str | None]] = []
    for i, obj in enumerate(action.objects):
        box, point, _ = to_internal(style, obj.bbox_2d, obj.point_2d)
        one = AnswerAction(bbox_2d=box, point_2d=point, keyframe=obj.keyframe)
        answer, answer_px, extra = _answer(state, ctx, one)
        notes += [f"objects[{i}]: {n}" for n in extra]
        why = degenerate_box(one, answer["bbox_2d"])
        if why is None and answer["keyframe"] is None:
            why = "no keyframe, so its frame is unknown"
        read.append(({**answer, "label": obj.label}, {**answer_px, "label": obj.label}, why))
    usable = [r for r in read if r[2] is None]
    if usable and len(usable) < len(read):
        notes += [f"objects[{i}] left out: {why}" for i, (_, _, why) in enumerate(read) if why]
        read = usable
    objects, objects_px = [r[0] for r in read], [r[1] for r in read]
    note = degenerate_box(AnswerAction(bbox_2d=list(action.bbox_2d), point_2d=list(action.point_2d)),
                          objects[0]["bbox_2d"]) if not usable else None
    event["action"]["objects"] = [  # type: ignore[typeddict-unknown-key]
        ActionObject(bbox_2d=_as_written(o.bbox_2d), point_2d=_as_written(o.point_2d), label=o.label,
                     keyframe=o.keyframe) for o in action.objects]
    if notes:
        event["notes"] = notes
    if note:
        event["answer_note"] = note
    return {"answer": _without_label(objects[0]), "answer_px": _without_label(objects_px[0]),
            "answer_note": note, "stop_reason": "answer", "objects": objects, "objects_px": objects_px,
            "pending": PendingAnswer(type=ANSWER)}


def _without_label(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: obj[k] for k in ("keyframe", "bbox_2d", "point_2d")}


def _as_written(vs: list[float]) -> list[float | int]:
    """Numbers as the model wrote them: ints as ints; a huge float stays a float (no
    300-digit int in the state)."""
    return [int(v) if float(v).is_integer() and abs(v) < 2**53 else v for v in vs]


def _after_model(state: State, ctx: Context, msg: BaseMessage, seconds: float) -> dict[str, Any]:
    raw = content_text(msg.content)
    text = clean_text(raw)
    usage = getattr(msg, "usage_metadata", None) or {}
    n_tokens = int(usage.get("output_tokens") or approx_tokens(text))
    finish = (msg.response_metadata or {}).get("finish_reason")
    turns = state.get("turns", 0) + 1
    used = state.get("tokens_used", 0) + n_tokens
    if ctx.protocol == "tools":
        ai = _tool_call_message(msg, text, turns)
        action, _ = parse_tool_calls(ai, _offered_tools(ctx))
        if ctx.verify_rounds > 0:  # the verify tools are bound too, but not callable yet
            action = verify_tool_too_early(action, _offered_tools(ctx))
    else:
        action = parse_action(text)
        ai = msg if isinstance(msg, AIMessage) and msg.content == text and raw == text else AIMessage(
            content=text, response_metadata=msg.response_metadata or {}
        )
    event = ModelEvent(
        type=MODEL, turn=turns, response=text, action=_action_dict(action),
        tokens=n_tokens, finish_reason=finish, seconds=round(seconds, 4),
    )
    update: dict[str, Any] = {"messages": [ai], "turns": turns, "tokens_used": used, "pending": None}
    out_of_tokens = ctx.max_response_tokens is not None and used >= ctx.max_response_tokens
    tools_left = state.get("tool_calls", 0) < ctx.max_turns

    if isinstance(action, AnswerAction):
        update.update(_answered(state, ctx, action, event))
    elif isinstance(action, (SearchAction, KeyframeAction, AskUserAction)):
        if not tools_left:
            update["stop_reason"] = "max_turns"
        elif out_of_tokens:
            update["stop_reason"] = "max_tokens"
        else:
            update["pending"] = _action_dict(action)
    elif finish == "length" or out_of_tokens:
        update["stop_reason"] = "max_tokens"
    elif state.get("feedback_used", 0) < ctx.feedback_retries and tools_left:
        update["pending"] = PendingFeedback(type=FEEDBACK, reason=action.reason)
    else:
        update["stop_reason"] = "no_action"
    update["events"] = [event]
    return update


def _tool_call_message(msg: BaseMessage, text: str, turn: int) -> AIMessage:
    """The model's message as the conversation keeps it in the tools protocol: its text
    cleaned, and its tool calls (valid and invalid, each with an id: the next request must
    carry them and answer every id, so a provider that sent none gets ``call_<turn>_<k>``)."""
    calls = [dict(c) for c in getattr(msg, "tool_calls", None) or []]
    invalid = [dict(c) for c in getattr(msg, "invalid_tool_calls", None) or []]
    for k, c in enumerate(calls + invalid):
        if not c.get("id"):
            c["id"] = f"call_{turn}_{k}"
    keep = {}
    raw_calls = (getattr(msg, "additional_kwargs", None) or {}).get("tool_calls")
    if isinstance(raw_calls, list):  # the order the calls were written in (tool_calls_in_order)
        keep["tool_calls"] = raw_calls
    return AIMessage(content=text, tool_calls=calls, invalid_tool_calls=invalid, additional_kwargs=keep,
                     response_metadata=msg.response_metadata or {}, id=msg.id)


def _last_ai(state: State) -> AIMessage | None:
    return next((m for m in reversed(state.get("messages") or []) if isinstance(m, AIMessage)), None)


def _reply(state: State, runtime: Runtime[Context], text: str, images: list[Any]) -> list[BaseMessage]:
    """The messages that bring a tool's result to the model. Tags: one user turn with the
    text and images. Tools: the result answers the call that was run (its images placed as
    the model's provider takes them, ``image_placement``), and every other call of the turn
    is answered as not run, all before any user message (OpenAI requires that order)."""
    if runtime.context.protocol != "tools":
        return [_observation(text, images)]
    ai = _last_ai(state)
    calls = tool_calls_in_order(ai) if ai is not None else []
    if not calls:  # no call to answer (e.g. a feedback turn's reminder)
        return [_observation(text, images)]
    model = resolve_model(runtime.context.model, timeout=runtime.context.request_timeout)
    blocks = [im if isinstance(im, dict) else media_block(im) for im in images]
    per_model = _bound_tools_of(model)  # where its images go, read once per model object
    placement = per_model.get(("placement",)) or per_model.setdefault(("placement",), image_placement(model))
    obs = tool_observation(str(calls[0]["id"]), text, blocks, placement)
    tool_msgs = [m for m in obs if isinstance(m, ToolMessage)]
    rest = [m for m in obs if not isinstance(m, ToolMessage)]
    return [*tool_msgs, *(not_run_message(c) for c in calls[1:]), *rest]


def _action_dict(action: Any) -> Action:
    if isinstance(action, SearchAction):
        d = ActionSearch(type=SEARCH, name=action.name, query=action.query)
        if action.error:
            d["error"] = action.error
        return d
    if isinstance(action, KeyframeAction):
        return ActionKeyframe(type=KEYFRAME, frame=action.frame, raw=action.raw)
    if isinstance(action, AskUserAction):
        ask = ActionAskUser(type=ASK_USER, question=action.question)
        if action.error:
            ask["error"] = action.error
        return ask
    if isinstance(action, AnswerAction):
        return ActionAnswer(type=ANSWER, bbox_2d=_as_written(action.bbox_2d), point_2d=_as_written(action.point_2d))
    assert isinstance(action, NoAction)
    return ActionNone(type=NONE, reason=action.reason)


def _turn_done(runtime: Runtime[Context], update: dict[str, Any]) -> dict[str, Any]:
    ev = update["events"][0]
    if ev.get("type") == MODEL:
        _emit(runtime, TurnEvent(type=TURN, turn=ev["turn"], action=ev["action"],
                                 tokens=ev["tokens"], seconds=ev["seconds"]))
    return update


def _announce_local(runtime: Runtime[Context], state: State) -> None:
    """A local model generates for seconds to minutes on a CPU: say so while it does."""
    model = runtime.context.model
    if isinstance(model, str) and ModelSpec.parse(model).backend == "hf":
        _emit(runtime, StatusEvent(
            type=STATUS, message=f"turn {state.get('turns', 0) + 1}: the local model is generating"))


def reason(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """One model generation, parsed into the next action."""
    ctx = runtime.context
    _announce_local(runtime, state)
    try:
        model, messages, kwargs = _model_call(state, ctx)
        t0 = time.perf_counter()
        msg = model.invoke(messages, **kwargs)
    except Exception as e:  # noqa: BLE001 - any backend failure ends the run with its reason
        return {**_error("model", e), "turns": state.get("turns", 0)}
    return _turn_done(runtime, _after_model(state, ctx, msg, time.perf_counter() - t0))


async def areason(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    _announce_local(runtime, state)
    try:
        if not model_loaded(ctx.model, timeout=ctx.request_timeout):
            # A first load (weights, a cassette file) must not stall every other run
            # sharing the event loop; LoadOnce makes concurrent first callers wait for one.
            await asyncio.to_thread(resolve_model, ctx.model, timeout=ctx.request_timeout)
        model, messages, kwargs = _model_call(state, ctx)
        t0 = time.perf_counter()
        msg = await model.ainvoke(messages, **kwargs)
    except Exception as e:  # noqa: BLE001
        return {**_error("model", e), "turns": state.get("turns", 0)}
    return _turn_done(runtime, _after_model(state, ctx, msg, time.perf_counter() - t0))


# ----------------------------------------------------------------------- tools


def _search_tools(ctx: Context) -> dict[str, Any]:
    """Tools bound to the run's backend; cached, since every run of a server shares them.
    An unconfigured backend is not cached, so fixing the configuration takes effect."""
    size, timeout = ctx.search_image_size, ctx.search_timeout
    try:  # the knowledge base and cache file where the serving policy checked them
        kb, cache = resolved_field(ctx, "kb"), resolved_field(ctx, "search_cache")
    except ContextError as e:
        return make_search_tools(None, unavailable=str(e))
    if isinstance(ctx.search, SearchBackend):
        backend = ctx.search
    else:
        try:
            backend = get_backend(
                ctx.search, kb, retriever_url=ctx.retriever_url, timeout=timeout,
                allow_private_urls=ctx.allow_private_urls,
            )
        except SearchUnavailable as e:
            return make_search_tools(None, unavailable=str(e))
    if cache and cache.lower() != "off":
        try:
            backend = cached_backend(backend, cache, ctx.search_cache_ttl)
        except SearchCacheError as e:  # preflight says so first; a tool never raises
            return make_search_tools(None, unavailable=str(e))
    return _BOUND_TOOLS.get((backend, ctx.text_topk, ctx.image_topk, size, timeout),
                            lambda: make_search_tools(backend, text_topk=ctx.text_topk,
                                                      image_topk=ctx.image_topk,
                                                      image_size=size, timeout=timeout))


# The tools bound to a backend and a run's settings: made once per combination, as runs
# with the same settings share them.
_BOUND_TOOLS: LoadOnce[dict[str, Any]] = LoadOnce(maxsize=64, name="graph.search_tools")


def search(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Run text_search / image_search and show the result as a user turn."""
    ctx = runtime.context
    action = state["pending"] or {}
    name, query = action.get("name", "text_search"), action.get("query", "")
    t0 = time.perf_counter()
    images: list[Image.Image] = []
    hits = 0
    error = action.get("error")
    if error:
        text = render_search_error(error)
    elif not ctx.use_search or ctx.search_name == "none":
        error = "search is disabled for this run"
        text = render_search_error(error)
    else:
        tools = _search_tools(ctx)
        result = tools[name].invoke(_tool_call(name, {"query": query}))
        text = result.content if isinstance(result.content, str) else content_text(result.content)
        artifact = result.artifact or {}
        images = list(artifact.get("images", []))
        hits = len(artifact.get("hits") or [])
        error = artifact.get("error")
    obs = _reply(state, runtime, text, images)
    seconds = round(time.perf_counter() - t0, 4)
    event = ToolEvent(type=TOOL, name=name, query=query, observation=text,
                      images=len(images), seconds=seconds)
    live = SearchEvent(type=SEARCH, name=name, query=query, backend=ctx.search_name,
                       hits=hits, seconds=seconds)
    if error:
        event["error"] = live["error"] = error
    _emit(runtime, live)
    return {
        "messages": obs,
        "tool_calls": state.get("tool_calls", 0) + 1,
        "searches": [{"name": name, "query": query, "observation": text}],
        "pending": None,
        "events": [event],
    }


def keyframe(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Show the chosen frame at high resolution (or say which ids are valid)."""
    ctx = runtime.context
    frame = (state.get("pending") or {}).get("frame")
    t0 = time.perf_counter()
    try:
        spec = state["media"]
        media = open_media(spec)
        size = ctx.keyframe_size
        # The block is cached like the sampled frames': every sample of an RL group, and
        # every run on the same video, asks for the same keyframes.
        tool = make_keyframe_tool(media, state["frame_ids"], size,
                                  render=lambda f: _frame_block(media, spec, f, size, KEYFRAME_RESIZE))
        args = {"frame": frame if frame is not None else -1}
        result = tool.invoke(_tool_call("keyframe", args))
    except MediaError as e:
        return _error("media", e)
    artifact = result.artifact or {}
    images = artifact.get("images", [])
    obs = _reply(state, runtime, result.content, images)
    _emit(runtime, KeyframeEvent(type=KEYFRAME, frame=frame, valid=bool(artifact.get("valid"))))
    update: dict[str, Any] = {
        "messages": obs,
        "tool_calls": state.get("tool_calls", 0) + 1,
        "pending": None,
        "events": [ToolEvent(type=TOOL, name="keyframe", frame=frame, observation=result.content,
                             images=len(images), valid=bool(artifact.get("valid")),
                             seconds=round(time.perf_counter() - t0, 4))],
    }
    if artifact.get("valid"):
        update["keyframe"] = frame
    return update


def feedback(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Opt-in retry: tell the model what was wrong with its last turn."""
    reason_text = (state.get("pending") or {}).get("reason", "no action")
    if runtime.context.protocol == "tools":  # answers a malformed answer call, if there was one
        text = TOOLS_FEEDBACK_PROMPT.format(reason=reason_text)
        messages = _reply(state, runtime, text, [])
    else:
        text = FEEDBACK_PROMPT.format(reason=reason_text)
        messages = [HumanMessage(content=text)]
    return {
        "messages": messages,
        "feedback_used": state.get("feedback_used", 0) + 1,
        "tool_calls": state.get("tool_calls", 0) + 1,
        "pending": None,
        "events": [FeedbackEvent(type=FEEDBACK, reason=reason_text)],
    }


def _run_dir(state: State, ctx: Context) -> Path | None:
    """Where this run writes, or None: with no ``output_dir`` nothing is written at all.

    A folder a client named is the one the serving policy checked (``resolved_field``). A
    thread's state can be written by clients too, so when served a ``run_dir`` found there
    is used only if it is this run's own folder or lies under the output root (else
    ``PathRefused``)."""
    own = resolve_output(resolved_field(ctx, "output_dir")) if ctx.output_dir else None
    if state.get("run_dir"):
        if not policy_active() or (own is not None and str(own) == state["run_dir"]):
            return Path(state["run_dir"])
        inside = served_output(state["run_dir"])
        if inside is None:
            raise PathRefused("run_dir: the folder in the thread's state is outside the output root")
        return inside
    return own


ENDS_WITHOUT_ANSWER = ("no_action", "max_turns", "max_tokens")


def _progress(runtime: Runtime[Context], step: str, label: str) -> Callable[[int, int], None]:
    """Progress of a long step as ``custom`` stream events (a CLI draws a bar from them,
    a server client a progress line); about 20 events per step, whatever its length."""
    writer = runtime.stream_writer
    last = [-1]

    def report(done: int, total: int) -> None:
        bucket = done * 20 // max(total, 1)
        if bucket != last[0] or done == total:
            last[0] = bucket
            writer(ProgressEvent(type=PROGRESS, step=step, label=label, done=done, total=total))

    return report


def _no_prompt_reason(state: State) -> str:
    if state.get("stop_reason") != "answer":
        return f"the run ended without an answer ({state.get('stop_reason')})"
    if state.get("answer_note"):
        return str(state["answer_note"])
    if (state.get("answer") or {}).get("keyframe") is None:
        return "the answer came without a keyframe, so its frame is unknown"
    return "the answer has no usable box or point"


def segment(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Masks for every frame from the answer, prompted as the published post-segmentation
    does (box, then point, on the keyframe). A run with no usable answer gets empty masks
    for every frame when it has a folder to write them to, as an evaluation scores it."""
    ctx = runtime.context
    answered = state.get("stop_reason") == "answer"
    skip = None
    if not ctx.run_segmentation:
        skip = "segmentation is off for this run"
    elif (state.get("reviewed") or {}).get("decision") == "reject":
        skip = "the reviewer rejected the answer"
    elif (ctx.segmenter or "none").strip().lower() == "none":
        skip = "segmenter is 'none'"
    elif not answered and not (ctx.output_dir or state.get("run_dir")):
        skip = _no_prompt_reason(state)
    elif not (ctx.output_dir or state.get("run_dir")):
        skip = "no output_dir to write masks to"
    if skip:
        return {"events": [SegmentEvent(type=SEGMENT, skipped=skip)]} if answered else {}
    t0 = time.perf_counter()
    ans = state.get("answer") or {}
    try:
        segmenter = get_segmenter(
            ctx.segmenter, sam2_checkpoint=resolved_field(ctx, "sam2_checkpoint"),
            sam2_config=ctx.sam2_config,
            sam2_image_size=ctx.sam2_image_size or None,
        )
        media = open_media(state["media"])
        prompt = None
        edited = (state.get("reviewed") or {}).get("decision") == "edit"
        if answered and edited:  # a reviewer's box and point, already in frame pixels
            px = state["answer_px"]
            prompt = Prompt(px["keyframe"], tuple(float(v) for v in px["bbox_2d"]),  # type: ignore[arg-type]
                            tuple(float(v) for v in px["point_2d"]))  # type: ignore[arg-type]
        elif answered and ans and not state.get("answer_note"):  # a note: nothing outlined
            prompt = prompt_from_answer(ans, media.width, media.height, _answer_grid(state, ctx))
        run_dir = _run_dir(state, ctx)
        assert run_dir is not None
        masks_dir = run_dir / "masks"
        tool = make_segment_tool(media, segmenter, masks_dir,
                                 _progress(runtime, "segment", segmenter.name))
        args: dict[str, Any] = {"keyframe": None}
        objects = _segment_objects(state, ctx, media.width, media.height, prompt)
        if prompt is not None:
            args = {"keyframe": prompt.frame, "bbox_2d": prompt.box, "point_2d": prompt.point}
        if objects is not None:  # several objects, or verify rounds' corrections: tracked together
            args["objects"] = objects
        result = tool.invoke(_tool_call("segment", args))
    except Exception as e:  # noqa: BLE001 - the answer stands; only the masks failed
        err = _error("segment", e)
        err["stop_reason"] = state.get("stop_reason") or "answer"
        if answered:
            err["events"][0]["note"] = "the answer is kept; only segmentation failed"
        return err
    art = result.artifact or {}
    area = art.get("area", {})
    event = SegmentEvent(
        type=SEGMENT, segmenter=segmenter.name, requested=ctx.segmenter,
        frames=len(area), reached=art.get("reached"), summary=result.content,
        prompt=art.get("prompt"), seconds=round(time.perf_counter() - t0, 4),
    )
    if prompt is None:
        event["empty"] = _no_prompt_reason(state)
    else:
        event["keyframe_area"] = area.get(prompt.frame)
    per_object = art.get("objects") or []
    if len(per_object) > 1:
        event["objects"] = [SegmentObject(label=o.get("label"), keyframe_area=o.get("keyframe_area"),
                                          reached=o.get("reached")) for o in per_object]
    dirs = [str(o["dir"]) for o in per_object] if len(per_object) > 1 else None
    return {"masks_dir": str(masks_dir), "run_dir": str(run_dir), "segmenter": segmenter.name,
            "object_masks_dirs": dirs, "events": [event]}


def _segment_objects(state: State, ctx: Context, w: int, h: int,
                     first: Prompt | None) -> list[dict[str, Any]] | None:
    """The segment tool's ``objects`` (frame pixels) when the answer named several objects
    or verify rounds corrected it: each object's answer prompt (the first is ``first``, the
    answer's own or the reviewer's edit) with its corrections in order. None otherwise,
    and when there is nothing to prompt with: the single-object call, exactly as before."""
    objects = state.get("objects") or []
    corrections = state.get("corrections") or []
    if first is None or (len(objects) < 2 and not corrections):
        return None
    grid = _answer_grid(state, ctx)
    px_list = state.get("objects_px") or []
    # a reviewer's edits are in frame pixels: taken as given, not back through the model's
    # grid (which moves a box by up to half a cell; pixels of a Qwen2.5-style answer)
    edited = (state.get("reviewed") or {}).get("decision") == "edit"
    out: list[dict[str, Any]] = []
    for k in range(max(1, len(objects))):
        obj = objects[k] if k < len(objects) else {}
        prompt = first if k == 0 else None if edited else prompt_from_answer(obj, w, h, grid)
        if prompt is None:  # no usable box or point on the grid, or edited: the pixels
            px = px_list[k]
            prompt = Prompt(px["keyframe"], tuple(float(v) for v in px["bbox_2d"]),  # type: ignore[arg-type]
                            tuple(float(v) for v in px["point_2d"]))  # type: ignore[arg-type]
        out.append({
            "keyframe": prompt.frame,
            "bbox_2d": None if prompt.box is None else list(prompt.box),
            "point_2d": None if prompt.point is None else list(prompt.point),
            "label": obj.get("label"),
            "corrections": [{"frame": c["frame"], "points": c["points"], "labels": c["labels"],
                             "box": c.get("box")} for c in corrections if c.get("object") == k],
        })
    return out


# ---------------------------------------------------------------------- verify


def _readable_mask_dirs(dirs: list[Path], run_dir: Path | None) -> list[Path]:
    """The mask folders a verify round reads. A thread's state can be written by clients,
    so when served only this run's own folders are read (``run_dir/masks`` and
    ``run_dir/objects/<k>``, as ``outputs`` draws only from them), never ones the state names
    elsewhere, which would copy another run's or any folder's PNGs into the pictures the
    run keeps (``PathRefused``: the round ends with an error event, the masks stand)."""
    if not policy_active():
        return dirs
    own = {str(run_dir / "masks")} | {str(run_dir / "objects" / str(k)) for k in range(1, len(dirs) + 1)} \
        if run_dir is not None else set()
    if any(str(d) not in own for d in dirs):
        raise PathRefused("masks: a mask folder in the thread's state is not this run's own")
    return dirs


def _verify_dirs(state: State) -> list[Path]:
    """One mask folder per object when the answer named several, else the masks folder."""
    dirs = state.get("object_masks_dirs") or []
    return [Path(d) for d in dirs] if len(dirs) > 1 else [Path(str(state.get("masks_dir")))]


def _verify_reply(ctx: Context, msg: BaseMessage, text: str, turn: int) -> tuple[AIMessage, VerifyReply]:
    if ctx.protocol == "tools":
        ai = _tool_call_message(msg, text, turn)
        return ai, parse_verify_calls(ai)
    return AIMessage(content=text, response_metadata=msg.response_metadata or {}), parse_verify_tags(text)


def _check_correction(reply: VerifyReply, shown: list[int], n_objects: int) -> VerifyReply:
    """A correction must be on a frame that was shown, for an object that exists."""
    if not isinstance(reply, VerifyCorrect):
        return reply
    if reply.frame not in shown:
        return VerifyProblem(f"frame {reply.frame} was not shown; the frames shown are {shown}")
    if reply.object >= n_objects:
        return VerifyProblem(f"object {reply.object + 1} does not exist; the answer has {n_objects}")
    return reply


def _correction_px(ctx: Context, reply: VerifyCorrect, round_: int, w: int, h: int) -> Correction:
    """A correction from the model's convention on the shown picture of its frame (the
    keyframe size, like a keyframe) to original-frame pixels (``CoordFrame.to_px``)."""
    style = resolved_coord_style(ctx)
    grid = CoordFrame.of(style, ctx.keyframe_size)
    points = [grid.to_px(to_internal(style, [0, 0, 0, 0], p)[1], w, h) for p in reply.points]
    box = None if reply.box is None else grid.to_px(to_internal(style, reply.box, [0, 0])[0], w, h)
    return Correction(round=round_, object=reply.object, frame=reply.frame,
                      points=[[float(x), float(y)] for x, y in points], labels=list(reply.labels),
                      box=None if box is None else [float(v) for v in box])


@dataclass
class _VerifyRound:
    """One verify round as its steps fill it in: ``verify`` and ``averify`` share every
    step and differ only in how they wait on the model (and on the pictures)."""

    round_: int
    t0: float
    dirs: list[Path]
    turns: int
    used: int
    width: int = 0
    height: int = 0
    shown: list[int] = field(default_factory=list)
    pictures: list[Any] = field(default_factory=list)
    picture: str | None = None
    new: list[BaseMessage] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    reply: VerifyReply = field(default_factory=lambda: VerifyProblem("no reply"))
    attempts: int = 0

    def done(self) -> dict[str, Any]:
        return {"verify_round": self.round_, "verify_done": True, "pending": None}


def _verify_begin(state: State) -> _VerifyRound:
    return _VerifyRound(round_=state.get("verify_round", 0) + 1, t0=time.perf_counter(),
                        dirs=_verify_dirs(state), turns=state.get("turns", 0),
                        used=state.get("tokens_used", 0))


def _verify_look(state: State, ctx: Context, r: _VerifyRound) -> None:
    """The round's frames and pictures, the sheet saved in the run folder (reads the frames
    and the mask PNGs; raises ``MediaError``, ``OSError`` or ``ValueError``)."""
    run_dir = _run_dir(state, ctx)
    r.dirs = _readable_mask_dirs(r.dirs, run_dir)
    media = open_media(state["media"])
    r.width, r.height = media.width, media.height
    r.shown = verify_frames(media, r.dirs, (state.get("answer_px") or {}).get("keyframe"))
    r.pictures = [verify_picture(media, fid, r.dirs, ctx.keyframe_size) for fid in r.shown]
    r.picture = write_verify_picture(run_dir, r.round_, verify_sheet(r.pictures)) if run_dir else None
    r.pictures = [media_block(p) for p in r.pictures]  # stored here, off the event loop (averify)


def _verify_unseen(r: _VerifyRound, e: BaseException) -> dict[str, Any]:
    """No pictures: the masks stand and verifying ends."""
    return {**r.done(), "events": [ErrorEvent(type=ERROR, kind="output", message=one_line(e),
                                              note="the masks are kept as they were")]}


def _verify_show(state: State, runtime: Runtime[Context], r: _VerifyRound) -> None:
    """Say what the model checks, and the messages that show it the pictures."""
    ctx = runtime.context
    _emit(runtime, StatusEvent(type=STATUS, message=f"verify round {r.round_}: the model checks its masks "
                                                    f"on frames {r.shown}"))
    style_note = describe_convention(resolved_coord_style(ctx), ctx.keyframe_size)
    text = verify_prompt(ctx.protocol, len(r.shown), style_note, len(r.dirs)) + "\n" + "".join(
        f"{frame_label(fid)}<image>\n" for fid in r.shown)
    r.new = list(_reply(state, runtime, text, r.pictures))


def _verify_call(state: State, ctx: Context, r: _VerifyRound) -> tuple[Any, list[BaseMessage], dict[str, Any]]:
    """What a verify turn invokes, on which messages, with which arguments: in tools mode
    the run's model with the run's tools (``_with_tools``: the verify tools are among them
    from the first turn); in tags mode the model stopped after ``</verify>``."""
    model = resolve_model(ctx.model, timeout=ctx.request_timeout)
    budget = ctx.max_new_tokens
    if ctx.max_response_tokens is not None:
        budget = max(1, min(budget, ctx.max_response_tokens - r.used))
    kwargs: dict[str, Any] = {"max_tokens": budget, "temperature": ctx.temperature}
    messages = messages_for(model, [*state.get("messages", []), *r.new])
    if ctx.protocol != "tools":
        return model, messages, {**kwargs, "stop": [VERIFY_STOP]}
    runnable, tool_kwargs = _with_tools(model, ctx)
    return runnable, messages, {**tool_kwargs, **kwargs}


def _verify_failed(r: _VerifyRound, e: BaseException) -> dict[str, Any]:
    """The model call failed: the answer and its masks stand."""
    return {**r.done(), "messages": r.new, "turns": r.turns, "tokens_used": r.used,
            "events": [ErrorEvent(type=ERROR, kind="model", message=one_line(e),
                                  note="verifying ended; the masks are kept as they were")]}


def _verify_read(state: State, runtime: Runtime[Context], r: _VerifyRound, msg: BaseMessage) -> bool:
    """Read one reply into ``r``; True when the round is decided (a readable reply, or the
    second unreadable one), else the reminder is added for another try."""
    ctx = runtime.context
    reply_text = clean_text(content_text(msg.content))
    usage = getattr(msg, "usage_metadata", None) or {}
    r.turns += 1
    r.attempts += 1
    r.used += int(usage.get("output_tokens") or approx_tokens(reply_text))
    ai, reply = _verify_reply(ctx, msg, reply_text, r.turns)
    r.reply = _check_correction(reply, r.shown, len(r.dirs))
    r.new.append(ai)
    r.replies.append(reply_text if ctx.protocol != "tools" else (reply_text + "\n" + _calls_text(ai)).strip())
    if not isinstance(r.reply, VerifyProblem) or r.attempts > 1:
        return True
    template = TOOLS_VERIFY_RETRY_PROMPT if ctx.protocol == "tools" else VERIFY_RETRY_PROMPT
    view = cast(State, {**state, "messages": [*state.get("messages", []), *r.new]})
    r.new += _reply(view, runtime, template.format(reason=r.reply.reason), [])
    return False


def _verify_end(state: State, ctx: Context, r: _VerifyRound) -> dict[str, Any]:
    """The round's update: its event, and a correction in frame pixels that makes the masks
    again; an acceptance or an unreadable reply ends verifying."""
    event = VerifyEvent(type=VERIFY, round=r.round_, frames=r.shown, response="\n\n".join(r.replies),
                        decision="accept", turns=len(r.replies), tokens=r.used - state.get("tokens_used", 0),
                        seconds=round(time.perf_counter() - r.t0, 4))
    if r.picture:
        event["picture"] = r.picture
    update: dict[str, Any] = {**r.done(), "messages": r.new, "turns": r.turns, "tokens_used": r.used}
    if isinstance(r.reply, VerifyCorrect):
        corr = _correction_px(ctx, r.reply, r.round_, r.width, r.height)
        event["decision"], event["correction"] = "correct", corr
        update["verify_done"] = False
        update["corrections"] = [dict(corr)]
    elif isinstance(r.reply, VerifyProblem):
        event["note"] = (f"the reply could not be read twice ({r.reply.reason}); taken as an "
                         f"acceptance, the masks are kept")
    update["events"] = [event]
    return update


def verify(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """One verify round (``Context.verify_rounds``): show the model the keyframe and the
    frames where its masks change most, masks drawn, and read its reply. An acceptance ends
    verifying; a correction (points and/or a box on a shown frame, converted to frame
    pixels) is appended to ``corrections`` and the masks are made again. A reply that
    cannot be read gets one reminder; a second unreadable reply is taken as an acceptance
    with a ``note`` saying so (the masks stay as they are). The pictures are saved in the
    run folder as ``verify_round_<r>.jpg``; the turns count in ``turns`` and tokens.
    ``averify`` is the same round for async callers."""
    ctx = runtime.context
    r = _verify_begin(state)
    try:
        _verify_look(state, ctx, r)
    except (MediaError, OSError, ValueError) as e:
        return _verify_unseen(r, e)
    _verify_show(state, runtime, r)
    while True:
        try:
            model, messages, kwargs = _verify_call(state, ctx, r)
            msg = model.invoke(messages, **kwargs)
        except Exception as e:  # noqa: BLE001 - the answer and its masks stand
            return _verify_failed(r, e)
        if _verify_read(state, runtime, r, msg):
            return _verify_end(state, ctx, r)


async def averify(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """``verify`` awaiting the model, with the first model load and the pictures (frames and
    mask PNGs read from disk) in a thread, so no other run on the event loop waits on them."""
    ctx = runtime.context
    r = _verify_begin(state)
    try:
        await asyncio.to_thread(_verify_look, state, ctx, r)
    except (MediaError, OSError, ValueError) as e:
        return _verify_unseen(r, e)
    try:
        if not model_loaded(ctx.model, timeout=ctx.request_timeout):  # as areason
            await asyncio.to_thread(resolve_model, ctx.model, timeout=ctx.request_timeout)
    except Exception as e:  # noqa: BLE001
        return _verify_failed(r, e)
    _verify_show(state, runtime, r)
    while True:
        try:
            model, messages, kwargs = _verify_call(state, ctx, r)
            msg = await model.ainvoke(messages, **kwargs)
        except Exception as e:  # noqa: BLE001 - the answer and its masks stand
            return _verify_failed(r, e)
        if _verify_read(state, runtime, r, msg):
            return _verify_end(state, ctx, r)


def _calls_text(ai: AIMessage) -> str:
    """A tools-mode reply's calls as text for the trajectory (name and JSON arguments)."""
    return "\n".join(f"{c['name']}({json.dumps(c.get('args'), ensure_ascii=False)})"
                     for c in tool_calls_in_order(ai))


REVIEW_HELP = review_rules.HELP


def _ask_reviewer(runtime: Runtime[Context], payload: ReviewRequest) -> Any:
    """``interrupt`` that also tells a streaming client why it asks again. LangGraph replays
    the node from its start on every resume, so earlier refusals come back through here too;
    only the pause that really happens (the one that raises) is announced, once."""
    try:
        return interrupt(payload)
    except GraphInterrupt:
        if payload.get("problem"):
            _emit(runtime, ReviewRefusedEvent(type=REVIEW, decision="refused",
                                              problem=payload["problem"], how=payload["how"]))
        raise


def _model_coords(state: State, ctx: Context, edited: dict[str, Any], w: int, h: int) -> dict[str, Any]:
    """An edit back in the coordinates the model answered in (the answer a report shows)."""
    coords = _answer_grid(state, ctx)
    return {"keyframe": edited["keyframe"], "bbox_2d": coords.from_px(edited["bbox_2d"], w, h),
            "point_2d": coords.from_px(edited["point_2d"], w, h)}


def _review_picture(media: Any, objects_px: list[dict[str, Any]]) -> Image.Image:
    """The answer as the reviewer sees it: its keyframe with the box and point (one object,
    as always), or every object in its colour (``OBJECT_COLOURS``) tagged with the number a
    reply names it by and its label; objects on several keyframes make one panel each, side
    by side. Each panel is at most 1024 px on its long side."""
    panels: list[Image.Image] = []
    for fid in dict.fromkeys(o["keyframe"] for o in objects_px):
        frame = media.frame(fid)
        scale = min(1.0, 1024 / max(frame.size))
        shown = frame.resize((round(frame.width * scale), round(frame.height * scale)))
        if len(objects_px) == 1:
            o = objects_px[0]
            panels.append(draw_answer(shown, [v * scale for v in o["bbox_2d"]],
                                      [v * scale for v in o["point_2d"]], None, f"frame {fid}"))
            continue
        drawn = [DrawnObject(box=[v * scale for v in o["bbox_2d"]], point=[v * scale for v in o["point_2d"]],
                             name=f"{k}" + (f" {o['label']}" if o.get("label") else ""),
                             colour=OBJECT_COLOURS[k % len(OBJECT_COLOURS)],
                             box_colour=OBJECT_COLOURS[k % len(OBJECT_COLOURS)])
                 for k, o in enumerate(objects_px) if o["keyframe"] == fid]
        rgb = np.asarray(shown.convert("RGB"), dtype=np.uint8)
        panels.append(Image.fromarray(annotate_objects(rgb, drawn, f"frame {fid}")))
    return panels[0] if len(panels) == 1 else side_by_side(panels, gap=0, background=(0, 0, 0))


def _reviewed_objects(state: State, ctx: Context, got: review_rules.Reply, objects_px: list[dict[str, Any]],
                      w: int, h: int) -> dict[str, Any]:
    """The update for a reply that edited or dropped objects: both object lists, the answer
    (the first object left) and ``reviewed`` saying what changed, so that ``segment`` prompts
    with exactly the reviewed objects."""
    objects = list(state.get("objects") or [{**(state.get("answer") or {}), "label": None}])
    edits = {c["object"]: c["answer_px"] for c in got.changes if c["decision"] == "edit"}
    drops = {c["object"] for c in got.changes if c["decision"] == "drop"}
    kept = [{**_model_coords(state, ctx, edits[k], w, h), "label": objects[k].get("label")} if k in edits
            else objects[k] for k in range(len(objects)) if k not in drops]
    reviewed: dict[str, Any] = {"decision": got.decision, "original": state.get("answer_px"),
                                "changes": got.changes}
    if len(objects_px) > 1:
        reviewed["original_objects_px"] = objects_px
    events = [ReviewEvent(type=REVIEW, decision=c["decision"], object=c["object"],
                          **({"answer_px": c["answer_px"]} if c["decision"] == "edit" else {}))  # type: ignore[typeddict-item]
              for c in got.changes]
    return {"answer_px": got.answer_px, "answer": _without_label(kept[0]), "objects": kept,
            "objects_px": got.objects_px, "reviewed": reviewed, "events": events}


def review(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Pause before segmentation (``Context.review``) so that a person accepts, edits or
    rejects the answer; the reply arrives through ``Command(resume=...)``. The payload says
    what the model answered, in both coordinate systems, with a picture of it, and the frame
    size and ids a reply is checked against; an answer naming several objects lists them
    (``objects``, ``objects_px``), and a reply may edit or drop any one of them, or several
    at once. A reply that is refused (see ``segresearch.agents.review``) pauses again with a
    ``problem`` saying why, and a ``custom`` stream event ``{"type": "review", "decision":
    "refused"}``: the thread keeps waiting, and nothing is segmented from a guess at what the
    reviewer meant. After an edit or a drop, ``answer``/``answer_px`` and the object lists are
    the reviewed ones and ``reviewed["changes"]`` lists each change."""
    px = state.get("answer_px") or {}
    objects_px = [o for o in state.get("objects_px") or [] if isinstance(o, dict)]
    if len(objects_px) < 2:
        objects_px = [{**px, "label": None}]
    try:
        media = open_media(state["media"])
        image_ref = media_block(_review_picture(media, objects_px))["image_url"]["url"]
    except (MediaError, KeyError, TypeError):
        return {"reviewed": {"decision": "accept", "note": "nothing to review"}}
    frames = review_rules.describe_frames(media.frame_ids)
    has_frame = set(media.frame_ids).__contains__  # the node always checks the keyframe
    several = len(objects_px) > 1
    problem = ""
    while True:
        payload = ReviewRequest(type=REVIEW, query=state.get("query"), answer=state.get("answer"),
                                answer_px=px, image=image_ref, frame_size=[media.width, media.height],
                                how=REVIEW_HELP + (review_rules.OBJECTS_HELP if several else ""))
        if several:
            payload["objects"] = state.get("objects") or []  # type: ignore[typeddict-item]
            payload["objects_px"] = objects_px  # type: ignore[typeddict-item]
        if frames is not None:
            payload["frame_ids"] = frames
        if problem:
            payload["problem"] = problem
        # the function the server's guard resolves a reply with (segresearch.agents.review)
        got = review_rules.read_pause_reply(payload, _ask_reviewer(runtime, payload), has_frame)
        assert got is not None  # the payload is the node's own: it always has what is needed
        if got.decision in ("accept", "reject"):
            return {"reviewed": {"decision": got.decision},
                    "events": [ReviewEvent(type=REVIEW, decision=got.decision)]}
        if got.decision in ("edit", "drop") and got.objects_px:
            return _reviewed_objects(state, runtime.context, got, objects_px, media.width, media.height)
        problem = "; ".join(got.problems)


def ask_user(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The model's question to the user (``Context.ask_user``, tools protocol). With
    ``ask_user_reply`` set every question gets that text at once (an evaluation: nobody is
    there); else the run pauses with an ``AskUserRequest`` and the reply arrives through
    ``Command(resume=...)``: text, or ``{"reply": text}``. A reply that is refused
    (``segresearch.agents.ask_user``, the rules the server's guard applies too) pauses again
    with a ``problem``. The reply is the tool's result for the model; a malformed call (an
    empty question) is answered with its error and nobody is asked. Either way it counts as
    a tool call against ``max_turns``."""
    ctx = runtime.context
    action = state.get("pending") or {}
    question = str(action.get("question") or "")
    t0 = time.perf_counter()
    done: dict[str, Any] = {"tool_calls": state.get("tool_calls", 0) + 1, "pending": None}
    if action.get("error"):
        text = f"Error: {action['error']}"
        return {**done, "messages": _reply(state, runtime, text, []),
                "events": [ToolEvent(type=TOOL, name="ask_user", observation=text, images=0,
                                     error=str(action["error"]), seconds=round(time.perf_counter() - t0, 4))]}
    auto = ctx.ask_user_reply is not None
    reply = str(ctx.ask_user_reply) if auto else ""
    problem = ""
    while not auto:
        payload = AskUserRequest(type=ASK_USER, question=question, how=ask_rules.HOW)
        if problem:
            payload["problem"] = problem
        got = ask_rules.read_answer(interrupt(payload))
        if got.reply is not None:
            reply = got.reply
            break
        problem = "; ".join(got.problems)
    return {**done, "messages": _reply(state, runtime, reply, []),
            "questions": [{"question": question, "reply": reply, "auto": auto}],
            "events": [AskUserEvent(type=ASK_USER, question=question, reply=reply, auto=auto,
                                    seconds=round(time.perf_counter() - t0, 4))]}


def finish(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write trajectory.json and the annotated keyframe (when there is somewhere to write)."""
    ctx = runtime.context
    update: dict[str, Any] = {"pending": None}
    if not state.get("stop_reason"):
        update["stop_reason"] = "no_action"
    if state.get("turns") is None:
        update["turns"] = 0
    try:
        run_dir = _run_dir(state, ctx)
        if run_dir is not None:
            problems = write_outputs(run_dir, {**state, **update}, ctx)
            update["run_dir"] = str(run_dir)
            if problems:  # pictures that could not be made; the record itself was written
                update["events"] = [ErrorEvent(type=ERROR, kind="output", message=p)
                                    for p in problems]
    except (OSError, ValueError) as e:  # ValueError: a folder the policy refused (PathRefused)
        update["events"] = [ErrorEvent(type=ERROR, kind="output", message=str(e))]
    final = {**state, **update}
    last = FinalEvent(type=FINAL, stop_reason=final.get("stop_reason"),
                      answer=final.get("answer"), answer_px=final.get("answer_px"),
                      answer_note=final.get("answer_note"),
                      masks_dir=final.get("masks_dir"), turns=final.get("turns"),
                      error=final.get("error"))
    if len(final.get("objects_px") or []) > 1:
        last["objects_px"] = final["objects_px"]
    _emit(runtime, last)
    return update

