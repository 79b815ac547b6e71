"""Opening videos, frame folders and images, and sampling the frames the model sees.

Frames are decoded only when asked for: a long video is never held in memory, and a
handle stays open between the first sampling pass and later keyframe requests of the same
run (handles are cached per path). Every failure is a ``MediaError`` whose message is one
line a user can act on.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".gif"}
MEDIA_ROOTS_ENV = "SEGRESEARCH_MEDIA_ROOTS"


class MediaError(ValueError):
    """Media that cannot be used; the message is a single line meant for the user."""


def allowed_roots() -> list[Path] | None:
    """Roots from ``SEGRESEARCH_MEDIA_ROOTS`` (``:``-separated), or None when unrestricted."""
    roots = resolved_roots(os.environ.get(MEDIA_ROOTS_ENV, ""))
    return list(roots) or None


@functools.lru_cache(maxsize=16)
def resolved_roots(raw: str) -> tuple[Path, ...]:
    """The roots a ``:``-separated setting names, resolved once per value (every run checks
    its paths against them; resolving means a system call per path component)."""
    return tuple(Path(p).expanduser().resolve() for p in raw.split(":") if p.strip())


def check_allowed(path: Path, roots: Sequence[Path] | None) -> None:
    if roots is None:
        return
    real = path.expanduser().resolve()
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise MediaError(
            f"media path {str(path)!r} is outside the allowed roots ({MEDIA_ROOTS_ENV})"
        )


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdecimal() else t.lower() for t in re.split(r"(\d+)", name)]


def frame_ids_for(paths: Sequence[Path]) -> list[int]:
    """Frame ids for frame files: their numeric stems when all are distinct integers
    (so ids match dataset annotations such as ``00045.jpg`` → 45), else positions."""
    stems = [p.stem for p in paths]
    if stems and all(s.isdecimal() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(len(paths)))


@dataclass
class Media:
    """A lazily decoded frame sequence with integer frame ids (ordered)."""

    source: str
    kind: str  # "folder" | "list" | "video" | "image"
    frame_ids: list[int]
    width: int
    height: int
    paths: list[Path] = field(default_factory=list)
    fps: float | None = None
    _cap: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __post_init__(self) -> None:
        self._pos = {f: i for i, f in enumerate(self.frame_ids)}

    def index_of(self, fid: int) -> int:
        try:
            return self._pos[fid]
        except KeyError:
            raise MediaError(f"frame id {fid} is not in {self.source}") from None

    def frame_name(self, fid: int) -> str:
        """File stem used when writing per-frame outputs (masks) for this frame."""
        if self.paths:
            return self.paths[self.index_of(fid)].stem
        return f"{fid:05d}"

    def frame_key(self, fid: int) -> tuple[str, int, int, int]:
        """Identifies the pixels of a frame across Media objects (file, its version, index),
        for caches of derived images."""
        pos = self.index_of(fid)
        path = self.paths[pos] if self.paths else Path(self.source)
        try:
            st = path.stat()
        except OSError as e:
            raise MediaError(f"cannot read {path}: {e.strerror}") from None
        return (str(path), st.st_mtime_ns, st.st_size, pos if self.kind == "video" else 0)

    def frame(self, fid: int) -> Image.Image:
        """Decode one frame at its original size as RGB."""
        pos = self.index_of(fid)
        if self.kind == "video":
            return self._video_frame(pos)
        return _open_image(self.paths[pos])

    def frames(self, fids: Sequence[int]) -> list[Image.Image]:
        return [self.frame(f) for f in fids]

    def _video_frame(self, pos: int) -> Image.Image:
        import cv2

        with self._lock:
            cap = self._cap
            if cap is None or not cap.isOpened():
                cap = cv2.VideoCapture(self.source)
                self._cap = cap
            cap.set(cv2.CAP_PROP_POS_FRAMES, pos)
            ok, bgr = cap.read()
            if not ok or bgr is None:
                # Some containers seek badly: fall back to decoding forward from the start.
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok = True
                for _ in range(pos):
                    if not cap.grab():
                        ok = False
                        break
                if ok:
                    ok, bgr = cap.read()
            if not ok or bgr is None:
                raise MediaError(f"cannot decode frame {pos} of video {self.source}")
        return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise MediaError(f"frame file disappeared: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise MediaError(f"cannot read image {path}: {e}") from None


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise MediaError(f"cannot read image {path}: {e}") from None


def _from_paths(source: str, kind: str, paths: list[Path]) -> Media:
    if not paths:
        raise MediaError(f"no image frames in {source}")
    w, h = _image_size(paths[0])
    ids = [0] if kind == "image" else frame_ids_for(paths)
    return Media(source=source, kind=kind, frame_ids=ids, width=w, height=h, paths=paths)


def _open_video(path: Path) -> Media:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise MediaError(f"cannot open video {path} (unsupported codec or corrupt file)")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise MediaError(f"video {path} has no decodable frames")
    if n <= 0:  # some streams carry no frame count: count by grabbing (no colour conversion)
        n = 1
        while cap.grab():
            n += 1
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or None
    h, w = first.shape[:2]
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return Media(source=str(path), kind="video", frame_ids=list(range(n)), width=w, height=h, fps=fps, _cap=cap)


def _open_uncached(media: str | Sequence[str], roots: Sequence[Path] | None) -> Media:
    if not isinstance(media, (str, os.PathLike)):
        paths = [Path(p) for p in media]
        if not paths:
            raise MediaError("empty list of frame paths")
        for p in paths:
            check_allowed(p, roots)
            if not p.is_file():
                raise MediaError(f"frame file not found: {p}")
        return _from_paths(f"list of {len(paths)} frames", "list", paths)
    path = Path(media).expanduser()
    check_allowed(path, roots)
    if not path.exists():
        raise MediaError(f"media not found: {path}")
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        files.sort(key=lambda p: _natural_key(p.name))
        for p in files:  # a frame may be a symlink out of the allowed roots
            check_allowed(p, roots)
        return _from_paths(str(path), "folder", files)
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return _from_paths(str(path), "image", [path])
    if ext in VIDEO_EXTS:
        return _open_video(path)
    raise MediaError(f"unsupported media type {ext or '(no extension)'}: {path}")


_CACHE: OrderedDict[tuple, Media] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def _cache_key(media: str | Sequence[str]) -> tuple | None:
    if not isinstance(media, (str, os.PathLike)):
        return None
    p = Path(media).expanduser()
    try:
        st = p.stat()
    except OSError:
        return None
    return (str(p.resolve()), st.st_mtime_ns, st.st_size)


def open_media(media: str | os.PathLike | Sequence[str], roots: Sequence[Path] | None = ...) -> Media:
    """Open media (folder of frames, video file, single image, or list of frame paths).

    ``roots`` restricts where paths may point; by default it comes from
    ``SEGRESEARCH_MEDIA_ROOTS`` (unset: unrestricted). Handles are cached by path and
    modification time, so the keyframe step of a run reuses the handle its first step opened.
    """
    if roots is ...:
        roots = allowed_roots()
    if isinstance(media, os.PathLike):
        media = os.fspath(media)
    if isinstance(media, str) and not media.strip():  # Path("") would be the current directory
        raise MediaError("empty media path")
    key = _cache_key(media)
    if key is not None:
        check_allowed(Path(media), roots)
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
                return hit
    m = _open_uncached(media, roots)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = m
            while len(_CACHE) > _CACHE_SIZE:
                _, old = _CACHE.popitem(last=False)
                old.close()
    return m


def sample_frame_ids(frame_ids: Sequence[int], n: int) -> list[int]:
    """``n`` frames at ``floor(linspace(0, len-1, n))`` positions (duplicates dropped)."""
    if not frame_ids:
        return []
    pos = np.floor(np.linspace(0, len(frame_ids) - 1, n)).astype(int)
    out: list[int] = []
    for p in pos:
        fid = frame_ids[int(p)]
        if not out or out[-1] != fid:
            out.append(fid)
    return out


def resize_square(img: Image.Image, side: int) -> Image.Image:
    """Resize to ``side``×``side`` (the published preprocessing squashes, not pads)."""
    if img.size == (side, side):
        return img
    return img.resize((side, side), Image.BICUBIC)


def as_uint8_rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
