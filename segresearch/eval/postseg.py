"""Masks from saved predictions: the published post-segmentation, resumable.

Rows are grouped by video so each video is opened once and its segmenter session (SAM 2's
inference state) serves all its queries, reset between them. Each query's prompt comes
from its output text by the published rule (first ``<keyframe>``, strict JSON answer);
without a usable one it gets empty masks for every frame. A query whose mask folder exists
and is recorded in ``segment.jsonl`` is complete (folders appear by rename only when every
frame is written) and is skipped, so a killed run resumes where it stopped; what a killed
writer left half done is removed first. Each query's prompt carries a seed made from its
id, so a segmenter that draws random numbers cuts the same masks in a clean, a resumed and
a sharded run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segresearch.core.coords import QWEN3, CoordFrame
from segresearch.core.media import IMAGE_EXTS, Media, MediaError, open_media
from segresearch.eval.datasets import DatasetError, safe_name
from segresearch.eval.predictions import PredictionLog, read_predictions
from segresearch.tools.segmenters import (
    Segmenter,
    VideoSession,
    prompt_from_output,
    remove_partial_outputs,
    stable_seed,
    write_mask_set,
    write_overlay_video,
)

log = logging.getLogger(__name__)

SEGMENT_LOG = "segment.jsonl"


@dataclass
class SegJob:
    """One query to segment: where its frames are and what the model said."""

    id: str
    media: str  # frame folder, video file or image
    output: str
    kind: str = "video"  # "image": a single frame, no keyframe tag needed


def resolve_media_path(path: str, root: str | os.PathLike[str] | None) -> str:
    """A dump's ``video_path`` on this machine: as written when it exists, else the
    longest tail of it found under ``root`` (dumps carry the absolute paths of the machine
    that made them, e.g. ``/home/x/data/OK_VOS/test/JPEGImages/<video>``)."""
    p = Path(path).expanduser()
    if p.exists():
        return str(p)
    if root is not None:
        base = Path(root).expanduser()
        parts = [q for q in p.parts if q not in (p.anchor, "")]
        for k in range(len(parts)):
            cand = base.joinpath(*parts[k:])
            if cand.exists():
                return str(cand)
    where = f" or under {root}" if root is not None else " (give --root to look under a dataset folder)"
    raise DatasetError(f"media not found: {path}{where}")


def complete_ids(seg_root: Path) -> set[str]:
    """Folder names of finished mask sets (temporary folders start with a dot)."""
    if not seg_root.is_dir():
        return set()
    return {p.name for p in seg_root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _segment_log_rows(seg_root: Path) -> dict[str, dict[str, Any]]:
    return read_predictions(seg_root / SEGMENT_LOG).rows


def query_seed(qid: str) -> int:
    """The seed of a query's prompt: its id's, the same in every run and process."""
    return stable_seed("query", str(qid))


def output_hash(output: str) -> str:
    return hashlib.sha1((output or "").encode("utf-8", "replace")).hexdigest()


def segmenter_key(segmenter: Segmenter) -> str:
    return json.dumps(segmenter.describe(), sort_keys=True, default=str)


def pending_jobs(
    jobs: Sequence[SegJob], seg_root: Path, key: str, redo: Iterable[str] = (),
    records: dict[str, dict[str, Any]] | None = None,
) -> list[SegJob]:
    """The jobs without a finished folder made from the same output by the same segmenter.

    A folder the log does not know is redone: a run killed between writing it and logging
    it (or a sharded run killed before its driver logged a worker's queries) has no record
    of its prompt, and the results need one."""
    done = complete_ids(seg_root)
    records = _segment_log_rows(seg_root) if records is None else records
    redo = set(redo)
    out = []
    for j in jobs:
        rec = records.get(j.id)
        stale = j.id in redo or rec is None or (
            rec.get("output_sha1") != output_hash(j.output) or rec.get("segmenter_key") != key)
        if safe_name(j.id) not in done or stale:
            out.append(j)
    return out


def segment_jobs(
    jobs: Sequence[SegJob],
    seg_root: str | os.PathLike[str],
    segmenter: Segmenter,
    *,
    coords: CoordFrame = QWEN3,
    overlays_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    on_query: Callable[[dict[str, Any]], None] | None = None,
    write_log: bool = True,
    redo: Iterable[str] = (),
    clean: bool = True,
) -> dict[str, dict[str, Any]]:
    """Write ``seg_root/<id>/<frame>.png`` for every job not done yet; returns the
    ``segment.jsonl`` records of all jobs (earlier runs' included).

    Done means: the folder exists and the log says it was made from the same output text by
    the same segmenter (a re-run prediction or another segmenter redoes it). Workers of a
    sharded run pass ``write_log=False`` and leave the log to the process that collects
    their records, and ``clean=False``: partial outputs of killed runs are removed by the
    one process that starts the work (``clean``), never beside live writers."""
    seg_root = Path(seg_root)
    seg_root.mkdir(parents=True, exist_ok=True)
    if clean:
        remove_stale_outputs(seg_root, overlays_dir)
    records = _segment_log_rows(seg_root)
    key = segmenter_key(segmenter)
    pending = pending_jobs(jobs, seg_root, key, redo, records)
    groups: dict[str, list[SegJob]] = {}
    for j in pending:
        groups.setdefault(j.media, []).append(j)
    seg_log = PredictionLog(seg_root / SEGMENT_LOG) if write_log else None
    with tqdm(total=len(pending), desc=f"segment ({segmenter.name})", unit="query",
              disable=not progress, dynamic_ncols=True) as bar:
        for media_path, group in groups.items():
            for rec in _segment_video(media_path, group, seg_root, segmenter, coords,
                                      overlays_dir):
                rec["segmenter_key"] = key
                if seg_log is not None:
                    seg_log.append(rec)
                records[rec["id"]] = rec
                if on_query is not None:
                    on_query(rec)
                bar.set_postfix_str(Path(media_path).name, refresh=False)
                bar.update(1)
    return records


def remove_stale_outputs(
    seg_root: Path, overlays_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """Partial mask sets and overlays of killed runs under the mask root and the overlays
    folder (only the names our writers give them)."""
    removed = remove_partial_outputs(seg_root)
    if overlays_dir is not None:
        removed += remove_partial_outputs(overlays_dir)
    return removed


def _segment_video(
    media_path: str,
    group: Iterable[SegJob],
    seg_root: Path,
    segmenter: Segmenter,
    coords: CoordFrame,
    overlays_dir: str | os.PathLike[str] | None,
) -> Iterable[dict[str, Any]]:
    """Every query of one video, with one session opened on first need."""
    try:
        media: Media | None = open_media(media_path)
    except MediaError as e:
        media = None
        problem = str(e)
    session: VideoSession | None = None
    try:
        for job in group:
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"id": job.id, "media": media_path, "segmenter": segmenter.name,
                                   "output_sha1": output_hash(job.output)}
            if media is None:
                # Nothing can be written without the frames; scoring counts every annotated
                # frame of this query as an empty mask.
                rec.update(prompt=None, problem=f"media unavailable: {problem}", frames=0)
                yield rec
                continue
            parsed = prompt_from_output(
                job.output, media.frame_ids, media.width, media.height, coords=coords,
                single_image=job.kind == "image" or len(media) == 1,
            )
            dest = seg_root / safe_name(job.id)
            if parsed.prompt is None:
                info = write_mask_set(dest, media, ())
            else:
                if session is None:
                    session = segmenter.open(media)
                prompt = replace(parsed.prompt, seed=query_seed(job.id))
                info = write_mask_set(dest, media, session.masks(prompt))
            if overlays_dir is not None and len(media) > 1:
                write_overlay_video(media, dest, Path(overlays_dir) / f"{safe_name(job.id)}.mp4",
                                    parsed.prompt, label=segmenter.name)
            rec.update(
                prompt=None if parsed.prompt is None else parsed.prompt.as_dict(),
                problem=parsed.problem, first_keyframe=parsed.keyframe,
                nonfinite=list(parsed.nonfinite),
                frames=info.frames, reached=info.reached,
                nonempty=sum(1 for a in info.area.values() if a),
                seconds=round(time.perf_counter() - t0, 3),
            )
            yield rec
    finally:
        if session is not None:
            session.close()


def jobs_from_rows(
    rows: Iterable[dict[str, Any]], root: str | os.PathLike[str] | None = None
) -> tuple[list[SegJob], list[tuple[str, str]]]:
    """Jobs for prediction rows (ours or the published dump's), and (id, problem) for rows
    whose media cannot be found."""
    jobs: list[SegJob] = []
    problems: list[tuple[str, str]] = []
    for row in rows:
        qid = str(row["id"])
        raw = row.get("video_path") or row.get("media")
        if not raw:
            problems.append((qid, "row has no video_path"))
            continue
        try:
            path = resolve_media_path(str(raw), root)
        except DatasetError as e:
            problems.append((qid, str(e)))
            continue
        kind = "image" if Path(path).is_file() and Path(path).suffix.lower() in IMAGE_EXTS else "video"
        jobs.append(SegJob(id=qid, media=path, output=str(row.get("output") or ""), kind=kind))
    return jobs, problems
