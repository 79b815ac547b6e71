"""Masks from saved predictions: the published post-segmentation, resumable.

Rows are grouped by video so each video is opened once and its segmenter session (SAM 2's
inference state) serves all its queries, reset between them. Each query's prompt comes
from its output text by the published rule (first ``<keyframe>``, strict JSON answer),
or, for a tools-mode prediction (whose text holds tool calls, not tags), from the graph's
structured answer saved with it; without a usable one it gets empty masks for every frame. A query whose mask folder exists
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
    ParsedOutput,
    Segmenter,
    VideoSession,
    prompt_from_answer,
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
    """One query to segment: where its frames are and what the model said.

    A job with an ``answer`` is read from it (a tools-mode prediction: its output text holds
    tool calls, not tags); one without is read from ``output`` by the published rule."""

    id: str
    media: str  # frame folder, video file or image
    output: str
    kind: str = "video"  # "image": a single frame, no keyframe tag needed
    # the graph's structured answer {"keyframe" (a frame id), "bbox_2d", "point_2d"} on the
    # evaluation's grid; None for the published reading
    answer: dict[str, Any] | None = None
    tools: bool = False  # a tools-mode row: read ``answer`` (None there: no answer was given)


def job_from_row(qid: str, media: str, row: dict[str, Any], kind: str = "video") -> SegJob:
    """The job for one prediction row: a ``tools`` row (``protocol`` recorded by
    ``predict``) carries its structured answer; every other row, the published dump's
    included, is read from its output text."""
    tools = row.get("protocol") == "tools"
    answer = row.get("answer") if tools and isinstance(row.get("answer"), dict) else None
    return SegJob(id=qid, media=media, output=str(row.get("output") or ""), kind=kind,
                  answer=answer, tools=tools)


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


def job_hash(job: SegJob) -> str:
    """What a finished mask set was made from: the output text, and for a tools-mode job
    its answer too (the graph's reading of the calls, which the text alone does not fix)."""
    if not job.tools:
        return output_hash(job.output)
    return output_hash(job.output + "\n" + json.dumps(job.answer, sort_keys=True, default=str))


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
            rec.get("output_sha1") != job_hash(j) or rec.get("segmenter_key") != key)
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
                                   "output_sha1": job_hash(job)}
            if media is None:
                # Nothing can be written without the frames; scoring counts every annotated
                # frame of this query as an empty mask.
                rec.update(prompt=None, problem=f"media unavailable: {problem}", frames=0)
                yield rec
                continue
            single = job.kind == "image" or len(media) == 1
            if job.tools:
                parsed = _read_answer(job.answer, media, coords, single)
            else:
                parsed = prompt_from_output(job.output, media.frame_ids, media.width, media.height,
                                            coords=coords, single_image=single)
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


def _read_answer(answer: dict[str, Any] | None, media: Media, coords: CoordFrame,
                 single: bool) -> ParsedOutput:
    """A tools-mode answer as the graph's segment step reads it (``prompt_from_answer``: the
    same float32 scaling as the published rule). Its keyframe is a frame id, the one the
    model was shown; a single image's frame is its only one."""
    if answer is None:
        return ParsedOutput(None, None, "no answer call")
    if single and media.frame_ids:
        answer = {**answer, "keyframe": media.frame_ids[0]}
    key = answer.get("keyframe")
    if key is None:
        return ParsedOutput(None, None, "the answer names no keyframe")
    if not single and key not in media.frame_ids:
        return ParsedOutput(None, None, f"keyframe {key} is not a frame of the video")
    try:
        prompt = prompt_from_answer(answer, media.width, media.height, coords)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return ParsedOutput(None, None, f"answer lacks a usable bbox_2d/point_2d ({type(e).__name__})")
    if prompt is None:
        return ParsedOutput(None, None, "answer has no usable box or point")
    return ParsedOutput(prompt, None, None)


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
        jobs.append(job_from_row(qid, path, row, kind))
    return jobs, problems
