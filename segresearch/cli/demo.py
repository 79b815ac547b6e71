"""``segresearch demo``: the whole loop on the synthetic clip with the recorded policy,
scored against the clip's ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from segresearch import demo
from segresearch.cli.arguments import DEMO_OUT
from segresearch.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_ERROR,
    Farewell,
    die,
    peak_memory_mb,
)
from segresearch.cli.console import RunPrinter
from segresearch.cli.run import stream
from segresearch.core import cancel
from segresearch.eval.metrics import j_and_f, region_j
from segresearch.graphs.run_folders import RunDirError, claim_run_dir, release_run_dir


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        # The default folder is the demo's own, so a second demo simply replaces the first.
        lock = claim_run_dir(out, overwrite=args.overwrite or args.out == DEMO_OUT,
                             reuse=False, needed=[])
    except (RunDirError, OSError) as e:
        return die(str(e))
    printer = RunPrinter()
    frames = demo.ensure_demo_media()
    ctx = demo.demo_context(out)
    query = demo.demo_query()
    printer.line("bold yellow", "SegResearch demo — policy: RECORDED (replay cassette, not a live model);",
                 "media, search, keyframe and segmentation run for real.")
    printer.line("bold", "query:", query)
    farewell = Farewell()
    farewell.text = lambda: f"interrupted: the demo stopped; {out} holds what it wrote so far"
    with cancel.stop_on_sigint(farewell.say):  # Ctrl-C acts at once here too (see run)
        try:
            final = stream(ctx, query, str(frames), printer)
        except KeyboardInterrupt:
            farewell.say()
            return EXIT_INTERRUPTED
        finally:
            release_run_dir(out, lock)
    printer.summary(final, peak_mb=peak_memory_mb())
    ans = final.get("answer_px") or {}
    if final.get("masks_dir") and ans.get("keyframe") is not None:
        names, gt, pred = demo.demo_masks(frames, Path(final["masks_dir"]))
        key = names.index(f"{ans['keyframe']:05d}")
        score = j_and_f(gt, pred)
        printer.line("bold", "mask IoU on the keyframe against the clip's ground truth:",
                     f"{float(region_j(gt[key:key + 1], pred[key:key + 1])[0]):.3f}")
        printer.line("bold", f"J&F over all {len(names)} frames:",
                     f"{score['J&F']:.3f} (J {score['J']:.3f}, F {score['F']:.3f})")
        printer.line("bold", "look at:", f"{Path(final['run_dir']) / 'keyframe_annotated.jpg'}, "
                     f"{Path(final['run_dir']) / 'overlay.mp4'}")
    return EXIT_OK if final.get("stop_reason") == "answer" else EXIT_RUN_ERROR
