"""MeViS / ReVOS → verl parquet: one row per expression in the OK-VOS rows' schema, ground
truth listing every object per frame, the reward on several-object answers, the CLI,
determinism, skipped expressions without a target, and what the agent loop reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from segresearch.cli import main
from segresearch.core.coords import CoordFrame
from segresearch.eval.datasets import DatasetError
from segresearch.eval.rvos import load_mevis, load_revos, object_mask
from segresearch.rl.data import conversion_info, convert_okvos, convert_rvos
from segresearch.rl.reward import compute_score
from segresearch.testing.okvos import make_synthetic_okvos
from segresearch.testing.rvos import EXPRESSIONS, make_synthetic_mevis, make_synthetic_revos
from segresearch.testing.scenes import mask_box

N_FRAMES = 8  # frames per synthetic video
SAMPLED = [0, 1, 2, 4, 5, 7]  # floor(linspace(0, 7, 6))


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rvos_rl")
    return {"revos": make_synthetic_revos(root / "revos", n_frames=N_FRAMES),
            "mevis": make_synthetic_mevis(root / "mevis", split="train", n_frames=N_FRAMES)}


@pytest.fixture(scope="module")
def rows(sets) -> dict[str, pd.DataFrame]:
    return {"revos": pd.read_parquet(convert_rvos("revos", sets["revos"], progress=False)),
            "mevis": pd.read_parquet(convert_rvos("mevis", sets["mevis"], "train", progress=False))}


def _gt(row: pd.Series) -> dict:
    return json.loads(row["reward_model"]["ground_truth"])


def _tags(fid: str, answer: object) -> str:
    return (f"<thinking>both are there</thinking>\n<keyframe> {fid} </keyframe>\n"
            f"<thinking>found them</thinking>\n<answer>{json.dumps(answer)}</answer>")


def test_schema_is_the_okvos_rows_schema(sets, rows, tmp_path):
    make_synthetic_okvos(tmp_path, "test", n_videos=1)
    okvos = pq.read_schema(convert_okvos(tmp_path, "test", limit=2, progress=False))
    ours = pq.read_schema(sets["revos"] / "verl" / "revos_valid.parquet")
    assert ours.remove_metadata() == okvos.remove_metadata()


def test_one_row_per_expression_named_by_benchmark(sets, rows):
    df = rows["revos"]
    queries = load_revos(sets["revos"])
    assert len(df) == len(queries) == 2 * len(EXPRESSIONS)
    assert set(df["data_source"]) == {"Search_RVOS_revos_referring", "Search_RVOS_revos_reasoning"}
    assert set(rows["mevis"]["data_source"]) == {"Search_RVOS_mevis_referring"}
    assert (df["agent_name"] == "seg_research_agent").all()
    for (_, row), q in zip(df.iterrows(), queries, strict=True):
        info = row["extra_info"]
        assert info["id"] == q.id and info["question"] == q.question == row["prompt"][0]["content"]
        assert info["oid"] == ",".join(map(str, q.extra["obj_ids"])) and info["split"] == "valid"
        # the validation split is sampled exactly as the rollout samples: floor(linspace)
        assert [int(f) for f in info["frame_ids"]] == SAMPLED
        assert [Path(p).name for p in info["frames"]] == [f"{i:05d}.jpg" for i in SAMPLED]
        assert all(Path(p).is_file() for p in info["frames"])
    info = conversion_info(sets["revos"] / "verl" / "revos_valid.parquet")
    assert (info["dataset"], info["rows"], info["skipped_no_target_expressions"]) == ("revos", 10, 0)


@pytest.mark.parametrize("kind", ["revos", "mevis"])
def test_every_frame_lists_the_objects_present_there(sets, rows, kind):
    queries = {q.id: q for q in (load_revos(sets["revos"]) if kind == "revos"
                                 else load_mevis(sets["mevis"], "train"))}
    for _, row in rows[kind].iterrows():
        q = queries[row["extra_info"]["id"]]
        gt = _gt(row)
        assert gt
        for fid, entry in gt.items():
            present = [a for a in q.extra["anno_ids"] if object_mask(q, a, int(fid)).any()]
            assert len(entry["objects"]) == len(present) >= 1  # one-object expressions list it too
    # by hand: "the two shapes in the top row" on frame 4 lists each shape's own box and a point in it
    row = rows[kind][rows[kind]["extra_info"].map(lambda i: i["id"] == "vid000_1")].iloc[0]
    q = queries["vid000_1"]
    entry = _gt(row)["4"]
    coords = CoordFrame.of("qwen3", 448)
    for a, obj in zip(q.extra["anno_ids"], entry["objects"], strict=True):
        m = object_mask(q, a, 4)
        h, w = m.shape
        assert obj["bbox_2d"] == coords.from_px(mask_box(m), w, h)
        x, y = (round(v / 1000 * s) for v, s in zip(obj["point_2d"], (w, h), strict=True))
        assert m[min(y, h - 1), min(x, w - 1)]
    union = object_mask(q, q.extra["anno_ids"][0], 4) | object_mask(q, q.extra["anno_ids"][1], 4)
    assert entry["bbox_2d"] == coords.from_px(mask_box(union), *union.shape[::-1])


def test_reward_on_both_objects_and_on_one(rows):
    df = rows["revos"]
    row = df[df["extra_info"].map(lambda i: i["id"] == "vid000_1")].iloc[0]
    info = dict(row["extra_info"])
    gt = _gt(row)
    fid = max(gt, key=lambda f: (len(gt[f]["objects"]), gt[f]["max_conn_area"]))
    objects = [{"bbox_2d": o["bbox_2d"], "point_2d": o["point_2d"]} for o in gt[fid]["objects"]]
    assert len(objects) == 2
    both = compute_score(row["data_source"], _tags(fid, objects), row["reward_model"]["ground_truth"], info)
    assert both["iou_score"] == both["box_l1_score"] == both["point_l1_score"] == 1.0
    assert both["object_iou"] == 1.0 and both["objects_named"] == 2.0 and both["format_score"] == 1.0
    one = compute_score(row["data_source"], _tags(fid, objects[:1]), row["reward_model"]["ground_truth"], info)
    assert one["object_iou"] == 0.5 and one["iou_score"] == 0.0
    # a one-object expression: the published single answer still earns the whole outcome
    single = df[df["extra_info"].map(lambda i: i["id"] == "vid000_0")].iloc[0]
    g = _gt(single)
    f = next(iter(g))
    s = compute_score(single["data_source"], _tags(f, {k: g[f][k] for k in ("bbox_2d", "point_2d")}),
                      single["reward_model"]["ground_truth"], dict(single["extra_info"]))
    assert s["iou_score"] == s["point_l1_score"] == s["object_iou"] == 1.0


def test_training_split_swaps_in_a_frame_with_the_target_and_is_deterministic(sets, rows, tmp_path):
    df = rows["mevis"]
    assert (df["extra_info"].map(lambda i: i["split"]) == "train").all()
    # every training row's shown frames show at least one of its objects (the anchor swap)
    assert all(_gt(r) for _, r in df.iterrows())
    again = pd.read_parquet(convert_rvos("mevis", sets["mevis"], "train", tmp_path / "a.parquet",
                                         progress=False))
    pd.testing.assert_frame_equal(again, df)
    head = pd.read_parquet(convert_rvos("mevis", sets["mevis"], "train", tmp_path / "b.parquet",
                                        limit=3, progress=False))
    pd.testing.assert_frame_equal(head, df.iloc[:3])  # limit does not shift any row's frames


def test_no_target_expressions_are_skipped_and_counted(tmp_path):
    root = make_synthetic_revos(tmp_path / "rv", n_videos=1, n_frames=N_FRAMES)
    meta_path = root / "meta_expressions_valid_.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["vid000"]["expressions"]["9"] = {"exp": "the purple hexagon", "obj_id": [],
                                                     "anno_id": [], "type_id": 2}
    meta_path.write_text(json.dumps(meta))
    out = convert_rvos("revos", root, progress=False)
    info = conversion_info(out)
    assert (info["source_rows"], info["rows"], info["skipped_no_target_expressions"]) == (6, 5, 1)
    assert "vid000_9" not in {i["id"] for i in pd.read_parquet(out)["extra_info"]}


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"expressions not found: .*meta_expressions_train_\.json"):
        convert_rvos("revos", tmp_path / "nowhere", "train", progress=False)
    root = make_synthetic_revos(tmp_path / "rv", n_videos=1, n_frames=N_FRAMES)
    (root / "JPEGImages" / "vid000" / "00004.jpg").unlink()
    with pytest.raises(ValueError, match=r"frame '00004' of video 'vid000' .*not on disk"):
        convert_rvos("revos", root, progress=False)
    with pytest.raises(ValueError, match="kind"):
        convert_rvos("okvos", root, progress=False)
    assert not (root / "verl").exists()  # nothing half-written


def test_cli_writes_rows_and_per_object_oracle(tmp_path, capsys):
    root, out = tmp_path / "rv", tmp_path / "rl" / "revos.parquet"
    assert main(["data", "revos", "--root", str(root), "--synthetic", "--videos", "1", "--per-object",
                 "--rl-out", str(out), "--num-frames", "4", "--coord-style", "qwen25",
                 "--frame-size", "256", "--seed", "3"]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out} (5 rows from 5 expressions; 0 skipped without a target" in said
    df = pd.read_parquet(out)
    assert len(df) == 5 and all(len(i["frames"]) == 4 and i["coord_style"] == "qwen25"
                                and i["frame_size"] == 256 for i in df["extra_info"])
    assert conversion_info(out)["seed"] == 3
    # the several-object expressions' oracle answers are lists, one labelled object each
    oracle = [json.loads(line) for line in (root / "oracle_predictions.jsonl").read_text().splitlines()]
    answers = [json.loads(r["output"].split("<answer>")[1].split("</answer>")[0]) for r in oracle]
    assert [len(a) if isinstance(a, list) else 1 for a in answers] == [len(e[1]) for e in EXPRESSIONS]
    assert main(["data", "revos", "--root", str(root), "--per-object"]) == 2
    assert "add --synthetic" in capsys.readouterr().err


def test_the_agent_loop_reads_the_rows(rows):
    pytest.importorskip("verl")
    from types import SimpleNamespace

    from segresearch.core.media import open_media
    from segresearch.rl.agent_loop import SegResearchAgentLoop, _presized_config, _query_from

    row = rows["revos"].iloc[1]
    info = dict(row["extra_info"])
    kwargs = {"raw_prompt": list(row["prompt"]), "extra_info": info}
    assert _query_from(kwargs) == "the two shapes in the top row"
    assert _presized_config(info, list(info["frames"]), 448) is None  # not presized: sources are read
    loop = SimpleNamespace(settings={}, response_length=1024)
    ctx = SegResearchAgentLoop._trajectory_context(loop, "replay:unused.json", list(info["frames"]),
                                                   {"temperature": 1.0}, info)
    assert (ctx.num_frames, ctx.coord_style, ctx.frame_size) == (6, "qwen3", 448)
    # the frame ids the graph gives the frames are the ground truth's keys
    ids = open_media(list(info["frames"])).frame_ids
    assert set(_gt(row)) <= {str(i) for i in ids} and list(ids) == list(info["frame_ids"])
