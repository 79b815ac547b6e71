"""Frames made at data time (``segresearch data okvos --presize-frames``) are the pixels the
rollout would make: the same decode and bicubic squash, stored losslessly, and an image
already at the shown size passes the resize unchanged."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segresearch.core.media import FRAME_RESIZE, open_media, resize_square
from segresearch.rl.data import conversion_info, convert_okvos, presized_folder
from segresearch.testing.okvos import make_synthetic_okvos

SIDE = 448


def _photo(w: int = 640, h: int = 360, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("resample", [Image.Resampling.BICUBIC, Image.Resampling.LANCZOS, Image.Resampling.BILINEAR])
def test_resizing_an_image_already_at_the_size_is_the_identity(resample):
    img = resize_square(_photo(), SIDE, resample)
    assert img.size == (SIDE, SIDE)
    again = resize_square(img, SIDE, resample)
    assert again.tobytes() == img.tobytes() == img.resize((SIDE, SIDE), resample).tobytes()


def test_only_a_lossless_file_keeps_the_shown_pixels():
    shown = FRAME_RESIZE(_photo(), SIDE)
    for fmt, kw, exact in (("BMP", {}, True), ("PNG", {"compress_level": 1}, True), ("JPEG", {"quality": 95}, False)):
        buf = io.BytesIO()
        shown.save(buf, format=fmt, **kw)
        decoded = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        assert (decoded.tobytes() == shown.tobytes()) is exact, fmt


def test_conversion_stores_each_shown_frame_as_the_rollout_shows_it(tmp_path):
    make_synthetic_okvos(tmp_path, "test", n_videos=1, n_frames=8)
    out = convert_okvos(tmp_path, "test", num_frames=4, presize=True, progress=False)
    folder = presized_folder(out.resolve(), SIDE)
    assert conversion_info(out)["presized_frames"] == str(folder)
    rows = pd.read_parquet(out)["extra_info"].tolist()
    files = set()
    for info in rows:
        frames, shown = list(info["frames"]), list(info["shown_frames"])
        assert len(frames) == len(shown) and info["frame_resize"] == FRAME_RESIZE.method
        media = open_media(frames)  # the rollout's own decode
        for fid, s in zip(media.frame_ids, shown, strict=True):
            with Image.open(s) as f:
                assert f.format == "BMP" and f.size == (SIDE, SIDE)
                stored = f.convert("RGB")
            assert stored.tobytes() == resize_square(media.frame(fid), SIDE, FRAME_RESIZE.resample).tobytes()
            files.add(s)
    assert len(files) < sum(len(i["frames"]) for i in rows)  # rows of one video share their frames' files
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    convert_okvos(tmp_path, "test", num_frames=4, presize=True, progress=False)
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps  # made once, kept while current
    plain = pd.read_parquet(convert_okvos(tmp_path, "test", tmp_path / "plain.parquet", num_frames=4,
                                          progress=False))
    assert all(i["shown_frames"] is None and i["frame_resize"] is None for i in plain["extra_info"])
