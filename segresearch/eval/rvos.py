"""MeViS and ReVOS: referring / reasoning video object segmentation sets, as queries.

Both releases share one shape. An expressions file ``{"videos": {video: {"expressions":
{exp_id: {"exp": text, "obj_id": [...], "anno_id": [...], "type_id"?}}, "frames":
[names]}}}`` names, per expression, the annotations of the objects it refers to; frames
are ``JPEGImages/<video>/<name>.jpg``; ``mask_dict.json`` maps an annotation id to one COCO
RLE per frame of its video (``null`` where the object is absent). An expression may refer
to several objects: its ground truth on a frame is the union of their masks, and it is
scored, as the official evaluations score it, on every frame of the video (J and F per
frame, DAVIS conventions, averaged over the frames, then over expressions).

Layouts:
- MeViS: ``ROOT/<split>/meta_expressions.json``, ``ROOT/<split>/JPEGImages/``,
  ``ROOT/<split>/mask_dict.json`` (``valid_u`` and ``train`` have masks; ``valid`` is
  scored by the online server only and has none).
- ReVOS: ``ROOT/meta_expressions_valid_.json``, ``ROOT/JPEGImages/``,
  ``ROOT/mask_dict.json``; ``type_id`` 0 is a referring expression, 1 a reasoning one.

A query's ``gt`` is the ``mask_dict.json`` path and ``extra`` holds its ``anno_ids``, the
video's ``frames`` and ``video_anno_ids`` (every annotation an expression of the video
names); :func:`union_mask` gives the ground truth of one frame, :func:`foreground_mask` the
video's foreground.

ReVOS' robustness score R as its released evaluation computes it (VISA ``tools/eval_revos.py``
with ``tools/metrics.py``): per frame ``max(1 - |pred minus gt| / (|foreground| + 1e-6), 0)``,
the foreground being the union of every annotated object of the video (what its
``mask_dict_foreground.json`` holds; ``generate_foreground_mask.py`` makes that file from the
same two files, so it is derived here instead of required), averaged over the frames of
the video, then over the expressions of a group; overall is the mean of the referring and
the reasoning rows, as for J and F. It punishes mask on what the expression does not name,
against how much of the video is annotated at all. Two quirks of that script are not
followed, since each depends on how a PNG is stored rather than on the mask: it counts
``(1 - gt) * pred`` in uint8, so a prediction stored 0/255 (ours, and the published
Seg-ReSearch writer) weighs each false-positive pixel 255 times, and a pixel where two of
the expression's objects overlap (ground truth summed to 2) wraps to 255 and counts as a
false positive. Here masks are binary and the ground truth is their union: the script's
number for 0/1 masks of objects that do not overlap.

Against the official J&F scripts (MeViS ``eval_mevis.py``, ReVOS ``eval_revos.py``): both
score every frame of the video against the union of the expression's objects with DAVIS'
``db_eval_iou`` / ``db_eval_boundary`` (which ``eval.metrics`` follows), and a group's J&F
is the mean of J and F over its expressions, as here. Differences: where a video's
prediction folder is missing they score J = F = 0 (the ReVOS script also 0 for an
expression with a missing or unreadable frame), where here a missing folder or frame is
an empty mask, which scores 1 on the frames where the expression's objects are absent;
and the ReVOS script rounds each expression's J, F and R to 0.01 percentage points before
the group means (at most 0.005 points from ours).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from segresearch.core.media import open_media
from segresearch.core.rle import RLEError, decode
from segresearch.core.shared_cache import LoadOnce
from segresearch.eval.datasets import DatasetError, Query, _frame_file

RVOS_DATASETS = ("mevis", "revos")
MEVIS_META = "meta_expressions.json"
REVOS_META = "meta_expressions_valid_.json"
MASK_DICT = "mask_dict.json"
# ReVOS groups, in the order its paper's table prints them (overall last); type 2 is an
# expression without a target, which the official script leaves out of all three
REVOS_TYPES = {0: "referring", 1: "reasoning", 2: "no-target"}
REVOS_GROUPS = ("referring", "reasoning")
MEVIS_GROUP = "referring"

# mask_dict.json files by (path, size, mtime): read once however many queries score at once
_MASK_DICTS: LoadOnce[dict[str, Any]] = LoadOnce(maxsize=2, name="eval.rvos_mask_dicts")


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not JSON ({e})") from None


def mask_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The annotations of a ``mask_dict.json`` (cached by path, size and modification time)."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        raise DatasetError(f"mask annotations not found: {p}") from None

    def load() -> dict[str, Any]:
        data = _read_json(p, "mask annotations")
        if not isinstance(data, dict):
            raise DatasetError(f"{p}: expected {{annotation id: [RLE per frame]}}")
        return data

    return _MASK_DICTS.get((str(p), st.st_size, st.st_mtime_ns), load)


def load_mevis(root: str | os.PathLike[str], split: str = "valid_u", limit: int | None = None) -> list[Query]:
    """The expressions of a MeViS split (``ROOT/<split>/``) in file order."""
    base = Path(root).expanduser() / split
    return _load(base / MEVIS_META, base, "mevis", limit)


def load_revos(root: str | os.PathLike[str], limit: int | None = None) -> list[Query]:
    """The expressions of ReVOS's validation set (``ROOT/meta_expressions_valid_.json``)."""
    base = Path(root).expanduser()
    return _load(base / REVOS_META, base, "revos", limit)


def load_rvos(dataset: str, root: str | os.PathLike[str], split: str | None,
              limit: int | None = None) -> list[Query]:
    if dataset == "mevis":
        return load_mevis(root, split or "valid_u", limit)
    if dataset == "revos":
        return load_revos(root, limit)
    raise DatasetError(f"unknown data set {dataset!r} ({', '.join(RVOS_DATASETS)})")


def _ids(value: Any, where: str, key: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise DatasetError(f"{where}: {key!r} must be a list of integers")
    return list(value)


def _group(dataset: str, exp: dict[str, Any], where: str) -> str:
    if dataset == "mevis":
        return MEVIS_GROUP
    t = exp.get("type_id", 0)
    if not isinstance(t, int) or isinstance(t, bool):
        raise DatasetError(f"{where}: 'type_id' must be an integer")
    return REVOS_TYPES.get(t, f"type-{t}")


def _load(meta_path: Path, base: Path, dataset: str, limit: int | None) -> list[Query]:
    meta = _read_json(meta_path, f"{dataset} expressions")
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise DatasetError(f"{meta_path}: expected {{\"videos\": {{video: {{\"expressions\", \"frames\"}}}}}}")
    masks_path = base / MASK_DICT
    masks = mask_dict(masks_path)
    frames_root = base / "JPEGImages"
    out: list[Query] = []
    for vid, v in videos.items():
        where_v = f"{meta_path} video {vid}"
        if not isinstance(v, dict) or not isinstance(v.get("expressions"), dict):
            raise DatasetError(f"{where_v}: no 'expressions'")
        frames = v.get("frames")
        if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
            raise DatasetError(f"{where_v}: 'frames' must be a non-empty list of frame names")
        folder = frames_root / vid
        if not folder.is_dir():
            raise DatasetError(f"{where_v}: frame folder not found: {folder}")
        # every annotation of the video is checked before its first expression: the
        # foreground (robustness R) is the union of all of them
        video_annos: dict[int, None] = {}
        for exp_id, exp in v["expressions"].items():
            where = f"{where_v} expression {exp_id}"
            if not isinstance(exp, dict) or not isinstance(exp.get("exp"), str) or not exp["exp"].strip():
                raise DatasetError(f"{where}: no 'exp' text")
            for a in _ids(exp.get("anno_id", []), where, "anno_id"):
                runs = masks.get(str(a))
                if not isinstance(runs, list):
                    raise DatasetError(f"{where}: annotation {a} not in {masks_path}")
                if len(runs) != len(frames):
                    raise DatasetError(f"{masks_path}: annotation {a} has {len(runs)} frame masks, "
                                       f"its video {vid} {len(frames)} frames")
                video_annos[a] = None
        for exp_id, exp in v["expressions"].items():
            if limit is not None and len(out) >= limit:
                return out
            where = f"{where_v} expression {exp_id}"
            anno_ids = _ids(exp.get("anno_id", []), where, "anno_id")
            out.append(Query(
                id=f"{vid}_{exp_id}", question=" ".join(exp["exp"].split()),
                ability=_group(dataset, exp, where),
                media=[str(_frame_file(folder, n)) for n in frames],
                segment_media=str(folder), gt=str(masks_path), kind="video", video=str(folder),
                extra={"dataset": dataset, "video_name": vid, "exp_id": str(exp_id),
                       "obj_ids": _ids(exp.get("obj_id", []), where, "obj_id"),
                       "anno_ids": anno_ids, "video_anno_ids": list(video_annos),
                       "frames": list(frames)},
            ))
    return out


def is_rle_query(q: Query) -> bool:
    """Whether a query's ground truth is RLE annotations (MeViS / ReVOS)."""
    return q.kind == "video" and "anno_ids" in q.extra


def frame_size(q: Query) -> tuple[int, int]:
    """(height, width) of a query's video: an annotation's size, else its first frame's."""
    masks = mask_dict(q.gt)
    for a in q.extra["anno_ids"]:
        for rle in masks[str(a)]:
            if isinstance(rle, dict) and "size" in rle:
                h, w = rle["size"]
                return int(h), int(w)
    media = open_media(q.segment_media)
    return media.height, media.width


def union_mask(q: Query, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The ground truth of frame ``index`` of a MeViS / ReVOS query: the union of the masks
    of every annotation it names (empty where none of its objects is visible)."""
    return _union(q, q.extra["anno_ids"], index, size)


def _union(q: Query, anno_ids: list[int], index: int, size: tuple[int, int] | None) -> np.ndarray:
    masks = mask_dict(q.gt)
    h, w = size or frame_size(q)
    out = np.zeros((h, w), bool)
    for a in anno_ids:
        rle = masks[str(a)][index]
        if rle is None:
            continue
        try:
            m = decode(rle)
        except RLEError as e:
            raise DatasetError(f"{q.gt}: annotation {a} frame {index}: {e}") from None
        if m.shape != out.shape:
            raise DatasetError(f"{q.gt}: annotation {a} frame {index} is {m.shape[1]}x{m.shape[0]}, "
                               f"the video {w}x{h}")
        out |= m
    return out


def object_mask(q: Query, anno_id: int, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """One of the query's objects on frame ``index``: annotation ``anno_id``'s own mask
    (empty where it is absent), for matching objects one to one."""
    return _union(q, [anno_id], index, size)


def foreground_mask(q: Query, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The foreground of frame ``index`` of a query's video: the union of every object any
    expression of the video names (ReVOS' ``mask_dict_foreground.json``)."""
    return _union(q, q.extra.get("video_anno_ids", q.extra["anno_ids"]), index, size)


def robustness(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """ReVOS' robustness per frame of (T, H, W) masks: ``max(1 - |pred minus gt| /
    (|foreground| + 1e-6), 0)`` (binary masks; see the module docstring)."""
    g, p, f = (np.asarray(m) > 0 for m in (gt, pred, foreground))
    if not g.shape == p.shape == f.shape or g.ndim != 3:
        raise ValueError(f"robustness: masks must be (T, H, W) of one shape, got {g.shape}, "
                         f"{p.shape}, {f.shape}")
    neg = np.count_nonzero(p & ~g, axis=(1, 2)).astype(np.float64)
    pos = np.count_nonzero(f, axis=(1, 2)).astype(np.float64)
    return np.maximum(1.0 - neg / (pos + 1e-6), 0.0)


def revos_overall(by_group: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """ReVOS' overall row as its official script computes it: the mean of the referring and
    the reasoning rows (not of all expressions), each metric (J, F, J&F and R) on its own;
    expressions of other types count in neither. With one of the two groups only (a
    ``--limit`` run), that group's row."""
    rows = [by_group[g] for g in REVOS_GROUPS if by_group.get(g)]
    if not rows:
        return None
    keys = ("J", "F", "J&F") + (("R",) if all(r.get("R") is not None for r in rows) else ())
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["n"] = sum(int(r["n"]) for r in rows)
    return out
