"""Segmentation: the published SAM 2 protocol against the bare predictor, prompts read from
answers and output texts, mask sets and overlay videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.core.coords import CoordFrame
from segresearch.core.media import open_media
from segresearch.graphs.seg_research import graph
from segresearch.testing.sam2_reference import bare_published
from segresearch.testing.scenes import (
    inner_point,
    mask_box,
    render_scene,
    write_frames,
    write_video,
)
from segresearch.tools.segmenters import (
    Prompt,
    get_segmenter,
    prompt_from_answer,
    prompt_from_output,
    resolve_segmenter_name,
    sam2_available,
    sam2_config_for,
    write_empty_mask_set,
    write_mask_set,
    write_overlay_video,
)
from segresearch.tools.segmenters.grabcut import GrabCutSegmenter

needs_sam2 = pytest.mark.skipif(not sam2_available(), reason="sam2 is not installed")


# ----------------------------------------------------------------- selection


def test_segmenter_selection(tmp_path):
    assert get_segmenter("none") is None
    assert isinstance(get_segmenter("grabcut"), GrabCutSegmenter)
    assert isinstance(get_segmenter("auto"), GrabCutSegmenter)  # no checkpoint configured
    assert resolve_segmenter_name("AUTO") == "grabcut"
    g = GrabCutSegmenter()
    assert get_segmenter(g) is g
    with pytest.raises(ValueError, match="unknown segmenter"):
        get_segmenter("magic")
    if sam2_available():
        with pytest.raises(ValueError, match="needs a checkpoint"):
            get_segmenter("sam2")
        with pytest.raises(ValueError, match="not found"):
            get_segmenter("sam2", sam2_checkpoint=str(tmp_path / "x.pt"))


def test_sam2_config_inferred_from_checkpoint_name():
    assert sam2_config_for("/w/sam2.1_hiera_tiny.pt").endswith("hiera_t.yaml")
    assert sam2_config_for("/w/sam2.1_hiera_base_plus.pt").endswith("hiera_b+.yaml")
    assert sam2_config_for("/w/custom.pt").endswith("hiera_l.yaml")
    assert sam2_config_for("/w/sam2.1_hiera_tiny.pt", "configs/x.yaml") == "configs/x.yaml"


# ------------------------------------------------------------------- prompts


def published_prompt(output: str, w: int, h: int):
    """The reading in post_segmentation/sam2_okvos.py, restated: first keyframe tag, first
    answer on one line, strict JSON, float32 scaling by size/1000, zeros when it fails."""
    import re

    box = np.zeros(4, dtype=np.float32)
    points = np.zeros((1, 2), dtype=np.float32)
    fid = -1
    bs = np.array([w / 1000, h / 1000, w / 1000, h / 1000], dtype=np.float32)
    ps = np.array([w / 1000, h / 1000], dtype=np.float32)
    try:
        fid = int(re.search(r"<keyframe>\s*(\d+)\s*</keyframe>", output, re.S).group(1).strip())
        pred = json.loads(re.search(r"<answer>(.*?)</answer>", output).group(1).strip())
        box = np.array(pred["bbox_2d"], dtype=np.float32) * bs
        points = np.array([pred["point_2d"]], dtype=np.float32) * ps
    except Exception:  # noqa: BLE001, S110 - the published script swallows everything
        pass
    return fid, box, points


OUTPUTS = [
    # first keyframe tag wins, even when the model later picks another one
    '<keyframe> 3 </keyframe> x <keyframe>5</keyframe><answer>{"bbox_2d": [100, 200, 333, 777], "point_2d": [150.5, 300]}</answer>',
    '<keyframe>2</keyframe><answer> {"bbox_2d": [1, 2, 3, 4], "point_2d": [9, 9, 9]} </answer>',  # box only
    '<keyframe>2</keyframe><answer>{"bbox_2d": [0, 0, 0, 0], "point_2d": [10, 20]}</answer>',  # point only
    "<keyframe>2</keyframe><answer>{'bbox_2d': [1, 2, 3, 4]}</answer>",  # not strict JSON
    '<keyframe>2</keyframe><answer>\n{"bbox_2d": [1, 2, 3, 4], "point_2d": [1, 1]}\n</answer>',  # not on one line
    '<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [1, 1]}</answer>',  # no keyframe
    '<keyframe>99</keyframe><answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [1, 1]}</answer>',  # not a frame
]


@pytest.mark.parametrize("text", OUTPUTS)
def test_prompt_from_output_reads_like_the_published_script(text):
    w, h, ids = 854, 480, list(range(10))
    fid, box, points = published_prompt(text, w, h)
    parsed = prompt_from_output(text, ids, w, h)
    prompted = 0 <= fid < len(ids) and (box.any() or points.any())
    assert (parsed.prompt is not None) == prompted, parsed
    if parsed.prompt is None:
        assert parsed.problem
        return
    p = parsed.prompt
    assert p.frame == fid
    assert (p.box is not None) == bool(box.any()) and (p.point is not None) == bool(points.any())
    if p.box is not None:  # the same float32 values SAM 2 receives
        assert np.array_equal(np.asarray(p.box, np.float32), box)
    if p.point is not None:
        assert np.array_equal(np.asarray([p.point], np.float32), points)


def test_prompt_from_output_images_and_qwen25():
    text = '<answer>{"bbox_2d": [10, 20, 30, 40], "point_2d": [20, 30]}</answer>'
    p = prompt_from_output(text, [0], 200, 100, single_image=True).prompt
    assert p.frame == 0 and p.box == pytest.approx((2, 2, 6, 4))
    p = prompt_from_output("<keyframe>0</keyframe>" + text, [0], 864, 432,
                           coords=CoordFrame("qwen25", 864)).prompt
    assert p.box == pytest.approx((10, 10, 30, 20))
    assert prompt_from_output(None, [0], 10, 10).prompt is None  # type: ignore[arg-type]
    nan = '<keyframe>0</keyframe><answer>{"bbox_2d": [NaN, 1, 2, 3], "point_2d": [1, 1]}</answer>'
    assert prompt_from_output(nan, [0], 10, 10).prompt.box is None


def test_prompt_from_answer():
    p = prompt_from_answer({"keyframe": 4, "bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}, 160, 120)
    assert p == Prompt(4, (16.0, 24.0, 48.0, 48.0), (32.0, 36.0))
    assert prompt_from_answer({"keyframe": None, "bbox_2d": [1, 2, 3, 4], "point_2d": [1, 1]}, 9, 9) is None
    with pytest.raises(ValueError):
        Prompt(0)


# --------------------------------------------------------------- mask sets


def test_mask_set_is_complete_atomic_and_replaces_old(scene_dir, tmp_path):
    media = open_media(scene_dir / "frames")
    dest = tmp_path / "seg" / "q1"
    dest.mkdir(parents=True)
    (dest / "stale.png").write_bytes(b"old run")
    ones = np.ones((media.height, media.width), bool)
    info = write_mask_set(dest, media, [(4, ones), (5, ones), (4, ~ones)])
    names = sorted(p.name for p in dest.iterdir())
    assert names == [f"{i:05d}.png" for i in range(12)]  # stale file gone, every frame present
    assert info.frames == 12 and info.reached == 2 and info.area[4] == 0 and info.area[5] == ones.size
    for name, expect in (("00004.png", 0), ("00005.png", 255), ("00000.png", 0)):
        arr = np.asarray(Image.open(dest / name))
        assert arr.dtype == np.uint8 and arr.shape == (120, 160) and set(np.unique(arr)) == {expect}

    def broken():
        yield 1, ones
        raise RuntimeError("segmenter died")

    with pytest.raises(RuntimeError):
        write_mask_set(dest, media, broken())
    assert sorted(p.name for p in dest.iterdir()) == names  # the old complete set survives
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp left
    write_empty_mask_set(dest, media)
    assert all(not np.asarray(Image.open(p)).any() for p in dest.iterdir())


def test_mask_set_refuses_unknown_frames(scene_dir, tmp_path):
    media = open_media(scene_dir / "frames")
    with pytest.raises(ValueError, match="frame id 99"):
        write_mask_set(tmp_path / "x", media, [(99, np.zeros((120, 160), bool))])


@pytest.mark.parametrize("size", [(96, 64), (95, 63)])
def test_overlay_video_is_h264_with_every_frame(tmp_path, size):
    import imageio_ffmpeg

    frames, masks = render_scene(n_frames=5, size=size)
    media = open_media(write_frames(frames, tmp_path / "f")[0].parent)
    m = masks["blue square"]
    write_mask_set(tmp_path / "masks", media, ((i, m[i]) for i in range(5)))
    b = mask_box(m[2])
    path = write_overlay_video(media, tmp_path / "masks", tmp_path / "overlay.mp4",
                               Prompt(2, tuple(map(float, b)), tuple(map(float, inner_point(m[2])))))
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    assert meta["codec"] == "h264" and meta["size"] == (size[0] + size[0] % 2, size[1] + size[1] % 2)
    assert len(list(reader)) == 5
    assert len(open_media(path)) == 5


# ---------------------------------------------------------------------- SAM 2


class _Recorder:
    """Wraps the predictor's propagate_in_video to keep every logits tensor it yields."""

    def __init__(self, predictor, monkeypatch):
        self.calls: list[list[tuple[int, object]]] = []
        orig = predictor.propagate_in_video

        def wrapped(*a, **k):
            seen: list[tuple[int, object]] = []
            self.calls.append(seen)
            for idx, ids, logits in orig(*a, **k):
                seen.append((idx, logits.clone()))
                yield idx, ids, logits

        monkeypatch.setattr(predictor, "propagate_in_video", wrapped)


@needs_sam2
def test_sam2_matches_the_bare_predictor_driven_the_published_way(
    tiny_sam2_checkpoint, sam2_clip, monkeypatch, capfd
):
    from segresearch.compat.sam2 import STATE_KEYS
    from segresearch.tools.segmenters import SAM2Segmenter

    root, _frames, prompt = sam2_clip
    seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", image_size=256)
    predictor, _ = seg.predictor()
    rec = _Recorder(predictor, monkeypatch)
    media = open_media(root / "frames")
    with seg.open(media) as session:
        ours = dict(session.masks(prompt))
        again = dict(session.masks(prompt))  # the same session, reset between queries
        assert session.frames.decoded <= 3 * len(media)
    assert not capfd.readouterr().err.count("propagate in video")  # sam2's bars are silenced
    state, bare = bare_published(predictor, root / "frames", prompt)
    assert sorted(state) == sorted(STATE_KEYS)  # our state has exactly sam2's layout
    assert sorted(ours) == list(range(6))
    for fid in range(6):
        assert np.array_equal(ours[fid], bare[fid]) and np.array_equal(again[fid], bare[fid])
    # bit-identical logits on every frame, query after query (not only thresholded masks)
    ours_calls, again_calls, bare_calls = rec.calls[0:2], rec.calls[2:4], rec.calls[4:6]
    for mine, other, theirs in zip(ours_calls, again_calls, bare_calls, strict=True):
        assert [i for i, _ in mine] == [i for i, _ in theirs]
        for (_, a), (_, b), (_, c) in zip(mine, other, theirs, strict=True):
            assert np.array_equal(a.numpy(), c.numpy()) and np.array_equal(b.numpy(), c.numpy())
    assert ours[2].any()  # the prompted frame has a mask even with random weights


@needs_sam2
def test_sam2_two_calls_differ_from_one_combined_call(tiny_sam2_checkpoint, sam2_clip):
    import torch

    from segresearch.tools.segmenters import SAM2Segmenter

    root, _frames, prompt = sam2_clip
    seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", image_size=256)
    predictor, _ = seg.predictor()
    with seg.open(open_media(root / "frames")) as session:
        ours = dict(session.masks(prompt))
    with torch.inference_mode():
        state = predictor.init_state(video_path=str(root / "frames"))
        _, _, one = predictor.add_new_points_or_box(
            inference_state=state, frame_idx=2, obj_id=1, box=np.asarray(prompt.box, np.float32),
            points=np.asarray([prompt.point], np.float32), labels=np.array([1], np.int32))
    assert not np.array_equal((one[0, 0] > 0).numpy(), ours[2])


@needs_sam2
def test_frame_store_is_bounded_and_bit_identical(tiny_sam2_checkpoint, sam2_clip):
    import torch
    from sam2.utils.misc import load_video_frames_from_jpg_images

    from segresearch.tools.segmenters.sam2 import _NORMALISED, FrameStore

    # every uint8 value, normalised as sam2.utils.misc does it (float64 / 255, float32 after)
    every = torch.from_numpy(np.arange(256)[None, None, :].repeat(3, 0) / 255.0).to(torch.float32)
    every -= torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    every /= torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    assert torch.equal(every[:, 0, :], torch.from_numpy(_NORMALISED))
    root, _frames, _ = sam2_clip
    ref, h, w = load_video_frames_from_jpg_images(str(root / "frames"), 64, True)
    store = FrameStore(open_media(root / "frames"), 64, cache_mb=2 * 3 * 64 * 64 / 2**20, prefetch=2)
    try:
        for i in [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0]:
            assert torch.equal(store[i], ref[i])
        assert len(store._cache) <= 2 and len(store._ready) <= 2
        assert (h, w) == (64, 96) and len(store) == 6
        with pytest.raises(IndexError):
            store[6]
    finally:
        store.close()


@needs_sam2
def test_sam2_in_the_graph_writes_every_frame_and_names_itself(tmp_path, tiny_sam2_checkpoint):
    frames, masks = render_scene(n_frames=5, size=(96, 64))
    video = write_video(frames, tmp_path / "clip.mp4")
    gt = masks["blue square"][2]
    box, point = mask_box(gt), inner_point(gt)
    rel = [round(box[0] / 96 * 1000), round(box[1] / 64 * 1000), round(box[2] / 96 * 1000), round(box[3] / 64 * 1000)]
    pt = [round(point[0] / 96 * 1000), round(point[1] / 64 * 1000)]
    turns = ["<thinking>a</thinking><keyframe> 2 </keyframe>",
             "<thinking>b</thinking><answer>" + json.dumps({"bbox_2d": rel, "point_2d": pt}) + "</answer>"]
    ctx = Context(model=ReplayChatModel(turns=turns), search="none", segmenter="auto",
                  sam2_checkpoint=str(tiny_sam2_checkpoint), sam2_image_size=256, num_frames=5,
                  output_dir=str(tmp_path / "out"))
    out = graph.invoke({"query": "the square", "media": str(video)}, context=ctx)
    assert out["stop_reason"] == "answer", out.get("error")
    assert out["segmenter"] == "sam2"
    files = sorted(p.name for p in Path(out["masks_dir"]).iterdir())
    assert files == [f"{i:05d}.png" for i in range(5)]
    for f in files:
        with Image.open(Path(out["masks_dir"]) / f) as im:
            assert im.size == (96, 64) and set(np.unique(np.asarray(im))) <= {0, 255}
    overlay = Path(out["run_dir"]) / "overlay.mp4"
    assert len(open_media(overlay)) == 5
    traj = json.loads((Path(out["run_dir"]) / "trajectory.json").read_text())
    seg = [e for e in traj["events"] if e["type"] == "segment"][0]
    assert seg["segmenter"] == "sam2" and seg["requested"] == "auto" and seg["frames"] == 5
    assert seg["prompt"]["frame"] == 2 and seg["prompt"]["box"][0] == pytest.approx(rel[0] * 96 / 1000)
    assert traj["segmenter"] == "sam2"
    assert "box first, then the point" in (Path(out["run_dir"]) / "report.md").read_text()


@needs_sam2
def test_sam2_bad_checkpoint_is_found_before_the_model_runs(tmp_path, scene_dir):
    bad = tmp_path / "sam2.1_hiera_tiny.pt"
    bad.write_bytes(b"not a checkpoint")
    turns = ["<thinking>a</thinking><keyframe> 6 </keyframe>",
             '<thinking>b</thinking><answer>{"bbox_2d": [1, 2, 300, 400], "point_2d": [100, 100]}</answer>']
    ctx = Context(model=ReplayChatModel(turns=turns), search="none", segmenter="sam2",
                  sam2_checkpoint=str(bad), output_dir=str(tmp_path / "run"))
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")}, context=ctx)
    assert out["stop_reason"] == "error:config" and out["turns"] == 0
    assert "cannot load SAM 2 checkpoint" in out["error"] and out["masks_dir"] is None


@pytest.mark.slow  # several SAM 2 propagations (about 7 s on 2 cores)
@needs_sam2
def test_saved_outputs_of_one_video_share_one_sam2_session(tiny_sam2_checkpoint, sam2_clip,
                                                           tmp_path, monkeypatch):
    """`segment_jobs` opens the video once for all its queries (reset between them), and
    each query's masks equal the bare predictor's for the prompt the published rule reads."""
    import segresearch.tools.segmenters.sam2 as sam2_mod
    from segresearch.eval.postseg import SegJob, segment_jobs
    from segresearch.tools.segmenters import SAM2Segmenter

    root, frames, _ = sam2_clip
    h, w = frames[0].shape[:2]
    calls = []
    real_init = sam2_mod.init_state
    monkeypatch.setattr(sam2_mod, "init_state", lambda *a, **k: calls.append(1) or real_init(*a, **k))

    def out(box, point, frame=2):
        rel = [round(v / s * 1000) for v, s in zip(box, (w, h, w, h), strict=True)]
        pt = [round(v / s * 1000) for v, s in zip(point, (w, h), strict=True)]
        return (f"<keyframe>{frame}</keyframe> <keyframe>4</keyframe>"
                f'<answer>{{"bbox_2d": {rel}, "point_2d": {pt}}}</answer>')

    texts = {"a": out((20, 30, 50, 60), (35, 45)), "b": out((5, 5, 40, 30), (20, 15), frame=0),
             "c": "<keyframe>1</keyframe><answer>not json</answer>"}
    jobs = [SegJob(id=k, media=str(root / "frames"), output=v) for k, v in texts.items()]
    seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", image_size=256)
    recs = segment_jobs(jobs, tmp_path / "seg", seg, progress=False)
    assert len(calls) == 1  # one inference state for the three queries of the video
    assert recs["c"]["prompt"] is None and "not valid JSON" in recs["c"]["problem"]
    assert not any(np.asarray(Image.open(p)).any() for p in (tmp_path / "seg" / "c").glob("*.png"))
    predictor, _ = seg.predictor()
    media = open_media(root / "frames")
    for qid in ("a", "b"):
        prompt = prompt_from_output(texts[qid], media.frame_ids, w, h).prompt
        assert recs[qid]["prompt"]["frame"] == prompt.frame == (2 if qid == "a" else 0)
        _, bare = bare_published(predictor, root / "frames", prompt)
        for fid in media.frame_ids:
            mine = np.asarray(Image.open(tmp_path / "seg" / qid / f"{fid:05d}.png")) > 0
            assert np.array_equal(mine, bare[fid]), (qid, fid)
    # a second pass finds everything done
    calls.clear()
    segment_jobs(jobs, tmp_path / "seg", seg, progress=False)
    assert calls == []


# ------------------------------------------------- SAM 2 frames: once per video


@pytest.mark.slow  # several SAM 2 propagations (about 10 s on 2 cores)
@needs_sam2
def test_frames_are_prepared_once_per_video_for_all_its_queries(tiny_sam2_checkpoint, sam2_clip,
                                                                tmp_path, monkeypatch):
    """An evaluation's budget keeps a video's prepared frames for all its queries; a
    budget of nothing prepares them again for each query. The masks are the same."""
    from segresearch.eval.postseg import SegJob, segment_jobs
    from segresearch.tools.segmenters import EVAL_FRAME_CACHE_MB, SAM2Segmenter
    from segresearch.tools.segmenters.sam2 import FrameStore

    root, frames, _ = sam2_clip
    h, w = frames[0].shape[:2]
    prepared: list[int] = []
    real = FrameStore.tensor
    monkeypatch.setattr(FrameStore, "tensor", lambda self, pos: prepared.append(pos) or real(self, pos))
    texts = [f'<keyframe>{k}</keyframe><answer>{{"bbox_2d": [100, 150, {400 + 50 * k}, 700], '
             f'"point_2d": [250, 400]}}</answer>' for k in (0, 3, 5)]
    jobs = [SegJob(id=f"q{i}", media=str(root / "frames"), output=t) for i, t in enumerate(texts)]
    counts = {}
    for name, mb in (("kept", EVAL_FRAME_CACHE_MB), ("none", 0)):
        prepared.clear()
        seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", image_size=256, frame_cache_mb=mb)
        segment_jobs(jobs, tmp_path / name, seg, progress=False)
        counts[name] = len(prepared)
    assert counts["kept"] == len(frames)  # each frame once, for three queries
    assert counts["none"] >= 3 * len(frames)
    for j in jobs:
        for p in sorted((tmp_path / "kept" / j.id).glob("*.png")):
            assert p.read_bytes() == (tmp_path / "none" / j.id / p.name).read_bytes()
    assert (w, h) == (96, 64)


@needs_sam2
def test_frame_store_budget_and_prefetch_threads(sam2_clip, tmp_path):
    """Kept frames never exceed the byte budget; once it is full the frames kept stay (a
    sweep of another query reuses them); several prefetch threads give the same tensors."""
    import torch
    from sam2.utils.misc import load_video_frames_from_jpg_images

    from segresearch.tools.segmenters.sam2 import FrameStore

    root, frames, _ = sam2_clip
    ref, _, _ = load_video_frames_from_jpg_images(str(root / "frames"), 64, True)
    per_frame = 3 * 64 * 64 * 4
    store = FrameStore(open_media(root / "frames"), 64, cache_mb=3 * per_frame / 2**20, prefetch=4, threads=3)
    assert store.threads == 3 and store.frame_bytes == per_frame
    try:
        sweeps = [0] + [k for key in (2, 4, 1) for k in [key, *range(key + 1, 6), *range(key - 1, -1, -1)]]
        for i in sweeps:
            assert torch.equal(store[i], ref[i])
            assert store.held_bytes <= 3 * per_frame and len(store._ready) <= 4
        kept = list(store._cache)
        assert len(kept) == 3 and store.hits >= 3 * 2  # the kept frames served later sweeps
        assert store.decoded < len(sweeps)
    finally:
        store.close()
    assert not store._cache and store._pool is None
    frames_, _ = render_scene(n_frames=4, size=(64, 48))
    video = write_video(frames_, tmp_path / "v.mp4")
    one = FrameStore(open_media(video), 64, prefetch=4, threads=4)
    assert one.threads == 1  # a video file decodes in order: one thread
    one.close()


@needs_sam2
def test_prefetch_threads_follow_the_device(tiny_sam2_checkpoint):
    from segresearch.tools.segmenters import DEFAULT_FRAME_CACHE_MB, SAM2Segmenter
    from segresearch.tools.segmenters.sam2 import default_prefetch_threads

    assert default_prefetch_threads("cpu") == 0
    assert 2 <= default_prefetch_threads("cuda") <= 4 and 2 <= default_prefetch_threads("cuda:1") <= 4
    seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu")
    assert seg.prefetch_threads == 0 and seg.frame_cache_mb == DEFAULT_FRAME_CACHE_MB
    seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", prefetch_threads=3, frame_cache_mb=10)
    assert seg.prefetch_threads == 3 and seg.frame_cache_mb == 10
    assert "frame_cache_mb" not in seg.describe()  # not a setting that changes masks
    with pytest.raises(ValueError, match="prefetch_threads"):
        SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", prefetch_threads=-1)
    got = get_segmenter("sam2", sam2_checkpoint=str(tiny_sam2_checkpoint), device="cpu",
                        frame_cache_mb=5, prefetch_threads=2)
    assert got.frame_cache_mb == 5 and got.prefetch_threads == 2


@pytest.mark.slow  # ~15 s on 2 cores: both sides propagate 16 frames
@needs_sam2
def test_sam2_drops_outputs_outside_its_memory_window_with_identical_masks(
    tiny_sam2_checkpoint, tmp_path, monkeypatch
):
    """Propagation keeps a fixed number of frames' outputs and still matches the bare
    predictor bit for bit. The memory and object-pointer windows are shortened (on both sides: it is the
    same predictor) so that a 16-frame clip drops outputs in both directions."""
    from segresearch.compat.sam2 import memory_window
    from segresearch.tools.segmenters import SAM2Segmenter

    frames, masks = render_scene(n_frames=16, size=(64, 48))
    write_frames(frames, tmp_path / "frames")
    gt = masks["blue square"][8]
    prompt = Prompt(8, tuple(float(v) for v in mask_box(gt)), tuple(float(v) for v in inner_point(gt)))
    seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", image_size=256)
    predictor, _ = seg.predictor()
    monkeypatch.setattr(predictor, "num_maskmem", 3)  # the frame before and the one before it
    monkeypatch.setattr(predictor, "max_obj_ptrs_in_encoder", 2)  # the frame before
    window = memory_window(predictor)
    assert window == 2
    media = open_media(tmp_path / "frames")
    held = []
    ours: dict[int, np.ndarray] = {}
    with seg.open(media) as session:
        for fid, mask in session.masks(prompt):
            ours[fid] = mask
            held.append(len(session.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]))
    _, bare = bare_published(predictor, tmp_path / "frames", prompt)
    assert sorted(ours) == list(range(16))
    assert all(np.array_equal(ours[f], bare[f]) for f in range(16))
    # behind the current frame: the window; around the keyframe: the window on each side
    assert max(held) <= 3 * window + 1
    # forward pass at frame 15: 9..15 without drops; kept: 13..15 and the keyframe's 9, 10
    assert held[7] == 5
    # backward pass at frame 0: kept 0..2, 6..7 (the keyframe's) and 9, 10 (its other side)
    assert held[-1] == 7 and len(held) == 8 + 9
