"""SAM 2 video segmentation with the published post-segmentation protocol.

Prompting follows ``post_segmentation/sam2_okvos.py`` of the paper's code: on the keyframe,
``add_new_points_or_box`` with the box, then again with the point on the same frame and
object (the second call clears the box and refines from the first call's mask), then
propagation forward and then backward from the keyframe; the session is reset between
queries so one video is set up once for all its queries.

Frames differ from SAM 2's own loader only in when they are made and how long they live.
Its loader turns every frame into a 1024² float32 tensor up front (12.6 MB a frame; 2.5 GB
for 200 frames), whatever the memory. Here a frame is prepared (decoded, resized exactly as
SAM 2 resizes it, normalised with the same float operations, so the model sees bit-identical
inputs) when the model first asks for it or just before, by prefetch threads working in the
direction propagation is going, and kept for the video's later queries within a byte budget
(``frame_cache_mb``). An evaluation gives the budget a whole video's frames
(``EVAL_FRAME_CACHE_MB``), so each frame is prepared once for all the queries of its video;
a single query reads each frame about once, so the graph keeps a small budget.

SAM 2 keeps every tracked frame's outputs in its inference state until the state is reset
(about 1.75 MB a frame at 1024 px). Propagation here drops each frame's outputs once they
fall outside the window SAM 2 reads its memories from (``compat.sam2.memory_window``,
15 frames for the released configs; prompted frames and their neighbours are kept for the
other direction's pass), and masks are written as they come, so a session's memory does
not grow with the video's length; the masks are bit-identical to the bare predictor's.

Several objects (:meth:`SAM2Session.track`) are tracked the way SAM 2 tracks several objects:
one object id each (k + 1 for object k), every prompt of every object added before one
forward and one backward propagation (both start from the earliest prompted frame of any
object, as ``propagate_in_video`` decides), every object's mask yielded per frame. An
object's prompts are added in order, each as the published pair of calls (box, then point)
followed by its extra labelled points, which join the points already on that frame.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from segresearch.compat.sam2 import (
    cache_image_feature,
    cast_memory_to_feature_dtype,
    drop_outputs_outside_window,
    new_inference_state,
    quiet_missing_extension,
    silence_progress_bars,
)
from segresearch.core.media import Media
from segresearch.core.shared_cache import LoadOnce
from segresearch.tools.segmenters.base import Prompt, Segmenter, VideoSession

SAM2_CONFIGS = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
DEFAULT_SAM2_CONFIG = SAM2_CONFIGS["large"]
# ImageNet statistics SAM 2 normalises with (sam2.utils.misc.load_video_frames defaults),
# and every value a uint8 channel can take, normalised with SAM 2's float operations.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_NORMALISED = (
    (np.arange(256) / 255.0).astype(np.float32)[None, :] - np.asarray(_MEAN, np.float32)[:, None]
) / np.asarray(_STD, np.float32)[:, None]

# Prepared frames a session may keep, in MiB (a frame is 3 × side² float32: 12 MiB at 1024).
# One query reads each frame about once (frame 0 twice), so a session that serves one
# query (the graph) needs little; an evaluation serves every query of a video from one
# session and keeps the whole video: 3 GiB holds 256 frames at 1024², any source resolution
# (a 720p video is resized to the model's square input like any other).
DEFAULT_FRAME_CACHE_MB = 64.0
EVAL_FRAME_CACHE_MB = 3072.0


def default_prefetch_threads(device: str) -> int:
    """Threads preparing frames ahead of propagation: none on a CPU (they would compete with
    the model's own threads for the same cores), several on an accelerator, where one
    thread (about 25-120 ms a 720p frame) cannot keep up with the model."""
    if str(device).startswith("cpu"):
        return 0
    return max(2, min(4, (os.cpu_count() or 2) // 2))


def sam2_config_for(checkpoint: str, config: str = "") -> str:
    """The config matching a checkpoint named like the official ones
    (``sam2.1_hiera_tiny.pt`` → hiera_t), unless a config is given."""
    if config and config != DEFAULT_SAM2_CONFIG:
        return config
    stem = Path(checkpoint).stem.lower()
    for key in ("base_plus", "tiny", "small", "large"):
        if key in stem:
            return SAM2_CONFIGS[key]
    return config or DEFAULT_SAM2_CONFIG


def sam2_available() -> bool:
    try:
        import sam2  # heavy: optional [sam2] extra  # noqa: F401
    except ImportError:
        return False
    return True


_PREDICTORS: LoadOnce[tuple[Any, threading.Lock]] = LoadOnce(name="sam2.predictors")


def load_predictor(
    config: str, checkpoint: str, device: str, image_size: int | None = None
) -> tuple[Any, threading.Lock]:
    """The video predictor for these settings, built once per process, with the lock that
    serialises its use (its inference states are not thread-safe)."""

    def build() -> tuple[Any, threading.Lock]:
        from sam2.build_sam import build_sam2_video_predictor  # heavy: optional [sam2] extra

        silence_progress_bars()
        extra = [f"++model.image_size={image_size}"] if image_size else []
        try:
            pred = build_sam2_video_predictor(
                config, ckpt_path=checkpoint, device=device, hydra_overrides_extra=extra
            )
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ValueError(f"cannot load SAM 2 checkpoint {checkpoint} with {config}: {first}") from None
        cast_memory_to_feature_dtype(pred)  # objects prompted on different frames
        return pred, threading.Lock()

    return _PREDICTORS.get((config, checkpoint, device, image_size), build)


class FrameStore:
    """What SAM 2 reads as ``inference_state["images"]``: frame ``i`` as the normalised
    float32 tensor its JPEG loader would have made, prepared on demand or ahead.

    Prepared frames are kept for the session (one video, every query of it) while they fit
    in ``cache_mb``; once the budget is full, frames already kept stay and the others are
    prepared again when asked for. Propagation sweeps the video forward and backward from a
    different keyframe per query, and an LRU would evict each frame just before the next
    sweep comes back to it (no reuse at all once a video is larger than the budget); keeping
    a fixed set reuses the share that fits. ``prefetch`` frames ahead of the last one read,
    in its direction, are prepared by ``threads`` threads (one for a video file, whose
    decoder reads in order). Memory: at most ``cache_mb`` plus ``prefetch`` frames in flight,
    whatever the video's length."""

    def __init__(self, media: Media, image_size: int, cache_mb: float = DEFAULT_FRAME_CACHE_MB,
                 prefetch: int = 4, threads: int = 1) -> None:
        self.media = media
        self.size = int(image_size)
        self.frame_bytes = 3 * self.size * self.size * np.dtype(np.float32).itemsize
        self.cache_bytes = max(0, int(cache_mb * 2**20))
        threads = min(threads, 1) if media.kind == "video" else threads
        self.threads = max(0, int(threads)) if prefetch > 0 else 0
        self.prefetch = max(0, int(prefetch)) if self.threads else 0
        self._cache: dict[int, Any] = {}  # kept frames; never evicted while the session lives
        self._ready: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool = (ThreadPoolExecutor(self.threads, thread_name_prefix="sam2-frames")
                      if self.threads else None)
        self._last: int | None = None
        self.decoded = 0  # frames prepared so far (tests and benchmarks read it)
        self.hits = 0  # reads served from kept frames

    def __len__(self) -> int:
        return len(self.media)

    @property
    def held_bytes(self) -> int:
        return len(self._cache) * self.frame_bytes

    def resized(self, pos: int) -> np.ndarray:
        """Frame ``pos`` resized to the model's square input, as SAM 2 resizes a JPEG
        (PIL's default filter), uint8 H×W×3."""
        img = self.media.frame(self.media.frame_ids[pos])
        return np.array(img.convert("RGB").resize((self.size, self.size)))

    def tensor(self, pos: int) -> Any:
        """Normalised like sam2.utils.misc (``x / 255`` in float64, stored as float32, then
        ``(x - mean) / std`` in float32), through a table of the 256 results per channel:
        the same bits, without the frame-sized float64 temporaries whose churn would grow
        the process's memory frame after frame."""
        import torch  # heavy: optional [sam2] extra

        arr = self.resized(pos)
        out = np.empty((3, self.size, self.size), np.float32)
        for c in range(3):
            np.take(_NORMALISED[c], arr[..., c], out=out[c])
        return torch.from_numpy(out)

    def _prepare(self, pos: int) -> Any:
        """Decode, resize and normalise frame ``pos``, and keep it if the budget allows."""
        t = self.tensor(pos)
        with self._lock:
            self.decoded += 1
            if pos not in self._cache and self.held_bytes + self.frame_bytes <= self.cache_bytes:
                self._cache[pos] = t
        return t

    def _take(self, pos: int) -> Any | None:
        """A kept frame, or the result of its prefetch; None when neither exists."""
        with self._lock:
            hit = self._cache.get(pos)
            if hit is not None:
                self.hits += 1
                return hit
            fut = self._ready.pop(pos, None)
        if fut is None:
            return None
        try:
            return fut.result()
        except CancelledError:
            return None

    def __getitem__(self, pos: int) -> Any:
        pos = int(pos)
        if not 0 <= pos < len(self.media):
            raise IndexError(pos)
        t = self._take(pos)
        if t is None:
            t = self._prepare(pos)
        self._schedule(pos)
        return t

    def _schedule(self, pos: int) -> None:
        """Prepare the frames propagation will ask for next (it walks one frame at a time,
        forward or backward), except those kept already, and drop plans behind it."""
        last, self._last = self._last, pos
        if self._pool is None:
            return
        step = -1 if last is not None and pos == last - 1 else 1
        with self._lock:
            for k in range(1, self.prefetch + 1):
                nxt = pos + k * step
                if 0 <= nxt < len(self.media) and nxt not in self._ready and nxt not in self._cache:
                    self._ready[nxt] = self._pool.submit(self._prepare, nxt)
            for stale in [p for p in self._ready if (p - pos) * step <= 0 or abs(p - pos) > self.prefetch]:
                self._ready.pop(stale).cancel()

    def close(self) -> None:
        with self._lock:
            for fut in self._ready.values():
                fut.cancel()
            self._ready.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            self._cache.clear()


def init_state(predictor: Any, frames: FrameStore, offload_state_to_cpu: bool) -> dict[str, Any]:
    """SAM 2's inference state over ``frames`` instead of a JPEG folder loaded whole: the
    same fields ``init_state`` sets, and the same warm-up of frame 0 (both restated in
    ``compat.sam2``, which holds every use of SAM 2's internals)."""
    state = new_inference_state(predictor, frames, len(frames), frames.media.height,
                                frames.media.width, offload_state_to_cpu)
    cache_image_feature(predictor, state, 0)
    return state


def add_prompt(predictor: Any, state: dict[str, Any], pos: int, prompt: Prompt,
               obj_id: int = 1) -> None:
    """The published two calls: the box, then the point (which refines the box's mask);
    then the prompt's extra labelled points, added to the points already on that frame for
    this object (``clear_old_points=False``), so a correction refines rather than replaces."""
    if prompt.box is not None:
        predictor.add_new_points_or_box(
            inference_state=state, frame_idx=pos, obj_id=obj_id,
            box=np.asarray(prompt.box, np.float32),
        )
    if prompt.point is not None:
        predictor.add_new_points_or_box(
            inference_state=state, frame_idx=pos, obj_id=obj_id,
            points=np.asarray([prompt.point], np.float32), labels=np.array([1], np.int32),
        )
    if prompt.points:
        predictor.add_new_points_or_box(
            inference_state=state, frame_idx=pos, obj_id=obj_id, clear_old_points=False,
            points=np.asarray([(x, y) for x, y, _ in prompt.points], np.float32),
            labels=np.asarray([lab for _, _, lab in prompt.points], np.int32),
        )


class SAM2Session(VideoSession):
    def __init__(self, segmenter: SAM2Segmenter, media: Media) -> None:
        self.media = media
        self.segmenter = segmenter
        self.predictor, self._lock = segmenter.predictor()
        threads = segmenter.prefetch_threads
        self.frames = FrameStore(media, self.predictor.image_size, segmenter.frame_cache_mb,
                                 prefetch=2 * threads, threads=threads)
        with self._lock, quiet_missing_extension():
            self.state = init_state(self.predictor, self.frames, segmenter.device == "cpu")

    def masks(self, prompt: Prompt) -> Iterator[tuple[int, np.ndarray]]:
        with closing(self.track([[prompt]])) as masks:  # closed at once if left early
            for _k, fid, mask in masks:
                yield fid, mask

    def track(self, objects: Sequence[Sequence[Prompt]]) -> Iterator[tuple[int, int, np.ndarray]]:
        """Every object tracked jointly: one reset, object k's prompts added in order with
        object id k + 1, one forward and one backward propagation yielding each object's
        mask on each frame. One object with one prompt is exactly the published protocol
        (:meth:`masks`)."""
        import torch  # heavy: optional [sam2] extra

        objects = [list(prompts) for prompts in objects]
        if not objects:
            return
        if any(not prompts for prompts in objects):
            raise ValueError("every object needs at least one prompt")
        ids = self.media.frame_ids
        with self._lock, torch.inference_mode(), quiet_missing_extension():
            self.predictor.reset_state(self.state)
            try:
                for k, prompts in enumerate(objects):
                    for prompt in prompts:
                        add_prompt(self.predictor, self.state, self.media.index_of(prompt.frame),
                                   prompt, obj_id=k + 1)
                for reverse in (False, True):
                    for idx, obj_ids, logits in self.predictor.propagate_in_video(
                        self.state, reverse=reverse
                    ):
                        masks = (logits[:, 0] > 0.0).cpu().numpy()
                        del logits
                        # outputs SAM 2 will not read again: memory stays flat with length
                        drop_outputs_outside_window(self.predictor, self.state, idx, reverse)
                        for row, obj_id in enumerate(obj_ids):
                            yield int(obj_id) - 1, ids[idx], masks[row]
            finally:
                # Per-frame outputs are only needed during propagation: free them now.
                self.predictor.reset_state(self.state)

    def close(self) -> None:
        self.frames.close()
        self.state = {}


class SAM2Segmenter(Segmenter):
    """SAM 2 video predictor: the keyframe's box and point, propagated through every frame.

    ``frame_cache_mb``: prepared frames a session keeps for its later queries (see
    :class:`FrameStore`); ``prefetch_threads``: threads preparing frames ahead of
    propagation (default: :func:`default_prefetch_threads` for the device). Neither changes
    a mask, so neither is part of :meth:`describe`."""

    name = "sam2"

    def __init__(
        self,
        checkpoint: str,
        config: str = "",
        device: str = "auto",
        image_size: int | None = None,
        frame_cache_mb: float | None = None,
        prefetch_threads: int | None = None,
    ) -> None:
        if not sam2_available():
            raise ValueError(
                "segmenter 'sam2' needs the sam2 package: pip install 'segresearch[sam2]'"
            )
        if not checkpoint:
            raise ValueError(
                "segmenter 'sam2' needs a checkpoint: set sam2_checkpoint / "
                "SEGRESEARCH_SAM2_CHECKPOINT (e.g. sam2.1_hiera_large.pt from the SAM 2 release)"
            )
        if not Path(checkpoint).expanduser().is_file():
            raise ValueError(f"SAM 2 checkpoint not found: {checkpoint}")
        self.checkpoint = str(Path(checkpoint).expanduser())
        self.config = sam2_config_for(self.checkpoint, config)
        if device == "auto":
            import torch  # heavy: optional [sam2] extra

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.image_size = image_size or None
        self.frame_cache_mb = DEFAULT_FRAME_CACHE_MB if frame_cache_mb is None else float(frame_cache_mb)
        if self.frame_cache_mb < 0:
            raise ValueError(f"frame_cache_mb must be at least 0, got {frame_cache_mb}")
        if prefetch_threads is not None and prefetch_threads < 0:
            raise ValueError(f"prefetch_threads must be at least 0, got {prefetch_threads}")
        self.prefetch_threads = (default_prefetch_threads(device) if prefetch_threads is None
                                 else int(prefetch_threads))

    def predictor(self) -> tuple[Any, threading.Lock]:
        return load_predictor(self.config, self.checkpoint, self.device, self.image_size)

    def loaded(self) -> bool:
        return _PREDICTORS.has((self.config, self.checkpoint, self.device, self.image_size))

    def open(self, media: Media) -> SAM2Session:
        return SAM2Session(self, media)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": Path(self.checkpoint).name, "config": self.config,
                "device": self.device, "image_size": self.image_size or 1024,
                "protocol": "box, then point; forward, then backward"}
