"""From a model's answer to a segmentation prompt, the way the published pipeline does it.

Two readers of an answer exist and they can disagree on the frame:
- the graph keeps its documented rule: the answer belongs to the LAST keyframe the model
  selected and was shown (it is what the model was looking at when it answered);
- a saved output text (an evaluation dump, ours or the published one) is read like the
  reward and ``post_segmentation/sam2_okvos.py`` read it: the FIRST ``<keyframe>`` tag of
  the whole text, the first ``<answer>`` on one line parsed with strict JSON.
Both scale model coordinates to pixels in float32 exactly as the published script does
(``value × width / 1000`` for Qwen3-VL's 0–1000 grid), without rounding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segresearch.tools.segmenters.base import Prompt

KEYFRAME_RE = re.compile(r"<keyframe>\s*(\d+)\s*</keyframe>", re.S)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>")


def scales(width: int, height: int, coord_style: str = "qwen3", coord_size: int = 1000) -> np.ndarray:
    """Per-axis factors from model coordinates to pixels, float32 as in the published code.

    ``qwen3``: a 0–1000 grid. ``qwen25``: pixels of the ``coord_size``² image the model saw."""
    if coord_style == "qwen3":
        rw, rh = width / 1000, height / 1000
    elif coord_style == "qwen25":
        rw, rh = width / coord_size, height / coord_size
    else:
        raise ValueError(f"coord_style must be 'qwen3' or 'qwen25', not {coord_style!r}")
    return np.array([rw, rh], dtype=np.float32)


def _usable(arr: np.ndarray, n: int) -> tuple[float, ...] | None:
    """``arr`` as n finite floats, or None when it is all zero (the published script then
    skips that prompt) or not n finite numbers (it would crash or prompt with NaN)."""
    flat = arr.reshape(-1)
    if flat.size != n or not np.all(np.isfinite(flat)) or not flat.any():
        return None
    return tuple(float(v) for v in flat)


def prompt_from_answer(
    answer: Mapping[str, Any], width: int, height: int, coord_style: str = "qwen3",
    coord_size: int = 1000,
) -> Prompt | None:
    """The prompt for the graph's own answer (``answer`` in model coordinates with its
    ``keyframe``); None when there is no frame to prompt on."""
    if answer.get("keyframe") is None:
        return None
    s = scales(width, height, coord_style, coord_size)
    box = _usable(np.asarray(answer["bbox_2d"], np.float32) * np.tile(s, 2), 4)
    point = _usable(np.asarray([answer["point_2d"]], np.float32) * s, 2)
    if box is None and point is None:
        return None
    return Prompt(int(answer["keyframe"]), box, point)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ParsedOutput:
    """What the published rule reads from an output text, and why it gives no prompt."""

    prompt: Prompt | None
    keyframe: int | None  # the first <keyframe> tag's number (None when absent)
    problem: str | None  # why there is no usable prompt


def prompt_from_output(
    output: str,
    frame_ids: Sequence[int],
    width: int,
    height: int,
    *,
    coord_style: str = "qwen3",
    coord_size: int = 1000,
    single_image: bool = False,
) -> ParsedOutput:
    """The published post-segmentation reading of a whole output text.

    Sequential like the published ``try`` block: a box that parses keeps its prompt even if
    the point does not. The keyframe must be a frame of the video (the published script
    checks ``0 <= keyframe < len(video)`` on frames named 00000…, where ids and positions
    agree). For a single image the frame is 0 and no tag is needed."""
    if not isinstance(output, str):
        return ParsedOutput(None, None, "no output text")
    m = KEYFRAME_RE.search(output)
    keyframe = int(m.group(1)) if m else None
    if single_image:
        frame: int | None = frame_ids[0] if frame_ids else None
    else:
        frame = keyframe
        if keyframe is None:
            return ParsedOutput(None, None, "no <keyframe> tag")
        if keyframe not in set(frame_ids):
            return ParsedOutput(None, keyframe, f"keyframe {keyframe} is not a frame of the video")
    a = ANSWER_RE.search(output)
    if a is None:
        return ParsedOutput(None, keyframe, "no <answer>…</answer> on one line")
    try:
        pred = json.loads(a.group(1).strip())
    except json.JSONDecodeError as e:
        return ParsedOutput(None, keyframe, f"answer is not valid JSON ({e.msg})")
    except RecursionError:
        return ParsedOutput(None, keyframe, "answer is not valid JSON (nested too deeply)")
    s = scales(width, height, coord_style, coord_size)
    box = point = None
    problem = None
    try:
        box = _usable(np.array(pred["bbox_2d"], dtype=np.float32) * np.tile(s, 2), 4)
        point = _usable(np.array([pred["point_2d"]], dtype=np.float32) * s, 2)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        problem = f"answer lacks a usable bbox_2d/point_2d ({type(e).__name__})"
    if box is None and point is None:
        return ParsedOutput(None, keyframe, problem or "answer has no usable box or point")
    assert frame is not None
    return ParsedOutput(Prompt(int(frame), box, point), keyframe, None)  # type: ignore[arg-type]
