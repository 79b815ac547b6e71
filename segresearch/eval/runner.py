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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segresearch.agents.context import Context
from segresearch.agents.model_spec import ModelSpec
from segresearch.core.coords import CoordFrame
from segresearch.core.files import write_atomic
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
from segresearch.eval.paper_table import PaperTable, PaperTableError, read_paper_table
from segresearch.eval.predict import ModelChoice, model_label
from segresearch.eval.predictions import (
    PredictionLog,
    PredictionsError,
    ability_of,
    read_predictions,
    read_usable_predictions,
)
from segresearch.tools.segmenters import EVAL_FRAME_CACHE_MB, Segmenter, get_segmenter

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
CONFIG = "eval_config.json"
SEG = "seg"
RUNS = "runs"
OVERLAYS = "overlays"
# Files of an evaluation folder written with ``write_atomic`` (a temporary sibling
# ``.<name>.XXXXXXXX.tmp`` renamed into place), by folder; a kill leaves the temporary.
_ATOMIC_FILES = {"": (CONFIG, PREDICTIONS, "results.json", "results.md", "report.html"),
                 "plots": ("by_category.png", "score_vs_searches.png")}
_ATOMIC_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
# Settings that change what a prediction or a mask is: a folder is never resumed with others.
_PINNED = ("dataset", "root", "split", "models", "search", "kb", "retriever_url", "num_frames",
           "max_turns", "frame_size", "keyframe_size", "coord_style", "prompt_variant",
           "system_prompt_file", "temperature", "text_topk", "image_topk", "segmenter",
           "predictions")


class EvalError(ValueError):
    """An evaluation that cannot start or continue; one line for the user."""


def resolved_path(value: str | os.PathLike[str] | None) -> str:
    """The one form of a file setting, used both to open the file and to compare a folder's
    settings with a resumed run's: ``~`` expanded, absolute, symlinks resolved. Typed
    relative, absolute or through a link, the same file is the same setting, and the path
    that was compared is the path that is used. Empty stays empty."""
    if value is None or not str(value).strip():
        return ""
    return str(Path(value).expanduser().resolve())


def resolved_model(spec: ModelChoice) -> ModelChoice:
    """A model spec with the file of ``replay:`` / ``hf:`` resolved like any file setting
    (other specs and model objects as they are)."""
    if not isinstance(spec, str):
        return spec
    parsed = ModelSpec.parse(spec)
    if parsed.names_file and parsed.target:
        return parsed.with_target(resolved_path(parsed.target))
    return spec


# The Context's file settings an evaluation uses ("off" switches the search cache off).
_CONTEXT_PATHS = ("kb", "system_prompt_file", "search_cache")


def resolve_spec(spec: EvalSpec) -> EvalSpec:
    """``spec`` with every file setting in its resolved form (:func:`resolved_path`), so
    what ``eval_config.json`` records, what a resume is compared with and what is opened
    are one value."""
    c = spec.context
    ctx_paths = {k: resolved_path(getattr(c, k)) for k in _CONTEXT_PATHS
                 if isinstance(getattr(c, k), str) and getattr(c, k).strip()
                 and not (k == "search_cache" and getattr(c, k).strip().lower() == "off")}
    return replace(
        spec, root=resolved_path(spec.root),
        predictions=resolved_path(spec.predictions) or None,
        meta_mapping=resolved_path(spec.meta_mapping) or None,
        sam2_checkpoint=resolved_path(spec.sam2_checkpoint),
        models=[resolved_model(m) for m in spec.models],
        context=replace(c, **ctx_paths) if ctx_paths else c,
    )


# Settings recorded as file paths, and how a recorded value is brought to the resolved
# form (eval_config.json of older versions kept paths as they were typed).
_PATH_SETTINGS = ("root", "kb", "system_prompt_file", "predictions", "meta_mapping")


def _comparable(key: str, value: Any) -> Any:
    if key in _PATH_SETTINGS and isinstance(value, str) and value:
        return resolved_path(value)
    if key == "models" and isinstance(value, list):
        return [resolved_model(m) if isinstance(m, str) else m for m in value]
    return value


@dataclass
class EvalSpec:
    """Everything one evaluation run needs (the CLI fills it from its arguments)."""

    dataset: str  # "okvos" | "images"
    root: str
    out: str
    split: str | None = None
    models: Sequence[ModelChoice] = ()
    predictions: str | None = None  # re-score a saved file instead of running a model
    context: Context = field(default_factory=lambda: Context(run_segmentation=False))
    segmenter: str | Segmenter = "auto"
    sam2_checkpoint: str = ""
    sam2_config: str = ""
    sam2_image_size: int | None = None
    device: str = "auto"
    concurrency: int = 8
    limit: int | None = None
    workers: int = 1
    ray: bool = False
    ray_address: str | None = None
    trajectories: bool = True
    overlays: bool = False
    html: bool = True
    progress: bool = True
    retry_errors: bool = False
    force: bool = False
    score_workers: int | None = None
    # SAM 2 frame preparation: frames kept per video for all its queries (MiB), and threads
    # preparing them ahead (None: by device). Neither changes a mask.
    frame_cache_mb: float = EVAL_FRAME_CACHE_MB
    prefetch_threads: int | None = None
    # score against the published evaluator's [id, mask folder, ability] list instead of
    # the parquet's folders (its relative paths resolve from the current folder, as there)
    meta_mapping: str | None = None
    # the paper's numbers (CSV or JSON, see segresearch.eval.paper_table), shown beside ours
    paper_table: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser()

    def make_segmenter(self) -> Segmenter:
        try:
            seg = get_segmenter(self.segmenter, sam2_checkpoint=self.sam2_checkpoint,
                                sam2_config=self.sam2_config, sam2_image_size=self.sam2_image_size,
                                device=self.device, frame_cache_mb=self.frame_cache_mb,
                                prefetch_threads=self.prefetch_threads)
        except ValueError as e:
            raise EvalError(str(e)) from None
        if seg is None:
            raise EvalError("evaluation needs a segmenter (sam2, grabcut or auto), not 'none'")
        return seg

    @property
    def coords(self) -> CoordFrame:
        """The grid saved outputs answer on (Qwen2.5-VL style answers are in pixels of the
        keyframe image the model was shown: the published answer follows a keyframe)."""
        return CoordFrame.of(self.context.coord_style, self.context.keyframe_size)


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
    raise EvalError(f"unknown dataset {spec.dataset!r} (okvos, images)")


def settings(spec: EvalSpec, segmenter: Segmenter) -> dict[str, Any]:
    c = spec.context
    return {
        "dataset": spec.dataset, "root": resolved_path(spec.root),
        "split": spec.split,
        "models": [model_label(resolved_model(m)) for m in spec.models] if spec.models else None,
        "predictions": resolved_path(spec.predictions) or None,
        "search": c.search_name, "kb": resolved_path(c.kb), "retriever_url": c.retriever_url,
        "num_frames": c.num_frames, "max_turns": c.max_turns, "frame_size": c.frame_size,
        "keyframe_size": c.keyframe_size, "coord_style": c.coord_style,
        "prompt_variant": c.prompt_variant, "system_prompt_file": resolved_path(c.system_prompt_file),
        "temperature": c.temperature, "text_topk": c.text_topk, "image_topk": c.image_topk,
        "segmenter": segmenter.describe(), "concurrency": spec.concurrency,
        "workers": spec.workers if spec.ray else 1, "limit": spec.limit,
        "meta_mapping": resolved_path(spec.meta_mapping) or None,
    }


def check_config(out: Path, current: dict[str, Any], force: bool) -> None:
    """Refuse to resume a folder made with other settings (unless forced): its predictions
    and masks would be mixed with new ones in one table."""
    path = out / CONFIG
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{path} is unreadable ({e}); remove it or use another --out") from None
        diff = [k for k in _PINNED if _comparable(k, old.get(k)) != _comparable(k, current.get(k))]
        if diff and not force:
            shown = "; ".join(f"{k}: {old.get(k)!r} → {current.get(k)!r}" for k in diff[:4])
            raise EvalError(
                f"{out} holds an evaluation made with other settings ({shown}); use another "
                "--out, or --force to continue anyway"
            )
    write_atomic(path, json.dumps(current, indent=1, default=str).encode())


def remove_stale_outputs(out: Path) -> list[str]:
    """What killed runs left half written in an evaluation folder: temporaries of the files
    named in ``_ATOMIC_FILES`` and partial mask sets and overlays (paths relative to
    ``out``). Run before any writer starts, so none of it can be live."""
    from segresearch.eval.postseg import remove_stale_outputs as remove_seg_partials

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
    from segresearch.eval import results as res

    if not spec.predictions and not spec.models:
        raise EvalError("give --model (one or more) or --predictions")
    if spec.limit is not None and spec.limit < 1:
        raise EvalError(f"--limit must be at least 1 (a number of queries); got {spec.limit}")
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
    shards = None
    if spec.ray:
        from segresearch.eval.distributed import RayShards

        shards = RayShards(spec)
    try:
        rows = _keep_rows(spec, queries, given) if given is not None else _predict(spec, queries, shards)
        seg_records = _segment(spec, queries, rows, segmenter, shards)
    finally:
        if shards is not None:
            shards.close()
    from segresearch.eval.scoring import aggregate, score_queries

    scores = score_queries(queries, out / SEG, workers=spec.score_workers, progress=spec.progress)
    entries = [_entry(q, rows.get(q.id), seg_records.get(q.id), scores[q.id], out) for q in queries]
    kind = "video" if spec.dataset == "okvos" else "image"
    agg = aggregate(entries, kind, ABILITIES if kind == "video" else ())
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
    if paper is not None:
        results["paper"] = paper.to_json()
    results["plots"] = res.write_plots(out, results)
    res.write_results_json(out, results)
    write_atomic(out / "results.md", res.results_markdown(results).encode())
    if spec.html:
        from segresearch.eval.report_html import write_html_report

        write_html_report(out, results, progress=spec.progress)
    return results


def _check_search(spec: EvalSpec, queries: Sequence[Query]) -> None:
    """Refuse a search backend that lacks what it needs (a knowledge base, a server URL, an
    API key) before any query runs: each query's run would otherwise end ``error:config``
    and be scored as a miss. The check is the graph's own, and what it loads is shared
    with the runs that follow."""
    from segresearch.eval.predict import uses_search
    from segresearch.graphs.preflight import _search_problem

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
        where = (f"split {spec.split!r} of {spec.root}" if spec.dataset == "okvos"
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


def _predict(spec: EvalSpec, queries: Sequence[Query], shards: Any) -> dict[str, dict[str, Any]]:
    """Rows for every query: those already in predictions.jsonl, and new runs for the rest
    (and for earlier failures with ``retry_errors``; a changed output is segmented again)."""
    from segresearch.eval.predict import run_predictions

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
    segmenter: Segmenter, shards: Any,
) -> dict[str, dict[str, Any]]:
    """Masks for every query with a prediction, made from the data set's own media (not
    the paths a dump carries)."""
    from segresearch.eval.postseg import SEGMENT_LOG, SegJob, segment_jobs

    seg_root = spec.out_dir / SEG
    jobs = [SegJob(id=q.id, media=q.segment_media, output=str(rows[q.id].get("output") or ""),
                   kind=q.kind) for q in queries if q.id in rows]
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
    groups = list(ABILITIES) if spec.dataset == "okvos" else []
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
    }
    if score.get("per_frame"):
        e["per_frame"] = score["per_frame"]
    if score.get("score_error"):
        e["score_error"] = score["score_error"]
    return e


def _count_searches(output: Any) -> int:
    return str(output or "").count("<search>")
