"""Writing masks and overlays: one 0/255 PNG per input frame, named after the frame.

A mask set is written into a temporary sibling folder and renamed into place when every
frame has its file, so a folder that exists is complete (an evaluation that is killed and
restarted redoes only what has no folder) and a rerun never leaves an earlier run's masks
beside the new ones. Frames a segmenter did not reach get an empty mask, as do all frames
of a query without a usable answer: the published evaluation scores those as misses, and a
missing file would make it drop the query instead.

A run killed mid-write leaves its temporary folder (``.<id>.tmp-XXXXXXXX``), or the
replaced set on its way out (``.<id>.old-XXXXXXXX``), or a half-written overlay
(``.<id>.tmp-XXXXXXXX.mp4``); :func:`remove_partial_outputs` removes exactly those names
when the run is resumed, and nothing else.

Several objects (:func:`write_object_mask_sets`): one folder per object (``objects/1`` …
``objects/n``) and their union in the usual mask folder, which is what scores read; each
folder is written and renamed into place like a single set.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
from PIL import Image

from segresearch.core import cancel
from segresearch.core.files import created_mode
from segresearch.core.media import Media, as_uint8_rgb
from segresearch.tools.segmenters.base import Prompt
from segresearch.tools.visualize import (
    BOX_COLOUR,
    OBJECT_COLOURS,
    DrawnObject,
    annotate,
    annotate_objects,
)

log = logging.getLogger(__name__)

OVERLAY_VIDEO = "overlay.mp4"
# A single image (or a 1-frame video) gets a picture instead: a one-frame video is a clip
# that cannot be watched as one and that image viewers do not open.
OVERLAY_IMAGE = "overlay.jpg"

# The names of this module's partial outputs. Random parts: 8 characters of
# ``[a-z0-9_]`` (``tempfile``'s alphabet, which earlier versions used) or hex (``uuid``).
_PARTIAL_SET = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-[a-z0-9_]{8}")
_PARTIAL_OVERLAY = re.compile(r"\.(?P<name>.+)\.tmp-[0-9a-f]{8}\.(?:mp4|jpg)")


@dataclass
class MaskSet:
    """What was written for one query."""

    path: Path
    frames: int  # PNG files written (every frame of the media)
    reached: int  # frames the segmenter produced a mask for
    area: dict[int, int] = field(default_factory=dict)  # foreground pixels per frame id


def _partial_dir(dest: Path, kind: str) -> Path:
    """A new sibling folder ``.<name>.<kind>-XXXXXXXX`` (``kind``: tmp or old), created here
    for a temporary folder; the name :func:`remove_partial_outputs` recognises."""
    while True:
        path = dest.with_name(f".{dest.name}.{kind}-{uuid.uuid4().hex[:8]}")
        if kind != "tmp":
            return path
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path  # mkdir's mode: what the finished folder keeps (umask applied)


def remove_partial_outputs(folder: str | os.PathLike[str]) -> list[str]:
    """Remove what killed writers left directly in ``folder`` (a mask root or an overlays
    folder): temporary and outgoing mask sets and half-written overlays, recognised by the
    exact names the writers here give them. Returns the names removed. Only for a folder
    no other writer is using at the moment: a live writer's temporary folder looks the same."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and _PARTIAL_SET.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file() and _PARTIAL_OVERLAY.fullmatch(entry.name):
            entry.unlink(missing_ok=True)
        else:
            continue
        removed.append(entry.name)
    if removed:
        log.info("%s: removed %d partial output(s) of an interrupted run", folder, len(removed))
    return removed


def _imwrite(path: Path, mask: np.ndarray) -> None:
    if not cv2.imwrite(str(path), mask):
        raise OSError(f"cannot write {path}")


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place, replacing an older one without a moment where
    ``dest`` holds a mix of both."""
    if dest.exists():
        trash = _partial_dir(dest, "old")
        os.replace(dest, trash)
        os.replace(tmp, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def mask_names(media: Media) -> dict[int, str]:
    """Each frame's mask file name (``<frame name>.png``). ``open_media`` refuses frames
    whose names collide; a ``Media`` made another way is checked here too, since two frames
    writing one file would leave fewer masks than frames (one silently overwritten), on a
    case-insensitive file system as well."""
    names: dict[int, str] = {}
    seen: dict[str, int] = {}
    for fid in media.frame_ids:
        name = media.frame_name(fid) + ".png"
        other = seen.setdefault(name.casefold(), fid)
        if other != fid:
            raise ValueError(f"frames {other} and {fid} of {media.source} would both write "
                             f"the mask {name}; give frames distinct file names")
        names[fid] = name
    return names


class _SetWriter:
    """One mask set on its way into ``dest``: PNGs written to a temporary sibling folder by
    ``pool`` as masks arrive, completed with empty masks, then renamed into place."""

    def __init__(self, dest: Path, media: Media, names: dict[int, str], pool: ThreadPoolExecutor) -> None:
        self.dest, self.media, self.names, self.pool = dest, media, names, pool
        self.tmp = _partial_dir(dest, "tmp")
        self.area: dict[int, int] = {}
        self.pending: dict[int, Future] = {}
        self.reached = 0
        self.reached_ids: set[int] = set()  # frames the segmenter gave a mask for

    def add(self, fid: int, mask: np.ndarray) -> None:
        h, w = self.media.height, self.media.width
        if fid not in self.names:
            raise ValueError(f"segmenter returned frame id {fid}, not a frame of {self.media.source}")
        m = np.asarray(mask, dtype=bool)
        if m.shape != (h, w):
            m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        self.area[fid] = int(np.count_nonzero(m))
        prev = self.pending.pop(fid, None)
        if prev is not None:  # the same file again: let the earlier write finish first
            prev.result()
        self.pending[fid] = self.pool.submit(_imwrite, self.tmp / self.names[fid], m.astype(np.uint8) * 255)
        done = [f for f, fut in self.pending.items() if fut.done()]
        for f in done:
            self.pending.pop(f).result()

    def complete(self) -> None:
        """Empty masks for the frames never reached; every file written when it returns."""
        self.reached_ids = set(self.area)
        self.reached = len(self.area)
        if self.reached < len(self.names):
            zero = np.zeros((self.media.height, self.media.width), np.uint8)
            for fid, name in self.names.items():
                if fid not in self.area:
                    self.pending[fid] = self.pool.submit(_imwrite, self.tmp / name, zero)
                    self.area[fid] = 0
        for fut in self.pending.values():
            fut.result()
        self.pending.clear()

    def commit(self) -> MaskSet:
        replace_dir(self.tmp, self.dest)
        return MaskSet(path=self.dest, frames=len(self.names), reached=self.reached, area=self.area)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_mask_set(
    dest: Path,
    media: Media,
    masks: Iterable[tuple[int, np.ndarray]],
    *,
    on_frame: Callable[[int], None] | None = None,
    workers: int = 2,
) -> MaskSet:
    """Consume ``masks`` (``(frame id, bool mask)``, a frame may repeat: the last wins) and
    write ``dest/<frame name>.png`` for every frame of ``media``.

    PNG encoding runs in a small thread pool (OpenCV releases the GIL), so it overlaps the
    segmenter producing the next mask; nothing but the masks in flight is held in memory."""
    dest = Path(dest)
    names = mask_names(media)
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer: _SetWriter | None = None
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="mask-png") as pool:
            writer = _SetWriter(dest, media, names, pool)
            for fid, mask in masks:
                cancel.check()  # Ctrl-C between frames (a frame is the segmenter's step)
                writer.add(fid, mask)
                if on_frame is not None:
                    on_frame(fid)
            writer.complete()
        return writer.commit()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise


def write_object_mask_sets(
    masks_dir: Path,
    objects_dir: Path,
    media: Media,
    stream: Iterable[tuple[int, int, np.ndarray]],
    n_objects: int,
    *,
    on_frame: Callable[[int], None] | None = None,
    workers: int = 2,
) -> tuple[MaskSet, list[MaskSet]]:
    """Consume ``stream`` (``(object index, frame id, bool mask)``, as
    ``VideoSession.track`` yields it; per object the last mask of a frame wins) and write
    the masks of ``n_objects`` objects.

    One object: ``masks_dir`` only, exactly as :func:`write_mask_set` writes it, and no
    object sets. Two or more: ``objects_dir/1`` … ``objects_dir/n`` (an object the stream
    never names gets empty masks) and their union in ``masks_dir``; returns (the union, the
    object sets). Each folder is complete or absent: all are written to temporary folders,
    the union read back from the objects' files one frame at a time (memory does not grow
    with the video), and only then renamed into place; a failure leaves none of them.
    Numbered folders in ``objects_dir`` beyond ``n`` (an earlier answer's) are removed.
    ``on_frame(fid)`` hears of every mask of the stream."""
    masks_dir, objects_dir = Path(masks_dir), Path(objects_dir)
    if n_objects < 1:
        raise ValueError(f"n_objects must be at least 1, got {n_objects}")
    if n_objects == 1:
        def only() -> Iterable[tuple[int, np.ndarray]]:
            for k, fid, mask in stream:
                if k != 0:
                    raise ValueError(f"object index {k} in a stream of 1 object")
                yield fid, mask

        union = write_mask_set(masks_dir, media, only(), on_frame=on_frame, workers=workers)
        _remove_stale_objects(objects_dir, 0)
        return union, []
    names = mask_names(media)
    made_root = not objects_dir.exists()
    objects_dir.mkdir(parents=True, exist_ok=True)
    writers: list[_SetWriter] = []
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="mask-png") as pool:
            for k in range(n_objects):
                writers.append(_SetWriter(objects_dir / str(k + 1), media, names, pool))
            for k, fid, mask in stream:
                cancel.check()
                if not 0 <= k < n_objects:
                    raise ValueError(f"object index {k} in a stream of {n_objects} objects")
                writers[k].add(fid, mask)
                if on_frame is not None:
                    on_frame(fid)
            for w in writers:
                w.complete()

        def union_masks() -> Iterable[tuple[int, np.ndarray]]:
            for fid, name in names.items():
                if not any(fid in w.reached_ids for w in writers):
                    continue  # no object reached it: left to write_mask_set's empty masks
                m = np.zeros((media.height, media.width), bool)
                for w in writers:
                    if w.area.get(fid):
                        got = read_mask(w.tmp / name)
                        if got is None:
                            raise OSError(f"cannot read {w.tmp / name}")
                        m |= got
                yield fid, m

        union = write_mask_set(masks_dir, media, union_masks(), workers=workers)
    except BaseException:
        for w in writers:
            w.discard()
        if made_root:
            shutil.rmtree(objects_dir, ignore_errors=True)
        raise
    sets = [w.commit() for w in writers]
    _remove_stale_objects(objects_dir, n_objects)
    return union, sets


def _remove_stale_objects(objects_dir: Path, n_objects: int) -> None:
    if not objects_dir.is_dir():
        return
    for entry in objects_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink() and entry.name.isdigit() and int(entry.name) > n_objects:
            shutil.rmtree(entry, ignore_errors=True)


def write_empty_mask_set(dest: Path, media: Media) -> MaskSet:
    """All-zero masks for every frame: the published flow's result for an unusable answer."""
    return write_mask_set(dest, media, ())


def read_mask(path: Path) -> np.ndarray | None:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return None if m is None else m > 127


def _even(rgb: np.ndarray) -> np.ndarray:
    """H.264 with 4:2:0 chroma needs even sides: pad a pixel rather than rescale."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class _VideoOut:
    """H.264 (browser-playable mp4) through imageio-ffmpeg's bundled ffmpeg; OpenCV's mp4v
    when that is unavailable (players and browsers may refuse it, so it is logged)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        self.path = path
        w, h = size
        self._gen = None
        self._cv = None
        try:
            self._gen = imageio_ffmpeg.write_frames(
                str(path), (w + w % 2, h + h % 2), fps=fps, codec="libx264", quality=7,
                macro_block_size=1, ffmpeg_log_level="error",
                output_params=["-movflags", "+faststart"],
            )
            self._gen.send(None)
        except Exception as e:  # noqa: BLE001 - missing binary, codec or broken pipe
            log.warning("H.264 writer unavailable (%s); writing mp4v with OpenCV", e)
            self._gen = None
            self._cv = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not self._cv.isOpened():
                raise OSError(f"cannot write {path}") from None

    def write(self, rgb: np.ndarray) -> None:
        if self._gen is not None:
            self._gen.send(np.ascontiguousarray(_even(rgb)))
        else:
            self._cv.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
        elif self._cv is not None:
            self._cv.release()


@dataclass(frozen=True)
class OverlayObject:
    """One object of an overlay: its mask folder, its prompts (the answer's first, drawn on
    its frame with the object's name beside the box; then corrections, drawn on theirs) and
    its name."""

    masks_dir: Path
    prompts: tuple[Prompt, ...] = ()
    label: str | None = None


def _objects_frame(rgb: np.ndarray, media: Media, fid: int, objects: Sequence[OverlayObject],
                   label: str) -> np.ndarray:
    """A frame with each object in its colour (``OBJECT_COLOURS``; one object keeps the
    usual green box), its prompts on their frames and its name beside its box."""
    name = f"{media.frame_name(fid)}.png"
    several = len(objects) > 1
    drawn = []
    on_key = False
    for k, obj in enumerate(objects):
        colour = OBJECT_COLOURS[k % len(OBJECT_COLOURS)]
        mask = read_mask(obj.masks_dir / name)
        here = [(i, p) for i, p in enumerate(obj.prompts) if p.frame == fid]
        if not here:
            drawn.append(DrawnObject(mask=mask, colour=colour))
            continue
        on_key = on_key or any(i == 0 for i, _ in here)
        for n, (i, p) in enumerate(here):
            drawn.append(DrawnObject(
                mask=mask if n == 0 else None, box=p.box, point=p.point,
                points=[(x, y, lab) for x, y, lab in p.points],
                name=obj.label if i == 0 else None, colour=colour,
                box_colour=colour if several else BOX_COLOUR))
    text = f"frame {fid}" + (" (keyframe)" if on_key else "") + (f"  {label}" if label else "")
    return annotate_objects(rgb, drawn, text)


def _overlay_frame(media: Media, masks_dir: Path, fid: int, prompt: Prompt | None,
                   label: str, objects: Sequence[OverlayObject] | None = None) -> np.ndarray:
    """One frame of an overlay: its mask tinted and outlined, the prompt's box and point
    when it is the keyframe, and a label saying which frame it is. With ``objects``, each
    object's mask and prompts instead (``masks_dir`` and ``prompt`` unused)."""
    rgb = as_uint8_rgb(media.frame(fid))
    if rgb.shape[:2] != (media.height, media.width):
        rgb = cv2.resize(rgb, (media.width, media.height))
    if objects:
        return _objects_frame(rgb, media, fid, objects, label)
    mask = read_mask(masks_dir / f"{media.frame_name(fid)}.png")
    on_key = prompt is not None and fid == prompt.frame
    text = f"frame {fid}" + (" (keyframe)" if on_key else "") + (f"  {label}" if label else "")
    return annotate(rgb, mask, prompt.box if on_key and prompt is not None else None,
                    prompt.point if on_key and prompt is not None else None, text)


def write_overlay_image(
    media: Media,
    masks_dir: Path,
    path: Path,
    prompt: Prompt | None = None,
    label: str = "",
    *,
    objects: Sequence[OverlayObject] | None = None,
) -> Path:
    """The overlay of a one-frame media as a JPEG picture (the counterpart of
    :func:`write_overlay_video`), written under a temporary name and renamed into place.
    ``objects``: several objects, each in its colour (see :func:`write_overlay_video`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = _overlay_frame(media, masks_dir, media.frame_ids[0], prompt, label, objects)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        Image.fromarray(picture).save(tmp, format="JPEG", quality=92)
        os.chmod(tmp, created_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_overlay_video(
    media: Media,
    masks_dir: Path,
    path: Path,
    prompt: Prompt | None = None,
    fps: float | None = None,
    label: str = "",
    *,
    objects: Sequence[OverlayObject] | None = None,
) -> Path:
    """Every frame with its mask tinted and outlined, the prompt's box and point drawn on
    the keyframe; frames and masks are read one at a time, so any length fits in memory.
    ``objects``: instead of ``masks_dir`` and ``prompt``, each object's masks tinted in its
    own colour (the first in the usual one), its prompts on their frames and its name beside
    its box."""
    fps = float(fps or media.fps or 12.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    out = _VideoOut(tmp, (media.width, media.height), fps)
    try:
        for fid in media.frame_ids:
            cancel.check()
            out.write(_overlay_frame(media, masks_dir, fid, prompt, label, objects))
        out.close()
        os.replace(tmp, path)
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
    return path
