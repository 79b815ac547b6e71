"""Answers that name several objects: the reward's union and per-object reading, the
ground truth it reads, and the one-to-one matching behind both."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segresearch.core.matching import mask_iou, match_objects
from segresearch.rl.ground_truth import build_ground_truth
from segresearch.rl.reward import COMPONENTS, compute_score

LEFT = {"bbox_2d": [100, 100, 199, 199], "point_2d": [150, 150]}
RIGHT = {"bbox_2d": [400, 100, 499, 199], "point_2d": [450, 150]}
UNION = {"bbox_2d": [100, 100, 499, 199], "point_2d": [150, 150], "area": 1.0, "max_conn_area": 0.5}
GT_OBJECTS = json.dumps({"5": {**UNION, "objects": [LEFT, RIGHT]}})
GT_PUBLISHED = json.dumps({"5": UNION})


def tags(answer: object) -> str:
    return ("<thinking>look</thinking>\n<keyframe> 5 </keyframe>\n"
            f"<thinking>both</thinking>\n<answer>{json.dumps(answer)}</answer>")


def tool_calls(args: dict) -> str:
    return ('<tool_call>{"name": "keyframe", "arguments": {"index": 5}}</tool_call>\n'
            f'<tool_call>{json.dumps({"name": "answer", "arguments": args})}</tool_call>')


def test_both_objects_found_score_like_one_perfect_answer():
    r = compute_score("d", tags([LEFT, RIGHT]), GT_OBJECTS)
    assert r["iou_score"] == r["box_l1_score"] == r["point_l1_score"] == r["format_score"] == 1.0
    assert r["object_iou"] == 1.0 and r["objects_named"] == 2.0
    assert r["score"] == pytest.approx(1 + 1 + 1 + 0.5 + 1)
    swapped = compute_score("d", tags([RIGHT, {**LEFT, "label": "left one"}]), GT_OBJECTS)
    assert {k: swapped[k] for k in COMPONENTS} == {k: r[k] for k in COMPONENTS}  # order does not matter


def test_one_of_two_objects_misses_the_union_and_half_the_pairs():
    r = compute_score("d", tags([LEFT]), GT_OBJECTS)
    # the box around one object against the union's box: IoU 100/400 = 0.25 < 0.5
    assert r["iou_score"] == 0.0 and r["box_l1_score"] == 0.0
    assert r["point_l1_score"] == 0.5 and r["object_iou"] == 0.5 and r["objects_named"] == 1.0
    # a single published object is read as a one-object list where the truth lists objects
    single = compute_score("d", tags(LEFT), GT_OBJECTS)
    assert single["object_iou"] == 0.5 and single["format_score"] == 1.0


def test_an_extra_object_costs_its_share():
    extra = {"bbox_2d": [700, 700, 799, 799], "point_2d": [750, 750]}
    r = compute_score("d", tags([LEFT, RIGHT, extra]), GT_OBJECTS)
    assert r["object_iou"] == pytest.approx(2 / 3) and r["point_l1_score"] == pytest.approx(2 / 3)
    assert r["iou_score"] == 0.0  # the box around all three no longer fits the union


def test_without_object_truth_a_list_is_read_as_published():
    r = compute_score("d", tags([LEFT, RIGHT]), GT_PUBLISHED)
    assert r["iou_score"] == r["box_l1_score"] == r["point_l1_score"] == r["keyframe_score"] == 0.0
    assert r["format_score"] == 0.0
    assert "object_iou" not in r and set(COMPONENTS) | {"score", "num_search"} == set(r)


def test_malformed_objects_earn_nothing():
    bad = [LEFT, {"bbox_2d": [1, 2, 3], "point_2d": [1, 1]}]
    r = compute_score("d", tags(bad), GT_OBJECTS)
    assert r["iou_score"] == r["point_l1_score"] == r["format_score"] == r["object_iou"] == 0.0
    other_key = [LEFT, {**RIGHT, "mask": 1}]
    assert compute_score("d", tags(other_key), GT_OBJECTS)["format_score"] == 0.0


def test_tool_call_answers_name_objects_in_a_list():
    r = compute_score("d", tool_calls({"keyframe": 5, "objects": [LEFT, RIGHT]}), GT_OBJECTS,
                      {"protocol": "tools"})
    assert r["iou_score"] == r["point_l1_score"] == r["format_score"] == r["object_iou"] == 1.0
    one = compute_score("d", tool_calls({"keyframe": 5, **RIGHT}), GT_OBJECTS, {"protocol": "tools"})
    assert one["object_iou"] == 0.5 and one["format_score"] == 1.0
    plain = compute_score("d", tool_calls({"keyframe": 5, "objects": [LEFT, RIGHT]}), GT_PUBLISHED,
                          {"protocol": "tools"})
    assert plain["iou_score"] == plain["format_score"] == 0.0 and "object_iou" not in plain


def test_ground_truth_lists_each_object_present_on_a_frame():
    a = np.zeros((100, 200), bool)
    b = np.zeros((100, 200), bool)
    a[10:30, 10:50] = True
    b[50:90, 120:180] = True
    gt = build_ground_truth({"0": a | b, "1": a}, "qwen3", 448,
                            object_masks={"0": [a, b], "1": [a, np.zeros_like(b)]})
    assert [o["bbox_2d"] for o in gt["0"]["objects"]] == [
        build_ground_truth({"0": a})["0"]["bbox_2d"], build_ground_truth({"0": b})["0"]["bbox_2d"]]
    assert len(gt["1"]["objects"]) == 1  # an object absent from a frame is not listed there
    assert "objects" not in build_ground_truth({"0": a | b})["0"]


def test_matching_pairs_for_the_largest_total_iou():
    m = match_objects([[0.6, 0.5], [0.55, 0.0]])  # greedy would take 0.6 and leave 0.0
    assert sorted(m.pairs) == [(0, 1, 0.5), (1, 0, 0.55)]
    assert m.mean_iou == pytest.approx(0.525)
    wide = match_objects([[0.0, 0.9, 0.0]])
    assert wide.pairs == ((0, 1, 0.9),) and wide.mean_iou == pytest.approx(0.3)
    assert match_objects(np.zeros((0, 2))).mean_iou == 0.0
    assert match_objects(np.zeros((0, 0))).mean_iou == 1.0
    assert match_objects([[0.0]]).pairs == ()
    with pytest.raises(ValueError):
        match_objects([[float("nan")]])
    x = np.zeros((4, 4), bool)
    y = x.copy()
    x[:2] = True
    y[1:] = True
    assert mask_iou(x, y) == pytest.approx(4 / 16) and mask_iou(~x & x, ~y & y) == 1.0
