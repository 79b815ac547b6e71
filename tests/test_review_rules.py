"""The one set of rules for a review reply (``segresearch.agents.review``), which the graph's
review node and the server's guard both apply: every refusal class, and the frame's edges."""

from __future__ import annotations

import math

import pytest

from segresearch.agents.review import (
    ACCEPTED_FORMS,
    describe_frames,
    frames_predicate,
    read_reply,
)
from segresearch.servers.review_check import (
    check_resume,
    pending_interrupts,
    resume_of,
    resume_problems,
    thread_of,
)

W, H = 640, 480
PX = {"keyframe": 6, "bbox_2d": [100, 120, 300, 360], "point_2d": [200, 240]}
FRAMES = set(range(0, 12)).__contains__


def read(reply, px=PX):
    return read_reply(reply, px, (W, H), FRAMES)


def refused(reply, px=PX) -> str:
    got = read(reply, px)
    assert got.decision is None and got.answer_px is None and got.problems, got
    return "; ".join(got.problems)


@pytest.mark.parametrize("word", ["accept", "ok", "yes", "y", "", "  Accept ", "OK"])
def test_accept_words(word):
    assert read(word).decision == "accept"


@pytest.mark.parametrize("word", ["reject", "no", "n", " REJECT"])
def test_reject_words(word):
    assert read(word).decision == "reject"


def test_a_bogus_string_is_refused_with_the_help():
    msg = refused("bogus")
    assert "unrecognised review reply 'bogus'" in msg and "'accept'" in msg and "bbox_2d" in msg


@pytest.mark.parametrize("reply", [None, 1, 2.5, True, ["accept"], ("accept",)])
def test_replies_of_other_types_are_refused(reply):
    assert "string or an edit object" in refused(reply)


def test_unknown_keys_and_an_empty_edit_are_refused():
    assert "unknown key(s) 'box'" in refused({"box": [1, 2, 3, 4]})
    assert "'bbox'" in refused({"bbox_2d": [110, 130, 290, 350], "bbox": 1})  # a typo beside good keys
    assert "at least one of" in refused({})


@pytest.mark.parametrize("value, needle", [
    ([1, 2, 3], "bbox_2d must be 4 numbers"),
    ("1 2 3 4", "bbox_2d must be 4 numbers"),
    ([1, 2, "3", 4], "x2 is '3'"),
    ([True, 2, 300, 400], "x1 is True"),
    ([None, 2, 300, 400], "x1 is None"),
    ({"x1": 1}, "must be 4 numbers"),
])
def test_wrong_box_types_are_refused(value, needle):
    assert needle in refused({"bbox_2d": value})


@pytest.mark.parametrize("value, needle", [
    ([1], "point_2d must be 2 numbers"),
    (["200", 240], "x is '200'"),
    ([200, False], "y is False"),
])
def test_wrong_point_types_are_refused(value, needle):
    assert needle in refused({"point_2d": value})


@pytest.mark.parametrize("keyframe, needle", [
    (6.0, "must be an integer"), ("6", "must be an integer"), (True, "must be an integer"),
    (None, "must be an integer"), (99, "keyframe 99 is not a frame of this media"),
    (-1, "not a frame"),
])
def test_bad_keyframes_are_refused(keyframe, needle):
    assert needle in refused({"keyframe": keyframe})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(bad):
    assert "not a finite number" in refused({"bbox_2d": [100, 120, bad, 360]})
    assert "not a finite number" in refused({"point_2d": [bad, 240]})


@pytest.mark.parametrize("i, v, name", [
    (0, -1, "x1"), (1, -1, "y1"), (2, W, "x2"), (3, H, "y2"),  # one pixel past each side
    (0, -0.5, "x1"), (2, W - 0.5, "x2"),
])
def test_one_pixel_outside_the_frame_is_refused_never_clamped(i, v, name):
    box = [100, 120, 300, 360]
    box[i] = v
    msg = refused({"bbox_2d": box, "point_2d": [200, 240]})
    axis, limit = ("x", W - 1) if name.startswith("x") else ("y", H - 1)
    assert f"bbox_2d {name} = " in msg and f"outside the {W}×{H} frame" in msg
    assert f"{axis} must be within [0, {limit}]" in msg


def test_a_far_out_edit_names_the_coordinate_and_the_frame():
    msg = refused({"bbox_2d": [10, 10, 6000, 100], "point_2d": [20, 20]})
    assert msg.startswith(f"bbox_2d x2 = 6000 is outside the {W}×{H} frame: x must be within [0, {W - 1}]")


@pytest.mark.parametrize("pt, name", [([-1, 240], "x"), ([W, 240], "x"), ([200, -1], "y"), ([200, H], "y")])
def test_a_point_outside_the_frame_is_refused(pt, name):
    assert f"point_2d {name} = " in refused({"point_2d": pt})


def test_the_exact_frame_edges_are_accepted():
    edit = {"keyframe": 11, "bbox_2d": [0, 0, W - 1, H - 1], "point_2d": [W - 1, H - 1]}
    got = read(edit)
    assert got.decision == "edit" and not got.problems
    assert got.answer_px == {"keyframe": 11, "bbox_2d": [0.0, 0.0, W - 1.0, H - 1.0],
                             "point_2d": [W - 1.0, H - 1.0]}
    assert read({"bbox_2d": [0, 0, 0.5, 0.5], "point_2d": [0, 0]}).decision == "edit"


@pytest.mark.parametrize("box", [[100, 120, 100, 360], [100, 120, 300, 120], [300, 120, 100, 360],
                                 [100, 360, 300, 120]])
def test_empty_and_inverted_boxes_are_refused(box):
    assert "empty or inverted" in refused({"bbox_2d": box, "point_2d": [100, 120]})


def test_a_point_outside_the_box_is_refused_and_says_where_each_value_came_from():
    assert "point_2d [50, 50] lies outside bbox_2d [100, 120, 300, 360]" in refused({"point_2d": [50, 50]})
    # only the box moved: the answer's point is kept, and the message says so
    msg = refused({"bbox_2d": [400, 300, 500, 400]})
    assert "point_2d [200, 240] (kept from the answer) lies outside bbox_2d [400, 300, 500, 400]" in msg
    # the point on the box's edge is inside
    assert read({"point_2d": [100, 360]}).decision == "edit"


def test_an_edit_keeps_the_keys_it_does_not_set():
    got = read({"keyframe": 3})
    assert got.answer_px == {"keyframe": 3, "bbox_2d": [100.0, 120.0, 300.0, 360.0], "point_2d": [200.0, 240.0]}
    got = read({"bbox_2d": (110, 130.5, 290, 350), "point_2d": [200, 240]})  # a tuple from Python
    assert got.answer_px["bbox_2d"] == [110.0, 130.5, 290.0, 350.0]


def test_all_problems_at_once():
    got = read({"keyframe": 99, "bbox_2d": [-5, 0, 6000, 10], "point_2d": [1, math.nan]})
    assert len(got.problems) == 4, got.problems


def test_without_frame_ids_the_keyframe_is_not_judged():
    assert read_reply({"keyframe": 99}, PX, (W, H), None).decision == "edit"


def test_frame_ids_are_described_compactly():
    video = describe_frames(range(30000))
    assert video == {"first": 0, "last": 29999, "count": 30000, "step": 1}
    has = frames_predicate(video)
    assert has(0) and has(29999) and not has(30000) and not has(-1)
    strided = describe_frames([5, 10, 15])
    assert strided == {"first": 5, "last": 15, "count": 3, "step": 5}
    assert frames_predicate(strided)(10) and not frames_predicate(strided)(11)
    assert describe_frames([3]) == {"first": 3, "last": 3, "count": 1, "step": 1}
    assert describe_frames([0, 1, 5]) == [0, 1, 5] and frames_predicate([0, 1, 5])(5)
    assert describe_frames([0, 2] + list(range(3, 3000))) is None  # long and irregular: left out
    assert describe_frames([]) is None
    assert frames_predicate(None) is None and frames_predicate({"first": 0}) is None
    assert frames_predicate({"first": 0, "last": 9, "step": 0}) is None


# ------------------------------------------------------------- the server's side


PAUSE = {"type": "review", "answer_px": PX, "frame_size": [W, H],
         "frame_ids": {"first": 0, "last": 11, "count": 12, "step": 1}}


def test_check_resume_applies_the_same_rules_as_the_node():
    for reply in ("bogus", {"bbox_2d": [10, 10, 6000, 100]}, {"keyframe": 12}, {"point_2d": [math.inf, 0]},
                  {"bbox_2d": [300, 120, 100, 360]}, {"size": 1}, 7):
        assert check_resume(reply, PAUSE) == read(reply).problems != []
    for reply in ("accept", "n", {"keyframe": 11}, {"bbox_2d": [0, 0, W - 1, H - 1]}):
        assert check_resume(reply, PAUSE) == [] == read(reply).problems


def test_check_resume_leaves_payloads_it_cannot_read_to_the_node():
    assert check_resume("bogus", {"type": "other"}) == []
    assert check_resume("bogus", None) == []
    assert check_resume("bogus", {**PAUSE, "frame_size": None}) == []
    assert check_resume({"keyframe": 99}, {k: v for k, v in PAUSE.items() if k != "frame_ids"}) == []


def test_resume_of_and_thread_of():
    assert resume_of({"command": {"resume": "bogus"}}) == (True, "bogus")
    assert resume_of({"command": {"resume": ""}}) == (True, "")
    assert resume_of({"command": {"resume": None, "update": {}}})[0] is False
    assert resume_of({"input": {}})[0] is False and resume_of(None)[0] is False
    assert thread_of("/threads/abc/runs") == thread_of("/threads/abc/runs/stream") == "abc"
    assert thread_of("/threads/abc/runs/wait") == "abc"
    assert thread_of("/threads/abc/runs/crons") is None and thread_of("/runs/stream") is None


def test_pending_interrupts_from_either_place_once_each():
    item = {"id": "a" * 32, "value": PAUSE}
    state = {"interrupts": [item], "tasks": [{"interrupts": [item]}]}
    assert pending_interrupts(state) == [item]
    assert pending_interrupts({"tasks": [{"interrupts": [item]}]}) == [item]
    assert pending_interrupts({"tasks": [], "interrupts": []}) == [] == pending_interrupts(None)


def test_resume_keyed_by_interrupt_id():
    iid, stale = "a" * 32, "b" * 32
    pending = [{"id": iid, "value": PAUSE}]
    assert resume_problems({iid: "accept"}, pending) == []
    assert "unrecognised" in resume_problems({iid: "bogus"}, pending)[0]
    assert "outside the 640×480 frame" in resume_problems({iid: {"bbox_2d": [0, 0, 640, 10]}}, pending)[0]
    assert "no pending interrupt has the id(s)" in resume_problems({stale: "accept"}, pending)[0]
    assert resume_problems("bogus", pending) == read("bogus").problems


def test_accepted_forms_name_every_form():
    text = " ".join(ACCEPTED_FORMS)
    for word in ("'accept'", "'reject'", "keyframe", "bbox_2d", "point_2d", "width-1"):
        assert word in text


class _Threads:
    """A stand-in for langgraph_sdk's threads client: one thread's state and status."""

    def __init__(self, state, status="interrupted", fail=False):
        self.state, self.status, self.fail, self.asked = state, status, fail, []

    async def get_state(self, thread_id, **kw):
        self.asked.append((thread_id, kw))
        if self.fail:
            raise RuntimeError("404: thread not found")
        return self.state

    async def get(self, thread_id):
        return {"thread_id": thread_id, "status": self.status}


class _Client:
    def __init__(self, threads):
        self.threads = threads


PAUSED = {"values": {}, "next": ["review"], "tasks": [{"interrupts": [{"id": "a" * 32, "value": PAUSE}]}]}


def _verdict(body, threads, path="/threads/t1/runs/wait"):
    import asyncio

    from segresearch.servers.review_check import resume_verdict

    return asyncio.run(resume_verdict(path, body, _Client(threads)))


def test_resume_verdict_refuses_with_the_accepted_forms():
    status, body = _verdict({"command": {"resume": "bogus"}}, _Threads(PAUSED))
    assert status == 422 and body["thread_status"] == "interrupted"
    assert body["accepted"] == ACCEPTED_FORMS and "unrecognised" in body["detail"][0]
    assert _verdict({"command": {"resume": {"bbox_2d": [0, 0, 639, 479]}}}, _Threads(PAUSED)) is None


def test_resume_verdict_409_names_why_nothing_is_pending():
    empty = {"values": {}, "next": [], "tasks": [], "interrupts": []}
    status, body = _verdict({"command": {"resume": "accept"}}, _Threads(empty, status="busy"))
    assert status == 409 and "in progress" in body["detail"] and body["thread_status"] == "busy"
    status, body = _verdict({"command": {"resume": "accept"}}, _Threads(empty, status="idle"))
    assert status == 409 and "not paused" in body["detail"]


def test_resume_verdict_leaves_what_it_cannot_judge_to_the_server():
    threads = _Threads(PAUSED, fail=True)
    assert _verdict({"command": {"resume": "bogus"}}, threads) is None  # the server says 404 itself
    untouched = _Threads(PAUSED)
    assert _verdict({"command": {"resume": "bogus"}}, untouched, path="/runs/wait") is None  # no thread
    assert _verdict({"command": {"update": {}}}, untouched) is None and untouched.asked == []


def test_resume_verdict_reads_the_checkpoint_the_run_resumes_from():
    threads = _Threads(PAUSED)
    _verdict({"command": {"resume": "accept"}, "checkpoint": {"checkpoint_id": "c1", "checkpoint_ns": ""}}, threads)
    _verdict({"command": {"resume": "accept"}, "checkpoint_id": "c2"}, threads)
    assert [kw for _, kw in threads.asked] == [{"checkpoint": {"checkpoint_id": "c1", "checkpoint_ns": ""}},
                                              {"checkpoint": {"checkpoint_id": "c2"}}]


def test_the_guard_answers_before_the_server_sees_the_request(monkeypatch):
    """Through ``RunPayloadGuard`` against a stand-in server: a refused resume never reaches
    it; a good one arrives byte for byte; other checks and routes are as before."""
    import json as _json

    from starlette.testclient import TestClient

    from segresearch.servers import graph_app, web

    seen: list[bytes] = []

    async def server(scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        seen.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ran"})

    monkeypatch.setattr(web, "_client", lambda: _Client(_Threads(PAUSED)))
    client = TestClient(graph_app.RunPayloadGuard(server))
    bad = client.post("/threads/t1/runs/stream", json={"assistant_id": "g", "command": {"resume": "bogus"}})
    assert bad.status_code == 422 and bad.json()["thread_status"] == "interrupted" and seen == []
    good = _json.dumps({"assistant_id": "g", "command": {"resume": {"bbox_2d": [10, 10, 300, 300]}}}).encode()
    assert client.post("/threads/t1/runs/wait", content=good).text == "ran" and seen == [good]
    # a malformed context is still answered by the existing checks first, in their words
    ctx = client.post("/threads/t1/runs", json={"command": {"resume": "bogus"}, "context": {"nope": 1}})
    assert ctx.status_code == 422 and "accepted" not in ctx.json()
