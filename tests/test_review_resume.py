"""Human review before segmentation (interrupt → accept/edit/reject → resume) and resuming
a killed CLI run from its SQLite checkpoints."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.graphs.seg_research import build_graph, graph
from segresearch.testing.servers import wait_for_output

T = "<thinking>ok</thinking>\n"
TURNS = [T + "<keyframe> 6 </keyframe>",
         T + '<answer>{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}</answer>']
EXE = str(Path(sys.executable).parent / "segresearch")


def _ctx(tmp_path, **kw) -> Context:
    return Context(model=ReplayChatModel(turns=TURNS), search="none", segmenter="grabcut",
                   review=True, output_dir=str(tmp_path / "out"), **kw)


def test_review_pauses_with_the_answer_then_an_edit_is_segmented(scene_dir, tmp_path):
    g = build_graph(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "r1"}}
    first = g.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, cfg, context=_ctx(tmp_path))
    pause = first["__interrupt__"][0].value
    assert pause["type"] == "review" and pause["answer"]["keyframe"] == 6
    assert pause["answer_px"]["bbox_2d"] == [16, 24, 48, 48]  # 160×120 frames
    assert pause["image"].startswith("media-ref:") and pause["frame_size"] == [160, 120]
    assert first.get("masks_dir") is None and g.get_state(cfg).next == ("review",)
    # a bad edit asks again, saying why; nothing is segmented meanwhile
    again = g.invoke(Command(resume={"keyframe": 99}), cfg, context=_ctx(tmp_path))
    assert "not a frame" in again["__interrupt__"][0].value["problem"]
    edit = {"bbox_2d": [60, 40, 100, 80], "point_2d": [80, 60]}
    final = g.invoke(Command(resume=edit), cfg, context=_ctx(tmp_path))
    assert final["stop_reason"] == "answer" and final["reviewed"]["decision"] == "edit"
    assert final["answer_px"] == {"keyframe": 6, "bbox_2d": [60.0, 40.0, 100.0, 80.0], "point_2d": [80.0, 60.0]}
    assert final["answer"]["bbox_2d"] == [375, 333, 625, 667]  # back to the 0-1000 grid
    traj = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    seg = [e for e in traj["events"] if e["type"] == "segment"][0]
    assert seg["prompt"]["box"] == [60.0, 40.0, 100.0, 80.0] and seg["prompt"]["frame"] == 6


def test_review_accept_and_reject_over_sqlite(scene_dir, tmp_path):
    with sqlite3.connect(str(tmp_path / "r.db"), check_same_thread=False) as conn:
        g = build_graph(checkpointer=SqliteSaver(conn))
        for thread, reply in (("acc", "accept"), ("rej", "reject")):
            cfg = {"configurable": {"thread_id": thread}}
            ctx = _ctx(tmp_path / thread)
            g.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, cfg, context=ctx)
            final = g.invoke(Command(resume=reply), cfg, context=ctx)
            assert final["reviewed"]["decision"] == reply
            if reply == "accept":
                assert final["masks_dir"] and len(os.listdir(final["masks_dir"])) == 12
                assert final["answer_px"]["bbox_2d"] == [16, 24, 48, 48]
            else:
                assert final["masks_dir"] is None and final["stop_reason"] == "answer"


def test_review_without_a_checkpointer_is_a_clear_error(scene_dir, tmp_path):
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")}, context=_ctx(tmp_path))
    assert out["stop_reason"] == "error:config" and "checkpointer" in out["error"]


def _wait_for(proc: subprocess.Popen, log: Path, needle: str, timeout: float = 60) -> None:
    if not wait_for_output(proc, log, needle, timeout):
        pytest.fail(f"never saw {needle!r}:\n{log.read_text()[-2000:]}")


def test_cli_run_killed_midway_resumes_without_redoing_turns(scene_dir, tmp_path):
    cassette = tmp_path / "slow.json"
    turns = [T + "<keyframe> 2 </keyframe>", T + "<keyframe> 4 </keyframe>", T + "<keyframe> 6 </keyframe>",
             TURNS[1]]
    cassette.write_text(json.dumps({"latency": 0.6, "turns": turns}))
    db, out, log = tmp_path / "runs.db", tmp_path / "out", tmp_path / "first.log"
    env = {**os.environ, "COLUMNS": "200"}
    with log.open("w") as f:
        proc = subprocess.Popen([EXE, "run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
                                 "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                                 "--db", str(db), "--thread", "job7", "--out", str(out)],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
        _wait_for(proc, log, "frame 4 at high resolution")
        proc.kill()
        proc.wait(10)
    assert "turn 2" in log.read_text() and not (out / "trajectory.json").exists()
    res = subprocess.run([EXE, "run", "--db", str(db), "--thread", "job7", "--json"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "resuming thread job7" in res.stderr
    assert "turn 1 " not in res.stdout and "turn 2 " not in res.stdout  # finished turns are not redone
    assert "turn 3 " in res.stdout and "turn 4 " in res.stdout
    final = json.loads(res.stdout.strip().splitlines()[-1])
    assert final["stop_reason"] == "answer" and final["turns"] == 4 and final["answer"]["keyframe"] == 6
    traj = json.loads((out / "trajectory.json").read_text())
    assert [e["turn"] for e in traj["events"] if e["type"] == "model"] == [1, 2, 3, 4]
    assert len(os.listdir(out / "masks")) == 12
    # a finished thread only reports; a new run on it is refused
    again = subprocess.run([EXE, "run", "--db", str(db), "--thread", "job7"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "stop reason: answer" in again.stdout
    clash = subprocess.run([EXE, "run", "--db", str(db), "--thread", "job7", "--media", str(scene_dir / "frames"),
                            "--query", "q"], capture_output=True, text=True, timeout=60)
    assert clash.returncode != 0 and "has finished" in clash.stderr


def test_cli_review_reads_the_reply_from_the_terminal(scene_dir, tmp_path):
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(TURNS))
    res = subprocess.run([EXE, "run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
                          "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                          "--review", "--out", str(tmp_path / "o"), "--json"],
                         input="frame 99 1 2 3 4\n60 40 100 80\n", capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "not a frame of this media" in res.stderr and (tmp_path / "o" / "review.png").is_file()
    final = json.loads(res.stdout.strip().splitlines()[-1])
    assert final["answer_px"]["bbox_2d"] == [60.0, 40.0, 100.0, 80.0]
    assert final["answer_px"]["point_2d"] == [80.0, 60.0]  # the box centre when no point is typed
