"""The ``segresearch`` command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "segresearch", *args], capture_output=True,
                          text=True, timeout=timeout, env=e)


def test_run_with_a_cassette(scene_dir, tmp_path):
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps([
        "<thinking>look closer</thinking><keyframe> 6 </keyframe>",
        '<thinking>there</thinking><answer>{"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}</answer>',
    ]))
    out = tmp_path / "out"
    r = cli("run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
            "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
            "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert "turn 1" in r.stdout and "→ keyframe 6" in r.stdout and "→ answer" in r.stdout
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["stop_reason"] == "answer" and final["turns"] == 2
    assert final["answer"]["keyframe"] == 6
    assert (out / "trajectory.json").is_file() and (out / "keyframe_annotated.jpg").is_file()
    assert (out / "masks" / "00006.png").is_file()


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "unsupported"])
def test_bad_media_is_one_line_and_exit_2(case, tmp_path):
    if case == "missing":
        media, expect = tmp_path / "nope", "media not found"
    elif case == "empty":
        media, expect = tmp_path / "empty", "no image frames"
        media.mkdir()
    elif case == "corrupt":
        media, expect = tmp_path / "bad.jpg", "cannot read image"
        media.write_bytes(os.urandom(300))
    else:
        media, expect = tmp_path / "notes.txt", "unsupported media type"
        media.write_text("hello")
    r = cli("run", "--media", str(media), "--query", "q", "--model", "replay:x.json")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0]


def test_unreachable_model_fails_fast_with_instructions(scene_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    r = cli("run", "--media", str(scene_dir / "frames"), "--query", "q",
            "--model", f"openai:Qwen/Qwen3-VL-4B-Instruct@http://127.0.0.1:{port}/v1")
    assert r.returncode == 2
    assert time.perf_counter() - t0 < 30
    assert "vllm serve" in r.stderr and str(port) in r.stderr


def test_bad_cassette_is_reported(scene_dir, tmp_path):
    r = cli("run", "--media", str(scene_dir / "frames"), "--query", "q",
            "--model", f"replay:{tmp_path / 'missing.json'}")
    assert r.returncode == 2 and "replay cassette not found" in r.stderr


def test_demo(tmp_path):
    r = cli("demo", "--out", str(tmp_path / "demo"), env={"SEGRESEARCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RECORDED" in r.stdout
    assert "text_search" in r.stdout and "keyframe 13" in r.stdout
    iou = float(r.stdout.split("ground truth:")[1].split()[0])
    assert iou > 0.9
    jf = float(r.stdout.split("J&F over all 24 frames:")[1].split()[0])
    assert jf > 0.9  # the fallback segmenter carries the mask through the whole clip
    peak = float(r.stdout.split("peak memory:")[1].split()[0])  # the process's own peak, in MB
    assert 50 < peak < 8192
    traj = json.loads((tmp_path / "demo" / "trajectory.json").read_text())
    assert traj["stop_reason"] == "answer" and len(traj["searches"]) == 2
    assert Path(tmp_path / "cache" / "demo-v1" / "frames" / "00023.jpg").is_file()
