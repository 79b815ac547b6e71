"""The graph behind the real LangGraph API server (``langgraph dev``), driven by the SDK."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from segresearch.testing.servers import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, scene_dir):
    exe = Path(sys.executable).parent / "langgraph"
    if not exe.exists():
        pytest.skip("langgraph-cli is not installed")
    work = tmp_path_factory.mktemp("lgserver")
    shutil.copy(REPO / "langgraph.json", work / "langgraph.json")
    cfg = json.loads((work / "langgraph.json").read_text())
    cfg["graphs"]["seg_research"] = str(REPO / "segresearch/graphs/seg_research.py") + ":graph"
    cfg["auth"]["path"] = str(REPO / "segresearch/servers/auth.py") + ":auth"
    cfg["http"]["app"] = str(REPO / "segresearch/servers/graph_app.py") + ":app"
    cfg["dependencies"] = [str(REPO)]
    (work / "langgraph.json").write_text(json.dumps(cfg))
    port = free_port()
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGGRAPH_NO_VERSION_CHECK": "1",
           "SEGRESEARCH_MEDIA_ROOTS": str(scene_dir), "SEGRESEARCH_SEGMENTER": "none"}
    log = (work / "server.log").open("w")
    proc = subprocess.Popen([str(exe), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/ok", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not start:\n" + (work / "server.log").read_text()[-3000:])
    if proc.poll() is not None:
        pytest.fail("server exited:\n" + (work / "server.log").read_text()[-3000:])
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_run_over_the_api(server, scene_dir):
    from langgraph_sdk import get_client

    cassette = scene_dir / "test_server_cassette.json"  # a replay cassette must lie under the roots
    cassette.write_text(json.dumps([
        '<thinking>a</thinking><search>{"name": "text_search", "query": "q"}</search>',
        "<thinking>b</thinking><keyframe> 6 </keyframe>",
        '<thinking>c</thinking><answer>{"bbox_2d": [1, 2, 300, 400], "point_2d": [100, 100]}</answer>',
    ]))

    async def go():
        client = get_client(url=server)
        thread = await client.threads.create()
        ctx = {"model": f"replay:{cassette}", "search": "none", "max_turns": 4, "num_frames": 6}
        final = await client.runs.wait(thread["thread_id"], "seg_research",
                                       input={"query": "the square", "media": str(scene_dir / "frames")},
                                       context=ctx)
        state = await client.threads.get_state(thread["thread_id"])
        try:
            await client.runs.wait(None, "seg_research",
                                   input={"query": "q", "media": "/etc/hostname"}, context=ctx)
            outside = None
        except httpx.HTTPStatusError as e:
            outside = e.response
        # the same thread again, streamed: a fresh run, and every update is JSON
        nodes = []
        async for part in client.runs.stream(thread["thread_id"], "seg_research",
                                             input={"query": "again", "media": str(scene_dir / "frames")},
                                             context=ctx, stream_mode="updates"):
            if part.event == "updates":
                nodes.extend(part.data)
        again = await client.threads.get_state(thread["thread_id"])
        return final, state, outside, nodes, again

    final, state, outside, nodes, again = asyncio.run(go())
    assert nodes == ["load_media", "reason", "search", "reason", "keyframe", "reason", "segment", "finish"]
    assert again["values"]["turns"] == 3 and len(again["values"]["searches"]) == 1
    assert final["stop_reason"] == "answer" and final["turns"] == 3
    assert final["answer"] == {"keyframe": 6, "bbox_2d": [1, 2, 300, 400], "point_2d": [100, 100]}
    assert final["searches"][0]["observation"].startswith("<information>Search failed")
    assert state["values"]["stop_reason"] == "answer"
    # media roots are enforced for API callers, before a run is created
    assert outside is not None and outside.status_code == 403
    assert "outside the allowed roots" in outside.text
