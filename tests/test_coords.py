"""The coordinate grid (``segresearch.core.coords``): one object for every conversion between a
model's coordinates and frame pixels, pinned to the published post-segmentation's rule
(``np.array(value, float32) × np.array([w / 1000, h / 1000, …], float32)``, unrounded)."""

from __future__ import annotations

import numpy as np
import pytest

from segresearch.core.coords import (
    CONVENTIONS,
    QWEN3,
    CoordFrame,
    describe_convention,
    internal_style,
    to_internal,
)
from segresearch.rl.ground_truth import build_ground_truth
from segresearch.tools.segmenters import prompt_from_answer

# (width, height): the test scenes, OK-VOS-like videos, odd and tiny frames, a frame wider
# than the grid has cells (a pixel is then finer than a grid step)
SIZES = [(160, 120), (854, 480), (1280, 720), (1920, 1080), (333, 77), (1, 1), (999, 1001)]
GRID = range(0, 1001)


def _published(values, w, h, size=1000):
    """The published script's scaling, restated for a flat x, y, … list."""
    factors = np.array([w / size, h / size] * (len(values) // 2), dtype=np.float32)
    return np.array(values, dtype=np.float32) * factors


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_sam2_values_are_the_published_float32_products(w, h):
    for v in GRID:
        box = [v, 1000 - v, v, v // 2]
        want = _published(box, w, h)
        assert np.array_equal(QWEN3.sam2_box(box, w, h), want)
        assert QWEN3.sam2_box(box, w, h).dtype == np.float32
        got_point = QWEN3.sam2_point(box[:2], w, h)
        assert got_point.shape == (1, 2) and np.array_equal(got_point[0], want[:2])


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_display_pixels_are_the_sam2_values_rounded_and_clamped(w, h):
    """``answer_px`` is the pixel nearest to the point SAM 2 is prompted with: the published
    float rounded half to even, clamped into the frame; never more than half a pixel away
    from the exact ``value × side / 1000`` unless it was clamped."""
    values = [c for v in GRID for c in (v, 1000 - v)]
    got = QWEN3.to_px(values, w, h)
    published = _published(values, w, h)
    for i, (g, p) in enumerate(zip(got, published, strict=True)):
        side = (w, h)[i % 2]
        assert g == min(max(round(float(p)), 0), side - 1)
        exact = values[i] * side / 1000
        assert g == side - 1 or abs(g - exact) <= 0.5 + 1e-6


def test_the_graph_prompt_and_the_pixels_shown_are_one_rule():
    """The answer the graph shows in pixels and the prompt it segments with come from the
    same float values (the second path only rounds)."""
    w, h = 854, 480
    for v in range(1, 1001, 7):  # a (0, 0) point is no prompt
        ans = {"keyframe": 0, "bbox_2d": [v, v // 3, min(1000, v + 5), 1000 - v], "point_2d": [v, v]}
        prompt = prompt_from_answer(ans, w, h)
        assert prompt is not None
        box = QWEN3.to_px(ans["bbox_2d"], w, h)
        if prompt.box is not None:
            assert box == [min(max(round(c), 0), s - 1)
                           for c, s in zip(prompt.box, (w, h, w, h), strict=True)]
        assert prompt.point is not None
        assert QWEN3.to_px(ans["point_2d"], w, h) == [min(max(round(c), 0), s - 1)
                                                      for c, s in zip(prompt.point, (w, h), strict=True)]


def test_qwen25_answers_are_pixels_of_the_image_shown():
    keyframe = CoordFrame.of("qwen25", 864)
    assert keyframe == CoordFrame("qwen25", 864)
    # x=432 is the middle of the 864-px keyframe, so the middle of a 160-px frame
    assert keyframe.to_px([0, 0, 432, 864], 160, 120) == [0, 0, 80, 119]
    assert np.array_equal(keyframe.sam2_box([10, 20, 30, 40], 864, 432),
                          _published([10, 20, 30, 40], 864, 432, size=864))
    assert CoordFrame.of("qwen3", 864) == QWEN3  # the 0-1000 grid ignores the image shown


@pytest.mark.parametrize(("w", "h"), [(160, 120), (854, 480), (448, 448), (999, 37)])
def test_from_px_divides_first_and_round_trips_on_frames_coarser_than_the_grid(w, h):
    for x in range(w):
        y = x % h
        assert QWEN3.from_px([x, y], w, h) == [round(x / w * 1000), round(y / h * 1000)]
        # a grid step is finer than a pixel here, so going there and back is exact
        assert QWEN3.to_px(QWEN3.from_px([x, y], w, h), w, h) == [x, y]


def test_ground_truth_uses_the_same_grid():
    mask = np.zeros((120, 160), bool)
    mask[30:61, 40:101] = True
    gt = build_ground_truth({"0": mask})["0"]
    assert gt["bbox_2d"] == QWEN3.from_px([40, 30, 100, 60], 160, 120) == [250, 250, 625, 500]
    gt25 = build_ground_truth({"0": mask}, coord_style="qwen25", frame_size=448)["0"]
    assert gt25["bbox_2d"] == CoordFrame("qwen25", 448).from_px([40, 30, 100, 60], 160, 120)


def test_a_grid_that_cannot_be_is_refused():
    with pytest.raises(ValueError, match="coord_style must be one of 'qwen3', 'qwen25', 'gemini' or "
                                         "'normalized', not 'pixels'"):
        CoordFrame.of("pixels", 864)
    with pytest.raises(ValueError, match="'auto' stands for the model family's convention"):
        CoordFrame.of("auto", 864)  # resolved per model (agents.coord_style) before any reading
    with pytest.raises(ValueError, match="1000 grid"):
        CoordFrame("qwen3", 864)
    for bad in (0, -864, 86.4, True):
        with pytest.raises(ValueError, match="positive integer"):
            CoordFrame("qwen25", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pairs"):
        QWEN3.to_px([1, 2, 3], 10, 10)
    with pytest.raises(ValueError, match="pairs"):
        QWEN3.from_px([1, 2, 3], 10, 10)


# One object of a 640x480 frame, known in pixels (x1, y1, x2, y2 / x, y), and how each
# convention writes it: Qwen3-VL on 0-1000, Qwen2.5-VL in pixels of an 800² image it was
# shown, Gemini y first on 0-1000, fractions of the frame.
OBJECT_PX = ([64, 96, 320, 432], [192, 288])
WRITTEN = {
    "qwen3": ([100, 200, 500, 900], [300, 600]),
    "qwen25": ([80, 160, 400, 720], [240, 480]),
    "gemini": ([200, 100, 900, 500], [600, 300]),
    "normalized": ([0.1, 0.2, 0.5, 0.9], [0.3, 0.6]),
}


@pytest.mark.parametrize("style", CONVENTIONS)
def test_every_convention_lands_on_the_same_pixels(style):
    """The same object written in each family's convention is read as the same pixels, and
    as the same SAM 2 prompt as the Qwen3-VL answer (Qwen2.5-VL's own grid aside)."""
    assert set(WRITTEN) == set(CONVENTIONS)
    box, point = WRITTEN[style]
    ibox, ipoint, grid = to_internal(style, box, point)
    assert grid == internal_style(style) == ("qwen25" if style == "qwen25" else "qwen3")
    coords = CoordFrame.of(style, 800)
    assert coords.style == grid
    assert coords.to_px(ibox, 640, 480) == OBJECT_PX[0]
    assert coords.to_px(ipoint, 640, 480) == OBJECT_PX[1]
    if grid == "qwen3":  # one internal frame: x-first 0-1000, the Qwen3-VL answer itself
        assert ibox == WRITTEN["qwen3"][0] and ipoint == WRITTEN["qwen3"][1]
        assert np.array_equal(coords.sam2_box(ibox, 640, 480), QWEN3.sam2_box(WRITTEN["qwen3"][0], 640, 480))


def test_the_published_conventions_pass_through_unchanged():
    """qwen3 and qwen25 answers are not touched on the way in (not even turned into floats),
    so the published float32 products stay bit-identical."""
    for style in ("qwen3", "qwen25"):
        box, point = [7, 999, 333, 1], [501, 2]
        ibox, ipoint, _ = to_internal(style, box, point)
        assert ibox == box and ipoint == point
        assert all(type(v) is int for v in ibox + ipoint)
        grid = CoordFrame.of(style, 864)
        assert np.array_equal(grid.sam2_box(ibox, 854, 480),
                              _published(box, 854, 480, size=grid.size))


def test_gemini_swaps_axes_and_normalized_keeps_fractions():
    """Gemini's [ymin, xmin, ymax, xmax] / [y, x] become x-first; fractions become floats on
    0-1000 without rounding (the graph rounds any answer the same way later)."""
    assert to_internal("gemini", [10, 20, 30, 40], [5, 6]) == ([20, 10, 40, 30], [6, 5], "qwen3")
    box, point, grid = to_internal("normalized", [0.1234, 0.5, 0.75, 1.0], [0.0005, 0.25])
    assert grid == "qwen3"
    assert box == pytest.approx([123.4, 500.0, 750.0, 1000.0]) and point == pytest.approx([0.5, 250.0])
    assert all(isinstance(v, float) for v in box + point)
    # CoordFrame takes float values as it does for any answer
    assert QWEN3.to_px(box, 1000, 1000) == [123, 500, 750, 999]
    with pytest.raises(ValueError, match="box of 4 values and a point of 2"):
        to_internal("gemini", [1, 2, 3], [4, 5])
    with pytest.raises(ValueError, match="resolve it for the model first"):
        to_internal("auto", [1, 2, 3, 4], [5, 6])


def test_describe_convention_tells_the_model_its_order_and_range():
    """The sentence the answer tool and the tools prompt carry names the order of the values
    and their range, per convention (the pixel one names the image side it was shown)."""
    assert "0 to 1000" in describe_convention("qwen3", 864) and "[x1, y1, x2, y2]" in describe_convention("qwen3", 864)
    assert "864x864 image" in describe_convention("qwen25", 864)
    assert "448x448 image" in describe_convention("qwen25", 448)
    gemini = describe_convention("gemini", 864)
    assert "[ymin, xmin, ymax, xmax]" in gemini and "[y, x]" in gemini and "0 to 1000" in gemini
    assert "0 to 1" in describe_convention("normalized", 864)
    assert len({describe_convention(s, 864) for s in CONVENTIONS}) == len(CONVENTIONS)
    with pytest.raises(ValueError, match="not 'xy'"):
        describe_convention("xy", 864)
