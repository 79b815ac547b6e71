"""GrabCut propagated by optical flow: a mask for every frame of a video, from one prompt."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segresearch.core.media import Media, MediaError, open_media
from segresearch.eval.metrics import region_j
from segresearch.testing.scenes import (
    DEFAULT_SHAPES,
    Shape,
    inner_point,
    mask_box,
    render_scene,
    write_frames,
    write_video,
)
from segresearch.tools.segmenters.base import Prompt
from segresearch.tools.segmenters.grabcut import GrabCutSegmenter

N_FRAMES = 20
SIZE = (240, 160)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, list[np.ndarray], dict[str, np.ndarray]]:
    """20 JPEG frames, 240×160, the four default shapes (two of them meet near the end)."""
    frames, masks = render_scene(n_frames=N_FRAMES, size=SIZE)
    folder = tmp_path_factory.mktemp("grabcut_scene") / "frames"
    write_frames(frames, folder)
    return folder, frames, masks


def _prompt(gt: np.ndarray, key: int, box: bool = True, point: bool = True) -> Prompt:
    return Prompt(
        frame=key,
        box=tuple(float(v) for v in mask_box(gt[key])) if box else None,
        point=tuple(float(v) for v in inner_point(gt[key])) if point else None,
    )


def _ious(media: Media, gt: np.ndarray, prompt: Prompt, **options) -> np.ndarray:
    masks = GrabCutSegmenter(**options).segment(media, prompt)
    assert sorted(masks) == media.frame_ids
    for m in masks.values():
        assert m.dtype == bool and m.shape == gt.shape[1:]
    return region_j(gt, np.stack([masks[f] for f in media.frame_ids]))


@pytest.mark.parametrize("where", ["middle", "first", "last"])
@pytest.mark.parametrize("shape", [s.name for s in DEFAULT_SHAPES])
def test_every_frame_follows_the_shape(scene, shape, where):
    folder, _, masks = scene
    gt = masks[shape]
    key = {"middle": N_FRAMES // 2, "first": 0, "last": N_FRAMES - 1}[where]
    j = _ious(open_media(folder), gt, _prompt(gt, key))
    print(f"{shape} keyframe {key}: mean J {j.mean():.3f}, min {j.min():.3f}")
    assert j.mean() >= 0.8 and j.min() >= 0.6
    if where == "middle":  # both directions carry the mask, not just the keyframe
        assert j[:key].mean() >= 0.8 and j[key + 1 :].mean() >= 0.8


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_file(tmp_path, suffix):
    frames, masks = render_scene(n_frames=12, size=(160, 120))
    media = open_media(write_video(frames, tmp_path / f"scene{suffix}"))
    assert len(media) == 12
    for shape in ("blue square", "red circle"):
        j = _ious(media, masks[shape], _prompt(masks[shape], 6))
        assert j.mean() >= 0.8, (shape, j.round(2))


def test_frames_come_keyframe_then_forward_then_backward(tmp_path):
    frames, masks = render_scene(n_frames=7, size=(160, 120))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):  # ids 10, 20, ... : ids are not positions
        Image.fromarray(f).save(folder / f"{10 * (i + 1):05d}.png")
    media = open_media(folder)
    assert media.frame_ids == [10, 20, 30, 40, 50, 60, 70]
    gt = masks["red circle"]
    order = [fid for fid, _ in GrabCutSegmenter().open(media).masks(
        Prompt(frame=40, box=tuple(mask_box(gt[3])), point=tuple(inner_point(gt[3])))
    )]
    assert order == [40, 50, 60, 70, 30, 20, 10]


class _CountingMedia(Media):
    """Counts decodes, to check the walk decodes each frame once and lazily."""

    def frame(self, fid: int) -> Image.Image:
        self.decoded[fid] += 1
        return super().frame(fid)


def test_frames_are_decoded_once_and_lazily(scene):
    folder, _, masks = scene
    base = open_media(folder)
    media = _CountingMedia(**{f.name: getattr(base, f.name) for f in fields(Media)})
    media.decoded = Counter()
    gt = masks["green triangle"]
    walk = GrabCutSegmenter().open(media).masks(_prompt(gt, 8))
    next(walk)
    assert sum(media.decoded.values()) == 1  # the keyframe only, nothing decoded ahead
    next(walk)
    assert sum(media.decoded.values()) == 2
    rest = list(walk)
    assert len(rest) == N_FRAMES - 2
    assert set(media.decoded) == set(media.frame_ids)
    assert max(media.decoded.values()) <= 2 and sum(media.decoded.values()) <= N_FRAMES + 1


def test_box_only_and_point_only(scene):
    folder, _, masks = scene
    media = open_media(folder)
    for shape in ("red circle", "blue square"):
        gt = masks[shape]
        for box, point in ((True, False), (False, True)):
            j = _ious(media, gt, _prompt(gt, 10, box=box, point=point))
            assert j[10] >= 0.85 and j.mean() >= 0.8, (shape, box, point, j.round(2))


def test_single_image(tmp_path):
    frames, masks = render_scene(n_frames=1, size=(160, 120))
    path = tmp_path / "still.png"
    Image.fromarray(frames[0]).save(path)
    media = open_media(path)
    gt = masks["blue square"]
    out = list(GrabCutSegmenter().open(media).masks(_prompt(gt, 0)))
    assert [fid for fid, _ in out] == [0]
    assert region_j(gt, out[0][1][None])[0] >= 0.9


def test_awkward_prompts_do_not_crash(tmp_path):
    frames, masks = render_scene(n_frames=5, size=(160, 120))
    write_frames(frames, tmp_path / "frames")
    media = open_media(tmp_path / "frames")
    seg = GrabCutSegmenter()
    h, w = 120, 160
    gt = masks["red circle"]
    x1, y1, x2, y2 = mask_box(gt[0])
    cases = {
        "partly outside": Prompt(frame=0, box=(x1 - 500.0, y1 - 300.0, x2, y2)),
        "corners swapped": Prompt(frame=0, box=(x2, y2, x1, y1), point=(x1 + 2.0, y1 + 2.0)),
        "degenerate": Prompt(frame=0, box=(50.0, 40.0, 50.0, 90.0)),
        "point outside": Prompt(frame=0, point=(-40.0, 1e6)),
        "box outside, point inside": Prompt(
            frame=0, box=(-90.0, -90.0, -10.0, -10.0), point=tuple(inner_point(gt[0]))
        ),
        "box covers the frame": Prompt(frame=0, box=(0.0, 0.0, w - 1.0, h - 1.0)),
    }
    for name, prompt in cases.items():
        out = seg.segment(media, prompt)
        assert sorted(out) == media.frame_ids, name
        assert all(m.shape == (h, w) and m.dtype == bool for m in out.values()), name
    assert region_j(gt[:1], seg.segment(media, cases["partly outside"])[0][None])[0] > 0.5
    assert region_j(gt[:1], seg.segment(media, cases["corners swapped"])[0][None])[0] > 0.8
    degenerate = seg.segment(media, cases["degenerate"])[0]
    assert degenerate.sum() == 51 and degenerate[40:91, 50].all()  # the box itself
    assert region_j(gt[:1], seg.segment(media, cases["box outside, point inside"])[0][None])[0] > 0.8
    gone = seg.segment(media, Prompt(frame=0, box=(-90.0, -90.0, -10.0, -10.0)))
    assert not any(m.any() for m in gone.values())  # nothing of the box is in the frame


def test_flat_image_falls_back_to_the_box(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    m = GrabCutSegmenter().segment(open_media(path), Prompt(frame=0, box=(5, 5, 30, 20)))[0]
    assert m.shape == (30, 40) and m[5:21, 5:31].all() and m.sum() == 16 * 26
    m = GrabCutSegmenter().segment(open_media(path), Prompt(frame=0, box=(5, 5, 6, 6)))[0]
    assert m.sum() == 4


def test_target_leaving_the_view_stays_gone(tmp_path):
    runner = Shape("runner", "circle", (220, 40, 40), (0.45, 0.5), (0.09, 0.0), 0.12)
    frames, masks = render_scene(n_frames=12, size=(160, 120), shapes=[runner])
    gt = masks["runner"]
    assert not gt[-1].any()
    write_frames(frames, tmp_path / "frames")
    j = _ious(open_media(tmp_path / "frames"), gt, _prompt(gt, 0))
    assert j.mean() >= 0.85 and j[-3:].min() == 1.0  # empty where the target has left


def test_shot_cut_ends_the_track(tmp_path):
    frames, masks = render_scene(n_frames=12, size=(160, 120))
    frames = frames[:6] + [255 - f[:, ::-1] for f in frames[6:]]  # a different "shot"
    write_frames(frames, tmp_path / "frames")
    gt = masks["blue square"]
    out = GrabCutSegmenter().segment(open_media(tmp_path / "frames"), _prompt(gt, 2))
    assert region_j(gt[:6], np.stack([out[i] for i in range(6)])).mean() >= 0.9
    assert not any(out[i].any() for i in range(6, 12))


def test_processing_resolution_is_capped(tmp_path):
    frames, masks = render_scene(n_frames=8, size=(480, 320))
    write_frames(frames, tmp_path / "frames")
    gt = masks["green triangle"]
    j = _ious(open_media(tmp_path / "frames"), gt, _prompt(gt, 4), max_side=160)
    assert j.mean() >= 0.85


@pytest.mark.parametrize("flow", ["dis_fast", "farneback"])
def test_other_flow_methods(scene, flow):
    folder, _, masks = scene
    gt = masks["red circle"]
    assert _ious(open_media(folder), gt, _prompt(gt, 10), flow=flow).mean() >= 0.8


def test_options_are_checked_and_described():
    with pytest.raises(ValueError, match="flow"):
        GrabCutSegmenter(flow="lucas-kanade")
    with pytest.raises(ValueError):
        GrabCutSegmenter(max_side=4)
    d = GrabCutSegmenter(max_side=320).describe()
    assert d["name"] == "grabcut" and d["max_side"] == 320 and d["flow"] == "dis_medium"


def test_frames_of_mixed_sizes_are_refused_and_one_size_is_tracked(tmp_path):
    """Frames of different sizes are not one video: SAM 2 tracks at one frame size, and the
    masks were all written at the first frame's size. The folder is refused when opened,
    naming both sizes; the same frames at one size are tracked."""
    frames, masks = render_scene(n_frames=6, size=(160, 120))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        img = Image.fromarray(f)
        (img.resize((320, 240), Image.NEAREST) if i % 2 else img).save(folder / f"{i:05d}.png")
    with pytest.raises(MediaError, match="160×120.*320×240"):
        open_media(folder)
    for i, f in enumerate(frames):
        Image.fromarray(f).resize((320, 240), Image.NEAREST).save(folder / f"{i:05d}.png")
    gt = masks["blue square"]
    big = np.repeat(np.repeat(gt, 2, axis=1), 2, axis=2)
    out = GrabCutSegmenter().segment(open_media(folder), _prompt(big, 2))
    for i in range(6):
        assert out[i].shape == (240, 320)
        assert region_j(gt[i][None], out[i][::2, ::2][None])[0] >= 0.8


def test_no_step_works_on_more_than_about_a_megapixel(tmp_path, monkeypatch):
    """``max_side`` alone let a large frame through at full size (a 12000×12000 image went to
    GrabCut whole); now every frame, the keyframe first, is processed within about 1 MP and
    the masks come back at the frame's size."""
    import segresearch.tools.segmenters.grabcut as grabcut

    frames, masks = render_scene(n_frames=3, size=(1600, 1200))
    write_frames(frames, tmp_path / "frames")
    sizes: list[tuple[int, int]] = []
    real = grabcut._prepare

    def recording(rgb, proc):
        sizes.append(proc)
        return real(rgb, proc)

    monkeypatch.setattr(grabcut, "_prepare", recording)
    gt = masks["red circle"]
    j = _ious(open_media(tmp_path / "frames"), gt, _prompt(gt, 1), max_side=100_000)
    assert len(sizes) == 3 and all(w * h <= 1_001_000 for w, h in sizes), sizes
    assert j.mean() >= 0.85
