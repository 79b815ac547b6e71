"""``segresearch serve graph`` as a deployment: auth, request checks, our routes, startup errors.

Servers are started through the command itself (``python -m segresearch serve graph``), so
what is tested is what an operator runs. Two servers for the module: auth off and auth on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from segresearch.servers import graph_app
from segresearch.servers.auth import token_matches
from segresearch.servers.langgraph_server import is_loopback, port_free, server_config
from segresearch.testing.scenes import render_scene, write_frames
from segresearch.testing.servers import ServerDidNotStart, free_port, start_graph_server

pytestmark = pytest.mark.network

TOKEN = "s3cret-Token_for-tests.42"
SECRET = "TOP-SECRET-CONTENTS-4242"
ANSWER = '<thinking>c</thinking><answer>{"bbox_2d": [1, 2, 300, 400], "point_2d": [100, 100]}</answer>'


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segresearch", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


# ------------------------------------------------------------------ files the server sees


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Media roots with frames and a cassette; outside them a secret file, and links and
    ``..`` paths inside the roots that lead to it."""
    root = tmp_path_factory.mktemp("roots")
    outside = tmp_path_factory.mktemp("outside")
    frames, _ = render_scene(n_frames=8, size=(96, 72))
    write_frames(frames, root / "frames")
    (root / "cassette.json").write_text(json.dumps([ANSWER]))
    (outside / "secret.txt").write_text(SECRET)
    (outside / "cassette.json").write_text(json.dumps([SECRET]))
    (outside / "kb").mkdir()
    (outside / "kb" / "text_corpus.jsonl").write_text(json.dumps({"id": 0, "contents": SECRET}) + "\n")
    (root / "link_to_secret.txt").symlink_to(outside / "secret.txt")
    (root / "link_to_outside").symlink_to(outside, target_is_directory=True)
    return {"root": root, "outside": outside, "frames": root / "frames",
            "cassette": root / "cassette.json"}


def _start(tmp: Path, files: dict[str, Path], extra_env: dict[str, str]):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SEGRESEARCH_API_TOKEN"}
    env.update({"SEGRESEARCH_MEDIA_ROOTS": str(files["root"]), "SEGRESEARCH_SEGMENTER": "none",
                "SEGRESEARCH_SEARCH": "none", **extra_env})
    log_path = tmp / "server.log"
    try:
        proc, _ = start_graph_server(tmp / "state", env, log_path, jobs=4, port=port)
    except ServerDidNotStart as e:
        pytest.fail(str(e))
    return proc, port, log_path


def _stop(proc: subprocess.Popen, port: int, log: Path) -> None:
    """SIGTERM to the command, which forwards it to langgraph dev (in its own session, so
    only the forwarding can reach it): the server shuts down and frees the port."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the command did not stop on SIGTERM")
    # uvicorn shuts down gracefully and then ends by the signal it got: 128 + SIGTERM
    assert code in (0, 128 + signal.SIGTERM), log.read_text()[-2000:]
    deadline = time.time() + 10
    while not port_free("127.0.0.1", port) and time.time() < deadline:
        time.sleep(0.2)
    assert port_free("127.0.0.1", port), "langgraph dev outlived the command"


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, files):
    tmp = tmp_path_factory.mktemp("open")
    proc, port, log = _start(tmp, files, {})
    yield f"http://127.0.0.1:{port}"
    _stop(proc, port, log)


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory, files):
    tmp = tmp_path_factory.mktemp("locked")
    proc, port, log = _start(tmp, files, {"SEGRESEARCH_API_TOKEN": TOKEN})
    yield f"http://127.0.0.1:{port}", log
    _stop(proc, port, log)


def _ctx(files, **kw):
    return {"model": f"replay:{files['cassette']}", "search": "none", "num_frames": 4, **kw}


def _run_body(files, *, context=None, media=None, **extra):
    return {"assistant_id": "seg_research",
            "input": {"query": "the blue square", "media": str(files["frames"]) if media is None else media},
            "context": _ctx(files) if context is None else context, **extra}


# ------------------------------------------------------------------ auth off


def test_auth_off_runs_and_info(open_server, files):
    from langgraph_sdk import get_client

    info = httpx.get(open_server + "/segresearch/info").json()
    assert info["auth"] is False and info["version"]
    assert info["media_roots"] == [str(files["root"])] and info["media_roots_restricted"] is True

    async def go():
        client = get_client(url=open_server)
        thread = await client.threads.create()
        final = await client.runs.wait(thread["thread_id"], "seg_research",
                                       input={"query": "the blue square", "media": str(files["frames"])},
                                       context=_ctx(files))
        nodes = []  # a streamed run: the request body reached the server intact
        async for part in client.runs.stream(thread["thread_id"], "seg_research",
                                             input={"query": "again", "media": str(files["frames"])},
                                             context=_ctx(files), stream_mode="updates"):
            if part.event == "updates":
                nodes.extend(part.data)
        return final, nodes

    final, nodes = asyncio.run(go())
    assert final["stop_reason"] == "answer", final.get("error")
    assert final["answer"]["bbox_2d"] == [1, 2, 300, 400]
    assert nodes[0] == "load_media" and "reason" in nodes


def test_media_route(open_server, files):
    """The images of a run come back by digest; anything else is a 404."""
    r = httpx.post(open_server + "/runs/wait", json=_run_body(files), timeout=60)
    assert r.status_code == 200, r.text
    digests = sorted(set(re.findall(r"media-ref:([0-9a-f]{64})", r.text)))
    assert digests, "the run's messages carry no media references"
    img = httpx.get(f"{open_server}/segresearch/media/{digests[0]}")
    assert img.status_code == 200
    assert img.headers["content-type"] == "image/png"
    assert "immutable" in img.headers["cache-control"]
    assert img.content.startswith(b"\x89PNG\r\n\x1a\n")
    for bad in ("0" * 64, "A" * 64, "abc", "..%2F..%2Fetc%2Fpasswd", "0" * 63 + "g"):
        assert httpx.get(f"{open_server}/segresearch/media/{bad}").status_code == 404, bad


# ------------------------------------------------------------------ request checks


def _post(url: str, path: str, body, method: str = "POST", headers=None) -> httpx.Response:
    return httpx.request(method, url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize("context, needle", [
    ({"no_such_key": 1}, "no_such_key"),
    ({"max_turns": "six"}, "max_turns"),
    ({"num_frames": 10**6}, "num_frames"),
    ({"frame_size": -5}, "frame_size"),
])
def test_bad_context_is_422(open_server, files, context, needle):
    r = _post(open_server, "/runs/wait", _run_body(files, context=_ctx(files, **context)))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and any(needle in line for line in detail), detail


def test_bad_input_and_every_run_route_is_checked(open_server, files):
    r = _post(open_server, "/runs/wait", _run_body(files, media=42))
    assert r.status_code == 422 and any("media" in d for d in r.json()["detail"]), r.text
    bad = _run_body(files, context=_ctx(files, num_frames=10**6))
    thread = httpx.post(open_server + "/threads", json={}).json()["thread_id"]
    for path in ("/runs", "/runs/stream", f"/threads/{thread}/runs", f"/threads/{thread}/runs/wait",
                 f"/threads/{thread}/runs/stream"):
        assert _post(open_server, path, bad).status_code == 422, path
    cron = {**bad, "schedule": "0 0 * * *"}
    for path in ("/runs/crons", f"/threads/{thread}/runs/crons"):
        assert _post(open_server, path, cron).status_code == 422, path
    # the server mirrors config.configurable into the context: checked the same way
    via_config = _run_body(files, context={})
    via_config.pop("context")
    via_config["config"] = {"configurable": {**_ctx(files), "num_frames": 10**6}}
    assert _post(open_server, "/runs/wait", via_config).status_code == 422
    # a batch names the run that is wrong
    r = _post(open_server, "/runs/batch", [_run_body(files), bad])
    assert r.status_code == 422 and r.json()["detail"][0].startswith("runs[1]"), r.text
    # searching is not creating: not checked, not refused
    assert _post(open_server, "/runs/crons/search", {"limit": 1}).status_code == 200
    assert _post(open_server, "/assistants/search", {"limit": 1}).status_code == 200


def test_assistants_are_checked(open_server, files):
    bad = {"graph_id": "seg_research", "context": {"num_frames": 10**6}}
    assert _post(open_server, "/assistants", bad).status_code == 422
    r = _post(open_server, "/assistants", {"graph_id": "seg_research", "context": _ctx(files)})
    assert r.status_code == 200, r.text
    aid = r.json()["assistant_id"]
    assert _post(open_server, f"/assistants/{aid}", {"context": {"bogus": 1}}, method="PATCH").status_code == 422
    r = _post(open_server, f"/assistants/{aid}",
              {"context": {"system_prompt_file": str(files["outside"] / "secret.txt")}}, method="PATCH")
    assert r.status_code == 403 and SECRET not in r.text
    ok = _post(open_server, f"/assistants/{aid}", {"context": _ctx(files, num_frames=3)}, method="PATCH")
    assert ok.status_code == 200, ok.text


def _outside_requests(files) -> dict[str, dict]:
    root, outside = files["root"], files["outside"]
    secret = str(outside / "secret.txt")
    return {
        "media absolute": _run_body(files, media=secret),
        "media ..": _run_body(files, media=f"{root}/../{outside.name}/secret.txt"),
        "media symlink file": _run_body(files, media=str(root / "link_to_secret.txt")),
        "media symlink dir": _run_body(files, media=str(root / "link_to_outside" / "secret.txt")),
        "media list": _run_body(files, media=[str(files["frames"] / "00000.jpg"), secret]),
        "system_prompt_file": _run_body(files, context=_ctx(files, system_prompt_file=secret)),
        "system_prompt_file symlink": _run_body(
            files, context=_ctx(files, system_prompt_file=str(root / "link_to_secret.txt"))),
        "kb": _run_body(files, context=_ctx(files, search="local", kb=str(outside / "kb"))),
        "kb ..": _run_body(files, context=_ctx(files, search="local", kb=f"{root}/../{outside.name}/kb")),
        "replay": _run_body(files, context=_ctx(files, model=f"replay:{outside / 'cassette.json'}")),
        "replay symlink": _run_body(
            files, context=_ctx(files, model=f"replay:{root / 'link_to_outside' / 'cassette.json'}")),
    }


@pytest.mark.parametrize("case", list(_outside_requests({"root": Path("/r"), "outside": Path("/o"),
                                                          "frames": Path("/r/f"),
                                                          "cassette": Path("/r/c.json")})))
def test_paths_outside_the_roots_are_403(open_server, files, case):
    r = _post(open_server, "/runs/wait", _outside_requests(files)[case])
    assert r.status_code == 403, r.text
    assert isinstance(r.json()["detail"], list) and r.json()["detail"]
    assert SECRET not in r.text  # refused before anything was opened or echoed


def test_state_updates_and_commands_are_checked(open_server, files):
    thread = httpx.post(open_server + "/threads", json={}).json()["thread_id"]
    secret = str(files["outside"] / "secret.txt")
    r = _post(open_server, f"/threads/{thread}/state", {"values": {"media": secret}})
    assert r.status_code == 403 and SECRET not in r.text
    body = _run_body(files)
    body.pop("input")
    body["command"] = {"update": {"media": secret}}
    assert _post(open_server, f"/threads/{thread}/runs/wait", body).status_code == 403


# ------------------------------------------------------------------ auth on


def test_auth_on(locked_server, files):
    from langgraph_sdk import get_client

    url, log = locked_server
    good = {"Authorization": f"Bearer {TOKEN}"}
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
             {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"},
             {"Authorization": b"Bearer \xff\xfe"},  # not UTF-8: still a 401, not a 500
             {"x-auth-scheme": "langsmith"}]  # the Studio bypass of `langgraph dev` is off
    for headers in wrong:
        assert httpx.post(url + "/threads", json={}, headers=headers).status_code == 401, headers
        assert httpx.get(url + "/segresearch/info", headers=headers).status_code == 401, headers
        assert httpx.get(url + f"/segresearch/media/{'0' * 64}", headers=headers).status_code == 401
        # authentication comes before the request checks: no probing of paths without the token
        r = _post(url, "/runs/wait", _run_body(files, media=str(files["outside"] / "secret.txt")),
                  headers=headers)
        assert r.status_code == 401, r.text
    assert httpx.get(url + "/ok").status_code == 200  # health checks stay open
    info = httpx.get(url + "/segresearch/info", headers=good).json()
    assert info["auth"] is True and TOKEN not in json.dumps(info)
    assert httpx.get(url + f"/segresearch/media/{'0' * 64}", headers=good).status_code == 404
    assert _post(url, "/runs/wait", _run_body(files, media=42), headers=good).status_code == 422

    async def go():
        client = get_client(url=url, headers=good)
        thread = await client.threads.create()
        return await client.runs.wait(thread["thread_id"], "seg_research",
                                      input={"query": "the blue square", "media": str(files["frames"])},
                                      context=_ctx(files))

    final = asyncio.run(go())
    assert final["stop_reason"] == "answer", final.get("error")
    assert TOKEN not in log.read_text(encoding="utf-8", errors="replace")


# ------------------------------------------------------------------ startup errors


def test_port_taken_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _cli("serve", "graph", "--port", str(port), "--state-dir", str(tmp_path / "st"))
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "already in use" in r.stderr and str(port) in r.stderr


def test_exposed_host_needs_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SEGRESEARCH_API_TOKEN"}
    r = _cli("serve", "graph", "--host", "0.0.0.0", "--port", str(free_port()),
             "--state-dir", str(tmp_path / "st"), env=env)
    assert r.returncode == 2 and "SEGRESEARCH_API_TOKEN" in r.stderr, r.stderr
    assert not (tmp_path / "st").exists()
    # --insecure lets it past that check (here it then stops at a taken port, not at the host)
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _cli("serve", "graph", "--host", "0.0.0.0", "--port", str(port), "--insecure",
                 "--state-dir", str(tmp_path / "st"), env=env)
    assert r.returncode == 2 and "already in use" in r.stderr, r.stderr


def test_bad_arguments_are_one_line(tmp_path):
    r = _cli("serve", "graph", "--jobs", "0", "--state-dir", str(tmp_path / "st"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--jobs" in r.stderr


# ------------------------------------------------------------------ pieces, without a server


def test_server_config_points_at_the_package():
    cfg = server_config()
    for spec in (cfg["graphs"]["seg_research"], cfg["auth"]["path"], cfg["http"]["app"]):
        path = Path(spec.rsplit(":", 1)[0])
        assert path.is_absolute() and path.is_file(), spec
    assert cfg["http"]["enable_custom_route_auth"] is True
    assert cfg["auth"]["disable_studio_auth"] is True
    assert (Path(cfg["dependencies"][0]) / "segresearch" / "__init__.py").is_file()


def test_repo_langgraph_json_mounts_auth_and_routes():
    repo = Path(__file__).resolve().parents[1]
    cfg = json.loads((repo / "langgraph.json").read_text())
    for spec in (cfg["graphs"]["seg_research"], cfg["auth"]["path"], cfg["http"]["app"]):
        assert (repo / spec.rsplit(":", 1)[0]).is_file(), spec
    assert cfg["http"]["enable_custom_route_auth"] is True


def test_loopback_and_token_matching():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.org")
    assert not is_loopback("192.168.1.10")
    assert token_matches("Bearer abc", "abc") and token_matches("bearer  abc ", "abc")
    assert not token_matches("Bearer abd", "abc") and not token_matches("abc", "abc")
    assert not token_matches(None, "abc") and not token_matches("Bearer ", "")
    assert not token_matches("Bearer ÿÿ", "abc") and not token_matches(b"Bearer \xff", "abc")
    assert token_matches("Bearer Ωmega".encode(), "Ωmega")  # compared as UTF-8 bytes


def test_guard_replays_the_body_and_leaves_other_routes_alone(monkeypatch):
    """The guard against a stand-in downstream app: the body it forwards is byte-identical
    however it arrived, and routes that create nothing are not read at all."""
    seen: list[tuple[str, bytes]] = []

    async def echo(scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        seen.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    calls: list[str] = []
    monkeypatch.setattr(graph_app, "_validate", lambda kind, body: calls.append(kind))
    client = TestClient(graph_app.RunPayloadGuard(echo))
    payload = json.dumps({"input": {"media": "x"}, "context": {"num_frames": 3}}).encode()

    def chunks():
        for i in range(0, len(payload), 7):
            yield payload[i:i + 7]

    assert client.post("/threads/abc/runs/stream", content=chunks()).text == "ok"
    assert seen[-1] == ("/threads/abc/runs/stream", payload) and calls == ["run"]
    for path in ("/runs/crons/search", "/assistants/search", "/threads/abc/history", "/store/items"):
        client.post(path, content=payload)
        assert seen[-1] == (path, payload)
    client.patch("/assistants/abc", content=payload)
    client.post("/runs/batch", content=b"[]")
    client.post("/runs/wait", content=b"not json")  # left for the server to refuse
    assert calls == ["run", "assistant", "batch"]
    assert seen[-1] == ("/runs/wait", b"not json")


def test_a_silent_port_move_stops_the_server(monkeypatch):
    """langgraph dev moves to another port when the asked one was taken between our check
    and its bind; the command must not keep serving somewhere the operator did not ask."""
    import io
    import threading

    from segresearch.servers import langgraph_server

    class Proc:
        terminated = False

        def terminate(self):
            self.terminated = True

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    proc, moved = Proc(), threading.Event()
    lines = b"starting\nWARNING: Port 2024 is already in use, using port 40123 instead.\n"
    langgraph_server._pump(io.BytesIO(lines), moved, proc)
    assert moved.is_set() and proc.terminated and "starting" in out.getvalue()
