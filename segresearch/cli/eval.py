"""``segresearch eval`` (benchmarks end to end) and ``segresearch segment`` (masks for a
saved predictions file)."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from segresearch.agents.context import Context
from segresearch.cli.common import EXIT_OK, EXIT_RUN_ERROR, die
from segresearch.cli.context_args import context_default
from segresearch.cli.model_check import check_model
from segresearch.core.coords import CoordFrame
from segresearch.eval.paper_table import PaperTableError, read_paper_table
from segresearch.eval.postseg import jobs_from_rows, segment_jobs
from segresearch.eval.predictions import PredictionsError, read_usable_predictions
from segresearch.eval.results import LAYOUT_HEADING, paper_layout_markdown, results_markdown
from segresearch.eval.runner import evaluate
from segresearch.eval.spec import EvalSpec, eval_context
from segresearch.tools.keyframe import KEYFRAME_RESIZE
from segresearch.tools.segmenters import EVAL_FRAME_CACHE_MB, get_segmenter, resolve_segmenter_name


def _eval_context(args: argparse.Namespace) -> Context:
    return eval_context(vars(args))


def _sam2_checkpoint(args: argparse.Namespace) -> str:
    """``--sam2-checkpoint``, or when it is left out the run setting's own default
    (SEGRESEARCH_SAM2_CHECKPOINT)."""
    given = args.sam2_checkpoint
    return (context_default("sam2_checkpoint") if given is None else given) or ""


def _segmenter_args(args: argparse.Namespace) -> dict[str, Any]:
    """Segmenter settings of ``eval`` and ``segment``: both serve every query of a video
    from one session, so SAM 2 keeps a whole video's frames by default."""
    cache = EVAL_FRAME_CACHE_MB if args.frame_cache_mb is None else args.frame_cache_mb
    return {"segmenter": args.segmenter, "sam2_checkpoint": _sam2_checkpoint(args),
            "sam2_config": args.sam2_config or "", "sam2_image_size": args.sam2_image_size,
            "device": args.device, "frame_cache_mb": cache, "prefetch_threads": args.prefetch_threads}


def _frame_option_problem(args: argparse.Namespace) -> str | None:
    """A bad frame setting as one line before anything is loaded (None when fine)."""
    if args.frame_cache_mb is not None and args.frame_cache_mb < 0:
        return f"--frame-cache-mb must be at least 0; got {args.frame_cache_mb}"
    if args.prefetch_threads is not None and args.prefetch_threads < 0:
        return f"--prefetch-threads must be at least 0; got {args.prefetch_threads}"
    return None


def _score_problem(results: dict[str, Any]) -> str | None:
    """Why an evaluation's numbers cannot stand: no query scored at all (the published
    evaluator then prints ``nan`` and exits 0), or some queries not scored (they would be
    left out of the means, where every query must count)."""
    failed = [q for q in results["queries"] if q.get("score_error")]
    if results.get("overall") is None:
        why = f" (e.g. {failed[0]['id']}: {failed[0]['score_error']})" if failed else ""
        return f"no query could be scored{why}"
    if failed:
        return (f"{len(failed)} of {len(results['queries'])} queries could not be scored and are "
                f"left out of the means (e.g. {failed[0]['id']}: {failed[0]['score_error']})")
    return None


def _run_failures(results: dict[str, Any], from_file: bool) -> tuple[str | None, str | None]:
    """(error, warning) about queries whose run failed (stop reason ``error:…``). They are
    scored as empty masks like a model's misses, so a table where every run failed would
    read as a result: that is an error; some failed runs are a warning saying how many."""
    ran = [q for q in results["queries"] if not q.get("missing_prediction")]
    failed = [q for q in ran if str(q.get("stop_reason") or "").startswith("error")]
    if not failed:
        return None, None
    kinds = ", ".join(f"{k} {n}" for k, n in Counter(q["stop_reason"] for q in failed).most_common(3))
    first = failed[0]
    example = " ".join(f"e.g. {first['id']}: {first.get('error') or first['stop_reason']}".split())
    again = ("the predictions file records them as failed" if from_file
             else "--retry-errors runs them again once the cause is fixed")
    total = len(results["queries"])
    if len(failed) == len(ran):
        return (f"every query that ran failed ({len(failed)} of {total}: {kinds}; {example}); "
                f"the scores above count them as empty masks; {again}"), None
    return None, (f"{len(failed)} of {total} queries failed ({kinds}; {example}) and are scored "
                  f"as empty masks; {again}")


def cmd_eval(args: argparse.Namespace) -> int:
    """Benchmarks end to end. Problems with the data, the model endpoint or the output
    folder are one ``error:`` line before any query runs."""
    if bool(args.model) == bool(args.predictions):
        return die("give either --model SPEC (one or more) or --predictions FILE")
    for name in ("concurrency", "workers"):
        if getattr(args, name) < 1:
            return die(f"--{name} must be at least 1")
    if args.limit is not None and args.limit < 1:
        return die(f"--limit must be at least 1 (the number of queries to run); got {args.limit}")
    problem = _frame_option_problem(args)
    if problem:
        return die(problem)
    if args.paper_table:  # its format now; its groups once the data set is read
        try:
            read_paper_table(args.paper_table, args.eval_command)
        except PaperTableError as e:
            return die(str(e))
    if not os.path.isdir(os.path.expanduser(args.root)):
        kind = "image set" if args.eval_command == "images" else "data set"
        return die(f"{kind} folder not found: {args.root}")
    try:
        ctx = _eval_context(args)
    except (ValueError, TypeError) as e:
        return die(str(e))
    for spec in args.model or []:
        problem = check_model(spec, ctx.request_timeout)
        if problem:
            return die(problem)
    checkpoint = _sam2_checkpoint(args)
    if checkpoint and not os.path.isfile(os.path.expanduser(checkpoint)):
        return die(f"SAM 2 checkpoint not found: {checkpoint}")
    spec = EvalSpec(
        dataset=args.eval_command, root=args.root, out=args.out, split=getattr(args, "split", None),
        models=args.model or [], predictions=args.predictions, context=ctx,
        concurrency=args.concurrency, limit=args.limit, workers=args.workers, ray=args.ray,
        ray_address=args.ray_address, trajectories=not args.no_trajectories,
        overlays=args.overlays, html=not args.no_html, progress=not args.no_progress,
        retry_errors=args.retry_errors, force=args.force,
        meta_mapping=getattr(args, "meta_mapping", None), paper_table=args.paper_table,
        answer_rule=args.answer_rule,
        **_segmenter_args(args),
    )
    try:
        chosen = resolve_segmenter_name(args.segmenter, checkpoint)
    except ValueError as e:
        return die(str(e))

    def note() -> None:  # once the setup has passed every check, not above a refusal
        if chosen == "grabcut":
            print("note: segmenting with grabcut (no SAM 2 checkpoint given): the scores are not "
                  "comparable with the paper's SAM 2 numbers", file=sys.stderr)

    try:
        results = evaluate(spec, ready=note)
    except (ValueError, RuntimeError, OSError) as e:  # EvalError, DatasetError, SAM 2 loading
        return die(" ".join(str(e).split()))
    md = results_markdown(results)
    layout_md = paper_layout_markdown(results)  # printed last: the benchmark's own table
    head = md.split("\n## By number")[0]
    if layout_md:
        before, _, after = head.partition(LAYOUT_HEADING)
        head = before + ("\n##" + after.split("\n##", 1)[1] if "\n##" in after else "")
    print(head.rstrip())
    c = results["counts"]
    print(f"\n{c['predicted']} of {c['queries']} queries predicted, {c['missing_predictions']} missing "
          f"(scored as empty), {c['no_usable_answer']} without a usable answer, "
          f"{c['rule_differs']} where the first-keyframe rule differs from the graph's answer, "
          f"{c.get('nonfinite_coordinates', 0)} with NaN/inf coordinates (finite part used; "
          "the published script would prompt with the NaN)")
    out = spec.out_dir
    print(f"results: {out / 'results.json'}, {out / 'results.md'}"
          + (f", {out / 'report.html'}" if spec.html else ""))
    if layout_md:
        print("\n" + layout_md.rstrip())
    failed, warning = _run_failures(results, from_file=bool(args.predictions))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    problems = [p for p in (failed, _score_problem(results)) if p]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_RUN_ERROR if problems else EXIT_OK


def cmd_segment(args: argparse.Namespace) -> int:
    """Masks for a saved predictions file (ours or the published dump), resumable."""
    try:  # the same validator as eval --predictions: one file, one verdict
        path, found = read_usable_predictions(args.predictions)
    except PredictionsError as e:
        return die(str(e))
    problem = _frame_option_problem(args)
    if problem:
        return die(problem)
    try:
        opts = _segmenter_args(args)
        seg = get_segmenter(opts.pop("segmenter"), **opts)
    except ValueError as e:
        return die(str(e))
    if seg is None:
        return die("--segmenter none makes no masks; use sam2, grabcut or auto")
    rows, filtered = _rows_to_segment(list(found.rows.values()), None if args.all else args.data_source)
    if not rows:
        return die(f"none of the {filtered} rows has a data_source containing {args.data_source!r} "
                   "(--all segments every row)")
    jobs, problems = jobs_from_rows(rows, args.root, args.answer_rule)
    for qid, why in problems[:5]:
        print(f"warning: {qid}: {why}", file=sys.stderr)
    if len(problems) > 5:
        print(f"warning: … and {len(problems) - 5} more rows without media", file=sys.stderr)
    if not jobs:
        return die("no row's media could be found (use --root to point at the data set)")
    # qwen25 answers are pixels of the keyframe the published tool showed (864² by default)
    try:
        coords = CoordFrame.of(args.coord_style, args.coord_size or KEYFRAME_RESIZE.side)
    except ValueError as e:
        return die(f"--coord-size: {e}")
    records = segment_jobs(jobs, Path(args.out).expanduser(), seg, coords=coords,
                           overlays_dir=args.overlays,
                           progress=not args.no_progress)
    ids = {j.id for j in jobs}
    empty = sum(1 for i in ids if records.get(i, {}).get("prompt") is None)
    nonfinite = sum(1 for i in ids if records.get(i, {}).get("nonfinite"))
    why_skipped = f"data_source without {args.data_source!r}; --all keeps them" if not args.all else "--all"
    print(f"masks for {len(ids)} queries in {args.out} ({seg.name}); {empty} without a usable "
          f"answer (empty masks); {nonfinite} with NaN/inf coordinates (finite part used; the "
          f"published script would prompt with the NaN); {len(problems)} rows skipped without "
          f"media; {filtered} rows skipped ({why_skipped})")
    return EXIT_OK if not problems else EXIT_RUN_ERROR


def _rows_to_segment(rows: list[dict[str, Any]], data_source: str | None) -> tuple[list[dict[str, Any]], int]:
    """The rows the published post-segmentation segments (``data_source`` containing
    ``data_source``; all with None), and how many it skips."""
    if data_source is None:
        return rows, 0
    kept = [r for r in rows if data_source in str(r.get("data_source") or "")]
    return kept, len(rows) - len(kept)
