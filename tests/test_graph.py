"""The graph end to end with a recorded policy: routing, budgets, stop reasons, outputs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from PIL import Image

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.content import content_text, count_images
from segresearch.agents.context import Context
from segresearch.eval.metrics import region_j
from segresearch.graphs import seg_research
from segresearch.graphs.seg_research import build_graph, graph
from segresearch.testing.scenes import grid_answer
from segresearch.tools.search import SearchBackend, TextHit

SHOWN = [0, 2, 4, 6, 8, 11]  # floor(linspace(0, 11, 6)) for the 12-frame scene
T = "<thinking>ok</thinking>\n"


def search(q: str, name: str = "text_search") -> str:
    return T + json.dumps({"name": name, "query": q}).join(["<search>", "</search>"])


def answer(box, point) -> str:
    return T + "<answer>" + json.dumps({"bbox_2d": box, "point_2d": point}) + "</answer>"


def keyframe(fid) -> str:
    return T + f"<keyframe> {fid} </keyframe>"


def rel_box(scene_dir: Path, fid: int) -> tuple[list[int], list[int]]:
    """The blue square's box and centre at frame ``fid`` on the 0-1000 grid."""
    return grid_answer(np.load(scene_dir / "blue_square.npy")[fid])


def run(scene_dir, turns, tmp_path=None, query="the blue square", media=None, **ctx):
    ctx.setdefault("segmenter", "none")
    if "search" not in ctx and "kb" not in ctx:
        # the search prompt, with a backend that needs no knowledge base (preflight
        # refuses a run whose search backend cannot work)
        ctx.setdefault("prompt_variant", "search")
        ctx["search"] = "none"
    if tmp_path is not None:
        ctx.setdefault("output_dir", str(tmp_path / "out"))
    context = Context(model=ReplayChatModel(turns=turns), **ctx)
    return graph.invoke({"query": query, "media": media or str(scene_dir / "frames")}, context=context)


def test_full_knowledge_run(scene_dir, kb_dir, tmp_path):
    box, point = rel_box(scene_dir, 6)
    turns = [search("who won the Zephyr Prize 2030"), search("Blue Square collective logo"),
             keyframe(6), answer(box, point)]
    out = run(scene_dir, turns, tmp_path, query="the logo of the Zephyr Prize 2030 winner",
              kb=str(kb_dir), segmenter="grabcut")
    assert out["stop_reason"] == "answer" and not out.get("error")
    assert out["turns"] == 4
    assert out["answer"] == {"keyframe": 6, "bbox_2d": box, "point_2d": point}
    # pixels of the 160x120 original
    px = out["answer_px"]
    assert px["keyframe"] == 6
    assert px["bbox_2d"] == [round(box[0] * 160 / 1000), round(box[1] * 120 / 1000),
                             round(box[2] * 160 / 1000), round(box[3] * 120 / 1000)]
    assert [s["query"] for s in out["searches"]] == ["who won the Zephyr Prize 2030", "Blue Square collective logo"]
    assert out["searches"][0]["observation"].startswith("<information>1. (Title: Zephyr Prize 2030) ")
    assert out["searches"][1]["observation"].startswith("<information>1. (Title: Blue Square collective) ")
    # messages: system, frames+query, then 4 model turns and 3 observations
    msgs = out["messages"]
    assert [m.type for m in msgs] == ["system", "human", "ai", "human", "ai", "human", "ai", "human", "ai"]
    assert count_images(msgs[1].content) == 6
    assert content_text(msgs[1].content, "<image>") == (
        "frame 0 <image>\nframe 2 <image>\nframe 4 <image>\nframe 6 <image>\nframe 8 <image>"
        "\nframe 11 <image>\n\nthe logo of the Zephyr Prize 2030 winner")
    assert content_text(msgs[3].content).startswith("<information>")
    assert count_images(msgs[7].content) == 1  # the keyframe
    assert msgs[-1].content == turns[-1]
    # masks and files
    masks_dir = Path(out["masks_dir"])
    pred = np.asarray(Image.open(masks_dir / "00006.png")) > 127
    gt = np.load(scene_dir / "blue_square.npy")[6]
    assert region_j(gt[None], pred[None])[0] > 0.8
    run_dir = Path(out["run_dir"])
    traj = json.loads((run_dir / "trajectory.json").read_text())
    assert traj["stop_reason"] == "answer" and traj["turns"] == 4
    assert [e["type"] for e in traj["events"]] == [
        "start", "media", "model", "tool", "model", "tool", "model", "tool", "model", "segment"]
    assert all("base64" not in m["text"] for m in traj["messages"])
    with Image.open(run_dir / "keyframe_annotated.jpg") as im:
        assert im.size == (160, 120)
    with Image.open(run_dir / "frames_shown.jpg") as im:
        # six 160×120 frames in 3 columns, each tile keeping the frames' 4:3 shape
        assert im.size[0] > im.size[1] and abs(im.size[0] / im.size[1] - 2.0) < 0.05
    md = (run_dir / "report.md").read_text()
    assert md.startswith("# the logo of the Zephyr Prize 2030 winner")
    assert md.count("## Turn ") == 4 and "**text_search `who won the Zephyr Prize 2030`**" in md
    assert "![keyframe_annotated.jpg](keyframe_annotated.jpg)" in md


def test_image_search_observation_carries_the_image(scene_dir, kb_dir):
    out = run(scene_dir, [search("Blue Square logo", "image_search"), T + "no idea"], kb=str(kb_dir))
    obs = out["messages"][3]
    blocks = obs.content
    assert blocks[0] == {"type": "text", "text": "<information>1. (Title: Blue Square logo) "}
    assert blocks[1]["type"] == "image_url"
    assert blocks[2] == {"type": "text", "text": "\n</information>"}
    from segresearch.agents.content import block_image, block_url

    assert block_url(blocks[1]).startswith("media-ref:")  # a reference, not pixels, in the state
    img = block_image(blocks[1])
    assert img.size == (256, 256)
    assert np.asarray(img)[128, 128, 2] > 180  # the blue picture, resized
    assert out["stop_reason"] == "no_action"


def test_keyframe_not_shown_is_corrected_and_the_loop_goes_on(scene_dir):
    box, point = rel_box(scene_dir, 6)
    out = run(scene_dir, [keyframe(5), keyframe(6), answer(box, point)], search="none")
    assert out["messages"][3].content == f"Frame index not in {SHOWN}"
    assert out["stop_reason"] == "answer" and out["answer"]["keyframe"] == 6
    assert out["turns"] == 3


def test_no_action_ends_the_run(scene_dir):
    out = run(scene_dir, ["I think it is the square.", answer([0, 0, 10, 10], [5, 5])])
    assert out["stop_reason"] == "no_action" and out["turns"] == 1 and out["answer"] is None


def test_feedback_retry_is_opt_in(scene_dir):
    box, point = rel_box(scene_dir, 6)
    out = run(scene_dir, ["<answer>{bad json</answer>", keyframe(6), answer(box, point)],
              feedback_retries=1)
    assert out["stop_reason"] == "answer"
    assert "answer is not valid JSON" in out["messages"][3].content
    out = run(scene_dir, ["nothing", "still nothing", "nope"], feedback_retries=1)
    assert out["stop_reason"] == "no_action" and out["turns"] == 2


def test_max_turns_executes_at_most_max_turns_tools(scene_dir):
    turns = [search(f"q{i}") for i in range(5)]
    out = run(scene_dir, turns, max_turns=2, search="none")
    assert out["stop_reason"] == "max_turns"
    assert out["turns"] == 3  # max_turns + 1 generations
    assert len(out["searches"]) == 2


def test_answer_in_the_last_generation_is_accepted(scene_dir):
    box, point = rel_box(scene_dir, 6)
    out = run(scene_dir, [search("a"), keyframe(6), answer(box, point)], max_turns=2, search="none")
    assert out["stop_reason"] == "answer" and out["turns"] == 3


def test_token_budget(scene_dir):
    long = T.replace("ok", "word " * 50) + "<search>x</search>"
    out = run(scene_dir, [long, long, long], max_response_tokens=80, search="none")
    assert out["stop_reason"] == "max_tokens"
    assert out["turns"] == 2


def test_truncated_turn_ends_with_max_tokens(scene_dir):
    out = run(scene_dir, ["<thinking>" + "very long " * 100], max_new_tokens=20)
    assert out["stop_reason"] == "max_tokens"
    assert out["events"][-1]["type"] == "model"
    assert out["events"][-1]["finish_reason"] == "length"


def test_model_failure_is_a_stop_reason(scene_dir):
    out = run(scene_dir, [search("a")], search="none")  # cassette runs out on turn 2
    assert out["stop_reason"] == "error:model"
    assert "turn 2 was requested" in out["error"]


def test_missing_media_never_calls_the_model(scene_dir, tmp_path):
    out = run(scene_dir, [], media=str(tmp_path / "nope.mp4"))
    assert out["stop_reason"] == "error:media"
    assert "not found" in out["error"] and out["turns"] == 0


def test_video_answer_without_keyframe_gets_empty_masks(scene_dir, tmp_path):
    """As the published post-segmentation scores it: every frame gets an empty mask."""
    out = run(scene_dir, [answer([10, 10, 500, 500], [100, 100])], tmp_path, segmenter="grabcut")
    assert out["stop_reason"] == "answer"
    assert out["answer"]["keyframe"] is None and out["segmenter"] == "grabcut"
    masks = sorted(Path(out["masks_dir"]).glob("*.png"))
    assert len(masks) == 12 and not any(np.asarray(Image.open(p)).any() for p in masks)
    traj = json.loads((Path(out["run_dir"]) / "trajectory.json").read_text())
    seg = [e for e in traj["events"] if e["type"] == "segment"][-1]
    assert "without a keyframe" in seg["empty"] and seg["prompt"] is None


def test_run_without_answer_gets_empty_masks_only_with_an_output_folder(scene_dir, tmp_path):
    out = run(scene_dir, ["no tags at all"], tmp_path, segmenter="grabcut")
    assert out["stop_reason"] == "no_action" and out["answer"] is None
    assert len(list(Path(out["masks_dir"]).glob("*.png"))) == 12
    out = run(scene_dir, ["no tags at all"], segmenter="grabcut")  # no output_dir: nothing written
    assert out["stop_reason"] == "no_action" and out["masks_dir"] is None and out["run_dir"] is None
    out = run(scene_dir, ["no tags at all"], tmp_path, segmenter="none")
    assert out["masks_dir"] is None


def test_single_image_answers_frame_zero(scene_dir, tmp_path):
    img = scene_dir / "frames" / "00006.jpg"
    box, point = rel_box(scene_dir, 6)
    out = run(scene_dir, [answer(box, point)], tmp_path, media=str(img), segmenter="grabcut")
    assert out["answer"]["keyframe"] == 0 and out["frame_ids"] == [0]
    pred = np.asarray(Image.open(Path(out["masks_dir"]) / "00006.png")) > 127
    assert region_j(np.load(scene_dir / "blue_square.npy")[6][None], pred[None])[0] > 0.8


def test_qwen25_absolute_coordinates_follow_the_image_shown(scene_dir):
    # keyframe shown at 864x864: x=432 is the middle of the 160-px-wide original
    out = run(scene_dir, [keyframe(6), answer([0, 0, 432, 864], [432, 432])], coord_style="qwen25")
    assert out["answer_px"]["bbox_2d"] == [0, 0, 80, 119]
    # without a keyframe the 448 frame is the reference
    out = run(scene_dir, [answer([0, 0, 224, 448], [224, 224])], coord_style="qwen25")
    assert out["answer_px"]["bbox_2d"] == [0, 0, 80, 119]


def test_out_of_range_coordinates_are_clamped(scene_dir):
    out = run(scene_dir, [keyframe(6), answer([-50, 20, 1400, 990.6], [500, 2000])])
    assert out["answer"]["bbox_2d"] == [0, 20, 1000, 991]
    assert out["answer"]["point_2d"] == [500, 1000]
    assert out["answer_px"]["bbox_2d"] == [0, 2, 159, 119]


def test_search_disabled_and_unconfigured(scene_dir):
    out = run(scene_dir, [search("a"), T], search="none")
    assert out["searches"][0]["observation"] == "<information>Search failed: search is disabled for this run</information>"
    assert "search" not in out["messages"][0].content.split("Pick the frame")[0].lower().replace("visual grounding", "")
    # a backend that cannot work is found before the model spends a turn
    out = run(scene_dir, [search("a"), T], search="local", kb="")
    assert out["stop_reason"] == "error:config" and out["turns"] == 0
    assert "no knowledge base configured" in out["error"]
    out = run(scene_dir, [search("a"), T], search="bogus")
    assert out["stop_reason"] == "error:config" and "unknown search backend 'bogus'" in out["error"]
    out = run(scene_dir, [search("a"), T], search="local", kb=str(scene_dir / "nowhere"))
    assert out["stop_reason"] == "error:config" and "not found" in out["error"]


class _Flaky(SearchBackend):
    name = "flaky"

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail, self.calls = delay, fail, 0

    def search_text(self, query, k):
        self.calls += 1
        time.sleep(self.delay)
        if self.fail:
            raise ConnectionError("backend down")
        return [TextHit("T", "body of " + query, 1.0)]


def test_failing_and_slow_backends_become_observations(scene_dir):
    out = run(scene_dir, [search("a"), search("b"), T], search=_Flaky(fail=True))
    assert out["searches"][0]["observation"] == "<information>Search failed: backend down</information>"
    assert len(out["searches"]) == 2 and out["stop_reason"] == "no_action"
    t0 = time.perf_counter()
    out = run(scene_dir, [search("a"), T], search=_Flaky(delay=2.0), search_timeout=0.2)
    assert time.perf_counter() - t0 < 1.5
    assert "no answer within 0.2 s" in out["searches"][0]["observation"]
    out = run(scene_dir, [search("a"), T], search=_Flaky())
    assert out["searches"][0]["observation"] == "<information>1. (Title: T) body of a</information>"


def test_malformed_search_calls_get_a_readable_error(scene_dir):
    out = run(scene_dir, [T + '<search>{"name": "video_search", "query": "x"}</search>', T], search="none")
    assert "unknown tool 'video_search'" in out["searches"][0]["observation"]


def test_async_invoke_matches_sync(scene_dir):
    box, point = rel_box(scene_dir, 6)
    turns = [keyframe(6), answer(box, point)]
    ctx = Context(model=ReplayChatModel(turns=turns), segmenter="none", search="none")
    inp = {"query": "q", "media": str(scene_dir / "frames")}
    a = asyncio.run(graph.ainvoke(inp, context=ctx))
    b = graph.invoke(inp, context=ctx)
    assert a["answer"] == b["answer"] and a["stop_reason"] == b["stop_reason"] == "answer"


class _AsyncOnly(BaseChatModel):
    """Fails when called synchronously: proves the async path never blocks a thread on it."""

    @property
    def _llm_type(self) -> str:
        return "async-only"

    def _generate(self, messages, stop=None, run_manager=None, **kw):
        raise AssertionError("sync path used")

    async def _agenerate(self, messages, stop=None, run_manager=None, **kw):
        await asyncio.sleep(0.01)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="<thinking>x</thinking>"))])


def test_ainvoke_uses_the_async_model_path(scene_dir):
    ctx = Context(model=_AsyncOnly(), segmenter="none", search="none")
    out = asyncio.run(graph.ainvoke({"query": "q", "media": str(scene_dir / "frames")}, context=ctx))
    assert out["stop_reason"] == "no_action"


def test_sqlite_checkpointer_persists_the_run(scene_dir, tmp_path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    with SqliteSaver.from_conn_string(str(tmp_path / "ckpt.sqlite")) as saver:
        g = build_graph(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "t1"}}
        ctx = Context(model=ReplayChatModel(turns=[keyframe(6), answer([1, 2, 3, 4], [2, 3])]), search="none",
                      segmenter="none")
        g.invoke({"query": "q", "media": str(scene_dir / "frames")}, cfg, context=ctx)
        st = g.get_state(cfg)
        assert st.values["stop_reason"] == "answer" and st.values["turns"] == 2
        assert len(list(g.get_state_history(cfg))) >= 5


def test_routing_is_explicit():
    r = seg_research.route_after_reason
    assert r({"pending": {"type": "answer"}, "stop_reason": "answer"}) == "segment"
    assert r({"pending": {"type": "search"}}) == "search"
    assert r({"pending": {"type": "keyframe"}}) == "keyframe"
    assert r({"pending": {"type": "feedback"}}) == "feedback"
    assert r({"pending": None, "stop_reason": "no_action"}) == "segment"  # empty masks
    assert r({"pending": {"type": "search"}, "stop_reason": "max_turns"}) == "segment"
    assert r({"pending": {"type": "search"}, "stop_reason": "error:model"}) == "finish"
    assert seg_research.route_after_tool({"stop_reason": "error:media"}) == "finish"
    assert seg_research.route_after_load({}) == "reason"


def test_context_from_json_and_environment(monkeypatch):
    payload = {"model": "replay:x.json", "search": "none", "kb": "/kb", "segmenter": "none",
               "max_turns": 3, "num_frames": 4, "output_dir": "/tmp/o", "coord_style": "qwen25",
               "frame_size": 224, "keyframe_size": 448, "max_response_tokens": None}
    ctx = Context(**json.loads(json.dumps(payload)))
    assert ctx.max_turns == 3 and ctx.use_search is False and ctx.max_response_tokens is None
    monkeypatch.setenv("SEGRESEARCH_MAX_TURNS", "4")
    monkeypatch.setenv("SEGRESEARCH_SEARCH", "none")
    assert Context().max_turns == 4 and Context().search == "none"
    with pytest.raises(ValueError):
        Context(coord_style="pixels")
    with pytest.raises(ValueError):
        Context(max_turns=0)


def test_graph_schemas():
    assert set(graph.get_input_jsonschema()["properties"]) == {"query", "media"}
    out = set(graph.get_output_jsonschema()["properties"])
    assert {"answer", "answer_px", "masks_dir", "stop_reason", "turns", "searches", "messages"} <= out
    ctx_schema = graph.get_context_jsonschema()
    assert not ctx_schema.get("required")  # every field has a default
    for name in ("model", "search", "kb", "segmenter", "max_turns", "num_frames", "output_dir"):
        assert ctx_schema["properties"][name]["description"]
    assert Context().max_turns == 6 and Context().num_frames == 6


def test_system_prompt_from_a_file(scene_dir, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text('My own rules. Coordinates: {coord_note} JSON stays {"a": 1}.')
    out = run(scene_dir, [T], system_prompt_file=str(f))
    sys_text = out["messages"][0].content
    assert sys_text.startswith("My own rules.") and "0 to 1000" in sys_text and '{"a": 1}' in sys_text
    out = run(scene_dir, [T], system_prompt_file=str(tmp_path / "missing.txt"))
    assert out["stop_reason"] == "error:config" and "system prompt file not found" in out["error"]


def test_a_thread_invoked_again_starts_a_fresh_run(scene_dir, tmp_path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    with SqliteSaver.from_conn_string(str(tmp_path / "ckpt.sqlite")) as saver:
        g = build_graph(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "same"}}
        first = Context(model=ReplayChatModel(turns=[search("one"), keyframe(6), answer([1, 2, 3, 4], [2, 3])]),
                        search="none", segmenter="none")
        out1 = g.invoke({"query": "first", "media": str(scene_dir / "frames")}, cfg, context=first)
        assert out1["stop_reason"] == "answer" and len(out1["messages"]) == 7
        second = Context(model=ReplayChatModel(turns=["no action"]), search="none", segmenter="none")
        out2 = g.invoke({"query": "second", "media": str(scene_dir / "frames")}, cfg, context=second)
        assert out2["stop_reason"] == "no_action" and out2["turns"] == 1
        assert len(out2["messages"]) == 3 and out2["messages"][1].content[-1]["text"].endswith("second")
        assert out2["searches"] == [] and out2["answer"] is None
        assert [e["type"] for e in out2["events"]] == ["start", "media", "model"]


def test_search_cache_makes_repeated_queries_free(scene_dir, tmp_path):
    backend = _Flaky()
    cache = str(tmp_path / "search.sqlite")
    for _ in range(2):
        out = run(scene_dir, [search("same question"), T], search=backend, search_cache=cache)
        assert out["searches"][0]["observation"] == "<information>1. (Title: T) body of same question</information>"
    assert backend.calls == 1
    failing = _Flaky(fail=True)
    for _ in range(2):
        run(scene_dir, [search("q"), T], search=failing, search_cache=cache)
    assert failing.calls == 2  # failures are not cached


def test_progress_events_are_streamed_in_order(scene_dir, kb_dir, tmp_path):
    box, point = rel_box(scene_dir, 6)
    ctx = Context(model=ReplayChatModel(turns=[search("Zephyr Prize 2030"), keyframe(6), answer(box, point)]),
                  kb=str(kb_dir), search="bm25", segmenter="grabcut", output_dir=str(tmp_path / "out"))
    events = [c for c in graph.stream({"query": "q", "media": str(scene_dir / "frames")},
                                      context=ctx, stream_mode="custom")]
    statuses = [e["message"] for e in events if e["type"] == "status"]  # first-use loads only
    assert all("knowledge base" in m for m in statuses)
    events = [e for e in events if e["type"] != "status"]
    kinds = [e["type"] for e in events]
    first_progress = kinds.index("progress")
    assert kinds[:first_progress] == ["media", "turn", "search", "turn", "keyframe", "turn"]
    assert set(kinds[first_progress:-1]) == {"progress"} and kinds[-1] == "final"
    media, search_ev, kf, final = events[0], events[2], events[4], events[-1]
    assert media["num_frames"] == 12 and media["frame_ids"] == SHOWN
    assert search_ev["backend"] == "bm25" and search_ev["hits"] >= 1 and search_ev["query"] == "Zephyr Prize 2030"
    assert kf == {"type": "keyframe", "frame": 6, "valid": True}
    assert [e["turn"] for e in events if e["type"] == "turn"] == [1, 2, 3]
    assert events[5]["action"]["type"] == "answer"
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 12 and progress[-1]["label"] == "grabcut"
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert final["stop_reason"] == "answer" and final["answer"]["keyframe"] == 6
    assert final["masks_dir"] == str(tmp_path / "out" / "masks") and final["turns"] == 3


def test_a_new_clips_frames_are_made_side_by_side_and_once(tmp_path, monkeypatch):
    """The frames a run has not seen are decoded and resized in the frame pool (the work
    releases the GIL), each once; the blocks equal one-by-one decoding, and a second run
    on the clip makes none."""
    import threading

    from segresearch.core.media import open_media, resize_square
    from segresearch.graphs import nodes
    from segresearch.testing.scenes import render_scene, write_frames

    frames, _ = render_scene(n_frames=6, size=(96, 64), seed=7)
    paths = [str(p) for p in write_frames(frames, tmp_path / "clip")]
    made: list[str] = []
    real = nodes.resize_square

    def counting(img, side, *resample):
        made.append(threading.current_thread().name)
        return real(img, side, *resample)

    monkeypatch.setattr(nodes, "resize_square", counting)
    media = open_media(paths)
    fids = list(media.frame_ids)
    blocks = nodes._frame_blocks(media, paths, fids, 48)
    assert len(made) == len(fids) and all(n.startswith("segresearch-frames") for n in made)
    from segresearch.agents.content import block_image

    for fid, block in zip(fids, blocks, strict=True):
        want = resize_square(media.frame(fid), 48)
        assert np.array_equal(np.asarray(block_image(block)), np.asarray(want))
    assert nodes._frame_blocks(media, paths, fids, 48) == blocks and len(made) == len(fids)
