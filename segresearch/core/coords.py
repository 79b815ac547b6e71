"""The grid a model writes positions on, and the one way to and from frame pixels.

Qwen3-VL answers on a 0–1000 grid across the frame; Qwen2.5-VL answers in pixels of the
square image it was shown (the keyframe's side, or the frame side when it picked none).
Both are a square grid of ``size`` cells per axis laid over the original frame, so one
object, :class:`CoordFrame`, serves both, and every conversion in the package goes through it
(the graph's answer and review, SAM 2 prompts, evaluation, RL ground truth, synthetic data).

Two readings of the same answer exist on purpose, and they are two methods here rather than
two formulas in two files:

* :meth:`CoordFrame.sam2_box` / :meth:`CoordFrame.sam2_point` are the published
  post-segmentation's rule, kept exactly:
  ``float32(value) × float32(width / size)``, unrounded. SAM 2's masks depend on these
  floats, and ours must equal the published pipeline's bit for bit.
* :meth:`CoordFrame.to_px` is the pixel index a person is shown (``answer_px``, the review
  payload, reports): that same float rounded half to even and clamped into the frame, so the
  integer shown is always the pixel SAM 2 was prompted nearest to.

:meth:`CoordFrame.from_px` goes back (ground truth from masks, a reviewer's edit):
``round(pixel / width × size)``, divided first as RL ground truth always computed it (a
different order can round an exact half the other way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

CoordStyle = Literal["qwen3", "qwen25"]
COORD_STYLES: tuple[str, ...] = get_args(CoordStyle)
# Qwen3-VL's grid: positions are thousandths of the frame's width and height.
QWEN3_GRID = 1000


@dataclass(frozen=True)
class CoordFrame:
    """A model's coordinate grid: ``size`` cells along each axis of the original frame.

    Values are laid out x, y, x, y… (a ``bbox_2d`` or a ``point_2d``), so one call converts a
    box or a point and the axes cannot be swapped by a caller."""

    style: CoordStyle
    size: int

    def __post_init__(self) -> None:
        if self.style not in COORD_STYLES:
            raise ValueError(f"coord_style must be 'qwen3' or 'qwen25', not {self.style!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"the coordinate grid needs a positive integer size, not {self.size!r}")
        if self.style == "qwen3" and self.size != QWEN3_GRID:
            raise ValueError(f"qwen3 coordinates are on a {QWEN3_GRID} grid, not {self.size}")

    @classmethod
    def of(cls, style: str, shown_size: int) -> CoordFrame:
        """The grid for ``style`` when the model was shown a ``shown_size``² image (only
        Qwen2.5-VL's absolute pixels depend on it; Qwen3-VL's grid is always 0–1000)."""
        if style == "qwen3":
            return cls("qwen3", QWEN3_GRID)
        if style == "qwen25":
            return cls("qwen25", int(shown_size))
        raise ValueError(f"coord_style must be 'qwen3' or 'qwen25', not {style!r}")

    def scales(self, width: int, height: int) -> np.ndarray:
        """Per-axis factors to pixels, ``[width / size, height / size]`` as float32: the
        published script divides in float64 and stores the factor as float32."""
        return np.array([width / self.size, height / self.size], dtype=np.float32)

    def sam2_box(self, box: object, width: int, height: int) -> np.ndarray:
        """A ``bbox_2d`` in original-frame pixels as SAM 2 receives it: float32, unrounded,
        unclamped, non-finite values passed through (callers decide what a NaN means).
        Broadcasting as the published script's ``np.array(box, float32) × [sx, sy, sx, sy]``,
        so a value it could not multiply raises the same ``ValueError`` / ``TypeError``."""
        return np.array(box, dtype=np.float32) * np.tile(self.scales(width, height), 2)

    def sam2_point(self, point: object, width: int, height: int) -> np.ndarray:
        """A ``point_2d`` as SAM 2 receives it, shape ``(1, 2)``: the published
        ``np.array([point], float32) × [sx, sy]`` (see :meth:`sam2_box`)."""
        return np.array([point], dtype=np.float32) * self.scales(width, height)

    def to_sam2(self, values: Sequence[float], width: int, height: int) -> np.ndarray:
        """Values laid out x, y, x, y… scaled the way :meth:`sam2_box` and
        :meth:`sam2_point` scale them (the same float32 products), flat."""
        flat = np.asarray(values, dtype=np.float32).reshape(-1)
        if flat.size % 2:
            raise ValueError(f"coordinates come in x, y pairs; got {flat.size} values")
        return flat * np.tile(self.scales(width, height), flat.size // 2)

    def to_px(self, values: Sequence[float], width: int, height: int) -> list[int]:
        """``values`` (x, y, …) as pixel indices of the original frame: the :meth:`to_sam2`
        value rounded half to even, clamped to ``0…width-1`` / ``0…height-1``."""
        scaled = self.to_sam2(values, width, height)
        limits = (width - 1, height - 1)
        return [int(min(max(round(float(v)), 0), limits[i % 2])) for i, v in enumerate(scaled)]

    def from_px(self, values: Sequence[float], width: int, height: int) -> list[int]:
        """Pixels (x, y, …) of a ``width``×``height`` frame as integers on this grid,
        ``round(pixel / side × size)`` (half to even), unclamped."""
        if len(values) % 2:
            raise ValueError(f"coordinates come in x, y pairs; got {len(values)} values")
        sides = (width, height)
        return [int(round(v / sides[i % 2] * self.size)) for i, v in enumerate(values)]


# The default grid (Qwen3-VL), for callers that take a frame as an optional argument.
QWEN3 = CoordFrame("qwen3", QWEN3_GRID)
