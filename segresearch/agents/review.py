"""The rules for a reply to the graph's review pause, in one place.

The ``review`` node (``segresearch.graphs.nodes``) and the server's request guard
(``segresearch.servers.review_check``) both read a reviewer's reply with ``read_reply``: the
node because it is the last word on what gets segmented, the server so that an API client
hears at once, with an HTTP error, what the node would have said only in its next pause.
Nothing here needs the media itself: the frame size and (when known) the frame ids are
enough, which is what the pause's payload carries.

An answer naming several objects (``objects_px`` in the pause) is reviewed object by object:
a reply may edit or drop object ``k`` (0-based, in the order the pause lists them), or send a
list of such changes, all numbered as the pause numbers them; the old flat edit changes
object 0. Dropping every object is refused: 'reject' says that.

Coordinates are original-frame pixel indices, as ``answer_px`` is: on a ``w``×``h`` frame
x runs over [0, w-1] and y over [0, h-1]. ``w`` itself is outside (the graph's own
``answer_px`` never exceeds ``w-1``, the CLI prints the frame as ``w×h`` pixels and the web
page's editor stops at ``w-1``), and nothing is clamped: a value outside the frame is a
mistake the reviewer should hear about, not one to guess a correction for.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

ACCEPT_WORDS = ("accept", "ok", "yes", "y", "")
REJECT_WORDS = ("reject", "no", "n")
EDIT_KEYS = ("keyframe", "bbox_2d", "point_2d")
# the keys of a reply that names its decision ({"decision": "edit", "object": k, "answer_px": ...})
DECISION_KEYS = ("decision", "object", "answer_px")

HELP = ("resume with 'accept', 'reject', or an edit {\"keyframe\": id, \"bbox_2d\": "
        "[x1, y1, x2, y2], \"point_2d\": [x, y]} in original-frame pixels (any of the keys)")
# added to HELP when the answer names several objects
OBJECTS_HELP = ("; with several objects also {\"decision\": \"edit\", \"object\": k, \"answer_px\": "
                "{...}}, {\"decision\": \"drop\", \"object\": k} (k from 0), or a list of these")

# What an API client is told when its reply is refused: every form the node understands.
ACCEPTED_FORMS = [
    "'accept' (also 'ok', 'yes', 'y' or an empty string; any case, spaces ignored): "
    "segment the answer as it is",
    "'reject' (also 'no', 'n'): keep the answer, make no masks",
    "an edit {\"keyframe\": id, \"bbox_2d\": [x1, y1, x2, y2], \"point_2d\": [x, y]} with any "
    "of these keys (the others are kept from the answer): numbers in original-frame pixels, "
    "0 <= x <= width-1 and 0 <= y <= height-1, x1 < x2 and y1 < y2, the point inside the "
    "box, the keyframe one of the media's frames; it changes the first object",
    "{\"decision\": \"edit\", \"object\": k, \"answer_px\": {an edit as above}}: change object k "
    "(0-based, as the pause's objects_px lists them; 0 when \"object\" is left out)",
    "{\"decision\": \"drop\", \"object\": k}: segment without object k (never the last one "
    "left: reply 'reject' to make no masks)",
    "{\"decision\": \"accept\"} or {\"decision\": \"reject\"}: as the words",
    "a list of edit and drop decisions, each naming its object as the pause numbers them "
    "(each object at most once)",
]

# Frame ids longer than this (and not evenly spaced) are left out of a pause's payload: the
# node still checks the keyframe, the server only the rest.
_MAX_LISTED_FRAMES = 1000

Decision = Literal["accept", "reject", "edit", "drop"]


@dataclass(frozen=True)
class Reply:
    """A reply read against the pause it answers: a decision, or why it is refused.

    For "edit" and "drop" (the reply changed the answer; "edit" when it edited any object,
    "drop" when it only dropped some), ``objects_px`` is every object after the change, each
    keeping its label, ``answer_px`` the first of them without its label, and ``changes`` what
    changed, in the reply's order: {"decision": "edit", "object": k, "answer_px": {...}} or
    {"decision": "drop", "object": k}, k numbering the objects as the pause did."""

    decision: Decision | None
    answer_px: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    objects_px: list[dict[str, Any]] | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)


def read_pause_reply(pause: Mapping[str, Any], reply: Any,
                     has_frame: Callable[[int], bool | None] | None = None) -> Reply | None:
    """``read_reply`` against a review pause's payload (``ReviewRequest``): its answer, its
    objects when it lists them, its frame size and, unless ``has_frame`` is given, its frame
    ids. None when the payload lacks what the rules need (it is then not judged here). The
    node and the server's guard both resolve a reply with this, so they cannot disagree."""
    answer_px = pause.get("answer_px")
    size = pause.get("frame_size")
    if not isinstance(answer_px, Mapping) or not _is_size(size):
        return None
    objects = pause.get("objects_px")
    if not (isinstance(objects, list) and objects and all(isinstance(o, Mapping) for o in objects)):
        objects = None
    if has_frame is None:
        has_frame = frames_predicate(pause.get("frame_ids"))
    return read_reply(reply, answer_px, size, has_frame, objects)


def _is_size(size: Any) -> TypeGuard[Sequence[int]]:
    return (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size))


def read_reply(reply: Any, answer_px: Mapping[str, Any], frame_size: Sequence[int],
               has_frame: Callable[[int], bool | None] | None = None,
               objects_px: Sequence[Mapping[str, Any]] | None = None) -> Reply:
    """The decision a reply means, or every reason it is refused (never a guessed fix).

    ``answer_px`` is the answer under review (an edit replaces some of its keys);
    ``has_frame`` says whether a keyframe belongs to the media, None where that is unknown;
    ``objects_px`` every object of the answer when it names several (None: the answer alone).
    """
    objects = [dict(o) for o in objects_px] if objects_px else [{**answer_px, "label": None}]
    if isinstance(reply, list) and len(objects) > 1:
        return _changes(reply, objects, frame_size, has_frame)
    if isinstance(reply, Mapping) and "decision" in reply:
        return _decision(reply, objects, frame_size, has_frame)
    if isinstance(reply, str):
        word = reply.strip().lower()
        if word in ACCEPT_WORDS:
            return Reply("accept")
        if word in REJECT_WORDS:
            return Reply("reject")
        return Reply(None, problems=[f"unrecognised review reply {_short(reply)}; " + _help(objects)])
    if not isinstance(reply, Mapping):
        return Reply(None, problems=[f"a review reply is a string or an edit object, not "
                                     f"{type(reply).__name__}; " + _help(objects)])
    if "object" in reply or "answer_px" in reply:
        return Reply(None, problems=["a reply naming an object needs its \"decision\": "
                                     "{\"decision\": \"edit\", \"object\": k, \"answer_px\": {...}} or "
                                     "{\"decision\": \"drop\", \"object\": k}"])
    return _changes([{"decision": "edit", "object": 0, "answer_px": reply}], objects, frame_size,
                    has_frame, flat=True)


def _help(objects: Sequence[Mapping[str, Any]]) -> str:
    return HELP + (OBJECTS_HELP if len(objects) > 1 else "")


def _decision(reply: Mapping[str, Any], objects: list[dict[str, Any]], frame_size: Sequence[int],
              has_frame: Callable[[int], bool | None] | None) -> Reply:
    """A reply that names its decision: accept or reject alone, one edit or one drop."""
    decision = reply.get("decision")
    if decision in ("accept", "reject"):
        extra = sorted(str(k) for k in reply if k != "decision")
        if extra:
            return Reply(None, problems=[f"unknown key(s) {', '.join(map(repr, extra))} beside "
                                         f"decision {decision!r}: it takes no other key"])
        return Reply(decision)
    return _changes([reply], objects, frame_size, has_frame)


def _changes(items: list[Any], objects: list[dict[str, Any]], frame_size: Sequence[int],
             has_frame: Callable[[int], bool | None] | None, flat: bool = False) -> Reply:
    """Edits and drops, each naming its object as the pause numbered them, applied together.
    ``flat``: the old flat edit of the first object (its messages say nothing of objects)."""
    if not items:
        return Reply(None, problems=["an empty list changes nothing: reply 'accept' to segment the "
                                     "answer as it is, or list edit and drop decisions"])
    n = len(objects)
    problems: list[str] = []
    edits: dict[int, dict[str, Any]] = {}
    drops: list[int] = []
    changes: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = "" if flat or len(items) == 1 else f"change {i}: "
        if not isinstance(item, Mapping):
            problems.append(f"{where}a change in a list is an object {{\"decision\": \"edit\" or "
                            f"\"drop\", \"object\": k, ...}}, not {_short(item)}")
            continue
        decision = item.get("decision")
        if decision not in ("edit", "drop"):
            problems.append(f"{where}decision {_short(decision)} is not one of 'accept', 'reject', "
                            f"'edit', 'drop'" + (" (accept and reject stand alone, not in a list)"
                                                 if decision in ("accept", "reject") else ""))
            continue
        allowed = DECISION_KEYS if decision == "edit" else ("decision", "object")
        extra = sorted(str(k) for k in item if k not in allowed)
        if extra:
            problems.append(f"{where}unknown key(s) {', '.join(map(repr, extra))} in a {decision}: "
                            f"it takes {', '.join(allowed)}")
            continue
        k, why = _object_index(item.get("object", 0 if decision == "edit" else None), n)
        if why:
            problems.append(where + why)
            continue
        if k in edits or k in drops:
            problems.append(f"{where}object {k} is changed twice: name each object at most once")
            continue
        if decision == "drop":
            drops.append(k)
            changes.append({"decision": "drop", "object": k})
            continue
        edited, edit_problems = _edit(item.get("answer_px"), objects[k], frame_size, has_frame)
        if edit_problems:
            prefix = "" if flat or n == 1 else f"object {k}: "
            problems += [where + prefix + p for p in edit_problems]
            continue
        edits[k] = edited
        changes.append({"decision": "edit", "object": k, "answer_px": edited})
    if not problems and len(drops) >= n:
        problems.append(f"dropping {'the only object' if n == 1 else f'all {n} objects'} leaves "
                        "nothing to segment: reply 'reject' to make no masks")
    if problems:
        return Reply(None, problems=problems)
    kept = [{**edits.get(k, objects[k]), "label": objects[k].get("label")}
            for k in range(n) if k not in drops]
    first = {key: kept[0][key] for key in EDIT_KEYS}
    return Reply("edit" if edits else "drop", answer_px=first, objects_px=kept, changes=changes)


def _object_index(k: Any, n: int) -> tuple[int, str | None]:
    if k is None:
        return -1, "a drop must name its \"object\" (0-based)"
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        return -1, f"object {_short(k)} must be an integer index (0-based)"
    if not 0 <= int(k) < n:
        which = "the answer's only object is 0" if n == 1 else f"the answer's {n} objects are 0 to {n - 1}"
        return -1, f"object {int(k)} is not one of the answer's objects: {which}"
    return int(k), None


def _edit(reply: Any, original: Mapping[str, Any], frame_size: Sequence[int],
          has_frame: Callable[[int], bool | None] | None) -> tuple[dict[str, Any], list[str]]:
    """One object's edit merged over it, or why it is refused."""
    if not isinstance(reply, Mapping):
        return {}, [f"an edit's answer_px is an object {{\"keyframe\", \"bbox_2d\", \"point_2d\"}}, "
                    f"not {_short(reply)}"]
    problems = _edit_shape(reply)
    if problems:
        return {}, problems
    merged = {**{k: original.get(k) for k in EDIT_KEYS}, **reply}
    problems = _edit_values(merged, set(reply), frame_size, has_frame)
    if problems:
        return {}, problems
    return {"keyframe": int(merged["keyframe"]),
            "bbox_2d": [float(v) for v in merged["bbox_2d"]],
            "point_2d": [float(v) for v in merged["point_2d"]]}, []


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _edit_shape(reply: Mapping[str, Any]) -> list[str]:
    """Keys first: an edit with a typo in a key would otherwise pass as "keep the answer"."""
    if not reply:
        return ["an edit must set at least one of keyframe, bbox_2d, point_2d; " + HELP]
    unknown = sorted(str(k) for k in reply if k not in EDIT_KEYS)
    if unknown:
        return [f"unknown key(s) {', '.join(map(repr, unknown))} in the edit: only keyframe, "
                "bbox_2d and point_2d can be changed"]
    return []


def _origin(key: str, given: set[str]) -> str:
    """Which side a value came from, for messages about values the reviewer did not send."""
    return "" if key in given else " (kept from the answer)"


def _edit_values(merged: Mapping[str, Any], given: set[str], frame_size: Sequence[int],
                 has_frame: Callable[[int], bool | None] | None) -> list[str]:
    problems = _keyframe_problems(merged.get("keyframe"), _origin("keyframe", given), has_frame)
    w, h = int(frame_size[0]), int(frame_size[1])
    box, box_problems = _numbers("bbox_2d", merged.get("bbox_2d"), ("x1", "y1", "x2", "y2"),
                                 _origin("bbox_2d", given), (w, h))
    pt, pt_problems = _numbers("point_2d", merged.get("point_2d"), ("x", "y"),
                               _origin("point_2d", given), (w, h))
    problems += box_problems + pt_problems
    if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
        problems.append(f"bbox_2d {_fmt(box)}{_origin('bbox_2d', given)} is empty or inverted: "
                        "it needs x1 < x2 and y1 < y2")
    elif box is not None and pt is not None and not (box[0] <= pt[0] <= box[2] and box[1] <= pt[1] <= box[3]):
        # A segmenter reads the point as a click on the object the box frames (GrabCut: sure
        # foreground inside probable foreground); one outside the box contradicts it.
        problems.append(f"point_2d {_fmt(pt)}{_origin('point_2d', given)} lies outside bbox_2d "
                        f"{_fmt(box)}{_origin('bbox_2d', given)}: the point must be inside the box")
    return problems


def _keyframe_problems(keyframe: Any, origin: str, has_frame: Callable[[int], bool | None] | None) -> list[str]:
    if isinstance(keyframe, bool) or not isinstance(keyframe, numbers.Integral):
        return [f"keyframe {_short(keyframe)}{origin} must be an integer frame id"]
    if has_frame is not None and has_frame(int(keyframe)) is False:
        return [f"keyframe {int(keyframe)!r}{origin} is not a frame of this media"]
    return []


def _numbers(key: str, value: Any, names: tuple[str, ...], origin: str,
             size: tuple[int, int]) -> tuple[list[float] | None, list[str]]:
    """(the values as floats, problems): each must be a finite number inside the frame."""
    shape = f"{key}{origin} must be {len(names)} numbers [{', '.join(names)}]"
    if not isinstance(value, (list, tuple)) or len(value) != len(names):
        return None, [f"{shape}, not {_short(value)}"]
    problems: list[str] = []
    for name, v in zip(names, value, strict=True):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            problems.append(f"{shape}: {name} is {_short(v)}")
        elif not math.isfinite(float(v)):
            problems.append(f"{key} {name} = {float(v)}{origin} is not a finite number")
        else:
            problems += _in_frame(key, name, float(v), origin, size)
    return (None, problems) if problems else ([float(v) for v in value], [])


def _in_frame(key: str, name: str, v: float, origin: str, size: tuple[int, int]) -> list[str]:
    w, h = size
    axis, limit = ("x", w) if name.startswith("x") else ("y", h)
    if 0 <= v <= limit - 1:
        return []
    return [f"{key} {name} = {_num(v)}{origin} is outside the {w}×{h} frame: {axis} must be "
            f"within [0, {limit - 1}] (pixel indices, nothing is clamped)"]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(_num(v) for v in values) + "]"


# ------------------------------------------------------------- frame ids in a pause


def describe_frames(frame_ids: Sequence[int]) -> dict[str, int] | list[int] | None:
    """The media's frame ids for a pause's payload, small whatever the video's length:
    evenly spaced ids (every video, most frame folders) as {first, last, count, step}, a
    short irregular list as itself, a long irregular one not at all (None)."""
    ids = [int(f) for f in frame_ids]
    if not ids:
        return None
    step = ids[1] - ids[0] if len(ids) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(ids, ids[1:], strict=False)):
        return {"first": ids[0], "last": ids[-1], "count": len(ids), "step": step}
    return ids if len(ids) <= _MAX_LISTED_FRAMES else None


def frames_predicate(described: Any) -> Callable[[int], bool | None] | None:
    """``has_frame`` for ``read_reply`` from what ``describe_frames`` wrote (None when the
    payload does not say, or says something this code does not read: then it cannot judge)."""
    if isinstance(described, list) and all(isinstance(f, int) for f in described):
        listed = set(described)
        return listed.__contains__
    if isinstance(described, Mapping):
        try:
            first, last, step = (int(described[k]) for k in ("first", "last", "step"))
        except (KeyError, TypeError, ValueError):
            return None
        if step <= 0:
            return None
        return lambda f: first <= f <= last and (f - first) % step == 0
    return None
