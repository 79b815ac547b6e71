"""MeViS and ReVOS: COCO RLE, the readers (union of an expression's objects) and
evaluation end to end on the synthetic sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segresearch.cli import main
from segresearch.core.rle import RLEError, decode, encode, runs_from_string, runs_to_string
from segresearch.eval.datasets import DatasetError
from segresearch.eval.runner import evaluate
from segresearch.eval.rvos import load_mevis, load_revos, revos_overall, union_mask
from segresearch.eval.spec import EvalSpec
from segresearch.testing.rvos import (
    UnionGroundTruthSegmenter,
    make_synthetic_mevis,
    make_synthetic_revos,
    write_rvos_oracle_predictions,
)
from segresearch.testing.scenes import DEFAULT_SHAPES, render_scene

# ---------------------------------------------------------------------- RLE


def test_rle_known_masks() -> None:
    # columns first: column 0 is (0, 0), column 1 (1, 1), column 2 (0, 1) → runs 2, 2, 1, 1;
    # the fourth run is written as its difference to the second (-1 → one character "O")
    m = np.array([[0, 1, 0], [0, 1, 1]], bool)
    assert encode(m) == {"size": [2, 3], "counts": "221O"}
    assert runs_from_string("221O") == [2, 2, 1, 1]
    np.testing.assert_array_equal(decode({"size": [2, 3], "counts": "221O"}), m)
    # an empty 10x10 mask is one run of 100: groups 4 (+0x20: more follows) and 3 → "T3"
    assert encode(np.zeros((10, 10), bool))["counts"] == "T3"
    # a mask whose first pixel is set starts with a run of 0 background pixels
    full = np.ones((2, 2), bool)
    assert runs_from_string(encode(full)["counts"]) == [0, 4]
    # uncompressed RLE (a list of runs) decodes the same way
    np.testing.assert_array_equal(decode({"size": [2, 3], "counts": [2, 2, 1, 1]}), m)


def test_rle_round_trip_random_masks() -> None:
    rng = np.random.default_rng(0)
    for h, w, p in ((1, 1, 0.5), (7, 13, 0.5), (64, 48, 0.02), (64, 48, 0.98), (200, 3, 0.3)):
        m = rng.random((h, w)) < p
        np.testing.assert_array_equal(decode(encode(m)), m)
    runs = [0, 5, 70000, 3, 1, 123456, 2]  # large runs and differences of both signs
    assert runs_from_string(runs_to_string(runs)) == runs


def test_rle_refuses_wrong_sizes() -> None:
    with pytest.raises(RLEError, match="cover 4 pixels"):
        decode({"size": [3, 3], "counts": [2, 2]})
    with pytest.raises(RLEError, match="size"):
        decode({"counts": "T3"})


# ---------------------------------------------------------------------- readers


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rvos")
    return {"mevis": make_synthetic_mevis(root / "mevis"), "revos": make_synthetic_revos(root / "revos")}


def test_mevis_reader_unions_the_objects(sets: dict[str, Path]) -> None:
    queries = load_mevis(sets["mevis"], "valid_u")
    assert len(queries) == 10  # 2 videos x 5 expressions
    q = next(q for q in queries if q.id == "vid001_1")
    assert q.question == "the two shapes in the top row" and q.kind == "video"
    assert len(q.media) == 8 and Path(q.segment_media).name == "vid001"
    assert len(q.extra["anno_ids"]) == 2
    # the ground truth drawn again by the scene renderer: red circle ∪ yellow star
    _, masks = render_scene(n_frames=8, size=(96, 64), shapes=DEFAULT_SHAPES, seed=1)
    for i in (0, 7):
        want = masks["red circle"][i] | masks["yellow star"][i]
        got = union_mask(q, i)
        np.testing.assert_array_equal(got, want)
        assert got.sum() > masks["red circle"][i].sum()  # both objects count
    assert load_mevis(sets["mevis"], "valid_u", limit=3)[-1].id == "vid000_2"


def test_revos_reader_groups(sets: dict[str, Path]) -> None:
    queries = load_revos(sets["revos"])
    by = {q.id: q.ability for q in queries}
    assert by["vid000_0"] == "referring" and by["vid000_3"] == "reasoning"
    assert sum(a == "reasoning" for a in by.values()) == 4


def test_revos_overall_leaves_out_no_target_expressions() -> None:
    rows = {"referring": {"J": 0.6, "F": 0.8, "J&F": 0.7, "n": 3},
            "reasoning": {"J": 0.2, "F": 0.4, "J&F": 0.3, "n": 1},
            "no-target": {"J": 1.0, "F": 1.0, "J&F": 1.0, "n": 5}}
    assert revos_overall(rows) == pytest.approx({"J": 0.4, "F": 0.6, "J&F": 0.5, "n": 4})
    assert revos_overall({"no-target": rows["no-target"]}) is None


def test_reader_refuses_unknown_annotation(sets: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "valid_u"
    base.mkdir()
    (base / "JPEGImages").symlink_to(sets["mevis"] / "valid_u" / "JPEGImages")
    (base / "mask_dict.json").write_text(json.dumps({"0": [None] * 8}))
    meta = {"videos": {"vid000": {"frames": [f"{i:05d}" for i in range(8)],
                                  "expressions": {"0": {"exp": "x", "obj_id": [0], "anno_id": [0, 9]}}}}}
    (base / "meta_expressions.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="annotation 9 not in"):
        load_mevis(tmp_path, "valid_u")
    (base / "mask_dict.json").write_text(json.dumps({"0": [None] * 8, "9": [None] * 3}))
    with pytest.raises(DatasetError, match="has 3 frame masks"):
        load_mevis(tmp_path, "valid_u")


# ---------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("dataset", ["mevis", "revos"])
def test_eval_scores_the_union(sets: dict[str, Path], tmp_path: Path, dataset: str) -> None:
    base = sets[dataset] / "valid_u" if dataset == "mevis" else sets[dataset]
    split = "valid_u" if dataset == "mevis" else None
    scores = {}
    for first_only in (False, True):
        preds = write_rvos_oracle_predictions(base, tmp_path / f"p{first_only}.jsonl",
                                              first_object_only=first_only)
        spec = EvalSpec(dataset=dataset, root=str(sets[dataset]), split=split, predictions=str(preds),
                        out=str(tmp_path / f"out{first_only}"), segmenter=UnionGroundTruthSegmenter(),
                        progress=False, html=False)
        scores[first_only] = evaluate(spec)
    perfect, partial = scores[False], scores[True]
    assert perfect["overall"]["J&F"] == pytest.approx(1.0) and perfect["overall"]["n"] == 10
    assert partial["overall"]["J&F"] < 0.9
    # single-object expressions still score 1 with the first object alone; the pairs do not
    per = {q["id"]: q["J&F"] for q in partial["queries"]}
    assert per["vid000_0"] == pytest.approx(1.0) and per["vid000_1"] < 0.9
    md = (tmp_path / "outTrue" / "results.md").read_text()
    if dataset == "revos":
        assert list(perfect["by_ability"]) == ["referring", "reasoning"]
        # overall is the mean of the two rows (the official script), not of all expressions
        rows = partial["by_ability"]
        assert partial["overall"]["J&F"] == pytest.approx((rows["referring"]["J&F"] + rows["reasoning"]["J&F"]) / 2)
        assert rows["referring"]["n"] == 6 and rows["reasoning"]["n"] == 4
        assert "| referring J | referring F | referring J&F | reasoning J |" in md
        # robustness R: the oracles put no mask outside the expression's objects
        assert perfect["overall"]["R"] == pytest.approx(1.0) and partial["overall"]["R"] == pytest.approx(1.0)
        assert all(q["R"] == pytest.approx(1.0) for q in partial["queries"])
        assert "| overall J&F | R |" in md
    else:
        assert "As the ReVOS paper" not in md


def test_cli_eval_revos(sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds = write_rvos_oracle_predictions(sets["revos"], tmp_path / "p.jsonl")
    rc = main(["eval", "revos", "--root", str(sets["revos"]), "--predictions", str(preds),
               "--out", str(tmp_path / "out"), "--segmenter", "grabcut", "--limit", "2",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dataset"]["name"] == "revos" and results["overall"]["n"] == 2
    assert 0 < results["overall"]["J&F"] <= 1
    assert "revos" in out and "| referring |" in out
    # the paper's layout is printed last, after the summary and the result files
    tail = out[out.index("results: "):]
    assert "## As the paper prints it" in tail and out.count("## As the paper prints it") == 1
    ours = next(line for line in tail.splitlines() if line.startswith("| ours |"))
    assert len(ours.split("|")) == 13 and 0 <= results["overall"]["R"] <= 1  # 10 columns + label
    # the report draws the ground truth (the union of the RLE annotations) beside the masks
    assert len(list((tmp_path / "out").rglob("*_gt.jpg"))) == 2


def test_cli_data_writes_and_checks_a_synthetic_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "mevis", "--root", str(tmp_path / "m"), "--synthetic", "--videos", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 videos, 5 expressions (referring 5); 3 refer to several objects" in out
    assert (tmp_path / "m" / "valid_u" / "mask_dict.json").is_file()
    assert len((tmp_path / "m" / "oracle_predictions.jsonl").read_text().splitlines()) == 5
    assert main(["data", "revos", "--root", str(tmp_path / "nothing")]) != 0
    assert "revos expressions not found" in capsys.readouterr().err
