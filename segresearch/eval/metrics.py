"""Segmentation metrics: DAVIS-style J (region) and F (boundary), and image gIoU / cIoU.

Numbers are meant to be comparable with those papers report, so the conventions follow
the DAVIS benchmark where it fixes them: an empty prediction on an empty ground truth is
perfect, boundaries are the one-pixel maps of DAVIS' ``seg2bmap`` at full resolution, and
the boundary tolerance is a disk whose radius is a fraction of the image diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

__all__ = ["boundary_f", "giou_ciou", "j_and_f", "region_j"]

DEFAULT_BOUND_TH = 0.008


def _as_masks(gt: np.ndarray, pred: np.ndarray, ndim: int, name: str) -> tuple[np.ndarray, ...]:
    """Binarise by ``> 0`` so uint8 0/255 masks and probability maps both work."""
    gt_arr = np.asarray(gt)
    pred_arr = np.asarray(pred)
    if gt_arr.shape != pred_arr.shape:
        raise ValueError(
            f"{name}: gt and pred must have the same shape, got {gt_arr.shape} and {pred_arr.shape}"
        )
    if gt_arr.ndim != ndim:
        want = "(T, H, W)" if ndim == 3 else "(H, W)"
        raise ValueError(f"{name}: masks must be {ndim}-D {want}, got shape {gt_arr.shape}")
    # Contiguous copies: cv2 rejects some strided views (e.g. transposed arrays).
    g = gt_arr if gt_arr.dtype == bool else gt_arr > 0
    p = pred_arr if pred_arr.dtype == bool else pred_arr > 0
    return np.ascontiguousarray(g), np.ascontiguousarray(p)


def region_j(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-frame mask IoU; frames where both masks are empty count as 1 (DAVIS)."""
    g, p = _as_masks(gt, pred, 3, "region_j")
    return _region_j(g, p)


def _region_j(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    j = np.ones(g.shape[0], dtype=np.float64)
    for t in range(g.shape[0]):  # frame by frame: no stack-sized temporaries
        union = np.count_nonzero(g[t] | p[t])
        if union:
            j[t] = np.count_nonzero(g[t] & p[t]) / union
    return j


def _boundaries(masks: np.ndarray) -> np.ndarray:
    """One-pixel boundary maps of a (..., H, W) array.

    A pixel is on the boundary when it differs from its right, bottom or bottom-right
    neighbour; neighbours outside the image are ignored, so the image border itself is
    never a boundary (as in DAVIS' seg2bmap). Each edge of a region is thus marked once,
    on whichever side of it comes first in raster order.
    """
    b = np.zeros_like(masks)
    b[..., :, :-1] |= masks[..., :, :-1] != masks[..., :, 1:]
    b[..., :-1, :] |= masks[..., :-1, :] != masks[..., 1:, :]
    b[..., :-1, :-1] |= masks[..., :-1, :-1] != masks[..., 1:, 1:]
    return b


def _disk(radius: float) -> np.ndarray:
    """Exact Euclidean disk, x² + y² <= r²; cv2's MORPH_ELLIPSE is coarser for small r."""
    extent = int(math.floor(radius))
    r = np.arange(-extent, extent + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2 <= radius * radius).astype(np.uint8)


def _tolerance_px(bound_th: float, height: int, width: int) -> float:
    if not bound_th >= 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * math.hypot(height, width)))


def _frame_counts(g: np.ndarray, p: np.ndarray, kernel: np.ndarray | None, ext: int) -> tuple[int, int, int, int]:
    """Boundary pixels of gt and pred, and how many of each the other side's tolerance zone
    covers, for one frame.

    Only the window around the two masks (plus the tolerance) is processed: outside it both
    masks are empty, so it holds no boundary pixel, and every disk around a boundary pixel
    lies inside the window or outside the image (where dilation adds nothing). The counts
    are those of the full frame; the work is proportional to the objects, not the image."""
    rows = np.flatnonzero(g.any(axis=1) | p.any(axis=1))
    if rows.size == 0:
        return 0, 0, 0, 0
    cols = np.flatnonzero(g.any(axis=0) | p.any(axis=0))
    h, w = g.shape
    # Boundaries reach one pixel above and left of a region; keep one pixel of context
    # below and right so edges there are seen, then the tolerance around all of it.
    y0, y1 = max(rows[0] - 1 - ext, 0), min(rows[-1] + 1 + ext, h - 1)
    x0, x1 = max(cols[0] - 1 - ext, 0), min(cols[-1] + 1 + ext, w - 1)
    gb = _boundaries(g[y0 : y1 + 1, x0 : x1 + 1])
    pb = _boundaries(p[y0 : y1 + 1, x0 : x1 + 1])
    n_gt, n_pred = int(np.count_nonzero(gb)), int(np.count_nonzero(pb))
    if n_gt == 0 or n_pred == 0:
        return n_gt, n_pred, 0, 0
    if kernel is None:
        gt_zone, pred_zone = gb, pb
    else:
        gt_zone = cv2.dilate(gb.view(np.uint8), kernel).view(bool)
        pred_zone = cv2.dilate(pb.view(np.uint8), kernel).view(bool)
    return n_gt, n_pred, int(np.count_nonzero(gb & pred_zone)), int(np.count_nonzero(pb & gt_zone))


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> np.ndarray:
    """Per-frame DAVIS boundary F-measure.

    A predicted boundary pixel counts as matched when a ground-truth boundary pixel lies
    within the tolerance disk, and vice versa for recall. ``bound_th < 1`` is a fraction of
    the image diagonal (rounded up to whole pixels); ``bound_th >= 1`` is a pixel radius.
    """
    g, p = _as_masks(gt, pred, 3, "boundary_f")
    return _boundary_f(g, p, bound_th)


def _boundary_f(g: np.ndarray, p: np.ndarray, bound_th: float) -> np.ndarray:
    num_frames, height, width = g.shape
    radius = _tolerance_px(bound_th, height, width)
    kernel = _disk(radius) if radius >= 1 else None
    ext = int(math.floor(radius)) if kernel is not None else 0
    counts = np.array([_frame_counts(g[t], p[t], kernel, ext) for t in range(num_frames)],
                      dtype=np.int64).reshape(num_frames, 4)
    n_gt, n_pred, gt_hit, pred_hit = counts.T

    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, pred_hit / np.maximum(n_pred, 1), 1.0)
        recall = np.where(n_gt > 0, gt_hit / np.maximum(n_gt, 1), 1.0)
    # One side empty: DAVIS scores the empty side 1 and the other 0, so F is 0.
    precision = np.where((n_gt == 0) & (n_pred > 0), 0.0, precision)
    recall = np.where((n_pred == 0) & (n_gt > 0), 0.0, recall)
    denom = precision + recall
    f = np.zeros(num_frames, dtype=np.float64)
    ok = denom > 0
    f[ok] = 2.0 * precision[ok] * recall[ok] / denom[ok]
    return f


def j_and_f(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> dict[str, float]:
    """J, F and their mean for one (T, H, W) query, averaged over its frames."""
    g, p = _as_masks(gt, pred, 3, "j_and_f")
    if g.shape[0] == 0:
        raise ValueError("j_and_f: no frames to score (T == 0)")
    j = float(_region_j(g, p).mean())
    f = float(_boundary_f(g, p, bound_th).mean())
    return {"J": j, "F": f, "J&F": (j + f) / 2.0}


def giou_ciou(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Referring-segmentation image metrics over a data set of (gt, pred) HxW pairs.

    gIoU averages per-image IoU (so every image weighs the same; both empty scores 1);
    cIoU divides total intersection by total union (so large objects dominate). When every
    mask is empty, cIoU is 1 for consistency with gIoU.
    """
    ious: list[float] = []
    total_inter = 0
    total_union = 0
    for index, pair in enumerate(pairs):
        try:
            gt, pred = pair
        except (TypeError, ValueError) as exc:
            raise ValueError(f"giou_ciou: item {index} is not a (gt, pred) pair") from exc
        g, p = _as_masks(gt, pred, 2, f"giou_ciou item {index}")
        inter = int(np.count_nonzero(g & p))
        union = int(np.count_nonzero(g | p))
        ious.append(inter / union if union else 1.0)
        total_inter += inter
        total_union += union
    if not ious:
        raise ValueError("giou_ciou: no (gt, pred) pairs given")
    return {
        "gIoU": float(np.mean(ious)),
        "cIoU": total_inter / total_union if total_union else 1.0,
    }
