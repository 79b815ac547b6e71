"""Evaluation end to end on the synthetic OK-VOS set: known scores, resumption, re-scoring
published dumps, the segment command, Ray sharding and image sets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from segresearch.agents.context import Context
from segresearch.eval.datasets import load_image_set, load_okvos, safe_name
from segresearch.eval.metrics import boundary_f, region_j
from segresearch.eval.predictions import PredictionLog, read_predictions
from segresearch.eval.runner import evaluate
from segresearch.eval.spec import EvalError, EvalSpec
from segresearch.testing.okvos import make_synthetic_okvos, oracle_turns, write_oracle_cassette
from segresearch.testing.oracle import GroundTruthSegmenter
from segresearch.tools.segmenters import Segmenter, VideoSession

N_FRAMES = 12


@pytest.fixture(scope="module")
def okvos(tmp_path_factory):
    """Two synthetic videos in the OK-VOS layout (32 queries, all four abilities), a small
    knowledge base, and a cassette answering every query from its ground truth except one
    (malformed JSON)."""
    root = tmp_path_factory.mktemp("okvos")
    make_synthetic_okvos(root, split="test", n_videos=2, n_frames=N_FRAMES)
    df = pd.read_parquet(root / "test.parquet")
    bad = df[df["ability"] == "multi-hop"]["id"].iloc[1]
    cassette = write_oracle_cassette(root, "test", root / "cassette.json", malformed=(bad,))
    kb = root / "kb"
    kb.mkdir()
    (kb / "text_corpus.jsonl").write_text(
        json.dumps({"id": 0, "contents": "Tessellate Cup\nWon by the Cobalt Squares in 2031."}) + "\n")
    return {"root": root, "cassette": cassette, "bad": bad, "kb": kb, "df": df}


def spec_for(okvos, out: Path, **kw) -> EvalSpec:
    kw.setdefault("models", [f"replay:{okvos['cassette']}"])
    kw.setdefault("segmenter", GroundTruthSegmenter())
    kw.setdefault("root", str(okvos["root"]))
    return EvalSpec(dataset="okvos", split="test", out=str(out),
                    context=Context(run_segmentation=False, search="bm25", kb=str(okvos["kb"])),
                    concurrency=4, html=False, progress=False, **kw)


def expected_empty_score(root: Path, qid: str) -> dict[str, float]:
    """J and F of all-empty masks against a query's annotated frames (DAVIS rules)."""
    q = next(q for q in load_okvos(root, "test") if q.id == qid)
    gts = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0
                    for p in sorted(Path(q.gt).glob("*.png"))])
    empty = np.zeros_like(gts)
    return {"J": float(region_j(gts, empty).mean()), "F": float(boundary_f(gts, empty).mean())}


@pytest.fixture(scope="module")
def single(okvos, tmp_path_factory):
    """One in-process evaluation of the whole set, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("single") / "eval"
    return out, evaluate(spec_for(okvos, out))


def test_okvos_known_score_and_outputs(okvos, single):
    out, res = single
    n = len(okvos["df"])
    assert res["dataset"]["queries"] == n == 32 and len(res["queries"]) == n
    by_id = {q["id"]: q for q in res["queries"]}
    bad = by_id[okvos["bad"]]
    # the malformed answer is scored as empty masks, not dropped
    exp = expected_empty_score(okvos["root"], okvos["bad"])
    assert bad["J"] == pytest.approx(exp["J"]) and bad["F"] == pytest.approx(exp["F"])
    assert bad["prompt"] is None and "not valid JSON" in bad["problem"]
    assert bad["stop_reason"] == "no_action"
    for qid, q in by_id.items():
        if qid != okvos["bad"]:
            assert q["J"] == 1.0 and q["F"] == 1.0, qid
    bad_jf = (exp["J"] + exp["F"]) / 2
    assert res["overall"]["J&F"] == pytest.approx((31 + bad_jf) / 32)
    assert res["by_ability"]["multi-hop"]["J&F"] == pytest.approx((7 + bad_jf) / 8)
    assert [a for a in res["by_ability"]] == ["one-hop", "multi-hop", "relational", "in-video"]
    for a in ("one-hop", "relational", "in-video"):
        assert res["by_ability"][a] == {"J": 1.0, "F": 1.0, "J&F": 1.0, "n": 8}
    c = res["counts"]
    assert c["stop_reasons"] == {"answer": 31, "no_action": 1} and c["no_usable_answer"] == 1
    assert c["missing_predictions"] == 0 and c["rule_differs"] == 0
    # in-video questions never search; the others searched once
    assert {q["num_search"] for q in res["queries"] if q["ability"] == "in-video"} == {0}
    assert res["by_searches"]["1"]["n"] == 24
    # files
    rows = read_predictions(out / "predictions.jsonl").rows
    assert len(rows) == n and {"id", "data_source", "video_path", "output"} <= set(rows[okvos["bad"]])
    for qid in by_id:
        names = sorted(p.name for p in (out / "seg" / safe_name(qid)).glob("*.png"))
        assert names == [f"{i:05d}.png" for i in range(N_FRAMES)]
    assert not any(cv2.imread(str(p), 0).any() for p in (out / "seg" / okvos["bad"]).glob("*.png"))
    saved = json.loads((out / "results.json").read_text())
    assert saved["overall"] == res["overall"]
    md = (out / "results.md").read_text()
    assert "| **overall** | 32 |" in md and "no usable answer (empty masks): 1" in md
    for p in res["plots"]:
        img = cv2.imread(str(out / p))
        assert img is not None and img.std() > 5
    assert (out / "runs" / safe_name(okvos["bad"]) / "trajectory.json").is_file()


def test_settings_are_pinned_to_the_folder(okvos, tmp_path):
    out = tmp_path / "eval"
    evaluate(spec_for(okvos, out, limit=2))
    other = spec_for(okvos, out, limit=2)
    other.context = Context(run_segmentation=False, search="bm25", kb=str(okvos["kb"]), num_frames=4)
    with pytest.raises(EvalError, match="num_frames"):
        evaluate(other)
    other.force = True
    evaluate(other)


def test_rescore_a_published_dump_with_missing_rows(okvos, tmp_path):
    """Rows in the published validation-dump format (id, data_source, video_path as on the
    machine that made them, output); 10 queries have no row at all."""
    root, df = okvos["root"], okvos["df"]
    dump = tmp_path / "0.jsonl"
    kept = df.iloc[10:]
    with dump.open("w") as f:
        for rec in kept.to_dict("records"):
            turns = oracle_turns(root, "test", rec)
            # the model picked a keyframe twice; the published rule reads the FIRST one
            output = turns[-2].replace("<keyframe>", "<keyframe> 0 </keyframe> x <keyframe>", 1) + "\n" + turns[-1]
            f.write(json.dumps({
                "id": rec["id"], "data_source": f"Search_RVOS_{rec['ability']}",
                "video_path": f"/home/someone/Seg-ReSearch/data/OK_VOS/test/JPEGImages/{rec['video']}",
                "output": output, "score": 1.0}) + "\n")
    out = tmp_path / "rescore"
    res = evaluate(spec_for(okvos, out, models=[], predictions=str(dump)))
    assert len(res["queries"]) == 32 and res["counts"]["missing_predictions"] == 10
    assert res["counts"]["no_usable_answer"] == 0  # missing rows are counted as missing only
    missing = [q for q in res["queries"] if q["missing_prediction"]]
    assert {q["id"] for q in missing} == set(df["id"].iloc[:10])
    for q in missing:  # scored as empty masks
        exp = expected_empty_score(root, q["id"])
        assert q["J"] == pytest.approx(exp["J"]) and q["missing_masks"]
    present = [q for q in res["queries"] if not q["missing_prediction"]]
    assert all(q["prompt"]["frame"] == 0 for q in present)  # the first <keyframe> tag
    copied = read_predictions(out / "predictions.jsonl").rows  # the rows scored, kept beside
    assert list(copied) == list(df["id"].iloc[10:]) and copied[df["id"].iloc[10]]["score"] == 1.0
    # a dump for another split (other videos) is refused with a clear message
    bad = tmp_path / "other.jsonl"
    bad.write_text(json.dumps({"id": df["id"].iloc[0], "data_source": "Search_RVOS_one-hop",
                               "video_path": "/x/JPEGImages/not_this_video", "output": ""}) + "\n")
    with pytest.raises(EvalError, match="another video"):
        evaluate(spec_for(okvos, tmp_path / "r2", models=[], predictions=str(bad)))


def cli(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "segresearch", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, **popen)


def test_kill_half_way_and_resume_redoes_nothing(okvos, tmp_path):
    slow = tmp_path / "slow.json"
    data = json.loads(okvos["cassette"].read_text())
    slow.write_text(json.dumps({**data, "latency": 0.15}))
    out = tmp_path / "eval"
    args = ["eval", "okvos", "--root", str(okvos["root"]), "--split", "test", "--out", str(out),
            "--model", f"replay:{slow}", "--search", "bm25", "--kb", str(okvos["kb"]),
            "--segmenter", "grabcut", "--concurrency", "2", "--no-html", "--limit", "16"]
    proc = subprocess.Popen([sys.executable, "-m", "segresearch", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    preds = out / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if preds.exists() and preds.read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = preds.read_bytes()
    first = read_predictions(preds)
    assert 5 <= len(first.rows) < 16
    with preds.open("ab") as f:  # as if killed in the middle of a write
        f.write(b'{"id": "vid000_4_in-video", "output": "<keyfr')
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    after = preds.read_bytes()
    assert after.startswith(before)  # nothing rewritten, nothing lost
    rows = read_predictions(preds)
    assert len(rows.rows) == 16 and rows.duplicates == 0 and not rows.torn_tail
    lines = [json.loads(x) for x in after.decode().splitlines()]
    assert len(lines) == 16  # each query predicted exactly once over both runs
    res = json.loads((out / "results.json").read_text())
    assert res["counts"]["predicted"] == 16
    assert "J&F" in r.stdout and "results:" in r.stdout
    # the same evaluation again (here in process) finds everything done
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "seg").iterdir()}
    evaluate(spec_for(okvos, out, models=[f"replay:{slow}"], segmenter="grabcut", limit=16))
    assert preds.read_bytes() == after
    assert {p: p.stat().st_mtime_ns for p in (out / "seg").iterdir() if p in mtimes} == mtimes


def test_prediction_log_repairs_a_torn_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"id": "a", "output": "x"}\n{"id": "b", "outp')
    assert read_predictions(p).torn_tail and list(read_predictions(p).rows) == ["a"]
    PredictionLog(p).append({"id": "c"})
    assert p.read_bytes() == b'{"id": "a", "output": "x"}\n{"id": "c"}\n'
    p.write_bytes(b'{"id": "a"}\nnot json\n[1]\n{"id": "a", "v": 2}\n')
    got = read_predictions(p)
    assert got.skipped == [2, 3] and got.duplicates == 1 and got.rows["a"]["v"] == 2


def test_segment_command_on_a_published_dump_and_meta_mapping(okvos, tmp_path):
    root, df = okvos["root"], okvos["df"]
    dump = tmp_path / "dump.jsonl"
    with dump.open("w") as f:
        for rec in df.iloc[:6].to_dict("records"):
            f.write(json.dumps({"id": rec["id"], "data_source": f"Search_RVOS_{rec['ability']}",
                                "video_path": f"/elsewhere/OK_VOS/test/JPEGImages/{rec['video']}",
                                "output": "\n".join(oracle_turns(root, "test", rec))}) + "\n")
        f.write(json.dumps({"id": "lost", "data_source": "Search_RVOS_one-hop",
                            "video_path": "/elsewhere/OK_VOS/test/JPEGImages/nope", "output": ""}) + "\n")
    out = tmp_path / "masks"
    r = cli("segment", str(dump), "--root", str(root), "--out", str(out), "--segmenter", "grabcut",
            "--no-progress")
    assert r.returncode == 1 and "nope" in r.stderr  # one row's media is missing: said, not hidden
    assert "masks for 6 queries" in r.stdout
    for rec in df.iloc[:6].to_dict("records"):
        assert len(list((out / rec["id"]).glob("*.png"))) == N_FRAMES
    logged = read_predictions(out / "segment.jsonl").rows
    assert logged[df["id"].iloc[0]]["segmenter"] == "grabcut"
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_dir()}
    r = cli("segment", str(dump), "--root", str(root), "--out", str(out), "--segmenter", "grabcut",
            "--no-progress")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_dir()} == stamp  # resumed
    # the published evaluator's mapping from `segresearch data okvos`, where the README and
    # the published preprocessing put it: in the data set's root, whatever --out says
    r = cli("data", "okvos", "--root", str(root), "--split", "test", "--out", str(tmp_path / "v" / "test.parquet"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "v" / "meta_mapping.json").exists()
    meta = json.loads((root / "meta_mapping.json").read_text())
    assert len(meta) == 32 and meta[0] == [df["id"].iloc[0], str(root / "test" / "Annotations" / "vid000" / "1"), "one-hop"]
    assert all(Path(m[1]).is_dir() for m in meta)


def test_ray_sharded_run_equals_single_process(okvos, single, tmp_path):
    pytest.importorskip("ray")
    single_dir, single = single
    sharded = evaluate(spec_for(okvos, tmp_path / "ray", trajectories=False, ray=True, workers=2))
    assert sharded["settings"]["workers"] == 2

    def scores(res):
        return [{k: q[k] for k in ("id", "J", "F", "J&F", "prompt", "stop_reason", "num_search")}
                for q in res["queries"]]

    assert scores(sharded) == scores(single)
    for key in ("overall", "by_ability", "by_searches", "counts"):
        assert sharded[key] == single[key]
    a = read_predictions(single_dir / "predictions.jsonl").rows
    b = read_predictions(tmp_path / "ray" / "predictions.jsonl").rows
    assert {k: v["output"] for k, v in a.items()} == {k: v["output"] for k, v in b.items()}
    for qid in a:
        for p in (single_dir / "seg" / qid).glob("*.png"):
            assert p.read_bytes() == (tmp_path / "ray" / "seg" / qid / p.name).read_bytes()
    assert len(read_predictions(tmp_path / "ray" / "seg" / "segment.jsonl").rows) == 32


# ----------------------------------------------------------------------- images


class BoxSegmenter(Segmenter):
    """Fills the prompt's box: the expected IoU of a known box is then exact."""

    name = "box"

    def open(self, media):
        class S(VideoSession):
            def masks(self, prompt):
                m = np.zeros((media.height, media.width), bool)
                x1, y1, x2, y2 = (int(round(v)) for v in prompt.box)
                m[y1:y2 + 1, x1:x2 + 1] = True
                yield prompt.frame, m

        s = S()
        s.media = media
        return s


def make_image_set(root: Path) -> list[dict]:
    """Three images with a rectangle target each, as a queries.jsonl manifest, and one in
    the ReasonSeg layout (polygons with an ignore region)."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    rng = np.random.default_rng(0)
    for i, (x1, y1, x2, y2) in enumerate([(10, 10, 49, 39), (60, 20, 99, 79), (5, 50, 24, 69)]):
        img = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
        mask = np.zeros((90, 120), np.uint8)
        mask[y1:y2 + 1, x1:x2 + 1] = 255
        cv2.imwrite(str(root / f"im{i}.jpg"), img)
        cv2.imwrite(str(root / f"im{i}_mask.png"), mask)
        items.append({"id": f"im{i}", "image": f"im{i}.jpg", "mask": f"im{i}_mask.png",
                      "question": f"the thing number {i}", "box": (x1, y1, x2, y2)})
    with (root / "queries.jsonl").open("w") as f:
        for it in items:
            f.write(json.dumps({k: v for k, v in it.items() if k != "box"}) + "\n")
    return items


def test_image_eval_giou_ciou(tmp_path):
    items = make_image_set(tmp_path / "imgs")
    cassette = {"queries": {}}
    answers = {  # the first exact, the second half the height, the third answers nothing
        "im0": [10, 10, 49, 39], "im1": [60, 20, 99, 49], "im2": None}
    for it in items:
        box = answers[it["id"]]
        if box is None:
            turns = ["<thinking>no idea</thinking>"]
        else:
            rel = [round(box[0] / 120 * 1000, 3), round(box[1] / 90 * 1000, 3),
                   round(box[2] / 120 * 1000, 3), round(box[3] / 90 * 1000, 3)]
            turns = ["<thinking>t</thinking><answer>" + json.dumps(
                {"bbox_2d": rel, "point_2d": [rel[0] + 1, rel[1] + 1]}) + "</answer>"]
        cassette["queries"][it["question"]] = turns
    (tmp_path / "c.json").write_text(json.dumps(cassette))
    out = tmp_path / "eval"
    res = evaluate(EvalSpec(dataset="images", root=str(tmp_path / "imgs"), out=str(out),
                            models=[f"replay:{tmp_path / 'c.json'}"], segmenter=BoxSegmenter(),
                            context=Context(run_segmentation=False, search="none"),
                            html=False, progress=False))
    by = {q["id"]: q for q in res["queries"]}
    assert by["im0"]["IoU"] == pytest.approx(1.0)
    assert by["im1"]["IoU"] == pytest.approx(30 * 40 / (60 * 40))
    assert by["im2"]["IoU"] == 0.0 and by["im2"]["prompt"] is None
    assert res["overall"]["gIoU"] == pytest.approx((1 + 0.5 + 0) / 3)
    inter = 40 * 30 + 30 * 40 + 0
    union = 40 * 30 + 60 * 40 + 20 * 20
    assert res["overall"]["cIoU"] == pytest.approx(inter / union)
    assert res["metric"] == "gIoU" and "cIoU" in (out / "results.md").read_text()
    # resumed: nothing is predicted again
    size = (out / "predictions.jsonl").stat().st_size
    evaluate(EvalSpec(dataset="images", root=str(tmp_path / "imgs"), out=str(out),
                      models=[f"replay:{tmp_path / 'c.json'}"], segmenter=BoxSegmenter(),
                      context=Context(run_segmentation=False, search="none"), html=False, progress=False))
    assert (out / "predictions.jsonl").stat().st_size == size


def test_reasonseg_layout_with_ignore_polygons(tmp_path):
    d = tmp_path / "rs"
    d.mkdir()
    cv2.imwrite(str(d / "a.jpg"), np.full((50, 60, 3), 128, np.uint8))
    (d / "a.json").write_text(json.dumps({
        "text": ["the left half", "what is on the left"], "is_sentence": True,
        "shapes": [{"label": "target", "points": [[0, 0], [29, 0], [29, 49], [0, 49]]},
                   {"label": "ignore", "points": [[0, 0], [9, 0], [9, 9], [0, 9]]},
                   {"label": "flag", "points": [[0, 0], [1, 0], [1, 1]]}]}))
    qs = load_image_set(d, all_texts=True)
    assert [q.id for q in qs] == ["a#0", "a#1"] and qs[1].question == "what is on the left"
    from segresearch.eval.datasets import image_ground_truth

    target, ignore = image_ground_truth(qs[0], 50, 60)
    assert ignore is not None and ignore[:10, :10].all() and not target[:10, :10].any()
    assert target[20:, :29].all() and not target[:, 31:].any()


def test_eval_cli_refuses_bad_setups_in_one_line(okvos, tmp_path):
    root = str(okvos["root"])
    cases = [
        (["eval", "okvos", "--root", root, "--split", "test", "--out", str(tmp_path / "a")],
         "either --model"),
        (["eval", "images", "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "d"),
          "--model", f"replay:{okvos['cassette']}"], "image set folder not found"),
        (["eval", "okvos", "--root", root, "--split", "test", "--out", str(tmp_path / "b"),
          "--model", "openai:m@http://127.0.0.1:9/v1"], "not reachable"),
    ]
    for args, expect in cases:
        r = cli(*args, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], lines
    with pytest.raises(EvalError, match="not found"):
        evaluate(spec_for(okvos, tmp_path / "c", root=str(tmp_path / "nothing")))
    with pytest.raises(EvalError, match="not 'none'"):
        evaluate(spec_for(okvos, tmp_path / "e", segmenter="none"))
    with pytest.raises(EvalError, match="predictions file not found"):
        evaluate(spec_for(okvos, tmp_path / "f", models=[], predictions=str(tmp_path / "x.jsonl")))
    assert not (tmp_path / "c").exists() and not (tmp_path / "f").exists()  # nothing pinned


def test_replay_cassette_keyed_by_question(tmp_path, scene_dir):
    from segresearch.agents.backends.replay import ReplayChatModel
    from segresearch.graphs.seg_research import graph

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"queries": {
        "the square": ['<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}</answer>'],
        "the circle": ["<thinking>none</thinking>"]}, "latency": 0.01}))
    model = ReplayChatModel.from_file(path)
    ctx = Context(model=model, search="none", segmenter="none")
    media = str(scene_dir / "frames" / "00000.jpg")
    assert graph.invoke({"query": "the square", "media": media}, context=ctx)["stop_reason"] == "answer"
    assert graph.invoke({"query": "the circle", "media": media}, context=ctx)["stop_reason"] == "no_action"
    out = graph.invoke({"query": "the triangle", "media": media}, context=ctx)
    assert out["stop_reason"] == "error:model" and "no turns for the question" in out["error"]
    path.write_text(json.dumps({"queries": {}, "latency": -1}))
    with pytest.raises(ValueError, match="latency"):
        ReplayChatModel.from_file(path)


def test_queries_go_round_robin_over_model_endpoints(okvos, tmp_path):
    second = tmp_path / "second.json"
    second.write_text(okvos["cassette"].read_text())
    models = [f"replay:{okvos['cassette']}", f"replay:{second}"]
    res = evaluate(spec_for(okvos, tmp_path / "rr", models=models, limit=6, trajectories=False))
    rows = read_predictions(tmp_path / "rr" / "predictions.jsonl").rows
    order = [q["id"] for q in res["queries"]]
    assert [rows[i]["model"] for i in order] == [models[k % 2] for k in range(6)]
    assert res["settings"]["models"] == models
