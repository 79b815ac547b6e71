"""Replies to the review pause over the real server (``segresearch serve graph``): a reply the
node would refuse gets an HTTP error at once (422, naming the accepted forms) instead of a
"successful" run that leaves the thread paused, a resume with nothing to resume gets 409, and
good replies still go through."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from segresearch.testing.scenes import grid_answer, render_scene, write_frames
from segresearch.testing.servers import ServerDidNotStart, start_graph_server

pytestmark = pytest.mark.network

T = "<thinking>ok</thinking>\n"
ANSWER = T + '<answer>{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}</answer>'
GRAPH = "seg_research"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_api")
    frames, _ = render_scene(n_frames=8, size=(160, 120))
    write_frames(frames, root / "frames")
    (root / "fast.json").write_text(json.dumps([T + "<keyframe> 2 </keyframe>", ANSWER]))
    out = tmp_path_factory.mktemp("review_api_out")
    state = tmp_path_factory.mktemp("review_api_state")
    env = {k: v for k, v in os.environ.items() if k != "SEGRESEARCH_API_TOKEN"}
    env.update({"SEGRESEARCH_MEDIA_ROOTS": str(root), "SEGRESEARCH_OUTPUT_ROOT": str(out),
                "SEGRESEARCH_SEARCH": "none", "SEGRESEARCH_SEGMENTER": "grabcut"})
    try:
        proc, url = start_graph_server(state / "s", env, state / "server.log", jobs=4)
    except ServerDidNotStart as e:
        pytest.fail(str(e))
    yield {"url": url, "root": root, "out": out, "proc": proc, "log": state / "server.log"}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _ctx(d, folder: str) -> dict:
    return {"model": f"replay:{d['root'] / 'fast.json'}", "review": True, "output_dir": folder}


def _pending(state: dict) -> list[dict]:
    if state.get("interrupts"):
        return state["interrupts"]
    return [i for t in state.get("tasks") or [] for i in t.get("interrupts") or []]


async def _paused_thread(client, d, folder: str) -> str:
    thread = await client.threads.create()
    tid = thread["thread_id"]
    await client.runs.wait(tid, GRAPH, input={"query": "the blue square", "media": str(d["root"] / "frames")},
                           context=_ctx(d, folder))
    return tid


def _post(d, tid: str, resume, route: str = "/wait", folder: str = "x") -> httpx.Response:
    body = {"assistant_id": GRAPH, "command": {"resume": resume}, "context": _ctx(d, folder)}
    return httpx.post(f"{d['url']}/threads/{tid}/runs{route}", json=body, timeout=60)


def test_bad_replies_are_refused_and_the_thread_keeps_waiting(deployment):
    from langgraph_sdk import get_client

    d = deployment

    async def go():
        client = get_client(url=d["url"])
        tid = await _paused_thread(client, d, "api-refusals")
        before = await client.threads.get_state(tid)
        runs_before = await client.runs.list(tid)
        answers = {}
        for name, resume, route in (("bogus", "bogus", "/wait"), ("bogus-stream", "bogus", "/stream"),
                                    ("bogus-background", "bogus", ""),
                                    ("x2", {"bbox_2d": [40, 30, 6000, 90], "point_2d": [80, 60]}, "/wait"),
                                    ("edge", {"bbox_2d": [40, 30, 160, 90], "point_2d": [80, 60]}, "/wait"),
                                    ("nan-typed", {"bbox_2d": [40, 30, "90", 90]}, "/wait"),
                                    ("frame", {"keyframe": 8}, "/stream")):
            answers[name] = _post(d, tid, resume, route)
        after = await client.threads.get_state(tid)
        runs_after = await client.runs.list(tid)
        thread = await client.threads.get(tid)
        pid = _pending(after)[0]["id"]
        keyed = _post(d, tid, {pid: "bogus"})
        stale = _post(d, tid, {"f" * 32: "accept"})
        # and a good reply, keyed by the interrupt id as LangGraph allows, still works
        final = await client.runs.wait(tid, GRAPH, context=_ctx(d, "api-refusals"),
                                       command={"resume": {pid: {"bbox_2d": [40, 30, 159, 90], "point_2d": [80, 60]}}})
        return before, after, runs_before, runs_after, thread, answers, keyed, stale, final

    before, after, runs_before, runs_after, thread, answers, keyed, stale, final = asyncio.run(go())
    for name, res in answers.items():
        assert res.status_code == 422, (name, res.status_code, res.text)
        body = res.json()
        assert body["thread_status"] == "interrupted" and body["detail"], name
        accepted = " ".join(body["accepted"])
        assert "'accept'" in accepted and "'reject'" in accepted and "bbox_2d" in accepted, name
        assert "still interrupted" in body["message"]
    assert "unrecognised review reply 'bogus'" in answers["bogus"].json()["detail"][0]
    assert answers["bogus-stream"].json() == answers["bogus"].json() == answers["bogus-background"].json()
    assert answers["x2"].json()["detail"] == [
        "bbox_2d x2 = 6000 is outside the 160×120 frame: x must be within [0, 159] "
        "(pixel indices, nothing is clamped)"]
    assert "x2 = 160 is outside the 160×120 frame" in answers["edge"].json()["detail"][0]
    assert "x2 is '90'" in answers["nan-typed"].json()["detail"][0]
    assert answers["frame"].json()["detail"] == ["keyframe 8 is not a frame of this media"]
    assert keyed.status_code == 422 and "unrecognised" in keyed.json()["detail"][0]
    assert stale.status_code == 422 and "no pending interrupt has the id(s)" in stale.json()["detail"][0]
    # nothing ran: the thread is paused exactly as before, with no new runs
    assert thread["status"] == "interrupted" and after["next"] == ["review"]
    assert _pending(after) == _pending(before) and "problem" not in _pending(after)[0]["value"]
    assert len(runs_after) == len(runs_before)
    assert final["reviewed"]["decision"] == "edit"
    assert final["answer_px"]["bbox_2d"] == [40.0, 30.0, 159.0, 90.0]
    assert len(os.listdir(final["masks_dir"])) == 8


def test_a_resume_with_nothing_to_resume_is_a_conflict(deployment):
    from langgraph_sdk import get_client

    d = deployment

    async def go():
        client = get_client(url=d["url"])
        fresh = (await client.threads.create())["thread_id"]
        never = _post(d, fresh, "accept")
        tid = await _paused_thread(client, d, "api-conflict")
        done = await client.runs.wait(tid, GRAPH, context=_ctx(d, "api-conflict"), command={"resume": "accept"})
        again = _post(d, tid, "accept", "/stream")
        return never, done, again

    never, done, again = asyncio.run(go())
    assert done["reviewed"]["decision"] == "accept"
    for res in (never, again):
        assert res.status_code == 409, res.text
        assert "is not waiting for a reply (to a review or a question)" in res.json()["detail"]
        assert res.json()["thread_status"] == "idle"


def test_a_valid_edit_over_the_stream_endpoint(deployment):
    """The web page's way: /runs/stream with an edit; the guard lets it through untouched."""
    from langgraph_sdk import get_client

    d = deployment

    async def go():
        client = get_client(url=d["url"])
        tid = await _paused_thread(client, d, "api-stream")
        events = []
        async for part in client.runs.stream(tid, GRAPH, context=_ctx(d, "api-stream"),
                                             command={"resume": {"bbox_2d": [0, 0, 159, 119], "point_2d": [80, 60]}},
                                             stream_mode=["custom", "values"]):
            events.append(part)
        return tid, events, await client.threads.get_state(tid)

    tid, events, state = asyncio.run(go())
    assert state["values"]["reviewed"]["decision"] == "edit" and not _pending(state)
    assert state["values"]["answer_px"]["bbox_2d"] == [0.0, 0.0, 159.0, 119.0]
    finals = [p.data for p in events if p.event == "custom" and p.data.get("type") == "final"]
    assert finals and finals[-1]["stop_reason"] == "answer"


def test_a_two_object_pause_refuses_a_bad_object_index_then_drops_one(deployment):
    """An answer naming two objects: the guard judges "object" against the pause's objects
    (422 for one it does not have) and a good drop segments the other object alone."""
    from langgraph_sdk import get_client

    d = deployment
    _, masks = render_scene(n_frames=8, size=(160, 120))
    objs = [{"bbox_2d": grid_answer(masks[n][2])[0], "point_2d": grid_answer(masks[n][2])[1], "label": n}
            for n in ("blue square", "red circle")]
    (d["root"] / "two.json").write_text(json.dumps([T + "<keyframe> 2 </keyframe>",
                                                    T + "<answer>" + json.dumps(objs) + "</answer>"]))
    ctx = {"model": f"replay:{d['root'] / 'two.json'}", "review": True, "output_dir": "api-two"}

    async def go():
        client = get_client(url=d["url"])
        tid = (await client.threads.create())["thread_id"]
        await client.runs.wait(tid, GRAPH, input={"query": "both", "media": str(d["root"] / "frames")}, context=ctx)
        pause = _pending(await client.threads.get_state(tid))[0]["value"]
        body = {"assistant_id": GRAPH, "command": {"resume": {"decision": "drop", "object": 2}}, "context": ctx}
        bad = httpx.post(f"{d['url']}/threads/{tid}/runs/wait", json=body, timeout=60)
        final = await client.runs.wait(tid, GRAPH, context=ctx, command={"resume": {"decision": "drop", "object": 0}})
        return pause, bad, final

    pause, bad, final = asyncio.run(go())
    assert [o["label"] for o in pause["objects_px"]] == ["blue square", "red circle"]
    assert bad.status_code == 422, bad.text
    assert bad.json()["detail"] == ["object 2 is not one of the answer's objects: the answer's 2 objects are 0 to 1"]
    assert any("\"drop\"" in form for form in bad.json()["accepted"])
    assert final["reviewed"]["changes"] == [{"decision": "drop", "object": 0}]
    assert [o["label"] for o in final["objects_px"]] == ["red circle"] and final["object_masks_dirs"] is None
    got = np.asarray(Image.open(Path(final["masks_dir"]) / "00002.png")) > 127
    assert (got & masks["red circle"][2]).sum() > 0.75 * masks["red circle"][2].sum()
    assert not (got & masks["blue square"][2]).any()


def test_a_resume_without_context_runs_under_the_paused_runs_context(deployment):
    """A resume is a new run; one that names no context gets the paused run's (the model that
    asked, its protocol and folders), not the server's defaults: a question answered over
    the API with only ``command.resume`` finishes the run the way it started."""
    from langgraph_sdk import get_client

    d = deployment
    ask = {"tool_calls": [{"name": "ask_user", "args": {"question": "Which square?"}}]}
    key = {"tool_calls": [{"name": "keyframe", "args": {"index": 2}}]}
    answer = {"tool_calls": [{"name": "answer", "args": {"keyframe": 2, "bbox_2d": [100, 200, 300, 400],
                                                        "point_2d": [200, 300]}}]}
    (d["root"] / "asks.json").write_text(json.dumps([ask, key, answer]))
    context = {"model": f"replay:{d['root'] / 'asks.json'}", "protocol": "tools", "ask_user": True,
               "output_dir": "api-asks"}

    async def go():
        client = get_client(url=d["url"])
        tid = (await client.threads.create())["thread_id"]
        await client.runs.wait(tid, GRAPH, input={"query": "the blue square", "media": str(d["root"] / "frames")},
                               context=context)
        paused = _pending(await client.threads.get_state(tid))
        final = await client.runs.wait(tid, GRAPH, command={"resume": "the blue one"})
        runs = await client.runs.list(tid)
        return paused, final, runs

    paused, final, runs = asyncio.run(go())
    assert paused[0]["value"]["question"] == "Which square?"
    assert final["stop_reason"] == "answer", final.get("error")
    assert final["questions"] == [{"question": "Which square?", "reply": "the blue one", "auto": False}]
    assert len(os.listdir(final["masks_dir"])) == 8 and "api-asks" in final["masks_dir"]
    assert runs[0]["kwargs"]["context"] == context  # the resume ran under the paused run's context
