"""The other benchmarks' scoring against hand-computed numbers: ReVOS' robustness R and
J&F on the union of an expression's objects as the official scripts compute them,
ReasonSeg's released layout read as its evaluation reads it, and each benchmark's table
in its paper's column order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segresearch.core.rle import encode
from segresearch.eval.datasets import DatasetError, image_ground_truth, load_image_set
from segresearch.eval.paper_table import layout, metrics_for, read_paper_table
from segresearch.eval.results import paper_layout_markdown
from segresearch.eval.rvos import foreground_mask, load_revos, revos_overall, robustness
from segresearch.eval.scoring import aggregate, object_groups, score_image_query, score_video_query

# ---------------------------------------------------------------------- ReVOS: R and J&F


def test_robustness_by_hand() -> None:
    gt = np.zeros((2, 4, 4), bool)
    fg = np.zeros((2, 4, 4), bool)
    pred = np.zeros((2, 4, 4), bool)
    # frame 0: foreground 4 pixels, the prediction has 1 pixel outside the ground truth
    gt[0, 0, :2] = True
    fg[0, 0, :4] = True
    pred[0, 0, 1:3] = True
    # frame 1: foreground 2 pixels, 3 predicted pixels outside the ground truth: floored at 0
    fg[1, 3, :2] = True
    pred[1, 2, :3] = True
    r = robustness(gt, pred, fg)
    assert r == pytest.approx([1 - 1 / 4, 0.0])
    # 0/255 masks are masks (the official script would weigh such a pixel 255 times)
    assert robustness(gt.astype(np.uint8), pred.astype(np.uint8) * 255, fg) == pytest.approx(r)


def _square(mask: np.ndarray, y: int, x: int) -> np.ndarray:
    mask[y:y + 4, x:x + 4] = True
    return mask


@pytest.fixture()
def tiny_revos(tmp_path: Path) -> Path:
    """One video, 2 frames of 20x20: objects A, B, C (4x4 squares far apart; C only in
    frame 0); expression 0 (referring) names A and B, expression 1 (reasoning) names A."""
    root = tmp_path / "revos"
    (root / "JPEGImages" / "v").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(root / "JPEGImages" / "v" / f"{i:05d}.jpg"), np.zeros((20, 20, 3), np.uint8))
    a = _square(np.zeros((20, 20), bool), 2, 2)
    b = _square(np.zeros((20, 20), bool), 12, 12)
    c = _square(np.zeros((20, 20), bool), 2, 12)
    masks = {"0": [encode(a), encode(a)], "1": [encode(b), encode(b)], "2": [encode(c), None]}
    meta = {"videos": {"v": {"frames": ["00000", "00001"], "expressions": {
        "0": {"exp": "the two squares on the diagonal", "obj_id": [0, 1], "anno_id": [0, 1], "type_id": 0},
        "1": {"exp": "the top left square", "obj_id": [0], "anno_id": [0], "type_id": 1},
        "2": {"exp": "the top right square", "obj_id": [2], "anno_id": [2], "type_id": 0}}}}}
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(json.dumps(masks))
    return root


def _write_pred(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, m in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.png"), m.astype(np.uint8) * 255)
    return folder


def test_union_j_and_f_and_r_by_hand(tiny_revos: Path, tmp_path: Path) -> None:
    queries = {q.id: q for q in load_revos(tiny_revos, limit=2)}
    # the foreground is every object of the video, even of an expression --limit left out
    assert queries["v_0"].extra["video_anno_ids"] == [0, 1, 2]
    assert int(foreground_mask(queries["v_0"], 0).sum()) == 48
    assert int(foreground_mask(queries["v_0"], 1).sum()) == 32
    a = _square(np.zeros((20, 20), bool), 2, 2)
    c = _square(np.zeros((20, 20), bool), 2, 12)
    # expression 0 (A ∪ B) answered with A alone on both frames. J = 16 / 32. Boundaries:
    # A's and B's maps have the same number of pixels (the same shape), every predicted one
    # lies on the ground truth's (precision 1) and half of the ground truth's are found
    # (recall 1/2): F = 2 · 1 · 0.5 / 1.5 = 2/3. Nothing predicted outside: R = 1.
    s0 = score_video_query(queries["v_0"], _write_pred(tmp_path / "p0", [a, a]))
    assert s0["J"] == pytest.approx(0.5) and s0["F"] == pytest.approx(2 / 3)
    assert s0["J&F"] == pytest.approx(7 / 12) and s0["R"] == pytest.approx(1.0)
    # expression 1 (A) answered with A ∪ C on frame 0 and A on frame 1: frame 0 has J 1/2,
    # 16 pixels outside A against a foreground of 48 → R 2/3; frame 1 is exact → R 1.
    s1 = score_video_query(queries["v_1"], _write_pred(tmp_path / "p1", [a | c, a]))
    assert s1["J"] == pytest.approx((0.5 + 1) / 2)
    assert s1["R"] == pytest.approx((2 / 3 + 1) / 2)
    # a missing prediction folder is empty masks here (the official scripts score 0):
    # J = F = 0 on frames where the objects are visible, 1 where none is
    s2 = score_video_query(queries["v_1"], None)
    assert s2["J"] == 0.0 and s2["F"] == 0.0 and s2["R"] == pytest.approx(1.0)

    # the groups and overall as ReVOS' script averages them: overall = mean of the rows
    entries = [{"ability": "referring", **s0}, {"ability": "reasoning", **s1}]
    agg = aggregate(entries, "video", ("referring", "reasoning"))
    overall = revos_overall(agg["by_ability"])
    assert overall is not None
    assert overall["R"] == pytest.approx((1 + 5 / 6) / 2)
    assert overall["J&F"] == pytest.approx((7 / 12 + (0.75 + s1["F"]) / 2) / 2)
    results = {"dataset": {"name": "revos"}, "by_ability": agg["by_ability"], "overall": overall}
    md = paper_layout_markdown(results)
    head = md.splitlines()[2]
    assert head == ("| | referring J | referring F | referring J&F | reasoning J | reasoning F | "
                    "reasoning J&F | overall J | overall F | overall J&F | R |")
    ours = md.splitlines()[4].split(" | ")
    assert ours[1:4] == ["50.0", "66.7", "58.3"] and ours[-1].rstrip(" |") == "91.7"


def test_revos_object_overall_is_the_mean_of_its_two_rows() -> None:
    """ReVOS' per-object overall as its J&F overall: the mean of the referring and reasoning
    rows (counts summed), expressions of other types in neither; MeViS pools every query."""
    def q(ability: str, j: float, pred: int, gt: int) -> dict[str, Any]:
        return {"ability": ability, "object_J": j, "objects_pred": pred, "objects_gt": gt}

    entries = [q("referring", 1.0, 1, 1), q("referring", 0.5, 1, 2), q("referring", 0.0, 0, 2),
               q("reasoning", 0.75, 2, 2), q("no-target", 0.0, 1, 0)]
    groups = ("referring", "reasoning")
    revos = object_groups(entries, groups, overall_of=groups)
    assert revos is not None and revos["overall_of"] == ["referring", "reasoning"]
    assert revos["overall"] == {"object_J": pytest.approx((0.5 + 0.75) / 2), "right_count": 2,
                                "several_gt": 3, "n": 4}
    assert list(revos["by_ability"]) == ["referring", "reasoning", "no-target"]
    pooled = object_groups(entries, groups)
    assert pooled is not None and "overall_of" not in pooled
    assert pooled["overall"]["object_J"] == pytest.approx(2.25 / 5) and pooled["overall"]["n"] == 5
    # one of the two groups only (a --limit run): that group's row
    one = object_groups(entries[:3], groups, overall_of=groups)
    assert one is not None and one["overall"] == one["by_ability"]["referring"]


def test_revos_paper_table_takes_r(tmp_path: Path) -> None:
    assert metrics_for("revos") == ("J&F", "J", "F", "R") and "R" not in metrics_for("mevis")
    p = tmp_path / "visa.csv"
    p.write_text("group,J,F,J&F,R\nreferring,55.6,61.9,58.8,\nreasoning,42.0,46.7,44.3,\n"
                 "overall,48.8,54.3,51.5,14.5\n")
    table = read_paper_table(p, "revos").match_groups(["referring", "reasoning"])
    assert table.rows["overall"]["R"] == pytest.approx(0.145)
    results = {"dataset": {"name": "revos"}, "paper": table.to_json(),
               "by_ability": {"referring": {"J": 0.5, "F": 0.6, "J&F": 0.55},
                              "reasoning": {"J": 0.4, "F": 0.5, "J&F": 0.45}},
               "overall": {"J": 0.45, "F": 0.55, "J&F": 0.5, "R": 0.2}}
    lines = paper_layout_markdown(results).splitlines()
    assert lines[5] == ("| paper | 55.6 | 61.9 | 58.8 | 42.0 | 46.7 | 44.3 | 48.8 | 54.3 | 51.5 | 14.5 |")
    assert lines[6].endswith("| +5.5 |") and lines[6].startswith("| Δ | -5.6 |")


def test_mevis_and_okvos_layouts() -> None:
    mevis = {"dataset": {"name": "mevis"}, "overall": {"J": 0.4, "F": 0.5, "J&F": 0.45}}
    assert [h for h, _, _ in layout(mevis)] == ["J", "F", "J&F"]
    assert paper_layout_markdown(mevis).splitlines()[4] == "| ours | 40.0 | 50.0 | 45.0 |"
    assert layout({"dataset": {"name": "okvos"}}) == [] and paper_layout_markdown({"dataset": {"name": "okvos"}}) == ""


# ---------------------------------------------------------------------- ReasonSeg


def _reasonseg_image(folder: Path, name: str, texts: list[str], is_sentence: bool,
                     shapes: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{name}.jpg"), np.full((30, 40, 3), 100, np.uint8))
    (folder / f"{name}.json").write_text(json.dumps({"text": texts, "is_sentence": is_sentence,
                                                     "shapes": shapes}))


def _rect(label: str, x1: float, y1: float, x2: float, y2: float) -> dict[str, Any]:
    return {"label": label, "points": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]], "shape_type": "polygon"}


@pytest.fixture()
def reasonseg(tmp_path: Path) -> Path:
    """The release's layout: ROOT/{train,val,test}/<name>.jpg + <name>.json."""
    root = tmp_path / "ReasonSeg"
    _reasonseg_image(root / "train", "t", ["x"], False, [_rect("target", 0, 0, 5, 5)])
    # two target polygons (unioned), an ignore polygon over part of one, a flag polygon
    _reasonseg_image(root / "val", "a", ["the two boxes", "both boxes"], True, [
        _rect("target", 0, 0, 9.9, 9.9), _rect("target", 20, 0, 29, 9),
        _rect("ignore", 0, 0, 4, 9), _rect("flag", 0, 20, 39, 29)])
    _reasonseg_image(root / "val", "b", ["the box"], False, [_rect("target", 10, 10, 19, 19)])
    return root


def test_reasonseg_release_layout(reasonseg: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds the ReasonSeg splits train, val: pass one"):
        load_image_set(reasonseg)
    qs = load_image_set(reasonseg / "val")
    # one query per image, its first text, as the released validation scores the set
    assert [(q.id, q.question, q.ability) for q in qs] == [
        ("a#0", "the two boxes", "long"), ("b#0", "the box", "short")]
    assert [q.id for q in load_image_set(reasonseg / "val", all_texts=True)] == ["a#0", "a#1", "b#0"]
    target, ignore = image_ground_truth(qs[0], 30, 40)
    assert ignore is not None and int(ignore.sum()) == 5 * 10  # x 0..4, y 0..9
    # 9.9 is truncated to 9 (the release casts vertices to int32): x 5..9 and the second box
    assert int(target.sum()) == 5 * 10 + 10 * 10
    assert not target[20:].any()  # the flag polygon is not an object

    # IoU with the ignore pixels left out: predict the first box whole and nothing else
    pred = np.zeros((30, 40), np.uint8)
    pred[0:10, 0:10] = 255
    seg = tmp_path / "seg"
    seg.mkdir()
    cv2.imwrite(str(seg / "a.png"), pred)
    s = score_image_query(qs[0], seg)
    assert (s["intersection"], s["union"]) == (50, 150) and s["IoU"] == pytest.approx(1 / 3)


def test_reasonseg_layout_by_split_and_query_length() -> None:
    val = {"dataset": {"name": "images", "split": None}, "settings": {"root": "/d/ReasonSeg/val"},
           "by_ability": {"long": {"gIoU": 0.5, "cIoU": 0.4}}, "overall": {"gIoU": 0.61, "cIoU": 0.55}}
    assert [h for h, _, _ in layout(val)] == ["val gIoU", "val cIoU"]
    assert paper_layout_markdown(val).splitlines()[4] == "| ours | 61.0 | 55.0 |"
    test = {"dataset": {"name": "images", "split": "test"}, "settings": {"root": "/d/x"},
            "by_ability": {"short": {"gIoU": 0.4, "cIoU": 0.3}, "long": {"gIoU": 0.6, "cIoU": 0.5}},
            "overall": {"gIoU": 0.55, "cIoU": 0.45}}
    assert [h for h, _, _ in layout(test)] == [
        "test short gIoU", "test short cIoU", "test long gIoU", "test long cIoU",
        "test overall gIoU", "test overall cIoU"]
