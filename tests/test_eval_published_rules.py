"""Where our evaluation meets the published scripts: the keyframe number read as a frame
position, the data_source filter of ``segment``, NaN coordinates counted, and a
meta_mapping.json that resolves from any working directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from PIL import Image

from segresearch.eval.datasets import Query, check_ground_truth, load_okvos
from segresearch.eval.postseg import SegJob, segment_jobs
from segresearch.eval.predict import row_from_state
from segresearch.eval.predictions import read_predictions
from segresearch.eval.runner import evaluate
from segresearch.eval.scoring import score_queries
from segresearch.eval.spec import EvalSpec
from segresearch.testing.okvos import make_synthetic_okvos, oracle_turns
from segresearch.testing.oracle import GroundTruthSegmenter
from segresearch.testing.scenes import inner_point, mask_box, render_scene
from segresearch.tools.segmenters import Segmenter, VideoSession, prompt_from_output

FIRST = 10  # frames named 00010 … 00021: names and positions disagree
N = 12


def _answer(mask: np.ndarray) -> str:
    h, w = mask.shape
    x1, y1, x2, y2 = mask_box(mask)
    px, py = inner_point(mask)
    return json.dumps({"bbox_2d": [round(x1 / w * 1000), round(y1 / h * 1000), round(x2 / w * 1000),
                                   round(y2 / h * 1000)],
                       "point_2d": [round(px / w * 1000), round(py / h * 1000)]})


@pytest.fixture(scope="module")
def offset_clip(tmp_path_factory):
    """A clip whose frames are named 00010.jpg … 00021.jpg, and its masks."""
    folder = tmp_path_factory.mktemp("offset") / "frames"
    folder.mkdir()
    frames, masks = render_scene(n_frames=N, size=(160, 120))
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{FIRST + i:05d}.jpg", quality=95)
    return folder, masks["blue square"]


def published_frame_name(folder: Path, output: str) -> str | None:
    """The frame the published post-segmentation prompts for an output, restated: the first
    keyframe tag's number indexes ``sorted(os.listdir(video))`` (SAM 2's ``frame_idx``)."""
    names = sorted(os.listdir(folder))
    fid = int(re.search(r"<keyframe>\s*(\d+)\s*</keyframe>", output, re.S).group(1))
    return names[fid].split(".")[0] if 0 <= fid < len(names) else None


def test_keyframe_number_is_a_position_as_in_the_published_script(offset_clip):
    folder, _ = offset_clip
    ids = list(range(FIRST, FIRST + N))
    text = '<keyframe>3</keyframe><answer>{"bbox_2d": [1, 2, 30, 40], "point_2d": [5, 5]}</answer>'
    parsed = prompt_from_output(text, ids, 160, 120)
    assert published_frame_name(folder, text) == "00013"
    assert parsed.keyframe == 3 and parsed.prompt.frame == 13  # the frame AT position 3
    by_name = text.replace("<keyframe>3<", "<keyframe>13<")
    assert published_frame_name(folder, by_name) is None  # 13 ≥ 12 frames: nothing prompted
    none = prompt_from_output(by_name, ids, 160, 120)
    assert none.prompt is None and "not a frame position" in none.problem


class Recording(Segmenter):
    """Remembers the frame ids it is prompted on; yields the box as the mask."""

    name = "recording"

    def __init__(self) -> None:
        self.frames: list[int] = []

    def open(self, media):
        outer = self

        class S(VideoSession):
            def masks(self, prompt):
                outer.frames.append(prompt.frame)
                m = np.zeros((media.height, media.width), bool)
                x1, y1, x2, y2 = (round(v) for v in prompt.box)
                m[y1:y2 + 1, x1:x2 + 1] = True
                yield prompt.frame, m

        s = S()
        s.media = media
        return s


def test_masks_land_on_the_frame_the_published_script_prompts(offset_clip, tmp_path):
    folder, gt = offset_clip
    output = f"<keyframe> 4 </keyframe> <keyframe> 6 </keyframe><answer>{_answer(gt[4])}</answer>"
    seg = Recording()
    recs = segment_jobs([SegJob("q", str(folder), output)], tmp_path / "seg", seg, progress=False)
    assert seg.frames == [FIRST + 4] and recs["q"]["prompt"]["frame"] == FIRST + 4
    assert recs["q"]["first_keyframe"] == 4
    written = sorted(p.name for p in (tmp_path / "seg" / "q").glob("*.png"))
    assert written == [f"{FIRST + i:05d}.png" for i in range(N)]  # named after each frame
    nonempty = [p.stem for p in (tmp_path / "seg" / "q").glob("*.png") if np.asarray(Image.open(p)).any()]
    assert nonempty == [published_frame_name(folder, output)] == ["00014"]


def test_rule_differs_when_frame_names_are_not_positions(offset_clip):
    folder, gt = offset_clip

    def final(keyframe: int) -> dict:
        turns = [f"<thinking>t</thinking><keyframe> {keyframe} </keyframe>",
                 f"<thinking>t</thinking><answer>{_answer(gt[keyframe - FIRST])}</answer>"]
        msgs = [SystemMessage("s"), HumanMessage("q"), AIMessage(turns[0]), HumanMessage("frame"),
                AIMessage(turns[1])]
        return {"messages": msgs, "answer": {"keyframe": keyframe}, "frame_ids": [10, 12, 14, 21]}

    q = Query(id="q", question="q", ability="one-hop", media=[], segment_media=str(folder), gt="")
    ids = list(range(FIRST, FIRST + N))
    # the graph answered on frame NAMED 14; the saved text's 14 is a position past the end
    row = row_from_state(q, final(14), "m", 0.0, (160, 120), ids)
    assert row["rule_differs"] is True
    row = row_from_state(q, final(14), "m", 0.0, (160, 120), list(range(N + 10)))
    assert row["rule_differs"] is False  # names 0…N-1: the two readings agree


# ------------------------------------------------------ a small OK-VOS set and dumps


@pytest.fixture(scope="module")
def okvos(tmp_path_factory):
    """One synthetic video (16 queries) under ``work/okvos``, and a published-format dump
    answering every query from its ground truth, one with a NaN box."""
    work = tmp_path_factory.mktemp("work")
    root = work / "okvos"
    make_synthetic_okvos(root, split="test", n_videos=1, n_frames=N, size=(160, 120))
    df = pd.read_parquet(root / "test.parquet")
    nan_id = df["id"].iloc[2]
    rows = []
    for rec in df.to_dict("records"):
        output = "\n".join(oracle_turns(root, "test", rec))
        if rec["id"] == nan_id:  # Python's json reads NaN; so does the published script
            head, answer = output.split("<answer>")
            ans = json.loads(answer.removesuffix("</answer>"))
            ans["bbox_2d"][0] = float("nan")
            output = f"{head}<answer>{json.dumps(ans)}</answer>"
        rows.append({"id": rec["id"], "data_source": f"Search_RVOS_{rec['ability']}",
                     "video_path": f"/elsewhere/OK_VOS/test/JPEGImages/{rec['video']}", "output": output})
    dump = work / "dump.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"work": work, "root": root, "dump": dump, "df": df, "nan_id": nan_id, "rows": rows}


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segresearch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def test_nan_coordinates_are_counted_as_a_difference_from_the_published_rule(okvos, tmp_path):
    nan_row = next(r for r in okvos["rows"] if r["id"] == okvos["nan_id"])
    assert '"bbox_2d": [NaN, ' in nan_row["output"]
    res = evaluate(EvalSpec(dataset="okvos", root=str(okvos["root"]), split="test", out=str(tmp_path / "e"),
                            predictions=str(okvos["dump"]), segmenter=GroundTruthSegmenter(),
                            html=False, progress=False))
    by = {q["id"]: q for q in res["queries"]}
    q = by[okvos["nan_id"]]
    assert q["nonfinite"] == ["bbox_2d"] and q["prompt"]["box"] is None and q["prompt"]["point"]
    assert res["counts"]["nonfinite_coordinates"] == 1
    assert sum(1 for e in res["queries"] if e["nonfinite"]) == 1
    md = (tmp_path / "e" / "results.md").read_text()
    assert "NaN/inf coordinates" in md and "the published script would pass the NaN to SAM 2): 1" in md
    saved = read_predictions(tmp_path / "e" / "seg" / "segment.jsonl").rows
    assert saved[okvos["nan_id"]]["nonfinite"] == ["bbox_2d"]


@pytest.mark.slow  # two CLI segment runs in subprocesses (about 7 s)
def test_segment_keeps_only_search_rvos_rows_unless_all(okvos, tmp_path):
    rows = okvos["rows"][:3]
    extra = [{**okvos["rows"][3], "data_source": "ImageSeg_reason"},
             {k: v for k, v in okvos["rows"][4].items() if k != "data_source"}]
    dump = tmp_path / "mixed.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    r = cli("segment", str(dump), "--root", str(okvos["root"]), "--out", str(tmp_path / "a"),
            "--segmenter", "grabcut", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "masks for 3 queries" in r.stdout and "2 rows skipped (data_source without 'Search_RVOS'" in r.stdout
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == sorted(x["id"] for x in rows)
    r = cli("segment", str(dump), "--root", str(okvos["root"]), "--out", str(tmp_path / "b"),
            "--segmenter", "grabcut", "--no-progress", "--all", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "masks for 5 queries" in r.stdout and "0 rows skipped (--all)" in r.stdout
    only_images = tmp_path / "images.jsonl"
    only_images.write_text(json.dumps(extra[0]) + "\n")
    r = cli("segment", str(only_images), "--out", str(tmp_path / "c"), "--segmenter", "grabcut",
            cwd=tmp_path)
    assert r.returncode == 2 and "--all" in r.stderr


# ------------------------------------------------------------------ meta mapping


def _scores(out: Path) -> dict[str, tuple]:
    res = json.loads((out / "results.json").read_text())
    return {q["id"]: (q["J"], q["F"], q["ability"], q["annotated_frames"]) for q in res["queries"]}


@pytest.mark.slow  # four CLI evaluations in subprocesses (about 20 s)
def test_meta_mapping_resolves_from_any_working_directory(okvos, tmp_path):
    work, root = okvos["work"], okvos["root"]
    # written where the README says (ROOT/), from a relative --root
    r = cli("data", "okvos", "--root", "okvos", "--split", "test", "--out", str(tmp_path / "verl" / "t.parquet"),
            cwd=work)
    assert r.returncode == 0, r.stderr
    meta_path = root / "meta_mapping.json"
    meta = json.loads(meta_path.read_text())
    assert len(meta) == len(okvos["df"]) and not (tmp_path / "verl" / "meta_mapping.json").exists()
    assert all(Path(folder).is_absolute() and Path(folder).is_dir() for _, folder, _ in meta)
    assert meta == [[q.id, str(Path(q.gt).resolve()), q.ability] for q in load_okvos(root, "test")]

    # our own evaluation scored against that mapping, started from somewhere else
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = ["eval", "okvos", "--root", str(root), "--split", "test", "--predictions", str(okvos["dump"]),
            "--segmenter", "grabcut", "--no-html", "--no-progress"]
    r = cli(*base, "--out", str(tmp_path / "plain"), cwd=work)
    assert r.returncode == 0, r.stderr
    assert "1 with NaN/inf coordinates" in r.stdout  # the CLI summary reports them
    r = cli(*base, "--out", str(tmp_path / "mapped"), "--meta-mapping", str(meta_path), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    mapped = _scores(tmp_path / "mapped")
    assert mapped == _scores(tmp_path / "plain")
    assert all(frames == N and j is not None for j, _, _, frames in mapped.values())

    # a mapping with paths relative to where it was written (as before): from elsewhere
    # nothing resolves, and the run is refused before it starts instead of printing nan
    relative = tmp_path / "relative.json"
    relative.write_text(json.dumps([[i, os.path.relpath(folder, work), a] for i, folder, a in meta]))
    r = cli(*base, "--out", str(tmp_path / "rel"), "--meta-mapping", str(relative), cwd=elsewhere)
    assert r.returncode == 2 and "ground-truth folder not found" in r.stderr, r.stderr
    assert f"({len(meta)} of the {len(meta)} queries have ground truth" in r.stderr
    assert "relative ones resolve from the current folder" in r.stderr
    assert not r.stdout and not (tmp_path / "rel").exists()
    # the same file from the folder it is relative to works
    r = cli(*base, "--out", str(tmp_path / "rel2"), "--meta-mapping", str(relative), cwd=work)
    assert r.returncode == 0, r.stderr
    # one folder wrong: refused, naming it, rather than leaving the query out of the means
    broken = [list(m) for m in meta]
    broken[0][1] = str(tmp_path / "missing")
    one_bad = tmp_path / "one_bad.json"
    one_bad.write_text(json.dumps(broken))
    r = cli(*base, "--out", str(tmp_path / "bad"), "--meta-mapping", str(one_bad), cwd=elsewhere)
    assert r.returncode == 2 and f"query {meta[0][0]}: ground-truth folder not found: {tmp_path / 'missing'}" in r.stderr
    # a mask whose header opens but whose pixels do not passes the check; scoring then
    # marks the query (the CLI exits 1) instead of leaving it out quietly
    q = next(q for q in load_okvos(root, "test") if q.id == meta[0][0])
    gt = tmp_path / "gt_copy"
    gt.mkdir()
    first, *rest = sorted(Path(q.gt).glob("*.png"))
    data = first.read_bytes()
    (gt / first.name).write_bytes(data[: len(data) // 2])
    for f in rest:
        (gt / f.name).write_bytes(f.read_bytes())
    check_ground_truth([replace(q, gt=str(gt))])
    scored = score_queries([replace(q, gt=str(gt))], tmp_path / "no_seg", progress=False)[q.id]
    assert scored["J"] is None and "cannot read ground-truth mask" in scored["score_error"]
