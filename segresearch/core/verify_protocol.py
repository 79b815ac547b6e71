"""How the model answers a verify round (``Context.verify_rounds``): accept its masks, or
correct them with labelled points and/or a box on one frame it was shown.

Two forms, one reading:

* tags: ``<verify>{"accept": true}</verify>`` or
  ``<verify>{"frame": 12, "points": [[x, y], ...], "labels": [1, 0, ...], "box": [x1, y1, x2, y2],
  "object": 1}</verify>`` (``box`` and ``object`` optional; ``object`` is the 1-based number of
  the object drawn on the pictures, needed only when several were named). The tag is read
  only in a verify step; the published ``parse_action`` never sees it, so nothing the
  published model says changes meaning.
* tools: ``accept_masks()`` and ``correct_masks(frame, points, labels, box?, object?)``. With
  ``verify_rounds`` > 0 they are among the run's tools from the first turn, since a rollout's
  (and a chat template's) tools are fixed by its system turn: a verify turn binds that same
  set. A call of a verify tool in a reasoning turn is answered as an unknown tool is, saying
  it is not available yet (:func:`verify_tool_too_early`); a call of a reasoning tool in a
  verify turn is an unreadable reply (:func:`parse_verify_calls`).

Positions are in the model's coordinate convention on the picture of ``frame`` it was shown
(the convention sentence of the run, for the keyframe-size image); the graph converts them to
frame pixels. Like the tag parser, reading never raises on model output: a reply that is not
one of the two forms is a :class:`VerifyProblem` whose ``reason`` is told to the model once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from langchain_core.messages import AIMessage
from pydantic import BaseModel, ConfigDict, Field

from segresearch.core.protocol import SearchAction, clean_value, loads_lenient
from segresearch.core.tool_protocol import ARG_MODELS, tool_calls_in_order

VERIFY_TAG = "verify"
VERIFY_STOP = "</verify>"
ACCEPT_TOOL = "accept_masks"
CORRECT_TOOL = "correct_masks"
VERIFY_TOOLS = (ACCEPT_TOOL, CORRECT_TOOL)
MAX_POINTS = 16

_TAG_RE = re.compile(r"<verify>(.*?)</verify>", re.DOTALL)


@dataclass(frozen=True)
class VerifyAccept:
    """The model keeps its masks."""


@dataclass(frozen=True)
class VerifyCorrect:
    """A correction in the model's convention: ``points`` (x, y as written), ``labels`` (1 on
    the object, 0 off it), ``box`` or None, on frame ``frame``, for object ``object``
    (0-based; the model writes it 1-based)."""

    frame: int
    points: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: list[float] | None = None
    object: int = 0


@dataclass(frozen=True)
class VerifyProblem:
    """A reply that is neither form, and why."""

    reason: str


VerifyReply = VerifyAccept | VerifyCorrect | VerifyProblem


# ------------------------------------------------------------------ the tools


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AcceptMasksArgs(_Args):
    """Keep the masks as they are."""


class CorrectMasksArgs(_Args):
    """Correct the masks on one of the frames you were shown."""

    frame: int = Field(description="The id of the frame the points and box are on (its label 'frame <id>').")
    points: Annotated[list[Annotated[list[float], Field(min_length=2, max_length=2)]],
                      Field(max_length=MAX_POINTS)] = Field(
        default_factory=list, description="Points [[x, y], ...] on that frame.")
    labels: Annotated[list[int], Field(max_length=MAX_POINTS)] = Field(
        default_factory=list,
        description="One label per point: 1 where the target is (the mask missed it), 0 where it "
                    "is not (the mask covers it wrongly).")
    box: Annotated[list[float], Field(min_length=4, max_length=4)] | None = Field(
        default=None, description="Optional: a tight box [x1, y1, x2, y2] around the target on that frame.")
    object: int | None = Field(
        default=None, description="Which object to correct, by the number drawn beside it (only "
                                  "when the answer named several objects).")


_TOOL_DESCRIPTIONS = {
    ACCEPT_TOOL: "Accept the masks: they cover the target on the frames shown.",
    CORRECT_TOOL: "Correct the masks on one frame you were shown: points on the target the mask "
                  "missed (label 1), points the mask covers wrongly (label 0), and/or a tight box "
                  "around the target. The masks are then made again from your answer plus this "
                  "correction and shown to you again.",
}


def verify_tool_definitions(coord_note: str) -> list[dict[str, Any]]:
    """The two tools of a verify turn as OpenAI-style function dicts; the correction tool's
    description ends with the run's coordinate sentence (positions on the frame shown)."""
    out = []
    for name, model in ((ACCEPT_TOOL, AcceptMasksArgs), (CORRECT_TOOL, CorrectMasksArgs)):
        params = model.model_json_schema()
        params.pop("title", None)
        params.pop("description", None)
        for prop in params.get("properties", {}).values():
            prop.pop("title", None)
        description = _TOOL_DESCRIPTIONS[name]
        if name == CORRECT_TOOL:
            description += " " + coord_note
        out.append({"type": "function",
                    "function": {"name": name, "description": description, "parameters": params}})
    return out


# ------------------------------------------------------------------ reading


def parse_verify_tags(text: str) -> VerifyReply:
    """The first ``<verify>`` tag of a tags-mode reply."""
    found = _TAG_RE.search(text or "")
    if found is None:
        return VerifyProblem("the reply has no <verify>...</verify> tag")
    try:
        value = loads_lenient(found.group(1))
    except ValueError:
        return VerifyProblem("the <verify> tag does not hold a JSON object")
    return read_verify_json(value)


def parse_verify_calls(msg: AIMessage) -> VerifyReply:
    """The first tool call of a tools-mode reply."""
    calls = tool_calls_in_order(msg)
    if not calls:
        return VerifyProblem("the reply called no tool")
    call = calls[0]
    name = str(call.get("name") or "")
    if name == ACCEPT_TOOL:
        return VerifyAccept()
    if name in ARG_MODELS:  # a reasoning tool: the run offers it, but not in a verify turn
        return VerifyProblem(f"{name} cannot be called while you check the masks; call "
                             f"{ACCEPT_TOOL} or {CORRECT_TOOL}")
    if name != CORRECT_TOOL:
        return VerifyProblem(f"unknown tool {name!r}; call {ACCEPT_TOOL} or {CORRECT_TOOL}")
    args = call.get("args")
    if not isinstance(args, dict):
        return VerifyProblem(f"{CORRECT_TOOL} arguments are not a JSON object")
    return _correction({k: v for k, v in args.items() if k != "accept"})


def verify_tool_too_early(action: Any, offered: Sequence[str]) -> Any:
    """A reasoning turn's action (``parse_tool_calls``) in a run whose tools include the
    verify tools: a verify tool's call, read there as an unknown tool (a ``SearchAction``
    whose ``error`` the model reads as the call's result), says it is not available yet and
    names the ``offered`` tools; any other action is returned as it is."""
    if isinstance(action, SearchAction) and action.error and action.name in VERIFY_TOOLS:
        return replace(action, error=f"{action.name} is not available yet: it is for checking "
                                     f"your masks after the answer; the tools now are "
                                     f"{', '.join(offered)}")
    return action


def read_verify_json(value: Any) -> VerifyReply:
    """``{"accept": true}`` or a correction object, as the tag holds it."""
    if not isinstance(value, dict):
        return VerifyProblem("the <verify> JSON must be an object")
    try:
        value = clean_value(value)
    except RecursionError:
        return VerifyProblem("the <verify> JSON is nested too deeply")
    if value.get("accept") is True and "frame" not in value:
        return VerifyAccept()
    if "frame" not in value:
        return VerifyProblem('write {"accept": true} or a correction with "frame", "points", '
                             '"labels" and/or "box"')
    return _correction({k: v for k, v in value.items() if k != "accept"})


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _int(v: Any) -> int | None:
    n = _number(v)
    if n is None and isinstance(v, str):
        try:
            n = float(v.strip().lower().removeprefix("frame").strip())
        except ValueError:
            return None
    return int(n) if n is not None and math.isfinite(n) and n.is_integer() else None


def _correction(args: dict[str, Any]) -> VerifyReply:
    unknown = sorted(set(args) - {"frame", "points", "labels", "box", "object"})
    if unknown:
        return VerifyProblem(f"unknown correction keys {unknown}")
    frame = _int(args.get("frame"))
    if frame is None:
        return VerifyProblem("frame must be the id of a frame you were shown (an integer)")
    raw_points = args.get("points") or []
    raw_labels = args.get("labels") or []
    if not isinstance(raw_points, list) or not isinstance(raw_labels, list):
        return VerifyProblem("points must be a list of [x, y] and labels a list of 1 or 0")
    if len(raw_points) > MAX_POINTS:
        return VerifyProblem(f"at most {MAX_POINTS} points")
    points: list[list[float]] = []
    for p in raw_points:
        xy = [_number(v) for v in p] if isinstance(p, list) and len(p) == 2 else [None]
        if any(v is None for v in xy):
            return VerifyProblem("each point must be [x, y], two numbers")
        points.append([float(v) for v in xy if v is not None])
    labels = [_int(v) for v in raw_labels]
    if len(labels) != len(points) or any(v not in (0, 1) for v in labels):
        return VerifyProblem("labels must give 1 or 0 for each point, one per point")
    box = None
    if args.get("box") is not None:
        raw_box = args["box"]
        vals = [_number(v) for v in raw_box] if isinstance(raw_box, list) and len(raw_box) == 4 else [None]
        if any(v is None for v in vals):
            return VerifyProblem("box must be [x1, y1, x2, y2], four numbers")
        x1, y1, x2, y2 = (float(v) for v in vals if v is not None)
        box = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    if not points and box is None:
        return VerifyProblem("a correction needs points (with labels) or a box")
    obj = 1 if args.get("object") is None else _int(args.get("object"))
    if obj is None or obj < 1:
        return VerifyProblem("object must be the number of an object drawn (1, 2, ...)")
    return VerifyCorrect(frame=frame, points=points, labels=[int(v) for v in labels if v is not None],
                         box=box, object=obj - 1)


def verify_json(reply: VerifyReply) -> str:
    """A reply as the tag's JSON (what a trajectory shows for a tool call)."""
    if isinstance(reply, VerifyAccept):
        return json.dumps({"accept": True})
    if isinstance(reply, VerifyCorrect):
        out: dict[str, Any] = {"frame": reply.frame, "points": reply.points, "labels": reply.labels}
        if reply.box is not None:
            out["box"] = reply.box
        out["object"] = reply.object + 1
        return json.dumps(out)
    return ""


__all__ = [
    "ACCEPT_TOOL", "CORRECT_TOOL", "VERIFY_STOP", "VERIFY_TOOLS", "VerifyAccept", "VerifyCorrect",
    "VerifyProblem", "VerifyReply", "parse_verify_calls", "parse_verify_tags", "read_verify_json",
    "verify_json", "verify_tool_definitions", "verify_tool_too_early",
]
