"""Running the graph over an evaluation set: one prediction row per query.

Queries run concurrently on one event loop (``graph.ainvoke``: model calls are awaited,
not parked on threads), spread round-robin over several model endpoints when given, and
each finished row is appended to the predictions file at once, so a killed evaluation
loses at most the queries in flight. Segmentation is not done here: like the published
pipeline, masks come afterwards from the saved outputs (``postseg``), grouped by video.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from tqdm import tqdm

from segresearch.agents.content import content_text
from segresearch.agents.context import Context
from segresearch.core.media import MediaError, open_media
from segresearch.core.tool_protocol import tool_calls_in_order
from segresearch.core.tool_text import render_tool_call
from segresearch.eval.datasets import Query, safe_name
from segresearch.eval.predictions import PredictionLog, first_keyframe
from segresearch.graphs.seg_research import graph
from segresearch.tools.segmenters.prompting import prompt_from_output

# What an evaluation runs: a model spec string (``segresearch.agents.model_spec``) or a
# chat model made in Python.
ModelChoice = str | BaseChatModel


def _calls_text(msg: Any) -> str:
    """A tools-mode turn's calls, in the order written, as the Qwen chat templates render
    them (``<tool_call>`` JSON): the transcript then shows what the model asked for. They
    hold no ``<keyframe>``/``<answer>`` tag, so the published reading finds no answer in
    them; a tools-mode row is segmented from its structured ``answer`` instead."""
    calls = tool_calls_in_order(msg) if isinstance(msg, AIMessage) else []
    return "\n".join(render_tool_call(c["name"], c.get("raw", "") if c["args"] is None
                                       else json.dumps(c["args"], ensure_ascii=False)) for c in calls)


def output_text(messages: Sequence[Any]) -> str:
    """Everything after the prompt, as the published dump's ``output``: the model's turns
    and the observations between them (images as ``<image>``); a tool-calling turn's calls
    follow its text."""
    parts = []
    for m in list(messages)[2:]:
        text = content_text(m.content, image_marker="<image>")
        calls = _calls_text(m)
        parts.append(f"{text}\n{calls}" if text and calls else text or calls)
    return "\n".join(parts)


def model_label(spec: ModelChoice) -> str:
    return spec if isinstance(spec, str) else type(spec).__name__


def _row(q: Query, spec: ModelChoice, seconds: float, **fields: Any) -> dict[str, Any]:
    """A prediction row: the published dump's fields first, then ours."""
    row: dict[str, Any] = {"id": q.id, "data_source": q.data_source, "video_path": q.segment_media,
                           "output": "", "ability": q.ability, "question": q.question,
                           "stop_reason": None, "error": None, "answer": None, "answer_px": None,
                           "turns": 0, "num_search": 0, "searches": []}
    row.update(fields)
    row["model"] = model_label(spec)
    row["seconds"] = round(seconds, 3)
    return row


def row_from_state(q: Query, final: dict[str, Any], spec: ModelChoice, seconds: float,
                   media_size: tuple[int, int] | None = None,
                   video_frame_ids: Sequence[int] | None = None,
                   protocol: str = "tags") -> dict[str, Any]:
    """The prediction row of one finished graph run (no image bytes). ``video_frame_ids``:
    every frame of the segmented video, which the saved output's keyframe number indexes.

    ``protocol`` is recorded in the row: a ``tags`` row is segmented from its output text by
    the published rule, a ``tools`` row (whose text has no tags) from its ``answer``, the
    graph's structured answer (``postseg.job_from_row``), and from its ``objects`` (every
    object, each with its keyframe) when the answer names several; a tags row's objects are
    read again from its text."""
    output = output_text(final.get("messages") or [])
    answer = final.get("answer")
    graph_key = None if not answer else answer.get("keyframe")
    searches = final.get("searches") or []
    row = _row(
        q, spec, seconds, output=output, protocol=protocol, stop_reason=final.get("stop_reason"),
        error=final.get("error"), answer=answer, answer_px=final.get("answer_px"),
        turns=final.get("turns", 0), num_search=len(searches),
        searches=[{"name": s.get("name"), "query": s.get("query")} for s in searches],
        frame_ids=final.get("frame_ids"), first_keyframe=first_keyframe(output),
        graph_keyframe=graph_key, run_dir=final.get("run_dir"),
    )
    objects = final.get("objects") or []
    if len(objects) > 1:  # an answer naming several objects: each, on the evaluation's grid
        row["objects"] = [{k: o.get(k) for k in ("keyframe", "bbox_2d", "point_2d", "label")}
                          for o in objects]
    if final.get("questions"):  # ask_user exchanges (only rows of runs that asked carry them)
        row["questions"] = [{"question": x.get("question"), "reply": x.get("reply")}
                            for x in final["questions"]]
    # the first-keyframe rule reads tags; a tools row is segmented from the graph's answer
    if answer is not None and q.kind == "video" and media_size is not None and protocol != "tools":
        w, h = media_size
        ids = video_frame_ids if video_frame_ids is not None else final.get("frame_ids") or []
        parsed = prompt_from_output(output, ids, w, h)
        # The saved output is segmented by the FIRST keyframe tag, read as a frame position;
        # the graph answered on the LAST keyframe it showed, a frame name. Count where that
        # (or strict JSON) changes the prompt.
        row["rule_differs"] = parsed.prompt is None or parsed.prompt.frame != graph_key
    return row


def error_row(q: Query, spec: ModelChoice, exc: BaseException, seconds: float) -> dict[str, Any]:
    msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return _row(q, spec, seconds, stop_reason="error:eval", error=msg)


def uses_search(q: Query) -> bool:
    """Whether the query's run may search: the in-video (no-search) questions never do, as
    in the published evaluation."""
    return q.ability != "in-video"


# The Context fields query_context sets for every query, whatever the shared settings say.
PER_QUERY_FIELDS = ("model", "run_segmentation", "output_dir")
# What an evaluation answers the model's ask_user questions with when no reply is set: nobody
# is there to answer, and a run must never pause (``--ask-user-reply`` changes it).
EVAL_ASK_USER_REPLY = "no further information"


def eval_reply(ctx: Context) -> str:
    """The fixed reply an evaluation gives to every ask_user question."""
    return EVAL_ASK_USER_REPLY if ctx.ask_user_reply is None else ctx.ask_user_reply


def query_context(base: Context, q: Query, spec: ModelChoice, runs_dir: Path | None) -> Context:
    """The run's Context: the shared settings, this query's model, no segmentation (masks
    come later from the saved output), no search for the in-video (no-search) questions as
    in the published evaluation, a run folder per query when trajectories are kept, and
    the evaluation's fixed reply to any question the model asks (it never pauses)."""
    changes: dict[str, Any] = {"model": spec, "run_segmentation": False, "ask_user_reply": eval_reply(base),
                               "output_dir": str(runs_dir / safe_name(q.id)) if runs_dir else ""}
    if not uses_search(q):
        changes["search"] = "none"
    return replace(base, **changes)


async def predict_queries(
    queries: Sequence[Query],
    base: Context,
    specs: Sequence[ModelChoice],
    log: PredictionLog,
    *,
    concurrency: int = 8,
    runs_dir: Path | None = None,
    offset: int = 0,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every query, append its row as soon as it finishes, return the rows in query
    order. ``offset`` shifts the round-robin so shards spread over endpoints too."""
    if not specs:
        raise ValueError("no model given")
    sem = asyncio.Semaphore(max(1, concurrency))
    rows: dict[str, dict[str, Any]] = {}

    async def one(i: int, q: Query) -> None:
        spec = specs[(offset + i) % len(specs)]
        async with sem:
            t0 = time.perf_counter()
            try:
                ctx = query_context(base, q, spec, runs_dir)
                final = await graph.ainvoke({"query": q.question, "media": q.media}, context=ctx)
                size, ids = None, None
                try:
                    m = open_media(q.segment_media)
                    size, ids = (m.width, m.height), m.frame_ids
                except MediaError:
                    pass
                row = row_from_state(q, final, spec, time.perf_counter() - t0, size, ids, ctx.protocol)
            except Exception as e:  # noqa: BLE001 - one broken query must not stop the set
                row = error_row(q, spec, e, time.perf_counter() - t0)
        await asyncio.to_thread(log.append, row)
        rows[q.id] = row
        if on_row is not None:
            on_row(row)

    await asyncio.gather(*(one(i, q) for i, q in enumerate(queries)))
    return [rows[q.id] for q in queries]


def run_predictions(
    queries: Sequence[Query],
    base: Context,
    specs: Sequence[ModelChoice],
    log: PredictionLog,
    *,
    concurrency: int = 8,
    runs_dir: Path | None = None,
    progress: bool = True,
    desc: str = "predict",
) -> list[dict[str, Any]]:
    """:func:`predict_queries` with a progress bar (rate, ETA, stop reasons so far)."""
    counts: Counter[str] = Counter()
    with tqdm(total=len(queries), desc=desc, unit="query", disable=not progress,
              dynamic_ncols=True) as bar:

        def tick(row: dict[str, Any]) -> None:
            counts[str(row.get("stop_reason"))] += 1
            bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in counts.most_common(4)), refresh=False)
            bar.update(1)

        return asyncio.run(predict_queries(queries, base, specs, log, concurrency=concurrency,
                                           runs_dir=runs_dir, on_row=tick))
