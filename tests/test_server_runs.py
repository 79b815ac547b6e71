"""Runs through the real server started by ``segresearch serve graph``: concurrency against
in-process ``ainvoke``, state size and memory over many runs, live progress events, and the
review pause resumed over the API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from segresearch.agents.context import Context
from segresearch.graphs.seg_research import graph
from segresearch.testing.scenes import render_scene, write_frames
from segresearch.testing.servers import ServerDidNotStart, start_graph_server

pytestmark = pytest.mark.network

T = "<thinking>ok</thinking>\n"
ANSWER = T + '<answer>{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}</answer>'
# seven model turns: a run that spends the default budget (six tool actions, then the answer)
SEVEN = [T + f"<keyframe> {f} </keyframe>" for f in (0, 2, 4, 5, 7, 1)] + [ANSWER]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    frames, _ = render_scene(n_frames=8, size=(160, 120))
    write_frames(frames, root / "frames")
    (root / "slow.json").write_text(json.dumps({"latency": 0.5, "turns": SEVEN}))
    (root / "fast.json").write_text(json.dumps([T + "<keyframe> 2 </keyframe>", ANSWER]))
    out = tmp_path_factory.mktemp("served_out")
    state = tmp_path_factory.mktemp("state")
    env = {k: v for k, v in os.environ.items() if k != "SEGRESEARCH_API_TOKEN"}
    env.update({"SEGRESEARCH_MEDIA_ROOTS": str(root), "SEGRESEARCH_OUTPUT_ROOT": str(out),
                "SEGRESEARCH_SEARCH": "none", "SEGRESEARCH_SEGMENTER": "grabcut"})
    try:
        proc, url = start_graph_server(state / "s", env, state / "server.log", jobs=32)
    except ServerDidNotStart as e:
        pytest.fail(str(e))
    yield {"url": url, "root": root, "out": out, "proc": proc}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _input(d, query="the blue square"):
    return {"query": query, "media": str(d["root"] / "frames")}


def _concurrency(deployment, local_passes: int, server_passes: int) -> tuple[float, float]:
    """32 runs of seven 0.5 s model turns: the server keeps them all in flight at once
    (LangGraph's default of one job per worker took 14× as long). What remains is the
    in-memory server's queue, which looks for new runs every 0.5 s."""
    from langgraph_sdk import get_client

    d = deployment
    ctx = {"model": f"replay:{d['root'] / 'slow.json'}", "segmenter": "none", "search": "none"}

    async def in_process() -> float:
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(graph.ainvoke(_input(d), context=Context(**ctx)) for _ in range(32)))
        assert all(o["stop_reason"] == "answer" and o["turns"] == 7 for o in outs)
        return time.perf_counter() - t0

    async def served() -> float:
        client = get_client(url=d["url"])
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(client.runs.wait(None, "seg_research", input=_input(d), context=ctx)
                                      for _ in range(32)))
        assert all(o["stop_reason"] == "answer" and o["turns"] == 7 for o in outs), outs[0]
        return time.perf_counter() - t0

    # Warm both sides once (cassette, frames, the server's first run), then take the best
    # of a few passes each: a pass can land on the queue's slow beat (it polls every 0.5 s).
    warm = {**ctx, "model": f"replay:{d['root'] / 'fast.json'}"}
    asyncio.run(graph.ainvoke(_input(d), context=Context(**warm)))
    httpx.post(d["url"] + "/runs/wait", json={"assistant_id": "seg_research", "input": _input(d),
                                               "context": warm}, timeout=60).raise_for_status()
    local = min(asyncio.run(in_process()) for _ in range(local_passes))
    remote = min(asyncio.run(served()) for _ in range(server_passes))
    print(f"32 runs: server {remote:.2f} s, in process {local:.2f} s")
    assert local < 7.0  # the 32 runs overlapped in process (3.5 s each)
    return local, remote


@pytest.mark.slow  # a timing check (16 s): speed is bench/server.py's job in the default run
def test_concurrent_runs_overlap_like_in_process(deployment):
    """Served runs overlap: one job per worker (LangGraph's default) made 32 runs take 14×
    the in-process time. Checked loosely here (2×) because a 2-core box running the suite
    moves the ratio; the 1.5× target is the slow test below and ``bench/server.py``."""
    local, remote = _concurrency(deployment, 1, 2)
    assert remote <= 2.0 * local, (remote, local)


@pytest.mark.slow
def test_concurrent_runs_within_one_and_a_half_times_in_process(deployment):
    """The issue's target on a quiet machine (measured 1.35–1.47×; README)."""
    local, remote = _concurrency(deployment, 2, 5)
    assert remote <= 1.5 * local, (remote, local)


def _rss(proc: subprocess.Popen) -> int:
    p = psutil.Process(proc.pid)
    return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])


@pytest.mark.slow  # a soak test; tests/test_lean_state.py holds the state size in the default suite
def test_state_is_small_and_memory_flat_over_300_runs(deployment):
    from langgraph_sdk import get_client

    d = deployment
    ctx = {"model": f"replay:{d['root'] / 'fast.json'}", "segmenter": "none"}

    async def batch(client, n: int) -> list[str]:
        sem = asyncio.Semaphore(32)

        async def one() -> str:
            async with sem:
                thread = await client.threads.create()
                out = await client.runs.wait(thread["thread_id"], "seg_research", input=_input(d), context=ctx)
                assert out["stop_reason"] == "answer", out
                return thread["thread_id"]

        return await asyncio.gather(*(one() for _ in range(n)))

    async def go():
        client = get_client(url=d["url"])
        first = await batch(client, 50)
        before = _rss(d["proc"])
        await batch(client, 250)
        after = _rss(d["proc"])
        state = await client.threads.get_state(first[0])
        history = await client.threads.get_history(first[0], limit=100)
        return before, after, state, history

    before, after, state, history = asyncio.run(go())
    state_bytes = len(json.dumps(state["values"]))
    history_bytes = sum(len(json.dumps(h["values"])) for h in history)
    assert state_bytes < 50_000, state_bytes  # it was ~490 KB with frames inside the messages
    assert history_bytes < 100_000, history_bytes
    assert "base64" not in json.dumps(state["values"])
    # ~4 MB per run before; now the threads' own checkpoints (~50 KB each) are all that grows
    assert after - before < 60 * 2**20, (before, after)


def _stream_run(d: dict, ctx: dict) -> tuple[list[dict], dict | None]:
    """A stateless run streamed through the SDK: its custom events and its last state."""
    from langgraph_sdk import get_client

    async def go():
        client = get_client(url=d["url"])
        events, last = [], None
        async for part in client.runs.stream(None, "seg_research", input=_input(d), context=ctx,
                                             stream_mode=["custom", "values"]):
            if part.event == "custom":
                events.append(part.data)
            elif part.event == "values":
                last = part.data
        return events, last

    return asyncio.run(go())


def test_progress_events_stream_live_over_the_api(deployment):
    d = deployment
    ctx = {"model": f"replay:{d['root'] / 'fast.json'}", "output_dir": "progress-run"}

    events, last = _stream_run(d, ctx)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["media", "turn", "keyframe", "turn"] and kinds[-1] == "final"
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 8
    assert events[-1]["stop_reason"] == "answer" and events[-1]["masks_dir"] == last["masks_dir"]
    # the relative output folder landed under the operator's output root
    assert Path(last["masks_dir"]) == d["out"] / "progress-run" / "masks"


def test_review_pause_edit_and_resume_over_the_api(deployment):
    from langgraph_sdk import get_client

    d = deployment
    ctx = {"model": f"replay:{d['root'] / 'fast.json'}", "review": True, "output_dir": "reviewed"}

    async def go():
        client = get_client(url=d["url"])
        thread = await client.threads.create()
        tid = thread["thread_id"]
        await client.runs.wait(tid, "seg_research", input=_input(d), context=ctx)
        paused = await client.threads.get_state(tid)
        pause = paused["interrupts"][0]["value"] if paused.get("interrupts") else paused["tasks"][0]["interrupts"][0]["value"]
        picture = httpx.get(d["url"] + "/segresearch/media/" + pause["image"].split(":", 1)[1])
        final = await client.runs.wait(tid, "seg_research", context=ctx,
                                       command={"resume": {"bbox_2d": [40, 30, 120, 90], "point_2d": [80, 60]}})
        return paused, pause, picture, final

    paused, pause, picture, final = asyncio.run(go())
    assert paused["next"] == ["review"] and pause["answer_px"]["keyframe"] == 2
    assert picture.status_code == 200 and picture.content[:4] == b"\x89PNG"
    assert final["reviewed"]["decision"] == "edit"
    assert final["answer_px"]["bbox_2d"] == [40.0, 30.0, 120.0, 90.0]
    assert len(os.listdir(final["masks_dir"])) == 8


def test_tools_mode_run_over_the_api(deployment):
    """A served run with ``protocol: tools`` (a recorded model answering with native tool
    calls) looks at a frame, answers and ends with masks; the conversation carries each call
    and the tool result answering it, and the events are the tags run's kinds."""
    d = deployment
    cassette = d["root"] / "tools.json"
    cassette.write_text(json.dumps({"turns": [
        {"content": "The square is clearest on frame 2.",
         "tool_calls": [{"name": "keyframe", "args": {"index": 2}, "id": "k1"}]},
        {"content": "", "tool_calls": [{"name": "answer", "id": "a1", "args": {
            "keyframe": 2, "bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}}]},
    ]}))
    ctx = {"model": f"replay:{cassette}", "protocol": "tools", "output_dir": "tools-run"}

    events, last = _stream_run(d, ctx)
    assert [e["type"] for e in events][:4] == ["media", "turn", "keyframe", "turn"] and events[-1]["type"] == "final"
    assert last["stop_reason"] == "answer" and not last.get("error")
    assert last["answer"] == {"keyframe": 2, "bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}
    assert Path(last["masks_dir"]) == d["out"] / "tools-run" / "masks"
    assert len(os.listdir(last["masks_dir"])) == 8
    msgs = last["messages"]
    assert [m["type"] for m in msgs] == ["system", "human", "ai", "tool", "human", "ai"]
    assert msgs[2]["tool_calls"][0]["name"] == "keyframe" and msgs[3]["tool_call_id"] == "k1"
    assert msgs[5]["tool_calls"][0]["args"]["bbox_2d"] == [100, 200, 300, 400]
    assert "<keyframe>" not in msgs[0]["content"] and "keyframe" in msgs[0]["content"]
    model_events = [e for e in last["events"] if e["type"] == "model"]
    assert [e["action"]["type"] for e in model_events] == ["keyframe", "answer"]
