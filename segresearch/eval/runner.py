"""From a data set and a model (or a saved predictions file) to a results table.

Steps, each resumable on its own: predictions (the graph over every query; rows appended
to ``predictions.jsonl`` as they finish), segmentation (masks from the saved outputs by the
published rule, grouped by video, into ``seg/<id>/``), scoring (every query of the split;
a missing prediction, folder or frame is an empty mask), then ``results.json``,
``results.md``, plots and ``report.html``. A folder remembers the settings it was made
with (``eval_config.json``) and refuses to mix in results of other settings. A resumed run
first removes what a killed one left half written (temporary files and folders of our own
writers, recognised by their exact names).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segresearch.core.files import write_atomic
from segresearch.eval import results as res
from segresearch.eval.datasets import (
    ABILITIES,
    DatasetError,
    Query,
    apply_meta_mapping,
    check_ground_truth,
    load_image_set,
    load_okvos,
    read_meta_mapping,
    safe_name,
)
from segresearch.eval.distributed import RayShards
from segresearch.eval.paper_table import PaperTable, PaperTableError, read_paper_table
from segresearch.eval.postseg import (
    ANSWER_RULES,
    OBJECTS_DIR,
    SEGMENT_LOG,
    job_from_row,
    segment_jobs,
)
from segresearch.eval.postseg import remove_stale_outputs as remove_seg_partials
from segresearch.eval.predict import run_predictions, uses_search
from segresearch.eval.predictions import (
    PredictionLog,
    PredictionsError,
    ability_of,
    read_predictions,
    read_usable_predictions,
)
from segresearch.eval.report_html import write_html_report
from segresearch.eval.rvos import REVOS_GROUPS, RVOS_DATASETS, load_rvos, revos_overall
from segresearch.eval.scoring import aggregate, object_groups, score_objects, score_queries
from segresearch.eval.spec import (
    CONFIG,
    OVERLAYS,
    PREDICTIONS,
    RUNS,
    SEG,
    EvalError,
    EvalSpec,
    check_config,
    resolve_spec,
    settings,
)
from segresearch.graphs.preflight import _search_problem
from segresearch.tools.segmenters import Segmenter

log = logging.getLogger(__name__)

# Files of an evaluation folder written with ``write_atomic`` (a temporary sibling
# ``.<name>.XXXXXXXX.tmp`` renamed into place), by folder; a kill leaves the temporary.
_ATOMIC_FILES = {"": (CONFIG, PREDICTIONS, "results.json", "results.md", "report.html"),
                 "plots": ("by_category.png", "score_vs_searches.png")}
_ATOMIC_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def load_queries(spec: EvalSpec) -> list[Query]:
    if spec.dataset == "okvos":
        if not spec.split:
            raise EvalError("OK-VOS evaluation needs --split")
        queries = load_okvos(spec.root, spec.split, spec.limit)
        if spec.meta_mapping:
            queries = apply_meta_mapping(queries, read_meta_mapping(spec.meta_mapping),
                                         str(spec.meta_mapping))
        return queries
    if spec.dataset == "images":
        return load_image_set(spec.root, spec.limit)
    if spec.dataset in RVOS_DATASETS:
        return load_rvos(spec.dataset, spec.root, spec.split, spec.limit)
    raise EvalError(f"unknown dataset {spec.dataset!r} (okvos, images, {', '.join(RVOS_DATASETS)})")


def dataset_groups(dataset: str) -> tuple[str, ...]:
    """The groups a data set's table lists first, in its paper's order (overall follows)."""
    return {"okvos": ABILITIES, "revos": REVOS_GROUPS}.get(dataset, ())


def remove_stale_outputs(out: Path) -> list[str]:
    """What killed runs left half written in an evaluation folder: temporaries of the files
    named in ``_ATOMIC_FILES`` and partial mask sets and overlays (paths relative to
    ``out``). Run before any writer starts, so none of it can be live."""
    removed = []
    for sub, names in _ATOMIC_FILES.items():
        folder = out / sub if sub else out
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            m = _ATOMIC_TEMP.fullmatch(entry.name)
            if m and m["name"] in names and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed.append(str(entry.relative_to(out)))
    removed += [f"{SEG}/{n}" for n in remove_seg_partials(out / SEG)]
    removed += [f"{OVERLAYS}/{n}" for n in remove_seg_partials(out / OVERLAYS)]
    if removed:
        log.info("%s: removed %d partial output(s) of an interrupted run", out, len(removed))
    return removed


def evaluate(spec: EvalSpec, *, ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run (or resume) one evaluation and write its results; returns results.json's data.

    Everything that can be known to fail is refused (``EvalError``) before the folder is
    touched and before the first query runs: unreadable ground truth, a predictions file
    with nothing usable for this split, a search backend without what it needs, a folder
    made with other settings. ``ready`` is called once all of that has passed, so notes
    about a run that will happen are not printed above a refusal."""
    if not spec.predictions and not spec.models:
        raise EvalError("give --model (one or more) or --predictions")
    if spec.limit is not None and spec.limit < 1:
        raise EvalError(f"--limit must be at least 1 (a number of queries); got {spec.limit}")
    if spec.answer_rule not in ANSWER_RULES:
        raise EvalError(f"unknown answer rule {spec.answer_rule!r} ({', '.join(ANSWER_RULES)})")
    spec = resolve_spec(spec)
    file_rows = None
    if spec.predictions:
        try:
            _, file_rows = read_usable_predictions(spec.predictions)
        except PredictionsError as e:
            raise EvalError(str(e)) from None
    try:
        queries = load_queries(spec)
    except DatasetError as e:
        raise EvalError(str(e)) from None
    if not queries:
        raise EvalError(f"no queries in {spec.root}")
    try:
        check_ground_truth(queries)
    except DatasetError as e:
        hint = (f" (the folders come from --meta-mapping {spec.meta_mapping}; relative ones "
                "resolve from the current folder)" if spec.meta_mapping else "")
        raise EvalError(f"{e}{hint}") from None
    paper = _paper_table(spec, queries)
    given = _rows_for_queries(spec, queries, file_rows.rows) if file_rows is not None else None
    segmenter = spec.make_segmenter()
    if spec.models:
        _check_search(spec, queries)
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    current = settings(spec, segmenter)
    check_config(out, current, spec.force)
    remove_stale_outputs(out)
    if ready is not None:
        ready()
    shards = RayShards(spec) if spec.ray else None
    try:
        rows = _keep_rows(spec, queries, given) if given is not None else _predict(spec, queries, shards)
        seg_records = _segment(spec, queries, rows, segmenter, shards)
    finally:
        if shards is not None:
            shards.close()
    scores = score_queries(queries, out / SEG, workers=spec.score_workers, progress=spec.progress)
    objs = score_objects(queries, out / SEG, seg_records, workers=spec.score_workers)
    for qid, s in objs.items():
        scores[qid].update(s)
    entries = [_entry(q, rows.get(q.id), seg_records.get(q.id), scores[q.id], out) for q in queries]
    kind = "image" if spec.dataset == "images" else "video"
    agg = aggregate(entries, kind, dataset_groups(spec.dataset))
    if spec.dataset == "revos":
        agg["overall"] = revos_overall(agg["by_ability"])
    results: dict[str, Any] = {
        "dataset": {"name": spec.dataset, "root": current["root"], "split": spec.split,
                    "queries": len(queries)},
        "settings": current,
        "created": res.now_iso(),
        "metric": "J&F" if kind == "video" else "gIoU",
        **agg,
        "counts": res.counts(entries),
        "queries": entries,
    }
    per_object = object_groups(entries, dataset_groups(spec.dataset),
                               overall_of=REVOS_GROUPS if spec.dataset == "revos" else ())
    if per_object is not None:
        results["objects"] = per_object
    if paper is not None:
        results["paper"] = paper.to_json()
    results["plots"] = res.write_plots(out, results)
    res.write_results_json(out, results)
    write_atomic(out / "results.md", res.results_markdown(results).encode())
    if spec.html:
        write_html_report(out, results, progress=spec.progress)
    return results


def _check_search(spec: EvalSpec, queries: Sequence[Query]) -> None:
    """Refuse a search backend that lacks what it needs (a knowledge base, a server URL, an
    API key) before any query runs: each query's run would otherwise end ``error:config``
    and be scored as a miss. The check is the graph's own, and what it loads is shared
    with the runs that follow."""
    searching = sum(1 for q in queries if uses_search(q))
    if not searching:
        return
    problem = _search_problem(spec.context, lambda _m: None)
    if problem:
        raise EvalError(f"{problem} ({searching} of the {len(queries)} queries search; "
                        "--search none evaluates without search)")


def _rows_for_queries(spec: EvalSpec, queries: Sequence[Query],
                      found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows of a predictions file that belong to ``queries``; refused when none do
    (a file for another split or data set would score every query as a miss) or when a
    row names another video than its query."""
    path = spec.predictions
    known = {q.id for q in queries}
    rows = {i: r for i, r in found.items() if i in known}
    extra = [i for i in found if i not in known]
    if not rows:
        where = (f"split {spec.split!r} of {spec.root}" if spec.dataset != "images"
                 else f"the image set {spec.root}")
        if spec.limit is not None:
            where = f"the first {len(queries)} queries of {where} (--limit)"
        raise EvalError(
            f"{path}: none of its {len(found)} prediction rows has an id of {where} (e.g. "
            f"{extra[0]!r}; ids there look like {queries[0].id!r}); is it for another split "
            "or data set?"
        )
    if extra and spec.limit is None:
        log.warning("%s: %d prediction(s) for ids not in this split (e.g. %r) are ignored",
                    path, len(extra), extra[0])
    mismatched = [q.id for q in queries if q.id in rows and not _same_video(rows[q.id], q)]
    if mismatched:
        raise EvalError(
            f"{path}: {len(mismatched)} prediction(s) name another video than the data set "
            f"(e.g. id {mismatched[0]!r}); is this dump for split {spec.split}?"
        )
    return rows


def _keep_rows(spec: EvalSpec, queries: Sequence[Query],
               rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The folder keeps the rows it was scored from, so it stands on its own."""
    path = Path(spec.predictions)  # type: ignore[arg-type]
    mine = spec.out_dir / PREDICTIONS
    if not mine.exists() or mine.resolve() != path.resolve():
        lines = [json.dumps(rows[q.id], ensure_ascii=False, default=str) for q in queries if q.id in rows]
        write_atomic(mine, ("\n".join(lines) + "\n" if lines else "").encode())
    return rows


def _same_video(row: dict[str, Any], q: Query) -> bool:
    vp = row.get("video_path")
    if not vp or q.kind != "video":
        return True
    return Path(str(vp)).name == Path(q.segment_media).name


def _predict(spec: EvalSpec, queries: Sequence[Query], shards: RayShards | None) -> dict[str, dict[str, Any]]:
    """Rows for every query: those already in predictions.jsonl, and new runs for the rest
    (and for earlier failures with ``retry_errors``; a changed output is segmented again)."""
    out = spec.out_dir
    log_file = PredictionLog(out / PREDICTIONS)
    existing = read_predictions(out / PREDICTIONS).rows
    rows = {q.id: existing[q.id] for q in queries if q.id in existing}
    pending = [q for q in queries if q.id not in rows or (
        spec.retry_errors and str(rows[q.id].get("stop_reason", "")).startswith("error"))]
    if pending and shards is not None:
        rows.update(shards.predict(pending, log_file, spec.progress))
    elif pending:
        runs = out / RUNS if spec.trajectories else None
        for r in run_predictions(pending, spec.context, list(spec.models), log_file,
                                 concurrency=spec.concurrency, runs_dir=runs,
                                 progress=spec.progress):
            rows[r["id"]] = r
    return rows


def _segment(
    spec: EvalSpec, queries: Sequence[Query], rows: dict[str, dict[str, Any]],
    segmenter: Segmenter, shards: RayShards | None,
) -> dict[str, dict[str, Any]]:
    """Masks for every query with a prediction, made from the data set's own media (not
    the paths a dump carries)."""
    seg_root = spec.out_dir / SEG
    jobs = [job_from_row(q.id, q.segment_media, rows[q.id], q.kind, spec.answer_rule)
            for q in queries if q.id in rows]
    overlays = spec.out_dir / OVERLAYS if spec.overlays else None
    if shards is not None:
        shards.segment(jobs, segmenter, spec.progress)
    else:
        segment_jobs(jobs, seg_root, segmenter, coords=spec.coords,
                     overlays_dir=overlays, progress=spec.progress)
    return read_predictions(seg_root / SEGMENT_LOG).rows


def _paper_table(spec: EvalSpec, queries: Sequence[Query]) -> PaperTable | None:
    """The paper's numbers, checked against this evaluation's groups before any query runs
    (a misspelt group would otherwise leave its row empty in the report)."""
    if not spec.paper_table:
        return None
    groups = list(dataset_groups(spec.dataset))
    if spec.dataset == "images" and spec.limit is not None:
        # a smoke run's first queries may lack a group the set (and the paper) has
        queries = load_image_set(spec.root)
    groups += sorted({q.ability for q in queries})
    try:
        return read_paper_table(spec.paper_table, spec.dataset).match_groups(groups)
    except PaperTableError as e:
        raise EvalError(str(e)) from None


def _entry(q: Query, row: dict[str, Any] | None, seg: dict[str, Any] | None,
           score: dict[str, Any], out: Path) -> dict[str, Any]:
    """One query's line in results.json."""
    row = row or {}
    seg = seg or {}
    run_dir = row.get("run_dir")
    if run_dir:
        try:
            run_dir = os.path.relpath(run_dir, out)
        except ValueError:
            pass
    e: dict[str, Any] = {
        "id": q.id, "ability": q.ability if q.ability else ability_of(row), "question": q.question,
        "kind": q.kind, "media": q.segment_media,
        **{k: score.get(k) for k in (("J", "F", "J&F") if q.kind == "video" else ("IoU", "intersection", "union"))},
        "stop_reason": row.get("stop_reason") if row else None,
        "error": row.get("error"),
        "num_search": int(row["num_search"]) if "num_search" in row else _count_searches(row.get("output")),
        "searches": row.get("searches") or [],
        "questions": row.get("questions") or [],
        "answer": row.get("answer"),
        "prompt": seg.get("prompt"),
        "problem": seg.get("problem") if row else "no prediction for this query",
        "graph_keyframe": row.get("graph_keyframe"),
        "first_keyframe": seg.get("first_keyframe", row.get("first_keyframe")),
        "rule_differs": bool(row.get("rule_differs")),
        "nonfinite": list(seg.get("nonfinite") or []),
        "missing_prediction": not row,
        "missing_masks": bool(score.get("missing_masks")),
        "missing_frames": int(score.get("missing_frames") or 0),
        "annotated_frames": int(score.get("annotated_frames") or 0),
        "seg_dir": f"{SEG}/{safe_name(q.id)}",
        "run_dir": run_dir,
        "segmenter": seg.get("segmenter"),
        # where the ground truth is, so the report can draw it beside the prediction
        "gt": str(Path(q.gt).expanduser().resolve()) if q.gt else "",
        **({"gt_polygons": q.polygons} if q.polygons else {}),
        **({"gt_ignore": q.ignore} if q.ignore else {}),
        # MeViS / ReVOS: the annotations (in ``gt``, mask_dict.json) whose union is the target
        **({"gt_annotations": {"anno_ids": q.extra["anno_ids"], "frames": q.extra["frames"]}}
           if "anno_ids" in q.extra else {}),
    }
    if score.get("R") is not None:  # ReVOS' robustness score
        e["R"] = score["R"]
    if "object_J" in score:  # per-object matching (MeViS / ReVOS)
        e.update({k: score.get(k) for k in ("object_J", "objects_pred", "objects_gt", "object_pairs")})
        if score.get("object_score_error"):
            e["object_score_error"] = score["object_score_error"]
    if seg.get("objects"):  # an answer segmented per object: its folders and prompts
        e["objects_dir"] = f"{SEG}/{OBJECTS_DIR}/{safe_name(q.id)}"
        e["object_prompts"] = seg.get("object_prompts")
    if seg.get("object_notes"):
        e["object_notes"] = seg["object_notes"]
    if score.get("per_frame"):
        e["per_frame"] = score["per_frame"]
    if score.get("score_error"):
        e["score_error"] = score["score_error"]
    return e


def _count_searches(output: Any) -> int:
    return str(output or "").count("<search>")
