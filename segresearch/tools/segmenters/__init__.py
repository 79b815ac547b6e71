"""Segmenters: SAM 2 (the published protocol) and a weight-free OpenCV fallback.

``get_segmenter`` maps the names users set (Context ``segmenter``, ``--segmenter``) to
instances; ``auto`` resolves to SAM 2 when it is installed with a checkpoint, else GrabCut,
and whichever ran is what run outputs report.
"""

from __future__ import annotations

from pathlib import Path

from segresearch.tools.segmenters.base import Prompt, Segmenter, VideoSession, stable_seed
from segresearch.tools.segmenters.grabcut import GrabCutSegmenter
from segresearch.tools.segmenters.prompting import (
    ParsedOutput,
    prompt_from_answer,
    prompt_from_output,
)
from segresearch.tools.segmenters.sam2 import (
    DEFAULT_FRAME_CACHE_MB,
    DEFAULT_SAM2_CONFIG,
    EVAL_FRAME_CACHE_MB,
    SAM2_CONFIGS,
    SAM2Segmenter,
    sam2_available,
    sam2_config_for,
)
from segresearch.tools.segmenters.writers import (
    OVERLAY_IMAGE,
    OVERLAY_VIDEO,
    MaskSet,
    OverlayObject,
    remove_partial_outputs,
    write_empty_mask_set,
    write_mask_set,
    write_object_mask_sets,
    write_overlay_image,
    write_overlay_video,
)

SEGMENTER_NAMES = ("sam2", "grabcut", "none", "auto")

__all__ = [
    "DEFAULT_FRAME_CACHE_MB", "DEFAULT_SAM2_CONFIG", "EVAL_FRAME_CACHE_MB", "OVERLAY_IMAGE",
    "OVERLAY_VIDEO",
    "SAM2_CONFIGS", "SEGMENTER_NAMES", "MaskSet", "OverlayObject", "ParsedOutput", "Prompt", "SAM2Segmenter",
    "Segmenter", "VideoSession", "get_segmenter", "prompt_from_answer", "prompt_from_output",
    "remove_partial_outputs", "resolve_segmenter_name", "sam2_available", "sam2_config_for",
    "stable_seed", "write_empty_mask_set", "write_mask_set", "write_object_mask_sets",
    "write_overlay_image", "write_overlay_video",
]


def resolve_segmenter_name(name: str, sam2_checkpoint: str = "") -> str:
    """The concrete segmenter a name stands for (``auto`` decided here)."""
    name = (name or "none").strip().lower()
    if name == "auto":
        ok = sam2_checkpoint and sam2_available() and Path(sam2_checkpoint).expanduser().is_file()
        return "sam2" if ok else "grabcut"
    if name not in SEGMENTER_NAMES:
        raise ValueError(f"unknown segmenter {name!r} (sam2, grabcut, none, auto)")
    return name


def get_segmenter(
    name: str | Segmenter,
    *,
    sam2_checkpoint: str = "",
    sam2_config: str = "",
    sam2_image_size: int | None = None,
    device: str = "auto",
    frame_cache_mb: float | None = None,
    prefetch_threads: int | None = None,
) -> Segmenter | None:
    """The segmenter for a Context value; None for 'none'. ``frame_cache_mb`` and
    ``prefetch_threads`` tune SAM 2's frame preparation (None: its defaults for one query)."""
    if isinstance(name, Segmenter):
        return name
    resolved = resolve_segmenter_name(name, sam2_checkpoint)
    if resolved == "none":
        return None
    if resolved == "grabcut":
        return GrabCutSegmenter()
    return SAM2Segmenter(sam2_checkpoint, sam2_config, device=device, image_size=sam2_image_size,
                         frame_cache_mb=frame_cache_mb, prefetch_threads=prefetch_threads)
