"""Pictures of a result: the answer box and point, and masks, drawn on frames."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

MASK_COLOUR = (255, 64, 160)
# One colour per object of an answer, in order; the first is MASK_COLOUR, so a single object
# looks as it always did.
OBJECT_COLOURS: tuple[tuple[int, int, int], ...] = (
    MASK_COLOUR, (40, 160, 255), (255, 200, 0), (0, 200, 120), (170, 90, 255), (255, 120, 40),
)
BOX_COLOUR = (0, 220, 0)
POINT_COLOUR = (255, 40, 40)


def side_by_side(pictures: Sequence[Image.Image], gap: int = 0,
                 background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Pictures in one row, top-aligned, ``gap`` pixels of ``background`` between them (and
    under the shorter ones)."""
    sheet = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1),
                              max(p.height for p in pictures)), background)
    x = 0
    for p in pictures:
        sheet.paste(p, (x, 0))
        x += p.width + gap
    return sheet


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
    a label on a dark box in the corner."""
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
        draw_label(out, label)
    return out


NEGATIVE_POINT_COLOUR = (30, 30, 30)


@dataclass(frozen=True)
class DrawnObject:
    """One object of an answer as a frame shows it: its mask (None: none on this frame),
    the box and point prompted on this frame, extra labelled points ``(x, y, 1 or 0)``, its
    name (written beside its box) and its colours."""

    mask: np.ndarray | None = None
    box: Sequence[float] | None = None
    point: Sequence[float] | None = None
    points: Sequence[Sequence[float]] = ()
    name: str | None = None
    colour: Sequence[int] = MASK_COLOUR
    box_colour: Sequence[int] = BOX_COLOUR


def annotate_objects(rgb: np.ndarray, objects: Sequence[DrawnObject], label: str = "") -> np.ndarray:
    """A copy of an RGB frame with every object's mask tinted in its colour, then its box,
    point and labelled points (positive red, negative dark), its name beside its box (or its
    point) and ``label`` in the corner. One object without name or extra points is drawn
    exactly as :func:`annotate` draws it."""
    out = rgb.copy()
    for obj in objects:
        if obj.mask is not None:
            out = overlay_mask(out, obj.mask, obj.colour)
    thick = max(2, out.shape[0] // 200)
    r = max(4, out.shape[0] // 80)
    for obj in objects:
        if obj.box is not None:
            x1, y1, x2, y2 = (int(round(float(v))) for v in obj.box)
            cv2.rectangle(out, (x1, y1), (x2, y2), tuple(int(c) for c in obj.box_colour), thick)
        marks = ([(obj.point[0], obj.point[1], 1)] if obj.point is not None else []) + list(obj.points)
        for x, y, positive in marks:
            c = (int(round(float(x))), int(round(float(y))))
            cv2.circle(out, c, r, POINT_COLOUR if positive else NEGATIVE_POINT_COLOUR, -1)
            cv2.circle(out, c, r, (255, 255, 255), max(1, thick // 2))
            if not positive:  # a minus sign: told apart without colour
                cv2.line(out, (c[0] - r // 2, c[1]), (c[0] + r // 2, c[1]), (255, 255, 255),
                         max(1, thick // 2))
        if obj.name:
            at = obj.box[:2] if obj.box is not None else obj.point
            if at is None and obj.points:
                at = obj.points[0][:2]
            if at is not None:
                draw_tag(out, obj.name, float(at[0]), float(at[1]), obj.colour)
    if label:
        draw_label(out, label)
    return out


def draw_tag(rgb: np.ndarray, text: str, x: float, y: float, colour: Sequence[int]) -> None:
    """``text`` in white on a dark box just above ``(x, y)`` (below it at the top edge), with
    a bar in ``colour`` on its left, kept inside the frame; in place. ASCII only, like
    :func:`draw_label`."""
    h, w = rgb.shape[:2]
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text).strip()
    if not text or h < 8 or w < 8:
        return
    scale = max(_MIN_LABEL_SCALE, h / 1400)
    weight = max(1, int(round(2 * scale)))
    (tw, th), base = cv2.getTextSize(text, LABEL_FONT, scale, weight)
    pad = max(2, int(round(4 * scale)))
    bar = max(3, pad)
    bw, bh = min(w, tw + 2 * pad + bar), min(h, th + base + 2 * pad)
    x0 = int(min(max(0, round(x)), w - bw))
    y0 = int(round(y)) - bh - 1
    if y0 < 0:
        y0 = int(min(max(0, round(y) + 1), h - bh))
    box = rgb[y0:y0 + bh, x0:x0 + bw]
    box[:] = (box.astype(np.float32) * (1 - LABEL_BACKING)).astype(np.uint8)
    rgb[y0:y0 + bh, x0:x0 + bar] = tuple(int(c) for c in colour)
    cv2.putText(rgb, text, (x0 + bar + pad, y0 + pad + th), LABEL_FONT, scale, (255, 255, 255),
                weight, cv2.LINE_AA)


LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_BACKING = 0.65  # opacity of the black box under a label
_MIN_LABEL_SCALE = 0.35


def draw_label(rgb: np.ndarray, text: str) -> None:
    """White text on a semi-opaque black box in the top-left corner, in place.

    Text drawn straight onto a frame disappears on light scenes (white on a white wall) and
    an outline alone is thin at small sizes; a box at 65 % black keeps white text above 5:1
    contrast (WCAG AA) on any background, white included, while the scene still shows
    through. The text is scaled down, then cut, to fit narrow pictures; the Hershey font
    has ASCII only, so other characters become '?'."""
    h, w = rgb.shape[:2]
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    if not text.strip() or h < 4 or w < 4:
        return
    margin = max(2, min(h, w) // 100)
    scale = max(0.5, h / 900)

    def measure(t: str, sc: float) -> tuple[int, int, int, int, int]:
        weight = max(1, int(round(2 * sc)))
        (tw, th), base = cv2.getTextSize(t, LABEL_FONT, sc, weight)
        pad = max(2, int(round(5 * sc)))
        return tw, th, base, pad, weight

    tw, th, base, pad, weight = measure(text, scale)
    room = w - 2 * margin
    if tw + 2 * pad > room:
        scale = max(_MIN_LABEL_SCALE, scale * room / (tw + 2 * pad))
        tw, th, base, pad, weight = measure(text, scale)
    while tw + 2 * pad > room and len(text) > 1:
        text = text[:-4].rstrip() + "..." if len(text) > 4 else text[:-1]
        tw, th, base, pad, weight = measure(text, scale)
    x0, y0 = margin, margin
    x1, y1 = min(w, x0 + tw + 2 * pad), min(h, y0 + th + base + 2 * pad)
    box = rgb[y0:y1, x0:x1]
    box[:] = (box.astype(np.float32) * (1 - LABEL_BACKING)).astype(np.uint8)
    cv2.putText(rgb, text, (x0 + pad, y0 + pad + th), LABEL_FONT, scale, (255, 255, 255),
                weight, cv2.LINE_AA)


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
