"""Answers kept as the model gave them (issue 18).

A well-formed answer whose box outlines nothing — ``[0, 0, 0, 0]``, zero width or height,
or no area inside the frame — is still the model's answer: the published loop ends such a
rollout as the model's choice to finish. The run ends ``answer`` with ``answer_note`` saying
why, and empty masks. Only an answer that cannot be read is ``no_action``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.cli import main
from segresearch.core.protocol import (
    AnswerAction,
    NoAction,
    clamp_answer,
    degenerate_box,
    parse_action,
)
from segresearch.graphs.seg_research import graph

T = "<thinking>ok</thinking>\n"
KEYFRAME = T + "<keyframe> 6 </keyframe>"
NOTHING = T + '<answer>{"bbox_2d": [0,0,0,0], "point_2d": [0,0]}</answer>'
GOOD = T + '<answer>{"bbox_2d": [100, 100, 300, 300], "point_2d": [200, 200]}</answer>'


def answer(box, point) -> str:
    return T + "<answer>" + json.dumps({"bbox_2d": box, "point_2d": point}) + "</answer>"


def invoke(scene_dir: Path, turns: list[str], tmp_path: Path | None = None, media=None, **ctx):
    ctx.setdefault("search", "none")
    ctx.setdefault("segmenter", "none")
    if tmp_path is not None:
        ctx.setdefault("output_dir", str(tmp_path / "out"))
    context = Context(model=ReplayChatModel(turns=turns), **ctx)
    return graph.invoke({"query": "the blue square", "media": media or str(scene_dir / "frames")},
                        context=context)


def note_for(box: list[float], limit: int = 1000) -> str | None:
    action = AnswerAction(bbox_2d=box, point_2d=[0.0, 0.0])
    return degenerate_box(action, clamp_answer(action, limit, limit)[0])


# ------------------------------------------------------------------ the rule


@pytest.mark.parametrize("box, why", [
    ([0, 0, 0, 0], "all zeros (the model found nothing)"),
    ([100, 100, 100, 400], "no width or height"),
    ([100, 250, 400, 250], "no width or height"),
    ([100.2, 10, 100.4, 50], "no width or height"),  # rounds to one column
    ([1200, 100, 1500, 300], "no area inside the frame"),
    ([-90, -50, -5, -1], "no area inside the frame"),
    ([1000, 1000, 1000, 1000], "no width or height"),
])
def test_degenerate_boxes_are_named(box, why):
    note = note_for(box)
    assert note is not None and note.startswith("degenerate box [") and why in note


@pytest.mark.parametrize("box", [[0, 0, 1, 1], [100, 100, 300, 300], [-50, -50, 10, 10], [990, 990, 2000, 2000]])
def test_boxes_with_area_in_the_frame_have_no_note(box):
    assert note_for(box) is None


def test_the_note_quotes_the_model_numbers():
    assert note_for([1200, 100, 1500.5, 300]) == (
        "degenerate box [1200, 100, 1500.5, 300]: no area inside the frame")


@pytest.mark.parametrize("body", [
    '{"bbox_2d": [0, 0, 0, 0], "point_2d": [0, 0]}',
    '{"bbox_2d": [0,0,0,0], "point_2d": [0,0]}',
    "{'bbox_2d': [0, 0, 0, 0], 'point_2d': [0, 0]}",
])
def test_an_all_zero_answer_parses_as_an_answer(body):
    action = parse_action(f"<answer>{body}</answer>")
    assert isinstance(action, AnswerAction) and action.bbox_2d == [0, 0, 0, 0]


# ------------------------------------------------------------------ the graph


def _png_sums(masks_dir: Path) -> list[int]:
    return [int(np.asarray(Image.open(p)).sum()) for p in sorted(masks_dir.glob("*.png"))]


def test_nothing_found_is_an_answer_with_empty_masks(scene_dir, tmp_path):
    final = invoke(scene_dir, [KEYFRAME, NOTHING], tmp_path, segmenter="grabcut")
    assert final["stop_reason"] == "answer" and not final.get("error")
    assert final["answer"] == {"keyframe": 6, "bbox_2d": [0, 0, 0, 0], "point_2d": [0, 0]}
    assert final["answer_px"]["bbox_2d"] == [0, 0, 0, 0]
    assert final["answer_note"] == "degenerate box [0, 0, 0, 0]: all zeros (the model found nothing)"
    # all-zero masks for every frame, as the published post-segmentation writes them
    sums = _png_sums(Path(final["masks_dir"]))
    assert len(sums) == 12 and not any(sums)
    seg = [e for e in final["events"] if e["type"] == "segment"][-1]
    assert seg["empty"] == final["answer_note"] and seg["prompt"] is None
    model = [e for e in final["events"] if e["type"] == "model"][-1]
    assert model["action"] == {"type": "answer", "bbox_2d": [0, 0, 0, 0], "point_2d": [0, 0]}
    assert model["answer_note"] == final["answer_note"]
    run_dir = Path(final["run_dir"])
    traj = json.loads((run_dir / "trajectory.json").read_text(encoding="utf-8"))
    assert traj["stop_reason"] == "answer" and traj["answer_note"] == final["answer_note"]
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert f"- note: {final['answer_note']}; the masks are empty" in md
    assert (run_dir / "keyframe_annotated.jpg").is_file()


@pytest.mark.parametrize("box, point", [
    ([300, 200, 300, 600], [300, 400]),  # a line, with a point that would prompt on its own
    ([200, 500, 700, 500], [450, 500]),
    ([1200, 100, 1500, 300], [1300, 200]),  # right of the frame
    ([-400, -300, -10, -20], [-100, -100]),  # above and left of it
])
def test_degenerate_and_outside_boxes_are_answers_with_empty_masks(scene_dir, tmp_path, box, point):
    final = invoke(scene_dir, [KEYFRAME, answer(box, point)], tmp_path, segmenter="grabcut")
    assert final["stop_reason"] == "answer" and final["answer"]["keyframe"] == 6
    assert final["answer_note"].startswith(f"degenerate box {json.dumps(box)}")
    assert not any(_png_sums(Path(final["masks_dir"])))


def test_a_good_answer_has_no_note(scene_dir, tmp_path):
    final = invoke(scene_dir, [KEYFRAME, GOOD])
    assert final["stop_reason"] == "answer" and final["answer_note"] is None
    assert "answer_note" not in [e for e in final["events"] if e["type"] == "model"][-1]


def test_nothing_found_without_a_keyframe_and_on_one_image(scene_dir, tmp_path):
    final = invoke(scene_dir, [NOTHING], tmp_path, segmenter="grabcut")  # a video, no keyframe
    assert final["stop_reason"] == "answer" and final["answer"]["keyframe"] is None
    assert "all zeros" in final["answer_note"] and not any(_png_sums(Path(final["masks_dir"])))
    image = str(scene_dir / "frames" / "00003.jpg")
    final = invoke(scene_dir, [NOTHING], tmp_path / "img", media=image, segmenter="grabcut")
    assert final["stop_reason"] == "answer" and final["answer"]["keyframe"] == 0
    assert _png_sums(Path(final["masks_dir"])) == [0]


def test_nothing_found_is_not_retried(scene_dir):
    """Feedback retries are for turns the graph cannot read, not for the model's choice."""
    final = invoke(scene_dir, [NOTHING, GOOD], feedback_retries=1)
    assert final["stop_reason"] == "answer" and final["turns"] == 1
    assert final["answer"]["bbox_2d"] == [0, 0, 0, 0]


@pytest.mark.parametrize("body", [
    "not json",
    '{"bbox_2d": [0, 0, 0], "point_2d": [0, 0]}',
    '{"bbox_2d": "0,0,0,0", "point_2d": [0, 0]}',
    '{"bbox_2d": [0, 0, 0, 0], "point_2d": [0]}',
    '{"bbox_2d": [0, 0, NaN, 0], "point_2d": [0, 0]}',
    '{"bbox_2d": [true, 0, 0, 0], "point_2d": [0, 0]}',
    '{"box_2d": [0, 0, 0, 0]}',
    "[0, 0, 0, 0]",
])
def test_a_malformed_answer_is_no_action(scene_dir, tmp_path, body):
    assert isinstance(parse_action(f"<answer>{body}</answer>"), NoAction)
    final = invoke(scene_dir, [KEYFRAME, T + f"<answer>{body}</answer>"], tmp_path, segmenter="grabcut")
    assert final["stop_reason"] == "no_action" and final["answer"] is None
    assert final["answer_note"] is None
    assert not any(_png_sums(Path(final["masks_dir"])))  # empty masks, as for any run without one


def test_the_final_stream_event_carries_the_note(scene_dir):
    ctx = Context(model=ReplayChatModel(turns=[KEYFRAME, NOTHING]), search="none", segmenter="none")
    events = list(graph.stream({"query": "q", "media": str(scene_dir / "frames")}, context=ctx,
                               stream_mode="custom"))
    final = [e for e in events if e["type"] == "final"][-1]
    assert final["stop_reason"] == "answer" and "all zeros" in final["answer_note"]


def test_a_thread_run_again_forgets_the_note(scene_dir):
    from langgraph.checkpoint.memory import InMemorySaver

    from segresearch.graphs.seg_research import build_graph

    g = build_graph(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t"}}
    inp = {"query": "q", "media": str(scene_dir / "frames")}
    first = g.invoke(inp, cfg, context=Context(model=ReplayChatModel(turns=[NOTHING]), search="none",
                                               segmenter="none"))
    assert first["answer_note"]
    second = g.invoke(inp, cfg, context=Context(model=ReplayChatModel(turns=[T + "hmm"]), search="none",
                                                segmenter="none"))
    assert second["stop_reason"] == "no_action" and second["answer_note"] is None


# ------------------------------------------------------------------ the CLI


def _cli(scene_dir: Path, tmp_path: Path, turns: list[str], capsys) -> tuple[int, str, str]:
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(turns))
    code = main(["run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
                 "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                 "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_nothing_found_exits_zero_and_says_so(scene_dir, tmp_path, capsys):
    code, _, err = _cli(scene_dir, tmp_path, [KEYFRAME, NOTHING], capsys)
    assert code == 0, err
    assert "the model found nothing to segment" in err and "all zeros" in err and "error:" not in err
    assert not any(_png_sums(tmp_path / "out" / "masks"))


def test_cli_malformed_answer_still_exits_one(scene_dir, tmp_path, capsys):
    code, _, err = _cli(scene_dir, tmp_path, [KEYFRAME, T + '<answer>{"bbox_2d": [0, 0]}</answer>'], capsys)
    assert code == 1 and "without an answer (no_action)" in err
