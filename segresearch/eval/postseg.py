"""Masks from saved predictions: the published post-segmentation, resumable.

Rows are grouped by video so each video is opened once and its segmenter session (SAM 2's
inference state) serves all its queries, reset between them. Each query's prompt comes
from its output text by the published rule (first ``<keyframe>``, strict JSON answer),
or, for a tools-mode prediction (whose text holds tool calls, not tags), from the graph's
structured answer saved with it; without a usable one it gets empty masks for every frame.

Answers naming several objects (issue 22): a tools row's structured ``objects`` (two or
more, each on its own keyframe), and in our reading (``ANSWER_RULES``: ``objects``, the
default) a tag output whose first ``<answer>`` holds a strict-JSON LIST of two or more
published objects, read with ``core.protocol``'s parser on the first ``<keyframe>`` tag's
frame, as the published rule places a single answer. The ``published`` rule reads that
list as the published script does: it indexes ``pred["bbox_2d"]`` on a list, fails, and
gives no prompt; every other output reads the same under both rules. Each object is
tracked (``VideoSession.track``) and written on its own, and their union goes where a
single answer's mask goes, which is all the scorers read:

- ``<seg root>/<id>/<frame>.png``: the union (one object: its masks), as always;
- ``<seg root>/@objects/<id>/<k>/<frame>.png``: object k (1-based, in answer order), only
  for answers naming two or more usable objects. ``@`` is a character ``safe_name``
  never leaves in a query's folder name, so no query's folder can be ``@objects``.

A killed run leaves partial folders under ``@objects/<id>/`` too; they are removed with
the others (:func:`remove_stale_outputs`), and a query redone with fewer objects, one, or
none loses the folders it no longer has. A query whose mask folder exists
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
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segresearch.core.coords import QWEN3, CoordFrame
from segresearch.core.media import IMAGE_EXTS, Media, MediaError, open_media
from segresearch.core.protocol import AnswerAction, answer_objects
from segresearch.eval.datasets import DatasetError, safe_name
from segresearch.eval.predictions import PredictionLog, read_predictions
from segresearch.tools.segmenters import (
    OverlayObject,
    ParsedOutput,
    Prompt,
    Segmenter,
    VideoSession,
    prompt_from_answer,
    prompt_from_output,
    remove_partial_outputs,
    stable_seed,
    write_mask_set,
    write_object_mask_sets,
    write_overlay_video,
)
from segresearch.tools.segmenters.prompting import ANSWER_RE

log = logging.getLogger(__name__)

SEGMENT_LOG = "segment.jsonl"
OBJECTS_DIR = "@objects"  # per-object mask folders under the mask root (module docstring)
# How a tag output's <answer> is read: "objects" (ours: a list of two or more objects is
# segmented per object) or "published" (the published post-segmentation exactly: a list
# gives no prompt). Tools rows have no published rule; they always read their objects.
ANSWER_RULES = ("objects", "published")


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
    # two or more objects the answer names (tools: the graph's objects, each with its
    # keyframe; tags, our reading: the <answer> list's objects, no keyframe), on the
    # evaluation's grid; None for a single-object answer
    objects: list[dict[str, Any]] | None = None


def objects_dir(seg_root: str | os.PathLike[str], qid: str) -> Path:
    """Where the per-object mask folders of query ``qid`` are (``<k>/``, k from 1)."""
    return Path(seg_root) / OBJECTS_DIR / safe_name(qid)


def tag_answer_objects(output: str) -> list[dict[str, Any]] | None:
    """The objects of a tag output's answer when it names two or more: the first
    ``<answer>`` on one line (the published rule's), strict JSON, a list, read element by
    element with ``core.protocol``'s parser (``bbox_2d``, ``point_2d``, optional ``label``).
    None for anything else, which the published rule then reads alone."""
    m = ANSWER_RE.search(output or "")
    if m is None:
        return None
    try:
        items = json.loads(m.group(1).strip())
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(items, list) or len(items) < 2:
        return None
    got = answer_objects(items)
    if not isinstance(got, AnswerAction) or not got.objects:
        return None
    return [{"bbox_2d": list(o.bbox_2d), "point_2d": list(o.point_2d), "label": o.label}
            for o in got.objects]


def _row_objects(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    objs = row.get("objects")
    if isinstance(objs, list) and len(objs) > 1 and all(isinstance(o, dict) for o in objs):
        return objs
    return None


def job_from_row(qid: str, media: str, row: dict[str, Any], kind: str = "video",
                 rule: str = "objects") -> SegJob:
    """The job for one prediction row: a ``tools`` row (``protocol`` recorded by
    ``predict``) carries its structured answer (and its ``objects`` when it names several);
    every other row, the published dump's included, is read from its output text, by
    ``rule`` (``ANSWER_RULES``)."""
    if rule not in ANSWER_RULES:
        raise ValueError(f"unknown answer rule {rule!r} ({', '.join(ANSWER_RULES)})")
    tools = row.get("protocol") == "tools"
    answer = row.get("answer") if tools and isinstance(row.get("answer"), dict) else None
    output = str(row.get("output") or "")
    if tools:
        objects = _row_objects(row) if answer is not None else None
    else:
        objects = tag_answer_objects(output) if rule == "objects" else None
    return SegJob(id=qid, media=media, output=output, kind=kind, answer=answer, tools=tools,
                  objects=objects)


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
    """Folder names of finished mask sets (temporary folders start with a dot; the
    per-object folders' root is no query's)."""
    if not seg_root.is_dir():
        return set()
    return {p.name for p in seg_root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name != OBJECTS_DIR}


def _segment_log_rows(seg_root: Path) -> dict[str, dict[str, Any]]:
    return read_predictions(seg_root / SEGMENT_LOG).rows


def query_seed(qid: str) -> int:
    """The seed of a query's prompt: its id's, the same in every run and process."""
    return stable_seed("query", str(qid))


def output_hash(output: str) -> str:
    return hashlib.sha1((output or "").encode("utf-8", "replace")).hexdigest()


def job_hash(job: SegJob) -> str:
    """What a finished mask set was made from: the output text, and for a tools-mode job
    its answer too (the graph's reading of the calls, which the text alone does not fix),
    and for an answer read as several objects those objects (so a set segmented by the
    other answer rule is redone; every other job's hash is what it always was)."""
    text = job.output
    if job.tools:
        text += "\n" + json.dumps(job.answer, sort_keys=True, default=str)
    if job.objects:
        text += "\nobjects " + json.dumps(job.objects, sort_keys=True, default=str)
    return output_hash(text)


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
    objects_root = Path(seg_root) / OBJECTS_DIR
    removed += [f"{OBJECTS_DIR}/{n}" for n in remove_partial_outputs(objects_root)]
    if objects_root.is_dir():
        for d in sorted(objects_root.iterdir()):
            if d.is_dir() and not d.is_symlink() and not d.name.startswith("."):
                removed += [f"{OBJECTS_DIR}/{d.name}/{n}" for n in remove_partial_outputs(d)]
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
            notes: list[str] = []
            if job.objects:
                parsed, prompts, notes = _read_objects(job, media, coords, single)
            elif job.tools:
                parsed = _read_answer(job.answer, media, coords, single)
                prompts = [] if parsed.prompt is None else [parsed.prompt]
            else:
                parsed = prompt_from_output(job.output, media.frame_ids, media.width, media.height,
                                            coords=coords, single_image=single)
                prompts = [] if parsed.prompt is None else [parsed.prompt]
            dest = seg_root / safe_name(job.id)
            obj_dir = objects_dir(seg_root, job.id)
            prompts = [replace(p, seed=query_seed(job.id)) for p in prompts]
            if not prompts:
                info = write_mask_set(dest, media, ())
                _remove_objects(obj_dir)
            elif len(prompts) == 1:
                if session is None:
                    session = segmenter.open(media)
                info = write_mask_set(dest, media, session.masks(prompts[0]))
                _remove_objects(obj_dir)
            else:
                if session is None:
                    session = segmenter.open(media)
                info, _ = write_object_mask_sets(dest, obj_dir, media, session.track([[p] for p in prompts]),
                                                 len(prompts))
            if overlays_dir is not None and len(media) > 1:
                objs = None if len(prompts) < 2 else [
                    OverlayObject(obj_dir / str(k + 1), (p,), p.label) for k, p in enumerate(prompts)]
                write_overlay_video(media, dest, Path(overlays_dir) / f"{safe_name(job.id)}.mp4",
                                    parsed.prompt, label=segmenter.name, objects=objs)
            if len(prompts) > 1:
                rec.update(objects=len(prompts), object_prompts=[p.as_dict() for p in prompts])
            if notes:
                rec["object_notes"] = notes
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


def _remove_objects(obj_dir: Path) -> None:
    """A query's per-object folders, once it is redone with fewer than two objects."""
    if obj_dir.is_dir() and not obj_dir.is_symlink():
        shutil.rmtree(obj_dir, ignore_errors=True)


def _read_objects(job: SegJob, media: Media, coords: CoordFrame,
                  single: bool) -> tuple[ParsedOutput, list[Prompt], list[str]]:
    """(the first object's reading, every usable object's prompt, notes) of a job whose
    answer names several objects. Tools: each object on its own keyframe, read as a single
    tools answer is; tags: every object on the frame of the output's first ``<keyframe>``
    tag, a position, as the published rule places a single answer. An object that gives
    no prompt is left out with a note; none usable: the first one's problem, no prompt."""
    assert job.objects
    if job.tools:
        readings = [_read_answer({**obj, "keyframe": obj.get("keyframe")}, media, coords, single)
                    for obj in job.objects]
    else:
        # the keyframe as the published rule reads it (its answer part fails on a list)
        where = prompt_from_output(job.output, media.frame_ids, media.width, media.height,
                                   coords=coords, single_image=single)
        if where.problem is not None and where.keyframe is None and not single:
            return where, [], []
        key = where.keyframe
        if not single and (key is None or not 0 <= key < len(media.frame_ids)):
            return where, [], []
        frame = media.frame_ids[0] if single else media.frame_ids[key]  # type: ignore[index]
        readings = [_read_answer({**obj, "keyframe": frame}, media, coords, single)
                    for obj in job.objects]
        readings = [replace(r, keyframe=key) for r in readings]
    prompts: list[Prompt] = []
    notes: list[str] = []
    for i, (obj, r) in enumerate(zip(job.objects, readings, strict=True)):
        if r.prompt is None:
            notes.append(f"objects[{i}] left out: {r.problem}")
            continue
        label = obj.get("label")
        prompts.append(replace(r.prompt, label=str(label)) if label else r.prompt)
    first = next((r for r in readings if r.prompt is not None), readings[0])
    return first, prompts, notes


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
    rows: Iterable[dict[str, Any]], root: str | os.PathLike[str] | None = None,
    rule: str = "objects",
) -> tuple[list[SegJob], list[tuple[str, str]]]:
    """Jobs for prediction rows (ours or the published dump's), read by ``rule``
    (``ANSWER_RULES``), and (id, problem) for rows whose media cannot be found."""
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
        jobs.append(job_from_row(qid, path, row, kind, rule))
    return jobs, problems
