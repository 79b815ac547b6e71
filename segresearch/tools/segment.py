"""``segment``: masks for every frame from the answer's box and point.

The tool wraps a :class:`~segresearch.tools.segmenters.Segmenter` (SAM 2 with the published
two-call prompting, or the OpenCV fallback) and writes one PNG per input frame plus an
overlay video a person can watch. Segmenters themselves live in ``tools/segmenters``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from segresearch.core.media import Media
from segresearch.tools.segmenters import (
    OVERLAY_IMAGE,
    OVERLAY_VIDEO,
    Prompt,
    SAM2Segmenter,
    Segmenter,
    get_segmenter,
    sam2_available,
    sam2_config_for,
    write_empty_mask_set,
    write_mask_set,
    write_overlay_image,
    write_overlay_video,
)

__all__ = [
    "OVERLAY_IMAGE", "OVERLAY_VIDEO", "Prompt", "SAM2Segmenter", "Segmenter", "get_segmenter", "make_segment_tool",
    "sam2_available", "sam2_config_for",
]


class SegmentArgs(BaseModel):
    keyframe: int | None = Field(description="Frame id the box and point refer to (None: no usable answer).")
    bbox_2d: list[float] | None = Field(default=None, min_length=4, max_length=4,
                                        description="x1, y1, x2, y2 in original-frame pixels.")
    point_2d: list[float] | None = Field(default=None, min_length=2, max_length=2,
                                         description="x, y in original-frame pixels.")


def make_segment_tool(
    media: Media,
    segmenter: Segmenter,
    masks_dir: Path | None,
    on_frame: Callable[[int, int], None] | None = None,
) -> BaseTool:
    """A tool that segments the target on every frame. With ``masks_dir`` it writes a PNG per
    frame there (all empty when there is no usable prompt) and ``overlay.mp4`` beside it
    (``overlay.jpg`` for a single image).
    ``on_frame(done, total)`` hears of every mask, for progress reports."""
    done = [0]

    def tick(_fid: int) -> None:
        done[0] += 1
        if on_frame is not None:
            on_frame(done[0], len(media))

    def segment(
        keyframe: int | None, bbox_2d: list[float] | None = None, point_2d: list[float] | None = None
    ) -> tuple[str, dict[str, Any]]:
        prompt = None
        if keyframe is not None and (bbox_2d is not None or point_2d is not None):
            prompt = Prompt(keyframe, tuple(bbox_2d) if bbox_2d else None,  # type: ignore[arg-type]
                            tuple(point_2d) if point_2d else None)  # type: ignore[arg-type]
        if masks_dir is None:
            masks = segmenter.segment(media, prompt) if prompt is not None else {}
            area = {int(f): int(m.sum()) for f, m in masks.items()}
            reached, files = len(masks), []
        else:
            if prompt is None:
                mask_set = write_empty_mask_set(masks_dir, media)
            else:
                with segmenter.open(media) as session:
                    mask_set = write_mask_set(masks_dir, media, session.masks(prompt), on_frame=tick)
            area, reached = mask_set.area, mask_set.reached
            files = sorted(p.name for p in masks_dir.glob("*.png"))
            if len(media) > 1:
                write_overlay_video(media, masks_dir, masks_dir.parent / OVERLAY_VIDEO, prompt,
                                    label=segmenter.name)
            else:
                write_overlay_image(media, masks_dir, masks_dir.parent / OVERLAY_IMAGE, prompt,
                                    label=segmenter.name)
        if prompt is None:
            text = f"{segmenter.name}: no usable answer, empty masks for {len(media)} frames"
        else:
            text = f"{segmenter.name}: masks for {reached} of {len(media)} frames"
        return text, {"files": files, "area": area, "reached": reached,
                      "prompt": None if prompt is None else prompt.as_dict()}

    return StructuredTool.from_function(
        segment,
        name="segment",
        description="Segment the target on every frame from a box and a point on one frame.",
        args_schema=SegmentArgs,
        response_format="content_and_artifact",
    )
