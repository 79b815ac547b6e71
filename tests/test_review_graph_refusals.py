"""The review node refuses what it cannot use, in the graph with a checkpointer: the thread
stays paused with a ``problem`` (and a ``custom`` event for a streaming client), nothing is
segmented from a clamped or guessed box, and a later good reply goes through."""

from __future__ import annotations

import json

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.graphs.seg_research import build_graph

T = "<thinking>ok</thinking>\n"
TURNS = [T + "<keyframe> 6 </keyframe>",
         T + '<answer>{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}</answer>']


def _ctx(tmp_path) -> Context:
    return Context(model=ReplayChatModel(turns=TURNS), search="none", segmenter="grabcut",
                   review=True, output_dir=str(tmp_path / "out"))


def _stream(g, payload, cfg, ctx) -> tuple[list[dict], dict | None]:
    """(custom events, the interrupt payload if the run paused)."""
    custom, pause = [], None
    for mode, chunk in g.stream(payload, cfg, context=ctx, stream_mode=["custom", "updates"]):
        if mode == "custom":
            custom.append(chunk)
        elif "__interrupt__" in chunk:
            pause = chunk["__interrupt__"][0].value
    return custom, pause


def _refusals(custom: list[dict]) -> list[dict]:
    return [e for e in custom if e.get("type") == "review"]


def test_bad_replies_keep_the_thread_paused_and_a_good_one_then_works(scene_dir, tmp_path):
    g = build_graph(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "refusals"}}
    ctx = _ctx(tmp_path)
    custom, pause = _stream(g, {"query": "the blue square", "media": str(scene_dir / "frames")}, cfg, ctx)
    assert pause["frame_size"] == [160, 120] and "problem" not in pause
    assert pause["frame_ids"] == {"first": 0, "last": 11, "count": 12, "step": 1}
    assert _refusals(custom) == []

    # a word the node does not know: paused again, saying why, announced once
    custom, pause = _stream(g, Command(resume="bogus"), cfg, ctx)
    assert "unrecognised review reply 'bogus'" in pause["problem"]
    assert _refusals(custom) == [{"type": "review", "decision": "refused", "problem": pause["problem"],
                                  "how": pause["how"]}]
    assert g.get_state(cfg).next == ("review",)

    # a box far outside the 160-pixel frame: refused, not clamped to 159
    custom, pause = _stream(g, Command(resume={"bbox_2d": [60, 40, 6000, 80], "point_2d": [80, 60]}), cfg, ctx)
    assert pause["problem"].startswith("bbox_2d x2 = 6000 is outside the 160×120 frame: x must be within [0, 159]")
    # only this refusal is announced, not the replayed "bogus" before it
    assert [e["problem"] for e in _refusals(custom)] == [pause["problem"]]
    state = g.get_state(cfg)
    assert state.next == ("review",) and state.values["answer_px"]["bbox_2d"] == [16, 24, 48, 48]
    assert state.values.get("masks_dir") is None and not (tmp_path / "out" / "masks").exists()

    # one pixel past the edge is refused as well; the edge itself is fine
    _, pause = _stream(g, Command(resume={"bbox_2d": [60, 40, 160, 80], "point_2d": [80, 60]}), cfg, ctx)
    assert "x2 = 160 is outside" in pause["problem"]
    edit = {"bbox_2d": [60, 40, 159, 80], "point_2d": [80, 60]}
    custom, pause = _stream(g, Command(resume=edit), cfg, ctx)
    assert pause is None and _refusals(custom) == []
    final = g.get_state(cfg).values
    assert final["reviewed"]["decision"] == "edit"
    assert final["answer_px"] == {"keyframe": 6, "bbox_2d": [60.0, 40.0, 159.0, 80.0], "point_2d": [80.0, 60.0]}
    traj = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    segs = [e for e in traj["events"] if e["type"] == "segment"]
    assert len(segs) == 1 and segs[0]["prompt"]["box"] == [60.0, 40.0, 159.0, 80.0]
    reviews = [e for e in traj["events"] if e["type"] == "review"]
    assert [e["decision"] for e in reviews] == ["edit"]


def test_refusals_through_invoke_and_then_a_reject(scene_dir, tmp_path):
    g = build_graph(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "invoke"}}
    ctx = _ctx(tmp_path)
    g.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, cfg, context=ctx)
    for reply, needle in ((float("nan"), "string or an edit object"),
                          ({"bbox_2d": [60, 40, float("inf"), 80]}, "not a finite number"),
                          ({"bbox_2d": [60, 40, 100, 80], "point_2d": [True, 60]}, "x is True"),
                          ({"point_2d": ["80", "60"]}, "x is '80'"),
                          ({"bbox_2d": [100, 40, 60, 80], "point_2d": [80, 60]}, "empty or inverted"),
                          ({"bbox_2d": [60, 40, 100, 80], "point_2d": [10, 10]}, "lies outside bbox_2d"),
                          ({"keyframe": 12}, "keyframe 12 is not a frame of this media"),
                          ({"frame": 3}, "unknown key(s) 'frame'")):
        out = g.invoke(Command(resume=reply), cfg, context=ctx)
        assert needle in out["__interrupt__"][0].value["problem"], reply
        assert g.get_state(cfg).next == ("review",) and out.get("masks_dir") is None
    final = g.invoke(Command(resume="reject"), cfg, context=ctx)
    assert final["reviewed"]["decision"] == "reject" and final["masks_dir"] is None
    assert final["answer_px"]["bbox_2d"] == [16, 24, 48, 48]
