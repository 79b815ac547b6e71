"""``segment``: masks for every frame from the answer's box and point.

The tool wraps a :class:`~segresearch.tools.segmenters.Segmenter` (SAM 2 with the published
two-call prompting, or the OpenCV fallback) and writes one PNG per input frame plus an
overlay video a person can watch. Segmenters themselves live in ``tools/segmenters``.

Several objects (``objects``): each with its keyframe, box, point, optional name and the
corrections a verify round added; the segmenter tracks them together
(``VideoSession.track``), each object's masks go to ``objects/<k>`` beside the mask folder
and their union to the mask folder itself (what scores read); the overlay shows each object
in its own colour with its name beside its box.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field, model_validator

from segresearch.core.media import Media
from segresearch.tools.segmenters import (
    OVERLAY_IMAGE,
    OVERLAY_VIDEO,
    OverlayObject,
    Prompt,
    SAM2Segmenter,
    Segmenter,
    get_segmenter,
    sam2_available,
    sam2_config_for,
    write_empty_mask_set,
    write_mask_set,
    write_object_mask_sets,
    write_overlay_image,
    write_overlay_video,
)

__all__ = [
    "OVERLAY_IMAGE", "OVERLAY_VIDEO", "CorrectionArgs", "ObjectArgs", "Prompt", "SAM2Segmenter",
    "Segmenter", "get_segmenter", "make_segment_tool", "object_prompts", "sam2_available",
    "sam2_config_for",
]


class CorrectionArgs(BaseModel):
    frame: int = Field(description="Frame id the correction is drawn on.")
    points: list[list[float]] = Field(default_factory=list,
                                      description="[[x, y], ...] in original-frame pixels.")
    labels: list[int] = Field(default_factory=list,
                              description="One per point: 1 positive (object), 0 negative.")
    box: list[float] | None = Field(default=None, min_length=4, max_length=4,
                                    description="x1, y1, x2, y2 in original-frame pixels.")

    @model_validator(mode="after")
    def _consistent(self) -> CorrectionArgs:
        if len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels")
        if any(len(p) != 2 for p in self.points):
            raise ValueError("every point is [x, y]")
        if any(lab not in (0, 1) for lab in self.labels):
            raise ValueError("labels are 1 (positive) or 0 (negative)")
        if not self.points and self.box is None:
            raise ValueError("a correction needs points or a box")
        return self


class ObjectArgs(BaseModel):
    keyframe: int = Field(description="Frame id the box and point refer to.")
    bbox_2d: list[float] | None = Field(default=None, min_length=4, max_length=4,
                                        description="x1, y1, x2, y2 in original-frame pixels.")
    point_2d: list[float] | None = Field(default=None, min_length=2, max_length=2,
                                         description="x, y in original-frame pixels.")
    label: str | None = Field(default=None, description="What the object is.")
    corrections: list[CorrectionArgs] = Field(default_factory=list,
                                              description="Later prompts, in order.")


class SegmentArgs(BaseModel):
    keyframe: int | None = Field(description="Frame id the box and point refer to (None: no usable answer).")
    bbox_2d: list[float] | None = Field(default=None, min_length=4, max_length=4,
                                        description="x1, y1, x2, y2 in original-frame pixels.")
    point_2d: list[float] | None = Field(default=None, min_length=2, max_length=2,
                                         description="x, y in original-frame pixels.")
    objects: list[ObjectArgs] | None = Field(
        default=None, description="Several objects (replaces keyframe, bbox_2d and point_2d).")


def object_prompts(obj: ObjectArgs | dict[str, Any]) -> list[Prompt]:
    """An object's prompts in order: its answer (when it has a box or a point), then its
    corrections; empty when it has none to prompt with."""
    o = obj if isinstance(obj, ObjectArgs) else ObjectArgs.model_validate(obj)
    prompts = []
    if o.bbox_2d is not None or o.point_2d is not None:
        prompts.append(Prompt(o.keyframe, tuple(o.bbox_2d) if o.bbox_2d else None,  # type: ignore[arg-type]
                              tuple(o.point_2d) if o.point_2d else None,  # type: ignore[arg-type]
                              label=o.label))
    for c in o.corrections:  # validated with the object
        prompts.append(Prompt(c.frame, tuple(c.box) if c.box else None,  # type: ignore[arg-type]
                              points=tuple((float(x), float(y), int(lab))
                                           for (x, y), lab in zip(c.points, c.labels, strict=True)),
                              label=o.label))
    return prompts


def _unlabelled(prompt: Prompt | None) -> dict[str, Any] | None:
    """What the artifact's ``prompt`` holds: the answer's box and point (names are reported
    per object)."""
    return None if prompt is None else dataclasses.replace(prompt, label=None).as_dict()


def make_segment_tool(
    media: Media,
    segmenter: Segmenter,
    masks_dir: Path | None,
    on_frame: Callable[[int, int], None] | None = None,
    objects_dir: Path | None = None,
) -> BaseTool:
    """A tool that segments the target on every frame. With ``masks_dir`` it writes a PNG per
    frame there (all empty when there is no usable prompt) and ``overlay.mp4`` beside it
    (``overlay.jpg`` for a single image); with two or more ``objects``, each object's masks
    in ``objects_dir/<k>`` (default: ``objects`` beside ``masks_dir``) and their union in
    ``masks_dir``. ``on_frame(done, total)`` hears of the progress in frames, for progress
    reports (with several objects a frame is done once every object has its mask there,
    on average: the masks counted over the number of objects)."""
    done = [0]
    per_frame = [1]  # masks that make one frame's worth of work
    objects_root = objects_dir if objects_dir is not None or masks_dir is None else masks_dir.parent / "objects"

    def tick(_fid: int) -> None:
        done[0] += 1
        if on_frame is not None and done[0] % per_frame[0] == 0:
            on_frame(done[0] // per_frame[0], len(media))

    def overlay(prompt: Prompt | None, objects: list[OverlayObject] | None = None) -> None:
        assert masks_dir is not None
        if len(media) > 1:
            write_overlay_video(media, masks_dir, masks_dir.parent / OVERLAY_VIDEO, prompt,
                                label=segmenter.name, objects=objects)
        else:
            write_overlay_image(media, masks_dir, masks_dir.parent / OVERLAY_IMAGE, prompt,
                                label=segmenter.name, objects=objects)

    def several(objects: list[ObjectArgs]) -> tuple[str, dict[str, Any]]:
        prompts = [object_prompts(o) for o in objects]
        tracked = [k for k, p in enumerate(prompts) if p]
        per_frame[0] = max(1, len(tracked))
        n = len(objects)
        first = next((p[0] for p in prompts if p), None)

        def stream(session: Any) -> Iterator[tuple[int, int, np.ndarray]]:
            for j, fid, mask in session.track([prompts[k] for k in tracked]):
                yield tracked[j], fid, mask

        if masks_dir is None:
            per: list[dict[int, int]] = [{} for _ in objects]
            union: dict[int, np.ndarray] = {}
            last: list[dict[int, np.ndarray]] = [{} for _ in objects]
            if tracked:
                with segmenter.open(media) as session:
                    for k, fid, mask in stream(session):
                        m = np.asarray(mask, bool)
                        last[k][fid] = m
                        per[k][fid] = int(m.sum())
            for masks in last:
                for fid, m in masks.items():
                    union[fid] = union[fid] | m if fid in union else m
            area = {int(f): int(m.sum()) for f, m in union.items()}
            reached, files, dirs = len(union), [], [None] * n
            reached_per = [len(p) for p in per]
        else:
            assert objects_root is not None
            if tracked:
                with segmenter.open(media) as session:
                    union_set, sets = write_object_mask_sets(masks_dir, objects_root, media,
                                                             stream(session), n, on_frame=tick)
            else:
                union_set, sets = write_object_mask_sets(masks_dir, objects_root, media, (), n)
            area, reached = union_set.area, union_set.reached
            per = [s.area for s in sets] if sets else [area]
            reached_per = [s.reached for s in sets] if sets else [reached]
            dirs = [str(s.path) for s in sets] if sets else [None]
            files = sorted(p.name for p in masks_dir.glob("*.png"))
            overlay(first, [OverlayObject(Path(d) if d else masks_dir, tuple(p), o.label)
                            for d, p, o in zip(dirs, prompts, objects, strict=True)])
        listed = [{"label": o.label, "dir": d,
                   "keyframe_area": per[k].get(o.keyframe) if prompts[k] else None,
                   "reached": reached_per[k]}
                  for k, (o, d) in enumerate(zip(objects, dirs, strict=True))]
        if not tracked:
            text = f"{segmenter.name}: no usable answer, empty masks for {len(media)} frames"
        else:
            text = (f"{segmenter.name}: masks for {reached} of {len(media)} frames"
                    + (f", {n} objects" if n > 1 else ""))
        return text, {"files": files, "area": area, "reached": reached,
                      "prompt": _unlabelled(first), "objects": listed}

    def segment(
        keyframe: int | None, bbox_2d: list[float] | None = None, point_2d: list[float] | None = None,
        objects: list[ObjectArgs] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        if objects:
            objects = [o if isinstance(o, ObjectArgs) else ObjectArgs.model_validate(o) for o in objects]
            if len(objects) > 1 or objects[0].corrections:
                return several(objects)
            # one object without corrections: the single-prompt path below, unchanged
            only = objects[0]
            keyframe, bbox_2d, point_2d = only.keyframe, only.bbox_2d, only.point_2d
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
            elif objects:  # the same masks and files; an earlier answer's object folders go
                with segmenter.open(media) as session:
                    assert objects_root is not None
                    mask_set, _ = write_object_mask_sets(
                        masks_dir, objects_root, media, ((0, f, m) for f, m in session.masks(prompt)), 1,
                        on_frame=tick)
            else:
                with segmenter.open(media) as session:
                    mask_set = write_mask_set(masks_dir, media, session.masks(prompt), on_frame=tick)
            area, reached = mask_set.area, mask_set.reached
            files = sorted(p.name for p in masks_dir.glob("*.png"))
            label = objects[0].label if objects else None
            overlay(prompt, [OverlayObject(masks_dir, (prompt,), label)]
                    if label and prompt is not None else None)
        if prompt is None:
            text = f"{segmenter.name}: no usable answer, empty masks for {len(media)} frames"
        else:
            text = f"{segmenter.name}: masks for {reached} of {len(media)} frames"
        art: dict[str, Any] = {"files": files, "area": area, "reached": reached,
                               "prompt": None if prompt is None else prompt.as_dict()}
        if objects:
            art["objects"] = [{"label": objects[0].label, "dir": None,
                               "keyframe_area": None if prompt is None else area.get(prompt.frame),
                               "reached": reached}]
        return text, art

    return StructuredTool.from_function(
        segment,
        name="segment",
        description="Segment the target on every frame from a box and a point on one frame.",
        args_schema=SegmentArgs,
        response_format="content_and_artifact",
    )
