"""What a verify round shows the model (``Context.verify_rounds``): a few frames with the
masks drawn, chosen where the masks change most, plus the keyframe.

The change between two consecutive frames is ``1 − IoU`` of their masks (per object; the
largest over the objects), read from the written PNGs in one pass that keeps only the
previous masks and the few best scores, so memory does not grow with the video's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segresearch.core.media import Media, resize_square
from segresearch.tools.keyframe import KEYFRAME_RESIZE
from segresearch.tools.segmenters.writers import read_mask
from segresearch.tools.visualize import OBJECT_COLOURS, draw_label, overlay_mask, side_by_side

VERIFY_FRAMES = 4  # pictures per round: the keyframe and the three largest changes
SHEET_GAP = 4


def mask_change(prev: np.ndarray | None, cur: np.ndarray | None) -> float:
    """``1 − IoU`` of two masks (0 when both are empty or either is missing)."""
    if prev is None or cur is None or prev.shape != cur.shape:
        return 0.0
    union = int(np.count_nonzero(prev | cur))
    if union == 0:
        return 0.0
    return 1.0 - int(np.count_nonzero(prev & cur)) / union


def verify_frames(media: Media, masks_dirs: Sequence[Path], keyframe: int | None,
                  limit: int = VERIFY_FRAMES) -> list[int]:
    """The frame ids to show, in order: ``keyframe`` and, from each of ``limit - 1`` equal
    stretches of the video, the frame whose masks differ most from the previous frame's (a
    single image: just it). Taking the largest changes of the whole video would pick
    neighbours of one cut (frames 48, 49 and 50): one stretch each spreads the looks over
    the video while still following where the masks change. Frames whose masks did not
    change at all are never picked. One pass over the masks, holding one frame's."""
    fids = list(media.frame_ids)
    if len(fids) <= 1:
        return fids
    key = keyframe if keyframe in set(fids) else None
    wanted = max(0, limit - (1 if key is not None else 0))
    best: dict[int, tuple[float, int]] = {}  # stretch → (change, -fid): ties go to the earlier frame
    prev: list[np.ndarray | None] = [None] * len(masks_dirs)
    for i, fid in enumerate(fids):
        name = media.frame_name(fid) + ".png"
        cur = [read_mask(Path(d) / name) for d in masks_dirs]
        change = max((mask_change(p, c) for p, c in zip(prev, cur, strict=True)), default=0.0)
        prev = cur
        if change <= 0 or fid == key or wanted == 0:
            continue
        stretch = i * wanted // len(fids)
        item = (change, -fid)
        if stretch not in best or item > best[stretch]:
            best[stretch] = item
    chosen = {-f for _, f in best.values()} | ({key} if key is not None else set())
    if not chosen:
        chosen = {fids[0]}
    return sorted(chosen)


def verify_picture(media: Media, fid: int, masks_dirs: Sequence[Path], size: int) -> Image.Image:
    """Frame ``fid`` as the model sees a keyframe (``size``² with the keyframe filter), each
    object's mask tinted and outlined in its own colour (``OBJECT_COLOURS``; with several
    objects, its number written at its centre) and labelled ``frame {fid}``."""
    rgb = np.asarray(resize_square(media.frame(fid).convert("RGB"), size, KEYFRAME_RESIZE.resample),
                     dtype=np.uint8).copy()
    name = media.frame_name(fid) + ".png"
    several = len(masks_dirs) > 1
    for k, d in enumerate(masks_dirs):
        mask = read_mask(Path(d) / name)
        if mask is None or not mask.any():
            continue
        colour = OBJECT_COLOURS[k % len(OBJECT_COLOURS)]
        if mask.shape != rgb.shape[:2]:
            mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        rgb = overlay_mask(rgb, mask, colour)
        if several:
            ys, xs = np.nonzero(mask)
            _number(rgb, str(k + 1), int(xs.mean()), int(ys.mean()), colour)
    draw_label(rgb, f"frame {fid}")
    return Image.fromarray(rgb)


def _number(rgb: np.ndarray, text: str, x: int, y: int, colour: Sequence[int]) -> None:
    scale = max(0.6, rgb.shape[0] / 500)
    weight = max(2, int(round(2 * scale)))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
    org = (max(0, x - tw // 2), min(rgb.shape[0] - 1, y + th // 2))
    cv2.putText(rgb, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), weight + 2, cv2.LINE_AA)
    cv2.putText(rgb, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in colour),
                weight, cv2.LINE_AA)


def verify_sheet(pictures: Sequence[Image.Image]) -> Image.Image:
    """The pictures of one round side by side (what ``verify_round_<r>.jpg`` holds)."""
    return side_by_side(pictures, gap=SHEET_GAP)
