"""Pictures of a result: the answer box and point, and masks, drawn on frames."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

MASK_COLOUR = (255, 64, 160)
BOX_COLOUR = (0, 220, 0)
POINT_COLOUR = (255, 40, 40)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, colour: Sequence[int] = MASK_COLOUR, alpha: float = 0.5) -> np.ndarray:
    """Tint the masked pixels and outline the mask."""
    out = rgb.copy()
    m = mask.astype(bool)
    if m.shape != out.shape[:2]:
        m = cv2.resize(m.astype(np.uint8), (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    tint = np.array(colour, np.float32)
    out[m] = (out[m].astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), max(1, out.shape[0] // 300))
    return out


def annotate(
    rgb: np.ndarray,
    mask: np.ndarray | None = None,
    box: Sequence[float] | None = None,
    point: Sequence[float] | None = None,
    label: str = "",
) -> np.ndarray:
    """A copy of an RGB frame with the mask tinted, the box in green, the point in red and
    a label in the corner."""
    out = overlay_mask(rgb, mask) if mask is not None else rgb.copy()
    thick = max(2, out.shape[0] // 200)
    if box is not None:
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thick)
    if point is not None:
        r = max(4, out.shape[0] // 80)
        c = (int(round(float(point[0]))), int(round(float(point[1]))))
        cv2.circle(out, c, r, POINT_COLOUR, -1)
        cv2.circle(out, c, r, (255, 255, 255), max(1, thick // 2))
    if label:
        scale = max(0.5, out.shape[0] / 900)
        org = (8, int(28 * scale))
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def draw_answer(
    img: Image.Image,
    box: Sequence[float] | None,
    point: Sequence[float] | None,
    mask: np.ndarray | None = None,
    label: str = "",
) -> Image.Image:
    """The frame with the mask tinted, the box in green and the point in red."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return Image.fromarray(annotate(rgb, mask, box, point, label))
