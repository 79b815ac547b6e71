"""Hour-long videos in flat memory (issue 22, item 4): the segment step's peak memory does
not grow with the video's length, and every frame gets its mask file.

Each length runs in a fresh process (``bench/long_video.py``'s child mode, the benchmark's
own measurement) so that one run's peak is not hidden by another's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "long_video.py"


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
