"""J&F scoring throughput: segresearch's stacked metrics against a per-frame loop, and PNG reads.

``segresearch.eval.metrics`` scores a whole (T, H, W) query at once, binarising and comparing
the stack in single numpy passes. A typical DAVIS-style evaluation loop instead scores frame
by frame, converting types for each frame; ``per_frame_scores`` below is such a loop, written
for this benchmark from the DAVIS definitions, and both are first checked to give the same
per-frame J and F (to 1e-12) so that only speed is compared. Both dilate every boundary map
with the same OpenCV call, so the ratio shows what the stacking saves around it.

Scoring is only half of an evaluation: the masks must also be read from PNG files. The last
column times ``cv2.imread`` of the gt and pred PNGs of every frame, so the table shows whether
scoring or I/O bounds the evaluation. The files were just written, so they come from the page
cache: that is the decode cost, a lower bound on reading from a cold disk.

The masks are smooth moving ellipses (uint8 0/255, as read from PNG), not noise: noise would
put a boundary on nearly every pixel. Predictions are shifted, eroded or dilated copies of the
ground truth, with frames where one side or both are empty, to exercise the DAVIS edge cases.

    python bench/metrics.py [--sizes 480p,720p,1080p] [--frames 50] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from _tables import markdown  # bench/ is on sys.path when a script runs

from segresearch.eval.metrics import boundary_f, j_and_f, region_j

SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
BOUND_TH = 0.008  # DAVIS' boundary tolerance, a fraction of the image diagonal


# ------------------------------------------------------------------------ data


def make_masks(frames: int, width: int, height: int, seed: int) -> tuple[np.ndarray, ...]:
    """(gt, pred, kinds) shaped like a video segmentation data set, because boundary cost
    depends on how much boundary there is: a moving object (two ellipses with a hole) and a
    prediction off by a few pixels. Lengths scale with the image so every resolution shows
    the same scene. ``kinds`` per frame, so each DAVIS edge rule is exercised: 0 both
    non-empty, 1 both empty, 2 gt empty with a false positive, 3 pred empty (a miss)."""
    rng = np.random.default_rng(seed)
    scale = min(width, height)
    diag = math.hypot(width, height)
    parts = []  # (centre, velocity, axes, growth per frame, angle, spin, colour)
    for colour in (255, 255, 0):  # the last one is drawn as a hole
        size = rng.uniform(0.04, 0.08) if colour == 0 else rng.uniform(0.08, 0.2)
        parts.append((
            np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height]),
            rng.uniform(-0.004, 0.004, 2) * scale,
            np.array([size, size * rng.uniform(0.4, 1.0)]) * scale,
            rng.uniform(-0.004, 0.004),
            rng.uniform(0, 180),
            rng.uniform(-2, 2),
            colour,
        ))
    kinds = rng.choice(4, size=frames, p=[0.82, 0.06, 0.06, 0.06])
    if frames >= 4:  # every edge case at least once
        kinds[rng.choice(frames, 3, replace=False)] = [1, 2, 3]
    gt = np.zeros((frames, height, width), np.uint8)
    pred = np.zeros_like(gt)
    for t in range(frames):
        obj = np.zeros((height, width), np.uint8)
        for centre, vel, axes, growth, angle, spin, colour in parts:
            c = centre + t * vel
            a = axes * (1 + growth * t)
            cv2.ellipse(obj, (round(c[0]), round(c[1])), (max(1, round(a[0])), max(1, round(a[1]))),
                        angle + spin * t, 0, 360, colour, -1)
        dx, dy = rng.integers(-1, 2, 2) * rng.integers(0, max(2, round(0.006 * diag)), 2)
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        guess = cv2.warpAffine(obj, shift, (width, height), flags=cv2.INTER_NEAREST)
        k = int(rng.integers(1, max(2, round(0.005 * diag))))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        guess = (cv2.erode if rng.random() < 0.5 else cv2.dilate)(guess, kernel)
        if rng.random() < 0.3:  # a small spurious blob somewhere else
            cv2.circle(guess, (int(rng.integers(width)), int(rng.integers(height))),
                       max(1, round(0.02 * scale)), 255, -1)
        if kinds[t] in (0, 3):
            gt[t] = obj
        if kinds[t] in (0, 2):
            pred[t] = guess
    return gt, pred, kinds


# ---------------------------------------------------------------- the loop side


def per_frame_scores(gts: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The baseline, written the way DAVIS-style evaluation loops usually are (one frame at a
    time, each frame binarised, converted for OpenCV and back, its tolerance disk rebuilt), so
    the ratio says what scoring the stack at once buys over them."""
    js, fs = [], []
    for gt_frame, pred_frame in zip(gts, preds, strict=True):
        g = gt_frame > 0
        p = pred_frame > 0

        union = np.logical_or(g, p).sum()
        js.append(1.0 if union == 0 else np.logical_and(g, p).sum() / union)

        g_edge = edge_map(g)
        p_edge = edge_map(p)
        radius = math.ceil(BOUND_TH * math.hypot(*g.shape))
        ys, xs = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        disk = (xs**2 + ys**2 <= radius**2).astype(np.uint8)
        g_near = cv2.dilate(g_edge.astype(np.uint8), disk) > 0
        p_near = cv2.dilate(p_edge.astype(np.uint8), disk) > 0

        n_g = g_edge.sum()
        n_p = p_edge.sum()
        if n_g == 0 and n_p == 0:
            fs.append(1.0)
        elif n_g == 0 or n_p == 0:
            fs.append(0.0)
        else:
            precision = (p_edge & g_near).sum() / n_p
            recall = (g_edge & p_near).sum() / n_g
            total = precision + recall
            fs.append(0.0 if total == 0 else 2 * precision * recall / total)
    return np.array(js, dtype=np.float64), np.array(fs, dtype=np.float64)


def edge_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS' seg2bmap rule (differs from the right, lower or lower-right neighbour; missing
    neighbours are not compared, so the image border never counts), written here on its own so
    the equality check compares two implementations rather than one with itself."""
    right = np.zeros_like(mask)
    down = np.zeros_like(mask)
    diag = np.zeros_like(mask)
    right[:, :-1] = mask[:, :-1] != mask[:, 1:]
    down[:-1, :] = mask[:-1, :] != mask[1:, :]
    diag[:-1, :-1] = mask[:-1, :-1] != mask[1:, 1:]
    return right | down | diag


def loop_j_and_f(gts: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    js, fs = per_frame_scores(gts, preds)
    j, f = float(js.mean()), float(fs.mean())
    return {"J": j, "F": f, "J&F": (j + f) / 2}


# ---------------------------------------------------------------------- timing


def read_pngs(paths: list[tuple[Path, Path]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(cv2.imread(str(g), cv2.IMREAD_GRAYSCALE), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))
            for g, p in paths]


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, object]]:
    """Best-of-``repeats`` seconds of each function, run round-robin so that a noisy
    neighbour slows all of them alike rather than one, and what each returned last (so the
    timed runs can be checked without paying for extra ones)."""
    best = dict.fromkeys(fns, math.inf)
    out: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


def bench_size(label: str, frames: int, repeats: int, seed: int, tmp: Path) -> dict[str, object]:
    width, height = SIZES[label]
    gt, pred, kinds = make_masks(frames, width, height, seed)

    # Same per-frame numbers first, or the speed comparison would mean nothing.
    loop_j, loop_f = per_frame_scores(gt, pred)
    np.testing.assert_allclose(region_j(gt, pred), loop_j, rtol=0, atol=1e-12, err_msg="J")
    np.testing.assert_allclose(boundary_f(gt, pred), loop_f, rtol=0, atol=1e-12, err_msg="F")
    folder = tmp / label
    folder.mkdir()
    paths = []
    for t in range(frames):
        g, p = folder / f"gt_{t:05d}.png", folder / f"pred_{t:05d}.png"
        assert cv2.imwrite(str(g), gt[t]) and cv2.imwrite(str(p), pred[t])
        paths.append((g, p))
    back = read_pngs(paths)
    assert all(np.array_equal(a, gt[t]) and np.array_equal(b, pred[t])
               for t, (a, b) in enumerate(back)), "PNG round trip changed the masks"
    png_mb = sum(g.stat().st_size + p.stat().st_size for g, p in paths) / 1e6

    best, out = interleaved({
        "ours": lambda: j_and_f(gt, pred),
        "loop": lambda: loop_j_and_f(gt, pred),
        "read": lambda: read_pngs(paths),
    }, repeats)
    ours, theirs = out["ours"], out["loop"]
    for key in ours:
        assert abs(ours[key] - theirs[key]) <= 1e-12, (label, key, ours, theirs)
    return {
        "label": f"{label} ({width}x{height})",
        "frames": frames,
        "ours": best["ours"],
        "loop": best["loop"],
        "read": best["read"],
        "png_mb": png_mb,
        "kinds": np.bincount(kinds, minlength=4),
        "J&F": ours["J&F"],
    }


def verdict(results: list[dict[str, object]]) -> str:
    """States the table's point rather than leaving it to arithmetic: whether faster scoring
    can shorten an evaluation that has to read its masks from PNG anyway."""
    io_over_ours = [r["read"] / r["ours"] for r in results]
    io_over_loop = [r["read"] / r["loop"] for r in results]
    lo, hi = min(io_over_ours), max(io_over_ours)
    span = f"{lo:.1f}x" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}x"
    if lo > 1:
        first = (f"Reading the PNGs dominates: decoding a frame's gt and pred takes {span} as "
                 "long as segresearch takes to score it, so faster scoring would barely shorten "
                 "an evaluation that reads masks from disk.")
    elif hi < 1:
        first = (f"Scoring dominates with segresearch: decoding a frame's PNGs takes only "
                 f"{span} of the time segresearch needs to score it.")
    else:
        first = (f"Neither dominates throughout: decoding a frame's PNGs takes {span} of "
                 "segresearch's time to score it, depending on the resolution.")
    lo2, hi2 = min(io_over_loop), max(io_over_loop)
    if hi2 < 1:
        second = (f"With the per-frame loop scoring dominates {'too' if hi < 1 else 'instead'} "
                  f"(PNG decoding takes {lo2:.2f}-{hi2:.2f}x of its time).")
    elif lo2 > 1:
        second = (f"Even the per-frame loop scores faster than the PNGs decode ({lo2:.1f}-"
                  f"{hi2:.1f}x), so I/O would bound it too.")
    else:
        second = (f"For the per-frame loop the balance depends on the resolution (PNG decoding "
                  f"is {lo2:.2f}-{hi2:.2f}x of its time).")
    return f"{first} {second}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="480p,720p,1080p",
                    help=f"comma-separated, among {', '.join(SIZES)}")
    ap.add_argument("--frames", type=int, default=50, help="frames per query (T)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    labels = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in labels if s not in SIZES]
    if unknown:
        ap.error(f"unknown size(s) {unknown}; choose among {list(SIZES)}")
    if args.frames < 1 or args.repeats < 1:
        ap.error("--frames and --repeats must be >= 1")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        for label in labels:
            t0 = time.perf_counter()
            results.append(bench_size(label, args.frames, args.repeats, args.seed, Path(tmp)))
            r = results[-1]
            both, gt_empty, pred_empty = r["kinds"][1:]
            print(f"  {r['label']}: J&F {r['J&F']:.4f}, per-frame J and F identical; "
                  f"{both} frames both empty, {gt_empty} gt empty, {pred_empty} pred empty; "
                  f"{r['png_mb']:.1f} MB of PNG; {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)

    rows = [[r["label"], str(r["frames"]), f"{r['frames'] / r['ours']:.1f}",
             f"{r['frames'] / r['loop']:.1f}", f"{r['loop'] / r['ours']:.2f}",
             f"{r['frames'] / r['read']:.1f}"] for r in results]
    print(f"\nJ&F scoring throughput, frames/s (best of {args.repeats}, interleaved; "
          f"seed {args.seed}; OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads). "
          "A frame is one gt + pred mask pair; PNG read = cv2.imread of both, from page cache.\n")
    print(markdown(["resolution", "frames", "segresearch fps", "per-frame loop fps",
                    "ratio ours/loop", "PNG read fps"], rows))
    print()
    print(verdict(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
