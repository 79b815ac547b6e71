"""Evaluation of answers naming several objects (issue 22, items 1 and 5): each object
segmented on its own, the union scored as before, and per-object matching (Hungarian on
video-level J) against the objects a MeViS / ReVOS expression lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from segresearch.cli import main
from segresearch.eval import spec as spec_module
from segresearch.eval.postseg import (
    OBJECTS_DIR,
    SEGMENT_LOG,
    complete_ids,
    job_from_row,
    job_hash,
    remove_stale_outputs,
    tag_answer_objects,
)
from segresearch.eval.runner import evaluate
from segresearch.eval.rvos import load_mevis, object_mask
from segresearch.eval.scoring import score_query_objects
from segresearch.eval.spec import EvalSpec
from segresearch.testing.okvos import make_synthetic_okvos, write_oracle_predictions
from segresearch.testing.rvos import (
    UnionGroundTruthSegmenter,
    make_synthetic_mevis,
    make_synthetic_revos,
    write_rvos_oracle_predictions,
)

TWO = ("vid000_1", "vid000_2", "vid000_3")  # the synthetic expressions naming two objects


@pytest.fixture(scope="module")
def revos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_revos(tmp_path_factory.mktemp("revos") / "revos", n_videos=1)


def _eval(root: Path, preds: Path, out: Path, **kw: object) -> dict:
    return evaluate(EvalSpec(dataset="revos", root=str(root), predictions=str(preds), out=str(out),
                             segmenter=UnionGroundTruthSegmenter(), progress=False, html=False, **kw))


def test_tag_list_is_read_per_object_only_in_our_rule(revos: Path, tmp_path: Path) -> None:
    preds = write_rvos_oracle_predictions(revos, tmp_path / "p.jsonl", per_object=True)
    rows = {r["id"]: r for r in map(json.loads, preds.read_text().splitlines())}
    two = rows["vid000_1"]
    assert two["output"].split("<answer>")[1].startswith("[")  # a JSON list of objects
    objs = tag_answer_objects(two["output"])
    assert objs is not None and [o["label"] for o in objs] == ["red circle", "yellow star"]
    assert tag_answer_objects(rows["vid000_0"]["output"]) is None  # one object: a dict, as published
    ours = job_from_row("vid000_1", "v", two)
    published = job_from_row("vid000_1", "v", two, rule="published")
    assert ours.objects == objs and published.objects is None
    # the hash changes only for a job read as objects: the other rule's masks are redone
    assert job_hash(ours) != job_hash(published)
    single = rows["vid000_0"]
    assert job_hash(job_from_row("a", "v", single)) == job_hash(job_from_row("a", "v", single, rule="published"))
    with pytest.raises(ValueError, match="unknown answer rule"):
        job_from_row("a", "v", single, rule="lists")


def test_union_and_object_j_both_and_one_object(revos: Path, tmp_path: Path) -> None:
    both = _eval(revos, write_rvos_oracle_predictions(revos, tmp_path / "b.jsonl", per_object=True),
                 tmp_path / "both")
    one = _eval(revos, write_rvos_oracle_predictions(revos, tmp_path / "o.jsonl", first_object_only=True),
                tmp_path / "one")
    union = _eval(revos, write_rvos_oracle_predictions(revos, tmp_path / "u.jsonl"), tmp_path / "union")
    # the union of the per-object masks is the oracle union: J&F as the one-box oracle's
    assert both["overall"]["J&F"] == pytest.approx(1.0) == union["overall"]["J&F"]
    b = {q["id"]: q for q in both["queries"]}
    o = {q["id"]: q for q in one["queries"]}
    u = {q["id"]: q for q in union["queries"]}
    for qid in TWO:
        assert b[qid]["J&F"] == pytest.approx(1.0) and o[qid]["J&F"] < 0.9
        # both objects, each perfect: object J 1 (pairs 0-0 and 1-1)
        assert b[qid]["object_J"] == pytest.approx(1.0)
        assert (b[qid]["objects_pred"], b[qid]["objects_gt"]) == (2, 2)
        assert [p[:2] for p in b[qid]["object_pairs"]] == [[0, 0], [1, 1]]
        # one of the two, perfect: J 1 for its pair, divided by the larger count 2
        assert o[qid]["object_J"] == pytest.approx(0.5) and o[qid]["objects_pred"] == 1
        assert o[qid]["object_pairs"][0][:2] == [0, 0] and o[qid]["object_pairs"][0][2] == pytest.approx(1.0)
        # one box around both: a perfect union, but one predicted object overlapping two
        assert u[qid]["J&F"] == pytest.approx(1.0) and u[qid]["object_J"] < 0.5
        assert (tmp_path / "both" / "seg" / OBJECTS_DIR / qid / "2").is_dir()
    assert b["vid000_0"]["object_J"] == pytest.approx(1.0) and o["vid000_0"]["object_J"] == pytest.approx(1.0)
    # per group: the mean object J and how many named the right number of objects
    assert both["objects"]["overall"] == {"object_J": pytest.approx(1.0), "right_count": 5,
                                          "several_gt": 3, "n": 5}
    # ReVOS' overall is the mean of its referring and reasoning rows, as its J&F overall:
    # referring vid000_0 (one object, 1), vid000_1 and vid000_2 (one of two, 1/2) → 2/3;
    # reasoning vid000_3 (one of two) and vid000_4 (one object) → 3/4; not the pooled 0.7
    by = one["objects"]["by_ability"]
    assert list(by) == ["referring", "reasoning"] and one["objects"]["overall_of"] == list(by)
    assert by["referring"]["object_J"] == pytest.approx(2 / 3)
    assert by["reasoning"]["object_J"] == pytest.approx(3 / 4)
    assert one["objects"]["overall"]["object_J"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert one["objects"]["overall"]["right_count"] == 2 and one["objects"]["overall"]["n"] == 5
    md = (tmp_path / "one" / "results.md").read_text()
    assert "## Per object" in md and "| **overall** | 5 | 70.8 | 2 of 5 | 3 |" in md
    assert "Overall: the mean of the referring and reasoning rows" in md
    # the union folder is what the scorers read; the objects' root is no query's folder
    assert OBJECTS_DIR not in complete_ids(tmp_path / "both" / "seg")
    seg = {r["id"]: r for r in map(json.loads, (tmp_path / "both" / "seg" / SEGMENT_LOG).read_text().splitlines())}
    assert seg["vid000_1"]["objects"] == 2 and len(seg["vid000_1"]["object_prompts"]) == 2
    assert seg["vid000_1"]["object_prompts"][1]["label"] == "yellow star"


def test_tools_rows_and_the_published_rule(revos: Path, tmp_path: Path) -> None:
    tools = _eval(revos, write_rvos_oracle_predictions(revos, tmp_path / "t.jsonl", per_object=True,
                                                       protocol="tools"), tmp_path / "tools")
    assert tools["overall"]["J&F"] == pytest.approx(1.0)
    assert tools["objects"]["overall"]["object_J"] == pytest.approx(1.0)
    # the published rule reads a list answer as the published script does: no prompt at all
    preds = write_rvos_oracle_predictions(revos, tmp_path / "b.jsonl", per_object=True)
    pub = _eval(revos, preds, tmp_path / "pub", answer_rule="published")
    p = {q["id"]: q for q in pub["queries"]}
    for qid in TWO:
        assert p[qid]["prompt"] is None and p[qid]["objects_pred"] == 0 and p[qid]["object_J"] == 0
        assert "bbox_2d" in p[qid]["problem"]
    assert p["vid000_0"]["J&F"] == pytest.approx(1.0)
    assert pub["settings"]["answer_rule"] == "published"
    # resuming the folder with our rule redoes exactly the list answers
    again = _eval(revos, preds, tmp_path / "pub")
    assert again["overall"]["J&F"] == pytest.approx(1.0)
    assert all((tmp_path / "pub" / "seg" / OBJECTS_DIR / qid).is_dir() for qid in TWO)
    # and back: the per-object folders of answers now read as no prompt are removed
    _eval(revos, preds, tmp_path / "pub", answer_rule="published")
    assert not any((tmp_path / "pub" / "seg" / OBJECTS_DIR / qid).exists() for qid in TWO)


def test_partial_object_folders_are_removed_on_resume(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    q = seg / OBJECTS_DIR / "vid000_1"
    (q / "1").mkdir(parents=True)
    (q / ".2.tmp-0123abcd").mkdir()
    (seg / OBJECTS_DIR / ".vid000_2.tmp-abcdef01").mkdir()
    removed = remove_stale_outputs(seg)
    assert sorted(removed) == [f"{OBJECTS_DIR}/.vid000_2.tmp-abcdef01", f"{OBJECTS_DIR}/vid000_1/.2.tmp-0123abcd"]
    assert (q / "1").is_dir()


def test_object_matching_by_hand(tmp_path: Path) -> None:
    """A 2-object expression against hand-made predictions: J per pair is the mean over the
    frames of the per-frame IoU (both empty: 1)."""
    root = make_synthetic_mevis(tmp_path / "m", n_videos=1, n_frames=4)
    q = next(q for q in load_mevis(root) if q.id == "vid000_1")
    a, b = q.extra["anno_ids"]
    d1, d2 = tmp_path / "p1", tmp_path / "p2"
    for d, anno in ((d1, b), (d2, a)):  # predicted in the other order: the pairs swap
        d.mkdir()
        for i, name in enumerate(q.extra["frames"]):
            m = object_mask(q, anno, i)
            if d is d2 and i == 0:
                m = np.zeros_like(m)  # object a missed on frame 0: J = 3/4 (frame 0 IoU 0)
            cv2.imwrite(str(d / f"{name}.png"), m.astype(np.uint8) * 255)
    got = score_query_objects(q, [d1, d2])
    assert got["objects_pred"] == 2 and got["objects_gt"] == 2
    assert [p[:2] for p in got["object_pairs"]] == [[0, 1], [1, 0]]
    assert got["object_pairs"][1][2] == pytest.approx(0.75)
    assert got["object_J"] == pytest.approx((1 + 0.75) / 2)
    none = score_query_objects(q, [])
    assert none["object_J"] == 0 and none["objects_pred"] == 0


def test_okvos_results_have_no_object_numbers(tmp_path: Path) -> None:
    """Per-object numbers only where the ground truth lists objects: OK-VOS results keep
    their keys and tables."""
    make_synthetic_okvos(tmp_path / "ok", split="test", n_videos=1, n_frames=4, size=(64, 48))
    preds = write_oracle_predictions(tmp_path / "ok", "test")
    r = evaluate(EvalSpec(dataset="okvos", root=str(tmp_path / "ok"), split="test", predictions=str(preds),
                          out=str(tmp_path / "out"), segmenter="grabcut", limit=2, progress=False))
    assert "objects" not in r and all("object_J" not in q for q in r["queries"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Per object" not in md and "| group | n | J&F | J | F |\n" in md
    # neither R (ReVOS only) nor a per-object table on the page
    html = (tmp_path / "out" / "report.html").read_text()
    assert _table(html, "metrics")[0] == ["ability", "J&F", "J", "F", "n"]
    assert 'id="per-object"' not in html


def _table(html: str, cls: str) -> list[list[str]]:
    """The cells of the report's first ``<table class="cls">``, row by row, as text."""
    m = re.search(rf'<table class="{cls}">(.*?)</table>', html, re.S)
    assert m, f"no table {cls!r}"
    return [[re.sub(r"<[^>]+>", "", c).replace("&amp;", "&").strip()
             for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", m.group(1), re.S)]


def test_revos_r_column_and_object_tables_match_results_json(revos: Path, tmp_path: Path) -> None:
    """ReVOS' robustness R in the main table of results.md and of the page, each group's and
    the overall value as results.json has it; the page's per-object table per group."""
    preds = write_rvos_oracle_predictions(revos, tmp_path / "u.jsonl")
    # grabcut from one box around two objects takes in background: R below 100 somewhere
    r = evaluate(EvalSpec(dataset="revos", root=str(revos), predictions=str(preds), out=str(tmp_path / "out"),
                          segmenter="grabcut", progress=False))
    groups = {**r["by_ability"], "overall": r["overall"]}
    assert r["overall"]["R"] < 1 and r["overall"]["R"] == pytest.approx(
        (r["by_ability"]["referring"]["R"] + r["by_ability"]["reasoning"]["R"]) / 2)
    md = (tmp_path / "out" / "results.md").read_text().splitlines()
    head = md.index("| group | n | J&F | J | F | R |")
    for line, g in zip(md[head + 2:head + 5], ("referring", "reasoning", "overall"), strict=True):
        cells = [c.strip("* ") for c in line.strip("|").split("|")]
        assert cells[0] == g and cells[-1] == f"{100 * groups[g]['R']:.1f}", line
    assert md[head + 5] == "" and "R: ReVOS' robustness" in md[head + 6]
    html = (tmp_path / "out" / "report.html").read_text()
    table = _table(html, "metrics")
    assert table[0] == ["ability", "J&F", "J", "F", "R", "n"]
    assert {row[0]: row[4] for row in table[1:]} == {g: f"{100 * v['R']:.1f}" for g, v in groups.items()}
    objs = _table(html, "metrics objects")
    by = {**r["objects"]["by_ability"], "overall": r["objects"]["overall"]}
    assert [row[0] for row in objs[1:]] == ["referring", "reasoning", "overall"]
    for row in objs[1:]:
        g = by[row[0]]
        assert row[1:] == [f"{100 * g['object_J']:.1f}", f"{g['right_count']} of {g['n']}", str(g["several_gt"])]
    assert "Overall: the mean of the referring and reasoning rows" in html


def test_mevis_has_no_r_and_a_pooled_object_overall(tmp_path: Path) -> None:
    """MeViS defines no R, and its per-object overall is the mean over every expression."""
    root = make_synthetic_mevis(tmp_path / "m", n_videos=1, n_frames=4)
    preds = write_rvos_oracle_predictions(root / "valid_u", tmp_path / "o.jsonl", first_object_only=True)
    r = evaluate(EvalSpec(dataset="mevis", root=str(root), predictions=str(preds), out=str(tmp_path / "out"),
                          segmenter=UnionGroundTruthSegmenter(), progress=False))
    assert "R" not in r["overall"] and "overall_of" not in r["objects"]
    # one object of two for vid000_1..3, both single-object expressions exact
    assert r["objects"]["overall"]["object_J"] == pytest.approx((2 + 3 * 0.5) / 5)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| group | n | J&F | J | F |\n" in md and "| R |" not in md and "robustness" not in md
    assert "| **overall** | 5 | 70.0 | 2 of 5 | 3 |" in md and "Overall: the mean over every expression." in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert _table(html, "metrics")[0] == ["ability", "J&F", "J", "F", "n"] and "robustness" not in html
    assert _table(html, "metrics objects")[-1] == ["overall", "70.0", "2 of 5", "3"]


def test_cli_eval_revos_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "revos"
    assert main(["data", "revos", "--root", str(root), "--synthetic", "--videos", "1"]) == 0
    both = write_rvos_oracle_predictions(root, tmp_path / "b.jsonl", per_object=True)
    one = write_rvos_oracle_predictions(root, tmp_path / "o.jsonl", first_object_only=True)
    capsys.readouterr()
    # the CLI's grabcut stands in for the ground-truth segmenter (which has no CLI name),
    # so the scores are known exactly; everything else runs as typed
    real = spec_module.get_segmenter
    monkeypatch.setattr(spec_module, "get_segmenter",
                        lambda name, **kw: UnionGroundTruthSegmenter() if name == "grabcut" else real(name, **kw))
    results = {}
    for name, preds in (("both", both), ("one", one)):
        rc = main(["eval", "revos", "--root", str(root), "--predictions", str(preds), "--out",
                   str(tmp_path / name), "--segmenter", "grabcut", "--no-progress", "--no-html"])
        assert rc == 0, capsys.readouterr()
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    b = {q["id"]: q for q in results["both"]["queries"]}
    o = {q["id"]: q for q in results["one"]["queries"]}
    assert results["both"]["overall"]["J&F"] == pytest.approx(1.0)
    assert all(b[q]["object_J"] == pytest.approx(1.0) and o[q]["object_J"] == pytest.approx(0.5) for q in TWO)
    assert "## Per object" in (tmp_path / "one" / "results.md").read_text()


def test_cli_grabcut_tracks_each_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real segmenter through the CLI: two objects tracked apart, their union scored,
    overlays drawn per object."""
    root = make_synthetic_revos(tmp_path / "revos", n_videos=1)
    preds = write_rvos_oracle_predictions(root, tmp_path / "b.jsonl", per_object=True)
    rc = main(["eval", "revos", "--root", str(root), "--predictions", str(preds), "--out",
               str(tmp_path / "out"), "--segmenter", "grabcut", "--limit", "2", "--overlays",
               "--no-progress", "--no-html"])
    assert rc == 0, capsys.readouterr()
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    q = next(q for q in r["queries"] if q["id"] == "vid000_1")
    assert q["objects_pred"] == 2 and 0 < q["object_J"] <= 1 and 0 < q["J&F"] <= 1
    objs = tmp_path / "out" / "seg" / OBJECTS_DIR / "vid000_1"
    assert sorted(p.name for p in objs.iterdir()) == ["1", "2"]
    assert len(list((objs / "1").glob("*.png"))) == 8
    assert (tmp_path / "out" / "overlays" / "vid000_1.mp4").stat().st_size > 0
