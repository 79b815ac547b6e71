"""Configuration mistakes are found before the model's first turn, and a run that did not
do what was asked exits non-zero with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.graphs.seg_research import graph

EXE = str(Path(sys.executable).parent / "segresearch")
T = "<thinking>ok</thinking>\n"
ANSWER = T + '<answer>{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}</answer>'


def _run(scene_dir, tmp_path, turns, *args: str) -> subprocess.CompletedProcess:
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(turns))
    return subprocess.run([EXE, "run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
                           "--model", f"replay:{cassette}", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["--search", "bogus"], "unknown search backend 'bogus'"),
    (["--search", "local", "--kb", "/nonexistent/kb"], "knowledge base folder not found"),
    (["--search", "none", "--segmenter", "bogus"], "bogus"),
    (["--search", "none", "--segmenter", "sam2"], "checkpoint"),
])
def test_cli_configuration_mistakes_stop_before_the_first_turn(scene_dir, tmp_path, args, needle):
    res = _run(scene_dir, tmp_path, [T + "<keyframe> 6 </keyframe>", ANSWER], *args)
    assert res.returncode != 0
    assert needle in res.stdout + res.stderr
    assert "turn 1" not in res.stdout  # the model never ran
    assert "error:config" in res.stdout


def test_cli_exit_says_when_no_masks_were_made(scene_dir, tmp_path):
    """An answer on a video with no keyframe shown cannot be placed on a frame: the masks
    are empty, and the exit code says the job was not done."""
    res = _run(scene_dir, tmp_path, [ANSWER], "--search", "none", "--segmenter", "grabcut")
    assert res.returncode == 1, res.stderr
    assert "no masks were made" in res.stderr and "keyframe" in res.stderr


def test_cli_exit_is_non_zero_without_an_answer(scene_dir, tmp_path):
    res = _run(scene_dir, tmp_path, [T + "I am not sure."], "--search", "none", "--segmenter", "none")
    assert res.returncode == 1 and "without an answer (no_action)" in res.stderr


def test_cli_success_exits_zero(scene_dir, tmp_path):
    res = _run(scene_dir, tmp_path, [T + "<keyframe> 6 </keyframe>", ANSWER], "--search", "none",
               "--segmenter", "grabcut")
    assert res.returncode == 0, res.stderr


def test_graph_preflight_spends_no_model_turn(scene_dir, tmp_path):
    model = ReplayChatModel(turns=[ANSWER])
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")},
                       context=Context(model=model, search="none", segmenter="sam2",
                                       sam2_checkpoint=str(tmp_path / "missing.pt"),
                                       output_dir=str(tmp_path / "o")))
    assert out["stop_reason"] == "error:config" and out["turns"] == 0
    assert "checkpoint" in out["error"]
    # without an output folder nothing would be segmented, so the segmenter is not checked
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")},
                       context=Context(model=model, search="none", segmenter="sam2",
                                       sam2_checkpoint=str(tmp_path / "missing.pt")))
    assert out["stop_reason"] == "answer"


def test_a_malformed_knowledge_base_is_a_configuration_error(scene_dir, tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "text_corpus.jsonl").write_text("not json at all\n")
    model = ReplayChatModel(turns=[ANSWER])
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")},
                       context=Context(model=model, search="bm25", kb=str(kb), segmenter="none"))
    assert out["stop_reason"] == "error:config" and out["turns"] == 0
    assert "text_corpus.jsonl:1: invalid JSON" in out["error"]
