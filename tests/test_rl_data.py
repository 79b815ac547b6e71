"""OK-VOS → verl parquet: frame sampling, the training anchor swap, ground truth from the
masks, reward compatibility, errors, atomic writes, the CLI, and verl's own dataset class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segresearch.rl.data import conversion_info, convert_okvos
from segresearch.rl.reward import compute_score
from segresearch.testing.okvos import make_synthetic_okvos

N_FRAMES = 12  # frames per synthetic video
ROWS_PER_VIDEO = 4 * 4  # four shapes, four questions each (one per ability)
LINSPACE = [int(p) for p in np.floor(np.linspace(0, N_FRAMES - 1, 6))]  # [0, 2, 4, 6, 8, 11]
COLUMNS = {"data_source", "prompt", "ability", "reward_model", "agent_name", "extra_info"}


def _make(root: Path, split: str, n_videos: int = 2, annotate_every: int = 1) -> Path:
    make_synthetic_okvos(root, split, n_videos=n_videos, n_frames=N_FRAMES,
                         annotate_every=annotate_every)
    return root


def _keep_masks(root: Path, split: str, keep: set[str]) -> None:
    """Delete every mask file whose stem is not in ``keep``."""
    for p in (root / split / "Annotations").rglob("*.png"):
        if p.stem not in keep:
            p.unlink()


def _load(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def _ids(row: pd.Series) -> list[int]:
    return [int(f) for f in row["extra_info"]["frame_ids"]]


def _gt(row: pd.Series) -> dict:
    return json.loads(row["reward_model"]["ground_truth"])


def _mask(root: Path, split: str, info: dict, fid: int) -> np.ndarray:
    path = root / split / "Annotations" / info["video"] / info["oid"] / f"{fid:05d}.png"
    return np.asarray(Image.open(path)) == 255


@pytest.fixture(scope="module")
def every3(tmp_path_factory) -> Path:
    """Train and test splits, masks on frames 0, 3, 6, 9 only."""
    root = tmp_path_factory.mktemp("okvos3")
    _make(root, "train", annotate_every=3)
    _make(root, "test", annotate_every=3)
    return root


@pytest.fixture(scope="module")
def converted(every3) -> dict[str, pd.DataFrame]:
    return {s: _load(convert_okvos(every3, s, progress=False)) for s in ("train", "test")}


def test_rows_columns_and_prompt(every3, converted):
    src = pd.read_parquet(every3 / "test.parquet")
    df = converted["test"]
    assert len(df) == len(src) == 2 * ROWS_PER_VIDEO
    assert set(df.columns) == COLUMNS  # no images column: verl must not decode the frames
    assert set(df["data_source"]) == {"Search_RVOS_one-hop", "Search_RVOS_multi-hop",
                                      "Search_RVOS_relational", "Search_RVOS_in-video"}
    assert (df["data_source"] == "Search_RVOS_" + df["ability"]).all()
    assert (df["agent_name"] == "seg_research_agent").all()
    for (_, row), (_, s) in zip(df.iterrows(), src.iterrows(), strict=True):
        assert [dict(m) for m in row["prompt"]] == [{"role": "user", "content": s["question"]}]
        assert "<image>" not in s["question"]
        info = row["extra_info"]
        assert info["question"] == s["question"] and info["id"] == s["id"]
        assert (info["video"], info["oid"], info["split"]) == (s["video"], s["oid"], "test")
        assert info["coord_style"] == "qwen3" and info["frame_size"] == 448
        assert (info["width"], info["height"]) == (160, 120)
        if s["steps"] is None:
            assert info["steps"] is None
        else:
            assert list(info["steps"]) == list(s["steps"])
        assert row["reward_model"]["style"] == "rule"
    assert list(df["extra_info"].map(lambda i: i["index"])) == list(range(len(df)))


def test_frames_exist_in_order_and_test_split_is_linspace(every3, converted):
    for split, df in converted.items():
        for _, row in df.iterrows():
            info = row["extra_info"]
            frames = [Path(f) for f in info["frames"]]
            assert len(frames) == 6 and all(f.is_absolute() and f.is_file() for f in frames)
            assert all(f.parent == every3 / split / "JPEGImages" / info["video"] for f in frames)
            ids = _ids(row)
            assert ids == [int(f.stem) for f in frames] and ids == sorted(set(ids))
            if split == "test":
                assert ids == LINSPACE


def test_test_split_ground_truth_only_for_annotated_frames(converted):
    for _, row in converted["test"].iterrows():
        assert set(_gt(row)) == {"0", "6"}  # of 0, 2, 4, 6, 8, 11 only 0 and 6 have masks


def test_train_swap_brings_an_annotated_frame_and_changes_at_most_one(converted):
    annotated = {0, 3, 6, 9}
    swapped = 0
    for _, row in converted["train"].iterrows():
        ids = _ids(row)
        diff = [(a, b) for a, b in zip(LINSPACE, ids, strict=True) if a != b]
        assert len(diff) <= 1
        assert annotated & set(ids)
        assert set(_gt(row)) == {str(i) for i in ids if i in annotated}
        if diff:
            swapped += 1
            (old, new), = diff
            assert new in (3, 9)  # 0 and 6 are already sampled: no swap for them
            assert old == {3: 2, 9: 8}[new]  # nearest sampled frame; 2 and 4 tie → earlier
    assert 0 < swapped < len(converted["train"])


def test_train_swap_when_no_sampled_frame_is_annotated(tmp_path):
    root = _make(tmp_path, "train")
    _keep_masks(root, "train", {"00005", "00009"})
    df = _load(convert_okvos(root, "train", progress=False))
    assert len(df) == 2 * ROWS_PER_VIDEO  # every row got a target frame by the swap
    seen = set()
    for _, row in df.iterrows():
        ids = _ids(row)
        diff = [(a, b) for a, b in zip(LINSPACE, ids, strict=True) if a != b]
        assert diff in ([(4, 5)], [(8, 9)])  # 5 is as near to 4 as to 6: the earlier goes
        seen.add(diff[0][1])
        assert set(_gt(row)) == {str(diff[0][1])}
    assert seen == {5, 9}
    assert conversion_info(tmp_path / "verl" / "train.parquet")["swapped"] == len(df)

    # an empty mask file (target out of view) is no anchor: every row must swap in frame 5
    for p in (root / "train" / "Annotations").rglob("00009.png"):
        Image.fromarray(np.zeros((120, 160), np.uint8)).save(p)
    df = _load(convert_okvos(root, "train", progress=False))
    assert len(df) == 2 * ROWS_PER_VIDEO
    assert all(_ids(r) == [0, 2, 5, 6, 8, 11] and set(_gt(r)) == {"5"} for _, r in df.iterrows())


def test_deterministic_for_a_seed_and_limit_does_not_shift_rows(every3, tmp_path):
    a = _load(convert_okvos(every3, "train", tmp_path / "a.parquet", seed=7, progress=False))
    b = _load(convert_okvos(every3, "train", tmp_path / "b.parquet", seed=7, progress=False))
    c = _load(convert_okvos(every3, "train", tmp_path / "c.parquet", seed=8, progress=False))
    head = _load(convert_okvos(every3, "train", tmp_path / "h.parquet", seed=7, limit=5,
                               progress=False))
    frames = [list(_ids(r)) for _, r in a.iterrows()]
    assert frames == [list(_ids(r)) for _, r in b.iterrows()]
    assert list(a["reward_model"].map(lambda r: r["ground_truth"])) == list(
        b["reward_model"].map(lambda r: r["ground_truth"]))
    assert frames != [list(_ids(r)) for _, r in c.iterrows()]
    assert len(head) == 5 and [list(_ids(r)) for _, r in head.iterrows()] == frames[:5]
    assert conversion_info(tmp_path / "h.parquet")["source_rows"] == 5


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@pytest.mark.parametrize("style,scale", [("qwen3", (1000, 1000)), ("qwen25", (448, 448)),
                                         ("qwen25", (320, 320))])
def test_ground_truth_boxes_follow_the_masks(tmp_path, style, scale):
    root = _make(tmp_path, "test", n_videos=1)
    out = convert_okvos(root, "test", coord_style=style, frame_size=scale[0], progress=False)
    df = _load(out)
    checked = 0
    for _, row in df.iterrows():
        info = row["extra_info"]
        assert info["coord_style"] == style
        w, h = info["width"], info["height"]
        for fid, g in _gt(row).items():
            m = _mask(root, "test", info, int(fid))
            x1, y1, x2, y2 = _extent(m)
            assert g["bbox_2d"] == [round(x1 / w * scale[0]), round(y1 / h * scale[1]),
                                    round(x2 / w * scale[0]), round(y2 / h * scale[1])]
            px, py = g["point_2d"]
            assert m[min(h - 1, round(py / scale[1] * h)), min(w - 1, round(px / scale[0] * w))]
            checked += 1
    assert checked == len(df) * 6


def test_area_and_component_are_normalised_per_row(tmp_path):
    root = _make(tmp_path, "test", n_videos=1)
    df = _load(convert_okvos(root, "test", progress=False))
    for _, row in df.iterrows():
        gt = _gt(row)
        areas = [g["area"] for g in gt.values()]
        conns = [g["max_conn_area"] for g in gt.values()]
        assert max(areas) == 1.0 and max(conns) == 1.0
        assert all(0 < v <= 1 for v in areas + conns)
        info = row["extra_info"]
        pixels = {fid: int(_mask(root, "test", info, int(fid)).sum()) for fid in gt}
        biggest = max(pixels.values())
        for fid, g in gt.items():
            assert g["area"] == pytest.approx(pixels[fid] / biggest, abs=1e-6)


def test_empty_masks_are_absent_and_targetless_train_rows_skipped(tmp_path):
    root = _make(tmp_path, "train", n_videos=1)
    _make(root, "test", n_videos=1)
    for split in ("train", "test"):
        for p in (root / split / "Annotations" / "vid000" / "1").glob("*.png"):
            Image.fromarray(np.zeros((120, 160), np.uint8)).save(p)  # target never visible
        # oid 2: empty mask on frame 4 only
        Image.fromarray(np.zeros((120, 160), np.uint8)).save(
            root / split / "Annotations" / "vid000" / "2" / "00004.png")
        # oid 3, frame 0: a stray non-target value (not 255) must not widen the box
        p = root / split / "Annotations" / "vid000" / "3" / "00000.png"
        m = np.asarray(Image.open(p)).copy()
        m[0:5, 0:5] = 128
        Image.fromarray(m).save(p)
    train = _load(convert_okvos(root, "train", progress=False))
    test = _load(convert_okvos(root, "test", progress=False))
    assert len(train) == ROWS_PER_VIDEO - 4 and set(train["extra_info"].map(lambda i: i["oid"])) == {"2", "3", "4"}
    assert len(test) == ROWS_PER_VIDEO
    assert conversion_info(root / "verl" / "train.parquet")["skipped_no_target"] == 4
    assert conversion_info(root / "verl" / "test.parquet")["kept_no_target"] == 4
    for _, row in test.iterrows():
        oid = row["extra_info"]["oid"]
        expect = set() if oid == "1" else {str(i) for i in LINSPACE} - ({"4"} if oid == "2" else set())
        assert set(_gt(row)) == expect
        if oid == "3":
            m = _mask(root, "test", row["extra_info"], 0)
            assert not m[0:5, 0:5].any()
            x1, y1, x2, y2 = _extent(m)
            assert _gt(row)["0"]["bbox_2d"] == [round(x1 / 160 * 1000), round(y1 / 120 * 1000),
                                                round(x2 / 160 * 1000), round(y2 / 120 * 1000)]


def _answer_for(fid: str, g: dict) -> str:
    ans = json.dumps({"bbox_2d": g["bbox_2d"], "point_2d": g["point_2d"]})
    return (f"<thinking>it is there</thinking><keyframe> {fid} </keyframe>"
            f"<thinking>found it</thinking><answer>{ans}</answer>")


def test_reward_gives_full_outcome_for_the_ground_truth(converted):
    df = converted["test"]
    row = df[df["ability"] == "in-video"].iloc[0]  # no steps: IGR needs no embedding model
    gt = _gt(row)
    fid, g = next(iter(gt.items()))
    info = dict(row["extra_info"])
    s = compute_score(row["data_source"], _answer_for(fid, g), row["reward_model"]["ground_truth"], info)
    assert s["iou_score"] == s["box_l1_score"] == s["point_l1_score"] == 1.0
    assert s["keyframe_score"] == g["max_conn_area"] and s["format_score"] == 1.0
    assert s["score"] == pytest.approx(4.0 + g["max_conn_area"])
    # a shown frame without a mask earns no outcome, even with the same answer
    unannotated = next(str(i) for i in _ids(row) if str(i) not in gt)
    s = compute_score(row["data_source"], _answer_for(unannotated, g),
                      row["reward_model"]["ground_truth"], info)
    assert s["iou_score"] == s["keyframe_score"] == 0.0


def test_errors_name_the_file_or_video(tmp_path):
    with pytest.raises(ValueError, match=r"parquet not found: .*train\.parquet"):
        convert_okvos(tmp_path / "nowhere", "train", progress=False)

    root = _make(tmp_path / "a", "train", n_videos=1)
    (root / "train" / "JPEGImages" / "vid000" / "00007.jpg").unlink()
    with pytest.raises(ValueError, match=r"frame '00007' of video 'vid000'.*not on disk"):
        convert_okvos(root, "train", progress=False)

    root = _make(tmp_path / "b", "train", n_videos=1)
    (root / "train" / "JPEGImages" / "vid000").rename(root / "train" / "JPEGImages" / "gone")
    with pytest.raises(ValueError, match=r"video folder not found: .*vid000"):
        convert_okvos(root, "train", progress=False)

    root = _make(tmp_path / "c", "train", n_videos=1)
    pd.read_parquet(root / "train.parquet").drop(columns=["oid"]).to_parquet(root / "train.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) oid"):
        convert_okvos(root, "train", progress=False)

    root = _make(tmp_path / "d", "train", n_videos=1)
    pd.read_parquet(root / "train.parquet").assign(images="00000").to_parquet(root / "train.parquet")
    with pytest.raises(ValueError, match=r"images must be a list .*'vid000'"):
        convert_okvos(root, "train", progress=False)

    with pytest.raises(ValueError, match="coord_style"):
        convert_okvos(root, "train", coord_style="pixels", progress=False)


def test_frame_names_with_extensions(tmp_path):
    root = _make(tmp_path, "test", n_videos=1)
    src = pd.read_parquet(root / "test.parquet")
    src["images"] = src["images"].map(lambda names: [f"{n}.jpg" for n in names])
    src.to_parquet(root / "test.parquet")
    df = _load(convert_okvos(root, "test", progress=False))
    row = df.iloc[0]
    assert _ids(row) == LINSPACE and set(_gt(row)) == {str(i) for i in LINSPACE}


def test_write_is_atomic(tmp_path, monkeypatch):
    root = _make(tmp_path, "test", n_videos=1)
    out = root / "verl" / "test.parquet"
    convert_okvos(root, "test", progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["test.parquet"]
    before = out.read_bytes()

    import pyarrow.parquet as pq

    real = pq.write_table

    def crash(table, where, *a, **k):
        real(table.slice(0, 1), where, *a, **k)  # a partial file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_okvos(root, "test", num_frames=3, progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["test.parquet"]


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segresearch", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_cli_synthetic_then_okvos_then_missing_root(tmp_path):
    root = tmp_path / "ds"
    r = _cli("data", "synthetic", "--out", str(root), "--videos", "1")
    assert r.returncode == 0, r.stderr
    assert str(root / "train.parquet") in r.stdout and f"({ROWS_PER_VIDEO} rows)" in r.stdout
    out = tmp_path / "verl.parquet"
    r = _cli("data", "okvos", "--root", str(root), "--split", "train", "--out", str(out),
             "--num-frames", "4", "--coord-style", "qwen25", "--frame-size", "256", "--limit", "5",
             "--presize-frames")
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and "5 rows from 5" in r.stdout
    df = _load(out)
    assert len(df) == 5 and all(len(i["frames"]) == 4 for i in df["extra_info"])
    assert conversion_info(out)["coord_style"] == "qwen25"
    assert all(i["frame_size"] == 256 for i in df["extra_info"])
    presized = conversion_info(out)["presized_frames"]
    assert f"pre-sized frames in {presized}" in r.stdout
    for info in df["extra_info"]:
        assert [Path(p).parent.parent for p in info["shown_frames"]] == [Path(presized)] * 4
        assert all(Image.open(p).size == (256, 256) for p in info["shown_frames"])

    r = _cli("data", "okvos", "--root", str(tmp_path / "missing"), "--split", "test")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not found" in lines[0]


def test_verl_rlhf_dataset_reads_the_file(converted, every3, tmp_path, monkeypatch):
    rl_dataset = pytest.importorskip("verl.utils.dataset.rl_dataset")
    import datasets
    from omegaconf import OmegaConf

    from segresearch.testing.tiny_vlm import build_tiny_tokenizer

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # not ~/.cache
    cfg = OmegaConf.create({"cache_dir": str(tmp_path / "verl"), "max_prompt_length": 256,
                            "filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1})
    tok = build_tiny_tokenizer(family="qwen3_vl")  # the published Qwen3-VL template
    ds = rl_dataset.RLHFDataset(str(every3 / "verl" / "train.parquet"), tok, cfg)
    df = converted["train"]
    assert len(ds) == len(df)  # the tokenizer-based length filter dropped nothing
    got, last = ds[len(ds) - 1], df.iloc[-1]
    assert got["raw_prompt"] == [{"role": "user", "content": last["extra_info"]["question"]}]
    assert got["index"] == last["extra_info"]["index"]
    assert got["agent_name"] == "seg_research_agent"
    assert list(got["extra_info"]["frames"]) == list(last["extra_info"]["frames"])
    assert got["reward_model"]["ground_truth"] == last["reward_model"]["ground_truth"]
    assert "images" not in got and got["dummy_tensor"].tolist() == [0]
