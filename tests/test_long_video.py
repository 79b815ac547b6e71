"""Hour-long videos in flat memory (issue 22, item 4): the segment step's peak memory does
not grow with the video's length, and every frame gets its mask file.

Each length runs in a fresh process (``bench/long_video.py``'s child mode, the benchmark's
own measurement) so that one run's peak is not hidden by another's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from segresearch.compat.sam2 import drop_outputs_outside_window, memory_window
from segresearch.testing.scenes import inner_point, mask_box, render_scene, write_frames
from segresearch.tools.segmenters import sam2_available

BENCH = Path(__file__).resolve().parents[1] / "bench" / "long_video.py"
SEGMENT_BENCH = BENCH.parent / "segment.py"


def _segment(tmp: Path, n: int, size: tuple[int, int]) -> dict:
    """Write an ``n``-frame MJPG video and segment it with the fallback segmenter in a fresh
    process; its JSON line (peak MB over the step, frames written, frames reached)."""
    make = (f"import json, sys; sys.path.insert(0, {str(BENCH.parent)!r}); "
            "from long_video import write_long_video; from pathlib import Path; "
            f"print(json.dumps(write_long_video(Path({str(tmp / 'video.avi')!r}), {n}, {size[0]}, {size[1]})))")
    made = subprocess.run([sys.executable, "-c", make], capture_output=True, text=True, check=True)
    prompt = made.stdout.strip().splitlines()[-1]
    r = subprocess.run([sys.executable, str(BENCH), "--child", "grabcut", "--video", str(tmp / "video.avi"),
                        "--out", str(tmp / "masks"), "--prompt", prompt],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["frames"] == got["reached"] == n  # the track lasts the whole video
    assert len(list((tmp / "masks").glob("*.png"))) == n
    return got


def _flat(tmp_path: Path, short: int, long: int, size: tuple[int, int]) -> None:
    a = _segment(tmp_path / "short", short, size)
    b = _segment(tmp_path / "long", long, size)
    # generous: a few bytes a frame (the mask writer's per-frame areas) plus allocator noise;
    # decoding the longer video whole would take 2.3 KB a frame at 32x24, 18 KB at 96x64
    assert b["peak_mb"] - a["peak_mb"] < 4.0 + 0.5 * (long - short) / 1000, (a, b)


@pytest.mark.slow  # ~5-12 s: two fresh processes, 1,700 frames segmented
def test_fallback_segmenter_memory_is_flat_in_the_length(tmp_path):
    _flat(tmp_path, 200, 1500, (32, 24))


@pytest.mark.slow  # a few minutes: 30,000 frames end to end
def test_thirty_thousand_frames_in_flat_memory(tmp_path):
    _flat(tmp_path, 1000, 30_000, (96, 64))


def _sam2_reads(predictor: SimpleNamespace, t: int, reverse: bool, n: int) -> set[int]:
    """The earlier frames whose non-conditioning outputs SAM 2 (1.1.0,
    ``SAM2Base._prepare_memory_conditioned_features``) looks up to track frame ``t``: the mask
    memories of the frame just before and of every ``memory_temporal_stride_for_eval``-th frame
    behind it, and the object pointers of the last ``max_obj_ptrs_in_encoder - 1`` frames."""
    r = predictor.memory_temporal_stride_for_eval
    reads = set()
    for t_rel in range(1, predictor.num_maskmem):
        if t_rel == 1:
            prev = t + 1 if reverse else t - 1
        elif reverse:
            prev = -(-(t + 2) // r) * r + (t_rel - 2) * r
        else:
            prev = ((t - 2) // r) * r - (t_rel - 2) * r
        reads.add(prev)
    step = 1 if reverse else -1
    reads.update(t + step * d for d in range(1, predictor.max_obj_ptrs_in_encoder))
    return {f for f in reads if 0 <= f < n}


def _propagate_bookkeeping(predictor: SimpleNamespace, n: int, conds: list[set[int]]) -> int:
    """SAM 2's propagation over ``n`` frames as ``SAM2Session.masks`` drives it, on its
    per-frame output store alone (a marker per output): forward from the earliest prompted
    frame to the end, then backward to frame 0, each object storing every frame it tracks,
    and after each frame the drop the session makes. Checks at every frame that each output
    SAM 2 reads is still there; returns the most outputs one object held at once."""
    state = {"output_dict_per_obj": {k: {"cond_frame_outputs": {t: "prompt" for t in c},
                                         "non_cond_frame_outputs": {}} for k, c in enumerate(conds)},
             "temp_output_dict_per_obj": {k: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
                                          for k in range(len(conds))}}
    start = min(min(c) for c in conds)
    tracked: list[set[int]] = [set() for _ in conds]
    most = 0
    for reverse, order in ((False, range(start, n)), (True, range(start, -1, -1))):
        for t in order:
            for k, outputs in state["output_dict_per_obj"].items():
                if t in outputs["cond_frame_outputs"]:
                    continue
                needed = _sam2_reads(predictor, t, reverse, n) & tracked[k]
                missing = needed - set(outputs["non_cond_frame_outputs"])
                assert not missing, (t, reverse, sorted(missing))
                outputs["non_cond_frame_outputs"][t] = t
                tracked[k].add(t)
            drop_outputs_outside_window(predictor, state, t, reverse)
            most = max(most, *(len(o["non_cond_frame_outputs"])
                               for o in state["output_dict_per_obj"].values()))
    for k, c in enumerate(conds):  # every prompted frame's output survives both passes
        assert set(state["output_dict_per_obj"][k]["cond_frame_outputs"]) == c
    return most


@pytest.mark.parametrize("stride", [1, 3])
def test_propagation_bookkeeping_is_flat_in_the_length(stride):
    """The outputs SAM 2 keeps while it propagates stay within its memory window however long
    the video (the released tiny config, where the object pointers reach farthest, and a
    memory stride of 3, where the mask memories do), with every output it reads still there;
    two objects, the second with a correction 300 frames after its prompt."""
    predictor = SimpleNamespace(num_maskmem=7, memory_temporal_stride_for_eval=stride,
                                max_obj_ptrs_in_encoder=16, use_obj_ptrs_in_encoder=True)
    window = memory_window(predictor)
    assert window == max(1 + 5 * stride, 15)
    held = {}
    for n in (1_000, 8_000):
        key = n // 2
        held[n] = _propagate_bookkeeping(predictor, n, [{key}, {key, key + 300}])
    # behind the frame tracked: the window; around each prompted frame: the window each side
    assert held[1_000] == held[8_000] <= window + 1 + 2 * 2 * window


def _sam2_lengths(tmp: Path, lengths: tuple[int, ...]) -> dict[int, dict]:
    """SAM 2 (tiny, random weights, input side 64) over 64x64 videos of each length, each in a
    fresh process (``bench/segment.py``'s measurement of our session): its JSON line. The
    frame budget, 8 MiB (170 frames), is full at every length, so what grows is the rest."""
    checkpoint = tmp / "sam2.1_hiera_tiny.pt"
    make = ("import torch; from sam2.build_sam import build_sam2_video_predictor; torch.manual_seed(0); "
            "p = build_sam2_video_predictor('configs/sam2.1/sam2.1_hiera_t.yaml', ckpt_path=None, device='cpu'); "
            f"torch.save({{'model': p.state_dict()}}, {str(checkpoint)!r})")
    subprocess.run([sys.executable, "-c", make], capture_output=True, text=True, check=True)
    frames, masks = render_scene(n_frames=max(lengths), size=(64, 64))
    key = 100  # the red circle is in view for its first 200 frames
    gt = masks["red circle"][key]
    prompt = {"frame": key, "box": [float(v) for v in mask_box(gt)], "point": [float(v) for v in inner_point(gt)]}
    got = {}
    for n in lengths:
        write_frames(frames[:n], tmp / f"v{n}")
        # one torch thread: spinning threads on a busy machine cost far more than they give
        r = subprocess.run([sys.executable, str(SEGMENT_BENCH), "--child", "ours", "--folder", str(tmp / f"v{n}"),
                            "--out", str(tmp / f"m{n}"), "--checkpoint", str(checkpoint), "--image-size", "64",
                            "--device", "cpu", "--threads", "1", "--frame-cache-mb", "8",
                            "--prompt", json.dumps(prompt)],
                           capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        got[n] = json.loads(r.stdout.strip().splitlines()[-1])
        assert len(list((tmp / f"m{n}").glob("*.png"))) == n
    return got


@pytest.mark.slow  # ~4-7 min on 2 busy cores: 2,500 frames through SAM 2 tiny
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not sam2_available(), reason="sam2 is not installed")
def test_sam2_propagation_memory_is_flat_over_two_thousand_frames(tmp_path):
    """SAM 2's peak memory over 2,000 frames is what it is over 500: the growth between them
    stays under half of what holding the 1,500 extra frames' outputs would take (measured on
    the run itself: one frame's own output tensors), so keeping outputs per frame fails."""
    got = _sam2_lengths(tmp_path, (500, 2_000))
    short, long = got[500], got[2_000]
    assert short["output_kb"] > 0 and short["held_outputs"] == long["held_outputs"], (short, long)
    kept_per_frame_mb = (2_000 - 500) * long["output_kb"] / 1024
    assert long["peak_mb"] - short["peak_mb"] < 0.5 * kept_per_frame_mb, (short, long, kept_per_frame_mb)

