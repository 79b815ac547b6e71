"""Synthetic videos of moving shapes with exact ground-truth masks.

The demo, the tests and the benchmarks need real media whose right answer is known
without any download: coloured shapes moving over a textured background, written as a
folder of frames or a video file, with one boolean mask per object and frame.
Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segresearch.core.coords import QWEN3


@dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # circle | square | triangle | star
    colour: tuple[int, int, int]  # RGB
    start: tuple[float, float]  # centre at frame 0, as a fraction of width/height
    velocity: tuple[float, float]  # fraction of width/height per frame
    size: float  # radius as a fraction of the shorter side


DEFAULT_SHAPES = (
    Shape("red circle", "circle", (220, 40, 40), (0.18, 0.30), (0.006, 0.004), 0.11),
    Shape("blue square", "square", (40, 80, 220), (0.20, 0.72), (0.018, -0.004), 0.10),
    Shape("yellow star", "star", (240, 200, 30), (0.78, 0.30), (-0.008, 0.006), 0.12),
    Shape("green triangle", "triangle", (40, 170, 70), (0.80, 0.74), (-0.004, -0.008), 0.11),
)


def _polygon(kind: str, cx: float, cy: float, r: float) -> np.ndarray:
    if kind == "square":
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    elif kind == "triangle":
        pts = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    elif kind == "star":
        pts = []
        for i in range(10):
            a = np.deg2rad(-90 + 36 * i)
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
    else:
        raise ValueError(kind)
    return np.round(np.array(pts)).astype(np.int32)


def _background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([170 + 40 * xx / w, 175 + 30 * yy / h, 160 + 20 * (xx + yy) / (w + h)], -1)
    noise = rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def render_scene(
    n_frames: int = 24,
    size: tuple[int, int] = (480, 320),
    shapes: Sequence[Shape] = DEFAULT_SHAPES,
    seed: int = 0,
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Frames (RGB uint8, H×W×3) and masks {shape name: bool (T, H, W)}; later shapes
    occlude earlier ones and the masks account for it."""
    w, h = size
    rng = np.random.default_rng(seed)
    bg = _background(w, h, rng)
    frames: list[np.ndarray] = []
    masks = {s.name: np.zeros((n_frames, h, w), bool) for s in shapes}
    side = min(w, h)
    for t in range(n_frames):
        img = bg.copy()
        label = np.full((h, w), -1, np.int16)
        for k, s in enumerate(shapes):
            cx = (s.start[0] + s.velocity[0] * t) * w
            cy = (s.start[1] + s.velocity[1] * t) * h
            r = s.size * side
            m = np.zeros((h, w), np.uint8)
            if s.kind == "circle":
                cv2.circle(m, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
            else:
                cv2.fillPoly(m, [_polygon(s.kind, cx, cy, r)], 1)
            label[m > 0] = k
            shade = rng.normal(0, 4, (h, w, 1))
            colour = np.clip(np.array(s.colour, np.float32) + shade, 0, 255).astype(np.uint8)
            img[m > 0] = colour[m > 0]
        for k, s in enumerate(shapes):
            masks[s.name][t] = label == k
        frames.append(img)
    return frames, masks


def write_frames(frames: Sequence[np.ndarray], folder: str | Path, ext: str = ".jpg") -> list[Path]:
    """Frames as ``00000.jpg, 00001.jpg, ...`` (the DAVIS / OK-VOS layout)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        p = folder / f"{i:05d}{ext}"
        Image.fromarray(f).save(p, quality=95) if ext == ".jpg" else Image.fromarray(f).save(p)
        paths.append(p)
    return paths


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 12.0) -> Path:
    """An mp4 (or avi by suffix) through OpenCV's bundled FFmpeg."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    vw = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
    if not vw.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def write_masks(masks: np.ndarray, folder: str | Path) -> None:
    """One 0/255 PNG per frame, named like the frames."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        Image.fromarray(m.astype(np.uint8) * 255).save(folder / f"{i:05d}.png")


def mask_box(mask: np.ndarray) -> list[int] | None:
    """Inclusive pixel box ``[x1, y1, x2, y2]`` of a 2-D mask (None when empty)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def grid_answer(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """A mask's box and box centre on Qwen3-VL's 0-1000 grid: the answer a perfect model
    gives for it (scripted turns and cassettes in tests)."""
    h, w = mask.shape
    box = mask_box(mask)
    if box is None:
        raise ValueError("the mask is empty")
    grid = QWEN3.from_px(box, w, h)
    return grid, [(grid[0] + grid[2]) // 2, (grid[1] + grid[3]) // 2]


def inner_point(mask: np.ndarray) -> list[int] | None:
    """The mask pixel farthest from the mask's border (distance transform maximum)."""
    if not mask.any():
        return None
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [int(x), int(y)]
