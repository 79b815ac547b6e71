"""Small synthetic sets in the MeViS and ReVOS layouts, for tests and smoke runs.

Neither set can be downloaded on our machines. These are videos of the moving shapes the
OK-VOS maker draws (``testing.scenes``), written as the releases lay them out: an
expressions file whose expressions name one or two objects (``anno_id`` lists), the
frames in ``JPEGImages/<video>/`` and every object's masks as COCO RLE in
``mask_dict.json``. The two-object expressions (the shapes of a row) make the union of
objects matter: an answer with one of the two shapes cannot score J&F 1.

:class:`UnionGroundTruthSegmenter` answers a prompt with the union of the annotated objects
its box holds, and :func:`write_rvos_oracle_predictions` writes the published
validation-dump rows whose answers box each expression's objects (their union in one box,
each object in a list of its own, or only its first one; as tag text or as tools-mode rows
with a structured answer), so an evaluation's expected score is known exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segresearch.core.coords import QWEN3
from segresearch.core.media import Media, sample_frame_ids
from segresearch.core.rle import decode, encode
from segresearch.testing.scenes import (
    DEFAULT_SHAPES,
    inner_point,
    mask_box,
    render_scene,
    write_frames,
)
from segresearch.tools.segmenters.base import Prompt, Segmenter, VideoSession

# (text, shape names, ReVOS type_id: 0 referring, 1 reasoning)
EXPRESSIONS = (
    ("the red circle", ("red circle",), 0),
    ("the two shapes in the top row", ("red circle", "yellow star"), 0),
    ("the shapes moving along the bottom of the frame", ("blue square", "green triangle"), 0),
    ("the objects one would use as a sun and a ball in a drawing", ("yellow star", "red circle"), 1),
    ("the shape with the fewest corners in the bottom row", ("green triangle",), 1),
)
MEVIS_SPLIT = "valid_u"


def _write_set(base: Path, meta_name: str, n_videos: int, n_frames: int,
               size: tuple[int, int], seed: int, revos: bool) -> Path:
    videos: dict[str, Any] = {}
    mask_dict: dict[str, list[dict[str, Any] | None]] = {}
    anno = 0
    for v in range(n_videos):
        vid = f"vid{v:03d}"
        frames, masks = render_scene(n_frames=n_frames, size=size, shapes=DEFAULT_SHAPES, seed=seed + v)
        write_frames(frames, base / "JPEGImages" / vid)
        ids: dict[str, tuple[int, int]] = {}  # shape → (obj_id, anno_id)
        for oid, shape in enumerate(DEFAULT_SHAPES):
            ids[shape.name] = (oid, anno)
            mask_dict[str(anno)] = [encode(m) if m.any() else None for m in masks[shape.name]]
            anno += 1
        exps = {}
        for k, (text, shapes, type_id) in enumerate(EXPRESSIONS):
            exp = {"exp": text, "obj_id": [ids[s][0] for s in shapes],
                   "anno_id": [ids[s][1] for s in shapes]}
            if revos:
                exp["type_id"] = type_id
            exps[str(k)] = exp
        videos[vid] = {"expressions": exps, "frames": [f"{i:05d}" for i in range(n_frames)]}
    (base / meta_name).write_text(json.dumps({"videos": videos}), encoding="utf-8")
    (base / "mask_dict.json").write_text(json.dumps(mask_dict), encoding="utf-8")
    return base


def make_synthetic_mevis(root: str | Path, split: str = MEVIS_SPLIT, n_videos: int = 2,
                         n_frames: int = 8, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """``root/<split>/{meta_expressions.json, JPEGImages/, mask_dict.json}``; returns root."""
    base = Path(root) / split
    base.mkdir(parents=True, exist_ok=True)
    _write_set(base, "meta_expressions.json", n_videos, n_frames, size, seed, revos=False)
    return Path(root)


def make_synthetic_revos(root: str | Path, n_videos: int = 2, n_frames: int = 8,
                         size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """``root/{meta_expressions_valid_.json, JPEGImages/, mask_dict.json}``; returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return _write_set(root, "meta_expressions_valid_.json", n_videos, n_frames, size, seed, revos=True)


def _layout(frames_folder: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(set folder, the video's entry of the expressions file, mask_dict) of a video folder."""
    base = frames_folder.parent.parent
    metas = sorted(base.glob("meta_expressions*.json"))
    if not metas:
        raise FileNotFoundError(f"no meta_expressions*.json in {base}")
    meta = json.loads(metas[0].read_text(encoding="utf-8"))
    masks = json.loads((base / "mask_dict.json").read_text(encoding="utf-8"))
    return base, meta["videos"][frames_folder.name], masks


def _mask(runs: list[Any], index: int, shape: tuple[int, int]) -> np.ndarray:
    rle = runs[index]
    return decode(rle) if rle is not None else np.zeros(shape, bool)


class _UnionSession(VideoSession):
    def __init__(self, media: Media) -> None:
        self.media = media
        _, video, self.masks_by_anno = _layout(Path(media.source))
        self.frames = video["frames"]
        self.annos = sorted({str(a) for e in video["expressions"].values() for a in e["anno_id"]}, key=int)
        self.shape = (media.height, media.width)

    def masks(self, prompt: Prompt) -> Iterator[tuple[int, np.ndarray]]:
        index = self.frames.index(self.media.frame_name(prompt.frame))
        chosen = []
        if prompt.box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in prompt.box)
            for a in self.annos:
                m = _mask(self.masks_by_anno[a], index, self.shape)
                inside = int(m[max(y1, 0):y2 + 1, max(x1, 0):x2 + 1].sum())
                if m.any() and inside * 2 >= int(m.sum()):
                    chosen.append(a)
        for fid in self.media.frame_ids:
            i = self.frames.index(self.media.frame_name(fid))
            out = np.zeros(self.shape, bool)
            for a in chosen:
                out |= _mask(self.masks_by_anno[a], i, self.shape)
            yield fid, out


class UnionGroundTruthSegmenter(Segmenter):
    """For a MeViS / ReVOS-layout video: the union of the annotated objects of which at
    least half lies inside the prompt's box, on every frame."""

    name = "ground-truth-union"

    def open(self, media: Media) -> VideoSession:
        return _UnionSession(media)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def write_rvos_oracle_predictions(base: str | Path, path: str | Path, *, first_object_only: bool = False,
                                  per_object: bool = False, protocol: str = "tags") -> Path:
    """Rows (``id``, ``data_source``, ``video_path``, ``output``) answering every expression of
    the set in ``base`` (the folder holding the expressions file) with the box of its
    objects' union on the sampled frame where the union is largest, or with the box of its
    first object only. ``per_object``: an expression of several objects is answered with
    every object, each its own box and point (labelled with its shape), on the sampled frame
    where the smallest of them is largest: an ``<answer>`` holding a JSON list. ``protocol``
    ``"tools"``: rows as a tools-mode evaluation saves them (no tags in ``output``; the
    structured ``answer`` on the frame id, and ``objects`` when there are several). Ids are
    ``<video>_<exp_id>`` as the readers name queries."""
    if protocol not in ("tags", "tools"):
        raise ValueError(f"protocol must be tags or tools, not {protocol!r}")
    base = Path(base)
    meta = json.loads(sorted(base.glob("meta_expressions*.json"))[0].read_text(encoding="utf-8"))
    masks = json.loads((base / "mask_dict.json").read_text(encoding="utf-8"))
    lines = []
    # the shapes' names by annotation id, for the objects' labels (the synthetic sets name
    # their objects in shape order, obj_id k being DEFAULT_SHAPES[k])
    names: dict[int, str] = {}
    for video in meta["videos"].values():
        for e in video["expressions"].values():
            for o, a in zip(e.get("obj_id", []), e["anno_id"], strict=False):
                if 0 <= o < len(DEFAULT_SHAPES):
                    names[a] = DEFAULT_SHAPES[o].name
    for vid, video in meta["videos"].items():
        frames = video["frames"]
        folder = base / "JPEGImages" / vid
        first = next(r for e in video["expressions"].values() for a in e["anno_id"]
                     for r in masks[str(a)] if r is not None)
        shape = tuple(first["size"])
        for exp_id, exp in video["expressions"].items():
            objs = exp["anno_id"][:1] if first_object_only else exp["anno_id"]

            def union(i: int, objs: list[int] = objs, shape: tuple[int, ...] = shape) -> np.ndarray:
                out = np.zeros(shape, bool)
                for a in objs:
                    out |= _mask(masks[str(a)], i, shape)
                return out

            shown = sample_frame_ids(list(range(len(frames))), 6)
            several = per_object and len(objs) > 1
            if several:
                key = max(shown, key=lambda i: (min(int(_mask(masks[str(a)], i, shape).sum()) for a in objs),
                                                 int(union(i).sum())))
            else:
                key = max(shown, key=lambda i: int(union(i).sum()))
            m = union(key)
            h, w = m.shape

            def box_of(mask: np.ndarray, first: np.ndarray, w: int = w, h: int = h) -> dict[str, Any]:
                return {"bbox_2d": QWEN3.from_px(list(mask_box(mask)), w, h),
                        "point_2d": QWEN3.from_px(list(inner_point(first)), w, h)}

            answer = box_of(m, _mask(masks[str(objs[0])], key, shape))
            objects = [{**box_of(om, om), "label": names.get(a, f"object {a}")}
                       for a in objs for om in (_mask(masks[str(a)], key, shape),)] if several else []
            row: dict[str, Any] = {"id": f"{vid}_{exp_id}", "data_source": "Search_RVOS_referring",
                                   "video_path": str(folder.resolve())}
            if protocol == "tools":
                fid = int(frames[key])
                if several:
                    objects = [{"keyframe": fid, **o} for o in objects]
                    answer = {k: objects[0][k] for k in ("keyframe", "bbox_2d", "point_2d")}
                else:
                    answer = {"keyframe": fid, **answer}
                row.update(output="", protocol="tools", answer=answer, stop_reason="answer",
                           **({"objects": objects} if several else {}))
            else:
                said = json.dumps(objects if several else answer)
                row["output"] = (f"<thinking>Found it.</thinking>\n<keyframe> {int(frames[key])} </keyframe>"
                                 f"<answer>{said}</answer>")
            lines.append(json.dumps(row))
    path = Path(path)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
