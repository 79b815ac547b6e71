"""Pixels as the file means them, and frames that cannot be used refused before a run.

High-depth images are scaled (not clipped to white), transparency is laid on white, EXIF
orientation is applied; frame folders and lists are refused when a frame is empty or
unreadable, when frames differ in size, or when two frames would write one mask file; named
pipes and devices are refused without being opened (a FIFO would block ``open`` forever).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.content import block_image, is_image_block
from segresearch.agents.context import Context
from segresearch.core.media import IMAGE_EXTS, VIDEO_EXTS, MediaError, open_media
from segresearch.graphs.seg_research import graph
from segresearch.tools.segmenters.sam2 import FrameStore
from segresearch.tools.segmenters.writers import mask_names, write_mask_set

H, W = 40, 64
# a horizontal ramp over the whole 16-bit range: clipping shows it white, scaling as a ramp
RAMP16 = np.tile(np.linspace(0, 65535, W).astype(np.uint16), (H, 1))


def _grey(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (H, W, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0].astype(int)


def _save_tiff(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, format="TIFF")


HIGH_DEPTH = {
    # name: (writer, expected 8-bit grey)
    "png-I;16": (lambda p: Image.fromarray(RAMP16).save(p), RAMP16 >> 8),
    "tiff-I;16": (lambda p: _save_tiff(p, RAMP16), RAMP16 >> 8),
    "tiff-I;16B": (lambda p: _save_tiff(p, RAMP16.astype(">u2")), RAMP16 >> 8),
    # 32-bit counts past 16 bits: stretched from the smallest value to the largest
    "tiff-I-32bit": (lambda p: _save_tiff(p, (RAMP16.astype(np.int32) * 40 + 7)),
                     np.rint((RAMP16.astype(float) * 40) * 255 / (65535 * 40))),
    # normalised floats: × 255
    "tiff-F-unit": (lambda p: _save_tiff(p, (RAMP16 / 65535).astype(np.float32)),
                    np.rint(RAMP16 / 65535 * 255)),
    # floats outside 0-1 (a depth map in metres): stretched
    "tiff-F-range": (lambda p: _save_tiff(p, (RAMP16 / 65535 * 30 - 5).astype(np.float32)),
                     np.rint(RAMP16 / 65535 * 255)),
}


@pytest.mark.parametrize("name", sorted(HIGH_DEPTH))
def test_high_depth_grey_is_scaled_not_clipped(tmp_path, name):
    write, expected = HIGH_DEPTH[name]
    path = tmp_path / ("f.png" if name.startswith("png") else "f.tif")
    write(path)
    got = _grey(open_media(str(path)).frame(0))
    assert np.abs(got - expected).max() <= 1, name
    assert got.min() <= 1 and got.max() >= 254  # the whole range shows, not a white sheet


def test_float_image_with_missing_values(tmp_path):
    depth = (RAMP16 / 65535 * 30 - 5).astype(np.float32)
    depth[:, :4] = np.nan
    depth[0, 10] = np.inf
    path = tmp_path / "d.tif"
    _save_tiff(path, depth)
    got = _grey(open_media(str(path)).frame(0))
    assert (got[:, :4] == 0).all() and got[0, 10] == 0
    # stretched between the smallest and largest finite values
    lo, hi = float(depth[1, 4]), float(depth[1, -1])
    expected = np.rint((depth[:, 4:].astype(float) - lo) / (hi - lo) * 255)
    expected[0, 6] = 0
    assert np.abs(got[:, 4:] - expected).max() <= 1


def test_signed_image_is_stretched(tmp_path):
    signed = (RAMP16.astype(np.int32) - 30000)  # negative values: no bit depth says the range
    path = tmp_path / "s.tif"
    _save_tiff(path, signed)
    got = _grey(open_media(str(path)).frame(0))
    assert got.min() == 0 and got.max() == 255 and (np.diff(got[0]) >= 0).all()


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_keeps_its_colours(tmp_path, ext):
    rgb16 = np.dstack([RAMP16, RAMP16 // 2, np.full_like(RAMP16, 40000)])
    path = tmp_path / f"c{ext}"
    assert cv2.imwrite(str(path), rgb16[..., ::-1].copy())  # OpenCV writes BGR
    got = np.asarray(open_media(str(path)).frame(0)).astype(int)
    assert np.abs(got - (rgb16 >> 8)).max() <= 1


def test_16bit_rgba_is_laid_on_white(tmp_path):
    alpha = np.zeros_like(RAMP16)
    alpha[:, W // 2:] = 65535
    rgba16 = np.dstack([np.full_like(RAMP16, 20000)] * 3 + [alpha])
    path = tmp_path / "a.png"
    assert cv2.imwrite(str(path), rgba16)
    got = np.asarray(open_media(str(path)).frame(0))
    assert (got[:, : W // 2] == 255).all()  # transparent: the white it is laid on
    assert (np.abs(got[:, W // 2:].astype(int) - (20000 >> 8)) <= 1).all()


def _transparent_p(path: Path) -> None:
    p = Image.new("P", (W, H), 0)
    p.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    p.paste(1, (0, 0, W // 2, H))
    p.save(path, transparency=0)  # palette entry 0 (the right half) is transparent


TRANSPARENT = {
    "P-transparency": _transparent_p,
    "LA": lambda p: Image.merge("LA", (Image.new("L", (W, H), 200), _half_alpha())).save(p),
    "RGBA": lambda p: Image.merge("RGBA", (*Image.new("RGB", (W, H), (200, 0, 0)).split(),
                                           _half_alpha())).save(p),
    "L-tRNS": lambda p: _grey_with_trns(p),
}


def _half_alpha() -> Image.Image:
    a = Image.new("L", (W, H), 0)
    a.paste(255, (0, 0, W // 2, H))
    return a


def _grey_with_trns(path: Path) -> None:
    im = Image.new("L", (W, H), 7)
    im.paste(200, (0, 0, W // 2, H))
    im.save(path, transparency=7)


@pytest.mark.parametrize("name", sorted(TRANSPARENT))
def test_transparent_pixels_are_white_and_opaque_ones_keep_their_colour(tmp_path, name):
    path = tmp_path / "t.png"
    TRANSPARENT[name](path)
    got = np.asarray(open_media(str(path)).frame(0))
    assert (got[:, W // 2:] == 255).all(), name  # not the colour the transparent pixels hold
    left = got[:, : W // 2].reshape(-1, 3)
    assert (left == left[0]).all() and tuple(left[0]) != (255, 255, 255)
    assert tuple(left[0]) in {(200, 0, 0), (200, 200, 200)}


def test_cmyk_jpeg_shows_its_colour(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(path)  # pure red in print colours
    r, g, b = np.asarray(open_media(str(path)).frame(0)).reshape(-1, 3).mean(axis=0)
    assert r > 230 and g < 25 and b < 25


def _marked(size=(60, 30)) -> Image.Image:
    """A picture whose orientation can be read back: a red top-left and a blue bottom-left
    quadrant on black."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    arr[h // 2:, : w // 2] = (0, 0, 255)
    return Image.fromarray(arr)


def _with_orientation(path: Path, turn: int, img: Image.Image | None = None) -> None:
    exif = Image.Exif()
    exif[274] = turn
    (img or _marked()).save(path, exif=exif)


@pytest.mark.parametrize("turn", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, turn):
    path = tmp_path / "o.png"  # lossless, so the pixels compare exactly
    _with_orientation(path, turn)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    m = open_media(str(path))
    got = np.asarray(m.frame(0))
    assert got.shape == expected.shape and (m.width, m.height) == (got.shape[1], got.shape[0])
    assert np.array_equal(got, expected)
    assert (m.width, m.height) == ((30, 60) if turn >= 5 else (60, 30))


def test_exif_orientation_applies_to_reduced_jpegs_too(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGRESEARCH_MAX_PIXELS", "5000")  # forces the reduced-decode path
    path = tmp_path / "big.jpg"
    _with_orientation(path, 6, _marked((400, 200)))
    m = open_media(str(path))
    img = m.frame(0)
    assert img.size == (m.width, m.height) and m.width < m.height  # stood up: portrait
    assert m.source_size == (200, 400)
    arr = np.asarray(img).astype(int)
    # turned a quarter clockwise: red top-left → top-right, blue bottom-left → top-left
    assert arr[2, -3, 0] > 200 and arr[2, 2, 2] > 200


def test_a_16bit_image_reaches_the_model_scaled_and_upright(tmp_path):
    path = tmp_path / "scan.png"
    exif = Image.Exif()
    exif[274] = 8
    Image.fromarray(RAMP16).save(path, exif=exif)
    turns = ['<thinking>x</thinking><answer>{"bbox_2d": [100, 100, 900, 900], '
             '"point_2d": [500, 500]}</answer>']
    out = graph.invoke({"query": "the scan", "media": str(path)},
                       context=Context(model=ReplayChatModel(turns=turns), search="none",
                                       segmenter="grabcut", output_dir=str(tmp_path / "out")))
    assert out["stop_reason"] == "answer", out.get("error")
    first = next(m for m in out["messages"] if m.type == "human")
    shown = [block_image(b) for b in first.content if is_image_block(b)]
    assert len(shown) == 1
    grey = np.asarray(shown[0].convert("L")).astype(float)
    assert 100 < grey.mean() < 155  # the ramp, not white (it was 254.8)
    # rotated a quarter anticlockwise: the ramp now runs bottom (dark) to top (bright)
    assert grey[:20].mean() > grey[-20:].mean() + 100
    with Image.open(tmp_path / "out" / "masks" / "scan.png") as mask:
        assert mask.size == (H, W)  # the upright size


def test_sam2_frames_are_made_from_the_scaled_pixels(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(RAMP16).save(folder / f"{i:05d}.png")
    store = FrameStore(open_media(str(folder)), 32, prefetch=0, threads=0)
    try:
        assert 100 < store.resized(1).mean() < 155
    finally:
        store.close()


# -- frames that cannot be used: refused when the media is opened ---------------------------


def _frames(folder: Path, n: int = 3, size=(W, H)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:05d}.jpg"
        Image.new("RGB", size, (i * 40, 90, 10)).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("ext", sorted(IMAGE_EXTS | VIDEO_EXTS))
def test_empty_media_file_is_one_line_naming_it(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    with pytest.raises(MediaError) as ei:
        open_media(str(path))
    msg = str(ei.value)
    assert str(path) in msg and "empty (0 bytes)" in msg and "\n" not in msg


@pytest.mark.parametrize("position", [0, 1, 2])
def test_empty_frame_in_a_folder_or_list_is_refused_at_open(tmp_path, position):
    paths = _frames(tmp_path / "f")
    paths[position].write_bytes(b"")
    for media in (str(tmp_path / "f"), [str(p) for p in paths]):
        with pytest.raises(MediaError) as ei:
            open_media(media)
        assert paths[position].name in str(ei.value) and "empty" in str(ei.value)


def test_mixed_size_frames_are_refused_with_both_sizes(tmp_path):
    paths = _frames(tmp_path / "f")
    Image.new("RGB", (30, 90), 0).save(paths[2])
    Image.new("RGB", (31, 90), 0).save(tmp_path / "f" / "00003.jpg")
    for media in (str(tmp_path / "f"), [str(p) for p in paths]):
        with pytest.raises(MediaError) as ei:
            open_media(media)
        msg = str(ei.value)
        assert f"{W}×{H}" in msg and "30×90" in msg and "00000.jpg" in msg and "00002.jpg" in msg
    assert "1 more" in str(_refusal(str(tmp_path / "f")))


def _refusal(media) -> MediaError:
    with pytest.raises(MediaError) as ei:
        open_media(media)
    return ei.value


def test_frames_that_differ_only_by_exif_rotation_are_different_sizes(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    _with_orientation(folder / "00000.jpg", 1)
    _with_orientation(folder / "00001.jpg", 6)  # the same raster, shown portrait
    assert "60×30" in str(_refusal(str(folder))) and "30×60" in str(_refusal(str(folder)))
    _with_orientation(folder / "00001.jpg", 3)  # upside down: the same size, accepted
    m = open_media(str(folder))
    assert len(m) == 2 and (m.width, m.height) == (60, 30)


def test_frames_are_checked_again_when_decoded(tmp_path):
    paths = _frames(tmp_path / "f")
    m = open_media(str(tmp_path / "f"))
    Image.new("RGB", (W + 2, H), 0).save(paths[1])  # replaced after opening
    with pytest.raises(MediaError) as ei:
        m.frame(1)
    assert paths[1].name in str(ei.value) and f"{W + 2}×{H}" in str(ei.value)


@pytest.mark.parametrize("names", [("a.jpg", "a.png"), ("A.jpg", "a.jpg"), ("x.tif", "x.TIFF")])
def test_frames_sharing_a_mask_name_are_refused(tmp_path, names):
    folder = tmp_path / "f"
    folder.mkdir()
    for n in names:
        Image.new("RGB", (W, H), 0).save(folder / n)
    if len(list(folder.iterdir())) < 2:
        pytest.skip("this file system ignores case")
    msg = str(_refusal(str(folder)))
    assert names[0] in msg and names[1] in msg and "rename or remove one" in msg


def test_a_list_naming_one_stem_twice_is_refused(tmp_path):
    a = _frames(tmp_path / "a", 1)[0]
    b = _frames(tmp_path / "b", 1)[0]  # the same name in another folder
    assert "share the name" in str(_refusal([str(a), str(b)]))
    assert "listed twice" in str(_refusal([str(a), str(a)]))


def test_mask_writer_refuses_two_frames_with_one_name(tmp_path):
    _frames(tmp_path / "x", 2)
    opened = open_media(str(tmp_path / "x"))
    # as if made by hand, past open_media's own check
    m = dataclasses.replace(opened, paths=[opened.paths[0], opened.paths[0].with_suffix(".png")])
    with pytest.raises(ValueError, match="would both write the mask 00000.png"):
        mask_names(m)
    with pytest.raises(ValueError):
        write_mask_set(tmp_path / "masks", m, ())
    assert not (tmp_path / "masks").exists() and list(tmp_path.glob(".masks*")) == []


# -- named pipes and devices: refused without being opened --------------------------------


def _refused_quickly(media) -> str:
    """The refusal for ``media``, from a thread that must not block (a FIFO opened for
    reading waits for a writer forever)."""
    result: list[BaseException | None] = []

    def attempt() -> None:
        try:
            open_media(media)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            result.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    blocked = t.is_alive()
    if blocked:  # unblock the reader so the thread can end, then fail
        for p in [media] if isinstance(media, str) else media:
            if Path(p).is_fifo():
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
    assert not blocked, f"opening {media} blocked"
    assert isinstance(result[0], MediaError), result
    msg = str(result[0])
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("name", ["clip.mp4", "photo.jpg", "noext"])
def test_a_named_pipe_is_refused_before_it_is_opened(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    msg = _refused_quickly(str(fifo))
    assert "named pipe (FIFO)" in msg and str(fifo) in msg


def test_a_named_pipe_among_frames_is_refused(tmp_path):
    paths = _frames(tmp_path / "f")
    paths[1].unlink()
    os.mkfifo(paths[1])
    assert "00001.jpg" in _refused_quickly(str(tmp_path / "f"))
    assert "named pipe" in _refused_quickly([str(p) for p in paths])


def test_a_device_or_broken_link_among_frames_is_refused(tmp_path):
    assert "character device" in _refused_quickly("/dev/null")
    paths = _frames(tmp_path / "f")
    (tmp_path / "f" / "00005.jpg").symlink_to("/dev/zero")
    assert "character device" in _refused_quickly(str(tmp_path / "f"))
    (tmp_path / "f" / "00005.jpg").unlink()
    (tmp_path / "f" / "00005.jpg").symlink_to(tmp_path / "gone.jpg")
    assert "broken link" in _refused_quickly(str(tmp_path / "f"))
    assert len(paths) == 3


def test_a_file_swapped_for_a_pipe_after_opening_is_refused_not_waited_on(tmp_path):
    paths = _frames(tmp_path / "f", 2)
    m = open_media(str(tmp_path / "f"))
    paths[1].unlink()
    os.mkfifo(paths[1])
    result: list[BaseException] = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(MediaError, m.frame, 1).value),
                         daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        os.close(os.open(paths[1], os.O_WRONLY | os.O_NONBLOCK))
    assert not t.is_alive() and "regular file" in str(result[0])


# -- the command line: one line, exit 2, no run folder -------------------------------------


@pytest.mark.parametrize("case", ["empty-image", "empty-frame", "fifo", "mixed-sizes", "clash"])
def test_cli_refuses_unusable_media_before_making_a_run_folder(tmp_path, case):
    if case == "empty-image":
        media = tmp_path / "e.png"
        media.write_bytes(b"")
        expect = "empty (0 bytes)"
    elif case == "empty-frame":
        media = tmp_path / "f"
        _frames(media)[2].write_bytes(b"")
        expect = "00002.jpg"
    elif case == "fifo":
        media = tmp_path / "clip.mp4"
        os.mkfifo(media)
        expect = "named pipe"
    elif case == "mixed-sizes":
        media = tmp_path / "f"
        _frames(media)
        Image.new("RGB", (300, 900), 0).save(media / "00003.jpg")
        expect = "300×900"
    else:
        media = tmp_path / "f"
        _frames(media)
        Image.new("RGB", (W, H), 0).save(media / "00001.png")
        expect = "00001.png"
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(["<thinking>x</thinking><keyframe>0</keyframe>"]))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "segresearch", "run", "--media", str(media),
                        "--query", "q", "--model", f"replay:{cassette}", "--search", "none",
                        "--segmenter", "grabcut", "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], lines
    assert not out.exists()
