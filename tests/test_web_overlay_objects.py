"""The served frame overlay of an answer naming several objects: each object tinted in the
colour the overlay video gives it, every folder held to the output policy."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from segresearch.servers.web import _frame_jpeg
from segresearch.tools.visualize import OBJECT_COLOURS


def _mask(path, box):
    m = np.zeros((64, 96), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), m)


def test_each_object_is_tinted_in_its_own_colour(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGRESEARCH_OUTPUT_ROOT", str(tmp_path / "out"))
    image = tmp_path / "out" / "frame.png"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(image)
    run = tmp_path / "out" / "run"
    _mask(run / "objects" / "1" / "frame.png", (4, 4, 30, 30))
    _mask(run / "objects" / "2" / "frame.png", (60, 30, 90, 60))
    _mask(run / "masks" / "frame.png", (4, 4, 90, 60))
    values = {"media": str(image), "masks_dir": str(run / "masks"),
              "object_masks_dirs": [str(run / "objects" / "1"), str(run / "objects" / "2")]}
    rgb = np.asarray(Image.open(io.BytesIO(_frame_jpeg(values, 0, True, 512))).convert("RGB"), float)
    for (y, x), colour in (((16, 16), OBJECT_COLOURS[0]), ((45, 75), OBJECT_COLOURS[1])):
        want = 0.5 * 128 + 0.5 * np.asarray(colour, float)
        assert np.abs(rgb[y, x] - want).max() < 12, (rgb[y, x], want)
    assert np.abs(rgb[50, 10] - 128).max() < 12  # in neither object (but inside the union's box)
    # a folder outside the output root is not read: that object stays untinted
    values["object_masks_dirs"][1] = str(tmp_path / "elsewhere")
    _mask(tmp_path / "elsewhere" / "frame.png", (60, 30, 90, 60))
    rgb = np.asarray(Image.open(io.BytesIO(_frame_jpeg(values, 0, True, 512))).convert("RGB"), float)
    assert np.abs(rgb[45, 75] - 128).max() < 12
