"""GrabCut carried through a video by optical flow: a mask for every frame, without weights.

SAM 2 needs a checkpoint and, to be quick, a GPU; this segmenter is what a machine with
neither can still run, so that every frame of a video gets a mask and video metrics (J&F
over all frames) mean something on CPU. It follows SAM 2's order of work: the prompted
keyframe first, then forward to the last frame, then backward to the first.

Keyframe: GrabCut from the box (probable foreground) and a disk around the point (sure
foreground); a prompt's extra labelled points add sure-foreground (positive) or
sure-background (negative) disks, and a prompt of points alone is read as its first
positive point with the others. Each neighbouring frame: dense optical flow from the new frame to the one
before, a backward warp of the previous mask (no holes), then GrabCut on the new frame
initialised from the warped mask, inside a region around it, with the object's colours
remembered from the keyframe; the result is kept only when its area stays close to the
warp's. A shot cut (the flow explains nothing), or a warped mask whose pixels no longer
have the object's colours (it left the view or was covered), ends the track in that
direction: later masks are empty. There is no re-detection.

Deterministic: GrabCut initialises its colour models with k-means++ centres drawn from
OpenCV's random generator, which is per thread and otherwise continues from whatever ran
before in that thread (a resumed run, a Ray worker or another thread would then cut
differently). Every GrabCut call seeds it first, from the prompt's seed and the frame.

Cost per frame is bounded whatever the video length and frame size: frames are decoded one
at a time (only the keyframe is kept, for the backward pass) and no larger than the media's
working size, everything runs at a capped resolution (at most about 1 MP, the keyframe's
GrabCut included), and GrabCut sees only the region around the object.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from segresearch.core.media import Media, as_uint8_rgb
from segresearch.tools.segmenters.base import Prompt, Segmenter, VideoSession, stable_seed

__all__ = ["FLOW_METHODS", "GrabCutSegmenter", "GrabCutSession"]

FLOW_METHODS = ("dis_medium", "dis_fast", "farneback")

_DIS_PRESETS = {
    "dis_medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    "dis_fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
}

# No step works on more pixels than this, whatever ``max_side`` allows: flow and GrabCut cost
# grows with the area (and their buffers with it), while the masks, upsampled smoothly to
# the frame, gain little from more.
_MAX_PROC_PIXELS = 1_000_000
# Below this many pixels (at processing resolution) a mask carries too few colour samples for
# GrabCut's mixtures to mean anything: it is carried by the flow alone.
_MIN_REFINE_AREA = 24
# A box narrower or shorter than this (processing pixels) is taken as the mask itself.
_MIN_BOX_SIDE = 4
# Colour samples per mixture when learning GrabCut's models: more adds cost, not accuracy.
_MAX_SAMPLES = 4000
# A shot cut: after warping the previous frame by the flow, the mean grey-level error stays
# above this, and the colour histograms disagree too (both, so that fast motion or a flash
# alone does not end a track). On real footage within a shot the error is ~2-3 and the
# histogram correlation > 0.99; across cuts, errors of 28-50 and correlations of 0.4-0.65.
_CUT_RESIDUAL = 20.0
_CUT_CORRELATION = 0.85
# The target is gone (left the view, hidden, or the shot dissolved) when fewer than this share
# of the warped mask's pixels look more like the object than like its surroundings. While a
# target is tracked on real footage the share stays above ~0.7; it falls below 0.2 where the
# flow carries the mask onto something else.
_MIN_PRESENCE = 0.35


@dataclass
class _Frame:
    """One decoded frame at processing resolution; ``size`` is its original (w, h)."""

    rgb: np.ndarray
    gray: np.ndarray
    size: tuple[int, int]


class GrabCutSegmenter(Segmenter):
    """GrabCut on the prompted frame, propagated to every other frame by optical flow and
    a GrabCut refinement per frame.

    ``iterations``: GrabCut iterations on the keyframe, where the colour models start from
    nothing. ``refine_iterations``: on the other frames, iterations that re-learn the colour
    models after the first cut (which uses the remembered ones); 0 keeps them fixed.
    ``max_side``: the longest side frames are processed at, within about 1 MP whatever its
    value (masks come back at the original size). ``flow``: ``dis_medium`` (default),
    ``dis_fast`` or ``farneback``.
    ``max_growth`` / ``max_shrink``: a refined mask whose area differs from the warped one by
    more than these factors is taken as GrabCut drifting, and the warped mask is kept.
    """

    name = "grabcut"

    def __init__(
        self,
        iterations: int = 5,
        refine_iterations: int = 1,
        max_side: int = 640,
        flow: str = "dis_medium",
        max_growth: float = 1.6,
        max_shrink: float = 0.6,
    ) -> None:
        if flow not in FLOW_METHODS:
            raise ValueError(f"unknown flow method {flow!r} ({', '.join(FLOW_METHODS)})")
        if max_side < 16:
            raise ValueError(f"max_side must be at least 16, got {max_side}")
        if not (max_growth > 1.0 and 0.0 < max_shrink < 1.0):
            raise ValueError("need max_growth > 1 and 0 < max_shrink < 1")
        self.iterations = max(1, int(iterations))
        self.refine_iterations = max(0, int(refine_iterations))
        self.max_side = int(max_side)
        self.flow = flow
        self.max_growth = float(max_growth)
        self.max_shrink = float(max_shrink)

    def open(self, media: Media) -> GrabCutSession:
        return GrabCutSession(self, media)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "iterations": self.iterations,
            "refine_iterations": self.refine_iterations, "max_side": self.max_side,
            "flow": self.flow, "max_growth": self.max_growth, "max_shrink": self.max_shrink,
        }


class GrabCutSession(VideoSession):
    """Holds nothing between prompts but the media handle and a flow engine: each ``masks``
    walk keeps its own state and decodes the frames it reaches, one at a time."""

    def __init__(self, segmenter: GrabCutSegmenter, media: Media) -> None:
        self.seg = segmenter
        self.media = media
        self._dis: Any = None

    def masks(self, prompt: Prompt) -> Iterator[tuple[int, np.ndarray]]:
        """Keyframe, then forward to the last frame, then backward to the first, each frame
        once. Lazy: a frame is decoded when the walk reaches it, and only the keyframe and
        the two frames of the current step are held."""
        ids = self.media.frame_ids
        pos = self.media.index_of(prompt.frame)
        seed = prompt.base_seed()
        key_img = as_uint8_rgb(self.media.frame(prompt.frame))
        h, w = key_img.shape[:2]
        scale = min(1.0, self.seg.max_side / max(w, h), math.sqrt(_MAX_PROC_PIXELS / (w * h)))
        proc = (max(1, round(w * scale)), max(1, round(h * scale)))
        key = _prepare(key_img, proc)
        del key_img
        key_mask, key_exact = self._keyframe_mask(key, prompt, stable_seed(seed, "keyframe"))
        # The object's colours as the prompt defined them: later frames learn their
        # foreground model from these, so it cannot drift towards whatever leaked in.
        memory = _thin(key.rgb[key_mask], _MAX_SAMPLES)
        yield prompt.frame, key_exact if key_exact is not None else _to_original(key_mask, key)

        for step in (1, -1):
            prev, prev_mask = key, key_mask
            for i in range(pos + step, len(ids) if step > 0 else -1, step):
                cur = _prepare(as_uint8_rgb(self.media.frame(ids[i])), proc)
                prev_mask = self._propagate(prev, prev_mask, cur, memory, stable_seed(seed, i))
                prev = cur
                yield ids[i], _to_original(prev_mask, cur)

    def close(self) -> None:
        self._dis = None

    # -- keyframe -------------------------------------------------------------------------

    def _keyframe_mask(
        self, frame: _Frame, prompt: Prompt, seed: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The keyframe mask at processing resolution, plus the exact original-size mask when
        it is simply the box (so a tiny box comes back as itself, not a resampled blur).

        A box is clamped to the frame; one wholly outside it leaves only the point, and with
        no point the mask is empty. A point off the frame is read as the nearest edge pixel:
        the object is meant to be there, and the frame is all there is to segment."""
        ph, pw = frame.gray.shape
        ow, oh = frame.size
        sx, sy = pw / ow, ph / oh
        point = None
        if prompt.point is not None and all(math.isfinite(v) for v in prompt.point):
            point = (min(max(prompt.point[0] * sx, 0.0), pw - 1.0),
                     min(max(prompt.point[1] * sy, 0.0), ph - 1.0))
        # extra labelled points at processing scale (only those on the frame)
        extra = [(x * sx, y * sy, int(lab)) for x, y, lab in prompt.points
                 if math.isfinite(x) and math.isfinite(y) and 0 <= x < ow and 0 <= y < oh]
        if point is None and any(lab for *_, lab in extra):
            point = next((x, y) for x, y, lab in extra if lab)
        box_o = _clamp_box(prompt.box, ow, oh) if prompt.box is not None else None
        if box_o is None and point is None:
            return np.zeros((ph, pw), bool), np.zeros((oh, ow), bool)
        if box_o is None:
            assert point is not None
            box = _box_around_point(frame.rgb, point)
        else:
            x1, y1, x2, y2 = box_o
            box = _clamp_box((x1 * sx, y1 * sy, (x2 + 1) * sx - 1, (y2 + 1) * sy - 1), pw, ph)
            assert box is not None
            if box[2] - box[0] + 1 < _MIN_BOX_SIDE or box[3] - box[1] + 1 < _MIN_BOX_SIDE:
                return _box_mask(box, pw, ph), _box_mask(box_o, ow, oh)
        mask = _grabcut_box(frame.rgb, box, point, self.seg.iterations, seed, extra)
        if mask is None:  # nothing separable: the box is the best mask there is
            exact = _box_mask(box_o, ow, oh) if box_o is not None else None
            return _box_mask(box, pw, ph), exact
        return mask, None

    # -- propagation ----------------------------------------------------------------------

    def _propagate(
        self, prev: _Frame, prev_mask: np.ndarray, cur: _Frame, memory: np.ndarray, seed: int
    ) -> np.ndarray:
        """The previous mask carried to ``cur`` (``memory``: the object's colours at the
        keyframe; ``seed``: this frame's, for GrabCut). An empty mask stays empty: a target
        that left the view, or was lost at a cut, is not re-acquired (flow has nothing to
        carry, and searching the frame for it would be a detector, not propagation)."""
        if not prev_mask.any():
            return prev_mask
        flow = self._flow(cur.gray, prev.gray)
        h, w = prev_mask.shape
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = gx + flow[..., 0], gy + flow[..., 1]
        if _is_cut(prev, cur, mx, my):
            return np.zeros_like(prev_mask)
        # Backward warp: every new pixel looks up where it came from, so the mask has no
        # holes where a forward splat would leave them.
        warped = cv2.remap(prev_mask.astype(np.float32), mx, my, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0.5
        area = int(warped.sum())
        if area < _MIN_REFINE_AREA:
            return warped
        refined = _grabcut_refine(cur.rgb, warped, memory, self.seg.refine_iterations, seed)
        if refined is None:
            return warped
        if not refined.any():  # the object's colours are no longer where the flow puts it
            return refined
        ratio = refined.sum() / area
        if not (self.seg.max_shrink <= ratio <= self.seg.max_growth):
            return warped
        return refined

    def _flow(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Per-pixel displacement with ``src(x) ≈ dst(x + flow(x))``."""
        if self.seg.flow == "farneback":
            return cv2.calcOpticalFlowFarneback(src, dst, None, 0.5, 4, 15, 3, 5, 1.2, 0)
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[self.seg.flow])
        return self._dis.calc(src, dst, None)


def _prepare(rgb: np.ndarray, proc: tuple[int, int]) -> _Frame:
    """A frame at the processing size ``proc`` (w, h), which the keyframe sets: flow then
    compares like with like even if a folder mixes frame sizes."""
    size = (rgb.shape[1], rgb.shape[0])
    if size != proc:
        rgb = cv2.resize(rgb, proc, interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(rgb)
    return _Frame(rgb=rgb, gray=cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size=size)


def _to_original(mask: np.ndarray, frame: _Frame) -> np.ndarray:
    """A smooth upsample and threshold, so edges are not blocky at the original size."""
    if (mask.shape[1], mask.shape[0]) == frame.size:
        return mask.copy()
    up = cv2.resize(mask.astype(np.float32), frame.size, interpolation=cv2.INTER_LINEAR)
    return up > 0.5


def _is_cut(prev: _Frame, cur: _Frame, mx: np.ndarray, my: np.ndarray) -> bool:
    """Whether ``cur`` starts a new shot: the flow cannot rebuild it from ``prev`` and its
    colours differ as a whole. Carrying a mask across a cut pins it on whatever happens to
    sit where the object was."""
    rebuilt = cv2.remap(prev.gray, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if cv2.absdiff(rebuilt, cur.gray).mean() <= _CUT_RESIDUAL:
        return False
    hists = []
    for f in (prev, cur):
        hsv = cv2.cvtColor(f.rgb, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
        hists.append(cv2.normalize(hist, hist))
    return cv2.compareHist(hists[0], hists[1], cv2.HISTCMP_CORREL) < _CUT_CORRELATION


# -- GrabCut helpers ----------------------------------------------------------------------


def _clamp_box(
    box: tuple[float, float, float, float], w: int, h: int
) -> tuple[int, int, int, int] | None:
    """Inclusive integer pixel box inside a w×h frame (corners rounded, as ``mask_box``
    reports them); None when nothing of it lies in the frame."""
    if not all(math.isfinite(v) for v in box):
        return None
    x1, x2 = sorted((box[0], box[2]))
    y1, y2 = sorted((box[1], box[3]))
    ix1, iy1 = max(0, round(x1)), max(0, round(y1))
    ix2, iy2 = min(w - 1, round(x2)), min(h - 1, round(y2))
    if ix2 < ix1 or iy2 < iy1:
        return None
    return ix1, iy1, ix2, iy2


def _box_mask(box: tuple[int, int, int, int], w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[box[1] : box[3] + 1, box[0] : box[2] + 1] = True
    return m


def _roi(
    x1: int, y1: int, x2: int, y2: int, pad: int, w: int, h: int
) -> tuple[int, int, int, int]:
    """Half-open slice bounds of an inclusive box grown by ``pad`` and kept in the frame."""
    return max(0, x1 - pad), max(0, y1 - pad), min(w, x2 + pad + 1), min(h, y2 + pad + 1)


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _thin(samples: np.ndarray, n: int) -> np.ndarray:
    """At most about ``n`` samples, evenly strided (deterministic, keeps spatial spread)."""
    return samples[:: max(1, len(samples) // n)]


def _grabcut(seed: int, img: np.ndarray, tri: np.ndarray, bgd: np.ndarray, fgd: np.ndarray,
             iterations: int, mode: int) -> None:
    """``cv2.grabCut`` with OpenCV's generator seeded just before, in the calling thread
    (``cv2.setRNGSeed`` reaches only the thread that calls it), so nothing that ran earlier
    in this thread, or concurrently in another, changes the cut."""
    cv2.setRNGSeed(seed)
    cv2.grabCut(img, tri, None, bgd, fgd, iterations, mode)


def _grabcut_box(
    rgb: np.ndarray,
    box: tuple[int, int, int, int],
    point: tuple[float, float] | None,
    iterations: int,
    rng_seed: int,
    extra: list[tuple[float, float, int]] | None = None,
) -> np.ndarray | None:
    """GrabCut with the box as probable foreground and a disk at the point as sure
    foreground, inside the box plus a margin: the background model is learnt from what
    surrounds the object rather than from the whole frame, which is both closer to what the
    boundary has to separate and cheaper. ``extra``: labelled points ``(x, y, 1 or 0)``
    inside that region, disks of sure foreground or sure background (a correction's
    clicks). None when nothing beyond the seed separates."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1 + 1, y2 - y1 + 1
    rx1, ry1, rx2, ry2 = _roi(x1, y1, x2, y2, max(8, round(0.25 * max(bw, bh))), w, h)
    tri = np.full((ry2 - ry1, rx2 - rx1), cv2.GC_BGD, np.uint8)
    tri[y1 - ry1 : y2 - ry1 + 1, x1 - rx1 : x2 - rx1 + 1] = cv2.GC_PR_FGD
    if point is not None:
        px, py = round(point[0]), round(point[1])
        if x1 <= px <= x2 and y1 <= py <= y2:
            cv2.circle(tri, (px - rx1, py - ry1), max(1, min(bw, bh) // 20), cv2.GC_FGD, -1)
    for ex, ey, lab in extra or ():
        qx, qy = round(ex), round(ey)
        if rx1 <= qx < rx2 and ry1 <= qy < ry2:
            cv2.circle(tri, (qx - rx1, qy - ry1), max(1, min(bw, bh) // 20),
                       cv2.GC_FGD if lab else cv2.GC_BGD, -1)
    seed = tri == cv2.GC_FGD
    if not (tri == cv2.GC_BGD).any():  # the box fills the frame: no background to model
        return None
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        _grabcut(rng_seed, np.ascontiguousarray(rgb[ry1:ry2, rx1:rx2]), tri, bgd, fgd, iterations,
                 cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # too few pixels of one kind to fit a colour model
        return None
    fg = (tri == cv2.GC_FGD) | (tri == cv2.GC_PR_FGD)
    if not (fg & ~seed).any():
        return None
    out = np.zeros((h, w), bool)
    out[ry1:ry2, rx1:rx2] = fg
    return out


def _box_around_point(rgb: np.ndarray, point: tuple[float, float]) -> tuple[int, int, int, int]:
    """A box for a point-only prompt: the extent of the colour-homogeneous region the point
    falls in (flood fill within a fixed colour distance of the clicked pixel), grown by a
    margin so GrabCut can reach the object's other colours, and kept between 10 % and 60 %
    of the frame on each axis. The flood fill adapts the box to the object where the object
    stands out; the bounds keep it sane where the fill leaks into the background or stops on
    a small patch of a textured object."""
    h, w = rgb.shape[:2]
    px, py = min(w - 1, max(0, round(point[0]))), min(h - 1, max(0, round(point[1])))
    smooth = cv2.GaussianBlur(rgb, (5, 5), 0)
    ff = np.zeros((h + 2, w + 2), np.uint8)
    tol = (20, 20, 20)
    flags = 8 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    cv2.floodFill(smooth, ff, (px, py), (0, 0, 0), tol, tol, flags)
    ys, xs = np.nonzero(ff[1:-1, 1:-1])
    x1, x2, y1, y2 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    mx, my = round(0.2 * (x2 - x1 + 1)) + 2, round(0.2 * (y2 - y1 + 1)) + 2
    x1, x2 = _fit_span(x1 - mx, x2 + mx, px, w)
    y1, y2 = _fit_span(y1 - my, y2 + my, py, h)
    return x1, y1, x2, y2


def _fit_span(lo: int, hi: int, centre: int, extent: int) -> tuple[int, int]:
    """``[lo, hi]`` resized to between 10 % and 60 % of ``extent`` (around ``centre`` when it
    must change) and moved inside ``[0, extent)``."""
    small, large = max(_MIN_BOX_SIDE, round(0.1 * extent)), max(1, round(0.6 * extent))
    side = hi - lo + 1
    if side > large:
        lo = min(max(lo, centre - large // 2), hi - large + 1)
        hi = lo + large - 1
    elif side < small:
        lo = centre - small // 2
        hi = lo + small - 1
    shift = max(0, -lo) - max(0, hi - (extent - 1))
    return max(0, lo + shift), min(extent - 1, hi + shift)


def _learn_models(
    fg: np.ndarray, bg: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """GrabCut's colour mixtures (background, foreground) fitted to the given colour samples
    only (N×3 uint8 each), or None with too few samples (5 per mixture). OpenCV learns models
    only from a labelled image, so the samples are laid out as a one-pixel-wide image marked
    sure foreground and sure background; the graph cut that follows on it changes nothing.
    Samples are thinned to a fixed count so the cost does not grow with the object."""
    if len(fg) < 5 or len(bg) < 5:
        return None
    fg, bg = _thin(fg, _MAX_SAMPLES), _thin(bg, _MAX_SAMPLES)
    img = np.concatenate([fg, bg])[:, None, :]
    tri = np.concatenate([np.full(len(fg), cv2.GC_FGD, np.uint8),
                          np.full(len(bg), cv2.GC_BGD, np.uint8)])[:, None]
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        _grabcut(seed, np.ascontiguousarray(img), tri, bgd, fgd, 1, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    return bgd, fgd


def _grabcut_refine(
    rgb: np.ndarray, warped: np.ndarray, memory: np.ndarray, iterations: int, seed: int
) -> np.ndarray | None:
    """GrabCut on a new frame from the mask the flow carried there; an empty mask when the
    object is not there any more; None when GrabCut cannot run.

    Trimap: deep inside the warped mask is sure foreground (the flow cannot be wrong by that
    much, and it stops GrabCut from eating the object); the rest of the mask is probable
    foreground; a ring around it, as wide as the expected flow error, is probable background,
    so the boundary can move that far; beyond is background. Sizes scale with the object
    (√area), so small and large objects get the same relative slack. Only the ring's bounding
    box plus a margin goes through GrabCut.

    Colour models for the first cut come from trusted pixels only: the foreground from the
    keyframe's mask (``memory``), the background from beyond the ring. Plain GrabCut would
    learn the background from the ring too, which holds exactly the object parts the warp
    missed (thin spikes, a lagging edge): its background model then explains the object's
    colour, those parts are cut off, the next ring holds more of them, and the mask shrinks
    frame after frame. A foreground model learnt from the warped mask instead would take in
    whatever leaked in last frame and keep it. ``iterations`` further rounds re-learn both
    models from that first cut, so lighting that has changed since the keyframe is followed.
    Parts of the result not connected to the sure foreground are dropped: specks of the
    object's colour in the background are not the object, and carried on they would spread.

    Before any cut, the same models say whether the object is still there: when most of the
    warped mask looks like background, the flow has carried it onto something else (the
    object left the view or was covered, the shot changed), and the sure-foreground core
    would otherwise pin the mask in place for good.
    """
    h, w = warped.shape
    side = math.sqrt(float(warped.sum()))
    ring = int(np.clip(round(0.1 * side), 2, 60))
    core = int(np.clip(round(0.2 * side), 1, 80))
    ys, xs = np.nonzero(warped)
    rx1, ry1, rx2, ry2 = _roi(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()),
                              ring + max(6, ring), w, h)
    crop = np.ascontiguousarray(rgb[ry1:ry2, rx1:rx2])
    in_mask = warped[ry1:ry2, rx1:rx2]
    m8 = in_mask.astype(np.uint8)
    in_ring = cv2.dilate(m8, _disk(ring)) > 0
    in_core = cv2.erode(m8, _disk(core), borderValue=1) > 0
    models = _learn_models(memory if len(memory) >= 5 else crop[in_mask], crop[~in_ring],
                           stable_seed(seed, "models"))
    if models is None:
        return None
    tri = np.full(crop.shape[:2], cv2.GC_BGD, np.uint8)
    tri[in_ring] = cv2.GC_PR_BGD
    tri[in_mask] = cv2.GC_PR_FGD
    tri[in_core] = cv2.GC_FGD
    bgd, fgd = models
    colours = _thin(crop[in_mask], _MAX_SAMPLES).astype(np.float64)
    if (_gmm_loglik(fgd, colours) > _gmm_loglik(bgd, colours)).mean() < _MIN_PRESENCE:
        return np.zeros_like(warped)
    try:
        _grabcut(stable_seed(seed, "cut"), crop, tri, bgd, fgd, 1, cv2.GC_EVAL_FREEZE_MODEL)
        if iterations > 0:
            _grabcut(stable_seed(seed, "refine"), crop, tri, bgd, fgd, iterations, cv2.GC_EVAL)
    except cv2.error:
        return None
    fg = (tri == cv2.GC_FGD) | (tri == cv2.GC_PR_FGD)
    fg = _connected_to(fg, in_core if in_core.any() else in_mask)
    out = np.zeros((h, w), bool)
    out[ry1:ry2, rx1:rx2] = fg
    return out


def _gmm_loglik(model: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Log-likelihood of colours ``x`` (N×3) under a GrabCut colour model (OpenCV's layout:
    5 weights, 5 means, 5 covariances)."""
    weights = model[0, :5]
    means = model[0, 5:20].reshape(5, 3)
    covs = model[0, 20:65].reshape(5, 3, 3)
    p = np.zeros(len(x))
    for w, mu, cov in zip(weights, means, covs, strict=True):
        if w <= 0:
            continue
        d = x - mu
        m = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        p += w * np.exp(-0.5 * m) / math.sqrt((2 * math.pi) ** 3 * np.linalg.det(cov))
    return np.log(p + 1e-300)


def _connected_to(mask: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that touch ``anchor``."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    keep = np.zeros(n, bool)
    keep[np.unique(labels[anchor & mask])] = True
    keep[0] = False
    return keep[labels]
