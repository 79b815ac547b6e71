"""A segmenter that returns ground-truth masks, so an evaluation's expected score is known.

Given a prompt on a frame of an OK-VOS-layout video, it picks the annotated object whose
mask on that frame best matches the prompt's box and yields that object's masks for every
frame (empty where the object has no annotation). Tests use it to check the evaluation
pipeline's arithmetic exactly, independent of any real segmenter's quality.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segresearch.core.media import Media
from segresearch.testing.scenes import mask_box
from segresearch.tools.segmenters.base import Prompt, Segmenter, VideoSession


def _box_iou(a: tuple[float, ...], b: list[int]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class _Session(VideoSession):
    def __init__(self, media: Media) -> None:
        self.media = media
        frames = Path(media.source)
        self.ann = frames.parent.parent / "Annotations" / frames.name

    def _mask(self, obj: Path, fid: int) -> np.ndarray | None:
        p = obj / f"{self.media.frame_name(fid)}.png"
        if not p.is_file():
            return None
        with Image.open(p) as im:
            return np.asarray(im) > 0

    def masks(self, prompt: Prompt) -> Iterator[tuple[int, np.ndarray]]:
        best, best_iou = None, 0.0
        for obj in sorted(p for p in self.ann.iterdir() if p.is_dir()):
            m = self._mask(obj, prompt.frame)
            if m is None or not m.any() or prompt.box is None:
                continue
            iou = _box_iou(prompt.box, mask_box(m))
            if iou > best_iou:
                best, best_iou = obj, iou
        empty = np.zeros((self.media.height, self.media.width), bool)
        for fid in self.media.frame_ids:
            m = self._mask(best, fid) if best is not None else None
            yield fid, (m if m is not None else empty)


class GroundTruthSegmenter(Segmenter):
    name = "ground-truth"

    def open(self, media: Media) -> VideoSession:
        return _Session(media)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
