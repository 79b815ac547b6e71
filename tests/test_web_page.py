"""The web page served by ``segresearch serve graph``: its routes (uploads, run folders,
auth) and the page itself in a real browser (Debian's headless Chromium through selenium)
against the real server with a replay model on the demo clip.

Screenshots of every state are saved under the test's folder (and copied to
``SEGRESEARCH_TEST_ARTIFACTS`` when set) and checked not to be blank.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from segresearch.demo import assets_dir, demo_cassette, demo_kb, demo_query
from segresearch.testing.browser import headless_chromium, missing_browser
from segresearch.testing.scenes import mask_box, render_scene, write_frames, write_video
from segresearch.testing.servers import ServerDidNotStart, start_graph_server

pytestmark = pytest.mark.network

TOKEN = "web-page-token-1234"
LIMIT_MB = 1
KEYFRAME = 13  # the demo cassette's keyframe


# ------------------------------------------------------------------ fast: routes in process


@pytest.fixture()
def app_env(tmp_path, monkeypatch):
    """graph_app's routes without langgraph-api around them (no auth layer, no threads)."""
    roots, uploads, out = tmp_path / "media", tmp_path / "uploads", tmp_path / "out"
    roots.mkdir()
    monkeypatch.setenv("SEGRESEARCH_MEDIA_ROOTS", str(roots))
    monkeypatch.setenv("SEGRESEARCH_UPLOAD_ROOT", str(uploads))
    monkeypatch.setenv("SEGRESEARCH_OUTPUT_ROOT", str(out))
    monkeypatch.setenv("SEGRESEARCH_MAX_UPLOAD_MB", "0.25")
    from segresearch.servers.graph_app import app

    return TestClient(app), roots, uploads


def _png_bytes(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_is_validated_capped_and_kept_by_content(app_env):
    client, _, uploads = app_env
    ok = client.put("/segresearch/uploads?name=../../evil%20name.png", content=_png_bytes())
    assert ok.status_code == 201, ok.text
    body = ok.json()
    kept = Path(body["path"])
    # kept by content: <sha256><ext of the format>, the client's name only as a label
    assert kept.parent == uploads.resolve() and kept.name == hashlib.sha256(_png_bytes()).hexdigest() + ".png"
    assert body["label"] == "evil_name.png" and body["reused"] is False
    assert body["kind"] == "image" and (body["width"], body["height"]) == (64, 48)
    again = client.put("/segresearch/uploads?name=other.png", content=_png_bytes())
    assert again.status_code == 201 and again.json()["path"] == body["path"] and again.json()["reused"]
    assert [p.name for p in uploads.iterdir() if not p.name.startswith(".")] == [kept.name]  # one file

    big = client.put("/segresearch/uploads?name=big.mp4", content=b"\0" * (300 * 1024))
    assert big.status_code == 413 and "upload limit of 0.25 MB" in big.json()["detail"]

    def chunks():  # no Content-Length: the cap holds while the body streams in
        for _ in range(40):
            yield b"\0" * 8192

    streamed = client.put("/segresearch/uploads?name=big.mp4", content=chunks())
    assert streamed.status_code == 413
    junk = client.put("/segresearch/uploads?name=clip.mp4", content=b"not a video at all" * 10)
    assert junk.status_code == 422 and "clip.mp4 is not usable as media" in junk.json()["detail"]
    assert str(uploads) not in junk.json()["detail"]
    # an image reader names the file it failed on: the server's temporary path never shows
    bad_png = client.put("/segresearch/uploads?name=photo.png", content=b"not an image" * 10)
    detail = bad_png.json()["detail"]
    assert bad_png.status_code == 422 and detail.startswith("photo.png is not usable as media")
    assert str(uploads) not in detail and ".part-" not in detail
    txt = client.put("/segresearch/uploads?name=notes.txt", content=b"hello")
    assert txt.status_code == 422 and "unsupported file type .txt" in txt.json()["detail"]
    empty = client.put("/segresearch/uploads?name=a.png", content=b"")
    assert empty.status_code == 422
    assert not list(uploads.glob(".part-*"))  # refused uploads leave nothing behind


def test_uploads_are_readable_media_under_the_policy(app_env):
    client, roots, uploads = app_env
    from segresearch.agents.context import ContextError
    from segresearch.agents.path_policy import check_input, served_output

    path = client.put("/segresearch/uploads?name=a.png", content=_png_bytes()).json()["path"]
    check_input({"query": "q", "media": path})  # the upload root is readable
    with pytest.raises(ContextError):
        check_input({"query": "q", "media": str(uploads.parent / "elsewhere.png")})
    lib = client.get("/segresearch/library").json()
    assert lib["items"][0]["path"] == path and lib["items"][0]["root"] == "uploads"
    out = Path(os.environ["SEGRESEARCH_OUTPUT_ROOT"])
    assert served_output(out / "run1") == (out / "run1").resolve()
    assert served_output(out / ".." / "media") is None and served_output("/etc") is None


def test_upload_limit_setting(monkeypatch):
    from segresearch.servers.web import max_upload_bytes

    for raw, mb in (("", 200), ("50", 50), ("0.5", 0.5), ("junk", 200), ("-3", 200), ("0", 200)):
        monkeypatch.setenv("SEGRESEARCH_MAX_UPLOAD_MB", raw)
        assert max_upload_bytes() == int(mb * (1 << 20)), raw


def test_only_the_page_files_are_public():
    from segresearch.servers.auth import is_public

    for path in ("/segresearch/ui", "/segresearch/ui/", "/segresearch/ui/js/main.js", "/segresearch/ui/app.css"):
        assert is_public("GET", path) and is_public("HEAD", path)
        assert not is_public("POST", path)
    for path in ("/segresearch/info", "/segresearch/ui/index.html", "/segresearch/ui/../info",
                 "/segresearch/ui/js/main.js/x", "/segresearch/ui/js/", "/segresearch/ui/js/../app.css",
                 "/segresearch/ui/app.js", "/segresearch/media/ab", "/threads/search", "/"):
        assert not is_public("GET", path), path
    for path in ("/segresearch/setup", "/segresearch/demo-media"):
        assert not is_public("GET", path) and not is_public("POST", path), path


def test_context_schema_enumerates_search_and_segmenter():
    """The page builds a choice for every field the schema enumerates; search backends and
    segmenters are listed from their registries, and the values stay as tolerant as before."""
    from segresearch.agents.client_settings import validate_context
    from segresearch.agents.context import ContextError
    from segresearch.graphs.seg_research import graph
    from segresearch.tools.search import backend_names
    from segresearch.tools.segmenters import SEGMENTER_NAMES

    props = graph.get_context_jsonschema()["properties"]
    assert props["search"]["enum"] == [*backend_names(), "none"] and "hybrid" in props["search"]["enum"]
    assert props["segmenter"]["enum"] == list(SEGMENTER_NAMES)
    assert props["coord_style"]["enum"] == ["auto", "qwen3", "qwen25", "gemini", "normalized"]
    ctx = validate_context({"search": "BM25", "segmenter": "GrabCut"})  # case as before
    assert ctx.search == "BM25" and ctx.segmenter == "GrabCut"
    for bad, needle in (({"search": 3}, "search"), ({"segmenter": 3}, "segmenter")):
        with pytest.raises(ContextError) as e:
            validate_context(bad)
        assert any(p.startswith(needle) for p in e.value.problems), e.value.problems


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def models_server():
    """A stand-in OpenAI-compatible server that answers GET /v1/models."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook's name
            body = b'{"data": []}'
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_setup_says_whether_the_default_model_answers(app_env, monkeypatch, tmp_path, models_server):
    client, _, _ = app_env
    for var in ("SEGRESEARCH_OPENAI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    cassette = tmp_path / "c.json"
    cassette.write_text("[]")
    cases = [(f"openai:some-model@{dead}", False, "unreachable"), (f"openai:some-model@{models_server}", True, None),
             ("openai:gpt-4o", False, "no-key"), (f"replay:{tmp_path / 'missing.json'}", False, "missing"),
             (f"replay:{cassette}", True, None), ("gpt-4o", False, "malformed")]
    for spec, ok, reason in cases:
        monkeypatch.setenv("SEGRESEARCH_MODEL", spec)
        model = client.get("/segresearch/setup").json()["model"]
        assert (model["spec"], model["ok"], model["reason"]) == (spec, ok, reason)
    monkeypatch.setenv("SEGRESEARCH_MODEL", f"openai:some-model@{dead}")
    assert client.get("/segresearch/setup").json()["model"]["address"] == dead


def test_the_recorded_demo_is_offered_only_where_the_policy_lets_clients_read_it(app_env, monkeypatch):
    client, roots, uploads = app_env
    from segresearch.demo import assets_dir, demo_cassette, demo_kb, demo_query
    from segresearch.servers.web import temp_upload_files

    assert client.get("/segresearch/setup").json()["demo"] is None  # the shipped data is outside the roots
    assert client.post("/segresearch/demo-media", json={}).status_code == 404
    monkeypatch.setenv("SEGRESEARCH_MEDIA_ROOTS", f"{roots}:{assets_dir()}")
    demo = client.get("/segresearch/setup").json()["demo"]
    assert demo == {"model": f"replay:{demo_cassette().resolve()}", "search": "local", "kb": str(demo_kb().resolve()),
                    "query": demo_query(), "media": True}
    first = client.post("/segresearch/demo-media", json={})
    assert first.status_code == 201, first.text
    clip = first.json()
    assert (clip["kind"], clip["frames"], clip["width"], clip["height"]) == ("video", 24, 480, 320)
    assert Path(clip["path"]).parent == uploads.resolve() and not clip["reused"]
    again = client.post("/segresearch/demo-media", json={}).json()
    assert again["path"] == clip["path"] and again["reused"]  # one file, however often asked
    assert temp_upload_files(uploads) == []
    monkeypatch.delenv("SEGRESEARCH_UPLOAD_ROOT")
    assert client.get("/segresearch/setup").json()["demo"]["media"] is False


# ------------------------------------------------------------------ the real server


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo clip as an mp4 (what a person uploads) and as a frame folder under the
    media roots; a slowed copy of the demo cassette so that a run can be watched live;
    and a video outside the roots."""
    root = tmp_path_factory.mktemp("web_media")
    outside = tmp_path_factory.mktemp("web_outside")
    frames, masks = render_scene()
    clip = write_video(frames, root / "clip.mp4")
    write_frames(frames, root / "demo_frames")
    write_video(frames[:4], outside / "elsewhere.mp4")
    cassette = json.loads(demo_cassette().read_text())
    (root / "fast_cassette.json").write_text(json.dumps(cassette))
    cassette["latency"] = 0.7
    (root / "slow_cassette.json").write_text(json.dumps(cassette))
    (root / "too_big.mp4").write_bytes(os.urandom(int((LIMIT_MB + 0.5) * (1 << 20))))
    (root / "not_media.mp4").write_bytes(b"this is not a video" * 100)
    return {"root": root, "clip": clip, "frames": root / "demo_frames", "outside": outside / "elsewhere.mp4",
            "cassette": root / "slow_cassette.json", "masks": masks}


def _serve(tmp: Path, demo: dict, **extra: str):
    env = {k: v for k, v in os.environ.items() if k != "SEGRESEARCH_API_TOKEN"}
    env.update({
        "SEGRESEARCH_MEDIA_ROOTS": str(demo["root"]),
        "SEGRESEARCH_MODEL": f"replay:{demo['cassette']}",
        "SEGRESEARCH_SEARCH": "local",
        "SEGRESEARCH_KB": str(demo_kb()),
        "SEGRESEARCH_SEGMENTER": "grabcut",
        "SEGRESEARCH_MAX_UPLOAD_MB": str(LIMIT_MB),
        **extra,
    })
    try:
        return start_graph_server(tmp / "state", env, tmp / "server.log", jobs=8)
    except ServerDidNotStart as e:
        pytest.fail(str(e))


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo):
    tmp = tmp_path_factory.mktemp("web_open")
    proc, url = _serve(tmp, demo)
    yield {"url": url, "state": tmp / "state"}
    _stop(proc)


@pytest.fixture(scope="module")
def locked(tmp_path_factory, demo):
    """With a token, and as a fresh install is: the default model's server is not running
    (nothing listens there) and the shipped demo data is readable."""
    tmp = tmp_path_factory.mktemp("web_locked")
    proc, url = _serve(tmp, demo, SEGRESEARCH_API_TOKEN=TOKEN,
                       SEGRESEARCH_MODEL=f"openai:Qwen/Qwen3-VL-4B-Instruct@http://127.0.0.1:{_closed_port()}/v1",
                       SEGRESEARCH_MEDIA_ROOTS=f"{demo['root']}:{assets_dir()}")
    yield {"url": url, "state": tmp / "state"}
    _stop(proc)


def _run(url: str, demo: dict, headers: dict | None = None, **ctx) -> str:
    """A finished run over the API (no browser), with an output folder: its thread id."""
    h = headers or {}
    tid = httpx.post(url + "/threads", json={}, headers=h).json()["thread_id"]
    r = httpx.post(f"{url}/threads/{tid}/runs/wait", headers=h, timeout=120, json={
        "assistant_id": "seg_research", "input": {"query": demo_query(), "media": str(demo["frames"])},
        "context": {"output_dir": f"api/{tid}", "model": f"replay:{demo['root'] / 'fast_cassette.json'}", **ctx}})
    assert r.status_code == 200 and r.json()["stop_reason"] == "answer", r.text
    return tid


def test_run_folder_routes_serve_only_the_run_folder(server, demo):
    url = server["url"]
    tid = _run(url, demo)
    res = httpx.get(f"{url}/segresearch/threads/{tid}/result").json()
    assert res["masks"] == 24 and res["overlay"] and "trajectory.json" in res["files"]
    assert res["frame_ids"] == list(range(24))
    traj = httpx.get(f"{url}/segresearch/threads/{tid}/files/trajectory.json")
    assert traj.status_code == 200 and traj.json()["stop_reason"] == "answer"
    z = zipfile.ZipFile(io.BytesIO(httpx.get(f"{url}/segresearch/threads/{tid}/masks.zip").content))
    assert len(z.namelist()) == 24 and all(n.startswith("masks/") and n.endswith(".png") for n in z.namelist())
    jpg = httpx.get(f"{url}/segresearch/threads/{tid}/frames/{KEYFRAME}.jpg?overlay=1&max_side=100")
    assert jpg.status_code == 200 and Image.open(io.BytesIO(jpg.content)).size == (100, 67)
    for name in ("..%2Ftrajectory.json", ".hidden", "masks", "%2Fetc%2Fpasswd", "..", "nothing.json"):
        assert httpx.get(f"{url}/segresearch/threads/{tid}/files/{name}").status_code == 404, name
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        assert httpx.get(f"{url}/segresearch/threads/{bad}/result").status_code == 404
        assert httpx.get(f"{url}/segresearch/threads/{bad}/masks.zip").status_code == 404

    # A client can write a thread's state; a run folder it names outside the output root
    # is not served, whatever the state says.
    t2 = httpx.post(url + "/threads", json={}).json()["thread_id"]
    w = httpx.post(f"{url}/threads/{t2}/state", json={
        "values": {"run_dir": str(demo["root"]), "masks_dir": str(demo["frames"])}, "as_node": "finish"})
    if w.status_code == 200:
        assert httpx.get(f"{url}/segresearch/threads/{t2}/files/slow_cassette.json").status_code == 404
        assert httpx.get(f"{url}/segresearch/threads/{t2}/masks.zip").status_code == 404
        assert httpx.get(f"{url}/segresearch/threads/{t2}/result").json()["files"] == []


def test_auth_guards_every_data_route_but_not_the_page(locked, demo):
    url = locked["url"]
    for path in ("/segresearch/ui/", "/segresearch/ui/js/main.js", "/segresearch/ui/js/review.js", "/segresearch/ui/app.css"):
        r = httpx.get(url + path)
        assert r.status_code == 200 and r.text, path
    assert httpx.get(url + "/segresearch/ui", follow_redirects=False).status_code == 307
    good = {"Authorization": f"Bearer {TOKEN}"}
    tid = _run(url, demo, headers=good)
    data_routes = ["/segresearch/info", "/segresearch/library", f"/segresearch/threads/{tid}/result",
                   f"/segresearch/threads/{tid}/files/trajectory.json", f"/segresearch/threads/{tid}/masks.zip",
                   f"/segresearch/threads/{tid}/frames/0.jpg", "/segresearch/ui/index.html"]
    for path in data_routes:
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert httpx.put(url + "/segresearch/uploads?name=a.png", content=_png_bytes()).status_code == 401
    assert not (locked["state"] / "uploads").exists() or not list((locked["state"] / "uploads").iterdir())
    for path in data_routes[:-1]:
        assert httpx.get(url + path, headers=good).status_code == 200, path


# ------------------------------------------------------------------ the browser


def _artefact_dir(tmp_path_factory) -> Path:
    dest = os.environ.get("SEGRESEARCH_TEST_ARTIFACTS")
    return Path(dest) if dest else tmp_path_factory.mktemp("web_shots")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = _artefact_dir(tmp_path_factory)
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if why := missing_browser():
        pytest.skip(why)
    with headless_chromium(tmp_path_factory.mktemp("web-chromium"), page_load_timeout=30, window=(1280, 800)) as driver:
        yield driver


def _wait(driver, js: str, timeout: float = 30, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = driver.execute_script(js)
        if v:
            return v
        time.sleep(0.05)
    status = driver.execute_script("return document.getElementById('status').textContent")
    errors = driver.execute_script("return [...document.querySelectorAll('.error,.banner')].map(e => e.textContent).join(' | ')")
    raise AssertionError(f"timed out waiting for {what or js} (status: {status!r}; errors: {errors!r})")


def _not_blank(path: Path) -> bool:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    colours = len(np.unique(a.reshape(-1, 3)[:: max(1, a.size // 3 // 50_000)], axis=0))
    return float(a.std()) > 12 and colours >= 8


def _shot(driver, shots: Path, name: str, full: bool = False, width: int = 1280) -> Path:
    if full:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(height + 140, 4000))
    driver.execute_script("window.scrollTo(0, 0)")
    path = shots / f"web_{name}.png"
    assert driver.save_screenshot(str(path))
    assert _not_blank(path), path
    if full:
        driver.set_window_size(width, 800)
    return path


def _visible(driver, element_id: str) -> bool:
    return driver.execute_script(f"return !document.getElementById('{element_id}').hidden")


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def _load(driver, url: str, keep_settings: bool = False) -> None:
    """The page with its form ready; settings a previous test left in this browser are
    forgotten first (unless ``keep_settings``), so each test starts from the defaults."""
    driver.get(url + "/segresearch/ui/")
    if not keep_settings and driver.execute_script("const n = localStorage.length; localStorage.clear(); return n"):
        driver.get(url + "/segresearch/ui/")
    _wait(driver, "return document.getElementById('settings').dataset.ready === '1'"
                  " && document.getElementById('library').dataset.loaded === '1'"
                  " && document.querySelectorAll('#common-fields input, #common-fields select').length >= 6",
          what="the settings form and the media list")


def _type(driver, element_id: str, text: str) -> None:
    e = driver.find_element("id", element_id)
    e.clear()
    e.send_keys(text)


def _page_text(driver, message: str) -> str:
    """A server message as the page words it: the page's own module, as it is loaded (its
    state included), since a module's functions are not globals of the page."""
    return driver.execute_script(
        "return import('/segresearch/ui/js/text.js').then((m) => m.pageText(arguments[0]))", message)


def _loaded_images(driver, selector: str) -> int:
    return driver.execute_script(
        f"return [...document.querySelectorAll('{selector}')].filter(i => i.complete && i.naturalWidth > 0).length")


def test_browser_upload_run_live_result_and_history(server, demo, browser, shots):
    d, url = browser, server["url"]
    _load(d, url)
    labels = d.execute_script("return [...document.querySelectorAll('#common-fields label')].map(l => l.textContent)")
    assert labels[:4] == ["Model", "Search", "Knowledge base", "Segmenter"] and "Review the answer first" in labels
    assert d.execute_script("return document.querySelectorAll('#more-fields input, #more-fields select').length") > 10
    # every control of the form has a label
    assert d.execute_script(
        "return [...document.querySelectorAll('#run-form input:not([type=radio]), #run-form select, #run-form textarea')]"
        ".every(e => e.labels && e.labels.length > 0)")
    _shot(d, shots, "1_loaded")

    d.find_element("id", "file").send_keys(str(demo["clip"]))
    _wait(d, "return document.getElementById('media-chosen').textContent.startsWith('Uploaded')", what="the upload")
    assert "video, 24 frames, 480×320" in _text(d, "media-chosen")
    _type(d, "query", demo_query())
    d.find_element("id", "run-button").click()

    # while the run streams: turns, searches with their hits, the keyframe, before the end
    _wait(d, "return document.querySelectorAll('#steps li[data-kind=search] .hits li').length >= 3"
             " && !document.getElementById('keyframe-panel').hidden"
             " && document.getElementById('run-badge').textContent === 'running'",
          what="searches and the keyframe while running")
    assert _loaded_images(d, "#frames img") == 6
    assert "Cobalt Squares" in _text(d, "steps")
    _shot(d, shots, "2_midrun", full=True)

    _wait(d, "return document.getElementById('run-badge').textContent === 'answer'"
             " && !document.getElementById('result-panel').hidden"
             " && document.getElementById('mask-frame').naturalWidth > 0", what="the result")
    assert "box [175, 181, 241, 247]" in _text(d, "keyframe-caption")
    assert _text(d, "mask-frame-id") == str(KEYFRAME)
    can_play = d.execute_script("return document.getElementById('overlay-video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')")
    if can_play:
        _wait(d, "return document.getElementById('overlay-video').src.startsWith('blob:')"
                 " && document.getElementById('overlay-video').readyState >= 1", what="the overlay video")
    zpath = d.execute_script("return document.getElementById('download-masks').dataset.path")
    z = zipfile.ZipFile(io.BytesIO(httpx.get(url + zpath).content))
    pngs = [n for n in z.namelist() if n.endswith(".png")]
    assert len(pngs) == 24
    key_mask = np.asarray(Image.open(z.open(f"masks/{KEYFRAME:05d}.png"))) > 127
    assert key_mask.sum() > 1000
    # the page's own download: the zip comes back as a blob the browser can save
    size = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('download-masks').dataset.path).then(r => r.blob()).then(b => done(b.size));")
    assert size == len(httpx.get(url + zpath).content)
    _shot(d, shots, "3_end", full=True)

    # slide the mask viewer by keyboard
    slider = d.find_element("id", "mask-slider")
    slider.send_keys("\ue012")  # arrow left
    _wait(d, f"return document.getElementById('mask-frame-id').textContent === '{KEYFRAME - 1}'", what="the slider")

    # history: the run is listed with its query, stop reason and thumbnail; opening it
    # shows the stored trajectory (no new run on the server)
    _wait(d, "return document.querySelectorAll('#history button').length >= 1"
             " && document.querySelector('#history img').naturalWidth > 0", what="the history")
    item = d.find_element("css selector", "#history button")
    assert demo_query()[:30] in item.text and "answer" in item.text
    threads_before = len(httpx.post(url + "/threads/search", json={"limit": 100}).json())
    d.execute_script("document.getElementById('steps').replaceChildren()")
    item.send_keys("\n")  # keyboard: Enter on the focused button
    _wait(d, "return document.getElementById('status').textContent.startsWith('A stored run')"
             " && document.querySelectorAll('#steps li[data-kind=search]').length === 2"
             " && document.querySelectorAll('#steps li[data-kind=turn]').length === 4"
             " && document.getElementById('run-badge').textContent === 'answer'"
             " && document.getElementById('mask-frame').naturalWidth > 0", what="the stored run")
    assert _loaded_images(d, "#frames img") == 6 and "Cobalt Squares" in _text(d, "steps")
    assert len(httpx.post(url + "/threads/search", json={"limit": 100}).json()) == threads_before
    _shot(d, shots, "4_history", full=True)

    # a narrow window: one column, nothing wider than the window
    d.set_window_size(420, 900)
    width = d.execute_script("return window.innerWidth")
    assert d.execute_script("return document.documentElement.scrollWidth") <= width + 2
    _shot(d, shots, "5_narrow", full=True, width=420)
    d.set_window_size(1280, 800)


def _tool_call_cassette(path: Path) -> Path:
    """The demo's recorded policy as native tool calls: each turn's thinking as the reply's
    text and its step as one call (what a general chat model sends in ``protocol: tools``)."""
    calls = [{"name": "text_search", "args": {"query": "2031 Tessellate Cup final winner"}},
             {"name": "text_search", "args": {"query": "Cobalt Squares emblem"}},
             {"name": "keyframe", "args": {"index": KEYFRAME}},
             {"name": "answer", "args": {"keyframe": KEYFRAME, "bbox_2d": [365, 566, 502, 772],
                                         "point_2d": [433, 669]}}]
    turns = json.loads(demo_cassette().read_text())["turns"]
    thoughts = [re.search(r"<thinking>(.*?)</thinking>", t, re.S).group(1) for t in turns]
    recorded = [{"content": th, "tool_calls": [{**c, "id": f"call_{i}"}]}
                for i, (th, c) in enumerate(zip(thoughts, calls, strict=True))]
    path.write_text(json.dumps({"latency": 0.3, "turns": recorded}))
    return path


def test_browser_tool_calling_run_shows_its_calls(server, demo, browser, shots):
    """The form's protocol choice runs the graph with native tool calls; the live view
    shows each turn's call next to the step it became, the search hits, the keyframe (its
    picture came after the tool result) and the masks, as for a tags run."""
    from selenium.webdriver.support.ui import Select

    d, url = browser, server["url"]
    cassette = _tool_call_cassette(demo["root"] / "tool_calls.json")
    _load(d, url)
    assert [o.text for o in Select(d.find_element("id", "ctx-protocol")).options] == [
        "Tags (the Seg-ReSearch models)", "Tool calls (general chat models)"]
    assert d.execute_script("return !!document.querySelector('#common-fields #ctx-protocol')")
    d.find_element("css selector", "input[name=source][value=server]").click()
    Select(d.find_element("id", "library")).select_by_value(str(demo["frames"]))
    _type(d, "ctx-model", f"replay:{cassette}")
    Select(d.find_element("id", "ctx-protocol")).select_by_value("tools")
    _type(d, "query", demo_query())
    d.find_element("id", "run-button").click()
    _wait(d, "return document.getElementById('run-badge').textContent === 'answer'"
             " && !document.getElementById('result-panel').hidden"
             " && document.getElementById('mask-frame').naturalWidth > 0", what="the tool-calling run's result")
    calls = d.execute_script("return [...document.querySelectorAll('#steps li[data-kind=turn] .call')].map(p => p.textContent)")
    assert calls == ['Tool call: text_search({"query":"2031 Tessellate Cup final winner"})',
                     'Tool call: text_search({"query":"Cobalt Squares emblem"})',
                     f'Tool call: keyframe({{"index":{KEYFRAME}}})',
                     f'Tool call: answer({{"keyframe":{KEYFRAME},"bbox_2d":[365,566,502,772],"point_2d":[433,669]}})']
    assert d.execute_script("return document.querySelectorAll('#steps li[data-kind=search] .hits li').length") >= 3
    assert "Cobalt Squares" in _text(d, "steps")
    assert _text(d, "keyframe-title") == f"Keyframe {KEYFRAME}" and "high resolution" in _text(d, "keyframe-caption")
    assert "box [175, 181, 241, 247]" in _text(d, "keyframe-caption")
    assert _text(d, "mask-frame-id") == str(KEYFRAME)
    _shot(d, shots, "13_tool_calls", full=True)
    # the stored run, opened from the history, draws the same steps from its state
    _wait(d, "return document.querySelectorAll('#history button').length >= 1", what="the history")
    d.execute_script("document.getElementById('steps').replaceChildren()")
    d.find_element("css selector", "#history button").click()
    _wait(d, "return document.getElementById('status').textContent.startsWith('A stored run')"
             " && document.querySelectorAll('#steps li[data-kind=turn] .call').length === 4"
             " && document.querySelectorAll('#steps li[data-kind=search] .hits li').length >= 3"
             " && document.getElementById('keyframe-title').textContent === 'Keyframe " + str(KEYFRAME) + "'",
          what="the stored tool-calling run")
    again = d.execute_script("return [...document.querySelectorAll('#steps li[data-kind=turn] .call')].map(p => p.textContent)")
    assert again == calls and "high resolution" in _text(d, "keyframe-caption")


def test_browser_review_edit_and_masks_follow_the_box(server, demo, browser, shots):
    d, url = browser, server["url"]
    _load(d, url)
    d.find_element("css selector", "input[name=source][value=server]").click()
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "library")).select_by_value(str(demo["frames"]))
    assert _text(d, "media-chosen") == f"Media: {demo['frames']}"
    _type(d, "query", demo_query())
    d.find_element("id", "ctx-review").click()
    d.find_element("id", "run-button").click()
    _wait(d, "return !document.getElementById('review-panel').hidden"
             " && document.getElementById('run-badge').textContent === 'waiting for review'", what="the review pause")
    _wait(d, "return document.getElementById('r-x1').value === '175'", what="the proposed box")
    _shot(d, shots, "6_review", full=True)

    # drag the whole box with the mouse: the numbers follow
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = d.find_element("id", "review-canvas")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    rect = d.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    sx = rect[0] / 480
    # inside the box, away from its corners and from the point (the box's centre)
    grab = round((200 - 240) * sx), round((235 - 160) * sx)
    ActionChains(d).move_to_element_with_offset(canvas, *grab).click_and_hold() \
        .move_by_offset(20, 0).move_by_offset(20, 0).release().perform()
    moved = int(d.find_element("id", "r-x1").get_attribute("value"))
    assert moved > 175 + 20, moved
    # keyboard: select the point and nudge it
    canvas.send_keys("p")
    px0 = int(d.find_element("id", "r-px").get_attribute("value"))
    canvas.send_keys("\ue012")  # arrow left
    assert int(d.find_element("id", "r-px").get_attribute("value")) == px0 - 1

    # then type the box of the red circle on the keyframe: the masks must follow it
    target = mask_box(demo["masks"]["red circle"][KEYFRAME])
    x1, y1, x2, y2 = target[0] - 4, target[1] - 4, target[2] + 4, target[3] + 4
    for k, v in zip(("r-x1", "r-y1", "r-x2", "r-y2", "r-px", "r-py"),
                    (x1, y1, x2, y2, (x1 + x2) // 2, (y1 + y2) // 2), strict=True):
        _type(d, k, str(v))
    d.find_element("id", "review-edit").click()
    _wait(d, "return document.getElementById('run-badge').textContent === 'answer'"
             " && !document.getElementById('result-panel').hidden"
             " && document.getElementById('mask-frame').naturalWidth > 0", what="the reviewed result")
    assert "Review" in _text(d, "steps") and "edited" in _text(d, "steps")
    _shot(d, shots, "7_reviewed", full=True)

    tid = d.execute_script("return document.getElementById('download-masks').dataset.path").split("/")[3]
    values = httpx.get(f"{url}/threads/{tid}/state").json()["values"]
    assert values["reviewed"]["decision"] == "edit"
    assert values["answer_px"]["bbox_2d"] == [float(v) for v in (x1, y1, x2, y2)]
    z = zipfile.ZipFile(io.BytesIO(httpx.get(f"{url}/segresearch/threads/{tid}/masks.zip").content))
    mask = np.asarray(Image.open(z.open(f"masks/{KEYFRAME:05d}.png"))) > 127
    mb = mask_box(mask)
    assert mb is not None
    assert x1 <= mb[0] and y1 <= mb[1] and mb[2] <= x2 and mb[3] <= y2, (mb, (x1, y1, x2, y2))
    truth = demo["masks"]["red circle"][KEYFRAME]
    assert (mask & truth).sum() / (mask | truth).sum() > 0.6
    assert not (mask & demo["masks"]["blue square"][KEYFRAME]).any()  # not the model's answer


def test_browser_refusals_are_shown_on_the_page(server, demo, browser, shots, monkeypatch, tmp_path):
    d, url = browser, server["url"]
    _load(d, url)
    assert "(up to 1 MB)" in _text(d, "upload-limit")
    d.find_element("id", "file").send_keys(str(demo["root"] / "too_big.mp4"))
    _wait(d, "return document.getElementById('media-error').textContent.includes('takes uploads up to 1 MB')",
          what="the size refusal")
    d.find_element("id", "file").send_keys(str(demo["root"] / "not_media.mp4"))
    _wait(d, "return document.getElementById('media-error').textContent.includes('not usable as media')",
          what="the server's refusal of a file that is no video")
    assert "Upload refused" in _text(d, "media-error")
    _shot(d, shots, "8_upload_refused")

    d.find_element("css selector", "input[name=source][value=server]").click()
    _type(d, "media-path", str(demo["outside"]))
    _type(d, "query", "anything")
    d.find_element("id", "run-button").click()
    _wait(d, "return document.getElementById('form-error').textContent.includes('outside the folders this server lets the page use')",
          what="the path refusal")
    assert "refused" in _text(d, "form-error") and _text(d, "run-badge") == "refused"
    assert "SEGRESEARCH_" not in _text(d, "form-error")
    assert not _visible(d, "steps-panel")
    _shot(d, shots, "9_path_refused")

    # a setting that cannot work: the search needs a knowledge base and none is given. The
    # run stops at once, and the page says which field to change, not which flag to pass.
    _type(d, "media-path", str(demo["frames"]))
    d.find_element("id", "ctx-kb").clear()
    d.find_element("id", "run-button").click()
    _wait(d, "return document.getElementById('announce').textContent.startsWith('Run finished without an answer')",
          what="the announced failure")
    banner = _text(d, "run-error")
    assert "a setting cannot be used" in banner and "fill in “Knowledge base” under Settings" in banner, banner
    assert "--kb" not in banner and "Context.kb" not in banner and "SEGRESEARCH_" not in banner, banner
    assert d.execute_script("return document.getElementById('run-head').classList.contains('failed')")

    # the CLI's advice for a model server that does not answer, as the page words it
    from segresearch.agents.backends.openai_compat import check_openai_endpoint

    cli = check_openai_endpoint(f"http://127.0.0.1:{_closed_port()}/v1", timeout=2)
    assert cli and "--model" in cli
    page = _page_text(d, cli)
    assert page.startswith("No model server answers at http://127.0.0.1:") and "change “Model” under Settings" in page
    assert "--" not in page and "`" not in page and "vllm" not in page, page

    # the server's refusals of settings, as the API words them, name the form's fields
    from segresearch.agents.client_settings import validate_context
    from segresearch.agents.context import ContextError

    monkeypatch.setenv("SEGRESEARCH_MEDIA_ROOTS", str(demo["root"]))
    monkeypatch.setenv("SEGRESEARCH_OUTPUT_ROOT", str(tmp_path))
    for bad, label in (({"max_turns": 0}, "Most searches and looks"), ({"temperature": "hot"}, "Randomness"),
                       ({"kb": "/etc"}, "Knowledge base"), ({"output_dir": "/etc"}, "Output folder"),
                       ({"model": "openai:x@http://10.0.0.1:8000/v1"}, "Model")):
        with pytest.raises(ContextError) as e:
            validate_context(bad)
        # as the server's run-payload check sends them
        page = _page_text(d, "\n".join(f"context: {p}" for p in e.value.problems))
        assert page.startswith(label + ": ") and "SEGRESEARCH_" not in page and "roots" not in page, (bad, page)
    # the browser's own word for a server that went away
    assert _page_text(d, "Failed to fetch").startswith("the page lost its connection to the server")


def _schema_props(url: str) -> dict:
    a = httpx.post(url + "/assistants/search", json={"graph_id": "seg_research", "limit": 20}).json()[0]
    return httpx.get(f"{url}/assistants/{a['assistant_id']}/schemas").json()["context_schema"]["properties"]


def test_browser_form_choices_words_and_remembered_settings(server, browser, shots):
    d, url = browser, server["url"]
    _load(d, url)
    props = _schema_props(url)
    enums = {n: p["enum"] for n, p in props.items() if "enum" in p}
    assert {"search", "segmenter", "coord_style", "prompt_variant"} <= set(enums)
    for name, values in enums.items():  # a choice of exactly the schema's values
        tag, options = d.execute_script(
            "const e = document.getElementById('ctx-' + arguments[0]);"
            "return [e.tagName, [...e.options].map(o => o.value)]", name)
        assert tag == "SELECT" and set(values) <= set(options) and len(options) <= len(values) + 1, (name, options)
    # every field has words for a person, and the developer's name in its tooltip
    fields = d.execute_script(
        "return [...document.querySelectorAll('#settings [data-field]')].map(w => {"
        " const l = w.querySelector('label'), h = w.querySelector('.help');"
        " return [w.dataset.field, l.textContent, l.title, h ? h.textContent : '', w.classList.contains('fallback')]; })")
    assert sorted(f[0] for f in fields) == sorted(props)
    for name, label, title, help_text, fallback in fields:
        assert not fallback, f"{name} has no plain label"
        assert title.startswith(f"{name} (server setting SEGRESEARCH_{name.upper()})"), title
        # not the schema's titles ("Kb", "Text Topk", "Search Cache Ttl", "Sam2 Checkpoint")
        assert not re.search(r"\b(Kb|Topk|Ttl|Dir|Url|Sam2)\b", label), (name, label)
        for dev in ("LangChain", "checkpointer", "Context.", "SEGRESEARCH_", "`"):
            assert dev not in label + help_text, (name, label, help_text)

    # settings survive a reload; the reset button brings the server's defaults back
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "ctx-search")).select_by_value("bm25")
    Select(d.find_element("id", "ctx-segmenter")).select_by_value("none")
    _type(d, "ctx-max_turns", "3")
    d.find_element("id", "ctx-review").click()
    d.find_element("id", "query").click()  # leave the number field: its change is saved
    _load(d, url, keep_settings=True)
    values = d.execute_script(
        "return ['search', 'segmenter', 'max_turns'].map(n => document.getElementById('ctx-' + n).value)"
        ".concat([document.getElementById('ctx-review').checked])")
    assert values == ["bm25", "none", "3", True], values
    assert _text(d, "settings-saved").startswith("4 settings restored")
    _shot(d, shots, "12_settings_restored")
    d.find_element("id", "reset-settings").click()
    defaults = httpx.get(url + "/segresearch/info").json()["defaults"]
    values = d.execute_script(
        "return ['search', 'segmenter', 'max_turns'].map(n => document.getElementById('ctx-' + n).value)"
        ".concat([document.getElementById('ctx-review').checked, localStorage.getItem('segresearch.settings.v1')])")
    assert values == [defaults["search"], defaults["segmenter"], str(defaults["max_turns"]), False, None], values


def _in_view(driver, element_id: str) -> bool:
    return driver.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return r.height > 0 && r.top >= -1 && r.top < window.innerHeight - 40", element_id)


@pytest.mark.parametrize("width", [420, 1280])
def test_browser_run_comes_into_view_and_its_end_is_announced(server, demo, browser, shots, width):
    d, url = browser, server["url"]
    d.set_window_size(width, 800)
    try:
        _load(d, url)
        d.find_element("css selector", "input[name=source][value=server]").click()
        _type(d, "media-path", str(demo["frames"]))
        _type(d, "query", demo_query())
        _type(d, "ctx-model", f"replay:{demo['root'] / 'fast_cassette.json'}")
        d.execute_script("document.getElementById('more').open = true")  # a long form, as after looking at every setting
        run = d.find_element("id", "run-button")
        d.execute_script("arguments[0].scrollIntoView({block: 'end'})", run)
        assert not _in_view(d, "run-view")
        run.click()
        _wait(d, "return document.getElementById('run-badge').textContent === 'running'", what="the run to start")
        _wait(d, "const r = document.getElementById('run-view').getBoundingClientRect();"
                 " return r.top >= -1 && r.top < window.innerHeight - 40", timeout=5, what="the run view in sight")
        _wait(d, "return document.getElementById('announce').textContent.startsWith('Run finished. Done: answered')",
              what="the announced end")
        # the end shows wherever the person is: in the run's sticky header (in sight), beside
        # the Run button, and in a live region for screen readers
        assert d.execute_script("return document.getElementById('announce').getAttribute('aria-live')") == "polite"
        assert _text(d, "run-badge") == "answer" and _in_view(d, "run-head")
        assert d.execute_script("return document.getElementById('run-head').classList.contains('done')")
        assert _visible(d, "form-run-state") and _text(d, "form-run-text").startswith("Run finished")
        d.execute_script("window.scrollTo(0, 0)")
        _wait(d, "return !document.getElementById('result-panel').hidden", what="the result")
        d.find_element("id", "form-run-jump").click()
        _wait(d, "const r = document.getElementById('result-panel').getBoundingClientRect();"
                 " return r.top >= -1 && r.top < window.innerHeight", timeout=5, what="the result in sight")
        _shot(d, shots, f"13_finished_{width}")
    finally:
        d.set_window_size(1280, 800)


def test_browser_with_auth_on(locked, demo, browser, shots):
    d, url = browser, locked["url"]
    d.get(url + "/segresearch/ui/")
    d.execute_script("sessionStorage.clear(); localStorage.clear()")
    d.get(url + "/segresearch/ui/")
    _wait(d, "return !document.getElementById('token-box').hidden", what="the token form")
    # the token box alone: the (still empty) form is not drawn under it
    assert not _visible(d, "app")
    assert d.execute_script("return getComputedStyle(document.getElementById('app')).display") == "none"
    _shot(d, shots, "10_token")
    _type(d, "token", "wrong-token")
    d.find_element("css selector", "#token-form button").click()
    _wait(d, "return document.getElementById('token-error').textContent.includes('did not accept')",
          what="the wrong-token message")
    _type(d, "token", TOKEN)
    d.find_element("css selector", "#token-form button").click()
    _wait(d, "return !document.getElementById('app').hidden && document.getElementById('settings').dataset.ready === '1'",
          what="the page after the token")
    assert "access token needed" in _text(d, "server-line")
    assert d.execute_script("return getComputedStyle(document.getElementById('token-box')).display") == "none"
    # the default model's server is not running: the form starts with the recorded demo
    # instead, and says why
    model = d.find_element("id", "ctx-model").get_attribute("value")
    assert model == f"replay:{demo_cassette().resolve()}", model
    assert d.find_element("id", "ctx-kb").get_attribute("value") == str(demo_kb().resolve())
    note = _text(d, "settings-note")
    assert "No model server answers at http://127.0.0.1:" in note and "recorded demo" in note, note
    assert _visible(d, "demo-offer")
    _shot(d, shots, "10b_demo_offered")
    d.find_element("id", "demo-button").click()  # the demo clip and its question, prepared on the server
    _wait(d, "return document.getElementById('media-chosen').textContent.startsWith('The demo clip: 24 frames')",
          what="the demo clip")
    assert d.find_element("id", "query").get_attribute("value") == demo_query()
    d.find_element("id", "run-button").click()
    _wait(d, "return document.getElementById('run-badge').textContent === 'answer'"
             " && document.getElementById('mask-frame').naturalWidth > 0", timeout=60, what="the run with auth")
    # every picture came through the token (blob URLs), none failed
    assert _loaded_images(d, "#frames img") == 6
    assert d.execute_script("return [...document.querySelectorAll('#frames img')].every(i => i.src.startsWith('blob:'))")
    _shot(d, shots, "11_auth_end", full=True)
    d.execute_script("sessionStorage.clear()")


def test_readme_screenshots_are_small(tmp_path):
    """The two screenshots the README shows exist and stay small."""
    root = Path(__file__).resolve().parents[1] / "docs" / "images"
    for name in ("web_page_midrun.png", "web_page_end.png"):
        p = root / name
        if not p.exists():
            pytest.skip("README screenshots not generated in this checkout")
        assert p.stat().st_size < 300_000, name
        assert _not_blank(p)



# ------------------------------------------- issue 22: questions, several objects, verify rounds


def _frame_coords(box: list[int], w: int = 480, h: int = 320) -> tuple[list[int], list[int]]:
    """A pixel box on the demo clip in the 0-1000 convention the replayed calls use, and its
    centre as the point."""
    b = [round(box[0] * 1000 / w), round(box[1] * 1000 / h), round(box[2] * 1000 / w), round(box[3] * 1000 / h)]
    return b, [(b[0] + b[2]) // 2, (b[1] + b[3]) // 2]


def _calls(path: Path, *calls: tuple[str, str, dict]) -> Path:
    """A tool-calling cassette: each turn a thought and one call."""
    turns = [{"content": text, "tool_calls": [{"name": name, "args": args, "id": f"call_{i}"}]}
             for i, (text, name, args) in enumerate(calls)]
    path.write_text(json.dumps({"latency": 0.05, "turns": turns}))
    return path


def _start_tools_run(d, url: str, media: Path, cassette: Path, **settings) -> None:
    """The form filled for a tool-calling run of ``cassette`` on ``media``, and Run."""
    from selenium.webdriver.support.ui import Select

    _load(d, url)
    d.find_element("css selector", "input[name=source][value=server]").click()
    Select(d.find_element("id", "library")).select_by_value(str(media))
    _type(d, "ctx-model", f"replay:{cassette}")
    Select(d.find_element("id", "ctx-protocol")).select_by_value("tools")
    Select(d.find_element("id", "ctx-search")).select_by_value("none")  # these cassettes do not search
    for name, value in settings.items():
        if value is True:
            d.find_element("id", f"ctx-{name}").click()
        else:
            _type(d, f"ctx-{name}", str(value))
    _type(d, "query", "the shape the user means")
    d.find_element("id", "run-button").click()


def test_browser_the_model_asks_and_the_answer_box_resumes_the_run(server, demo, browser, shots):
    """A question back to the user (ask_user, tools protocol only): the page shows it with an
    answer box; a refused reply keeps the box with the server's reason; Enter sends; the run
    finishes with the reply in the thread's questions, and the stored run shows the exchange."""
    from selenium.webdriver.support.ui import Select

    d, url = browser, server["url"]
    box, point = _frame_coords(mask_box(demo["masks"]["blue square"][KEYFRAME]))
    question = "Which shape do you mean: the circle or the square?"
    cassette = _calls(demo["root"] / "ask_user.json",
                      ("The query is unclear.", "ask_user", {"question": question}),
                      ("The square, then.", "keyframe", {"index": KEYFRAME}),
                      ("There it is.", "answer", {"keyframe": KEYFRAME, "bbox_2d": box, "point_2d": point}))
    _load(d, url)
    # with the tags (the published format) there is no question to ask: the choice is off
    assert d.execute_script("return document.getElementById('ctx-ask_user').disabled")
    Select(d.find_element("id", "ctx-protocol")).select_by_value("tools")
    assert not d.execute_script("return document.getElementById('ctx-ask_user').disabled")
    _start_tools_run(d, url, demo["frames"], cassette, ask_user=True)
    _wait(d, "return !document.getElementById('question-panel').hidden"
             " && document.getElementById('run-badge').textContent === 'waiting for your answer'", what="the question")
    assert _text(d, "question-text") == question
    assert d.execute_script("return document.getElementById('question-reply').labels[0].textContent") == "Your answer"
    assert "ask the user “" + question in _text(d, "steps")
    # an empty reply: the server refuses it (422), the box stays with the reason
    d.find_element("id", "question-send").click()
    _wait(d, "return document.getElementById('question-problem').textContent.includes('the reply is empty')",
          what="the refused reply")
    assert "resume with" not in _text(d, "question-problem")  # the API's advice is not the page's
    assert _visible(d, "question-panel") and _text(d, "run-badge") == "waiting for your answer"
    _shot(d, shots, "14_question_refused", full=True)
    reply = d.find_element("id", "question-reply")
    reply.send_keys("the blue square")
    reply.send_keys("\ue007")  # Enter sends
    _wait(d, "return document.getElementById('run-badge').textContent === 'answer'"
             " && !document.getElementById('result-panel').hidden", what="the run after the answer")
    assert not _visible(d, "question-panel")
    step = d.execute_script("return [...document.querySelectorAll('#steps li[data-kind=question]')].map(li => li.textContent)")
    assert len(step) == 1 and question in step[0] and "The user answered: the blue square" in step[0], step
    _shot(d, shots, "15_question_answered", full=True)
    tid = d.execute_script("return document.getElementById('download-masks').dataset.path").split("/")[3]
    values = httpx.get(f"{url}/threads/{tid}/state").json()["values"]
    assert values["questions"] == [{"question": question, "reply": "the blue square", "auto": False}]
    assert values["stop_reason"] == "answer"
    # the stored run, opened from the history, shows the question and its answer
    _wait(d, "return document.querySelectorAll('#history button').length >= 1", what="the history")
    d.execute_script("document.getElementById('steps').replaceChildren()")
    d.find_element("css selector", f"#history button[data-thread='{tid}']").click()
    _wait(d, "return document.getElementById('status').textContent.startsWith('A stored run')"
             " && document.querySelectorAll('#steps li[data-kind=question]').length === 1", what="the stored run")
    assert "The user answered: the blue square" in _text(d, "steps")


def _colour_pixels(d, element_id: str, rgb: tuple[int, int, int], tol: int = 10) -> int:
    return d.execute_script(
        "const c = document.getElementById(arguments[0]), [r, g, b] = arguments[1], t = arguments[2];"
        "const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < a.length; i += 4)"
        "  if (Math.abs(a[i] - r) <= t && Math.abs(a[i + 1] - g) <= t && Math.abs(a[i + 2] - b) <= t) n++;"
        "return n;", element_id, list(rgb), tol)


def test_browser_two_objects_and_verify_rounds(server, demo, browser, shots):
    """An answer naming two objects: each drawn on the keyframe in its overlay colour with its
    label, listed, and its masks reported; verify rounds (one correction, then acceptance)
    listed with the frames shown, the decision and the correction's points."""
    from segresearch.tools.visualize import OBJECT_COLOURS

    d, url = browser, server["url"]
    # six frames of the demo clip (10-15, all shown to the model): two objects segmented
    # twice stay quick; the keyframe is the clip's frame 13
    clip = demo["root"] / "six_frames"
    clip.mkdir(exist_ok=True)
    for i in range(6):
        shutil.copyfile(demo["frames"] / f"{10 + i:05d}.jpg", clip / f"{i:05d}.jpg")
    key = KEYFRAME - 10
    circle = _frame_coords(mask_box(demo["masks"]["red circle"][KEYFRAME]))
    square = _frame_coords(mask_box(demo["masks"]["blue square"][KEYFRAME]))
    cassette = _calls(demo["root"] / "two_objects.json",
                      ("Let me look closer.", "keyframe", {"index": key}),
                      ("Both shapes.", "answer", {"keyframe": key, "objects": [
                          {"bbox_2d": circle[0], "point_2d": circle[1], "label": "circle"},
                          {"bbox_2d": square[0], "point_2d": square[1], "label": "square"}]}),
                      ("The square's mask misses its centre.", "correct_masks",
                       {"frame": key, "points": [square[1]], "labels": [1], "object": 2}),
                      ("Now they fit.", "accept_masks", {}))
    _start_tools_run(d, url, clip, cassette, verify_rounds=2)
    _wait(d, "return document.getElementById('run-badge').textContent === 'answer'"
             " && !document.getElementById('result-panel').hidden"
             " && document.querySelectorAll('#steps li[data-kind=verify]').length === 2"
             " && document.getElementById('keyframe-caption').textContent.includes('2 objects')",
          what="the two-object run with its verify rounds")
    objects = d.execute_script("return [...document.querySelectorAll('#keyframe-objects li')].map(li => li.textContent)")
    assert len(objects) == 2 and objects[0].startswith("circle") and objects[1].startswith("square"), objects
    assert f"frame {key}: box [" in objects[0]
    for colour in OBJECT_COLOURS[:2]:  # each object in its colour, as the overlay draws it
        assert _colour_pixels(d, "keyframe-canvas", colour) > 50, colour
    masks = d.execute_script("return [...document.querySelectorAll('#segment-objects li')].map(li => li.textContent)")
    assert len(masks) == 2 and masks[0].startswith("circle") and "px on its keyframe" in masks[1], masks
    assert "2 objects" in _text(d, "result-title")
    rounds = d.execute_script(
        "return [...document.querySelectorAll('#steps li[data-kind=verify]')].map(li => [li.dataset.decision, li.textContent,"
        " [...li.querySelectorAll('.verify-frames img')].filter(i => i.complete && i.naturalWidth > 0).length])")
    assert [r[0] for r in rounds] == ["correct", "accept"]
    first = rounds[0][1]
    assert f"Verify round 1: corrected object 2 (square) on frame {key}" in first and "(on)" in first, first
    assert "Shown with the masks drawn: frames " in first and rounds[0][2] >= 2, rounds[0]
    assert "Verify round 2: masks accepted" in rounds[1][1]
    _shot(d, shots, "16_two_objects_verified", full=True)
    tid = d.execute_script("return document.getElementById('download-masks').dataset.path").split("/")[3]
    values = httpx.get(f"{url}/threads/{tid}/state").json()["values"]
    assert [o["label"] for o in values["objects_px"]] == ["circle", "square"]
    assert [(c["round"], c["object"], c["frame"]) for c in values["corrections"]] == [(1, 1, key)]
