"""Evaluation in the tool-calling protocol (``eval ... --protocol tools``): a model that answers
with native tool calls is scored exactly as the same answers written as tags, its saved
predictions are segmented from the structured answer (its output text has no tags), and a
folder is pinned to the protocol it was made with."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from segresearch.agents.context import Context
from segresearch.cli import main
from segresearch.core.protocol import AnswerAction, KeyframeAction, SearchAction, parse_action
from segresearch.eval.postseg import job_from_row
from segresearch.eval.predictions import read_predictions
from segresearch.eval.runner import evaluate
from segresearch.eval.spec import CONFIG, EvalError, EvalSpec
from segresearch.testing.okvos import make_synthetic_okvos, oracle_turns
from segresearch.testing.oracle import GroundTruthSegmenter


def tool_turns(tag_turns: list[str]) -> list[dict]:
    """The same actions as recorded tool-call messages: each tag turn's thinking as the
    message text and its action as one call (the answer names the keyframe shown last)."""
    out, keyframe = [], None
    for i, text in enumerate(tag_turns):
        action = parse_action(text)
        thought = text.split("</thinking>")[0].removeprefix("<thinking>")
        if isinstance(action, SearchAction):
            call = {"name": action.name, "args": {"query": action.query}}
        elif isinstance(action, KeyframeAction):
            keyframe = action.frame
            call = {"name": "keyframe", "args": {"index": action.frame}}
        elif isinstance(action, AnswerAction):
            call = {"name": "answer", "args": {"keyframe": keyframe, "bbox_2d": action.bbox_2d,
                                               "point_2d": action.point_2d}}
        else:  # a malformed answer: a box of two numbers is as unusable as broken JSON
            call = {"name": "answer", "args": {"keyframe": keyframe, "bbox_2d": [1, 2]}}
        out.append({"content": thought, "tool_calls": [{**call, "id": f"t{i}"}]})
    return out


@pytest.fixture(scope="module")
def okvos(tmp_path_factory):
    """The synthetic OK-VOS set (two videos, 32 queries) with one policy recorded twice: as
    tags and as tool calls; one multi-hop query answers with an unusable box in both."""
    root = tmp_path_factory.mktemp("okvos_tools")
    make_synthetic_okvos(root, split="test", n_videos=2, n_frames=12)
    df = pd.read_parquet(root / "test.parquet")
    bad = df[df["ability"] == "multi-hop"]["id"].iloc[1]
    tags, tools = {}, {}
    for rec in df.to_dict("records"):
        turns = oracle_turns(root, "test", rec)
        if rec["id"] == bad:
            turns[-1] = "<thinking>Hmm.</thinking>\n<answer>{'bbox_2d': [1, 2, 3, 4], point}</answer>"
        tags[str(rec["question"])] = turns
        tools[str(rec["question"])] = tool_turns(turns)
    (root / "tags.json").write_text(json.dumps({"queries": tags}))
    (root / "tools.json").write_text(json.dumps({"label": "oracle as tool calls", "queries": tools}))
    kb = root / "kb"
    kb.mkdir()
    (kb / "text_corpus.jsonl").write_text(
        json.dumps({"id": 0, "contents": "Tessellate Cup\nWon by the Cobalt Squares in 2031."}) + "\n")
    return {"root": root, "kb": kb, "bad": bad, "n": len(df)}


def spec(okvos, out: Path, protocol: str, **kw) -> EvalSpec:
    kw.setdefault("segmenter", GroundTruthSegmenter())
    return EvalSpec(dataset="okvos", split="test", root=str(okvos["root"]), out=str(out),
                    models=[f"replay:{okvos['root'] / (protocol + '.json')}"],
                    context=Context(run_segmentation=False, search="bm25", kb=str(okvos["kb"]),
                                    protocol=protocol),
                    concurrency=4, html=False, progress=False, **kw)


def test_tools_eval_scores_as_the_tags_eval_of_the_same_answers(okvos, tmp_path):
    """J&F overall, per ability and per query, the prompts SAM 2 would get, the stop reasons
    and searches all equal the tags run's; the tools rows hold the calls (no tags) and
    their structured answer, and are read from it."""
    tools = evaluate(spec(okvos, tmp_path / "tools", "tools"))
    tags = evaluate(spec(okvos, tmp_path / "tags", "tags"))
    assert tools["overall"] == tags["overall"] and tools["by_ability"] == tags["by_ability"]
    assert tools["overall"]["J&F"] < 1.0  # the unusable answer counts as empty masks
    assert tools["settings"]["protocol"] == "tools" and tags["settings"]["protocol"] == "tags"
    t, g = ({q["id"]: q for q in r["queries"]} for r in (tools, tags))
    for qid in g:
        for key in ("J", "F", "J&F", "stop_reason", "num_search", "searches", "answer", "prompt"):
            assert t[qid][key] == g[qid][key], (qid, key)
    assert tools["counts"]["stop_reasons"] == {"answer": okvos["n"] - 1, "no_action": 1}
    assert t[okvos["bad"]]["prompt"] is None and t[okvos["bad"]]["problem"] == "no answer call"
    assert tools["counts"]["rule_differs"] == 0
    rows = read_predictions(tmp_path / "tools" / "predictions.jsonl").rows
    row = next(r for r in rows.values() if r["id"] != okvos["bad"] and r["num_search"] == 1)
    assert row["protocol"] == "tools" and "<answer>" not in row["output"] and "<keyframe>" not in row["output"]
    assert '<tool_call>\n{"name": "answer", "arguments": {"keyframe": ' in row["output"]
    assert '{"name": "text_search", "arguments": {"query": ' in row["output"]
    assert row["first_keyframe"] is None and row["answer"]["keyframe"] == row["graph_keyframe"]
    tag_rows = read_predictions(tmp_path / "tags" / "predictions.jsonl").rows
    assert tag_rows[row["id"]]["protocol"] == "tags"


def test_a_tools_row_is_read_from_its_answer_and_a_published_row_from_its_text():
    answer = {"keyframe": 3, "bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}
    tools = job_from_row("a", "/v", {"protocol": "tools", "output": "x", "answer": answer})
    assert tools.tools and tools.answer == answer
    # the published dump has no protocol; a tags row keeps the published reading too
    for row in ({"output": "<answer>{}</answer>", "answer": answer},
                {"protocol": "tags", "output": "y", "answer": answer}):
        job = job_from_row("b", "/v", row)
        assert not job.tools and job.answer is None
    # a tools run that never answered: nothing to read, not the text
    assert job_from_row("c", "/v", {"protocol": "tools", "output": "z", "answer": None}).answer is None


def test_a_folder_is_pinned_to_its_protocol(okvos, tmp_path):
    """A tags folder is never resumed under tools (or back); a folder made before the
    setting existed (no "protocol" in eval_config.json) resumes as tags."""
    out = tmp_path / "eval"
    evaluate(spec(okvos, out, "tags", limit=2))
    with pytest.raises(EvalError, match="protocol: 'tags' → 'tools'"):
        evaluate(spec(okvos, out, "tools", limit=2))
    config = json.loads((out / CONFIG).read_text())
    del config["protocol"]
    (out / CONFIG).write_text(json.dumps(config))
    res = evaluate(spec(okvos, out, "tags", limit=2))
    assert res["settings"]["protocol"] == "tags"
    assert json.loads((out / CONFIG).read_text())["protocol"] == "tags"
    (out / CONFIG).write_text(json.dumps(config))  # the old file again, without the key
    with pytest.raises(EvalError, match="protocol: 'tags' → 'tools'"):
        evaluate(spec(okvos, out, "tools", limit=2))


def test_tags_answers_in_a_y_first_or_fractional_convention_are_refused(okvos, tmp_path):
    """A tags row is re-read from its text on the published grids, so a convention it cannot
    be read in is refused before any work, not scored with boxes on the wrong axes."""
    for style in ("gemini", "normalized"):
        s = spec(okvos, tmp_path / style, "tags", limit=1)
        s.context = Context(run_segmentation=False, search="bm25", kb=str(okvos["kb"]), protocol="tags",
                            coord_style=style)
        with pytest.raises(EvalError, match=f"--coord-style {style} needs --protocol tools"):
            evaluate(s)
        assert not (tmp_path / style / CONFIG).exists()


def test_cli_eval_okvos_protocol_tools_and_segment_its_predictions(okvos, tmp_path, capsys):
    """``segresearch eval okvos --protocol tools`` with a real segmenter (GrabCut) scores as
    the tags run of the same answers, and ``segment`` makes the same masks from its saved
    predictions."""
    def run(protocol: str) -> dict:
        out = tmp_path / protocol
        code = main(["eval", "okvos", "--root", str(okvos["root"]), "--split", "test",
                     "--out", str(out), "--model", f"replay:{okvos['root'] / (protocol + '.json')}",
                     "--protocol", protocol, "--search", "bm25", "--kb", str(okvos["kb"]),
                     "--segmenter", "grabcut", "--limit", "3", "--no-progress"])
        assert code == 0, capsys.readouterr().err
        return json.loads((out / "results.json").read_text())

    tools, tags = run("tools"), run("tags")
    assert tools["settings"]["protocol"] == "tools"
    assert [q["J&F"] for q in tools["queries"]] == [q["J&F"] for q in tags["queries"]]
    assert tools["overall"] == tags["overall"] and tools["overall"]["J&F"] > 0.5
    seg = tmp_path / "seg"
    code = main(["segment", str(tmp_path / "tools" / "predictions.jsonl"),
                 "--out", str(seg), "--segmenter", "grabcut", "--all"])
    assert code == 0, capsys.readouterr().err
    for q in tools["queries"]:
        made = sorted(p.read_bytes() for p in (seg / q["id"]).glob("*.png"))
        assert made == sorted(p.read_bytes() for p in (tmp_path / "tools" / q["seg_dir"]).glob("*.png"))


def test_cli_eval_images_protocol_tools(tmp_path, capsys):
    """``eval images --protocol tools``: one image answered exactly, one with half the box,
    one never answered; gIoU and cIoU equal the tags run of the same answers."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    tags, tools = {}, {}
    boxes = {"im0": (10, 10, 49, 39), "im1": (60, 20, 99, 79), "im2": (5, 50, 24, 69)}
    answers = {"im0": [10, 10, 49, 39], "im1": [60, 20, 99, 49], "im2": None}
    with (root / "queries.jsonl").open("w") as f:
        for i, (qid, (x1, y1, x2, y2)) in enumerate(boxes.items()):
            img = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
            img[y1:y2 + 1, x1:x2 + 1] = (40, 200, 40)
            mask = np.zeros((90, 120), np.uint8)
            mask[y1:y2 + 1, x1:x2 + 1] = 255
            cv2.imwrite(str(root / f"{qid}.png"), img)
            cv2.imwrite(str(root / f"{qid}_mask.png"), mask)
            question = f"the thing number {i}"
            f.write(json.dumps({"id": qid, "image": f"{qid}.png", "mask": f"{qid}_mask.png",
                                "question": question}) + "\n")
            box = answers[qid]
            if box is None:
                tags[question], tools[question] = ["<thinking>no idea</thinking>"], [{"content": "no idea"}]
                continue
            rel = [round(box[0] / 120 * 1000), round(box[1] / 90 * 1000),
                   round(box[2] / 120 * 1000), round(box[3] / 90 * 1000)]
            point = [(rel[0] + rel[2]) // 2, (rel[1] + rel[3]) // 2]
            tags[question] = ["<answer>" + json.dumps({"bbox_2d": rel, "point_2d": point}) + "</answer>"]
            tools[question] = [{"content": "", "tool_calls": [
                {"name": "answer", "args": {"keyframe": 0, "bbox_2d": rel, "point_2d": point}}]}]
    results = {}
    for protocol, turns in (("tags", tags), ("tools", tools)):
        (tmp_path / f"{protocol}.json").write_text(json.dumps({"queries": turns}))
        out = tmp_path / protocol
        code = main(["eval", "images", "--root", str(root), "--out", str(out), "--protocol", protocol,
                     "--model", f"replay:{tmp_path / (protocol + '.json')}", "--search", "none",
                     "--segmenter", "grabcut", "--no-progress"])
        assert code == 0, capsys.readouterr().err
        results[protocol] = json.loads((out / "results.json").read_text())
    tools_res, tags_res = results["tools"], results["tags"]
    assert tools_res["overall"] == tags_res["overall"] and tools_res["overall"]["gIoU"] > 0.3
    by = {q["id"]: q for q in tools_res["queries"]}
    assert by["im2"]["prompt"] is None and by["im2"]["IoU"] == 0.0
    assert [q["prompt"] for q in tools_res["queries"]] == [q["prompt"] for q in tags_res["queries"]]
