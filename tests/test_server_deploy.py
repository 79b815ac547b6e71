"""``segresearch serve graph`` as a deployment: auth, request checks, our routes, startup errors.

Servers are started through the command itself (``python -m segresearch serve graph``), so
what is tested is what an operator runs: auth off and auth on, each on both engines (the
in-memory one and PostgreSQL + Redis), which must be equally closed.
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
import uuid
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from segresearch.servers import graph_app
from segresearch.servers.auth import token_matches
from segresearch.servers.langgraph_server import is_loopback, port_free, server_config
from segresearch.testing.databases import new_deployment
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
    (root / "inside_secret.txt").write_text(SECRET)  # readable by clients, not by other sites
    (outside / "home").mkdir()
    (root / "link_to_secret.txt").symlink_to(outside / "secret.txt")
    (root / "link_to_outside").symlink_to(outside, target_is_directory=True)
    return {"root": root, "outside": outside, "frames": root / "frames",
            "cassette": root / "cassette.json"}


def _start(tmp: Path, files: dict[str, Path], extra_env: dict[str, str], engine: str, request,
           args: tuple[str, ...] = ()):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SEGRESEARCH_API_TOKEN"}
    env.update({"SEGRESEARCH_MEDIA_ROOTS": str(files["root"]), "SEGRESEARCH_SEGMENTER": "none",
                "SEGRESEARCH_SEARCH": "none", "HOME": str(files["outside"] / "home"),
                "SEGRESEARCH_ALLOWED_URLS": "http://gpu-box,https://api.openai.com",
                "OPENAI_API_KEY": "sk-operator-secret", **extra_env})
    if engine == "postgres":
        db, redis = new_deployment(request.getfixturevalue("pg_services"))
        args = (*args, "--database", db, "--redis", redis)
    log_path = tmp / "server.log"
    try:
        proc, _ = start_graph_server(tmp / "state", env, log_path, jobs=4, port=port, args=args)
    except ServerDidNotStart as e:
        pytest.fail(str(e))
    return proc, port, log_path


def _stop(proc: subprocess.Popen, port: int, log: Path) -> None:
    """SIGTERM to the command, which is the server: it shuts down gracefully and frees the
    port."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the command did not stop on SIGTERM")
    # uvicorn shuts down gracefully, then ends by the signal it got (re-raised)
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), log.read_text()[-2000:]
    deadline = time.time() + 10
    while not port_free("127.0.0.1", port) and time.time() < deadline:
        time.sleep(0.2)
    assert port_free("127.0.0.1", port), "the server outlived the command"


ENGINES = ["memory", "postgres"]


@pytest.fixture(scope="module", params=ENGINES)
def open_server(request, tmp_path_factory, files):
    tmp = tmp_path_factory.mktemp(f"open-{request.param}")
    proc, port, log = _start(tmp, files, {}, request.param, request,
                             args=("--cors-origin", "http://127.0.0.1:9"))
    yield f"http://127.0.0.1:{port}"
    _stop(proc, port, log)


@pytest.fixture(scope="module", params=ENGINES)
def locked_server(request, tmp_path_factory, files):
    tmp = tmp_path_factory.mktemp(f"locked-{request.param}")
    proc, port, log = _start(tmp, files, {"SEGRESEARCH_API_TOKEN": TOKEN}, request.param, request)
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
    assert digests, "the run's messages carry no media references: " + r.text[:500]
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


def test_thread_supersteps_are_checked(open_server, files):
    """``POST /threads`` with ``supersteps`` writes state without a run (as the input, or as a
    command whose Send the next run executes): refused like a run naming the same paths,
    before the thread exists; a superstep inside the roots still creates it."""
    secret = str(files["outside"] / "secret.txt")
    meta = {"graph_id": "seg_research"}  # without it langgraph-api skips the supersteps
    as_input = {"as_node": "__input__", "values": {"query": "q", "media": secret}}
    send = {"as_node": "load_media", "command": {"goto": {"node": "segment", "input": {"media": secret}}}}
    for update, where in ((as_input, "values"), (send, "command.goto.input")):
        thread_id = str(uuid.uuid4())
        body = {"thread_id": thread_id, "metadata": meta, "supersteps": [{"updates": [update]}]}
        r = _post(open_server, "/threads", body)
        assert r.status_code == 403 and SECRET not in r.text, r.text
        assert r.json()["detail"][0].startswith(f"supersteps[0].updates[0].{where}: "), r.text
        assert httpx.get(f"{open_server}/threads/{thread_id}").status_code == 404
    inside = {"as_node": "__input__", "values": {"query": "q", "media": str(files["frames"])}}
    r = _post(open_server, "/threads", {"metadata": meta, "supersteps": [{"updates": [inside]}]})
    assert r.status_code == 200, r.text


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
    assert httpx.get(url + "/ok").status_code == 200  # health checks stay open (load balancers)
    assert httpx.get(url + "/ok?check_db=1").status_code == 401  # ... but not the database probe
    # langgraph-api's own routes need the token too; development routes do not exist at all
    for path in ("/docs", "/openapi.json", "/metrics", "/info"):
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers=good).status_code == 200, path
    for method, path in (("POST", "/internal/truncate"), ("GET", f"/internal/debug/thread/{'0' * 8}"),
                         ("POST", "/deploy"), ("GET", "/deploy"), ("POST", "/mcp"),
                         ("GET", "/.well-known/agent-card.json"), ("POST", "/a2a/seg_research"),
                         ("POST", f"/threads/{'0' * 8}/commands"), ("POST", "/ui/seg_research")):
        for headers in ({}, good):
            r = httpx.request(method, url + path, headers=headers, json={})
            assert r.status_code == 404, (method, path, r.status_code)
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
    for spec in (cfg["graphs"]["seg_research"], cfg["http"]["app"]):
        path = Path(spec.rsplit(":", 1)[0])
        assert path.is_absolute() and path.is_file(), spec
    # the gateway authenticates every route; inside, no second auth and no CORS
    assert "auth" not in cfg and cfg["http"]["cors"] == {"allow_origins": []}
    assert cfg["http"]["disable_mcp"] and cfg["http"]["disable_a2a"]
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


@pytest.mark.parametrize("body, where", [
    ({"supersteps": [{"updates": [{"as_node": "__input__", "values": {"media": 42}}]}]},
     "supersteps[0].updates[0].values"),
    ({"supersteps": [{"updates": [{"as_node": "load_media", "values": [[{"query": 1}, "load_media"]]}]}]},
     "supersteps[0].updates[0].values[0]"),
    ({"supersteps": [{"updates": []}, {"updates": [{"as_node": "reason", "command": {"update": [["media", 7]]}}]}]},
     "supersteps[1].updates[0].command.update[0]"),
    ({"supersteps": [{"updates": [{"as_node": "reason", "command": {
        "goto": ["finish", {"node": "segment", "input": {"media": 7}}]}}]}]},
     "supersteps[0].updates[0].command.goto[1].input"),
])
def test_guard_reads_every_state_write_of_a_new_thread(body, where):
    """Every shape a superstep can write state in is read, and the answer names where."""
    async def never(scope, receive, send):
        raise AssertionError("a refused request reached the server")

    r = TestClient(graph_app.RunPayloadGuard(never)).post("/threads", json=body)
    assert r.status_code == 422, r.text
    assert [line.split(": ")[0] for line in r.json()["detail"]] == [where], r.text


def test_guard_reads_a_runs_command_goto_inputs():
    async def never(scope, receive, send):
        raise AssertionError("a refused request reached the server")

    client = TestClient(graph_app.RunPayloadGuard(never))
    r = client.post("/threads/abc/runs", json={"command": {"goto": {"node": "segment", "input": {"media": 7}}}})
    assert r.status_code == 422 and r.json()["detail"][0].startswith("command.goto.input: "), r.text



# ------------------------------------------------------------------ what a foreign page can do

FOREIGN = "http://127.0.0.1:8666"
LISTED = "http://127.0.0.1:9"  # the open server is started with --cors-origin for it


def _cors(r: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def test_no_cors_unless_the_origin_is_named(open_server):
    plain = httpx.post(open_server + "/assistants/search", json={})
    assert plain.status_code == 200 and _cors(plain) == {}
    # a foreign page's request is refused before anything runs, and granted nothing
    for method in ("GET", "POST"):
        r = httpx.request(method, open_server + "/threads" + ("/search" if method == "POST" else ""),
                          json={} if method == "POST" else None, headers={"Origin": FOREIGN})
        assert r.status_code == 403 and _cors(r) == {}, (method, r.status_code, r.headers)
    pre = httpx.options(open_server + "/runs/wait", headers={
        "Origin": FOREIGN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
        "Access-Control-Request-Private-Network": "true"})
    assert _cors(pre) == {}, pre.headers
    # the named origin gets exactly its own origin back, never the private-network grant
    pre = httpx.options(open_server + "/runs/wait", headers={
        "Origin": LISTED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Private-Network": "true"})
    assert pre.status_code == 204 and _cors(pre)["access-control-allow-origin"] == LISTED
    assert "access-control-allow-private-network" not in _cors(pre)
    assert "access-control-allow-credentials" not in _cors(pre)
    r = httpx.post(open_server + "/assistants/search", json={}, headers={"Origin": LISTED})
    assert r.status_code == 200 and _cors(r)["access-control-allow-origin"] == LISTED
    assert "origin" in r.headers.get("vary", "").lower()
    # the server's own page (same origin) needs no CORS at all
    r = httpx.post(open_server + "/assistants/search", json={}, headers={"Origin": open_server})
    assert r.status_code == 200 and _cors(r) == {}
    for weird in ("null", "http://127.0.0.1:9/path", "file://", "http://user@127.0.0.1:9"):
        assert httpx.get(open_server + "/segresearch/info", headers={"Origin": weird}).status_code == 403


def test_request_bodies_must_be_json(open_server, files):
    body = json.dumps(_run_body(files))
    before = len(httpx.post(open_server + "/threads/search", json={"limit": 1000}).json())
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", "application/jsonx", None):
        headers = {"Content-Type": ctype} if ctype else {}
        for path in ("/runs/wait", "/threads", "/assistants/search"):
            r = httpx.post(open_server + path, content=body, headers=headers)
            assert r.status_code == 415, (ctype, path, r.status_code)
    assert len(httpx.post(open_server + "/threads/search", json={"limit": 1000}).json()) == before
    ok = httpx.post(open_server + "/threads", content=b"{}",
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200
    # the upload route takes raw bytes, but never with a type a page may send unasked
    png = (files["frames"] / "00000.jpg").read_bytes()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        r = httpx.put(open_server + "/segresearch/uploads?name=a.jpg", content=png,
                      headers={"Content-Type": ctype} if ctype else {})
        assert r.status_code == 415, (ctype, r.status_code)
    r = httpx.put(open_server + "/segresearch/uploads?name=a.jpg", content=png,
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text


def test_host_header_must_name_loopback(open_server):
    """DNS rebinding: a foreign name that resolves to 127.0.0.1 makes the browser treat the
    server as the attacker's own origin; the server answers only to its loopback names."""
    port = open_server.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", "attacker.example", f"192.168.1.5:{port}"):
        r = httpx.get(open_server + "/segresearch/info", headers={"Host": host})
        assert r.status_code == 421, (host, r.status_code)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]"):
        assert httpx.get(open_server + "/segresearch/info", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("field, value", [
    ("output_dir", "~/evil_out"), ("output_dir", "~root/evil"), ("output_dir", "$HOME/evil"),
    ("output_dir", "${HOME}/evil"), ("search_cache", "~/evil.sqlite"),
    ("search_cache", "%HOME%/evil.sqlite"), ("system_prompt_file", "~/x.txt"),
    ("output_dir", "evil\x00out"), ("kb", "~"), ("media", "~/frames"), ("media", "$HOME/x.jpg"),
])
def test_home_env_and_nul_paths_are_refused(open_server, files, field, value):
    value = value.replace("\\x00", "\x00")
    if field == "media":
        body = _run_body(files, media=value)
    else:
        body = _run_body(files, context=_ctx(files, **{field: value}))
    r = _post(open_server, "/runs/wait", body)
    assert r.status_code in (403, 422), r.text
    assert not any((files["outside"] / "home").iterdir())


@pytest.mark.parametrize("url", [
    "http://gpu-box.attacker.example/v1", "https://api.openai.com.attacker.example/v1",
    "http://gpu-box@attacker.example/v1", "https://api.openai.com@attacker.example/v1",
    "http://gpu-box:8080/v1", "https://gpu-box/v1", "http://api.openai.com/v1",
])
def test_look_alike_model_urls_are_refused(open_server, files, url):
    r = _post(open_server, "/runs/wait", _run_body(files, context=_ctx(files, model=f"openai:m@{url}")))
    assert r.status_code == 403, (url, r.text)
    assert "sk-operator-secret" not in r.text


def test_a_page_on_another_port_cannot_read_files_through_the_api(open_server, files, tmp_path):
    """What the outside trial did: a page served from another loopback port POSTs a run that
    reads a file (here a prompt file inside the roots, which a legitimate client may read)
    and shows the result. In a real browser, every way of sending it fails and no run is
    created."""
    from segresearch.testing.browser import headless_chromium, missing_browser

    if (why := missing_browser()) is not None:
        pytest.skip(why)
    import http.server
    import threading

    prompt = str(files["root"] / "inside_secret.txt")
    legit = httpx.post(open_server + "/runs/wait", timeout=60, json=_run_body(
        files, context=_ctx(files, system_prompt_file=prompt, output_dir="legit")))
    assert legit.status_code == 200 and SECRET in legit.text  # the file is readable by clients
    attack = _run_body(files, context=_ctx(files, system_prompt_file=prompt, output_dir="attack"))
    out_root = Path(httpx.get(open_server + "/segresearch/info").json()["output_root"])
    assert (out_root / "legit").is_dir()
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text(f"""<!doctype html><body><pre id=out></pre><script>
const body = {json.dumps(json.dumps(attack))};
const target = {json.dumps(open_server)} + "/runs/wait";
const tries = [
  ["text/plain", {{method: "POST", headers: {{"Content-Type": "text/plain"}}, body}}],
  ["json", {{method: "POST", headers: {{"Content-Type": "application/json"}}, body}}],
  ["no-cors", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}}],
  ["get-info", {{method: "GET"}}, {json.dumps(open_server)} + "/segresearch/info"],
];
(async () => {{
  const out = [];
  for (const [name, init, url] of tries) {{
    try {{
      const r = await fetch(url || target, init);
      let text = "";
      try {{ text = await r.text(); }} catch (e) {{ text = "unreadable"; }}
      out.push(name + ": status " + r.status + " " + text);
    }} catch (e) {{ out.push(name + ": failed " + e); }}
  }}
  document.getElementById("out").textContent = out.join("\\n");
  document.title = "done";
}})();
</script></body>""")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(page), **kw)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    threads_before = len(httpx.post(open_server + "/threads/search", json={"limit": 1000}).json())
    try:
        with headless_chromium(tmp_path / "profile", page_load_timeout=30) as driver:
            driver.get(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
            deadline = time.time() + 30
            while driver.title != "done" and time.time() < deadline:
                time.sleep(0.1)
            shown = driver.find_element("id", "out").text
            title = driver.title
    finally:
        httpd.shutdown()
    assert title == "done", shown
    assert SECRET not in shown, shown
    lines = dict(line.split(": ", 1) for line in shown.splitlines())
    assert set(lines) == {"text/plain", "json", "no-cors", "get-info"}, shown
    assert lines["text/plain"].startswith("failed") and lines["json"].startswith("failed"), shown
    assert lines["get-info"].startswith("failed"), shown
    assert lines["no-cors"].startswith("status 0"), shown  # opaque: nothing to read
    assert len(httpx.post(open_server + "/threads/search", json={"limit": 1000}).json()) == threads_before
    time.sleep(1)
    assert not (out_root / "attack").exists()  # no run of the page's ever started


def test_guard_gives_runs_the_servers_durability(monkeypatch):
    """On the durable engine a run that does not choose is checkpointed synchronously; a
    run's own choice, crons and everything else pass unchanged."""
    seen: list[tuple[str, bytes, int]] = []

    async def echo(scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        length = int(dict(scope["headers"]).get(b"content-length", b"-1"))
        seen.append((scope["path"], body, length))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setattr(graph_app, "_validate", lambda kind, body: None)
    client = TestClient(graph_app.RunPayloadGuard(echo))
    run = {"assistant_id": "seg_research", "input": {"query": "q"}}
    monkeypatch.delenv("SEGRESEARCH_DEFAULT_DURABILITY", raising=False)
    client.post("/runs/wait", json=run)
    assert "durability" not in json.loads(seen[-1][1])  # the in-memory engine: as sent
    monkeypatch.setenv("SEGRESEARCH_DEFAULT_DURABILITY", "sync")
    for path in ("/threads/t1/runs", "/threads/t1/runs/wait", "/threads/t1/runs/stream"):
        client.post(path, json=run)
        got = json.loads(seen[-1][1])
        assert got == {**run, "durability": "sync"} and seen[-1][2] == len(seen[-1][1]), path
    # a stateless run has no checkpoints unless it is kept
    for path in ("/runs", "/runs/wait", "/runs/stream"):
        client.post(path, json=run)
        assert json.loads(seen[-1][1]) == run, path
        client.post(path, json={**run, "on_completion": "keep"})
        assert json.loads(seen[-1][1])["durability"] == "sync", path
    for own in ({"durability": "exit"}, {"checkpoint_during": False}):
        client.post("/runs/wait", json={**run, **own})
        assert json.loads(seen[-1][1]) == {**run, **own}
    client.post("/runs/batch", json=[{**run, "on_completion": "keep"}, {**run, "durability": "async"}, run])
    assert [r.get("durability") for r in json.loads(seen[-1][1])] == ["sync", "async", None]
    client.post("/runs/crons", json={**run, "schedule": "* * * * *"})
    assert "durability" not in json.loads(seen[-1][1])


def test_startup_says_who_can_use_an_open_server(tmp_path):
    """A loopback server without a token is usable by every local process: it says so."""
    from segresearch.servers.langgraph_server import ServeOptions, server_environment, startup_lines

    opts = ServeOptions(port=2024)
    open_env = server_environment(opts, {}, tmp_path)
    lines = startup_lines(opts, open_env)
    assert any("warning" in line and "any program on this machine" in line for line in lines)
    token = "s3cret-startup-token"
    locked = startup_lines(opts, server_environment(opts, {"SEGRESEARCH_API_TOKEN": token}, tmp_path))
    assert not any("warning" in line for line in locked) and token not in "\n".join(locked)
    # no roots named: the uploads and the shipped data only, never the launch folder
    assert open_env["SEGRESEARCH_MEDIA_ROOTS"] == str(Path(graph_app.__file__).resolve().parents[1] / "assets")
    assert os.getcwd() not in open_env["SEGRESEARCH_MEDIA_ROOTS"].split(":")
    # the operator's relative paths mean what they meant where the command was typed
    rel = server_environment(opts, {"SEGRESEARCH_KB": "kb", "SEGRESEARCH_MODEL": "replay:c.json",
                                    "SEGRESEARCH_SEARCH_CACHE": "off"}, tmp_path)
    assert rel["SEGRESEARCH_KB"] == str(Path.cwd() / "kb") and rel["SEGRESEARCH_SEARCH_CACHE"] == "off"
    assert rel["SEGRESEARCH_MODEL"] == f"replay:{Path.cwd() / 'c.json'}"
    pg = ServeOptions(port=2024, database="postgresql://u:pw@db/x", redis="redis://r:6379/0")
    pg_env = server_environment(pg, {"BG_JOB_ISOLATED_LOOPS": "true"}, tmp_path)
    assert pg_env["BG_JOB_ISOLATED_LOOPS"] == "false" and pg_env["LANGGRAPH_RUNTIME_EDITION"] == "pg"
    assert pg_env["SEGRESEARCH_DEFAULT_DURABILITY"] == "sync"
    text = "\n".join(startup_lines(pg, pg_env))
    assert "pw" not in text and "u:***@db" in text


def test_a_client_named_model_endpoint_gets_nothing(open_server, files):
    """The operator's key (OPENAI_API_KEY in the server's environment) never leaves for an
    endpoint a client named: the run is refused before anything is sent there."""
    from segresearch.testing.counting_model import CountingModelServer

    model = CountingModelServer(["<answer>{}</answer>"])
    try:
        for url in (model.base_url, f"http://gpu-box@127.0.0.1:{model.port}/v1",
                    f"http://127.0.0.1:{model.port}/v1#http://gpu-box/v1"):
            r = _post(open_server, "/runs/wait", _run_body(files, context=_ctx(files, model=f"openai:m@{url}")))
            assert r.status_code == 403, (url, r.text)
        time.sleep(0.5)
        assert not model.started, model.started
    finally:
        model.close()
