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

Model families write positions in other conventions too (:data:`CONVENTIONS`): Gemini puts y
first (``[ymin, xmin, ymax, xmax]`` and ``[y, x]`` on 0–1000), and most other models are
asked for fractions 0–1 of the frame. The graph converts such an answer once, where it
reads it (:func:`to_internal`), onto one of the two grids above, so everything after the
answer (the state's ``answer``, reviews, SAM 2 prompts, evaluation) keeps working on an
x-first grid and the published values stay exactly what they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

# The grids answers are kept on (x first): Qwen3-VL's 0-1000 and Qwen2.5-VL's shown pixels.
CoordStyle = Literal["qwen3", "qwen25"]
COORD_STYLES: tuple[str, ...] = get_args(CoordStyle)
# The conventions a model may answer in; each lands on one of the grids above.
Convention = Literal["qwen3", "qwen25", "gemini", "normalized"]
CONVENTIONS: tuple[str, ...] = get_args(Convention)
# The setting that stands for "the model family's own convention" (resolved per model).
AUTO = "auto"
# Qwen3-VL's grid: positions are thousandths of the frame's width and height.
QWEN3_GRID = 1000


def _convention(style: str) -> str:
    """``style`` when it is a convention; otherwise the ``ValueError`` every reader raises."""
    if style in CONVENTIONS:
        return style
    if style == AUTO:
        raise ValueError("coord_style 'auto' stands for the model family's convention; resolve "
                         "it for the model first (qwen3, qwen25, gemini or normalized)")
    raise ValueError(f"coord_style must be one of 'qwen3', 'qwen25', 'gemini' or 'normalized', "
                     f"not {style!r}")


def internal_style(style: str) -> CoordStyle:
    """The grid an answer in convention ``style`` is kept on: Qwen2.5-VL's shown pixels for
    ``qwen25``, the 0-1000 grid for every other convention."""
    return "qwen25" if _convention(style) == "qwen25" else "qwen3"


def to_internal(
    style: str, box: Sequence[float], point: Sequence[float]
) -> tuple[list[float], list[float], CoordStyle]:
    """An answer written in convention ``style`` as ``(bbox_2d, point_2d, grid)`` x-first on
    the grid it is kept on (:func:`internal_style`).

    ``qwen3`` and ``qwen25`` come back as they were written (the same numbers, so the
    published float32 products stay bit-identical); ``gemini`` swaps each y, x pair;
    ``normalized`` fractions are multiplied by 1000 and stay floats (rounding is the
    graph's, as for any answer). Non-numeric values are the caller's to refuse first."""
    conv = _convention(style)
    if len(box) != 4 or len(point) != 2:
        raise ValueError(f"an answer is a box of 4 values and a point of 2; got {len(box)} and "
                         f"{len(point)}")
    b, p = list(box), list(point)
    if conv == "gemini":
        b, p = [b[1], b[0], b[3], b[2]], [p[1], p[0]]
    elif conv == "normalized":
        b, p = [v * QWEN3_GRID for v in b], [v * QWEN3_GRID for v in p]
    return b, p, internal_style(conv)


def describe_convention(style: str, shown_size: int, frame_size: int | None = None) -> str:
    """The sentence that tells a model how to write ``bbox_2d`` and ``point_2d`` in
    ``style`` (the answer tool's description and the tools-mode prompt use it), for an
    answer about an image shown at ``shown_size``² (only Qwen2.5-VL's pixels depend on it).
    With ``frame_size`` (the sampled frames' side, when it differs), the pixel convention
    names both images, so one sentence holds for the whole run: the prompt and the tools
    then never disagree, and the tools a model is given do not change between turns."""
    conv = _convention(style)
    if conv == "qwen3":
        return ("Coordinates are integers from 0 to 1000 relative to the image width and height "
                "(0 is the left or top edge, 1000 the right or bottom edge): bbox_2d is "
                "[x1, y1, x2, y2], the top-left and bottom-right corners, and point_2d is [x, y].")
    if conv == "qwen25":
        n = int(shown_size)
        if frame_size is not None and int(frame_size) != n:
            f = int(frame_size)
            return (f"Coordinates are integer pixels of the image the answer is about, as shown to "
                    f"you: the keyframe at {n}x{n} (0 to {n}), or a sampled frame at {f}x{f} (0 to {f}) "
                    "if you answer without choosing a keyframe: bbox_2d is [x1, y1, x2, y2], the "
                    "top-left and bottom-right corners, and point_2d is [x, y].")
        return (f"Coordinates are integer pixels of the {n}x{n} image as shown to you (0 to {n}): "
                "bbox_2d is [x1, y1, x2, y2], the top-left and bottom-right corners, and point_2d "
                "is [x, y].")
    if conv == "gemini":
        return ("Coordinates are integers from 0 to 1000 relative to the image height and width, "
                "y first: bbox_2d is [ymin, xmin, ymax, xmax] and point_2d is [y, x].")
    return ("Coordinates are decimal fractions from 0 to 1 of the image width and height "
            "(0 is the left or top edge, 1 the right or bottom edge): bbox_2d is [x1, y1, x2, y2], "
            "the top-left and bottom-right corners, and point_2d is [x, y], e.g. [0.25, 0.4].")


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
        """The grid an answer in convention ``style`` is kept on (after :func:`to_internal`)
        when the model was shown a ``shown_size``² image (only Qwen2.5-VL's absolute pixels
        depend on it; every other convention is kept on the 0–1000 grid)."""
        if internal_style(style) == "qwen25":
            return cls("qwen25", int(shown_size))
        return cls("qwen3", QWEN3_GRID)

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
