"""Review of an answer naming several objects (issue 22, item 1): the reply rules for editing
or dropping one object (or several at once), the server guard judging a reply with the same
function as the node, the terminal's 'edit K' / 'drop K' forms, and the graph segmenting
exactly the reviewed objects."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from PIL import Image

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.agents.review import read_pause_reply, read_reply
from segresearch.cli import main
from segresearch.cli.run import terminal_reply
from segresearch.core.media import open_media
from segresearch.core.media_store import get_store
from segresearch.eval.metrics import region_j
from segresearch.graphs.seg_research import build_graph
from segresearch.servers.review_check import check_resume, resume_problems
from segresearch.testing.scenes import grid_answer, mask_box, render_scene

W, H = 640, 480
FRAMES = set(range(12)).__contains__
A = {"keyframe": 6, "bbox_2d": [100, 120, 300, 360], "point_2d": [200, 240], "label": "left dog"}
B = {"keyframe": 8, "bbox_2d": [400, 100, 600, 300], "point_2d": [500, 200], "label": "right dog"}
TWO = [A, B]
PX = {k: A[k] for k in ("keyframe", "bbox_2d", "point_2d")}


def read(reply, objects=TWO):
    return read_reply(reply, PX, (W, H), FRAMES, objects)


def refused(reply, objects=TWO) -> str:
    got = read(reply, objects)
    assert got.decision is None and got.objects_px is None and got.problems, got
    return "; ".join(got.problems)


# ------------------------------------------------------------------ the rules


def test_drop_one_object_keeps_the_others_in_order():
    got = read({"decision": "drop", "object": 0})
    assert got.decision == "drop" and got.problems == []
    assert got.objects_px == [B] and got.answer_px == {k: B[k] for k in ("keyframe", "bbox_2d", "point_2d")}
    assert got.changes == [{"decision": "drop", "object": 0}]


def test_edit_one_object_merges_over_it_and_keeps_its_label():
    got = read({"decision": "edit", "object": 1, "answer_px": {"bbox_2d": [410, 110, 590, 290]}})
    assert got.decision == "edit"
    edited = {"keyframe": 8, "bbox_2d": [410.0, 110.0, 590.0, 290.0], "point_2d": [500.0, 200.0]}
    assert got.objects_px == [A, {**edited, "label": "right dog"}]
    assert got.answer_px == PX  # the first object is untouched
    assert got.changes == [{"decision": "edit", "object": 1, "answer_px": edited}]
    # "object" left out: the first, as the flat edit is
    assert read({"decision": "edit", "answer_px": {"keyframe": 7}}).objects_px[0]["keyframe"] == 7
    flat = read({"keyframe": 7})
    assert flat.decision == "edit" and flat.objects_px[0] == {**A, "keyframe": 7, "bbox_2d": [100.0, 120.0, 300.0, 360.0],
                                                               "point_2d": [200.0, 240.0]}
    assert flat.objects_px[1] == B and flat.changes[0]["object"] == 0


def test_a_list_of_changes_numbers_objects_as_the_pause_did():
    got = read([{"decision": "drop", "object": 0}, {"decision": "edit", "object": 1, "answer_px": {"keyframe": 3}}])
    assert got.decision == "edit" and [o["keyframe"] for o in got.objects_px] == [3]
    assert [c["decision"] for c in got.changes] == ["drop", "edit"]
    assert read({"decision": "accept"}).decision == "accept" and read({"decision": "reject"}).decision == "reject"


@pytest.mark.parametrize(("reply", "reason"), [
    ({"decision": "drop", "object": 2}, "object 2 is not one of the answer's objects: the answer's 2 objects are 0 to 1"),
    ({"decision": "drop", "object": -1}, "object -1 is not one of the answer's objects"),
    ({"decision": "drop", "object": True}, "object True must be an integer index"),
    ({"decision": "drop", "object": "1"}, "object '1' must be an integer index"),
    ({"decision": "drop"}, "a drop must name its \"object\""),
    ({"decision": "edit", "object": 9, "answer_px": {"keyframe": 1}}, "object 9 is not one of the answer's objects"),
    ({"decision": "edit", "object": 1}, "an edit's answer_px is an object"),
    ({"decision": "edit", "object": 1, "answer_px": {"box": [1, 2, 3, 4]}}, "object 1: unknown key(s) 'box'"),
    ({"decision": "edit", "object": 1, "answer_px": {"keyframe": 99}}, "object 1: keyframe 99 is not a frame"),
    ({"decision": "edit", "object": 1, "answer_px": {"bbox_2d": [0, 0, 700, 10]}}, "outside the 640×480 frame"),
    ({"decision": "drop", "object": 1, "answer_px": {}}, "unknown key(s) 'answer_px' in a drop"),
    ({"decision": "accept", "object": 1}, "unknown key(s) 'object' beside decision 'accept'"),
    ({"decision": "merge", "object": 1}, "decision 'merge' is not one of"),
    ({"object": 1, "answer_px": {"keyframe": 2}}, "a reply naming an object needs its \"decision\""),
    ([], "an empty list changes nothing"),
    (["accept"], "a change in a list is an object"),
    ([{"decision": "accept"}], "accept and reject stand alone"),
    ([{"decision": "drop", "object": 1}, {"decision": "edit", "object": 1, "answer_px": {"keyframe": 2}}],
     "change 1: object 1 is changed twice"),
    ([{"decision": "drop", "object": 0}, {"decision": "drop", "object": 1}],
     "dropping all 2 objects leaves nothing to segment: reply 'reject'"),
])
def test_refused_changes_say_why(reply, reason):
    assert reason in refused(reply)


def test_a_one_object_answer_takes_the_named_forms_but_cannot_drop_its_object():
    one = [{**PX, "label": None}]
    assert "dropping the only object leaves nothing to segment: reply 'reject'" in refused(
        {"decision": "drop", "object": 0}, one)
    assert read({"decision": "edit", "object": 0, "answer_px": {"keyframe": 2}}, one).answer_px["keyframe"] == 2
    assert "the answer's only object is 0" in refused({"decision": "edit", "object": 1, "answer_px": {}}, one)
    # a list is for several objects; with one it is refused as before
    assert "string or an edit object" in refused([{"decision": "drop", "object": 0}], one)


def test_the_guard_and_the_node_resolve_a_reply_with_one_function():
    pause = {"type": "review", "answer_px": PX, "objects_px": TWO, "frame_size": [W, H],
             "frame_ids": {"first": 0, "last": 11, "count": 12, "step": 1}}
    bad = {"decision": "drop", "object": 5}
    assert check_resume(bad, pause) == read_pause_reply(pause, bad).problems != []
    assert check_resume({"decision": "drop", "object": 1}, pause) == []
    assert read_pause_reply(pause, {"decision": "drop", "object": 1}).objects_px == [A]
    # a resume keyed by interrupt id is told apart from a reply naming its decision
    interrupts = [{"id": "a" * 32, "value": pause}]
    assert resume_problems(bad, interrupts) == check_resume(bad, pause)
    assert resume_problems({"a" * 32: {"decision": "drop", "object": 0}}, interrupts) == []
    # a payload without objects_px reviews its answer alone: no object 1 to drop
    assert "the answer's only object is 0" in check_resume(bad | {"object": 1}, {**pause, "objects_px": None})[0]


@pytest.mark.parametrize(("line", "reply"), [
    ("", "accept"), ("r", "reject"),
    ("drop 1", {"decision": "drop", "object": 1}),
    ("DROP 0 ; edit 1 frame 3 10 20 30 40",
     [{"decision": "drop", "object": 0},
      {"decision": "edit", "object": 1, "answer_px": {"keyframe": 3, "bbox_2d": [10.0, 20.0, 30.0, 40.0],
                                                      "point_2d": [20.0, 30.0]}}]),
    ("edit 1 1 2 3 4 2 3", {"decision": "edit", "object": 1,
                            "answer_px": {"bbox_2d": [1.0, 2.0, 3.0, 4.0], "point_2d": [2.0, 3.0]}}),
    ("edit 1 nonsense", {"decision": "edit", "object": 1, "answer_px": {}}),  # refused by the graph, saying why
    ("1 2 3 4", {"bbox_2d": [1.0, 2.0, 3.0, 4.0], "point_2d": [2.0, 3.0]}),
    ("what", "what"),
])
def test_the_terminal_forms(line, reply):
    assert terminal_reply(line) == reply


# ------------------------------------------------------------------ the graph

FRAME = 6
NAMES = ("blue square", "red circle")
T = "<thinking>two</thinking>\n"


@pytest.fixture(scope="module")
def masks() -> dict[str, np.ndarray]:
    """The masks of the scene ``scene_dir`` holds (the same render)."""
    return render_scene(n_frames=12, size=(160, 120))[1]


def _cassette(masks, protocol: str = "tags") -> list:
    objs = []
    for name in NAMES:
        box, point = grid_answer(masks[name][FRAME])
        objs.append({"bbox_2d": box, "point_2d": point, "label": name})
    if protocol == "tools":
        return [{"content": "", "tool_calls": [{"name": "keyframe", "args": {"index": FRAME}}]},
                {"content": "", "tool_calls": [{"name": "answer", "args": {"keyframe": FRAME, "objects": objs}}]}]
    return [T + f"<keyframe> {FRAME} </keyframe>", T + "<answer>" + json.dumps(objs) + "</answer>"]


def _read(d: str | Path, fid: int = FRAME) -> np.ndarray:
    return np.asarray(Image.open(Path(d) / f"{fid:05d}.png")) > 127


def _paused(scene_dir, masks, tmp_path, thread: str, protocol: str = "tags"):
    g = build_graph(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": thread}}
    ctx = Context(model=ReplayChatModel(turns=_cassette(masks, protocol)), protocol=protocol, coord_style="qwen3",
                  search="none", prompt_variant="search", segmenter="grabcut", review=True, output_dir=str(tmp_path))
    first = g.invoke({"query": "the blue square and the red circle", "media": str(scene_dir / "frames")},
                     cfg, context=ctx)
    return g, cfg, ctx, first["__interrupt__"][0].value


def test_the_pause_lists_every_object_and_draws_each(scene_dir, masks, tmp_path):
    _, _, _, pause = _paused(scene_dir, masks, tmp_path, "list")
    assert [o["label"] for o in pause["objects_px"]] == list(NAMES)
    assert [o["label"] for o in pause["objects"]] == list(NAMES)
    assert pause["answer_px"] == {k: pause["objects_px"][0][k] for k in ("keyframe", "bbox_2d", "point_2d")}
    assert "\"drop\"" in pause["how"]
    png = get_store().png_bytes(pause["image"][len("media-ref:"):])
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    plain = np.asarray(open_media(str(scene_dir / "frames")).frame(FRAME).convert("RGB")).astype(int)
    assert picture.shape == plain.shape
    for k, name in enumerate(NAMES):  # each box drawn where the object is
        x1, y1, x2, y2 = pause["objects_px"][k]["bbox_2d"]
        edge = np.abs(picture[int(y1):int(y2) + 1, int(x1)] - plain[int(y1):int(y2) + 1, int(x1)]).sum()
        assert edge > 0, name


@pytest.mark.parametrize("protocol", ["tags", "tools"])
def test_dropping_an_object_segments_only_the_others(scene_dir, masks, tmp_path, protocol):
    g, cfg, ctx, _ = _paused(scene_dir, masks, tmp_path, "drop", protocol)
    again = g.invoke(Command(resume={"decision": "drop", "object": 2}), cfg, context=ctx)
    assert "object 2 is not one of the answer's objects" in again["__interrupt__"][0].value["problem"]
    final = g.invoke(Command(resume={"decision": "drop", "object": 1}), cfg, context=ctx)
    assert final["stop_reason"] == "answer" and not final.get("error")
    assert [o["label"] for o in final["objects"]] == [NAMES[0]] and len(final["objects_px"]) == 1
    assert final["reviewed"]["decision"] == "drop"
    assert final["reviewed"]["changes"] == [{"decision": "drop", "object": 1}]
    assert final["object_masks_dirs"] is None and not (tmp_path / "objects").exists()  # one object: one folder
    seg = next(e for e in final["events"] if e["type"] == "segment")
    assert "objects" not in seg
    got = _read(final["masks_dir"])
    assert region_j(masks[NAMES[0]][FRAME][None], got[None])[0] > 0.75
    assert not (got & masks[NAMES[1]][FRAME]).any()
    reviews = [e for e in final["events"] if e["type"] == "review"]
    assert reviews == [{"type": "review", "decision": "drop", "object": 1}]


def test_editing_the_second_object_moves_its_mask(scene_dir, masks, tmp_path):
    g, cfg, ctx, _ = _paused(scene_dir, masks, tmp_path, "edit")
    x1, y1, x2, y2 = mask_box(masks["green triangle"][FRAME])
    edit = {"bbox_2d": [x1, y1, x2 + 1, y2 + 1], "point_2d": [(x1 + x2) / 2, (y1 + y2) * 0.55]}
    final = g.invoke(Command(resume={"decision": "edit", "object": 1, "answer_px": edit}), cfg, context=ctx)
    assert final["reviewed"]["decision"] == "edit"
    assert final["objects_px"][1] == {"keyframe": FRAME, **{k: [float(v) for v in edit[k]] for k in edit},
                                      "label": NAMES[1]}
    assert final["objects"][1]["label"] == NAMES[1] and final["objects"][0]["label"] == NAMES[0]
    one, two = (_read(d) for d in final["object_masks_dirs"])
    assert region_j(masks[NAMES[0]][FRAME][None], one[None])[0] > 0.75
    assert region_j(masks["green triangle"][FRAME][None], two[None])[0] > 0.6
    ev = [e for e in final["events"] if e["type"] == "review"]
    assert len(ev) == 1 and ev[0]["object"] == 1 and ev[0]["answer_px"]["bbox_2d"] == final["objects_px"][1]["bbox_2d"]


def test_cli_review_drops_an_object_from_the_terminal(scene_dir, masks, tmp_path, capsys, monkeypatch):
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps({"turns": _cassette(masks)}))
    monkeypatch.setattr("sys.stdin", io.StringIO("drop 5\ndrop 0\n"))
    out_dir = tmp_path / "out"
    code = main(["run", "--media", str(scene_dir / "frames"), "--query", "the blue square and the red circle",
                 "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                 "--review", "--out", str(out_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"0 {NAMES[0]}: keyframe {FRAME}" in err and f"1 {NAMES[1]}:" in err and "'drop K'" in err
    assert "object 5 is not one of the answer's objects" in err
    traj = json.loads((out_dir / "trajectory.json").read_text())
    assert [o["label"] for o in traj["objects"]] == [NAMES[1]]
    assert region_j(masks[NAMES[1]][FRAME][None], _read(out_dir / "masks")[None])[0] > 0.75
