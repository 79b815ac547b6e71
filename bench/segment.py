"""The segment step against the bare SAM 2 predictor driven the published way.

Both sides segment the same JPEG folder from the same prompt (box, then point, on a middle
keyframe; propagation forward, then backward) and write one PNG per frame:

- bare: ``post_segmentation/sam2_okvos.py``'s flow, restated: ``init_state`` on the folder
  (SAM 2 loads every frame as a float32 tensor up front), two ``add_new_points_or_box``
  calls, two ``propagate_in_video`` passes into a (T, H, W) array, PNGs written after;
- ours: ``SAM2Segmenter.open(media)`` (frames decoded on demand into a small uint8 cache,
  prefetched in the direction of propagation) and ``write_mask_set`` (PNGs written while
  propagation runs).

Each measurement runs in a fresh process; memory is the peak resident size sampled during
the segmentation minus the size just before it (the model is loaded already), so it is
what the video costs. The masks of both sides are compared file by file.

No SAM 2 checkpoint ships in any package: by default a random-weight SAM 2.1 tiny model is
built (the cost of a frame is the same for any weights); pass --checkpoint for real ones.
On a CPU, 1024-pixel inputs take seconds per frame: --image-size 256 keeps the sweep to
minutes and shows the same per-frame growth (frames scale with the input size squared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakRSS:
    """Samples the resident size every few milliseconds while a block runs."""

    def __init__(self, every: float = 0.005) -> None:
        self.every = every
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.base = _rss_mb()
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.every)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def tensor_mb(obj: object) -> float:
    """Bytes of every tensor reachable from ``obj`` (dicts, lists, tuples), in MB."""
    import torch

    seen: set[int] = set()
    total = 0

    def walk(o: object) -> None:
        nonlocal total
        if isinstance(o, torch.Tensor):
            if id(o) not in seen:
                seen.add(id(o))
                total += o.element_size() * o.nelement()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return total / 2**20


def child(args: argparse.Namespace) -> None:
    """One measurement in this process: prints a JSON line."""
    import torch

    from segresearch.tools.media import open_media
    from segresearch.tools.segmenters import Prompt, SAM2Segmenter, write_mask_set

    torch.set_num_threads(args.threads)
    seg = SAM2Segmenter(args.checkpoint, device=args.device, image_size=args.image_size)
    predictor, _ = seg.predictor()
    p = json.loads(args.prompt)
    prompt = Prompt(p["frame"], tuple(p["box"]), tuple(p["point"]))
    folder, out = Path(args.folder), Path(args.out)
    held = {"frames": 0.0, "state": 0.0}
    reset = predictor.reset_state

    def measuring_reset(state: dict) -> None:
        """Our session resets the state when propagation ends: weigh it just before."""
        held["state"] = max(held["state"], tensor_mb(state["output_dict_per_obj"]))
        images = state["images"]
        if hasattr(images, "_cache"):
            held["frames"] = max(held["frames"], sum(a.nbytes for a in images._cache.values()) / 2**20)
        reset(state)

    predictor.reset_state = measuring_reset
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if args.child == "bare":
            from PIL import Image

            from segresearch.testing.sam2_reference import bare_published

            names = sorted(os.listdir(folder))
            state, masks = bare_published(predictor, folder, prompt)
            held["state"] = tensor_mb(state["output_dict_per_obj"])
            held["frames"] = tensor_mb(state["images"])
            out.mkdir(parents=True, exist_ok=True)
            for t, name in enumerate(names):
                Image.fromarray(masks[t].astype(np.uint8) * 255).save(out / f"{Path(name).stem}.png")
        else:
            media = open_media(folder)
            with seg.open(media) as session:
                write_mask_set(out, media, session.masks(prompt))
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_mb": mem.peak - mem.base,
                      "held_mb": held["frames"] + held["state"], **{f"{k}_mb": v for k, v in held.items()}}),
          flush=True)


def run_child(mode: str, folder: Path, out: Path, args: argparse.Namespace, prompt: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--out", str(out),
           "--checkpoint", args.checkpoint, "--image-size", str(args.image_size),
           "--device", args.device, "--threads", str(args.threads), "--prompt", json.dumps(prompt)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def same_masks(a: Path, b: Path) -> bool:
    import cv2

    names = sorted(p.name for p in a.glob("*.png"))
    if names != sorted(p.name for p in b.glob("*.png")):
        return False
    return all(np.array_equal(cv2.imread(str(a / n), 0), cv2.imread(str(b / n), 0)) for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="50,100,200", help="video lengths to measure")
    ap.add_argument("--image-size", type=int, default=256, help="SAM 2 input side (the model's own: 1024)")
    ap.add_argument("--size", default="854x480", help="frame size of the synthetic video")
    ap.add_argument("--checkpoint", default="", help="a SAM 2 checkpoint (default: random tiny)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per side and length, alternating; the fastest is kept (shared "
                         "machines are noisy)")
    ap.add_argument("--child", choices=["bare", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from segresearch.testing.scenes import inner_point, mask_box, render_scene, write_frames

    w, h = (int(v) for v in args.size.lower().split("x"))
    lengths = [int(n) for n in args.frames.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    if not args.checkpoint:
        torch.manual_seed(0)
        pred = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
        args.checkpoint = str(tmp / "sam2.1_hiera_tiny.pt")
        torch.save({"model": pred.state_dict()}, args.checkpoint)
        del pred
    rows = []
    for n in lengths:
        frames, masks = render_scene(n_frames=n, size=(w, h))
        folder = tmp / f"v{n}"
        write_frames(frames, folder)
        key = n // 2
        gt = masks["red circle"][key]  # the slowest shape: in view for 200 frames
        prompt = {"frame": key, "box": [float(v) for v in mask_box(gt)],
                  "point": [float(v) for v in inner_point(gt)]}
        res: dict[str, dict] = {}
        for _ in range(max(1, args.repeat)):
            for mode in ("bare", "ours"):
                print(f"  {n} frames, {mode} ...", file=sys.stderr, flush=True)
                got = run_child(mode, folder, tmp / f"{mode}{n}", args, prompt)
                print(f"    {got}", file=sys.stderr, flush=True)
                if mode not in res or got["seconds"] < res[mode]["seconds"]:
                    res[mode] = got
        rows.append((n, res["bare"], res["ours"], same_masks(tmp / f"bare{n}", tmp / f"ours{n}")))
    print(f"\nSAM 2 segment step, {w}x{h} frames at input size {args.image_size} on {args.device} "
          f"({args.threads} threads); checkpoint: {Path(args.checkpoint).name}\n")
    print("| frames | bare s | ours s | time ours/bare | held bare MB | held ours MB | "
          "peak RSS bare MB | peak RSS ours MB | masks identical |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, b, o, same in rows:
        print(f"| {n} | {b['seconds']:.1f} | {o['seconds']:.1f} | {o['seconds'] / b['seconds']:.2f} | "
              f"{b['held_mb']:.1f} | {o['held_mb']:.1f} | {b['peak_mb']:.0f} | {o['peak_mb']:.0f} | "
              f"{'yes' if same else 'NO'} |")
    print("\nheld: the frames and SAM 2's per-frame state alive when propagation ends; peak RSS: "
          "the process's peak resident size during the step minus its size before")
    if len(rows) >= 2:
        (n0, b0, o0, _), (n1, b1, o1, _) = rows[0], rows[-1]
        for key, what in (("held_mb", "held"), ("peak_mb", "peak RSS")):
            sb = (b1[key] - b0[key]) / (n1 - n0)
            so = (o1[key] - o0[key]) / (n1 - n0)
            ratio = f"{sb / so:.1f}x lower" if so > 0 else "ours does not grow"
            print(f"{what} per extra frame: bare {sb:.2f} MB, ours {so:.2f} MB ({ratio})")


if __name__ == "__main__":
    main()
