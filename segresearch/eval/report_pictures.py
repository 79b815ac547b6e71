"""The pictures of the HTML report: small JPEG thumbnails of each query's keyframe, its
predicted masks and its ground truth on the same frames.

They are made one query at a time, each from a freshly opened media file that is closed
again, so a long video or a large evaluation never has to fit in memory; and every failure
(unreadable media, a broken mask, missing ground truth) becomes a note for the query's row
instead of an exception, so one bad query never stops the report.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from segresearch.core.media import Media, MediaError, open_media, sample_frame_ids
from segresearch.eval.datasets import DatasetError, Query, image_ground_truth
from segresearch.eval.rvos import frame_size, union_mask
from segresearch.tools.visualize import annotate, overlay_mask

log = logging.getLogger(__name__)

ASSETS_DIR = "report_assets"  # beside report.html; every picture's src is relative to it
KEY_SIZE = (320, 360)  # keyframe thumbnail: width, and a height cap for portrait media
TILE_SIZE = (160, 200)  # one frame of the overlay strip
STRIP_FRAMES = 4
STRIP_GAP = 2
JPEG_QUALITY = 85
GT_COLOUR = (0, 200, 255)  # ground truth: sky blue, apart from the prediction's magenta


def asset_stem(qid: str, index: int, used: set[str]) -> str:
    """A file name that is safe on every file system and unique per query, yet still
    recognisable when someone browses the assets folder."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", qid).strip("-")[:48] or "q"
    stem = f"{slug}-{hashlib.sha1(qid.encode('utf-8', 'replace')).hexdigest()[:8]}"
    if f"{stem}_key.jpg" in used or f"{stem}_strip.jpg" in used:  # a repeated id
        stem = f"{stem}-{index}"
    return stem


def _save_jpeg(rgb: np.ndarray, path: Path) -> None:
    Image.fromarray(rgb).save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)


def _fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    s = min(box[0] / w, box[1] / h)
    return max(1, round(w * s)), max(1, round(h * s))


def _read_mask(seg: Path, name: str) -> np.ndarray | None:
    path = seg / f"{name}.png"
    if not path.is_file():
        return None
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return None if m is None else m > 127


def _small(img: Image.Image, mask: np.ndarray | None, box: tuple[int, int]):
    """The frame and its mask at thumbnail size, and the factors that map original pixel
    coordinates onto it. Drawing at thumbnail size keeps lines equally visible whatever
    the resolution of the video."""
    tw, th = _fit(img.size, box)
    sx, sy = tw / img.size[0], th / img.size[1]
    rgb = np.asarray(img.convert("RGB").resize((tw, th), Image.BICUBIC, reducing_gap=2.0))
    if mask is not None:
        mask = cv2.resize(mask.astype(np.uint8) * 255, (tw, th), interpolation=cv2.INTER_AREA)
        mask = mask > 127
    return np.ascontiguousarray(rgb, dtype=np.uint8), mask, sx, sy


def per_frame(q: dict) -> dict[str, list[Any]] | None:
    """The query's per-frame scores when they are usable: names with finite J and F."""
    pf = q.get("per_frame")
    if not isinstance(pf, dict):
        return None
    names, js, fs = pf.get("frame"), pf.get("J"), pf.get("F")
    if not (isinstance(names, list) and isinstance(js, list) and isinstance(fs, list)):
        return None
    if not names or not len(names) == len(js) == len(fs):
        return None
    try:
        js_f = [float(v) for v in js]
        fs_f = [float(v) for v in fs]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in js_f + fs_f):
        return None
    return {"frame": [str(n) for n in names], "J": js_f, "F": fs_f}


# ---------------------------------------------------------------------------- pictures


@dataclass
class Picture:
    src: str  # relative to the report
    width: int
    height: int
    caption: str


@dataclass
class Pictures:
    key: Picture | None = None
    key_note: str | None = None
    strip: Picture | None = None
    strip_note: str | None = None
    gt: Picture | None = None
    gt_note: str | None = None
    unavailable: str | None = None  # the media could not be opened at all
    shown: list[str] = field(default_factory=list)  # frame names of the strips
    worst: str | None = None  # the annotated frame with the lowest J, when known
    files: list[str] = field(default_factory=list)


def _key_frame_id(q: dict) -> int | None:
    prompt = q.get("prompt")
    if isinstance(prompt, dict) and prompt.get("frame") is not None:
        return int(prompt["frame"])
    if q.get("graph_keyframe") is not None:
        return int(q["graph_keyframe"])
    return None


def _keyframe(media: Media, q: dict, seg: Path, assets: Path, stem: str) -> Picture:
    fid = _key_frame_id(q)
    assert fid is not None
    name = media.frame_name(fid)
    img = media.frame(fid)
    rgb, mask, sx, sy = _small(img, _read_mask(seg, name), KEY_SIZE)
    prompt = q.get("prompt") if isinstance(q.get("prompt"), dict) else {}
    box = prompt.get("box")
    point = prompt.get("point")
    if box is not None:
        box = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
    if point is not None:
        point = [point[0] * sx, point[1] * sy]
    out = annotate(rgb, mask, box, point)
    file = f"{stem}_key.jpg"
    _save_jpeg(out, assets / file)
    what = []
    if box is not None:
        what.append("box")
    if point is not None:
        what.append("point")
    if mask is not None:
        what.append("mask" if mask.any() else "empty mask")
    caption = f"frame {name}" + (f" · {', '.join(what)}" if what else " · nothing drawn")
    if not q.get("prompt"):
        caption += " (the graph's keyframe)"
    return Picture(f"{ASSETS_DIR}/{file}", out.shape[1], out.shape[0], caption)


def _strip_frames(media: Media, q: dict) -> tuple[list[int], str | None]:
    """The frames both strips show, and the annotated frame with the lowest J.

    With per-frame scores the frames are spread over the annotated frames (where there is
    ground truth to compare with) and always include the worst one, which is usually the
    frame that explains a low score; otherwise they are spread over the whole media."""
    pf = per_frame(q)
    if pf is None:
        return sample_frame_ids(media.frame_ids, STRIP_FRAMES), None
    j_of = dict(zip(pf["frame"], pf["J"], strict=True))
    annotated = [f for f in media.frame_ids if media.frame_name(f) in j_of]
    if not annotated:
        return sample_frame_ids(media.frame_ids, STRIP_FRAMES), None
    fids = sample_frame_ids(annotated, STRIP_FRAMES)
    worst = min(annotated, key=lambda f: j_of[media.frame_name(f)])
    if j_of[media.frame_name(worst)] == max(j_of[media.frame_name(f)] for f in annotated):
        return fids, None  # every frame scores the same: no frame is the worst
    if worst not in fids:
        pos = annotated.index(worst)
        nearest = min(range(len(fids)), key=lambda k: abs(annotated.index(fids[k]) - pos))
        fids[nearest] = worst
        fids.sort(key=annotated.index)
    return fids, media.frame_name(worst)


def _strip_image(
    media: Media,
    fids: Sequence[int],
    mask_of: Callable[[int, str, Image.Image], np.ndarray | None],
    colour: tuple[int, int, int],
) -> tuple[np.ndarray, int]:
    """Tiles of ``fids`` side by side with ``mask_of``'s mask tinted in ``colour``; also
    how many tiles had a non-empty mask."""
    tiles: list[np.ndarray] = []
    masked = 0
    for fid in fids:
        name = media.frame_name(fid)
        img = media.frame(fid)
        rgb, mask, _, _ = _small(img, mask_of(fid, name, img), TILE_SIZE)
        if mask is not None and mask.any():
            rgb = overlay_mask(rgb, mask, colour)
            masked += 1
        tiles.append(annotate(rgb, label=name) if len(fids) > 1 else rgb)
    height = max(t.shape[0] for t in tiles)
    width = sum(t.shape[1] for t in tiles) + STRIP_GAP * (len(tiles) - 1)
    canvas = np.full((height, width, 3), 32, np.uint8)
    x = 0
    for t in tiles:
        y = (height - t.shape[0]) // 2
        canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + STRIP_GAP
    return canvas, masked


def _frames_caption(media: Media, names: Sequence[str], worst: str | None) -> str:
    if len(media) == 1:
        return "the image" if media.kind == "image" else "the only frame"
    label = "frame" if len(names) == 1 else "frames"
    shown = ", ".join(f"{n} (lowest J)" if n == worst and len(names) > 1 else n for n in names)
    return f"{label} {shown} of {len(media)}"


def _strip(media: Media, fids: Sequence[int], seg: Path, assets: Path, stem: str,
           caption: str) -> Picture:
    canvas, masked = _strip_image(media, fids, lambda _f, name, _i: _read_mask(seg, name),
                                  (255, 64, 160))
    file = f"{stem}_strip.jpg"
    _save_jpeg(canvas, assets / file)
    caption = f"prediction · {caption} · mask visible in {masked} of {len(fids)}"
    return Picture(f"{ASSETS_DIR}/{file}", canvas.shape[1], canvas.shape[0], caption)


def _gt_mask_reader(q: dict, media: Media) -> Callable[[int, str, Image.Image], np.ndarray | None]:
    """How to get the ground-truth mask of a frame of this query: the annotation folder's
    ``<frame>.png`` for a video, the mask file or polygons of an image query."""
    gt = str(q.get("gt") or "")
    if q.get("kind") == "image" or media.kind == "image":
        query = Query(id=str(q.get("id")), question="", ability="", media=media.source,
                      segment_media=media.source, gt=gt, kind="image",
                      polygons=str(q.get("gt_polygons") or ""), ignore=str(q.get("gt_ignore") or ""))
        if not gt and not query.polygons:
            raise LookupError("no ground truth recorded for this query")
        w, h = media.source_size or (media.width, media.height)
        target, _ = image_ground_truth(query, h, w)
        return lambda _f, _n, _i: target
    if not gt:
        raise LookupError("no ground truth recorded for this query")
    annotations = q.get("gt_annotations")
    if isinstance(annotations, dict):  # MeViS / ReVOS: the union of RLE annotations
        query = Query(id=str(q.get("id")), question="", ability="", media=media.source,
                      segment_media=media.source, gt=gt, kind="video", extra=dict(annotations))
        index = {str(n): i for i, n in enumerate(annotations.get("frames") or [])}
        size = frame_size(query)

        def union(_fid: int, name: str, _img: Image.Image) -> np.ndarray | None:
            return union_mask(query, index[name], size) if name in index else None

        return union
    folder = Path(gt)
    if not folder.is_dir():
        raise LookupError(f"ground-truth folder not found: {folder}")

    def read(_fid: int, name: str, _img: Image.Image) -> np.ndarray | None:
        m = cv2.imread(str(folder / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        return None if m is None else m > 0  # binarised as the score binarises it

    return read


def _gt_strip(media: Media, fids: Sequence[int], q: dict, assets: Path, stem: str,
              caption: str) -> Picture:
    reader = _gt_mask_reader(q, media)
    canvas, masked = _strip_image(media, fids, reader, GT_COLOUR)
    file = f"{stem}_gt.jpg"
    _save_jpeg(canvas, assets / file)
    caption = f"ground truth · {caption} · object in {masked} of {len(fids)}"
    return Picture(f"{ASSETS_DIR}/{file}", canvas.shape[1], canvas.shape[0], caption)


def pictures(out_dir: Path, assets: Path, q: dict, stem: str) -> Pictures:
    """The query's thumbnails written under ``assets`` as ``<stem>_key|strip|gt.jpg``, and
    for each one that could not be made, why (said in the row, never raised)."""
    pics = Pictures()
    media_path = q.get("media")
    if not media_path:
        pics.unavailable = "no media path in the results"
        return pics
    try:
        media = open_media(str(media_path))
    except MediaError as e:
        pics.unavailable = str(e)
        return pics
    seg = out_dir / str(q.get("seg_dir") or f"seg/{q.get('id')}")
    try:
        try:
            if _key_frame_id(q) is not None:
                pics.key = _keyframe(media, q, seg, assets, stem)
        except MediaError as e:
            pics.key_note = f"keyframe unavailable: {e}"
        except Exception as e:  # a bad row must not stop the report
            log.warning("report: keyframe of %s failed: %r", q.get("id"), e)
            pics.key_note = f"keyframe picture failed: {type(e).__name__}: {e}"
        try:
            fids, pics.worst = _strip_frames(media, q)
            pics.shown = [media.frame_name(f) for f in fids]
            caption = _frames_caption(media, pics.shown, pics.worst)
        except MediaError as e:
            pics.strip_note = f"frames unavailable: {e}"
            return pics
        try:
            pics.strip = _strip(media, fids, seg, assets, stem, caption)
        except MediaError as e:
            pics.strip_note = f"frames unavailable: {e}"
        except Exception as e:
            log.warning("report: frame strip of %s failed: %r", q.get("id"), e)
            pics.strip_note = f"frame strip failed: {type(e).__name__}: {e}"
        try:
            pics.gt = _gt_strip(media, fids, q, assets, stem, caption)
        except (LookupError, DatasetError) as e:  # missing or unreadable ground truth
            pics.gt_note = str(e)
        except MediaError as e:
            pics.gt_note = f"frames unavailable: {e}"
        except Exception as e:
            log.warning("report: ground truth of %s failed: %r", q.get("id"), e)
            pics.gt_note = f"ground truth picture failed: {type(e).__name__}: {e}"
    finally:
        if media.kind == "video":  # one decoder open at a time, however many videos
            media.close()
        pics.files = [p.src.rsplit("/", 1)[1] for p in (pics.key, pics.strip, pics.gt)
                      if p is not None]
    return pics
