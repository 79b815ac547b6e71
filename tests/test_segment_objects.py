"""Several objects on the segmenter side: prompts with labelled points, ``VideoSession.track``
(GrabCut object by object, SAM 2 jointly in one propagation), per-object mask folders with
their union, and the segment tool's ``objects`` with an overlay that colours them apart."""

from __future__ import annotations

import numpy as np
import pytest

from segresearch.core.media import as_uint8_rgb, open_media
from segresearch.testing.scenes import Shape, inner_point, mask_box, render_scene, write_frames
from segresearch.tools.segment import make_segment_tool
from segresearch.tools.segmenters import (
    Prompt,
    SAM2Segmenter,
    stable_seed,
    write_mask_set,
    write_object_mask_sets,
)
from segresearch.tools.segmenters.base import nearest_prompt_wins
from segresearch.tools.segmenters.grabcut import GrabCutSegmenter
from segresearch.tools.segmenters.writers import read_mask
from segresearch.tools.visualize import OBJECT_COLOURS

TWO = ("red circle", "blue square")


@pytest.fixture(scope="module")
def two_objects(tmp_path_factory):
    """8 frames, 160×120, with the default shapes; (media folder, {name: masks (T, H, W)})."""
    root = tmp_path_factory.mktemp("two")
    frames, masks = render_scene(n_frames=8, size=(160, 120))
    write_frames(frames, root / "frames")
    return root / "frames", masks


def _prompt(mask: np.ndarray, frame: int, **kw) -> Prompt:
    return Prompt(frame, tuple(float(v) for v in mask_box(mask)),
                  tuple(float(v) for v in inner_point(mask)), **kw)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def _per_object(stream, n: int) -> list[dict[int, np.ndarray]]:
    out: list[dict[int, np.ndarray]] = [{} for _ in range(n)]
    for k, fid, mask in stream:
        out[k][fid] = mask
    return out


# ----------------------------------------------------------------------- prompts


def test_prompt_without_points_keeps_its_dict_and_seed():
    box, point = (1.5, 2.0, 30.25, 40.0), (10.0, 12.5)
    plain = Prompt(3, box, point)
    assert plain.as_dict() == {"frame": 3, "box": list(box), "point": list(point)}
    assert plain.base_seed() == stable_seed(3, box, point)
    named = Prompt(3, box, point, label="dog")  # a name moves nothing: same seed
    assert named.base_seed() == plain.base_seed()
    assert named.as_dict() == {**plain.as_dict(), "label": "dog"}
    clicked = Prompt(3, box, point, points=((5.0, 6.0, 0),))
    assert clicked.base_seed() != plain.base_seed()
    assert clicked.as_dict()["points"] == [[5.0, 6.0]] and clicked.as_dict()["labels"] == [0]
    assert Prompt(3, points=((5.0, 6.0, 1),)).point is None  # points alone are a prompt
    with pytest.raises(ValueError, match="box, a point or points"):
        Prompt(3)
    with pytest.raises(ValueError, match="labelled point"):
        Prompt(3, points=((5.0, 6.0, 2),))


def test_nearest_prompt_decides_each_frame():
    ids = list(range(10, 18))
    decides = nearest_prompt_wins([Prompt(11, point=(1, 1)), Prompt(16, point=(1, 1))], ids)
    assert decides[0] == frozenset(range(10, 18))
    # prompts at positions 1 and 6: position 4 (frame 14) is 3 from the first, 2 from the second
    assert decides[1] == frozenset({14, 15, 16, 17})


# ---------------------------------------------------------------------- GrabCut


def test_grabcut_tracks_two_objects_each_on_its_own(two_objects):
    folder, gt = two_objects
    media = open_media(folder)
    prompts = [[_prompt(gt[name][3], 3, label=name)] for name in TWO]
    with GrabCutSegmenter().open(media) as session:
        per = _per_object(session.track(prompts), 2)
        alone = dict(session.masks(prompts[1][0]))
    for k, name in enumerate(TWO):
        assert sorted(per[k]) == media.frame_ids
        for fid in media.frame_ids:
            assert _iou(per[k][fid], gt[name][fid]) > 0.6, (name, fid)
    assert all(np.array_equal(per[1][f], alone[f]) for f in media.frame_ids)  # one prompt: masks()


def test_grabcut_correction_with_a_negative_point(two_objects):
    folder, gt = two_objects
    media = open_media(folder)
    square = gt["blue square"]
    answer = _prompt(square[1], 1)
    x, y = inner_point(square[6])
    fix = Prompt(6, tuple(float(v) for v in mask_box(square[6])), points=((float(x), float(y), 0),))
    with GrabCutSegmenter().open(media) as session:
        (before,) = _per_object(session.track([[answer]]), 1)
        (after,) = _per_object(session.track([[answer, fix]]), 1)
    assert before[6][y, x] and not after[6][y, x]  # the clicked pixel left the mask
    for fid in (0, 1, 2, 3):  # frames nearer the answer keep the answer's masks
        assert np.array_equal(before[fid], after[fid])


# ----------------------------------------------------------------------- writers


def test_object_mask_sets_per_object_union_and_atomic(two_objects, tmp_path):
    folder, gt = two_objects
    media = open_media(folder)
    a, b = gt["red circle"], gt["blue square"]
    stream = [(0, f, a[f]) for f in range(0, 5)] + [(1, f, b[f]) for f in range(3, 8)]
    masks_dir, objects_dir = tmp_path / "run" / "masks", tmp_path / "run" / "objects"
    (objects_dir / "3").mkdir(parents=True)  # an earlier answer's third object
    union, sets = write_object_mask_sets(masks_dir, objects_dir, media, iter(stream), 3)
    assert [s.path.name for s in sets] == ["1", "2", "3"] and not (objects_dir / "4").exists()
    assert [s.reached for s in sets] == [5, 5, 0] and union.reached == 8
    for fid in media.frame_ids:
        name = f"{media.frame_name(fid)}.png"
        got = [read_mask(s.path / name) for s in sets]
        assert np.array_equal(got[0], a[fid] if fid < 5 else np.zeros_like(a[fid]))
        assert np.array_equal(got[1], b[fid] if fid >= 3 else np.zeros_like(b[fid]))
        assert not got[2].any()
        assert np.array_equal(read_mask(masks_dir / name), got[0] | got[1])
        assert union.area[fid] == int((got[0] | got[1]).sum())
    union2, sets2 = write_object_mask_sets(masks_dir, objects_dir, media, iter(stream), 2)
    assert not (objects_dir / "3").exists() and len(sets2) == 2  # stale folder removed

    def broken():
        yield 0, 0, a[0]
        yield 1, 0, b[0]
        raise RuntimeError("segmenter died")

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        write_object_mask_sets(fresh / "masks", fresh / "objects", media, broken(), 2)
    assert not (fresh / "masks").exists() and not (fresh / "objects").exists()
    assert not [p for p in fresh.iterdir() if p.name.startswith(".")]  # no temporary left


def test_one_object_writes_exactly_a_mask_set(two_objects, tmp_path):
    folder, gt = two_objects
    media = open_media(folder)
    m = gt["blue square"]
    union, sets = write_object_mask_sets(tmp_path / "a", tmp_path / "objects", media,
                                         ((0, f, m[f]) for f in range(2, 6)), 1)
    plain = write_mask_set(tmp_path / "b", media, ((f, m[f]) for f in range(2, 6)))
    assert sets == [] and not (tmp_path / "objects").exists()
    assert (union.frames, union.reached, union.area) == (plain.frames, plain.reached, plain.area)
    for p in sorted((tmp_path / "b").iterdir()):
        assert (tmp_path / "a" / p.name).read_bytes() == p.read_bytes()


# ------------------------------------------------------------------ segment tool


def test_segment_tool_with_objects_colours_them_apart(tmp_path):
    grey = (150, 150, 150)  # the same colour under both: only the tint tells them apart
    shapes = (Shape("left", "square", grey, (0.25, 0.5), (0.004, 0.0), 0.14),
              Shape("right", "square", grey, (0.72, 0.5), (-0.004, 0.0), 0.14))
    frames, gt = render_scene(n_frames=4, size=(160, 120), shapes=shapes)
    folder = write_frames(frames, tmp_path / "frames")[0].parent
    media = open_media(folder)
    run = tmp_path / "run"
    tool = make_segment_tool(media, GrabCutSegmenter(), run / "masks")
    objects = [{"keyframe": 1, "bbox_2d": [float(v) for v in mask_box(gt[n][1])],
                "point_2d": [float(v) for v in inner_point(gt[n][1])], "label": n}
               for n in ("left", "right")]
    text, art = tool.func(keyframe=None, objects=objects)
    assert "2 objects" in text
    assert [o["label"] for o in art["objects"]] == ["left", "right"]
    assert [o["dir"] for o in art["objects"]] == [str(run / "objects" / "1"), str(run / "objects" / "2")]
    assert all(o["reached"] == 4 and o["keyframe_area"] > 0 for o in art["objects"])
    for fid in media.frame_ids:
        name = f"{media.frame_name(fid)}.png"
        left, right = (read_mask(run / "objects" / k / name) for k in ("1", "2"))
        assert _iou(left, gt["left"][fid]) > 0.6 and _iou(right, gt["right"][fid]) > 0.6
        assert np.array_equal(read_mask(run / "masks" / name), left | right)
    overlay = open_media(run / "overlay.mp4")
    rgb = as_uint8_rgb(overlay.frame(overlay.frame_ids[2])).astype(int)
    (lx, ly), (rx, ry) = inner_point(gt["left"][2]), inner_point(gt["right"][2])
    pl, pr = rgb[ly, lx], rgb[ry, rx]
    want = [np.asarray(grey) * 0.5 + np.asarray(c) * 0.5 for c in OBJECT_COLOURS[:2]]
    assert np.abs(pl - want[0]).max() < 30 and np.abs(pr - want[1]).max() < 30
    assert np.abs(pl - pr).max() > 60


def test_segment_tool_one_object_is_the_plain_path(two_objects, tmp_path):
    folder, gt = two_objects
    media = open_media(folder)
    m = gt["blue square"][2]
    box, point = [float(v) for v in mask_box(m)], [float(v) for v in inner_point(m)]
    plain = make_segment_tool(media, GrabCutSegmenter(), tmp_path / "a" / "masks")
    named = make_segment_tool(media, GrabCutSegmenter(), tmp_path / "b" / "masks")
    _, art_a = plain.func(keyframe=2, bbox_2d=box, point_2d=point)
    _, art_b = named.func(keyframe=None, objects=[{"keyframe": 2, "bbox_2d": box, "point_2d": point,
                                                   "label": "square"}])
    assert art_b["objects"] == [{"label": "square", "dir": None, "keyframe_area": art_a["area"][2],
                                 "reached": art_a["reached"]}]
    assert art_b["prompt"] == art_a["prompt"] and art_b["area"] == art_a["area"]
    for name in art_a["files"]:
        assert (tmp_path / "b" / "masks" / name).read_bytes() == (tmp_path / "a" / "masks" / name).read_bytes()


# ------------------------------------------------------------------------- SAM 2


class _Propagations:
    """Counts the predictor's propagate_in_video calls and the object ids they yield."""

    def __init__(self, predictor, monkeypatch):
        self.calls: list[tuple[bool, list[list[int]]]] = []
        orig = predictor.propagate_in_video

        def wrapped(state, *a, reverse=False, **k):
            seen: list[list[int]] = []
            self.calls.append((reverse, seen))
            for idx, obj_ids, logits in orig(state, *a, reverse=reverse, **k):
                seen.append(list(obj_ids))
                yield idx, obj_ids, logits

        monkeypatch.setattr(predictor, "propagate_in_video", wrapped)


@pytest.fixture()
def sam2_session(tiny_sam2_checkpoint, sam2_clip):
    """A SAM 2 session on the clip, run on one CPU thread: on a busy machine (the suite beside
    other work) two OpenMP threads spinning for two cores made these tests ~10x slower."""
    import torch

    root, _frames, prompt = sam2_clip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # 128 px: the code path at a quarter of the 256 px tests' cost (their masks are random anyway)
    seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", image_size=128)
    try:
        with seg.open(open_media(root / "frames")) as session:
            yield seg, session, prompt
    finally:
        torch.set_num_threads(threads)


def test_sam2_tracks_two_objects_in_one_propagation(sam2_session, sam2_clip, monkeypatch):
    import segresearch.tools.segmenters.sam2 as sam2_mod

    seg, session, prompt = sam2_session
    _root, frames, _ = sam2_clip
    alone_seq = list(session.masks(prompt))
    alone = dict(alone_seq)
    _, gt = render_scene(n_frames=6, size=(96, 64))
    other = _prompt(gt["red circle"][2], 2)
    predictor, _ = seg.predictor()
    calls = _Propagations(predictor, monkeypatch)
    drops: list[int] = []
    real_drop = sam2_mod.drop_outputs_outside_window
    monkeypatch.setattr(sam2_mod, "drop_outputs_outside_window",
                        lambda p, s, idx, rev: drops.append(idx) or real_drop(p, s, idx, rev))
    stream = list(session.track([[prompt], [other]]))
    per = _per_object(stream, 2)
    assert [rev for rev, _ in calls.calls] == [False, True]  # one pass each way, both objects
    assert all(ids == [1, 2] for _, seen in calls.calls for ids in seen)
    assert sorted(per[0]) == sorted(per[1]) == list(range(len(frames)))
    assert len(drops) == sum(len(seen) for _, seen in calls.calls)  # memory kept flat per frame
    # objects are tracked independently: the first one's masks are exactly its masks alone
    # (the published protocol, as one object with one prompt gives)
    assert all(np.array_equal(per[0][f], alone[f]) for f in alone)
    assert [f for k, f, _ in stream if k == 0] == [f for f, _ in alone_seq]


def test_sam2_objects_prompted_on_different_frames(sam2_session):
    """Propagation starts at the earliest prompted frame, so it reaches the second object
    before its own prompt, with only its (bfloat16) memories and no pointer: on float32
    weights SAM 2 1.1.0 fails there unless compat casts the memories."""
    seg, session, prompt = sam2_session
    _, gt = render_scene(n_frames=6, size=(96, 64))
    per = _per_object(session.track([[prompt], [_prompt(gt["red circle"][4], 4)]]), 2)
    assert sorted(per[0]) == sorted(per[1]) == list(range(6))
    assert per[1][4].any()  # its prompted frame has a mask even with random weights
    assert seg.predictor()[0].memory_attention._segresearch_casts_memory


def test_sam2_negative_point_correction_changes_that_object(sam2_session):
    _seg, session, prompt = sam2_session
    before = _per_object(session.track([[prompt]]), 1)[0]  # masks() itself runs through track
    x, y = prompt.point
    fix = Prompt(4, points=((x + 6.0, y, 0), (x, y, 1)))  # a later frame, with a negative click
    after = _per_object(session.track([[prompt, fix]]), 1)[0]
    assert sorted(after) == sorted(before)
    assert any(not np.array_equal(before[f], after[f]) for f in before)


@pytest.mark.slow
def test_sam2_joint_track_holds_a_window_of_outputs_not_the_video(tiny_sam2_checkpoint, tmp_path):
    """Two objects over 100 frames: the outputs SAM 2 holds per object stay within its memory
    window behind the current frame and around the object's prompted frame, as for one
    object (``masks``): a bound set by the window, not by the video's length."""
    import torch

    from segresearch.compat.sam2 import memory_window

    frames, gt = render_scene(n_frames=100, size=(64, 48))
    folder = write_frames(frames, tmp_path / "frames")[0].parent
    seg = SAM2Segmenter(str(tiny_sam2_checkpoint), device="cpu", image_size=128)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with seg.open(open_media(folder)) as session:
            window = memory_window(session.predictor)
            held = []
            for _k, _fid, _mask in session.track([[_prompt(gt["blue square"][40], 40)],
                                                   [_prompt(gt["red circle"][44], 44)]]):
                outs = session.state["output_dict_per_obj"]
                held.append(max(len(o["non_cond_frame_outputs"]) for o in outs.values()))
    finally:
        torch.set_num_threads(threads)
    assert len(held) == 2 * (100 + 1)  # every frame of both objects, the start frame twice
    # the window behind the current frame (window + 1) and around the prompt (2 × window)
    assert max(held) <= 3 * window + 1 < 100
