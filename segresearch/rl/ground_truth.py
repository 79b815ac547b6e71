"""Ground truth for the reward, computed from the masks of the sampled frames.

Per frame: the box is the extent of the mask, the point the mask pixel farthest from the
mask's border (distance-transform maximum), both in the coordinates the model answers in
(``CoordFrame.from_px``);
``area`` and ``max_conn_area`` (largest connected component) are divided by their maxima
over the sampled frames, so the frame where the target is biggest and least fragmented
earns the full keyframe reward.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from segresearch.core.coords import CoordFrame


def mask_stats(mask: np.ndarray) -> dict[str, Any] | None:
    """Box, inner point, area and largest-component area of a boolean mask (pixels)."""
    m = mask.astype(np.uint8)
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0
    return {
        "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
        "point": [int(px), int(py)],
        "area": int(m.sum()),
        "conn": largest,
    }


def build_ground_truth(
    masks: dict[str, np.ndarray], coord_style: str = "qwen3", frame_size: int = 448,
    object_masks: dict[str, list[np.ndarray]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{frame id: {bbox_2d, point_2d, area, max_conn_area}}`` for frames whose mask is not
    empty; ``masks`` maps frame id strings to boolean H×W masks (the union of the target's
    objects). With ``object_masks`` (frame id → one mask per object) every entry also lists
    ``objects``: the box and point of each object present on that frame, which the reward
    reads to score answers naming several objects (``rl.reward``)."""
    coords = CoordFrame.of(coord_style, frame_size)  # qwen25: pixels of the frame shown
    stats = {fid: s for fid, m in masks.items() if (s := mask_stats(m)) is not None}
    if not stats:
        return {}
    max_area = max(s["area"] for s in stats.values())
    max_conn = max(s["conn"] for s in stats.values())
    out = {}
    for fid, s in stats.items():
        h, w = masks[fid].shape[:2]
        out[fid] = {
            "bbox_2d": coords.from_px(s["box"], w, h),
            "point_2d": coords.from_px(s["point"], w, h),
            "area": round(s["area"] / max_area, 6),
            "max_conn_area": round(s["conn"] / max_conn, 6) if max_conn else 0.0,
        }
        if object_masks is not None:
            present = [o for m in object_masks.get(fid, []) if (o := mask_stats(m)) is not None]
            out[fid]["objects"] = [{"bbox_2d": coords.from_px(o["box"], w, h),
                                    "point_2d": coords.from_px(o["point"], w, h)} for o in present]
    return out
