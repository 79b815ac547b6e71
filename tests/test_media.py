"""Opening media (frame folders, videos, images, path lists) and sampling frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segresearch.core.media as media_mod
from segresearch.core.media import (
    MEDIA_ROOTS_ENV,
    Media,
    MediaError,
    allowed_roots,
    frame_ids_for,
    open_media,
    resize_square,
    sample_frame_ids,
)
from segresearch.testing.scenes import render_scene, write_frames, write_video

W, H, T = 96, 64, 12
BAND = 16  # a uniform band on the left whose grey level says which frame it is


def _level(i: int) -> int:
    return 10 + 20 * i


def _band_level(img: Image.Image) -> float:
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    return float(a[4:-4, 2 : BAND - 2].mean())


def _which_frame(img: Image.Image) -> int:
    return int(round((_band_level(img) - 10) / 20))


def _mad(img: Image.Image, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(img, dtype=np.int16) - ref.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    out, _ = render_scene(n_frames=T, size=(W, H), seed=3)
    for i, f in enumerate(out):
        f[:, :BAND] = _level(i)
    return out


@pytest.fixture(scope="module")
def jpg_dir(frames, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("jpg") / "clip"
    write_frames(frames, d)
    return d


@pytest.fixture(scope="module")
def png_dir(frames, tmp_path_factory) -> Path:
    """PNG frames named 00005.png, 00010.png, ... (ids are the numeric stems)."""
    d = tmp_path_factory.mktemp("png") / "clip"
    d.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"{5 * (i + 1):05d}.png")
    return d


@pytest.fixture(scope="module", params=["mp4", "avi"])
def video(request, frames, tmp_path_factory) -> Path:
    return write_video(frames, tmp_path_factory.mktemp("video") / f"clip.{request.param}")


# ------------------------------------------------------------------ folders


def test_folder_ids_from_numeric_stems(png_dir):
    m = open_media(str(png_dir))
    assert isinstance(m, Media) and m.kind == "folder"
    assert m.frame_ids == [5 * (i + 1) for i in range(T)]
    assert len(m) == T
    assert (m.width, m.height) == (W, H)
    assert [p.name for p in m.paths] == [f"{5 * (i + 1):05d}.png" for i in range(T)]
    assert m.frame_name(15) == "00015"
    assert m.index_of(60) == T - 1


def test_png_frames_decode_exactly(png_dir, frames):
    m = open_media(png_dir)  # a Path works too
    for i, fid in enumerate(m.frame_ids):
        img = m.frame(fid)
        assert img.mode == "RGB" and img.size == (W, H)
        assert np.array_equal(np.asarray(img), frames[i])


def test_jpg_frames_decode_close(jpg_dir, frames):
    m = open_media(str(jpg_dir))
    assert m.frame_ids == list(range(T))
    assert m.frame_name(3) == "00003"
    decoded = m.frames([11, 0, 6])
    for fid, img in zip([11, 0, 6], decoded, strict=True):
        assert img.size == (W, H) and img.mode == "RGB"
        assert _mad(img, frames[fid]) < 4.0
        assert _which_frame(img) == fid
    # the content really differs between frames, so the comparison above can tell them apart
    assert _mad(m.frame(0), frames[11]) > _mad(m.frame(0), frames[0]) + 1.0


def test_unknown_frame_id(png_dir):
    m = open_media(str(png_dir))
    for bad in (0, 7, 61, -5):
        with pytest.raises(MediaError, match=str(bad)):
            m.frame(bad)


def _solid(path: Path, colour: tuple[int, int, int], size=(20, 10)) -> None:
    Image.new("RGB", size, colour).save(path)


def test_folder_non_numeric_stems_natural_sort(tmp_path):
    names = ["f10.png", "f2.png", "F3.png", "f1.png", "f02b.png"]
    for k, n in enumerate(names):
        _solid(tmp_path / n, (10 * k, 0, 0))
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub").mkdir()
    _solid(tmp_path / "sub" / "f0.png", (255, 255, 255))
    m = open_media(str(tmp_path))
    assert [p.name for p in m.paths] == ["f1.png", "f2.png", "f02b.png", "F3.png", "f10.png"]
    assert m.frame_ids == [0, 1, 2, 3, 4]
    # each position decodes the file sorted there
    assert [m.frame(i).getpixel((0, 0))[0] for i in m.frame_ids] == [30, 10, 40, 20, 0]
    assert m.frame_name(4) == "f10"


def test_folder_mixed_stems_use_positions(tmp_path):
    for n in ["00007.jpg", "00003.JPG", "cover.jpg"]:
        _solid(tmp_path / n, (1, 2, 3))
    m = open_media(str(tmp_path))
    assert [p.name for p in m.paths] == ["00003.JPG", "00007.jpg", "cover.jpg"]
    assert m.frame_ids == [0, 1, 2]


def test_frame_ids_for():
    assert frame_ids_for([Path("a/00005.jpg"), Path("a/00010.jpg"), Path("a/00045.jpg")]) == [5, 10, 45]
    assert frame_ids_for([Path("frame_a.jpg"), Path("frame_b.jpg")]) == [0, 1]
    assert frame_ids_for([Path("1.jpg"), Path("01.png")]) == [0, 1]  # same number twice
    assert frame_ids_for([Path("3.jpg"), Path("x.jpg")]) == [0, 1]
    assert frame_ids_for([Path("-1.jpg"), Path("2.jpg")]) == [0, 1]
    assert frame_ids_for([Path("².jpg"), Path("3.jpg")]) == [0, 1]  # a digit but not a number
    assert frame_ids_for([]) == []


def test_odd_unicode_digit_names_do_not_crash(tmp_path):
    for n in ["1.png", "².png", "1²2.png"]:
        _solid(tmp_path / n, (5, 5, 5))
    m = open_media(str(tmp_path))
    assert len(m) == 3 and m.frame_ids == [0, 1, 2]


# ------------------------------------------------------------------ single images and lists


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_single_image(tmp_path, frames, ext):
    p = tmp_path / f"photo{ext}"
    Image.fromarray(frames[4]).save(p)
    m = open_media(str(p))
    assert m.kind == "image" and m.frame_ids == [0] and len(m) == 1
    assert (m.width, m.height) == (W, H)
    img = m.frame(0)
    if ext == ".png":
        assert np.array_equal(np.asarray(img), frames[4])
    else:
        assert _mad(img, frames[4]) < 6.0
    assert _which_frame(img) == 4
    assert m.frame_name(0) == "photo"


def test_single_image_with_numeric_name_is_still_frame_0(tmp_path):
    p = tmp_path / "00042.png"
    _solid(p, (9, 9, 9))
    assert open_media(str(p)).frame_ids == [0]


def test_grayscale_and_rgba_images_decode_as_rgb(tmp_path):
    Image.new("L", (8, 6), 77).save(tmp_path / "0.png")
    Image.new("RGBA", (8, 6), (1, 2, 3, 128)).save(tmp_path / "1.png")
    m = open_media(str(tmp_path))
    assert m.frame(0).mode == "RGB" and m.frame(0).getpixel((0, 0)) == (77, 77, 77)
    # half-transparent: laid on white, as qwen_vl_utils prepares RGBA inputs (not the
    # stored colour with its alpha dropped)
    assert m.frame(1).mode == "RGB" and m.frame(1).getpixel((0, 0)) == (128, 128, 129)


def test_list_of_frame_paths(png_dir, frames):
    paths = sorted(png_dir.iterdir())[:5]
    for given in (paths, [str(p) for p in paths]):
        m = open_media(given)
        assert m.kind == "list" and len(m) == 5
        assert m.frame_ids == [5, 10, 15, 20, 25]
        assert m.paths == paths
        assert np.array_equal(np.asarray(m.frame(25)), frames[4])


def test_list_with_non_numeric_names_uses_positions(tmp_path):
    paths = []
    for k, n in enumerate(["b.png", "a.png"]):
        _solid(tmp_path / n, (k * 100, 0, 0))
        paths.append(tmp_path / n)
    m = open_media(paths)
    assert m.frame_ids == [0, 1]
    assert m.frame(0).getpixel((0, 0))[0] == 0  # the given order, not sorted


# ------------------------------------------------------------------ videos


def test_video_opens(video):
    m = open_media(str(video))
    assert m.kind == "video"
    assert len(m) == T and m.frame_ids == list(range(T))
    assert (m.width, m.height) == (W, H)
    assert m.fps == pytest.approx(12.0, abs=0.01)
    assert m.paths == []
    assert m.frame_name(3) == "00003"


def test_video_frames_decode_in_any_order(video, frames):
    m = open_media(str(video))
    for fid in [11, 0, 7, 3, 3, 10, 1, 11, 5]:
        img = m.frame(fid)
        assert img.mode == "RGB" and img.size == (W, H)
        assert _which_frame(img) == fid
        assert _mad(img, frames[fid]) < 10.0


def test_video_repeated_access_is_identical(video):
    m = open_media(str(video))
    first = {fid: np.asarray(m.frame(fid)).copy() for fid in (2, 9, 5)}
    for fid in (9, 2, 5, 9):
        assert np.array_equal(np.asarray(m.frame(fid)), first[fid])


def test_video_handle_reopens_after_close(video):
    m = open_media(str(video))
    before = np.asarray(m.frame(6)).copy()
    m.close()
    assert np.array_equal(np.asarray(m.frame(6)), before)


def test_video_frame_outside_range(video):
    m = open_media(str(video))
    with pytest.raises(MediaError):
        m.frame(T)


# ------------------------------------------------------------------ laziness and caching


def test_folder_decodes_nothing_until_asked(jpg_dir, monkeypatch):
    calls: list[Path] = []
    real = media_mod._open_image

    def counting(path, *args):
        calls.append(Path(path))
        return real(path, *args)

    monkeypatch.setattr(media_mod, "_open_image", counting)
    m = media_mod._open_uncached(str(jpg_dir), None)  # bypass the cache: a fresh open
    assert calls == []
    _assert_holds_no_pixels(m)
    m.frame(7)
    m.frame(2)
    m.frame(7)
    assert [p.name for p in calls] == ["00007.jpg", "00002.jpg", "00007.jpg"]
    _assert_holds_no_pixels(m)


def _assert_holds_no_pixels(m: Media) -> None:
    def walk(v):
        assert not isinstance(v, (np.ndarray, Image.Image)), type(v)
        if isinstance(v, (list, tuple, set)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    for v in vars(m).values():
        walk(v)


def test_video_holds_no_frames(video):
    m = open_media(str(video))
    m.frame(4)
    _assert_holds_no_pixels(m)


def test_open_media_caches_by_path(png_dir):
    a = open_media(str(png_dir))
    assert open_media(png_dir) is a
    assert open_media(str(png_dir) + "/") is a


def test_a_list_of_frames_is_cached_by_every_frame(tmp_path, monkeypatch):
    """An RL row (a list of frame paths) is opened by every sample of its group and again for
    the keyframe: one handle while no frame changes; a new one when any frame does."""
    calls = []
    real = media_mod._open_uncached
    monkeypatch.setattr(media_mod, "_open_uncached", lambda *a, **k: calls.append(a) or real(*a, **k))
    paths = []
    for k in range(3):
        _solid(tmp_path / f"{k:05d}.png", (k * 50, 0, 0))
        paths.append(str(tmp_path / f"{k:05d}.png"))
    a = open_media(paths)
    assert open_media(list(paths)) is a and len(calls) == 1
    assert open_media(paths[::-1]) is not a  # another order is another clip
    st = os.stat(paths[1])
    _solid(Path(paths[1]), (0, 250, 0))
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = open_media(paths)
    assert b is not a and b.frame(1).getpixel((0, 0)) == (0, 250, 0)
    os.unlink(paths[2])
    with pytest.raises(MediaError, match="not found"):
        open_media(paths)


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize(
    "n_frames, n, positions",
    [
        (12, 6, [0, 2, 4, 6, 8, 11]),
        (168, 6, [0, 33, 66, 100, 133, 167]),
        (200, 6, [0, 39, 79, 119, 159, 199]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        (3, 6, [0, 1, 2]),  # fewer frames than asked: duplicates dropped
        (1, 6, [0]),
        (12, 1, [0]),
        (12, 2, [0, 11]),
        (31, 23, [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 19, 20, 21, 23, 24, 25, 27, 28, 30]),
    ],
)
def test_sample_positions(n_frames, n, positions):
    ids = [7 + 3 * k for k in range(n_frames)]
    assert sample_frame_ids(ids, n) == [ids[p] for p in positions]


def test_sample_matches_floor_linspace():
    for t in range(1, 120):
        ids = [1000 + 2 * k for k in range(t)]
        for n in range(1, 25):
            pos = np.floor(np.linspace(0, t - 1, n)).astype(int)
            expected = list(dict.fromkeys(ids[p] for p in pos))
            got = sample_frame_ids(ids, n)
            assert got == expected
            assert len(got) == min(t, n)
            assert got[0] == ids[0] and (n == 1 or got[-1] == ids[-1])


def test_sample_edge_cases():
    assert sample_frame_ids([], 6) == []
    assert sample_frame_ids([4, 9], 0) == []


def test_sample_on_opened_media(png_dir):
    m = open_media(str(png_dir))
    assert sample_frame_ids(m.frame_ids, 6) == [5, 15, 25, 35, 45, 60]


# ------------------------------------------------------------------ resize_square


def test_resize_square_squashes():
    img = Image.new("RGB", (100, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 50, 20))
    img.paste((0, 0, 255), (50, 0, 100, 20))
    out = resize_square(img, 32)
    assert out.size == (32, 32) and out.mode == "RGB"
    a = np.asarray(out)
    # squashed, not padded: every row is red on the left and blue on the right
    assert (a[:, :12, 0] > 200).all() and (a[:, :12, 2] < 50).all()
    assert (a[:, -12:, 2] > 200).all() and (a[:, -12:, 0] < 50).all()


def test_resize_square_sizes(frames):
    img = Image.fromarray(frames[0])
    for side in (448, 864, 256, 1):
        assert resize_square(img, side).size == (side, side)
    sq = Image.new("RGB", (448, 448), (3, 4, 5))
    assert resize_square(sq, 448) is sq


# ------------------------------------------------------------------ errors


def _one_line_error(media, *fragments) -> MediaError:
    with pytest.raises(MediaError) as ei:
        open_media(media)
    msg = str(ei.value)
    assert msg and "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    assert isinstance(ei.value, ValueError)
    return ei.value


def test_missing_path(tmp_path):
    p = tmp_path / "nope" / "clip.mp4"
    _one_line_error(str(p), "not found", str(p))


def test_empty_folder(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    _one_line_error(str(d), "no image frames", str(d))


def test_folder_with_only_non_image_files(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "readme.txt").write_text("hi")
    (d / "00001.json").write_text("{}")
    (d / "sub.jpg").mkdir()  # a folder named like an image is not a frame
    _one_line_error(str(d), "no image frames", str(d))


def test_corrupt_jpg(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    _one_line_error(str(p), "cannot read image", "broken.jpg")


def test_corrupt_first_frame_in_folder(tmp_path):
    (tmp_path / "00000.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    _solid(tmp_path / "00001.jpg", (1, 2, 3))
    _one_line_error(str(tmp_path), "cannot read image", "00000.jpg")


def test_unreadable_later_frame_is_refused_when_opened(tmp_path):
    # every frame's header is read when the folder is opened, so a run is refused before
    # it starts rather than failing when it reaches the frame
    _solid(tmp_path / "00000.jpg", (1, 2, 3))
    (tmp_path / "00001.jpg").write_bytes(b"garbage" * 50)
    with pytest.raises(MediaError) as ei:
        open_media(str(tmp_path))
    assert "00001.jpg" in str(ei.value) and "\n" not in str(ei.value)


def test_damaged_body_of_later_frame_fails_when_decoded(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "00000.jpg")
    data = (tmp_path / "00000.jpg").read_bytes()
    (tmp_path / "00001.jpg").write_bytes(data[: len(data) // 2])  # header intact, body cut
    m = open_media(str(tmp_path))  # only headers are read at open
    assert m.frame_ids == [0, 1]
    m.frame(0)
    with pytest.raises(MediaError) as ei:
        m.frame(1)
    assert "00001.jpg" in str(ei.value) and "\n" not in str(ei.value)


def test_frame_file_removed_after_open(tmp_path):
    _solid(tmp_path / "00000.png", (1, 2, 3))
    _solid(tmp_path / "00001.png", (1, 2, 3))
    m = open_media(str(tmp_path))
    (tmp_path / "00001.png").unlink()
    with pytest.raises(MediaError, match="00001.png"):
        m.frame(1)


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00\x18ftypmp42" + bytes(200)])
def test_empty_or_corrupt_video(tmp_path, content):
    p = tmp_path / "clip.mp4"
    p.write_bytes(content)
    err = _one_line_error(str(p), "clip.mp4")
    assert "video" in str(err)


@pytest.mark.parametrize("name", ["notes.txt", "model.safetensors", "README"])
def test_unsupported_extension(tmp_path, name):
    p = tmp_path / name
    p.write_text("hello")
    _one_line_error(str(p), "unsupported media type", name)


def test_empty_list():
    _one_line_error([], "empty list")


def test_list_with_missing_file(tmp_path):
    _solid(tmp_path / "0.png", (1, 1, 1))
    _one_line_error([str(tmp_path / "0.png"), str(tmp_path / "1.png")], "not found", "1.png")


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_path_is_not_the_current_directory(tmp_path, monkeypatch, value):
    _solid(tmp_path / "00000.png", (1, 1, 1))
    monkeypatch.chdir(tmp_path)
    _one_line_error(value, "empty media path")


# ------------------------------------------------------------------ allowed roots


@pytest.fixture()
def roots_layout(tmp_path, frames):
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    write_frames(frames[:3], root / "clip", ext=".png")
    write_frames(frames[:3], outside / "clip", ext=".png")
    write_video(frames[:3], outside / "v.mp4")
    return root, outside


def test_allowed_roots_parsing(monkeypatch, tmp_path):
    monkeypatch.delenv(MEDIA_ROOTS_ENV, raising=False)
    assert allowed_roots() is None
    monkeypatch.setenv(MEDIA_ROOTS_ENV, " : ")
    assert allowed_roots() is None
    monkeypatch.setenv(MEDIA_ROOTS_ENV, f"{tmp_path}/a::{tmp_path}/b/../c")
    assert allowed_roots() == [(tmp_path / "a").resolve(), (tmp_path / "c").resolve()]


def test_roots_accept_inside(roots_layout, monkeypatch):
    root, _ = roots_layout
    monkeypatch.setenv(MEDIA_ROOTS_ENV, str(root))
    m = open_media(str(root / "clip"))
    assert m.frame_ids == [0, 1, 2]
    assert open_media(str(root / "clip" / "00001.png")).kind == "image"
    assert open_media([str(root / "clip" / "00002.png")]).frame_ids == [2]
    (root / "x").mkdir()
    assert open_media(str(root / "x" / ".." / "clip")).frame_ids == [0, 1, 2]


def test_roots_refuse_outside(roots_layout, monkeypatch):
    root, outside = roots_layout
    monkeypatch.setenv(MEDIA_ROOTS_ENV, str(root))
    _one_line_error(str(outside / "clip"), "outside the allowed roots")
    _one_line_error(str(outside / "v.mp4"), "outside the allowed roots")
    _one_line_error(str(root / ".." / "outside" / "clip"), "outside the allowed roots")
    _one_line_error(str(outside / "missing.mp4"), "outside the allowed roots")  # no existence leak
    _one_line_error([str(root / "clip" / "00000.png"), str(outside / "clip" / "00001.png")], "outside")
    # a sibling whose name merely starts with the root's name is outside too
    sibling = Path(str(root) + "-evil")
    write_frames([np.zeros((4, 4, 3), np.uint8)], sibling, ext=".png")
    _one_line_error(str(sibling), "outside the allowed roots")


def test_roots_refuse_symlinks_pointing_outside(roots_layout, monkeypatch):
    root, outside = roots_layout
    os.symlink(outside / "clip", root / "link_dir")
    os.symlink(outside / "v.mp4", root / "link.mp4")
    os.symlink(outside / "clip" / "00000.png", root / "link.png")
    frames_dir = root / "mixed"
    frames_dir.mkdir()
    _solid(frames_dir / "00000.png", (1, 1, 1))
    os.symlink(outside / "clip" / "00001.png", frames_dir / "00001.png")  # one frame escapes
    monkeypatch.setenv(MEDIA_ROOTS_ENV, str(root))
    for p in ("link_dir", "link.mp4", "link.png", "mixed"):
        _one_line_error(str(root / p), "outside the allowed roots")


def test_roots_allow_symlinks_staying_inside(roots_layout, monkeypatch):
    root, _ = roots_layout
    os.symlink(root / "clip", root / "alias")
    monkeypatch.setenv(MEDIA_ROOTS_ENV, str(root))
    assert open_media(str(root / "alias")).frame_ids == [0, 1, 2]


def test_roots_apply_to_cached_media(roots_layout, monkeypatch):
    _, outside = roots_layout
    monkeypatch.delenv(MEDIA_ROOTS_ENV, raising=False)
    assert len(open_media(str(outside / "clip"))) == 3  # now cached
    monkeypatch.setenv(MEDIA_ROOTS_ENV, str(outside / "elsewhere"))
    _one_line_error(str(outside / "clip"), "outside the allowed roots")


def test_several_roots_and_explicit_override(roots_layout, monkeypatch, tmp_path):
    root, outside = roots_layout
    monkeypatch.setenv(MEDIA_ROOTS_ENV, f"{tmp_path / 'nothing'}:{outside}")
    assert len(open_media(str(outside / "clip"))) == 3
    _one_line_error(str(root / "clip"), "outside")
    assert len(open_media(str(root / "clip"), roots=None)) == 3  # explicit: unrestricted
    assert len(open_media(str(root / "clip"), roots=[root])) == 3


# ------------------------------------------------------------------ the shared footage




def _check_sampled(m: Media, n: int = 6) -> list[int]:
    ids = sample_frame_ids(m.frame_ids, n)
    assert len(ids) == min(n, len(m))
    for fid in ids:
        img = m.frame(fid)
        assert img.size == (m.width, m.height) and img.mode == "RGB"
        assert np.asarray(img).std() > 5  # real picture content, not a blank frame
    return ids


@pytest.mark.parametrize("name", ["toy_horse", "bedroom"])
def test_shared_frame_folders(name, shared_path):
    d = shared_path("data", "videos", name)
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in media_mod.IMAGE_EXTS)
    m = open_media(str(d))
    assert m.kind == "folder" and len(m) == len(files) > 0
    assert m.frame_ids == sorted(int(p.stem) for p in files)
    with Image.open(files[0]) as im:
        assert (m.width, m.height) == im.size
    ids = _check_sampled(m)
    assert ids[0] == m.frame_ids[0] and ids[-1] == m.frame_ids[-1]


def test_shared_video(shared_path):
    import cv2

    p = shared_path("data", "videos", "dog.mp4")
    m = open_media(str(p))
    assert m.kind == "video" and len(m) > 1 and m.fps and m.fps > 0
    ids = _check_sampled(m)
    # seeking gives the same pixels as decoding the file from the start
    wanted = {ids[1], ids[-1]}
    seq: dict[int, np.ndarray] = {}
    cap = cv2.VideoCapture(str(p))
    k = 0
    while len(seq) < len(wanted) and cap.grab():
        if k in wanted:
            ok, bgr = cap.retrieve()
            assert ok
            seq[k] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        k += 1
    cap.release()
    for fid in wanted:
        assert float(np.abs(np.asarray(m.frame(fid), dtype=np.int16) - seq[fid]).mean()) < 1.0


def test_shared_images(shared_path):
    d = shared_path("data", "images")
    images = sorted(d.glob("*.jpg"))
    if not images:
        pytest.skip(f"no images in {d}")
    for p in images:
        m = open_media(str(p))
        assert m.kind == "image" and m.frame_ids == [0]
        img = m.frame(0)
        with Image.open(p) as im:
            assert img.size == im.size == (m.width, m.height)
        assert resize_square(img, 448).size == (448, 448)
