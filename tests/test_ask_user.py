"""A question back to the user (``Context.ask_user``, tools protocol): the pause, the reply
reaching the model, the fixed reply of evaluations, the CLI on stdin, the server's guard."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from langchain_core.messages import ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from segresearch.agents.ask_user import read_answer
from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context, ContextError
from segresearch.cli import main
from segresearch.core.tool_protocol import AskUserAction, parse_tool_calls, tool_definitions
from segresearch.eval.datasets import Query
from segresearch.eval.predict import EVAL_ASK_USER_REPLY, query_context, row_from_state
from segresearch.eval.results import counts
from segresearch.graphs.seg_research import build_graph, graph
from segresearch.servers import review_check

ASK = {"tool_calls": [{"name": "ask_user", "args": {"question": "Which square do you mean?"}}]}
KEY = {"tool_calls": [{"name": "keyframe", "args": {"index": 6}}]}
ANSWER = {"tool_calls": [{"name": "answer", "args": {"keyframe": 6, "bbox_2d": [100, 200, 300, 400],
                                                     "point_2d": [200, 300]}}]}


def _ctx(tmp_path: Path, turns=(ASK, KEY, ANSWER), **kw) -> Context:
    kw.setdefault("ask_user", True)
    return Context(model=ReplayChatModel(turns=list(turns)), protocol="tools", search="none",
                   segmenter="none", output_dir=str(tmp_path / "out"), **kw)


def test_the_run_pauses_and_the_reply_reaches_the_model(scene_dir, tmp_path):
    g = build_graph(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "ask"}}
    ctx = _ctx(tmp_path)
    first = g.invoke({"query": "the square", "media": str(scene_dir / "frames")}, cfg, context=ctx)
    pause = first["__interrupt__"][0].value
    assert pause == {"type": "ask_user", "question": "Which square do you mean?", "how": pause["how"]}
    assert g.get_state(cfg).next == ("ask_user",)
    assert [d["function"]["name"] for d in ctx.model.bound_tools] == ["keyframe", "answer", "ask_user"]
    # a bad reply asks again, saying why; nothing reaches the model meanwhile
    again = g.invoke(Command(resume={"answer": "x"}), cfg, context=ctx)
    assert "unknown key" in again["__interrupt__"][0].value["problem"]
    again = g.invoke(Command(resume="   "), cfg, context=ctx)
    assert "empty" in again["__interrupt__"][0].value["problem"]
    final = g.invoke(Command(resume={"reply": " the blue one "}), cfg, context=ctx)
    assert final["stop_reason"] == "answer" and final["answer"]["keyframe"] == 6
    assert final["questions"] == [{"question": "Which square do you mean?", "reply": "the blue one", "auto": False}]
    msgs = final["messages"]
    tool = msgs[3]
    assert isinstance(tool, ToolMessage) and tool.content == "the blue one"
    assert tool.tool_call_id == msgs[2].tool_calls[0]["id"]
    asked = [e for e in final["events"] if e["type"] == "ask_user"]
    assert len(asked) == 1 and asked[0]["reply"] == "the blue one" and asked[0]["auto"] is False
    model_actions = [e["action"] for e in final["events"] if e["type"] == "model"]
    assert model_actions[0] == {"type": "ask_user", "question": "Which square do you mean?"}
    traj = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    assert traj["questions"] == final["questions"] and traj["tool_calls"] == 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**ask_user** `Which square do you mean?`" in report and "the user: the blue one" in report


def test_a_fixed_reply_answers_at_once_without_a_checkpointer(scene_dir, tmp_path):
    out = graph.invoke({"query": "the square", "media": str(scene_dir / "frames")},
                       context=_ctx(tmp_path, ask_user_reply="no further information"))
    assert "__interrupt__" not in out and out["stop_reason"] == "answer"
    assert out["questions"] == [{"question": "Which square do you mean?", "reply": "no further information",
                                 "auto": True}]
    assert out["messages"][3].content == "no further information"


def test_settings_that_cannot_ask_are_refused_early(scene_dir, tmp_path):
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")}, context=_ctx(tmp_path))
    assert out["stop_reason"] == "error:config" and "checkpointer" in out["error"]
    with pytest.raises(ContextError, match="only with protocol 'tools'"):
        Context(ask_user=True, protocol="tags")


def test_an_empty_question_is_malformed_and_nobody_is_asked(scene_dir, tmp_path):
    empty = {"tool_calls": [{"name": "ask_user", "args": {"question": "  "}}]}
    out = build_graph(checkpointer=InMemorySaver()).invoke(
        {"query": "the square", "media": str(scene_dir / "frames")}, {"configurable": {"thread_id": "e"}},
        context=_ctx(tmp_path, turns=(empty, ANSWER)))
    assert "__interrupt__" not in out and out["stop_reason"] == "answer" and out["questions"] == []
    assert out["messages"][3].content == "Error: empty question: nobody was asked"
    tool_ev = [e for e in out["events"] if e["type"] == "tool"]
    assert tool_ev[0]["name"] == "ask_user" and tool_ev[0]["error"]
    # not offered: an unknown tool, as before the setting existed
    msg = ReplayChatModel(turns=[ASK]).invoke("x")
    act, _ = parse_tool_calls(msg, ("keyframe", "answer"))
    assert "unknown tool 'ask_user'" in act.error
    assert parse_tool_calls(msg, ("keyframe", "answer", "ask_user"))[0] == AskUserAction("Which square do you mean?")
    assert [d["function"]["name"] for d in tool_definitions("qwen3", 864, False)] == ["keyframe", "answer"]


def test_a_question_counts_against_max_turns(scene_dir, tmp_path):
    out = graph.invoke({"query": "the square", "media": str(scene_dir / "frames")},
                       context=_ctx(tmp_path, ask_user_reply="no", max_turns=1))
    assert out["stop_reason"] == "max_turns" and len(out["questions"]) == 1


def test_the_cli_asks_on_the_terminal(scene_dir, tmp_path, monkeypatch, capsys):
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps([ASK, KEY, ANSWER]))
    args = ["run", "--media", str(scene_dir / "frames"), "--query", "the square", "--model", f"replay:{cassette}",
            "--search", "none", "--segmenter", "grabcut", "--protocol", "tools", "--ask-user", "--json"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\nthe blue one\n"))  # an empty line is refused
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "the model asks: Which square do you mean?" in captured.err and "the reply is empty" in captured.err
    traj = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    assert traj["questions"][0]["reply"] == "the blue one" and traj["stop_reason"] == "answer"
    # the end of stdin: a clear error, not a hang or a guess
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main([*args, "--out", str(tmp_path / "eof")]) != 0
    assert "stdin ended" in capsys.readouterr().err
    # nobody could ever answer (/dev/null): refused before the run
    with open("/dev/null") as null:
        monkeypatch.setattr("sys.stdin", null)
        assert main([*args, "--out", str(tmp_path / "null")]) != 0
    assert "not interactive" in capsys.readouterr().err and not (tmp_path / "null").exists()


class _Threads:
    def __init__(self, state):
        self.state = state

    async def get_state(self, thread_id, **kw):
        return self.state

    async def get(self, thread_id):
        return {"status": "interrupted"}


class _Client:
    def __init__(self, state):
        self.threads = _Threads(state)


def test_the_server_guard_reads_replies_with_the_nodes_rules():
    pause = {"type": "ask_user", "question": "Which?", "how": "..."}
    state = {"interrupts": [{"id": "a" * 32, "value": pause}]}
    path = "/threads/t1/runs/wait"

    def verdict(resume):
        return asyncio.run(review_check.resume_verdict(path, {"command": {"resume": resume}}, _Client(state)))

    assert verdict("the blue one") is None and verdict({"reply": "the blue one"}) is None
    for bad in ("", {"reply": 3}, {"answer": "x"}, ["x"]):
        status, body = verdict(bad)
        assert status == 422 and body["detail"] == read_answer(bad).problems
        assert any("reply" in f for f in body["accepted"])
    assert read_answer({"reply": " ok "}).reply == "ok"


def test_eval_answers_with_a_fixed_reply_and_counts_the_questions(tmp_path):
    base = Context(protocol="tools", ask_user=True, run_segmentation=False)
    q = Query(id="q1", question="the square", ability="one-hop", media="v.mp4", segment_media="v.mp4", gt="")
    assert query_context(base, q, "replay:x.json", None).ask_user_reply == EVAL_ASK_USER_REPLY
    final = {"stop_reason": "answer", "questions": [{"question": "Which?", "reply": EVAL_ASK_USER_REPLY, "auto": True}]}
    row = row_from_state(q, final, "m", 0.1, protocol="tools")
    assert row["questions"] == [{"question": "Which?", "reply": EVAL_ASK_USER_REPLY}]
    assert "questions" not in row_from_state(q, {"stop_reason": "answer", "questions": []}, "m", 0.1)
    c = counts([{"questions": row["questions"]}, {"questions": []}, {}])
    assert (c["asked"], c["questions"]) == (1, 1)
