"""Peak memory of the segment step against the video's length (issue 22, item 4).

A synthetic video of small frames (``--size``, default 96x64; an MJPG AVI written frame by
frame, a square drifting over a textured background) of each length in ``--frames`` is
segmented from one box and point on its middle frame, masks written as PNGs with
``write_mask_set``, each length in a fresh process. Memory is that process's own peak
resident size during the step minus its resident size just before it (modules imported,
model loaded, video opened): what the video's length costs (``bench/_memory.py``: the
kernel's high-water mark restarted before the step, since a spawned child's ``ru_maxrss``
starts at its parent's peak).

Segmenters (``--segmenter``):

- ``grabcut``: the fallback segmenter (no weights), at any length (30,000 frames is minutes);
- ``sam2``: our SAM 2 session (random-weight SAM 2.1 tiny unless ``--checkpoint``), and
  ``sam2-bare``: the bare predictor driven the published way on the same frames as a JPEG
  folder (``segresearch.testing.sam2_reference``; its loader holds every frame up front and
  its state every frame's outputs). On a CPU keep ``--image-size`` small (default 256).

Prints a table of peak MB per length and the growth per extra frame between the first and
the last length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _memory import StepPeak  # bench/ is on sys.path when a script runs


def write_long_video(path: Path, n: int, w: int, h: int, fps: float = 25.0) -> tuple[float, ...]:
    """An MJPG AVI of ``n`` frames, made and written one at a time (any length fits in
    memory); returns the middle frame's box and point around the square, in pixels."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    background = rng.integers(0, 90, (h, w, 3), np.uint8)
    side = max(4, min(w, h) // 3)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not vw.isOpened():
        raise SystemExit(f"OpenCV cannot write {path}")
    key = n // 2
    for t in range(n):
        x = int((w - side) * (0.5 + 0.4 * np.sin(t / 40.0)))
        y = int((h - side) * (0.5 + 0.4 * np.cos(t / 55.0)))
        frame = background.copy()
        frame[y:y + side, x:x + side] = (40, 40, 230)  # BGR: a red square
        vw.write(frame)
        if t == key:
            box = (x, y, x + side - 1, y + side - 1)
    vw.release()
    x1, y1, x2, y2 = box
    return (float(x1), float(y1), float(x2), float(y2), (x1 + x2) / 2.0, (y1 + y2) / 2.0)


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process: prints a JSON line."""
    from segresearch.core.media import open_media
    from segresearch.tools.segmenters import Prompt, write_mask_set

    box_point = json.loads(args.prompt)
    video, out = Path(args.video), Path(args.out)
    if args.child == "sam2-bare":
        import torch

        from segresearch.testing.sam2_reference import bare_published
        from segresearch.tools.segmenters import SAM2Segmenter

        torch.set_num_threads(args.threads)
        predictor, _ = SAM2Segmenter(args.checkpoint, device=args.device,
                                     image_size=args.image_size).predictor()
        folder = video.parent / "jpeg"  # SAM 2's loader reads a JPEG folder
        n = len(os.listdir(folder))
        prompt = Prompt(n // 2, tuple(box_point[:4]), tuple(box_point[4:]))
        import cv2

        with StepPeak() as mem:
            t0 = time.perf_counter()
            _, masks = bare_published(predictor, folder, prompt)
            out.mkdir(parents=True, exist_ok=True)
            for i in range(len(masks)):
                cv2.imwrite(str(out / f"{i:05d}.png"), masks[i].astype(np.uint8) * 255)
            seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "peak_mb": mem.mb, "frames": n}), flush=True)
        return
    if args.child == "sam2":
        import torch

        from segresearch.tools.segmenters import SAM2Segmenter

        torch.set_num_threads(args.threads)
        seg = SAM2Segmenter(args.checkpoint, device=args.device, image_size=args.image_size)
        seg.predictor()
        media = open_media(video.parent / "jpeg")
    else:
        from segresearch.tools.segmenters.grabcut import GrabCutSegmenter

        seg = GrabCutSegmenter()
        media = open_media(video)
    prompt = Prompt(len(media) // 2, tuple(box_point[:4]), tuple(box_point[4:]))
    with seg.open(media) as session, StepPeak() as mem:
        t0 = time.perf_counter()
        written = write_mask_set(out, media, session.masks(prompt))
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_mb": mem.mb, "frames": written.frames,
                      "reached": written.reached}), flush=True)


def run_child(mode: str, video: Path, out: Path, prompt: tuple[float, ...], args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--video", str(video), "--out", str(out),
           "--prompt", json.dumps(list(prompt)), "--checkpoint", args.checkpoint,
           "--image-size", str(args.image_size), "--device", args.device, "--threads", str(args.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def to_jpeg_folder(video: Path, folder: Path) -> None:
    """The video's frames as the JPEG folder SAM 2's own loader reads."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        i += 1
    cap.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segmenter", choices=["grabcut", "sam2"], default="grabcut")
    ap.add_argument("--frames", default="500,1000,2000", help="video lengths, comma-separated")
    ap.add_argument("--size", default="96x64", help="frame size WxH")
    ap.add_argument("--checkpoint", default="", help="a SAM 2 checkpoint (default: random tiny)")
    ap.add_argument("--image-size", dest="image_size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 2))
    ap.add_argument("--child", choices=["grabcut", "sam2", "sam2-bare"], help=argparse.SUPPRESS)
    ap.add_argument("--video", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    w, h = (int(v) for v in args.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-long-video-"))
    sides = ["grabcut"] if args.segmenter == "grabcut" else ["sam2-bare", "sam2"]
    if args.segmenter == "sam2" and not args.checkpoint:
        import torch
        from sam2.build_sam import build_sam2_video_predictor

        torch.manual_seed(0)
        pred = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
        args.checkpoint = str(tmp / "sam2.1_hiera_tiny.pt")
        torch.save({"model": pred.state_dict()}, args.checkpoint)
        del pred
    lengths = [int(n) for n in args.frames.split(",")]
    rows = []
    for n in lengths:
        video = tmp / f"v{n}" / "video.avi"
        prompt = write_long_video(video, n, w, h)
        if args.segmenter == "sam2":
            to_jpeg_folder(video, video.parent / "jpeg")
        res = {}
        for mode in sides:
            print(f"  {n} frames, {mode} ...", file=sys.stderr, flush=True)
            res[mode] = run_child(mode, video, tmp / f"v{n}" / mode, prompt, args)
            print(f"    {res[mode]}", file=sys.stderr, flush=True)
        rows.append((n, res))
    print(f"\nsegment step, one query, {w}x{h} frames, {args.segmenter}"
          + (f" at input size {args.image_size} on {args.device}" if args.segmenter == "sam2" else "")
          + "\n")
    print("| frames | " + " | ".join(f"{m} s | {m} peak MB" for m in sides) + " |")
    print("|---:|" + "---:|---:|" * len(sides))
    for n, res in rows:
        print(f"| {n} | " + " | ".join(f"{res[m]['seconds']:.1f} | {res[m]['peak_mb']:.1f}" for m in sides) + " |")
    print("\npeak MB: the process's peak resident size during the step minus its size just before")
    if len(rows) >= 2:
        (n0, r0), (n1, r1) = rows[0], rows[-1]
        for m in sides:
            kb = 1024 * (r1[m]["peak_mb"] - r0[m]["peak_mb"]) / (n1 - n0)
            print(f"{m}: {kb:.1f} KB per extra frame ({n0} to {n1} frames)")


if __name__ == "__main__":
    main()
