"""Scores of mask folders against the ground truth, and their aggregates.

Video (OK-VOS): like the published ``eval_okvos.py``, every frame that has a ground-truth
mask file is scored (J and F averaged over those frames), ground truth and prediction are
binarised by ``> 0``, and J&F of a group is (mean J + mean F) / 2 over its queries. Unlike
it, a missing prediction folder or frame is an empty mask, never a skipped query. Images:
IoU per query with ``ignore`` pixels left out; gIoU is the mean IoU, cIoU the total
intersection over the total union.

Per-object matching (MeViS / ReVOS, whose expressions list their objects): every object the
answer named (its own mask folder, ``postseg.objects_dir``; a single-object answer: the
union folder; no usable answer: none) against every object of the expression (each
annotation's own masks), scored by video-level J (per-frame mask IoU, both empty counting
1, averaged over every frame of the video), then paired one to one (``core.matching``:
Hungarian on that IoU, summed IoU over the larger count). ``object_J`` is 1 only when the
answer names exactly the expression's objects, each with a perfect mask; naming one of two
perfect objects scores 0.5 though the union may score well. The union scores above do not
change.

Scoring runs in a thread pool: reading PNGs and the metrics' OpenCV/numpy kernels release
the GIL, and threads avoid forking a process that holds model threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from segresearch.core.matching import mask_iou, match_objects
from segresearch.core.media import open_media
from segresearch.eval.datasets import Query, image_ground_truth, safe_name
from segresearch.eval.metrics import boundary_f, region_j
from segresearch.eval.postseg import objects_dir
from segresearch.eval.rvos import (
    foreground_mask,
    frame_size,
    is_rle_query,
    object_mask,
    robustness,
    union_mask,
)

CHUNK = 32  # frames scored at once: bounded memory for long videos at full resolution


def _read_gray(path: Path) -> np.ndarray | None:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def score_video_query(q: Query, seg_dir: Path | None) -> dict[str, Any]:
    """J and F over the annotated frames of one query; missing files are empty masks.
    MeViS / ReVOS queries are scored on every frame of the video against the union of
    their objects' masks (``rvos.union_mask``), as their official evaluations score them;
    ReVOS queries also get the robustness score R (``rvos.robustness``)."""
    with_r = False
    if is_rle_query(q):
        names = [f"{n}.png" for n in q.extra["frames"]]
        size = frame_size(q)
        index = {n: i for i, n in enumerate(names)}
        with_r = q.extra.get("dataset") == "revos"

        def read_gt(name: str) -> np.ndarray | None:
            return union_mask(q, index[name], size).astype(np.uint8)
    else:
        gt_dir = Path(q.gt)
        names = sorted(p.name for p in gt_dir.glob("*.png")) if gt_dir.is_dir() else []
        if not names:
            return {"J": None, "F": None, "J&F": None, "annotated_frames": 0, "missing_frames": 0,
                    "score_error": f"no ground-truth masks in {gt_dir}"}

        def read_gt(name: str) -> np.ndarray | None:
            return _read_gray(gt_dir / name)
    js: list[np.ndarray] = []
    fs: list[np.ndarray] = []
    rs: list[np.ndarray] = []
    missing = 0
    error = None
    for start in range(0, len(names), CHUNK):
        part = names[start : start + CHUNK]
        gts, preds = [], []
        for name in part:
            gt = read_gt(name)
            if gt is None:
                raise ValueError(f"cannot read ground-truth mask {Path(q.gt) / name}")
            pred = _read_gray(seg_dir / name) if seg_dir is not None else None
            if pred is None:
                missing += seg_dir is not None
                pred = np.zeros_like(gt)
            elif pred.shape != gt.shape:
                error = f"{seg_dir / name} is {pred.shape[1]}x{pred.shape[0]}, ground truth {gt.shape[1]}x{gt.shape[0]}"
                pred = np.zeros_like(gt)
            gts.append(gt > 0)
            preds.append(pred > 0)
        g, p = np.stack(gts), np.stack(preds)
        js.append(region_j(g, p))
        fs.append(boundary_f(g, p))
        if with_r:
            fg = np.stack([foreground_mask(q, index[name], size) for name in part])
            rs.append(robustness(g, p, fg))
    j_all, f_all = np.concatenate(js), np.concatenate(fs)
    j = float(j_all.mean())
    f = float(f_all.mean())
    out: dict[str, Any] = {"J": j, "F": f, "J&F": (j + f) / 2, "annotated_frames": len(names),
                           "missing_frames": missing if seg_dir is not None else len(names),
                           "per_frame": per_frame_scores(names, j_all, f_all)}
    if with_r:
        out["R"] = float(np.concatenate(rs).mean())
    if error:
        out["score_error"] = error
    return out


def per_frame_scores(names: Sequence[str], j: np.ndarray, f: np.ndarray) -> dict[str, list[Any]]:
    """J and F of every annotated frame (by mask file stem), so a report can show where in
    a video a query went wrong; four decimals are a hundredth of a percentage point."""
    return {"frame": [Path(n).stem for n in names], "J": [round(float(v), 4) for v in j],
            "F": [round(float(v), 4) for v in f]}


def score_image_query(q: Query, seg_dir: Path | None) -> dict[str, Any]:
    """IoU of one image query (ignore pixels excluded), with its intersection and union."""
    media = open_media(q.segment_media)
    target, ignore = image_ground_truth(q, media.height, media.width)
    pred = None
    missing = 0
    if seg_dir is not None:
        m = _read_gray(seg_dir / f"{media.frame_name(media.frame_ids[0])}.png")
        if m is not None and m.shape == target.shape:
            pred = m > 0
        else:
            missing = 1
    if pred is None:
        pred = np.zeros_like(target)
    if ignore is not None:
        keep = ~ignore
        target, pred = target & keep, pred & keep
    inter = int(np.count_nonzero(target & pred))
    union = int(np.count_nonzero(target | pred))
    return {"IoU": inter / union if union else 1.0, "intersection": inter, "union": union,
            "annotated_frames": 1, "missing_frames": missing if seg_dir is not None else 1}


def score_queries(
    queries: Sequence[Query], seg_root: Path, *, workers: int | None = None, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Scores by query id; a query without a mask folder scores as empty masks."""
    def one(q: Query) -> tuple[str, dict[str, Any]]:
        d = seg_root / safe_name(q.id)
        seg_dir = d if d.is_dir() else None
        try:
            s = score_video_query(q, seg_dir) if q.kind == "video" else score_image_query(q, seg_dir)
        except Exception as e:  # noqa: BLE001 - a broken ground-truth file is reported, not fatal
            s = {"score_error": f"{type(e).__name__}: {e}", "annotated_frames": 0, "missing_frames": 0}
            s.update({"J": None, "F": None, "J&F": None} if q.kind == "video" else {"IoU": None})
        s["missing_masks"] = seg_dir is None
        return q.id, s

    n = workers or min(8, os.cpu_count() or 1)
    out: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max(1, n)) as pool, tqdm(
        total=len(queries), desc="score", unit="query", disable=not progress, dynamic_ncols=True
    ) as bar:
        for qid, s in pool.map(one, queries):
            out[qid] = s
            bar.update(1)
    return out


def predicted_object_dirs(seg_root: Path, qid: str, record: dict[str, Any] | None) -> list[Path]:
    """The mask folders of the objects a query's answer named, from its ``segment.jsonl``
    record: one per object for several, the union folder for one, none without a prompt."""
    if not record or record.get("prompt") is None:
        return []
    n = int(record.get("objects") or 1)
    if n > 1:
        root = objects_dir(seg_root, qid)
        return [root / str(k + 1) for k in range(n)]
    return [seg_root / safe_name(qid)]


def score_query_objects(q: Query, pred_dirs: Sequence[Path]) -> dict[str, Any]:
    """Per-object matching of one MeViS / ReVOS query (module docstring): ``object_J``,
    ``objects_pred``, ``objects_gt`` and ``object_pairs`` ``[prediction, gt object, J]``
    (0-based; gt objects in the expression's ``anno_id`` order). A missing predicted
    frame is an empty mask. Frames are read one at a time (memory does not grow with the
    video)."""
    annos = list(q.extra["anno_ids"])
    names = [f"{n}.png" for n in q.extra["frames"]]
    iou = np.zeros((len(pred_dirs), len(annos)))
    if pred_dirs and annos:
        size = frame_size(q)
        for i, name in enumerate(names):
            gts = [object_mask(q, a, i, size) for a in annos]
            for r, d in enumerate(pred_dirs):
                m = _read_gray(d / name)
                pred = m > 0 if m is not None and m.shape == size else np.zeros(size, bool)
                for c, g in enumerate(gts):
                    iou[r, c] += mask_iou(pred, g)
        iou /= len(names)
    match = match_objects(iou)
    return {"object_J": match.mean_iou, "objects_pred": len(pred_dirs), "objects_gt": len(annos),
            "object_pairs": [[p, g, round(v, 6)] for p, g, v in match.pairs]}


def score_objects(
    queries: Sequence[Query], seg_root: Path, records: dict[str, dict[str, Any]], *,
    workers: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-object matching of every query whose ground truth lists objects (MeViS, ReVOS),
    by query id; other queries are left out."""
    todo = [q for q in queries if is_rle_query(q)]

    def one(q: Query) -> tuple[str, dict[str, Any]]:
        try:
            return q.id, score_query_objects(q, predicted_object_dirs(seg_root, q.id, records.get(q.id)))
        except Exception as e:  # noqa: BLE001 - reported with the query, as score_queries does
            return q.id, {"object_J": None, "object_score_error": f"{type(e).__name__}: {e}"}

    n = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, n)) as pool:
        return dict(pool.map(one, todo))


def object_groups(per_query: Sequence[dict[str, Any]], abilities: Sequence[str] = (),
                  overall_of: Sequence[str] = ()) -> dict[str, Any] | None:
    """Per-object numbers overall and per group: the mean ``object_J`` and how many
    queries named as many objects as the expression has (``right_count``); None when no
    query has them (OK-VOS, images).

    ``overall_of`` (ReVOS: referring and reasoning) makes the overall row the mean of those
    groups' ``object_J``, the counts their sums, as ReVOS' J&F overall is computed
    (``rvos.revos_overall``; other groups count in neither), and is recorded under that
    key; without it the overall is the mean over every scored query (MeViS)."""
    scored = [q for q in per_query if q.get("object_J") is not None]
    if not scored:
        return None

    def group(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"object_J": float(np.mean([i["object_J"] for i in items])),
                "right_count": sum(1 for i in items if i["objects_pred"] == i["objects_gt"]),
                "several_gt": sum(1 for i in items if i["objects_gt"] > 1), "n": len(items)}

    order = list(abilities) + sorted({q["ability"] for q in scored} - set(abilities))
    by = {a: group([q for q in scored if q["ability"] == a]) for a in order
          if any(q["ability"] == a for q in scored)}
    if not overall_of:
        return {"overall": group(scored), "by_ability": by}
    rows = [by[g] for g in overall_of if g in by]
    overall = None
    if rows:  # with one of the groups only (a --limit run), that group's row
        overall = {"object_J": float(np.mean([r["object_J"] for r in rows])),
                   **{k: sum(int(r[k]) for r in rows) for k in ("right_count", "several_gt", "n")}}
    return {"overall": overall, "by_ability": by, "overall_of": list(overall_of)}


def _video_group(items: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    items = [i for i in items if i.get("J") is not None]
    if not items:
        return None
    j = float(np.mean([i["J"] for i in items]))
    f = float(np.mean([i["F"] for i in items]))
    out: dict[str, Any] = {"J": j, "F": f, "J&F": (j + f) / 2, "n": len(items)}
    if all(i.get("R") is not None for i in items):  # ReVOS: robustness, averaged the same way
        out["R"] = float(np.mean([i["R"] for i in items]))
    return out


def _image_group(items: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    items = [i for i in items if i.get("IoU") is not None]
    if not items:
        return None
    inter = sum(i["intersection"] for i in items)
    union = sum(i["union"] for i in items)
    return {"gIoU": float(np.mean([i["IoU"] for i in items])),
            "cIoU": inter / union if union else 1.0, "n": len(items)}


def aggregate(per_query: Sequence[dict[str, Any]], kind: str, abilities: Sequence[str] = ()) -> dict[str, Any]:
    """Overall, per ability (in the given order first) and by number of searches."""
    group = _video_group if kind == "video" else _image_group
    order = list(abilities) + sorted({q["ability"] for q in per_query} - set(abilities))
    by_ability = {}
    for a in order:
        g = group(q for q in per_query if q["ability"] == a)
        if g is not None:
            by_ability[a] = g
    by_searches = {}
    for k in sorted({int(q.get("num_search") or 0) for q in per_query}):
        g = group(q for q in per_query if int(q.get("num_search") or 0) == k)
        if g is not None:
            by_searches[str(k)] = g
    return {"overall": group(per_query), "by_ability": by_ability, "by_searches": by_searches}
