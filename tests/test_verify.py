"""The model checks its masks (issue 22, item 2): with ``verify_rounds`` > 0 the graph shows
the model the keyframe and the frames where its masks change most, and the model accepts
them or corrects them with points and/or a box; a correction is kept in frame pixels and the
masks are made again. Replayed in both protocols, with GrabCut (which honours corrections
only roughly: these tests check the graph, not mask quality) and with a random-weight SAM 2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from PIL import Image

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.agents.path_policy import PathRefused
from segresearch.cli import main
from segresearch.core.coords import describe_convention
from segresearch.core.media import open_media
from segresearch.core.prompts import TOOLS_VERIFY_PART, system_prompt, tools_system_prompt
from segresearch.core.protocol import NoAction, parse_action
from segresearch.core.verify_protocol import (
    VerifyAccept,
    VerifyCorrect,
    VerifyProblem,
    parse_verify_tags,
    read_verify_json,
)
from segresearch.graphs.nodes import _readable_mask_dirs
from segresearch.graphs.seg_research import graph
from segresearch.tools.verify_view import verify_frames, verify_picture
from segresearch.tools.visualize import OBJECT_COLOURS

T = "<thinking>ok</thinking>\n"
# The blue square on frame 6 of the 160x120 scene is at pixels [37, 72, 61, 96].
BOX, POINT = [225, 600, 400, 800], [300, 700]
TAGS = {
    "key": T + "<keyframe> 6 </keyframe>",
    "answer": T + "<answer>" + json.dumps({"bbox_2d": BOX, "point_2d": POINT}) + "</answer>",
    "accept": T + '<verify>{"accept": true}</verify>',
    # qwen3: 0-1000 of the frame; on 160x120 x*0.16, y*0.12
    "correct": T + '<verify>{"frame": 6, "points": [[300, 700], [900, 100]], "labels": [1, 0], '
                   '"box": [225, 600, 400, 800]}</verify>',
}
# tools protocol with qwen25: pixels of the keyframe-size picture (400x400 here): x*0.4, y*0.3
TOOLS = {
    "key": {"tool_calls": [{"name": "keyframe", "args": {"index": 6}}]},
    "answer": {"tool_calls": [{"name": "answer", "args": {"keyframe": 6, "bbox_2d": [90, 240, 160, 320],
                                                           "point_2d": [120, 280]}}]},
    "accept": {"content": "They fit.", "tool_calls": [{"name": "accept_masks", "args": {}}]},
    "correct": {"tool_calls": [{"name": "correct_masks", "args": {
        "frame": 6, "points": [[120, 280], [360, 40]], "labels": [1, 0], "box": [90, 240, 160, 320]}}]},
}
# Both corrections, converted by hand: the same pixels.
EXPECTED = {"round": 1, "object": 0, "frame": 6, "points": [[48.0, 84.0], [144.0, 12.0]],
            "labels": [1, 0], "box": [36.0, 72.0, 64.0, 96.0]}


def run(scene_dir: Path, tmp_path: Path, protocol: str, turns: list, **ctx):
    script = TAGS if protocol == "tags" else TOOLS
    settings = {"coord_style": "qwen3"} if protocol == "tags" else {"coord_style": "qwen25", "keyframe_size": 400}
    model = ReplayChatModel(turns=[script.get(t, t) if isinstance(t, str) else t for t in turns])
    context = Context(model=model, search="none", protocol=protocol, output_dir=str(tmp_path / "out"),
                      **{"segmenter": "grabcut", **settings, **ctx})
    out = graph.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, context=context)
    return out, model


def of_type(out: dict, kind: str) -> list[dict]:
    return [e for e in out["events"] if e["type"] == kind]


def masks_bytes(out: dict) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(out["masks_dir"]).glob("*.png"))}


@pytest.mark.parametrize("protocol", ["tags", "tools"])
def test_accepted_at_once_the_masks_are_those_without_verifying(scene_dir, tmp_path, protocol):
    out, _ = run(scene_dir, tmp_path / "v", protocol, ["key", "answer", "accept"], verify_rounds=2)
    plain, _ = run(scene_dir, tmp_path / "p", protocol, ["key", "answer"])
    assert out["stop_reason"] == "answer" and out["turns"] == 3
    (ev,) = of_type(out, "verify")
    assert ev["decision"] == "accept" and ev["round"] == 1 and ev["turns"] == 1 and "note" not in ev
    assert ev["frames"][0] <= 6 <= ev["frames"][-1] and 6 in ev["frames"] and len(ev["frames"]) <= 4
    assert len(of_type(out, "segment")) == 1 and out["corrections"] == []
    assert masks_bytes(out) == masks_bytes(plain)
    run_dir = Path(out["run_dir"])
    assert (run_dir / "verify_round_1.jpg").is_file() and not (run_dir / "verify_round_2.jpg").exists()
    tokens = [json.loads((Path(o["run_dir"]) / "trajectory.json").read_text())["tokens"] for o in (out, plain)]
    assert tokens[0] == tokens[1] + ev["tokens"] and ev["tokens"] > 0


@pytest.mark.parametrize("protocol", ["tags", "tools"])
def test_a_correction_is_kept_in_pixels_and_the_masks_are_made_again(scene_dir, tmp_path, protocol):
    out, model = run(scene_dir, tmp_path, protocol, ["key", "answer", "correct", "accept"], verify_rounds=3)
    assert out["stop_reason"] == "answer" and out["turns"] == 4
    assert out["corrections"] == [EXPECTED]
    rounds = of_type(out, "verify")
    assert [e["decision"] for e in rounds] == ["correct", "accept"]
    assert rounds[0]["correction"] == EXPECTED
    assert len(of_type(out, "segment")) == 2  # the answer's masks, then the corrected ones
    names = [e["type"] for e in out["events"]]
    assert names[names.index("segment"):] == ["segment", "verify", "segment", "verify"]
    run_dir = Path(out["run_dir"])
    traj = json.loads((run_dir / "trajectory.json").read_text())
    assert traj["corrections"] == [EXPECTED]
    assert [e["round"] for e in traj["events"] if e["type"] == "verify"] == [1, 2]
    report = (run_dir / "report.md").read_text()
    assert "## Verify round 1" in report and "## Verify round 2" in report
    assert "on frame 6 (pixels): points [48.0, 84.0] (on), [144.0, 12.0] (off)" in report
    for r in (1, 2):
        with Image.open(run_dir / f"verify_round_{r}.jpg") as im:
            assert im.height == (400 if protocol == "tools" else 864)
            assert im.width >= im.height * len(rounds[r - 1]["frames"])
    shown = [m for m in out["messages"] if "masks drawn" in str(m.content)]
    assert len(shown) == 2
    if protocol == "tools":
        # each verify prompt answers the call before it (the answer, then correct_masks)
        assert all(isinstance(m, ToolMessage) for m in shown)
        # one tool set all run (a rollout's is fixed by its system turn): the verify tools too
        assert [t["function"]["name"] for t in model.bound_tools] == ["keyframe", "answer", "accept_masks",
                                                                      "correct_masks"]
        assert describe_convention("qwen25", 400) in model.bound_tools[3]["function"]["description"]
        assert "accept_masks" in str(out["messages"][0].content)
    else:
        assert all(isinstance(m, HumanMessage) for m in shown)
        assert "<verify>" in str(shown[0].content)


@pytest.mark.parametrize("protocol", ["tags", "tools"])
def test_an_unreadable_reply_gets_one_reminder_then_counts_as_acceptance(scene_dir, tmp_path, protocol):
    bad = T + "The masks look fine to me." if protocol == "tags" else {"content": "Looks fine."}
    out, _ = run(scene_dir, tmp_path, protocol, ["key", "answer", bad, bad], verify_rounds=2)
    (ev,) = of_type(out, "verify")
    assert ev["decision"] == "accept" and ev["turns"] == 2
    assert "could not be read twice" in ev["note"] and "the masks are kept" in ev["note"]
    assert out["turns"] == 4 and out["corrections"] == [] and len(of_type(out, "segment")) == 1
    assert sum("could not be read" in str(m.content) for m in out["messages"]) == 1
    assert "could not be read twice" in (Path(out["run_dir"]) / "report.md").read_text()


def test_a_correction_on_a_frame_not_shown_is_sent_back_then_fixed(scene_dir, tmp_path):
    wrong = T + '<verify>{"frame": 11, "points": [[300, 700]], "labels": [1]}</verify>'
    out, _ = run(scene_dir, tmp_path, "tags", ["key", "answer", wrong, "correct"], verify_rounds=1)
    (ev,) = of_type(out, "verify")
    assert ev["decision"] == "correct" and ev["turns"] == 2 and out["corrections"] == [EXPECTED]
    reminder = next(m for m in out["messages"] if "could not be read" in str(m.content))
    assert "frame 11 was not shown" in str(reminder.content)
    # the last round allowed corrected: the masks are made again, and the run finishes
    assert [e["type"] for e in out["events"]][-2:] == ["verify", "segment"]


@pytest.mark.parametrize("protocol", ["tags", "tools"])
def test_zero_rounds_leave_the_prompt_and_the_graph_as_published(scene_dir, tmp_path, protocol):
    turns = ["key", "answer"]
    script = TAGS if protocol == "tags" else TOOLS
    settings = {"coord_style": "qwen3"} if protocol == "tags" else {"coord_style": "qwen25", "keyframe_size": 400}
    context = Context(model=ReplayChatModel(turns=[script[t] for t in turns]), search="none",
                      segmenter="grabcut", protocol=protocol, output_dir=str(tmp_path / "out"), **settings)
    assert context.verify_rounds == 0
    nodes = []
    for update in graph.stream({"query": "the blue square", "media": str(scene_dir / "frames")},
                               context=context, stream_mode="updates"):
        nodes += list(update)
    assert nodes == ["load_media", "reason", "keyframe", "reason", "segment", "finish"]
    out = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    assert out["corrections"] == [] and not [e for e in out["events"] if e["type"] == "verify"]
    first = out["messages"][0]["text"]
    if protocol == "tags":
        assert first == system_prompt(False, "qwen3")
    else:
        assert first == tools_system_prompt(False, describe_convention("qwen25", 400, 448))
    assert "verify" not in first.lower()


@pytest.mark.parametrize("protocol", ["tags", "tools"])
def test_cli_runs_verify_rounds(scene_dir, tmp_path, capsys, protocol):
    script = TAGS if protocol == "tags" else TOOLS
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps([script[t] for t in ("key", "answer", "correct", "accept")]))
    settings = ["--coords", "qwen3"] if protocol == "tags" else ["--coords", "qwen25"]
    env = {"SEGRESEARCH_KEYFRAME_SIZE": "400"} if protocol == "tools" else {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        code = main(["run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
                     "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                     "--protocol", protocol, "--verify-rounds", "2", *settings,
                     "--out", str(tmp_path / "out"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["stop_reason"] == "answer" and final["turns"] == 4
    traj = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    assert traj["corrections"] == [EXPECTED] and traj["context"]["verify_rounds"] == 2
    assert (tmp_path / "out" / "verify_round_2.jpg").is_file()


def test_verify_is_skipped_without_masks(scene_dir, tmp_path):
    """No segmenter, or nothing written: nothing to show, the run ends as without the setting."""
    out, _ = run(scene_dir, tmp_path, "tags", ["key", "answer"], verify_rounds=2, segmenter="none")
    assert out["stop_reason"] == "answer" and not of_type(out, "verify") and out["turns"] == 2


# ------------------------------------------------------------------ the pieces


def test_frames_shown_are_the_keyframe_and_the_largest_changes(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(10):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(frames / f"{i:05d}.jpg")
    media = open_media(str(frames))
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, fid in enumerate(media.frame_ids):
        m = np.zeros((30, 40), np.uint8)
        x = 5 if i < 3 else 15 if i < 7 else 16  # jumps at frames 3 (large) and 7 (small)
        w = 10 if i != 9 else 20  # and grows at frame 9
        m[5:15, x:x + w] = 255
        Image.fromarray(m).save(masks / f"{media.frame_name(fid)}.png")
    # one look per third of the video: frames 4-6 never change, and 9 outdoes 7 in the last third
    assert verify_frames(media, [masks], keyframe=1) == [1, 3, 9]
    assert verify_frames(media, [masks], keyframe=1, limit=2) == [1, 3]
    assert verify_frames(media, [masks], keyframe=None, limit=2) == [3, 9]


def test_several_objects_each_in_its_colour_and_corrected_by_number(scene_dir, tmp_path):
    objs = [{"bbox_2d": BOX, "point_2d": POINT, "label": "blue square"},
            {"bbox_2d": [140, 220, 300, 430], "point_2d": [220, 320], "label": "red circle"}]
    answer = T + "<answer>" + json.dumps(objs) + "</answer>"
    third = T + '<verify>{"frame": 6, "points": [[300, 700]], "labels": [1], "object": 3}</verify>'
    second = T + '<verify>{"frame": 6, "points": [[300, 700]], "labels": [0], "object": 2}</verify>'
    out, _ = run(scene_dir, tmp_path, "tags", ["key", answer, third, second], verify_rounds=1)
    assert len(out["object_masks_dirs"]) == 2
    assert out["corrections"] == [{"round": 1, "object": 1, "frame": 6, "points": [[48.0, 84.0]],
                                   "labels": [0], "box": None}]
    shown = next(m for m in out["messages"] if "masks drawn" in str(m.content))
    assert "The 2 objects of your answer" in str(shown.content)
    assert any("object 3 does not exist" in str(m.content) for m in out["messages"])


def test_a_picture_draws_each_object_in_its_colour(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "one.png")
    media = open_media(str(tmp_path / "one.png"))
    dirs = []
    for k, (x0, x1) in enumerate(((0, 20), (20, 40))):
        d = tmp_path / f"obj{k}"
        d.mkdir()
        m = np.zeros((40, 40), np.uint8)
        m[20:40, x0:x1] = 255
        Image.fromarray(m).save(d / f"{media.frame_name(0)}.png")
        dirs.append(d)
    pic = np.asarray(verify_picture(media, 0, dirs, 80)).astype(int)
    assert pic.shape == (80, 80, 3)
    for k, x in enumerate((8, 72)):  # inside each mask, away from its outline and number
        want = np.array(OBJECT_COLOURS[k]) * 0.5
        assert np.abs(pic[72, x] - want).max() <= 2, (k, pic[72, x], want)
    assert pic[30, 40].max() == 0  # unmasked black stays black


def test_single_image_shows_only_the_image(tmp_path):
    img = tmp_path / "one.png"
    Image.new("RGB", (40, 30)).save(img)
    assert verify_frames(open_media(str(img)), [tmp_path], keyframe=0) == [0]


@pytest.mark.parametrize("text, want", [
    ('<verify>{"accept": true}</verify>', VerifyAccept()),
    ("<verify>{'frame': '6', 'points': [[1, 2]], 'labels': [0],}</verify>",
     VerifyCorrect(frame=6, points=[[1.0, 2.0]], labels=[0])),
    ('<verify>{"frame": 2, "box": [9, 9, 1, 1], "object": 2}</verify>',
     VerifyCorrect(frame=2, box=[1.0, 1.0, 9.0, 9.0], object=1)),
])
def test_verify_tag_reading(text, want):
    assert parse_verify_tags(T + text) == want


@pytest.mark.parametrize("value, why", [
    ({"frame": 6}, "points (with labels) or a box"),
    ({"frame": 6, "points": [[1, 2]], "labels": []}, "one per point"),
    ({"frame": 6, "points": [[1, 2]], "labels": [2]}, "1 or 0"),
    ({"frame": 6, "box": [1, 2, 3]}, "four numbers"),
    ({"frame": "x", "box": [1, 2, 3, 4]}, "frame must be"),
    ({"frame": 6, "box": [1, 2, 3, 4], "object": 0}, "object must be"),
    ({"accept": False}, "accept"),
    ([1, 2], "must be an object"),
])
def test_malformed_verify_json_says_why(value, why):
    got = read_verify_json(value)
    assert isinstance(got, VerifyProblem) and why in got.reason


def test_the_published_parser_does_not_read_the_verify_tag():
    assert isinstance(parse_action(TAGS["accept"]), NoAction)


def test_system_prompt_untouched(scene_dir):
    """The verify texts never reach the system prompt, whatever the setting."""
    for rounds in (0, 3):
        ctx = Context(model=ReplayChatModel(turns=[T]), search="none", verify_rounds=rounds,
                      coord_style="qwen3")
        state = graph.invoke({"query": "q", "media": str(scene_dir / "frames")}, context=ctx)
        assert isinstance(state["messages"][0], SystemMessage)
        assert state["messages"][0].content == system_prompt(False, "qwen3")


# ------------------------------------------------------------------ async callers, one tool set


def _comparable(out: dict, root: Path) -> dict:
    """A final state without what differs between two runs of the same script: times,
    message ids and the output folder ``root``."""
    timeless = [{k: v for k, v in e.items() if k not in ("seconds", "time")} for e in out["events"]]
    events = json.loads(json.dumps(timeless).replace(str(root), "OUT"))
    messages = [(type(m).__name__, m.content, getattr(m, "tool_calls", None)) for m in out["messages"]]
    keep = ("stop_reason", "turns", "tokens_used", "answer", "answer_px", "corrections", "verify_round")
    return {**{k: out.get(k) for k in keep}, "events": events, "messages": messages, "masks": masks_bytes(out)}


@pytest.mark.parametrize("protocol", ["tags", "tools"])
def test_ainvoke_runs_the_same_verify_rounds_as_invoke(scene_dir, tmp_path, protocol):
    """The async graph awaits the verify turns (``averify``) and ends in the state ``invoke`` ends in."""
    script = TAGS if protocol == "tags" else TOOLS
    settings = {"coord_style": "qwen3"} if protocol == "tags" else {"coord_style": "qwen25", "keyframe_size": 400}
    outs = []
    for mode in ("sync", "async"):
        model = ReplayChatModel(turns=[script[t] for t in ("key", "answer", "correct", "accept")])
        ctx = Context(model=model, search="none", protocol=protocol, segmenter="grabcut", verify_rounds=2,
                      output_dir=str(tmp_path / mode), **settings)
        inputs = {"query": "the blue square", "media": str(scene_dir / "frames")}
        outs.append(graph.invoke(inputs, context=ctx) if mode == "sync" else
                    asyncio.run(graph.ainvoke(inputs, context=ctx)))
    sync, async_ = (_comparable(o, tmp_path / mode) for o, mode in zip(outs, ("sync", "async"), strict=True))
    assert [e["decision"] for e in of_type(outs[1], "verify")] == ["correct", "accept"]
    assert async_["corrections"] == [EXPECTED] and async_ == sync


class AsyncOnlyReplay(ReplayChatModel):
    """A chat model that can only be awaited (as the verl policy): a sync call raises."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        raise RuntimeError("this model is async only")


def test_an_async_only_model_completes_a_verify_round_under_ainvoke(scene_dir, tmp_path):
    turns = [TOOLS[t] for t in ("key", "answer", "correct", "accept")]
    settings = {"coord_style": "qwen25", "keyframe_size": 400, "search": "none", "protocol": "tools",
                "segmenter": "grabcut", "verify_rounds": 2}
    inputs = {"query": "the blue square", "media": str(scene_dir / "frames")}
    ctx = Context(model=AsyncOnlyReplay(turns=turns), output_dir=str(tmp_path / "a"), **settings)
    out = asyncio.run(graph.ainvoke(inputs, context=ctx))
    assert out["stop_reason"] == "answer" and not out.get("error") and not of_type(out, "error")
    assert [e["decision"] for e in of_type(out, "verify")] == ["correct", "accept"]
    assert out["corrections"] == [EXPECTED] and out["turns"] == 4
    # the same model under invoke fails at its first turn: the rounds above were awaited
    sync = graph.invoke(inputs, context=Context(model=AsyncOnlyReplay(turns=turns),
                                                output_dir=str(tmp_path / "s"), **settings))
    assert "async only" in str(sync.get("error")) and not of_type(sync, "verify")


def test_verify_tools_are_bound_from_the_first_turn_and_work_only_in_a_verify_turn(scene_dir, tmp_path):
    """With verify_rounds the run's one tool set holds accept_masks and correct_masks: in a
    reasoning turn such a call is answered as not available yet (as an unknown tool, the run
    goes on); in a verify turn a reasoning tool's call is an unreadable reply (reminded once)."""
    early = {"tool_calls": [{"name": "accept_masks", "args": {}}]}
    late = {"tool_calls": [{"name": "keyframe", "args": {"index": 6}}]}
    out, model = run(scene_dir, tmp_path, "tools", [early, "key", "answer", late, "accept"], verify_rounds=1)
    assert out["stop_reason"] == "answer" and out["turns"] == 5
    first = of_type(out, "model")[0]["action"]
    assert first["type"] == "search" and "accept_masks is not available yet" in first["error"]
    assert "the tools now are keyframe, answer" in first["error"]
    not_yet = out["messages"][3]
    assert isinstance(not_yet, ToolMessage) and "not available yet" in str(not_yet.content)
    (ev,) = of_type(out, "verify")
    assert ev["decision"] == "accept" and ev["turns"] == 2 and "note" not in ev
    reminder = next(m for m in out["messages"] if "could not be read" in str(m.content))
    assert "keyframe cannot be called while you check the masks" in str(reminder.content)
    names = [t["function"]["name"] for t in model.bound_tools]
    assert names == ["keyframe", "answer", "accept_masks", "correct_masks"]
    system = str(out["messages"][0].content)
    assert system == tools_system_prompt(False, describe_convention("qwen25", 400, 448), verify=True)
    assert "accept_masks" in system and "correct_masks" in system


def test_the_tools_prompt_names_the_verify_tools_only_with_verify_rounds():
    note = describe_convention("qwen3", 1000)
    plain, checked = tools_system_prompt(True, note), tools_system_prompt(True, note, verify=True)
    assert "accept_masks" not in plain and "verify" not in plain.lower()
    assert checked.startswith(plain) and checked[len(plain):] == TOOLS_VERIFY_PART


# ------------------------------------------------------------------ SAM 2


@pytest.mark.slow  # two SAM 2 propagations on CPU: ~10 s on 2 idle cores, far more under load
def test_a_correction_reaches_sam2_as_a_prompt_on_its_frame(tmp_path, tiny_sam2_checkpoint, sam2_clip,
                                                            monkeypatch):
    """Random weights: the masks mean nothing, but the prompts SAM 2 is given are checked. The
    second propagation gets the answer's box and point on the keyframe, then the correction's
    box and labelled points on the frame it was made on, in frame pixels."""
    from sam2.sam2_video_predictor import SAM2VideoPredictor  # optional: the [sam2] extra

    root, _frames, _prompt = sam2_clip
    calls: list[dict] = []
    original = SAM2VideoPredictor.add_new_points_or_box

    def recording(self, inference_state, frame_idx, obj_id, points=None, labels=None, **kw):
        calls.append({"frame": frame_idx, "obj": obj_id, "box": kw.get("box"),
                      "points": None if points is None else np.asarray(points).tolist(),
                      "labels": None if labels is None else np.asarray(labels).tolist()})
        return original(self, inference_state, frame_idx, obj_id, points=points, labels=labels, **kw)

    monkeypatch.setattr(SAM2VideoPredictor, "add_new_points_or_box", recording)
    # qwen3 on 96x64: x*0.096, y*0.064
    correct = T + ('<verify>{"frame": 2, "points": [[250, 500], [750, 250]], "labels": [0, 1], '
                   '"box": [500, 125, 1000, 750]}</verify>')
    turns = [T + "<keyframe> 2 </keyframe>",
             T + '<answer>{"bbox_2d": [100, 250, 400, 750], "point_2d": [250, 500]}</answer>', correct]
    ctx = Context(model=ReplayChatModel(turns=turns), search="none", segmenter="sam2", coord_style="qwen3",
                  sam2_checkpoint=str(tiny_sam2_checkpoint), sam2_image_size=256, num_frames=6,
                  verify_rounds=1, output_dir=str(tmp_path / "out"))
    out = graph.invoke({"query": "the square", "media": str(root / "frames")}, context=ctx)
    assert out["stop_reason"] == "answer" and out["segmenter"] == "sam2", out.get("error")
    want = {"round": 1, "object": 0, "frame": 2, "points": [[24.0, 32.0], [72.0, 16.0]],
            "labels": [0, 1], "box": [48.0, 8.0, 95.0, 48.0]}  # 96 * 1.0 clamped to the last pixel
    assert out["corrections"] == [want]
    assert len([e for e in out["events"] if e["type"] == "segment"]) == 2
    # the first propagation: the answer alone (box, then point); the second adds the correction
    first, second = calls[:2], calls[2:]
    assert [c["frame"] for c in first] == [2, 2] and first[0]["box"] is not None
    boxes = [c["box"] for c in second if c["box"] is not None]
    assert any(np.allclose(np.asarray(b, np.float32).reshape(-1), want["box"]) for b in boxes), second
    extra = [c for c in second if c["frame"] == 2 and c["points"] and c["labels"] == [0, 1]]
    assert extra and np.allclose(extra[0]["points"], want["points"]), second
    assert all(c["obj"] == 1 for c in calls)


def test_served_verify_reads_only_the_runs_own_mask_folders(tmp_path, monkeypatch):
    """A thread's state can be written by clients: when served, a verify round reads only
    this run's own mask folders (as the pictures of ``outputs`` do), else it is refused."""
    run = tmp_path / "out" / "run"
    mine = [run / "objects" / "1", run / "objects" / "2"]
    other = tmp_path / "out" / "another-run" / "masks"
    assert _readable_mask_dirs([other], run) == [other]  # no policy (a local run): as named
    monkeypatch.setenv("SEGRESEARCH_MEDIA_ROOTS", str(tmp_path / "media"))
    monkeypatch.setenv("SEGRESEARCH_OUTPUT_ROOT", str(tmp_path / "out"))
    assert _readable_mask_dirs(mine, run) == mine
    assert _readable_mask_dirs([run / "masks"], run) == [run / "masks"]
    for bad in ([mine[0], other], [run / "objects" / ".." / ".." / "another-run" / "masks"], [tmp_path / "x"]):
        with pytest.raises(PathRefused, match="not this run's own"):
            _readable_mask_dirs(bad, run)
    with pytest.raises(PathRefused):
        _readable_mask_dirs([run / "masks"], None)
