"""The tag protocol between the policy and the graph.

One assistant turn is parsed into at most one action. Models trained with RL write the
tags reliably but not perfectly (single-quoted JSON, trailing commas, floats, stray text,
more than one tag), so parsing is lenient wherever the intent is unambiguous and returns a
``NoAction`` with the reason otherwise; it never raises on model output. Observations are
rendered in exactly the formats the published models were trained on.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

SEARCH_TOOLS = ("text_search", "image_search")
STOP_STRINGS = ["</search>", "</keyframe>"]
SNIPPET_CHARS = 320
MAX_JSON_CHARS = 4000
MAX_OBJECTS = 16  # objects one answer may name (each is tracked: memory grows with them)
MAX_LABEL_CHARS = 80

_TAGS = ("search", "keyframe", "answer")
_INT_RE = re.compile(r"^\s*(?:frame\s*)?(-?\d+(?:\.0*)?)\s*$", re.IGNORECASE)
_TRAILING_COMMA_RE = re.compile(r",\s*([\]}])")
_FENCE_RE = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclass(frozen=True)
class SearchAction:
    name: str
    query: str
    error: str | None = None  # set when the call is malformed: the graph replies with it
    kind: Literal["search"] = "search"


@dataclass(frozen=True)
class KeyframeAction:
    frame: int | None
    raw: str = ""
    kind: Literal["keyframe"] = "keyframe"


@dataclass(frozen=True)
class AnswerObject:
    """One object of an answer that names several: its box and point as read (the same
    rules as a single answer's), its ``label`` when the model named it, and its frame when
    the call names one (the tools protocol; None: the answer's keyframe)."""

    bbox_2d: list[float]
    point_2d: list[float]
    label: str | None = None
    keyframe: int | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AnswerAction:
    bbox_2d: list[float]
    point_2d: list[float]
    warnings: list[str] = field(default_factory=list)
    kind: Literal["answer"] = "answer"
    # the frame the answer is on, when the call names it (the ``answer`` tool of the tools
    # protocol); a tag answer is about the keyframe last shown, so it stays None there
    keyframe: int | None = None
    # every object when the answer names two or more (the first is also ``bbox_2d`` and
    # ``point_2d`` above); empty for a single-object answer, which reads exactly as before
    objects: tuple[AnswerObject, ...] = ()


@dataclass(frozen=True)
class NoAction:
    reason: str
    kind: Literal["none"] = "none"


Action = SearchAction | KeyframeAction | AnswerAction | NoAction


def loads_lenient(text: str) -> Any:
    """Parse JSON as a model may write it: code fences, single quotes, trailing commas,
    text around the object. Raises ValueError when nothing sensible is there. Strings in the
    result are cleaned (``clean_value``): a ``"\\ud800"`` or ``"\\u0000"`` escape is plain
    ASCII in the model's text and becomes a lone surrogate or a NUL only here."""
    value = _loads_lenient(text)
    try:
        return clean_value(value)
    except RecursionError:  # json.loads nests as deep as the stack allows; the walk may not
        raise ValueError("nested too deeply") from None


def _loads_lenient(text: str) -> Any:
    s = _FENCE_RE.sub("", text.strip())
    if len(s) > MAX_JSON_CHARS:
        raise ValueError(f"longer than {MAX_JSON_CHARS} characters")
    candidates = [s]
    start, end = s.find("{"), s.rfind("}")
    if 0 <= start < end and (start, end) != (0, len(s) - 1):
        candidates.append(s[start : end + 1])
    for c in candidates:
        for variant in (c, _TRAILING_COMMA_RE.sub(r"\1", c)):
            try:
                return json.loads(variant)
            except (json.JSONDecodeError, RecursionError):
                pass
        try:  # Python-literal style: single quotes, trailing commas, True/False
            return ast.literal_eval(c)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    raise ValueError("not a JSON object")


def _numbers(value: Any, n: int, what: str) -> list[float]:
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]  # [[x1, y1, x2, y2]]
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"{what} must be a list of {n} numbers")
    out = []
    for v in value:
        if isinstance(v, bool):
            raise ValueError(f"{what} must hold numbers")
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int beyond float range
            raise ValueError(f"{what} must hold numbers") from None
        if not math.isfinite(f):
            raise ValueError(f"{what} must hold finite numbers")
        out.append(f)
    return out


def _parse_search(body: str) -> SearchAction:
    stripped = body.strip()
    if not stripped:
        return SearchAction(name="text_search", query="", error="empty search")
    if "{" not in stripped:  # <search>plain query</search>: clearly a text search
        return SearchAction(name="text_search", query=stripped)
    try:
        obj = loads_lenient(stripped)
    except ValueError:
        return SearchAction(
            name="text_search",
            query="",
            error='search call is not valid JSON; write {"name": "text_search", "query": "..."}',
        )
    if not isinstance(obj, dict):
        return SearchAction(name="text_search", query="", error="search call must be a JSON object")
    raw_args = obj.get("arguments")
    args: dict[str, Any] = raw_args if isinstance(raw_args, dict) else obj
    name = str(obj.get("name", "text_search")).strip()
    query = args.get("query", args.get("q", ""))
    query = query.strip() if isinstance(query, str) else ""
    if name not in SEARCH_TOOLS:
        return SearchAction(
            name=name, query=query, error=f"unknown tool {name!r}; use text_search or image_search"
        )
    if not query:
        return SearchAction(name=name, query="", error="empty search query")
    return SearchAction(name=name, query=query)


def _parse_keyframe(body: str) -> KeyframeAction:
    m = _INT_RE.match(body)
    if not m:
        return KeyframeAction(frame=None, raw=body.strip()[:50])
    try:
        frame = int(float(m.group(1)))
    except OverflowError:  # more digits than a float holds: no frame has that id
        return KeyframeAction(frame=None, raw=body.strip()[:50])
    return KeyframeAction(frame=frame, raw=body.strip())


def parse_answer_json(body: str) -> AnswerAction | NoAction:
    """The body of an ``<answer>`` tag (or a tool call's arguments as JSON) read by the
    tag protocol's rules: lenient JSON, four box numbers, corners put in order, a missing
    point replaced by the box centre with a warning; ``NoAction`` with the reason otherwise."""
    return _parse_answer(body)


def _parse_answer(body: str) -> AnswerAction | NoAction:
    try:
        obj = loads_lenient(body)
    except ValueError as e:
        return NoAction(reason=f"answer is not valid JSON ({e})")
    if isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], dict):
        obj = obj[0]
    if isinstance(obj, list) and len(obj) > 1:  # several objects (the published parser refuses a list)
        return answer_objects(obj)
    if not isinstance(obj, dict):
        return NoAction(reason="answer must be a JSON object with bbox_2d and point_2d")
    got = _read_object(obj)
    return NoAction(reason=f"invalid answer: {got}") if isinstance(got, str) else got


def _read_object(obj: dict[str, Any]) -> AnswerAction | str:
    """One answer object read by the tag rules; the problem as text when it is unusable."""
    warnings: list[str] = []
    try:
        box = _numbers(obj.get("bbox_2d", obj.get("bbox")), 4, "bbox_2d")
    except ValueError as e:
        return str(e)
    x1, y1, x2, y2 = box
    if x1 > x2 or y1 > y2:
        box = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
        warnings.append("box corners were swapped")
    point_raw = obj.get("point_2d", obj.get("point"))
    if point_raw is None:
        point = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
        warnings.append("no point_2d: the box centre was used")
    else:
        try:
            point = _numbers(point_raw, 2, "point_2d")
        except ValueError as e:
            return str(e)
    return AnswerAction(bbox_2d=box, point_2d=point, warnings=warnings)


def read_label(value: Any) -> str | None:
    """An object's ``label`` as text (None when absent or blank); a number is taken as
    written, anything else is refused with ValueError. Long labels are cut."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("label must be text")
    text = " ".join(str(value).split())
    if len(text) > MAX_LABEL_CHARS:
        text = text[: MAX_LABEL_CHARS - 1] + "…"
    return text or None


def answer_objects(items: list[Any], keyframes: list[int | None] | None = None) -> AnswerAction | NoAction:
    """An answer naming every object of ``items`` (parsed JSON: each a dict with
    ``bbox_2d``, ``point_2d`` and an optional ``label``), each read by the single answer's
    rules; one unusable element makes the whole answer ``NoAction`` naming its index.
    ``keyframes`` (aligned with ``items``) are the objects' frames when the caller read
    them. The first object is also the answer's ``bbox_2d``/``point_2d``/``keyframe``."""
    if not items:
        return NoAction(reason="answer must be a JSON object with bbox_2d and point_2d")
    if len(items) > MAX_OBJECTS:
        return NoAction(reason=f"invalid answer: at most {MAX_OBJECTS} objects, not {len(items)}")
    objects: list[AnswerObject] = []
    warnings: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return NoAction(reason=f"invalid answer: objects[{i}] must be a JSON object with bbox_2d "
                                   "and point_2d")
        got = _read_object(item)
        if isinstance(got, str):
            return NoAction(reason=f"invalid answer: objects[{i}]: {got}")
        try:
            label = read_label(item.get("label"))
        except ValueError as e:
            return NoAction(reason=f"invalid answer: objects[{i}]: {e}")
        frame = keyframes[i] if keyframes is not None else None
        objects.append(AnswerObject(bbox_2d=got.bbox_2d, point_2d=got.point_2d, label=label,
                                    keyframe=frame, warnings=got.warnings))
        warnings += [f"objects[{i}]: {w}" for w in got.warnings]
    first = objects[0]
    if len(objects) == 1:
        return AnswerAction(bbox_2d=first.bbox_2d, point_2d=first.point_2d, warnings=first.warnings,
                            keyframe=first.keyframe)
    return AnswerAction(bbox_2d=first.bbox_2d, point_2d=first.point_2d, warnings=warnings,
                        keyframe=first.keyframe, objects=tuple(objects))


def _first_element(text: str) -> tuple[str, str] | None:
    """(tag, body) of the leftmost complete element, the body ending at the first matching
    closing tag. Linear time: a regex search is quadratic on many unclosed opening tags."""
    best: tuple[int, str, str] | None = None
    for tag in _TAGS:
        start = text.find(f"<{tag}>")
        if start < 0:
            continue
        end = text.find(f"</{tag}>", start + len(tag) + 2)
        if end >= 0 and (best is None or start < best[0]):
            best = (start, tag, text[start + len(tag) + 2 : end])
    return None if best is None else (best[1], best[2])


def clean_text(text: str) -> str:
    """Model text made safe to keep: lone UTF-16 surrogates (which no UTF-8 writer accepts:
    trajectories, checkpoints, the server's JSON) and NUL characters (which Postgres text
    refuses) become U+FFFD; a surrogate pair written as two code points becomes its
    character. Clean text passes through unchanged and uncopied."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def clean_value(value: Any) -> Any:
    """``clean_text`` applied to every string of a parsed value, dict keys included, so
    that what a model wrote as JSON escapes can be kept wherever its raw text can (state,
    events, trajectory.json, report.md, a search backend's request). Lists and dicts are
    rebuilt only when something in them changed; other values pass through."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        items = [(clean_value(k), clean_value(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        cleaned = [clean_value(v) for v in value]
        if all(c is v for c, v in zip(cleaned, value, strict=True)):
            return value
        return type(value)(cleaned) if isinstance(value, tuple) else cleaned
    return value


def parse_action(text: str) -> Action:
    """The first complete ``<search>``, ``<keyframe>`` or ``<answer>`` element of a turn.
    The text is cleaned first (``clean_text``; free when it is clean already), and parsed
    JSON too (``loads_lenient``): no action carries a lone surrogate or a NUL."""
    if not isinstance(text, str) or not text.strip():
        return NoAction(reason="empty response")
    text = clean_text(text)
    found = _first_element(text)
    if found is None:
        for tag in _TAGS:
            if f"<{tag}>" in text:
                return NoAction(reason=f"<{tag}> is not closed with </{tag}>")
        return NoAction(reason="no <search>, <keyframe> or <answer> tag")
    tag, body = found
    if tag == "search":
        return _parse_search(body)
    if tag == "keyframe":
        return _parse_keyframe(body)
    return _parse_answer(body)


def clamp_answer(
    action: AnswerAction, width: float, height: float
) -> tuple[list[int], list[int], list[str]]:
    """Round to integers and clamp to the coordinate frame [0, width] × [0, height]."""
    notes: list[str] = []

    def c(v: float, hi: float) -> int:
        r = int(round(v))
        return min(max(r, 0), int(hi))

    box = [c(action.bbox_2d[0], width), c(action.bbox_2d[1], height),
           c(action.bbox_2d[2], width), c(action.bbox_2d[3], height)]
    point = [c(action.point_2d[0], width), c(action.point_2d[1], height)]
    raw_box = [int(round(v)) for v in action.bbox_2d]
    raw_pt = [int(round(v)) for v in action.point_2d]
    if box != raw_box or point != raw_pt:
        notes.append("coordinates were clamped to the frame")
    return box, point, notes


def degenerate_box(action: AnswerAction, box: list[int]) -> str | None:
    """Why a well-formed answer outlines nothing (None when its box has an area).

    ``box`` is the answer's box as ``clamp_answer`` made it: rounded and inside the frame.
    Such an answer is still an answer: ``[0, 0, 0, 0]`` is how the trained models say they
    found nothing, and the published loop ends the rollout as the model's choice to finish.
    The graph keeps it (stop reason ``answer``, empty masks) with this text as its note;
    only an answer that cannot be read (bad JSON, wrong keys or types) is ``no_action``."""
    if box[2] > box[0] and box[3] > box[1]:
        return None
    raw = action.bbox_2d
    x1, y1, x2, y2 = (round(v) for v in raw)
    if not any(raw):
        why = "all zeros (the model found nothing)"
    elif x2 <= x1 or y2 <= y1:
        why = "no width or height (x2 <= x1 or y2 <= y1)"
    else:
        why = "no area inside the frame"
    return f"degenerate box [{', '.join(_short(v) for v in raw)}]: {why}"


def _short(v: float) -> str:
    """A coordinate as the model most likely wrote it: 12, not 12.0; 1e+308 stays short."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def cut_at_stop(text: str, stop: list[str] | tuple[str, ...] | None) -> tuple[str, bool]:
    """Cut ``text`` right after the earliest stop string, keeping it (what vLLM returns with
    ``include_stop_str_in_output``). Local backends need it because tokens do not respect
    tag boundaries: ``</search>`` may end inside a token such as ``>{"``."""
    best: int | None = None
    for s in stop or ():
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return (text, False) if best is None else (text[:best], True)


# ---------------------------------------------------------------- observations


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_text_results(results: list[tuple[str, str]]) -> str:
    """``<information>1. (Title: T) text\\n2. ...</information>`` for (title, text) pairs."""
    if not results:
        return "<information>No results found.</information>"
    lines = [f"{i}. (Title: {title}) {snippet(text)}" for i, (title, text) in enumerate(results, 1)]
    return "<information>" + "\n".join(lines) + "</information>"


def render_image_results(names: list[str]) -> str:
    """Image results: each name followed by an ``<image>`` placeholder the graph fills."""
    if not names:
        return "<information>No results found.</information>"
    lines = "".join(f"{i}. (Title: {n}) <image>\n" for i, n in enumerate(names, 1))
    return "<information>" + lines + "</information>"


def render_search_error(message: str) -> str:
    return f"<information>Search failed: {message}</information>"


def render_bad_keyframe(shown: list[int]) -> str:
    return f"Frame index not in {list(shown)}"
