"""The tool-calling protocol (``Context.protocol="tools"``): how a general chat model's native
tool calls are read, what the graph sends back, and that a run through search, keyframe and
answer ends exactly as the same actions written as tags do (state, answer, masks, events)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from PIL import Image

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.content import content_text, count_images
from segresearch.agents.context import Context, ContextError
from segresearch.cli import main
from segresearch.core.protocol import AnswerAction, KeyframeAction, NoAction, SearchAction
from segresearch.core.tool_protocol import (
    NOT_RUN,
    TOOL_NAMES,
    parse_tool_calls,
    tool_definitions,
    tool_observation,
)
from segresearch.eval.metrics import region_j
from segresearch.graphs.seg_research import graph
from segresearch.testing.scenes import grid_answer

T = "<thinking>ok</thinking>\n"


def rel_box(scene_dir: Path, fid: int) -> tuple[list[int], list[int]]:
    """The blue square's box and centre at frame ``fid`` on the 0-1000 grid."""
    return grid_answer(np.load(scene_dir / "blue_square.npy")[fid])


def call(name: str, args, id: str | None = None) -> dict:
    c = {"name": name, "args": args}
    if id:
        c["id"] = id
    return c


def turn(*calls: dict, content: str = "") -> dict:
    return {"content": content, "tool_calls": list(calls)}


def ai(*calls, invalid=()) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": n, "args": a, "id": f"c{i}", "type": "tool_call"}
                                             for i, (n, a) in enumerate(calls)],
                     invalid_tool_calls=[{"name": n, "args": a, "id": f"bad{i}", "error": "bad json",
                                          "type": "invalid_tool_call"} for i, (n, a) in enumerate(invalid)])


# ------------------------------------------------------------------ the definitions


def test_definitions_carry_the_published_names_and_the_coordinate_convention():
    defs = tool_definitions("qwen3", 1000, use_search=True)
    assert [d["function"]["name"] for d in defs] == list(TOOL_NAMES)
    params = {d["function"]["name"]: d["function"]["parameters"] for d in defs}
    assert params["text_search"]["required"] == ["query"] and params["image_search"]["required"] == ["query"]
    assert params["keyframe"]["properties"]["index"]["type"] == "integer"
    answer = params["answer"]
    assert answer["required"] == ["keyframe", "bbox_2d", "point_2d"]
    assert answer["properties"]["bbox_2d"]["minItems"] == answer["properties"]["bbox_2d"]["maxItems"] == 4
    assert "0 to 1000" in defs[3]["function"]["description"]
    assert "448x448" in tool_definitions("qwen25", 448, True)[3]["function"]["description"]
    # without search only keyframe and answer are offered; LangChain takes the dicts unchanged
    assert [d["function"]["name"] for d in tool_definitions("qwen3", 1000, False)] == ["keyframe", "answer"]
    assert convert_to_openai_tool(defs[0]) == defs[0]
    defs[0]["function"]["name"] = "changed"  # a caller's copy: the next call is unaffected
    assert tool_definitions("qwen3", 1000, True)[0]["function"]["name"] == "text_search"


# ------------------------------------------------------------------ parse outcomes


def test_well_formed_calls_become_the_tag_parsers_actions():
    assert parse_tool_calls(ai(("text_search", {"query": " who won "}))) == (
        SearchAction(name="text_search", query="who won"), [])
    assert parse_tool_calls(ai(("image_search", {"query": "logo"})))[0] == SearchAction("image_search", "logo")
    assert parse_tool_calls(ai(("keyframe", {"index": 6})))[0] == KeyframeAction(frame=6, raw="6")
    assert parse_tool_calls(ai(("keyframe", {"index": "frame 6"})))[0].frame == 6  # lenient, as tags
    act, _ = parse_tool_calls(ai(("answer", {"keyframe": 6, "bbox_2d": [30, 40, 10, 20], "point_2d": [20, 30]})))
    assert isinstance(act, AnswerAction) and act.keyframe == 6
    assert act.bbox_2d == [10, 20, 30, 40] and act.warnings == ["box corners were swapped"]


def test_no_call_is_no_action():
    act, rest = parse_tool_calls(AIMessage(content="I think it is the square."))
    assert act == NoAction(reason="the reply called no tool") and rest == []


@pytest.mark.parametrize(("calls", "invalid", "expect"), [
    # bad JSON arguments (LangChain's invalid_tool_calls), per tool as the tag parser treats them
    ((), [("text_search", "{query: ")], SearchAction("text_search", "", error=(
        'text_search arguments are not a JSON object; write {"query": "..."}'))),
    ((), [("keyframe", '{"index": 6')], KeyframeAction(frame=None, raw='{"index": 6')),
    ((), [("answer", "{bbox")], NoAction(reason="answer arguments are not valid JSON")),
    # missing or mistyped fields
    ([("text_search", {})], (), SearchAction("text_search", "", error='text_search needs a "query" string')),
    ([("image_search", {"query": 7})], (), SearchAction("image_search", "",
                                                        error='image_search needs a "query" string')),
    ([("text_search", {"query": "  "})], (), SearchAction("text_search", "", error="empty search query")),
    ([("keyframe", {})], (), KeyframeAction(frame=None, raw="null")),
    ([("keyframe", {"index": "the third"})], (), KeyframeAction(frame=None, raw="the third")),
    ([("answer", {"keyframe": 6, "point_2d": [1, 2]})], (),
     NoAction(reason="invalid answer: bbox_2d must be a list of 4 numbers")),
    ([("answer", {"keyframe": 6, "bbox_2d": [1, 2, "x", 4], "point_2d": [1, 2]})], (),
     NoAction(reason="invalid answer: bbox_2d must hold numbers")),
    ([("answer", {"keyframe": "six", "bbox_2d": [1, 2, 3, 4], "point_2d": [1, 2]})], (),
     NoAction(reason="invalid answer: keyframe must be a frame id (an integer)")),
    # an unknown tool: an error naming the tools
    ([("segment_everything", {"x": 1})], (), SearchAction(
        "segment_everything", "", error="unknown tool 'segment_everything'; the tools are "
                                        "text_search, image_search, keyframe, answer")),
])
def test_malformed_calls(calls, invalid, expect):
    act, rest = parse_tool_calls(ai(*calls, invalid=invalid))
    assert act == expect and rest == []


def test_a_missing_point_is_the_box_centre_and_a_missing_keyframe_a_warning():
    act, _ = parse_tool_calls(ai(("answer", {"bbox_2d": [0, 0, 10, 20]})))
    assert isinstance(act, AnswerAction) and act.point_2d == [5, 10] and act.keyframe is None
    assert act.warnings == ["no point_2d: the box centre was used",
                            "no keyframe: the frame last shown at high resolution was used"]


def test_several_calls_run_the_first_in_the_order_written():
    msg = ReplayChatModel(turns=[turn(call("text_search", "{oops"), call("keyframe", {"index": 2}),
                                      call("answer", {"keyframe": 2, "bbox_2d": [1, 2, 3, 4]}))]).invoke("x")
    # LangChain keeps valid and invalid calls apart; the raw list restores the written order
    assert [c["name"] for c in msg.tool_calls] == ["keyframe", "answer"]
    act, rest = parse_tool_calls(msg)
    assert isinstance(act, SearchAction) and act.error and act.name == "text_search"
    assert [(c["name"], c["id"]) for c in rest] == [("keyframe", "call_0_1"), ("answer", "call_0_2")]
    assert parse_tool_calls(msg, tools=("keyframe", "answer"))[0] == act  # a known name stays a search


# ------------------------------------------------------------------ observations


def test_observation_placement():
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    text = "<information>1. (Title: Logo) <image>\n</information>"
    after = tool_observation("c1", text, [img], "after")
    assert [type(m) for m in after] == [ToolMessage, HumanMessage]
    assert after[0].tool_call_id == "c1" and after[0].content == "<information>1. (Title: Logo) [image 1]\n</information>"
    assert count_images(after[1].content) == 1 and "[image 1]" in content_text(after[1].content)
    inside = tool_observation("c1", text, [img], "inside")
    assert len(inside) == 1 and isinstance(inside[0], ToolMessage) and inside[0].tool_call_id == "c1"
    assert inside[0].content == [{"type": "text", "text": "<information>1. (Title: Logo) "}, img,
                                 {"type": "text", "text": "\n</information>"}]
    plain = tool_observation("c2", "No results.", [], "after")
    assert len(plain) == 1 and plain[0].content == "No results." and plain[0].tool_call_id == "c2"


# ------------------------------------------------------------------ the graph


def _run(scene_dir, turns, *, protocol="tools", model=None, **ctx):
    ctx.setdefault("segmenter", "none")
    if "kb" not in ctx:
        ctx.setdefault("prompt_variant", "search")
        ctx.setdefault("search", "none")
    model = model or ReplayChatModel(turns=turns)
    out = graph.invoke({"query": ctx.pop("query", "the blue square"), "media": str(scene_dir / "frames")},
                       context=Context(model=model, protocol=protocol, coord_style="qwen3", **ctx))
    return out, model


def _event_shape(events):
    return [(e["type"], e.get("name"), (e.get("action") or {}).get("type")) for e in events]


def test_tools_run_equals_a_tags_run_of_the_same_actions(scene_dir, kb_dir, tmp_path):
    """Search (text and image), keyframe and answer: the same answer, pixels, stop reason,
    searches, masks and event sequence as the tags run; the conversation carries each call
    and its answer (ids matching), images after the tool result for an OpenAI-style model."""
    box, point = rel_box(scene_dir, 6)
    q = "the logo of the Zephyr Prize 2030 winner"
    tools_turns = [
        turn(call("text_search", {"query": "who won the Zephyr Prize 2030"}), content="First the winner."),
        turn(call("image_search", {"query": "Blue Square collective logo"})),
        turn(call("keyframe", {"index": 6})),
        turn(call("answer", {"keyframe": 6, "bbox_2d": box, "point_2d": point})),
    ]
    tag_turns = [
        T + '<search>{"name": "text_search", "query": "who won the Zephyr Prize 2030"}</search>',
        T + '<search>{"name": "image_search", "query": "Blue Square collective logo"}</search>',
        T + "<keyframe> 6 </keyframe>",
        T + "<answer>" + json.dumps({"bbox_2d": box, "point_2d": point}) + "</answer>",
    ]
    out, model = _run(scene_dir, tools_turns, kb=str(kb_dir), segmenter="grabcut", query=q,
                      output_dir=str(tmp_path / "tools"))
    ref, _ = _run(scene_dir, tag_turns, protocol="tags", kb=str(kb_dir), segmenter="grabcut", query=q,
                  output_dir=str(tmp_path / "tags"))
    assert out["stop_reason"] == ref["stop_reason"] == "answer" and not out.get("error")
    assert out["answer"] == ref["answer"] == {"keyframe": 6, "bbox_2d": box, "point_2d": point}
    assert out["answer_px"] == ref["answer_px"] and out["turns"] == ref["turns"] == 4
    assert out["searches"] == ref["searches"]
    assert _event_shape(out["events"]) == _event_shape(ref["events"])
    assert [e.get("action") for e in out["events"] if e["type"] == "model"] == [
        e.get("action") for e in ref["events"] if e["type"] == "model"]
    # masks as good as the tags run's
    for run in (out, ref):
        pred = np.asarray(Image.open(Path(run["masks_dir"]) / "00006.png")) > 127
        assert region_j(np.load(scene_dir / "blue_square.npy")[6][None], pred[None])[0] > 0.8
    # the model was bound to the four tools
    assert [d["function"]["name"] for d in model.bound_tools] == list(TOOL_NAMES)
    msgs = out["messages"]
    assert [m.type for m in msgs] == ["system", "human", "ai", "tool", "ai", "tool", "human", "ai", "tool",
                                      "human", "ai"]
    assert "text_search" in msgs[0].content and "<search>" not in msgs[0].content
    for i in (2, 4, 7):  # every call is answered by a tool message with its id
        assert msgs[i + 1].tool_call_id == msgs[i].tool_calls[0]["id"] == f"call_{(i - 2) // 2 if i < 7 else 2}_0"
    assert msgs[2].content == "First the winner."
    assert msgs[3].content.startswith("<information>1. (Title: Zephyr Prize 2030) ")
    assert count_images(msgs[6].content) == 1 and count_images(msgs[9].content) == 1  # after placement
    assert msgs[-1].tool_calls[0]["name"] == "answer"
    traj = json.loads((Path(out["run_dir"]) / "trajectory.json").read_text())
    assert traj["stop_reason"] == "answer" and traj["turns"] == 4


def test_images_inside_the_tool_result_for_a_model_that_takes_them(scene_dir):
    class InsideReplay(ReplayChatModel):
        tool_image_placement: str = "inside"

    out, _ = _run(scene_dir, [turn(call("keyframe", {"index": 6})), turn(content="hmm")],
                  model=InsideReplay(turns=[turn(call("keyframe", {"index": 6})), turn(content="hmm")]))
    msgs = out["messages"]
    assert [m.type for m in msgs] == ["system", "human", "ai", "tool", "ai"]
    assert count_images(msgs[3].content) == 1 and msgs[3].tool_call_id == "call_0_0"
    assert out["stop_reason"] == "no_action"


def test_several_calls_one_runs_and_every_id_is_answered(scene_dir):
    turns = [turn(call("keyframe", {"index": 6}, "k"), call("text_search", {"query": "x"}, "s"),
                  call("answer", {"keyframe": 6, "bbox_2d": [1, 2, 3, 4]}, "a")),
             turn(content="done")]
    out, _ = _run(scene_dir, turns)
    msgs = out["messages"]
    assert [m.type for m in msgs] == ["system", "human", "ai", "tool", "tool", "tool", "human", "ai"]
    assert [m.tool_call_id for m in msgs[3:6]] == ["k", "s", "a"]
    assert msgs[3].content == "frame 6 at high resolution: [image 1]"
    assert msgs[4].content == msgs[5].content == NOT_RUN
    assert count_images(msgs[6].content) == 1  # the user message comes after every tool message
    assert out["searches"] is None or out["searches"] == []  # only the keyframe ran


def test_malformed_and_unknown_calls_are_answered_with_errors(scene_dir):
    turns = [turn(call("text_search", "{not json")), turn(call("crop", {"box": [1, 2]})),
             turn(call("keyframe", {"index": 99})), turn(content="no call")]
    out, _ = _run(scene_dir, turns)
    msgs = out["messages"]
    tool_texts = [m.content for m in msgs if m.type == "tool"]
    assert tool_texts[0] == ('<information>Search failed: text_search arguments are not a JSON object; '
                             'write {"query": "..."}</information>')
    assert "unknown tool 'crop'; the tools are text_search, image_search, keyframe, answer" in tool_texts[1]
    assert tool_texts[2].startswith("Frame index not in [0, 2, 4, 6, 8, 11]")
    assert out["stop_reason"] == "no_action" and out["turns"] == 4
    errors = [e.get("error") for e in out["events"] if e["type"] == "tool"]
    assert errors[0] and errors[1]


def test_no_call_gets_feedback_when_allowed_and_a_bad_answer_call_is_answered(scene_dir):
    box = [100, 100, 400, 400]
    turns = [turn(content="It is the blue square."),
             turn(call("answer", {"keyframe": 0, "bbox_2d": [1, 2]}, "bad")),
             turn(call("answer", {"keyframe": 0, "bbox_2d": box, "point_2d": [200, 200]}))]
    out, _ = _run(scene_dir, turns, feedback_retries=2)
    msgs = out["messages"]
    assert [m.type for m in msgs] == ["system", "human", "ai", "human", "ai", "tool", "ai"]
    assert "made no usable tool call (the reply called no tool)" in msgs[3].content
    assert msgs[5].tool_call_id == "bad" and "bbox_2d must be a list of 4 numbers" in msgs[5].content
    assert out["stop_reason"] == "answer" and out["answer"]["keyframe"] == 0
    # without retries a reply with no call ends the run, as a turn without a tag does
    out, _ = _run(scene_dir, [turn(content="It is the blue square.")])
    assert out["stop_reason"] == "no_action" and out["answer"] is None


def test_a_call_past_the_turn_budget_is_max_turns(scene_dir):
    turns = [turn(call("keyframe", {"index": 2})), turn(call("keyframe", {"index": 4}))]
    out, _ = _run(scene_dir, turns, max_turns=1)
    ref, _ = _run(scene_dir, [T + "<keyframe> 2 </keyframe>", T + "<keyframe> 4 </keyframe>"],
                  protocol="tags", max_turns=1)
    assert out["stop_reason"] == ref["stop_reason"] == "max_turns" and out["turns"] == ref["turns"] == 2


def test_the_answer_names_its_keyframe(scene_dir):
    """The answer tool's keyframe is the frame the box is on when it was shown; one that was
    never shown keeps the last keyframe, with a note."""
    box, point = rel_box(scene_dir, 4)
    out, _ = _run(scene_dir, [turn(call("answer", {"keyframe": 4, "bbox_2d": box, "point_2d": point}))])
    assert out["answer"]["keyframe"] == 4 and out["stop_reason"] == "answer"
    out, _ = _run(scene_dir, [turn(call("keyframe", {"index": 6})),
                              turn(call("answer", {"keyframe": 5, "bbox_2d": box, "point_2d": point}))])
    assert out["answer"]["keyframe"] == 6
    model_events = [e for e in out["events"] if e["type"] == "model"]
    assert "keyframe 5 was not shown; frame 6 was used" in model_events[-1]["notes"]


def test_protocol_setting():
    assert Context().protocol == "tags"
    with pytest.raises(ContextError, match="protocol"):
        Context(protocol="xml")


def test_cassette_with_bad_recorded_message_is_refused(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps([{"content": "x", "tool_calls": [{"args": {}}]}]))
    with pytest.raises(ValueError, match='each tool call needs a "name"'):
        ReplayChatModel.from_file(p)


def test_cli_run_protocol_tools(scene_dir, tmp_path, capsys):
    box, point = rel_box(scene_dir, 6)
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps({"turns": [
        turn(call("keyframe", {"index": 6})),
        turn(call("answer", {"keyframe": 6, "bbox_2d": box, "point_2d": point})),
    ]}))
    code = main(["run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
                 "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                 "--protocol", "tools", "--out", str(tmp_path / "out"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["stop_reason"] == "answer" and final["answer"] == {"keyframe": 6, "bbox_2d": box, "point_2d": point}
    pred = np.asarray(Image.open(tmp_path / "out" / "masks" / "00006.png")) > 127
    assert region_j(np.load(scene_dir / "blue_square.npy")[6][None], pred[None])[0] > 0.8
    traj = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    assert traj["context"]["protocol"] == "tools" and traj["stop_reason"] == "answer"


def test_a_pixel_convention_is_stated_once_for_keyframe_and_frames():
    """Qwen2.5-VL answers in pixels of the image it answers about: the prompt and the answer
    tool say the same sentence, naming both sizes, so the tools never change mid-run."""
    from segresearch.core.coords import describe_convention

    sentence = describe_convention("qwen25", 864, 448)
    assert "864x864" in sentence and "448x448" in sentence
    answer = tool_definitions("qwen25", 864, True, 448)[3]["function"]["description"]
    assert answer.endswith(sentence)
    assert describe_convention("qwen25", 448, 448) == describe_convention("qwen25", 448)
    assert describe_convention("qwen3", 864, 448) == describe_convention("qwen3", 1000)
