"""The segment step against the bare SAM 2 predictor driven the published way.

Two scenarios (``--scenario``):

``queries`` (default): what an evaluation does, several queries on one video. A 20-frame
1280×720 video (``--video-frames``, ``--size``; ``--source DIR`` takes real frames from a
folder, resized) and 10 queries (``--queries``) with different keyframes and boxes, each side in a fresh process:

- published: ``post_segmentation/sam2_okvos.py``'s flow, restated: SAM 2's own
  ``init_state`` once for the video (its loader prepares every frame up front), then per
  query ``reset_state``, the box call, the point call, forward and backward propagation,
  PNGs written after;
- ours: one ``SAM2Segmenter`` session for the video, frames prepared once and kept for all
  its queries (the evaluation's budget), prefetch threads by device (``--prefetch-threads``),
  ``write_mask_set`` per query;
- ours without reuse: the same with a frame budget of 0, every frame prepared again for
  each query (what the earlier 32 MB cache amounted to at 1024 px).

It prints frames/s per process (queries × frames / seconds, model already loaded), the
frames each side prepared, peak RSS, the ratio to the published flow, and whether every
mask file equals the published one.

``lengths``: one query on videos of several lengths (``--frames``, default 500, 1,000 and
2,000 of 64×64 frames), for time and memory per frame: the proof that ours holds a video of
any length in flat memory (issue 22, item 4). Both sides segment the same JPEG folder from
the same prompt (box, then point, on the middle frame, or frame 100 of a longer video;
propagation forward, then backward) and write one PNG per frame:

- bare: ``post_segmentation/sam2_okvos.py``'s flow, restated: ``init_state`` on the folder
  (SAM 2 loads every frame as a float32 tensor up front), two ``add_new_points_or_box``
  calls, two ``propagate_in_video`` passes into a (T, H, W) array, PNGs written after;
- ours: ``SAM2Segmenter.open(media)`` (frames decoded on demand through its ``FrameStore``
  into a small uint8 cache, prefetched in the direction of propagation; outputs outside
  SAM 2's memory window dropped as propagation goes) and ``write_mask_set`` (PNGs written
  while propagation runs).

Each measurement runs in a fresh process; memory is the process's own peak resident size
during the segmentation minus its size just before it (the model is loaded already), so it
is what the video costs: in ``lengths`` the kernel's high-water mark, restarted before the
step (``bench/_memory.py``: a spawned child's ``ru_maxrss`` would start at its parent's
peak), in ``queries`` sampled every 5 ms. The masks of both sides are compared file by file.
``lengths`` prints the peak of each side, their ratio, and the growth per extra frame. Our
frame budget (``--frame-cache-mb``) is a constant, but the graph's 64 MiB holds over a
thousand frames at a 64-pixel input: to see what length alone costs, give a budget the
shortest video fills (8 MiB: 170 frames at 64 px).

No SAM 2 checkpoint ships in any package: by default a random-weight SAM 2.1 tiny model is
built from its config, as the tests do (the cost of a frame is the same for any weights);
pass --checkpoint for real ones. On a CPU, 1024-pixel inputs take seconds per frame:
--image-size 256 keeps a run to minutes (frames scale with the input size squared); the
default is 1024 on CUDA, 256 on CPU.
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
from _memory import StepPeak  # bench/ is on sys.path when a script runs


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


def frame_output_kb(state: dict) -> tuple[int, float]:
    """(how many frames' outputs SAM 2's state holds, the KB of one frame's outputs): the
    storage of every tensor of the non-conditioning outputs that belongs to one frame alone
    (the positional encoding all frames share is not a frame's), averaged over the frames."""
    import torch

    owners: dict[int, set[int]] = {}
    sizes: dict[int, int] = {}
    entries = 0

    def walk(o: object, t: int) -> None:
        if isinstance(o, torch.Tensor):
            ptr = o.untyped_storage().data_ptr()
            owners.setdefault(ptr, set()).add(t)
            sizes[ptr] = o.untyped_storage().nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, t)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, t)

    for outputs in state["output_dict_per_obj"].values():
        for t, out in outputs["non_cond_frame_outputs"].items():
            entries += 1
            walk(out, t)
    own = sum(sizes[p] for p, ts in owners.items() if len(ts) == 1)
    return entries, own / max(1, entries) / 1024


class OneStatePerVideo:
    """The predictor as the published script uses it across a video's queries: SAM 2's own
    ``init_state`` once (here, when made), then every ``init_state`` the reference flow asks
    for returns that state, which the flow resets per query."""

    def __init__(self, predictor: object, folder: Path) -> None:
        import torch

        self._predictor = predictor
        with torch.inference_mode():
            self._state = predictor.init_state(video_path=str(folder))  # type: ignore[attr-defined]

    def init_state(self, video_path: str) -> dict:
        return self._state

    def __getattr__(self, name: str) -> object:
        return getattr(self._predictor, name)


def write_pngs(masks: np.ndarray, names: list[str], out: Path) -> None:
    """One 0/255 PNG per frame, named after it, with PIL as the published script does."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for t, name in enumerate(names):
        Image.fromarray(masks[t].astype(np.uint8) * 255).save(out / f"{Path(name).stem}.png")


def _prompts(raw: str) -> list:
    from segresearch.tools.segmenters import Prompt

    return [Prompt(p["frame"], tuple(p["box"]), tuple(p["point"])) for p in json.loads(raw)]


def warm_up(predictor: object, folder: Path) -> None:
    """One short untimed run, so that lazy initialisation in torch and SAM 2 (first-call
    allocations, kernel selection) is not counted against whichever side runs it first."""
    from segresearch.testing.sam2_reference import bare_published
    from segresearch.tools.segmenters import Prompt

    bare_published(predictor, folder, Prompt(0, (4.0, 4.0, 40.0, 30.0), (20.0, 16.0)))


def child_queries(args: argparse.Namespace, predictor: object, seg: object) -> dict:
    """Every query of ``args.prompt`` (a list) on one video, the published way or ours."""
    from segresearch.core.media import open_media
    from segresearch.testing.sam2_reference import bare_published
    from segresearch.tools.segmenters import write_mask_set

    prompts = _prompts(args.prompt)
    folder, out = Path(args.folder), Path(args.out)
    if args.child == "published":
        names = sorted(os.listdir(folder))
        flow = OneStatePerVideo(predictor, folder)
        for i, prompt in enumerate(prompts):
            _, masks = bare_published(flow, folder, prompt)
            write_pngs(masks, names, out / f"q{i}")
        return {"prepared": len(names)}  # SAM 2's loader prepares each frame once, up front
    media = open_media(folder)
    with seg.open(media) as session:  # type: ignore[attr-defined]
        for i, prompt in enumerate(prompts):
            write_mask_set(out / f"q{i}", media, session.masks(prompt))
        return {"prepared": session.frames.decoded, "prefetch_threads": session.frames.threads}


def child(args: argparse.Namespace) -> None:
    """One measurement in this process: prints a JSON line."""
    import torch

    from segresearch.core.media import open_media
    from segresearch.tools.segmenters import (
        EVAL_FRAME_CACHE_MB,
        Prompt,
        SAM2Segmenter,
        write_mask_set,
    )

    torch.set_num_threads(args.threads)
    # the evaluation's budget, none, or (one query, as the graph runs it) the default
    cache = {"ours-eval": EVAL_FRAME_CACHE_MB, "ours-no-reuse": 0.0}.get(args.child, args.frame_cache_mb)
    seg = SAM2Segmenter(args.checkpoint, device=args.device, image_size=args.image_size,
                        frame_cache_mb=cache, prefetch_threads=args.prefetch_threads)
    predictor, _ = seg.predictor()
    if args.child in QUERY_SIDES:
        warm_up(predictor, Path(args.folder).parent / "warmup")
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            info = child_queries(args, predictor, seg)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "peak_mb": mem.peak - mem.base, **info}), flush=True)
        return
    p = json.loads(args.prompt)
    prompt = Prompt(p["frame"], tuple(p["box"]), tuple(p["point"]))
    folder, out = Path(args.folder), Path(args.out)
    held = {"frames": 0.0, "state": 0.0}
    outputs = {"held_outputs": 0, "output_kb": 0.0}

    def weigh_outputs(state: dict) -> None:
        entries, kb = frame_output_kb(state)
        outputs["held_outputs"] = max(outputs["held_outputs"], entries)
        outputs["output_kb"] = max(outputs["output_kb"], kb)
    reset = predictor.reset_state

    def measuring_reset(state: dict) -> None:
        """Our session resets the state when propagation ends: weigh it just before."""
        held["state"] = max(held["state"], tensor_mb(state["output_dict_per_obj"]))
        weigh_outputs(state)
        images = state["images"]
        if hasattr(images, "held_bytes"):  # our frame cache (the bare flow holds a tensor)
            held["frames"] = max(held["frames"], images.held_bytes / 2**20)
        reset(state)

    predictor.reset_state = measuring_reset
    with StepPeak() as mem:
        t0 = time.perf_counter()
        if args.child == "bare":
            from segresearch.testing.sam2_reference import bare_published

            names = sorted(os.listdir(folder))
            state, masks = bare_published(predictor, folder, prompt)
            held["state"] = tensor_mb(state["output_dict_per_obj"])
            weigh_outputs(state)
            held["frames"] = tensor_mb(state["images"])
            write_pngs(masks, names, out)
        else:
            media = open_media(folder)
            with seg.open(media) as session:
                write_mask_set(out, media, session.masks(prompt))
        seconds = time.perf_counter() - t0
    # held_outputs: the frames whose outputs the state holds at its fullest; output_kb: one frame's
    print(json.dumps({"seconds": seconds, "peak_mb": mem.mb, **outputs,
                      "held_mb": held["frames"] + held["state"], **{f"{k}_mb": v for k, v in held.items()}}),
          flush=True)


QUERY_SIDES = {
    "published": "published: SAM 2 init_state once, reset_state per query",
    "ours-eval": "ours: frames kept for the video, prefetch by device",
    "ours-no-reuse": "ours without reuse: frame budget 0",
}


def run_child(mode: str, folder: Path, out: Path, args: argparse.Namespace, prompt: object) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--out", str(out),
           "--checkpoint", args.checkpoint, "--image-size", str(args.image_size),
           "--device", args.device, "--threads", str(args.threads), "--prompt", json.dumps(prompt)]
    if args.prefetch_threads is not None:
        cmd += ["--prefetch-threads", str(args.prefetch_threads)]
    if args.frame_cache_mb is not None:
        cmd += ["--frame-cache-mb", str(args.frame_cache_mb)]
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


def same_mask_sets(a: Path, b: Path, n: int) -> bool:
    return all(same_masks(a / f"q{i}", b / f"q{i}") for i in range(n))


def query_prompts(n: int, frames: int, w: int, h: int) -> list[dict]:
    """``n`` prompts with keyframes spread over the video and boxes of varied place and size
    (the cost of a query does not depend on what the box holds)."""
    out = []
    for i in range(n):
        key = round(i * (frames - 1) / max(1, n - 1))
        cx, cy = w * (0.25 + 0.5 * ((i * 0.37) % 1)), h * (0.25 + 0.5 * ((i * 0.61) % 1))
        bw, bh = w * (0.1 + 0.05 * (i % 4)), h * (0.1 + 0.05 * (i % 3))
        out.append({"frame": key, "box": [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2],
                    "point": [cx, cy]})
    return out


def make_video(args: argparse.Namespace, folder: Path, n: int, w: int, h: int) -> None:
    """``n`` frames at w×h: from ``--source`` (real footage, resized) or synthetic shapes."""
    from PIL import Image

    from segresearch.testing.scenes import render_scene, write_frames

    if not args.source:
        frames, _ = render_scene(n_frames=n, size=(w, h))
        write_frames(frames, folder)
        return
    files = sorted(p for p in Path(args.source).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < n:
        raise SystemExit(f"--source {args.source} has {len(files)} frames, fewer than {n}")
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files[:n]):
        with Image.open(f) as im:
            im.convert("RGB").resize((w, h), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def prep_ms(folder: Path, size: int) -> float:
    """Median milliseconds to prepare one frame of ``folder`` for SAM 2 at ``size`` (decode,
    resize, normalise), in this process, with nothing kept: what each query pays per frame
    when a video's frames are not kept between its queries."""
    from segresearch.core.media import open_media
    from segresearch.tools.segmenters.sam2 import FrameStore

    store = FrameStore(open_media(folder), size, cache_mb=0, prefetch=0, threads=0)
    times = []
    for pos in range(len(store)):
        t0 = time.perf_counter()
        store.tensor(pos)
        times.append(1000 * (time.perf_counter() - t0))
    store.close()
    return float(np.median(times))


def bench_queries(args: argparse.Namespace, tmp: Path) -> None:
    w, h = (int(v) for v in args.size.lower().split("x"))
    n, q = args.video_frames, args.queries
    folder = tmp / "video"
    make_video(args, folder, n, w, h)
    from segresearch.testing.scenes import render_scene, write_frames

    write_frames(render_scene(n_frames=3, size=(96, 64))[0], tmp / "warmup")
    prompts = query_prompts(q, n, w, h)
    res: dict[str, dict] = {}
    for _ in range(max(1, args.repeat)):
        for mode in QUERY_SIDES:
            print(f"  {q} queries on {n} frames, {mode} ...", file=sys.stderr, flush=True)
            got = run_child(mode, folder, tmp / mode, args, prompts)
            print(f"    {got}", file=sys.stderr, flush=True)
            if mode not in res or got["seconds"] < res[mode]["seconds"]:
                res[mode] = got
    base = q * n / res["published"]["seconds"]
    print(f"\nSAM 2 segment step, {q} queries on one {n}-frame {w}x{h} video at input size "
          f"{args.image_size} on {args.device} ({args.threads} torch threads); checkpoint: "
          f"{Path(args.checkpoint).name}; source: {args.source or 'synthetic'}\n")
    print("| path | seconds | frames/s per process | vs published | frames prepared | "
          "prefetch threads | peak RSS MB | masks = published |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for mode, label in QUERY_SIDES.items():
        r = res[mode]
        fps = q * n / r["seconds"]
        same = "—" if mode == "published" else (
            "yes" if same_mask_sets(tmp / "published", tmp / mode, q) else "NO")
        print(f"| {label} | {r['seconds']:.1f} | {fps:.2f} | {fps / base:.2f}x | {r['prepared']} | "
              f"{r.get('prefetch_threads', '—')} | {r['peak_mb']:.0f} | {same} |")
    print("\nframes/s: queries x frames / seconds, model already loaded (each query propagates "
          "over every frame); peak RSS: the process's peak during the step minus its size before")
    sizes = sorted({args.image_size, 1024})
    print("frame preparation alone (decode, resize, normalise; median per frame, one thread): "
          + ", ".join(f"{prep_ms(folder, s):.0f} ms at {s}" for s in sizes))


def bench_lengths(args: argparse.Namespace, tmp: Path) -> None:
    from segresearch.testing.scenes import inner_point, mask_box, render_scene, write_frames

    w, h = (int(v) for v in args.size.lower().split("x"))
    lengths = [int(n) for n in args.frames.split(",")]
    rows = []
    for n in lengths:
        frames, masks = render_scene(n_frames=n, size=(w, h))
        folder = tmp / f"v{n}"
        write_frames(frames, folder)
        # the middle frame, or frame 100 in a longer video: the slowest shape, the red
        # circle, is in view for its first 200 frames (what the frames show does not change
        # what a frame costs)
        key = min(n // 2, 100)
        gt = masks["red circle"][key]
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
          "peak RSS bare MB | peak RSS ours MB | peak bare/ours | masks identical |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, b, o, same in rows:
        ratio = f"{b['peak_mb'] / o['peak_mb']:.1f}x" if o["peak_mb"] > 0 else "—"
        print(f"| {n} | {b['seconds']:.1f} | {o['seconds']:.1f} | {o['seconds'] / b['seconds']:.2f} | "
              f"{b['held_mb']:.1f} | {o['held_mb']:.1f} | {b['peak_mb']:.1f} | {o['peak_mb']:.1f} | "
              f"{ratio} | {'yes' if same else 'NO'} |")
    print("\nheld: the frames and SAM 2's per-frame state alive when propagation ends; peak RSS: "
          "the process's peak resident size during the step minus its size before")
    if len(rows) >= 2:
        (n0, b0, o0, _), (n1, b1, o1, _) = rows[0], rows[-1]
        for key, what in (("held_mb", "held"), ("peak_mb", "peak RSS")):
            sb = (b1[key] - b0[key]) / (n1 - n0)
            so = (o1[key] - o0[key]) / (n1 - n0)
            ratio = f"{sb / so:.1f}x lower" if so > 0 else "ours does not grow"
            print(f"{what} per extra frame: bare {sb:.2f} MB, ours {so:.2f} MB ({ratio})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["queries", "lengths"], default="queries")
    ap.add_argument("--queries", type=int, default=10, help="queries on the video (queries scenario)")
    ap.add_argument("--video-frames", dest="video_frames", type=int, default=20,
                    help="frames of the video (queries scenario)")
    ap.add_argument("--source", help="a folder of real frames to take the video from (queries scenario)")
    ap.add_argument("--frame-cache-mb", dest="frame_cache_mb", type=float, default=None,
                    help="ours (lengths scenario): the frame budget (default the graph's, 64 MiB: "
                         "a constant, but one that small frames fill only after a thousand)")
    ap.add_argument("--prefetch-threads", dest="prefetch_threads", type=int, default=None,
                    help="ours: frame-preparing threads (default by device: 0 on CPU)")
    ap.add_argument("--frames", default="500,1000,2000", help="video lengths to measure (lengths scenario)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="SAM 2 input side (default 1024 on CUDA, 256 on CPU)")
    ap.add_argument("--size", default=None,
                    help="frame size of the video (default 1280x720; lengths: 64x64)")
    ap.add_argument("--checkpoint", default="", help="a SAM 2 checkpoint (default: random tiny)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per side and length, alternating; the fastest is kept (shared "
                         "machines are noisy)")
    ap.add_argument("--child", choices=["bare", "ours", *QUERY_SIDES], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.image_size is None:
        args.image_size = 1024 if args.device.startswith("cuda") else 256
    if args.child:
        child(args)
        return
    if args.size is None:
        args.size = "1280x720" if args.scenario == "queries" else "64x64"

    import torch
    from sam2.build_sam import build_sam2_video_predictor

    tmp = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    if not args.checkpoint:
        torch.manual_seed(0)
        pred = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
        args.checkpoint = str(tmp / "sam2.1_hiera_tiny.pt")
        torch.save({"model": pred.state_dict()}, args.checkpoint)
        del pred
    if args.scenario == "queries":
        bench_queries(args, tmp)
    else:
        bench_lengths(args, tmp)


if __name__ == "__main__":
    main()
