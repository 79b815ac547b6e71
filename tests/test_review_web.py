"""The web page's review editor when a reply is refused: the server's 422 brings the editor
back with the server's reason (the thread still waits), a point outside the box is refused
on the page before anything is sent, and a good reply then finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from segresearch.demo import demo_cassette, demo_kb, demo_query
from segresearch.testing.browser import headless_chromium, missing_browser
from segresearch.testing.scenes import grid_answer, mask_box, render_scene, write_frames
from segresearch.testing.servers import ServerDidNotStart, start_graph_server

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_web_media")
    frames, _ = render_scene()
    write_frames(frames, root / "frames")
    (root / "cassette.json").write_text(demo_cassette().read_text())
    env = {k: v for k, v in os.environ.items() if k != "SEGRESEARCH_API_TOKEN"}
    env.update({"SEGRESEARCH_MEDIA_ROOTS": str(root), "SEGRESEARCH_MODEL": f"replay:{root / 'cassette.json'}",
                "SEGRESEARCH_SEARCH": "local", "SEGRESEARCH_KB": str(demo_kb()),
                "SEGRESEARCH_SEGMENTER": "grabcut"})
    tmp = tmp_path_factory.mktemp("review_web_state")
    try:
        proc, url = start_graph_server(tmp / "state", env, tmp / "server.log", jobs=4)
    except ServerDidNotStart as e:
        pytest.fail(str(e))
    yield {"url": url, "frames": root / "frames"}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if why := missing_browser():
        pytest.skip(why)
    with headless_chromium(tmp_path_factory.mktemp("review-chromium"), page_load_timeout=30, window=(1280, 800)) as d:
        yield d


def _js(d, script: str):
    return d.execute_script(script)


def _wait(d, script: str, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := _js(d, script):
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (status: {_text(d, 'status')!r}; "
                         f"problem: {_text(d, 'review-problem')!r})")


def _text(d, element_id: str) -> str:
    return _js(d, f"return document.getElementById('{element_id}').textContent")


def _type(d, element_id: str, text: str) -> None:
    e = d.find_element("id", element_id)
    e.clear()
    e.send_keys(text)


PAUSED = ("return !document.getElementById('review-panel').hidden"
          " && document.getElementById('run-badge').textContent === 'waiting for review'")


def test_refused_replies_bring_the_editor_back_with_the_reason(served, browser):
    from selenium.webdriver.support.ui import Select

    d, url = browser, served["url"]
    d.get(url + "/segresearch/ui/")
    _wait(d, "return document.getElementById('settings').dataset.ready === '1'"
             " && document.getElementById('library').dataset.loaded === '1'", "the settings form and the media list")
    d.find_element("css selector", "input[name=source][value=server]").click()
    Select(d.find_element("id", "library")).select_by_value(str(served["frames"]))
    _type(d, "query", demo_query())
    d.find_element("id", "ctx-review").click()
    d.find_element("id", "run-button").click()
    _wait(d, PAUSED, "the review pause")
    tid = _js(d, "return import('/segresearch/ui/js/state.js').then((m) => m.S.thread)")

    # a reply the node cannot use, sent as any client could: the server refuses it at once
    _js(d, "return import('/segresearch/ui/js/run.js').then((m) => { m.resume('bogus'); })")
    _wait(d, "return document.getElementById('review-problem').textContent.includes('refused')", "the refusal")
    _wait(d, PAUSED, "the editor again")
    problem = _text(d, "review-problem")
    assert problem.startswith("The server refused this reply: unrecognised review reply 'bogus'"), problem
    state = httpx.get(f"{url}/threads/{tid}/state").json()
    assert state["next"] == ["review"]
    assert httpx.get(f"{url}/threads/{tid}").json()["status"] == "interrupted"

    # a point outside the box is refused on the page, before anything is sent
    runs = len(httpx.get(f"{url}/threads/{tid}/runs").json())
    x1, y1, x2, y2 = (int(d.find_element("id", k).get_attribute("value")) for k in ("r-x1", "r-y1", "r-x2", "r-y2"))
    _type(d, "r-px", str(max(0, x1 - 20)))
    _type(d, "r-py", str(max(0, y1 - 20)))
    d.find_element("id", "review-edit").click()
    assert "inside the box" in _text(d, "review-problem")
    assert _js(d, PAUSED) and len(httpx.get(f"{url}/threads/{tid}/runs").json()) == runs

    # a good edit goes through and the masks are made from it
    _type(d, "r-px", str((x1 + x2) // 2))
    _type(d, "r-py", str((y1 + y2) // 2))
    d.find_element("id", "review-edit").click()
    _wait(d, "return document.getElementById('run-badge').textContent === 'answer'"
             " && !document.getElementById('result-panel').hidden", "the reviewed result", timeout=60)
    values = httpx.get(f"{url}/threads/{tid}/state").json()["values"]
    assert values["reviewed"]["decision"] == "edit"
    assert values["answer_px"]["point_2d"] == [float((x1 + x2) // 2), float((y1 + y2) // 2)]
    assert json.dumps(values["answer_px"]["bbox_2d"]) == json.dumps([float(v) for v in (x1, y1, x2, y2)])


def test_dropping_one_of_two_objects_through_the_page(served, browser):
    """A paused run whose answer names two objects, opened from the history: the editor lists
    both, picking one moves the editor to it, and Drop leaves it out of the reply and the masks."""
    from langgraph_sdk import get_sync_client

    d, url = browser, served["url"]
    _, masks = render_scene()
    objs = [{"bbox_2d": grid_answer(masks[n][13])[0], "point_2d": grid_answer(masks[n][13])[1], "label": n}
            for n in ("blue square", "red circle")]
    cassette = served["frames"].parent / "two.json"
    cassette.write_text(json.dumps(["<thinking>both</thinking>\n<keyframe> 13 </keyframe>",
                                    "<thinking>both</thinking>\n<answer>" + json.dumps(objs) + "</answer>"]))
    client = get_sync_client(url=url)
    tid = client.threads.create()["thread_id"]
    client.runs.wait(tid, "seg_research", input={"query": "the square and the circle", "media": str(served["frames"])},
                     context={"model": f"replay:{cassette}", "search": "none", "review": True, "output_dir": f"web/{tid}"})
    d.get(url + "/segresearch/ui/")
    _wait(d, f"return document.querySelector('#history button[data-thread=\"{tid}\"]')", "the paused run in the history")
    d.find_element("css selector", f'#history button[data-thread="{tid}"]').click()
    _wait(d, PAUSED, "the review pause")
    rows = d.find_elements("css selector", "#review-objects li")
    assert len(rows) == 2 and "red circle" in rows[1].text
    assert _text(d, "review-edit") == "Segment these objects"
    d.find_element("css selector", '#review-objects .pick[data-object="1"]').click()
    assert _text(d, "review-help").startswith("Object 2 (red circle) of 2, frame 13")
    x1, y1, x2, y2 = (int(d.find_element("id", k).get_attribute("value")) for k in ("r-x1", "r-y1", "r-x2", "r-y2"))
    rx1, ry1, rx2, ry2 = mask_box(masks["red circle"][13])
    assert abs(x1 - rx1) <= 3 and abs(y2 - ry2) <= 3  # the editor holds the circle's box now
    d.find_element("css selector", '#review-objects .drop[data-object="1"]').click()
    assert _js(d, "return document.querySelector('#review-objects li[data-object=\"1\"]').dataset.dropped") == "true"
    d.find_element("css selector", '#review-objects .drop[data-object="0"]').click()  # the last one stays
    assert "last object left" in _text(d, "review-problem")
    d.find_element("id", "review-edit").click()
    _wait(d, "return document.getElementById('run-badge').textContent === 'answer'"
             " && !document.getElementById('result-panel').hidden", "the reviewed result", timeout=60)
    values = httpx.get(f"{url}/threads/{tid}/state").json()["values"]
    assert values["reviewed"]["changes"] == [{"decision": "drop", "object": 1}]
    assert [o["label"] for o in values["objects_px"]] == ["blue square"] and values["object_masks_dirs"] is None
    assert "dropped object 2" in _js(d, "return document.getElementById('steps').textContent")
    got = np.asarray(Image.open(Path(values["masks_dir"]) / "00013.png")) > 127
    assert got.any() and not (got & masks["red circle"][13]).any()
