"""A small synthetic dataset in the OK-VOS layout, for tests and smoke runs.

OK-VOS itself cannot be downloaded on our machines, so the RL data path is exercised on
videos of moving shapes whose masks are exact: the same parquet columns, folder layout and
mask convention (target pixels 255), with knowledge-style questions about fictional clubs
whose emblems are the shapes, and annotated reasoning steps for the IGR reward.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segresearch.core.coords import QWEN3
from segresearch.core.media import sample_frame_ids
from segresearch.testing.scenes import (
    DEFAULT_SHAPES,
    Shape,
    inner_point,
    mask_box,
    render_scene,
    write_frames,
)

CLUBS = {
    "red circle": "Crimson Circles",
    "blue square": "Cobalt Squares",
    "yellow star": "Amber Stars",
    "green triangle": "Verdant Triangles",
}
# The default scene keeps two shapes in its top row and two in its bottom row.
ROW_PARTNER = {
    "red circle": "yellow star",
    "yellow star": "red circle",
    "blue square": "green triangle",
    "green triangle": "blue square",
}


def _questions(shape: str, year: int) -> list[tuple[str, str, list[str]]]:
    club = CLUBS[shape]
    return [
        ("one-hop", f"Segment the emblem of the {club}.",
         [f"Search what the emblem of the {club} looks like", f"Find the {shape} in the video"]),
        ("multi-hop", f"Segment the emblem of the club that won the {year} Tessellate Cup.",
         [f"Search which club won the {year} Tessellate Cup", f"Search the emblem of the {club}",
          f"Find the {shape} in the video"]),
        ("relational", f"Segment the emblem in the same row as the emblem of the "
         f"{CLUBS[ROW_PARTNER[shape]]}.",
         [f"Search the emblem of the {CLUBS[ROW_PARTNER[shape]]}",
          f"Find the {ROW_PARTNER[shape]} in the video", "Find the other shape in its row"]),
        ("in-video", f"Segment the {shape}.", []),
    ]


# ``segresearch data synthetic`` writes both, as OK-VOS has them, so that every command the
# README shows for OK-VOS (conversion of train, evaluation of test) runs on the synthetic set.
SYNTHETIC_SPLITS = ("train", "test")


def split_seed(split: str) -> int:
    """The scene seed of a split: 0 for ``train`` (what the tests have always built), a
    stable other value for any other split, so that a test split never repeats the videos
    (and the cup years) of the training split."""
    if split == "train":
        return 0
    return 1000 + zlib.crc32(split.encode("utf-8")) % 1000


# Video folders are named vid000-vid999; a set that size already has 16,000 queries, and
# a larger one (a typo such as --videos 1000000000) would only fill the disk.
MAX_SYNTHETIC_VIDEOS = 1000


def make_synthetic_okvos(
    root: str | Path,
    split: str = "train",
    n_videos: int = 3,
    n_frames: int = 12,
    size: tuple[int, int] = (160, 120),
    annotate_every: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write ``root/{split}.parquet`` and ``root/{split}/{JPEGImages,Annotations}``; returns
    the parquet path. Each video has four shapes; every shape gets questions.

    The split is written into a temporary folder beside it and moved into place only when
    complete, replacing an earlier one whole: a run that is killed or fails leaves the
    root as it was (its temporaries are removed by the next run), never a split with some
    videos and no parquet. ``progress``: a bar over the videos on a terminal."""
    import pandas as pd  # heavy: optional [rl] extra

    if not 1 <= n_videos <= MAX_SYNTHETIC_VIDEOS:
        raise ValueError(f"the number of videos must be between 1 and {MAX_SYNTHETIC_VIDEOS}; "
                         f"got {n_videos}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_partial_split(root, split)
    tag = uuid.uuid4().hex[:8]
    tmp, tmp_parquet = root / f".{split}.tmp-{tag}", root / f".{split}.parquet.tmp-{tag}"
    dest, out, old = root / split, root / f"{split}.parquet", root / f".{split}.old-{tag}"
    rows = []
    try:
        for v in tqdm(range(n_videos), desc=f"synthetic {split}", unit="video",
                      disable=None if progress else True, leave=False):
            video = f"vid{v:03d}"
            shapes: list[Shape] = list(DEFAULT_SHAPES)
            frames, masks = render_scene(n_frames=n_frames, size=size, shapes=shapes, seed=seed + v)
            write_frames(frames, tmp / "JPEGImages" / video)
            names = [f"{i:05d}" for i in range(n_frames)]
            for oid, shape in enumerate(shapes, start=1):
                ann = tmp / "Annotations" / video / str(oid)
                ann.mkdir(parents=True, exist_ok=True)
                for i in range(0, n_frames, annotate_every):
                    Image.fromarray(masks[shape.name][i].astype(np.uint8) * 255).save(ann / f"{names[i]}.png")
                # A cup year per (video, shape): no two queries share a multi-hop question.
                year = 2030 + seed + v * len(shapes) + oid
                for ability, question, steps in _questions(shape.name, year):
                    rows.append({
                        "id": f"{video}_{oid}_{ability}", "question": question, "images": names,
                        "video": video, "oid": str(oid), "ability": ability,
                        "steps": steps or None,
                    })
        pd.DataFrame(rows).to_parquet(tmp_parquet, index=False)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        tmp_parquet.replace(out)
    except BaseException:
        if old.exists() and not dest.exists():
            old.rename(dest)  # put the earlier split back
        shutil.rmtree(tmp, ignore_errors=True)
        tmp_parquet.unlink(missing_ok=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def remove_partial_split(root: Path, split: str) -> list[str]:
    """What an interrupted ``make_synthetic_okvos`` of ``split`` left in ``root``: its
    temporary folder and parquet and a replaced split on its way out (only those names)."""
    pattern = re.compile(rf"\.{re.escape(split)}\.(?:tmp|old|parquet\.tmp)-[0-9a-f]{{8}}")
    removed = []
    for entry in root.iterdir() if root.is_dir() else ():
        if pattern.fullmatch(entry.name) and not entry.is_symlink():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _gt_answer(mask: np.ndarray) -> dict[str, list[int]]:
    """Box (mask extent) and inner point of a mask in 0-1000 coordinates."""
    h, w = mask.shape
    return {"bbox_2d": QWEN3.from_px(list(mask_box(mask)), w, h),
            "point_2d": QWEN3.from_px(list(inner_point(mask)), w, h)}


def oracle_turns(root: str | Path, split: str, row: dict, keyframe: int | None = None) -> list[str]:
    """A policy's turns that answer ``row`` from its ground truth: a search when the question
    needs knowledge, the keyframe (default: the frame where the target is largest among the
    six sampled), then the answer box and point of the mask on that frame."""
    root = Path(root)
    ann = root / split / "Annotations" / str(row["video"]) / str(row["oid"])
    names = sorted(str(n) for n in row["images"])
    shown = [int(names[i]) for i in sample_frame_ids(list(range(len(names))), 6)]
    masks = {}
    for fid in shown:
        p = ann / f"{fid:05d}.png"
        if p.is_file():
            masks[fid] = np.asarray(Image.open(p)) > 0
    if keyframe is None:
        keyframe = max(masks, key=lambda f: int(masks[f].sum()))
    turns = []
    if row["ability"] != "in-video":
        q = row["steps"][0] if row.get("steps") is not None and len(row["steps"]) else row["question"]
        turns.append("<thinking>I need to know more.</thinking>\n<search>"
                     + json.dumps({"name": "text_search", "query": str(q)}) + "</search>")
    turns.append(f"<thinking>The target is clearest here.</thinking>\n<keyframe> {keyframe} </keyframe>")
    turns.append("<thinking>That is the target.</thinking>\n<answer>"
                 + json.dumps(_gt_answer(masks[keyframe])) + "</answer>")
    return turns


def write_oracle_cassette(
    root: str | Path, split: str, path: str | Path, *, malformed: tuple[str, ...] = ()
) -> Path:
    """A replay cassette ``{"queries": {question: turns}}`` answering every query of the
    split from the ground truth; ids in ``malformed`` answer with broken JSON."""
    import pandas as pd  # heavy: optional [rl] extra

    df = pd.read_parquet(Path(root) / f"{split}.parquet")
    queries: dict[str, list[str]] = {}
    for rec in df.to_dict("records"):
        turns = oracle_turns(root, split, rec)
        if rec["id"] in malformed:
            turns[-1] = "<thinking>Hmm.</thinking>\n<answer>{'bbox_2d': [1, 2, 3, 4], point}</answer>"
        queries[str(rec["question"])] = turns
    path = Path(path)
    path.write_text(json.dumps({"label": "oracle from ground truth", "queries": queries}))
    return path


ORACLE_PREDICTIONS = "{split}_oracle_predictions.jsonl"


def write_oracle_predictions(root: str | Path, split: str, path: str | Path | None = None) -> Path:
    """Predictions in the published validation-dump format (``id``, ``data_source``,
    ``video_path``, ``output``) that answer every query of the split from its ground truth.

    They let a newcomer run ``eval okvos --predictions`` and ``segment`` on the synthetic set
    with no model at all, and keyed by id they stay right where a replay cassette, keyed by
    question, cannot: the synthetic set asks the same question about several videos. A
    target that none of the shown frames holds is answered with the zero box, the model's
    way of saying it found nothing."""
    import pandas as pd  # heavy: optional [rl] extra

    root = Path(root)
    path = Path(path) if path is not None else root / ORACLE_PREDICTIONS.format(split=split)
    lines = []
    for rec in pd.read_parquet(root / f"{split}.parquet").to_dict("records"):
        try:
            output = "".join(oracle_turns(root, split, rec))
        except (TypeError, ValueError):  # no shown frame holds the target
            output = ("<thinking>The target is not in the shown frames.</thinking>\n<keyframe> 0 "
                      '</keyframe><answer>{"bbox_2d": [0, 0, 0, 0], "point_2d": [0, 0]}</answer>')
        lines.append(json.dumps({
            "id": str(rec["id"]), "data_source": f"Search_RVOS_{rec['ability']}",
            "video_path": str((root / split / "JPEGImages" / str(rec["video"])).resolve()),
            "output": output,
        }))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
    return path
