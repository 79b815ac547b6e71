"""The state of one Seg-ReSearch run.

Input is a query and media; the output keys are public API (the final-state keys of the
README's "Quick start in Python": users' code reads them). Lists that grow every turn use
append reducers, so a node returns only what it adds.
"""

from __future__ import annotations

from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import NotRequired, TypedDict

from segresearch.core.events import START, Pending, TrajectoryEvent


def run_log(old: list[TrajectoryEvent] | None, new: list[TrajectoryEvent] | None) -> list[TrajectoryEvent]:
    """Append entries; an entry of type "start" begins a new run, so a thread invoked again
    (checkpointer, LangGraph server) does not carry the previous run's log."""
    if new and isinstance(new[0], dict) and new[0].get("type") == START:
        return list(new)
    return [*(old or []), *(new or [])]


def search_log(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Append searches; ``None`` clears the list at the start of a run."""
    if new is None:
        return []
    return [*(old or []), *new]


class InputState(TypedDict):
    query: str
    media: str | list[str]


class OutputState(TypedDict, total=False):
    answer: dict[str, Any] | None  # {"keyframe", "bbox_2d", "point_2d"}, model coordinates
    answer_px: dict[str, Any] | None  # the same in original-frame pixels
    # Every object of the answer, each {"keyframe", "bbox_2d", "point_2d", "label"}, in model
    # coordinates (a one-object answer is a one-element list; ``answer`` is the first without
    # its label); None when the run has no answer. ``objects_px``: the same in frame pixels.
    objects: list[dict[str, Any]] | None
    objects_px: list[dict[str, Any]] | None
    # one mask folder per object (run_dir/objects/1..n) when the answer named 2+ objects;
    # ``masks_dir`` is then their union (what an evaluation and the reward score)
    object_masks_dirs: list[str] | None
    # Why a well-formed answer outlines nothing, e.g. "degenerate box [0, 0, 0, 0]: all zeros
    # (the model found nothing)"; None otherwise. Such a run still ends "answer" (the published
    # loop's "model chose to finish") and gets empty masks; the one key added to DESIGN's list.
    answer_note: str | None
    masks_dir: str | None
    stop_reason: str  # answer | no_action | max_turns | max_tokens | error:<kind>
    error: str | None
    turns: int  # model generations
    searches: Annotated[list[dict[str, Any]], search_log]  # {"name", "query", "observation"}
    messages: Annotated[list[AnyMessage], add_messages]
    frame_ids: list[int]  # the sampled frames shown to the model
    events: Annotated[list[TrajectoryEvent], run_log]  # the trajectory, one entry per step
    run_dir: str | None
    segmenter: str | None  # the segmenter that wrote masks_dir (what "auto" resolved to)
    reviewed: dict[str, Any] | None  # a reviewer's decision (Context.review): accept|edit|reject
    # verify-round corrections in original-frame pixels {"round", "object", "frame", "points",
    # "labels", "box"} (Context.verify_rounds): made by verify, read by segment; cleared at run start
    corrections: Annotated[list[dict[str, Any]], search_log]
    # ask_user exchanges {"question", "reply", "auto"} (Context.ask_user); cleared at run start
    questions: Annotated[list[dict[str, Any]], search_log]


class State(InputState, OutputState):
    media_info: NotRequired[dict[str, Any]]  # kind, size, frame count of the source
    tool_calls: NotRequired[int]  # tool actions executed so far
    tokens_used: NotRequired[int]  # generated tokens so far
    keyframe: NotRequired[int | None]  # last keyframe shown
    pending: NotRequired[Pending | None]  # the parsed action awaiting its node
    feedback_used: NotRequired[int]
    verify_round: NotRequired[int]  # verify rounds done (Context.verify_rounds)
    verify_done: NotRequired[bool]  # the model accepted its masks (or verifying ended)
