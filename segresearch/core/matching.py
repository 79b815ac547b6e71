"""Matching predicted objects to ground-truth objects one to one.

An answer that names several objects is scored on the union of its masks (what MeViS and
ReVOS define), but the union hides whether each object was found: two boxes swapped
between two people give the same union. Per-object numbers pair each prediction with at
most one ground-truth object so that the summed IoU is largest (the Hungarian method,
SciPy's ``linear_sum_assignment``), and divide by the larger of the two counts, so that
a missing object and an extra one both cost a full zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ObjectMatch:
    """The pairing of ``n_pred`` predictions with ``n_gt`` ground-truth objects."""

    pairs: tuple[tuple[int, int, float], ...]  # (prediction, ground truth, IoU), by prediction
    n_pred: int
    n_gt: int

    @property
    def mean_iou(self) -> float:
        """Summed IoU of the pairs over the larger count: 1 only for a perfect one-to-one
        answer; 0 when either side is empty (both empty: 1, nothing was missed)."""
        if self.n_pred == 0 and self.n_gt == 0:
            return 1.0
        return sum(iou for _, _, iou in self.pairs) / max(self.n_pred, self.n_gt)

    def as_dict(self) -> dict[str, object]:
        return {"pairs": [[p, g, round(iou, 6)] for p, g, iou in self.pairs],
                "n_pred": self.n_pred, "n_gt": self.n_gt, "mean_iou": round(self.mean_iou, 6)}


def match_objects(iou: np.ndarray | Sequence[Sequence[float]]) -> ObjectMatch:
    """Pair predictions (rows) with ground-truth objects (columns) of an IoU matrix.
    Pairs with IoU 0 are dropped: they match nothing."""
    m = np.asarray(iou, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"an IoU matrix must have two dimensions, got shape {m.shape}")
    n_pred, n_gt = m.shape
    if n_pred == 0 or n_gt == 0:
        return ObjectMatch((), n_pred, n_gt)
    if not np.all(np.isfinite(m)):
        raise ValueError("an IoU matrix must hold finite numbers")
    from scipy.optimize import linear_sum_assignment  # heavy: 0.4 s import

    rows, cols = linear_sum_assignment(m, maximize=True)
    pairs = tuple((int(r), int(c), float(m[r, c])) for r, c in zip(rows, cols, strict=True) if m[r, c] > 0)
    return ObjectMatch(pairs, n_pred, n_gt)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree fully (1.0)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union
