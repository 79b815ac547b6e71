"""From a model's answer to a segmentation prompt, the way the published pipeline does it.

Two readers of an answer exist and they can disagree on the frame:
- the graph keeps its documented rule: the answer belongs to the LAST keyframe the model
  selected and was shown (it is what the model was looking at when it answered);
- a saved output text (an evaluation dump, ours or the published one) is read like the
  reward and ``post_segmentation/sam2_okvos.py`` read it: the FIRST ``<keyframe>`` tag of
  the whole text, the first ``<answer>`` on one line parsed with strict JSON.

The two also read the keyframe's number differently. The model is shown ``frame {fid}``
with the frame's NAME (``int`` of the file stem), and the graph keeps that meaning. The
published post-segmentation hands the number to SAM 2 as ``frame_idx`` and checks
``0 <= fid < len(video)``: it is a POSITION in the video's sorted frames. A saved output is
read the published way (so masks and scores equal the published pipeline's); the two agree
while frames are named 0…N-1, as in OK-VOS, and an evaluation counts where they do not
(``rule_differs``).

Both scale model coordinates to pixels with ``CoordFrame.sam2_box`` / ``sam2_point``
(``segresearch.core.coords``): float32, exactly as the published script does (``value × width /
1000`` for Qwen3-VL's 0–1000 grid), without rounding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segresearch.core.coords import QWEN3, CoordFrame
from segresearch.tools.segmenters.base import Prompt

KEYFRAME_RE = re.compile(r"<keyframe>\s*(\d+)\s*</keyframe>", re.S)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>")


def _usable(arr: np.ndarray, n: int) -> tuple[float, ...] | None:
    """``arr`` as n finite floats, or None when it is all zero (the published script then
    skips that prompt) or not n finite numbers (it would crash or prompt with NaN)."""
    flat = arr.reshape(-1)
    if flat.size != n or not np.all(np.isfinite(flat)) or not flat.any():
        return None
    return tuple(float(v) for v in flat)


def prompt_from_answer(
    answer: Mapping[str, Any], width: int, height: int, coords: CoordFrame = QWEN3,
) -> Prompt | None:
    """The prompt for the graph's own answer (``answer`` on the grid ``coords`` with its
    ``keyframe``); None when there is no frame to prompt on."""
    if answer.get("keyframe") is None:
        return None
    box = _usable(coords.sam2_box(answer["bbox_2d"], width, height), 4)
    point = _usable(coords.sam2_point(answer["point_2d"], width, height), 2)
    if box is None and point is None:
        return None
    return Prompt(int(answer["keyframe"]), box, point)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ParsedOutput:
    """What the published rule reads from an output text, and why it gives no prompt."""

    prompt: Prompt | None
    keyframe: int | None  # the first <keyframe> tag's number (None when absent)
    problem: str | None  # why there is no usable prompt
    # answer parts holding NaN or ±inf ("bbox_2d", "point_2d"): the published script would
    # prompt SAM 2 with them (NaN is truthy for its ``.any()`` test); here such a part is
    # dropped and the rest used, a difference from the published rule that is counted.
    nonfinite: tuple[str, ...] = ()


def _nonfinite(**parts: np.ndarray | None) -> tuple[str, ...]:
    """Names of the scaled coordinate arrays that hold NaN or ±inf (float32 overflow too)."""
    return tuple(k for k, v in parts.items() if v is not None and not np.all(np.isfinite(v)))


def prompt_from_output(
    output: str,
    frame_ids: Sequence[int],
    width: int,
    height: int,
    *,
    coords: CoordFrame = QWEN3,
    single_image: bool = False,
) -> ParsedOutput:
    """The published post-segmentation reading of a whole output text.

    Sequential like the published ``try`` block: a box that parses keeps its prompt even if
    the point does not. ``frame_ids``: every frame of the video in order; the keyframe tag's
    number is a position in it (``0 <= keyframe < len(video)``, as the published script
    checks and SAM 2 indexes), and the prompt's ``frame`` is the id of the frame there. For a
    single image the frame is its only one and no tag is needed. ``coords``: the grid the
    model answered on."""
    if not isinstance(output, str):
        return ParsedOutput(None, None, "no output text")
    m = KEYFRAME_RE.search(output)
    keyframe = int(m.group(1)) if m else None
    if single_image:
        frame: int | None = frame_ids[0] if frame_ids else None
    else:
        if keyframe is None:
            return ParsedOutput(None, None, "no <keyframe> tag")
        if not 0 <= keyframe < len(frame_ids):
            return ParsedOutput(None, keyframe, f"keyframe {keyframe} is not a frame position of "
                                f"the video (0…{len(frame_ids) - 1})")
        frame = frame_ids[keyframe]
    a = ANSWER_RE.search(output)
    if a is None:
        return ParsedOutput(None, keyframe, "no <answer>…</answer> on one line")
    try:
        pred = json.loads(a.group(1).strip())
    except json.JSONDecodeError as e:
        return ParsedOutput(None, keyframe, f"answer is not valid JSON ({e.msg})")
    except RecursionError:
        return ParsedOutput(None, keyframe, "answer is not valid JSON (nested too deeply)")
    box_px = point_px = None
    problem = None
    try:
        box_px = coords.sam2_box(pred["bbox_2d"], width, height)
        point_px = coords.sam2_point(pred["point_2d"], width, height)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        problem = f"answer lacks a usable bbox_2d/point_2d ({type(e).__name__})"
    bad = _nonfinite(bbox_2d=box_px, point_2d=point_px)
    box = None if box_px is None else _usable(box_px, 4)
    point = None if point_px is None else _usable(point_px, 2)
    if box is None and point is None:
        return ParsedOutput(None, keyframe, problem or "answer has no usable box or point", bad)
    assert frame is not None
    return ParsedOutput(Prompt(int(frame), box, point), keyframe, None, bad)  # type: ignore[arg-type]
