"""The native tool-calling protocol beside the published tags (``Context.protocol="tools"``).

A general chat model (a hosted API, Qwen3-VL-Instruct on vLLM) is handed the graph's
actions as tools with JSON-schema arguments instead of being taught the tags. The names and
argument names are the ones the published tags' JSON uses, so one vocabulary serves both:
``text_search(query)``, ``image_search(query)``, ``keyframe(index)`` and
``answer(keyframe, bbox_2d, point_2d)``; later extensions may add optional fields, never
rename these.

The model's tool calls are read into the same ``Action`` objects the tag parser returns
(``segresearch.core.protocol``), so routing, budgets, events and stop reasons are the tags'
ones. Each outcome mirrors the tag parser's treatment of the same mistake:

* no tool call at all → ``NoAction`` (a format reminder when ``feedback_retries`` allows,
  else stop reason ``no_action``), as a turn without a tag;
* a search call with bad JSON arguments, a missing or non-text ``query`` → ``SearchAction``
  with ``error`` (the model reads the error as the tool's result), as a malformed
  ``<search>``;
* a call of a tool that does not exist → ``SearchAction`` with an ``error`` naming the
  tools, as ``<search>{"name": "other"}`` does;
* a keyframe call whose ``index`` is missing or no integer → ``KeyframeAction(frame=None)``
  (the model is told which frame ids exist), as ``<keyframe> x </keyframe>``;
* an answer call with bad JSON or an unusable box or point → ``NoAction`` with the reason, as
  a malformed ``<answer>``; a missing point is the box centre (with a warning), as in tags;
  an answer's optional ``objects`` list (several targets) is read element by element with
  the same rules, one unusable element refusing the whole answer with its index, as a tag
  ``<answer>`` holding a list of objects is;
* an ``ask_user`` call (offered only with ``Context.ask_user``) → ``AskUserAction``; an
  empty or missing ``question`` or bad JSON → ``AskUserAction`` with ``error`` (the model
  reads the error as the tool's result and nobody is asked), as a malformed search;
* several calls in one turn → the first one is run (one action per turn, as the first
  complete tag wins); every other call is answered with a ToolMessage saying it was not
  run, since OpenAI and Anthropic refuse a request with an unanswered tool call.

Like ``parse_action`` this never raises on model output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field

from segresearch.core.coords import describe_convention
from segresearch.core.protocol import (
    SEARCH_TOOLS,
    Action,
    AnswerAction,
    KeyframeAction,
    NoAction,
    SearchAction,
    answer_objects,
    clean_text,
    clean_value,
    loads_lenient,
    parse_answer_json,
)
from segresearch.core.shared_cache import LoadOnce

ANSWER_TOOL = "answer"
KEYFRAME_TOOL = "keyframe"
ASK_USER_TOOL = "ask_user"
TOOL_NAMES = (*SEARCH_TOOLS, KEYFRAME_TOOL, ANSWER_TOOL)
NOT_RUN = "Not run: only the first tool call of a turn is run. Call one tool per turn."
IMAGES_FOLLOW = "The images returned by the last tool call:"

ImagePlacement = Literal["after", "inside"]


# ------------------------------------------------------------------ the schemas


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSearchArgs(_Args):
    """Search the knowledge base or the web for text passages."""

    query: str = Field(description="What to look up, in words, e.g. '2031 Tessellate Cup winner'.")


class ImageSearchArgs(_Args):
    """Find a picture of a named person, object or logo."""

    query: str = Field(description="The name of what to see, e.g. 'Cobalt Squares emblem'.")


class KeyframeArgs(_Args):
    """Show one of the sampled frames at high resolution."""

    index: int = Field(description="The id of one of the frames you were shown (its label 'frame <id>').")


class AnswerObjectArgs(_Args):
    """One of several targets."""

    keyframe: int | None = Field(default=None, description="The id of the frame this object's box and "
                                                            "point are on (default: the answer's keyframe).")
    bbox_2d: Annotated[list[float], Field(min_length=4, max_length=4)] = Field(
        description="A tight box around this object."
    )
    point_2d: Annotated[list[float], Field(min_length=2, max_length=2)] = Field(
        description="One point that lies on this object."
    )
    label: str | None = Field(default=None, description="A short name for this object, e.g. 'left dog'.")


class AnswerArgs(_Args):
    """The final answer: where the target is in the keyframe."""

    keyframe: int = Field(description="The id of the frame the box and point are on (the keyframe you picked).")
    # Still required in the schema (a single-object answer is as published); a call that
    # gives ``objects`` is read without them.
    bbox_2d: Annotated[list[float], Field(min_length=4, max_length=4)] = Field(
        description="A tight box around the target."
    )
    point_2d: Annotated[list[float], Field(min_length=2, max_length=2)] = Field(
        description="One point that lies on the target."
    )
    objects: list[AnswerObjectArgs] | None = Field(
        default=None, description="Only when the query refers to several objects: every one of them, "
                                  "in order (bbox_2d and point_2d then repeat the first one).")


class AskUserArgs(_Args):
    """Ask the user a question."""

    question: str = Field(description="One short question the user can answer in words.")


ARG_MODELS: dict[str, type[_Args]] = {
    "text_search": TextSearchArgs,
    "image_search": ImageSearchArgs,
    KEYFRAME_TOOL: KeyframeArgs,
    ANSWER_TOOL: AnswerArgs,
    ASK_USER_TOOL: AskUserArgs,
}

_DESCRIPTIONS = {
    "text_search": "Search the knowledge base or the web. Returns short text passages with their "
                   "titles. Use it for facts the frames do not show (who someone is, who won, what "
                   "a thing is called).",
    "image_search": "Find a picture of a named person, object or logo, to recognise it in the frames. "
                    "Returns the best matching image with its name.",
    KEYFRAME_TOOL: "Show one of the sampled frames again at a higher resolution: pick the frame where "
                   "the target is easiest to see. Call it before answering.",
    ANSWER_TOOL: "Give the final answer and end the task: a tight box around the target in the "
                 "keyframe and one point on the target. When the query refers to several objects, "
                 "list each of them in objects (its box, point, optional keyframe and label) instead.",
    ASK_USER_TOOL: "Ask the user one short question when the query is ambiguous and neither the "
                   "frames nor a search can settle it (which of several objects is meant, a name "
                   "you cannot resolve). Returns the user's reply. Do not ask what you can find out.",
}


@dataclass(frozen=True)
class AskUserAction:
    """A question for the user; ``error`` when the call was malformed (nobody is asked)."""

    question: str
    error: str | None = None


# The JSON of each (convention, size, search) combination, made once: every turn binds it.
_DEFINITIONS: LoadOnce[str] = LoadOnce(maxsize=64, name="tools.definitions")


def _definitions(coord_style: str, shown_size: int, use_search: bool, frame_size: int | None,
                 ask_user: bool = False) -> str:
    return _DEFINITIONS.get((coord_style, shown_size, use_search, frame_size, ask_user),
                            lambda: _make_definitions(coord_style, shown_size, use_search, frame_size,
                                                      ask_user))


def offered_tools(use_search: bool, ask_user: bool = False) -> tuple[str, ...]:
    """The names of the tools a run offers, in the order they are bound."""
    names = TOOL_NAMES if use_search else (KEYFRAME_TOOL, ANSWER_TOOL)
    return (*names, ASK_USER_TOOL) if ask_user else names


def _make_definitions(coord_style: str, shown_size: int, use_search: bool, frame_size: int | None,
                      ask_user: bool = False) -> str:
    names = offered_tools(use_search, ask_user)
    out = []
    for name in names:
        params = _plain_schema(ARG_MODELS[name].model_json_schema())
        params.pop("description", None)
        description = _DESCRIPTIONS[name]
        if name == ANSWER_TOOL:
            description += " " + describe_convention(coord_style, shown_size, frame_size)
        out.append({"type": "function",
                    "function": {"name": name, "description": description, "parameters": params}})
    return json.dumps(out)  # kept as text: every caller gets its own copy to change


def _plain_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic schema as every provider takes it: nested models inlined (no ``$defs`` or
    ``$ref``), no titles, and an optional field (``X | None = None``) written as plain
    ``X`` left out of ``required`` rather than ``anyOf`` with null."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
        out = {k: walk(v) for k, v in node.items() if k not in ("title", "$defs")}
        alts = out.get("anyOf")
        if isinstance(alts, list) and {"type": "null"} in alts and len(alts) == 2:
            out.pop("anyOf")
            out = {**next(a for a in alts if a != {"type": "null"}), **out}
        if "default" in out and out["default"] is None:
            out.pop("default")
        return out

    return walk(schema)


def tool_definitions(coord_style: str, shown_size: int, use_search: bool,
                     frame_size: int | None = None, ask_user: bool = False) -> list[dict[str, Any]]:
    """The tools as OpenAI-style function dicts (what ``bind_tools`` accepts and a chat
    template's ``tools=`` renders); without the search tools when ``use_search`` is off. The
    answer tool's description states the coordinate convention for ``coord_style`` on an
    image of ``shown_size`` pixels a side (and, with ``frame_size``, on the sampled frames:
    ``describe_convention``); ``ask_user`` adds the ask_user tool last."""
    return list(json.loads(_definitions(coord_style, int(shown_size), bool(use_search),
                                        None if frame_size is None else int(frame_size), bool(ask_user))))


# ------------------------------------------------------------------ reading calls


def tool_calls_in_order(msg: AIMessage) -> list[dict[str, Any]]:
    """Every call of ``msg``, well-formed or not, in the order the model wrote them, each as
    ``{"name", "id", "args"}`` (``args`` a dict) or ``{"name", "id", "args": None, "error"}``
    for arguments that were not a JSON object (LangChain's ``invalid_tool_calls``).
    LangChain keeps the two kinds in separate lists; the provider's raw list, when the
    message still has it, gives their original order."""
    calls: list[dict[str, Any]] = []
    for c in getattr(msg, "tool_calls", None) or []:
        calls.append({"name": c.get("name") or "", "id": c.get("id"), "args": c.get("args")})
    for c in getattr(msg, "invalid_tool_calls", None) or []:
        raw = c.get("args")
        calls.append({"name": c.get("name") or "", "id": c.get("id"), "args": None,
                      "error": c.get("error") or "the arguments are not valid JSON",
                      "raw": raw if isinstance(raw, str) else ""})
    raw_list = (getattr(msg, "additional_kwargs", None) or {}).get("tool_calls")
    if isinstance(raw_list, list) and len(calls) > 1:
        order = {c.get("id"): i for i, c in enumerate(raw_list) if isinstance(c, dict)}
        calls.sort(key=lambda c: order.get(c["id"], len(order)))
    return calls


def parse_tool_calls(msg: AIMessage, tools: Sequence[str] = TOOL_NAMES
                     ) -> tuple[Action | AskUserAction, list[dict[str, Any]]]:
    """The action of the turn (the first call, read as the tag parser reads the same tag)
    and the calls that were not run. ``tools`` are the names offered this run, named in the
    error an unknown tool gets."""
    calls = tool_calls_in_order(msg)
    if not calls:
        return NoAction(reason="the reply called no tool"), []
    return _action(calls[0], tools), calls[1:]


def _action(call: dict[str, Any], tools: Sequence[str]) -> Action | AskUserAction:
    name = clean_text(str(call.get("name") or "")).strip()
    args = call.get("args")
    bad_json = args is None or not isinstance(args, dict)
    if not bad_json:
        try:
            args = clean_value(args)
        except RecursionError:
            bad_json = True
    if name in SEARCH_TOOLS:
        if bad_json:
            return SearchAction(name=name, query="",
                                error=f'{name} arguments are not a JSON object; write {{"query": "..."}}')
        query = args.get("query")
        if not isinstance(query, str):
            return SearchAction(name=name, query="", error=f'{name} needs a "query" string')
        if not query.strip():
            return SearchAction(name=name, query="", error="empty search query")
        return SearchAction(name=name, query=query.strip())
    if name == KEYFRAME_TOOL:
        if bad_json:
            return KeyframeAction(frame=None, raw=str(call.get("raw") or "")[:50])
        return _keyframe(args)
    if name == ANSWER_TOOL:
        if bad_json:
            return NoAction(reason="answer arguments are not valid JSON")
        return _answer(args)
    if name == ASK_USER_TOOL and name in tools:  # not offered: an unknown tool, as before
        if bad_json:
            return AskUserAction(question="", error='ask_user arguments are not a JSON object; '
                                                    'write {"question": "..."}')
        question = args.get("question")
        if not isinstance(question, str):
            return AskUserAction(question="", error='ask_user needs a "question" string')
        if not question.strip():
            return AskUserAction(question="", error="empty question: nobody was asked")
        return AskUserAction(question=question.strip())
    listed = ", ".join(tools)
    return SearchAction(name=name or "?", query="",
                        error=f"unknown tool {name!r}; the tools are {listed}")


def _frame_id(value: Any) -> int | None:
    """An integer frame id as a model may write it: 13, 13.0, "13", "frame 13"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("frame").strip()
        try:
            f = float(text)
        except ValueError:
            return None
        return int(f) if math.isfinite(f) and f.is_integer() else None
    return None


def _keyframe(args: dict[str, Any]) -> KeyframeAction:
    value = args.get("index", args.get("frame"))
    frame = _frame_id(value)
    raw = value if isinstance(value, str) else json.dumps(value)
    return KeyframeAction(frame=frame, raw=raw.strip()[:50])


def _answer(args: dict[str, Any]) -> AnswerAction | NoAction:
    """The tag parser's reading of the same JSON (``<answer>``), plus the keyframe; with
    ``objects``, every object read so, each on its own keyframe or the answer's."""
    items = args.get("objects")
    if items is not None and not isinstance(items, list):
        return NoAction(reason="invalid answer: objects must be a list of objects")
    if items:
        frame = None
        if "keyframe" in args:
            frame = _frame_id(args["keyframe"])
            if frame is None:
                return NoAction(reason="invalid answer: keyframe must be a frame id (an integer)")
        return _answer_objects(items, frame, "keyframe" in args)
    parsed = _one_object(args)
    if isinstance(parsed, NoAction):
        return parsed
    warnings = list(parsed.warnings)
    frame = None
    if "keyframe" in args:
        frame = _frame_id(args["keyframe"])
        if frame is None:
            return NoAction(reason="invalid answer: keyframe must be a frame id (an integer)")
    else:
        warnings.append("no keyframe: the frame last shown at high resolution was used")
    return AnswerAction(bbox_2d=parsed.bbox_2d, point_2d=parsed.point_2d, warnings=warnings,
                        keyframe=frame)


def _one_object(args: dict[str, Any]) -> AnswerAction | NoAction:
    obj = {k: args[k] for k in ("bbox_2d", "point_2d", "bbox", "point") if k in args}
    try:
        body = json.dumps(obj)
    except (TypeError, ValueError):
        return NoAction(reason="answer arguments are not valid JSON")
    # The tag parser's rules (numbers, swapped corners, a missing point) apply unchanged.
    return parse_answer_json(body)


def _answer_objects(items: list[Any], frame: int | None, named: bool) -> AnswerAction | NoAction:
    """The ``objects`` list: each element read as a single answer is (the same outcomes),
    the whole answer refused naming the first element that cannot be used."""
    keyframes: list[int | None] = []
    readable: list[Any] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):  # answer_objects reads the rest, naming the index
            return answer_objects(items)
        own = frame
        if item.get("keyframe") is not None:
            own = _frame_id(item["keyframe"])
            if own is None:
                return NoAction(reason=f"invalid answer: objects[{i}]: keyframe must be a frame id "
                                       "(an integer)")
        keyframes.append(own)
        readable.append({k: item[k] for k in ("bbox_2d", "point_2d", "bbox", "point", "label") if k in item})
    got = answer_objects(readable, keyframes)  # the same reading again, with the labels
    if isinstance(got, NoAction) or named:
        return got
    unnamed = [i for i, k in enumerate(keyframes) if k is None]
    if not unnamed:
        return got
    note = "no keyframe: the frame last shown at high resolution was used"
    if not got.objects:
        return replace(got, warnings=[*got.warnings, note])
    return replace(got, warnings=[*got.warnings, *(f"objects[{i}]: {note}" for i in unnamed)])


def loads_arguments(raw: str) -> dict[str, Any] | None:
    """Arguments written as a JSON string (a recorded or raw provider call): a dict, or
    None when they are not a JSON object."""
    try:
        value = loads_lenient(raw) if raw.strip() else {}
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------ observations


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def interleave_images(text: str, image_blocks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text and images in one content list (a tool result here, a tags-mode observation in
    the graph): each ``<image>`` placeholder of ``text`` is followed by its image (or, when
    the counts differ, the images follow the text)."""
    parts = text.split("<image>")
    blocks: list[dict[str, Any]] = []
    if len(parts) - 1 == len(image_blocks):
        for i, part in enumerate(parts):
            if part:
                blocks.append(_text(part))
            if i < len(image_blocks):
                blocks.append(dict(image_blocks[i]))
        return blocks
    return [_text(text), *(dict(b) for b in image_blocks)]


def tool_observation(call_id: str, text: str, image_blocks: Sequence[dict[str, Any]],
                     placement: ImagePlacement) -> list[BaseMessage]:
    """A tool's result as the messages that answer call ``call_id``.

    ``"inside"``: one ToolMessage whose content holds the text and the image blocks (Anthropic,
    Qwen-VL's template). ``"after"``: a text-only ToolMessage, then a user message with the
    images (OpenAI's chat completions take images only from users); each ``<image>`` of the
    text becomes ``[image N]`` in the tool result and labels its picture in the user message,
    so the model can tell which image belongs to which result."""
    if not image_blocks:
        return [ToolMessage(content=text, tool_call_id=call_id)]
    if placement == "inside":
        return [ToolMessage(content=interleave_images(text, image_blocks), tool_call_id=call_id)]
    parts = text.split("<image>")
    if len(parts) - 1 == len(image_blocks):
        labelled = "".join(p + (f"[image {i + 1}]" if i < len(image_blocks) else "")
                           for i, p in enumerate(parts))
    else:
        labelled = text + " " + " ".join(f"[image {i + 1}]" for i in range(len(image_blocks)))
    content: list[dict[str, Any]] = [_text(IMAGES_FOLLOW)]
    for i, block in enumerate(image_blocks):
        content += [_text(f"\n[image {i + 1}]"), dict(block)]
    return [ToolMessage(content=labelled, tool_call_id=call_id), HumanMessage(content=content)]


def not_run_message(call: dict[str, Any]) -> ToolMessage:
    """The answer to a call that was not run (every call id must be answered)."""
    return ToolMessage(content=NOT_RUN, tool_call_id=str(call.get("id") or ""))


__all__ = [
    "ANSWER_TOOL", "ARG_MODELS", "ASK_USER_TOOL", "IMAGES_FOLLOW", "KEYFRAME_TOOL", "NOT_RUN", "TOOL_NAMES",
    "AnswerArgs", "AskUserAction", "AskUserArgs", "ImageSearchArgs", "KeyframeArgs", "TextSearchArgs", "loads_arguments",
    "not_run_message", "offered_tools", "parse_tool_calls", "tool_calls_in_order", "tool_definitions", "tool_observation",
]
