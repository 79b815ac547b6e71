"""Answers that name several objects (issue 22, item 1): a tag ``<answer>`` holding a list of
objects and the ``answer`` tool's ``objects`` list are read object by object with the single
answer's rules; the graph keeps every object (model coordinates and pixels), tracks them
together, writes one mask folder per object and their union, and the record (trajectory,
report, annotated keyframe) lists them. A single object's answer reads and runs as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from PIL import Image

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.cli import main
from segresearch.core.protocol import AnswerAction, AnswerObject, NoAction, parse_action
from segresearch.core.tool_protocol import parse_tool_calls, tool_definitions
from segresearch.eval.metrics import region_j
from segresearch.graphs.outputs import missing_outputs
from segresearch.graphs.seg_research import build_graph, graph
from segresearch.testing.scenes import grid_answer, mask_box, render_scene

T = "<thinking>two of them</thinking>\n"
FRAME = 6
NAMES = ("blue square", "red circle")


@pytest.fixture(scope="module")
def truth() -> dict[str, np.ndarray]:
    """The masks of the scene ``scene_dir`` holds (the same render: 12 frames, 160x120)."""
    _, masks = render_scene(n_frames=12, size=(160, 120))
    return {n: masks[n] for n in NAMES}


def _grid(truth, name: str, fid: int = FRAME) -> tuple[list[int], list[int]]:
    return grid_answer(truth[name][fid])


def _tool_turn(name: str, args: dict) -> dict:
    return {"content": "", "tool_calls": [{"name": name, "args": args}]}


def _ai(args: dict) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": "answer", "args": args, "id": "a", "type": "tool_call"}])


def _read(mask_dir: Path, fid: int = FRAME) -> np.ndarray:
    return np.asarray(Image.open(mask_dir / f"{fid:05d}.png")) > 127


# ------------------------------------------------------------------ parsing


def test_a_tag_answer_with_a_list_names_every_object():
    text = ('<answer>[{"bbox_2d": [10, 20, 30, 40], "point_2d": [20, 30], "label": "left dog"},'
            ' {"bbox_2d": [90, 80, 50, 60], "label": "right dog"}]</answer>')
    got = parse_action(text)
    assert isinstance(got, AnswerAction)
    assert got.bbox_2d == [10, 20, 30, 40] and got.point_2d == [20, 30] and got.keyframe is None
    assert got.objects == (
        AnswerObject([10, 20, 30, 40], [20, 30], "left dog"),
        AnswerObject([50, 60, 90, 80], [70, 70], "right dog",
                     warnings=["box corners were swapped", "no point_2d: the box centre was used"]),
    )
    assert got.warnings == ["objects[1]: box corners were swapped",
                            "objects[1]: no point_2d: the box centre was used"]
    # lenient JSON inside the list too (single quotes, a trailing comma)
    lenient = parse_action("<answer>[{'bbox_2d': [1, 2, 3, 4], 'point_2d': [2, 3],}, "
                           "{'bbox': [5, 6, 7, 8], 'point': [6, 7]},]</answer>")
    assert isinstance(lenient, AnswerAction) and [o.bbox_2d for o in lenient.objects] == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_a_single_object_reads_exactly_as_before():
    body = '{"bbox_2d": [10, 20, 30, 40], "point_2d": [20, 30]}'
    plain = parse_action(f"<answer>{body}</answer>")
    assert plain == AnswerAction(bbox_2d=[10, 20, 30, 40], point_2d=[20, 30]) and plain.objects == ()
    assert parse_action(f"<answer>[{body}]</answer>") == plain  # a one-element list, as today
    assert parse_action("<answer>[]</answer>") == NoAction(
        reason="answer must be a JSON object with bbox_2d and point_2d")
    assert parse_action('<answer>{"bbox_2d": [1, 2]}</answer>') == NoAction(
        reason="invalid answer: bbox_2d must be a list of 4 numbers")


@pytest.mark.parametrize("body, reason", [
    ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [1, 2]}]', "invalid answer: objects[1]: bbox_2d must be a list of 4 numbers"),
    ('[{"bbox_2d": [1, 2, 3, 4]}, 7]', "invalid answer: objects[1] must be a JSON object with bbox_2d and point_2d"),
    ('[{"bbox_2d": [1, 2, 3, 4], "point_2d": ["a", 1]}, {"bbox_2d": [1, 2, 3, 4]}]',
     "invalid answer: objects[0]: point_2d must hold numbers"),
    ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [1, 2, 3, 4], "label": {"x": 1}}]',
     "invalid answer: objects[1]: label must be text"),
    ("[" + ", ".join(['{"bbox_2d": [1, 2, 3, 4]}'] * 17) + "]", "invalid answer: at most 16 objects, not 17"),
])
def test_one_bad_element_refuses_the_whole_answer_naming_it(body, reason):
    assert parse_action(f"<answer>{body}</answer>") == NoAction(reason=reason)


def test_the_answer_tool_takes_an_objects_list():
    got, _ = parse_tool_calls(_ai({"keyframe": 4, "objects": [
        {"bbox_2d": [10, 20, 30, 40], "point_2d": [20, 30], "label": "cup"},
        {"keyframe": 6, "bbox_2d": [50, 60, 90, 80], "point_2d": [70, 70], "label": "plate"},
    ]}))
    assert isinstance(got, AnswerAction) and got.keyframe == 4 and got.bbox_2d == [10, 20, 30, 40]
    assert [(o.label, o.keyframe) for o in got.objects] == [("cup", 4), ("plate", 6)]
    assert got.warnings == []
    # the top-level box may be left out; an object without a keyframe and no answer keyframe warns
    got, _ = parse_tool_calls(_ai({"objects": [{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8], "keyframe": 2}]}))
    assert isinstance(got, AnswerAction) and [o.keyframe for o in got.objects] == [None, 2]
    assert got.warnings == ["objects[0]: no point_2d: the box centre was used",
                            "objects[1]: no point_2d: the box centre was used",
                            "objects[0]: no keyframe: the frame last shown at high resolution was used"]
    # one object in the list is a plain answer; an empty list is ignored
    one, _ = parse_tool_calls(_ai({"keyframe": 3, "objects": [{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}]}))
    assert one == AnswerAction(bbox_2d=[1, 2, 3, 4], point_2d=[2, 3], keyframe=3)
    plain, _ = parse_tool_calls(_ai({"keyframe": 3, "bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3], "objects": []}))
    assert plain == one


@pytest.mark.parametrize("args, reason", [
    ({"keyframe": 1, "objects": [{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [1, 2, 3]}]},
     "invalid answer: objects[1]: bbox_2d must be a list of 4 numbers"),
    ({"keyframe": 1, "objects": [{"bbox_2d": [1, 2, 3, 4], "keyframe": "x"}, {"bbox_2d": [1, 2, 3, 4]}]},
     "invalid answer: objects[0]: keyframe must be a frame id (an integer)"),
    ({"keyframe": 1, "objects": ["cup", {"bbox_2d": [1, 2, 3, 4]}]},
     "invalid answer: objects[0] must be a JSON object with bbox_2d and point_2d"),
    ({"keyframe": 1, "objects": {"bbox_2d": [1, 2, 3, 4]}}, "invalid answer: objects must be a list of objects"),
])
def test_the_answer_tool_refuses_a_bad_object(args, reason):
    got, _ = parse_tool_calls(_ai(args))
    assert got == NoAction(reason=reason)


def test_the_answer_tool_describes_objects():
    answer = tool_definitions("qwen3", 1000, use_search=False)[1]["function"]
    assert "several objects" in answer["description"]
    objects = answer["parameters"]["properties"]["objects"]
    assert objects["type"] == "array" and "$ref" not in json.dumps(answer)
    assert objects["items"]["required"] == ["bbox_2d", "point_2d"]
    assert set(objects["items"]["properties"]) == {"keyframe", "bbox_2d", "point_2d", "label"}


# ------------------------------------------------------------------ the graph


def _turns(truth, protocol: str) -> list:
    (b1, p1), (b2, p2) = (_grid(truth, n) for n in NAMES)
    if protocol == "tags":
        objs = [{"bbox_2d": b1, "point_2d": p1, "label": NAMES[0]}, {"bbox_2d": b2, "point_2d": p2, "label": NAMES[1]}]
        return [T + f"<keyframe> {FRAME} </keyframe>", T + "<answer>" + json.dumps(objs) + "</answer>"]
    return [_tool_turn("keyframe", {"index": FRAME}),
            _tool_turn("answer", {"keyframe": FRAME, "objects": [
                {"bbox_2d": b1, "point_2d": p1, "label": NAMES[0]},
                {"bbox_2d": b2, "point_2d": p2, "label": NAMES[1]}]})]


@pytest.mark.parametrize("protocol", ["tags", "tools"])
def test_a_two_object_answer_runs_through_the_graph(scene_dir, truth, tmp_path, protocol):
    out = graph.invoke({"query": "the blue square and the red circle", "media": str(scene_dir / "frames")},
                       context=Context(model=ReplayChatModel(turns=_turns(truth, protocol)), protocol=protocol,
                                       coord_style="qwen3", search="none", prompt_variant="search",
                                       segmenter="grabcut", output_dir=str(tmp_path)))
    assert out["stop_reason"] == "answer" and not out.get("error")
    (b1, p1), (b2, p2) = (_grid(truth, n) for n in NAMES)
    assert out["objects"] == [{"keyframe": FRAME, "bbox_2d": b1, "point_2d": p1, "label": NAMES[0]},
                              {"keyframe": FRAME, "bbox_2d": b2, "point_2d": p2, "label": NAMES[1]}]
    assert out["answer"] == {"keyframe": FRAME, "bbox_2d": b1, "point_2d": p1}
    assert out["answer_px"] == {k: v for k, v in out["objects_px"][0].items() if k != "label"}
    assert [o["label"] for o in out["objects_px"]] == list(NAMES)
    # one folder per object, the union in masks/
    dirs = [Path(d) for d in out["object_masks_dirs"]]
    assert dirs == [tmp_path / "objects" / "1", tmp_path / "objects" / "2"]
    for d, name in zip(dirs, NAMES, strict=True):
        assert len(list(d.glob("*.png"))) == 12
        assert region_j(truth[name][FRAME][None], _read(d)[None])[0] > 0.75, name
    for fid in range(12):
        union = _read(Path(out["masks_dir"]), fid)
        assert np.array_equal(union, _read(dirs[0], fid) | _read(dirs[1], fid)), fid
    seg = next(e for e in out["events"] if e["type"] == "segment")
    assert [o["label"] for o in seg["objects"]] == list(NAMES) and all(o["keyframe_area"] > 0 for o in seg["objects"])
    model_ev = [e for e in out["events"] if e["type"] == "model"][-1]
    assert [o["label"] for o in model_ev["action"]["objects"]] == list(NAMES)
    # the record
    traj = json.loads((tmp_path / "trajectory.json").read_text())
    assert traj["objects"] == out["objects"] and traj["objects_px"] == out["objects_px"]
    assert traj["object_masks_dirs"] == out["object_masks_dirs"]
    report = (tmp_path / "report.md").read_text()
    assert "2 objects (the masks folder holds their union)" in report
    assert f"1. **{NAMES[0]}**: keyframe {FRAME}, box `{b1}`" in report and f"2. **{NAMES[1]}**" in report
    assert "- object 2 (red circle):" in report
    with Image.open(tmp_path / "keyframe_annotated.jpg") as im:
        assert im.size == (160, 120)
    # a resumed run is held to every object's folder too
    state = {**out, "media_info": {"num_frames": 12}}  # as the thread holds it
    assert missing_outputs(tmp_path, state) == []
    (dirs[1] / "00003.png").unlink()
    assert missing_outputs(tmp_path, state) == ["objects/2/ (11 of 12 frame masks)"]


def test_a_degenerate_object_is_left_out_when_another_is_usable(scene_dir, truth, tmp_path):
    b1, p1 = _grid(truth, NAMES[0])
    objs = [{"bbox_2d": [0, 0, 0, 0], "point_2d": [0, 0], "label": "nothing"}, {"bbox_2d": b1, "point_2d": p1}]
    turns = [T + f"<keyframe> {FRAME} </keyframe>", T + "<answer>" + json.dumps(objs) + "</answer>"]
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")},
                       context=Context(model=ReplayChatModel(turns=turns), coord_style="qwen3", search="none",
                                       prompt_variant="search", segmenter="grabcut", output_dir=str(tmp_path)))
    assert out["stop_reason"] == "answer" and out["answer_note"] is None
    assert out["objects"] == [{"keyframe": FRAME, "bbox_2d": b1, "point_2d": p1, "label": None}]
    assert out["object_masks_dirs"] is None  # one object left: the single-object path
    notes = [e for e in out["events"] if e["type"] == "model"][-1]["notes"]
    assert any(n.startswith("objects[0] left out: degenerate box [0, 0, 0, 0]") for n in notes)
    assert _read(Path(out["masks_dir"])).any()


def test_a_single_object_answer_runs_as_before(scene_dir, truth, tmp_path):
    b1, p1 = _grid(truth, NAMES[0])
    turns = [T + f"<keyframe> {FRAME} </keyframe>", T + "<answer>" + json.dumps({"bbox_2d": b1, "point_2d": p1}) + "</answer>"]
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")},
                       context=Context(model=ReplayChatModel(turns=turns), coord_style="qwen3", search="none",
                                       prompt_variant="search", segmenter="grabcut", output_dir=str(tmp_path)))
    assert out["answer"] == {"keyframe": FRAME, "bbox_2d": b1, "point_2d": p1}
    assert out["objects"] == [{**out["answer"], "label": None}]
    assert out["objects_px"] == [{**out["answer_px"], "label": None}]
    assert out["object_masks_dirs"] is None and not (tmp_path / "objects").exists()
    seg = next(e for e in out["events"] if e["type"] == "segment")
    assert "objects" not in seg and seg["keyframe_area"] > 0
    assert "objects" not in [e for e in out["events"] if e["type"] == "model"][-1]["action"]
    assert "objects (the masks folder" not in (tmp_path / "report.md").read_text()


def test_cli_run_with_a_two_object_cassette(scene_dir, truth, tmp_path, capsys):
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps({"turns": _turns(truth, "tags")}))
    out_dir = tmp_path / "out"
    code = main(["run", "--media", str(scene_dir / "frames"), "--query", "the blue square and the red circle",
                 "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                 "--out", str(out_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["stop_reason"] == "answer" and final["answer"]["bbox_2d"] == _grid(truth, NAMES[0])[0]
    traj = json.loads((out_dir / "trajectory.json").read_text())
    assert [o["label"] for o in traj["objects"]] == list(NAMES)
    for k, name in enumerate(NAMES, 1):
        assert region_j(truth[name][FRAME][None], _read(out_dir / "objects" / str(k))[None])[0] > 0.75
    union = _read(out_dir / "masks")
    assert np.array_equal(union, _read(out_dir / "objects" / "1") | _read(out_dir / "objects" / "2"))


def test_a_reviewers_edit_moves_the_first_object_only(scene_dir, truth, tmp_path):
    """Review (one object, as today) edits the answer; with several objects that is the
    first: its masks follow the edit, the others keep the model's prompts, and the object
    lists say so."""
    g = build_graph(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "multi"}}
    ctx = Context(model=ReplayChatModel(turns=_turns(truth, "tags")), coord_style="qwen3", search="none",
                  prompt_variant="search", segmenter="grabcut", review=True, output_dir=str(tmp_path))
    first = g.invoke({"query": "q", "media": str(scene_dir / "frames")}, cfg, context=ctx)
    assert first["__interrupt__"][0].value["type"] == "review"
    # the edit outlines the green triangle instead of the blue square
    _, masks = render_scene(n_frames=12, size=(160, 120))
    x1, y1, x2, y2 = mask_box(masks["green triangle"][FRAME])
    edit = {"bbox_2d": [x1, y1, x2 + 1, y2 + 1], "point_2d": [(x1 + x2) / 2, (y1 + y2) * 0.55]}
    final = g.invoke(Command(resume=edit), cfg, context=ctx)
    assert final["reviewed"]["decision"] == "edit"
    assert final["objects_px"][0] == {**final["answer_px"], "label": NAMES[0]}
    assert final["objects"][0] == {**final["answer"], "label": NAMES[0]}
    assert final["objects"][1]["label"] == NAMES[1]
    one, two = (_read(Path(d)) for d in final["object_masks_dirs"])
    assert region_j(masks["green triangle"][FRAME][None], one[None])[0] > 0.6
    assert region_j(truth[NAMES[1]][FRAME][None], two[None])[0] > 0.75
