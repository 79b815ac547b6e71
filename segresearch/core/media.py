"""Opening videos, frame folders and images, and sampling the frames the model sees.

Frames are decoded only when asked for: a long video is never held in memory, and a
handle stays open between the first sampling pass and later keyframe requests of the same
run (handles are cached per path). Every failure is a ``MediaError`` whose message is one
line a user can act on.

Memory is bounded whatever the input. Frames come back no larger than a working size
(``SEGRESEARCH_MAX_PIXELS``, 16 MP by default): a larger JPEG is decoded reduced by its own
decoder (1/2, 1/4 or 1/8 scale) and then resized exactly; formats that can only be decoded
whole are refused past a hard limit, read from the header before anything is decoded.
``width``/``height`` are the working size, so answers in pixels and masks are in it too;
``source_size`` keeps the file's own size.

A video's frames are the frames that decode, not the count its header claims: a file cut
short still opens, with fewer frames and a ``note`` saying so, and a frame request returns
that frame or fails; it is never answered with another frame's pixels.

Pixels are what the file means (``to_rgb``): 16-bit, 32-bit and float images are scaled to
8 bits rather than clipped, transparency is laid on white (as the published models' inputs
were prepared), and an image's EXIF orientation is applied (OpenCV applies a video's
rotation). Only regular files are opened: a named pipe or a device is refused from its
``stat``. A folder or list of frames is checked when opened, header by header: every frame
must be readable and of one size (SAM 2 tracks an object at one frame size), and no two may
share a file stem, since masks are named after it.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from segresearch.core.envvars import EnvError, env_float, env_str
from segresearch.core.shared_cache import LoadOnce

# FFmpeg inside OpenCV writes its decoder complaints ("Invalid NAL unit size", "partial
# file") straight to the terminal, once per attempt, over the run's own output. What they
# mean for a run is summarised in ``Media.note`` instead. OpenCV reads this setting when it
# first uses FFmpeg, which in this project happens here, after this import; a value the
# user set (to debug a file) is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".gif"}
MEDIA_ROOTS_ENV = "SEGRESEARCH_MEDIA_ROOTS"
# Where the server stores uploads (set by ``segresearch serve graph``); readable as media.
UPLOAD_ROOT_ENV = "SEGRESEARCH_UPLOAD_ROOT"
MAX_PIXELS_ENV = "SEGRESEARCH_MAX_PIXELS"
# The working size: four times a 4K UHD frame's area is well beyond what any step needs (the
# model sees 448 and 864 px squares, SAM 2 1024 px), and one 16 MP RGB frame is 48 MB.
DEFAULT_MAX_PIXELS = 16_000_000
# Formats decoded whole before reduction (PNG, WebP, TIFF, BMP, every video codec): at most
# 4 bytes a pixel decoded plus the RGB copy, about 0.8 GB at this limit. Progressive JPEG
# too: libjpeg keeps every coefficient of the image while it decodes, whatever the scale
# (measured at 144 MP: 566 MB peak with 4:2:0 chroma, 978 MB with 4:4:4).
FULL_DECODE_LIMIT = 100_000_000
# Baseline JPEG decodes at 1/2, 1/4 or 1/8 scale directly, so memory stays within about 4×
# the working size whatever the image (the reported 144 MP file: 154 MB peak at 1/2 scale,
# 0.3 s, where a full decode peaked at 1.1 GB); what grows past it is the time to read the
# file. The JPEG format itself stops at 65535×65535 (4.3 GP).
JPEG_DECODE_LIMIT = 1_000_000_000
_MIN_MAX_PIXELS = 4096


class MediaError(ValueError):
    """Media that cannot be used; the message is a single line meant for the user."""


def allowed_roots() -> list[Path] | None:
    """Roots from ``SEGRESEARCH_MEDIA_ROOTS`` (``:``-separated), or None when unrestricted.

    The server's upload folder (``SEGRESEARCH_UPLOAD_ROOT``) is readable like a root when
    the policy is on: a file uploaded through the web page is media like any other. It adds
    nothing when the policy is off (everything is readable then)."""
    roots = resolved_roots(env_str(MEDIA_ROOTS_ENV))
    if not roots:
        return None
    upload = env_str(UPLOAD_ROOT_ENV)
    return [*roots, *resolved_roots(upload)] if upload else list(roots)


def resolved_roots(raw: str) -> tuple[Path, ...]:
    """The roots a ``:``-separated setting names, resolved once per value (every run checks
    its paths against them; resolving means a system call per path component)."""
    return _ROOTS.get(raw, lambda: tuple(Path(p).expanduser().resolve()
                                         for p in raw.split(":") if p.strip()))


_ROOTS: LoadOnce[tuple[Path, ...]] = LoadOnce(maxsize=16, name="media.roots")


# Shell-style expansion a path must not rely on where clients name paths: a leading ``~`` or
# ``~user`` in any component, ``$VAR`` / ``${VAR}``, and Windows' ``%VAR%``. Nothing here
# expands them, but some later step might (``expanduser`` in a tool), and then the path that
# was checked would not be the path that is used.
_HOME_COMPONENT = re.compile(r"(?:^|[/\\])~")
_ENV_VARIABLE = re.compile(r"\$[{\w]|%[^%\s/\\]+%")


class PathNotAllowed(MediaError):
    """A path refused where roots apply. ``reason`` never says whether the file exists;
    ``outside`` tells a refusal for the place apart from one for the spelling."""

    def __init__(self, reason: str, *, outside: bool = False) -> None:
        self.reason = reason
        self.outside = outside
        super().__init__(reason)


def path_syntax_problem(text: str) -> str | None:
    """Why ``text`` cannot name a file a client chose (None: it can): the spelling would
    mean something else to a shell or to ``expanduser`` than to ``open``."""
    if "\x00" in text:
        return "the path contains a NUL byte"
    if _HOME_COMPONENT.search(text):
        return "'~' (a home folder) is not expanded here; give the full path"
    if _ENV_VARIABLE.search(text):
        return "environment variables ($VAR, ${VAR}, %VAR%) are not expanded here; give the full path"
    return None


def confine_path(
    value: str | os.PathLike[str], roots: Sequence[Path] | None, *, base: Path | None = None
) -> Path:
    """The path that will be opened or written for ``value``: the single resolution that
    both the check and the use go through, so the two can never disagree.

    Without ``roots`` (local use) the value is taken as given with ``~`` expanded, as it
    always was; only a NUL byte is refused, since ``os`` calls would fail on it later with
    an error that names nothing. With ``roots`` the spelling is checked first (no ``~``,
    variables or NUL), a relative value is taken from ``base`` (default: the working
    folder), every link and ``..`` is followed, and the result must lie in a root."""
    text = os.fspath(value)
    if not isinstance(text, str):
        raise PathNotAllowed("a path must be text")
    if roots is None:
        if "\x00" in text:
            raise PathNotAllowed("the path contains a NUL byte")
        try:
            return Path(text).expanduser()
        except RuntimeError:  # ``~name`` of no such user: the path is taken literally
            return Path(text)
    problem = path_syntax_problem(text)
    if problem:
        raise PathNotAllowed(problem)
    path = Path(text)
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop: refused like any outside path
        raise PathNotAllowed("the path is outside the allowed roots", outside=True) from None
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise PathNotAllowed("the path is outside the allowed roots", outside=True)
    return real


def check_allowed(path: str | os.PathLike[str], roots: Sequence[Path] | None) -> Path:
    """``path`` as media is read from it (see ``confine_path``), or a one-line MediaError."""
    try:
        return confine_path(path, roots)
    except PathNotAllowed as e:
        shown = f"media path {os.fspath(path)!r}"
        if e.outside:
            raise MediaError(f"{shown} is outside the allowed roots ({MEDIA_ROOTS_ENV})") from None
        raise MediaError(f"{shown}: {e.reason}") from None


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


def working_max_pixels() -> int:
    """The working size from ``SEGRESEARCH_MAX_PIXELS`` (a pixel count; ``16e6`` and
    ``16_000_000`` both read), or the default when unset."""
    try:  # a MediaError, so every caller that reports media problems reports this one
        return int(env_float(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, minimum=_MIN_MAX_PIXELS))
    except EnvError as e:
        raise MediaError(str(e)) from None


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size of the same shape with at most ``max_pixels`` pixels (the size itself
    when it fits, so frames under the cap are never resampled)."""
    if width * height <= max_pixels:
        return width, height
    s = math.sqrt(max_pixels / (width * height))
    # the epsilon keeps an exact fit (12000² at 16 MP: 4000²) from flooring to 3999
    w, h = max(1, int(width * s + 1e-6)), max(1, int(height * s + 1e-6))
    while w * h > max_pixels:
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


def _mp(pixels: float) -> str:
    return f"{pixels / 1e6:.1f}".removesuffix(".0") + " MP"


def _reduced_note(src: tuple[int, int], size: tuple[int, int], max_pixels: int) -> str | None:
    if src == size:
        return None
    return (f"frames decoded at {size[0]}×{size[1]}, reduced from {src[0]}×{src[1]} "
            f"({_mp(src[0] * src[1])}; working limit {_mp(max_pixels)}, {MAX_PIXELS_ENV})")


@dataclass
class Media:
    """A lazily decoded frame sequence with integer frame ids (ordered).

    ``width``/``height``: the working size frames are decoded at (every frame of a folder or
    list has the same size, checked when it is opened). ``source_size``: the frames' size in
    the file, EXIF orientation applied. ``note``: one line on anything a
    user should know about how the media was read (reduced frames, a video whose header
    promises more frames than decode), or None."""

    source: str
    kind: str  # "folder" | "list" | "video" | "image"
    frame_ids: list[int]
    width: int
    height: int
    paths: list[Path] = field(default_factory=list)
    fps: float | None = None
    source_size: tuple[int, int] | None = None
    note: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    _cap: Any = field(default=None, repr=False)  # a cv2.VideoCapture
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Presentation time (ms) of each video frame, against which every decoded frame is checked;
    # None: the stream has no usable timestamps and frames are only decoded in order.
    _msec: array | None = field(default=None, repr=False)
    _seekable: bool = field(default=True, repr=False)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __post_init__(self) -> None:
        self._pos = {f: i for i, f in enumerate(self.frame_ids)}
        if self.source_size is None:
            self.source_size = (self.width, self.height)
        # index of the frame the open video handle decodes next; None when not known
        self._next: int | None = None

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
        """Decode one frame as RGB, at most ``max_pixels`` in size (its file size when under)."""
        pos = self.index_of(fid)
        if self.kind == "video":
            return self._video_frame(pos)
        img = _open_image(self.paths[pos], self.max_pixels)
        if img.size != (self.width, self.height):
            # every frame had this size when the media was opened: the file was replaced
            raise MediaError(f"frame {self.paths[pos]} is now {img.size[0]}×{img.size[1]}, not "
                             f"{self.width}×{self.height} like the others (was it changed "
                             "during the run?)")
        return img

    def frames(self, fids: Sequence[int]) -> list[Image.Image]:
        return [self.frame(f) for f in fids]

    def _video_frame(self, pos: int) -> Image.Image:
        import cv2  # heavy: cv2 takes ~0.25 s to import; only videos and resizes need it

        with self._lock:
            bgr = self._decode_at(pos)
        h, w = bgr.shape[:2]
        size = fit_size(w, h, self.max_pixels)
        if size != (w, h):
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def _decode_at(self, pos: int) -> np.ndarray:
        """Frame ``pos`` (BGR), proven to be that frame. A short step forward decodes on; a
        jump seeks when the stream allows it; whatever a seek returns is checked against the
        frame's timestamp, and a frame that fails the check is decoded from the start instead
        (slow, but only files that seek wrongly pay for it)."""
        import cv2  # heavy: cv2 takes ~0.25 s to import; only videos and resizes need it

        if self._cap is None or not self._cap.isOpened():
            self._reopen()
        cap = self._cap
        ahead = None if self._next is None else pos - self._next
        sought = False
        if ahead is None or ahead < 0 or (ahead > _DECODE_ON and self._seekable):
            if self._seekable:
                cap.set(cv2.CAP_PROP_POS_FRAMES, pos)
                sought = True
            else:
                cap = self._reopen()
        bgr = self._grab_to(cap, 0 if sought else pos - (self._next or 0))
        if bgr is None or not self._is_frame(cap, pos):
            bgr = None
            if sought:  # the seek could not be trusted: decode from the start
                cap = self._reopen()
                bgr = self._grab_to(cap, pos)
                if bgr is not None and not self._is_frame(cap, pos):
                    bgr = None
        if bgr is None:
            self._next = None
            raise MediaError(f"cannot decode frame {pos} of video {self.source} "
                             "(the file is damaged or was changed since it was opened)")
        self._next = pos + 1
        return bgr

    def _reopen(self) -> Any:
        import cv2  # heavy: cv2 takes ~0.25 s to import; only videos and resizes need it

        if self._cap is not None:
            self._cap.release()
        self._cap = cv2.VideoCapture(self.source)
        self._next = 0
        return self._cap

    @staticmethod
    def _grab_to(cap: Any, skip: int) -> np.ndarray | None:
        """Skip ``skip`` frames without converting them, then decode one."""
        for _ in range(skip):
            if not cap.grab():
                return None
        ok, bgr = cap.read()
        return bgr if ok and bgr is not None else None

    def _is_frame(self, cap: Any, pos: int) -> bool:
        import cv2  # heavy: cv2 takes ~0.25 s to import; only videos and resizes need it

        if self._msec is None:
            return True  # only decoded in order from the start: the order is the proof
        return math.isclose(cap.get(cv2.CAP_PROP_POS_MSEC), self._msec[pos], abs_tol=1e-3)

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
            self._next = None


# A jump forward of at most this many frames decodes on rather than seeking (a seek decodes
# from the previous keyframe, which in H.264 can be hundreds of frames back).
_DECODE_ON = 16


def file_kind_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a media file (None: it is a regular file), from a
    ``stat`` alone. A named pipe, a device or a socket is refused before anything opens it:
    opening a FIFO for reading blocks until a writer appears (uninterruptibly, in C, so
    Ctrl-C cannot end it), and a device can be endless or change state when opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is a broken link" if os.path.islink(path) else "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"is {what}, not a regular file"
    return "is not a regular file"


def _open_regular(path: Path) -> Any:
    """``path`` opened for reading, proven a regular file by the open handle itself (a file
    swapped for a FIFO after a check would otherwise block here); ``O_NONBLOCK`` keeps even
    that open from waiting, and means nothing for a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MediaError(f"cannot read image {path}: it is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _pil_open(path: Path) -> Image.Image:
    """``Image.open`` without Pillow's decompression-bomb check, which warns about or refuses
    images by area alone: a JPEG far past its limit decodes reduced in little memory, and
    every format gets this module's own limit instead, with a message that says why. Tries
    Pillow's format plugins in its own order, as ``Image.open`` does; an empty file, or one
    no plugin takes (a plugin's own test may fail on a short header), is an
    ``UnidentifiedImageError`` whose message says which."""
    with _open_regular(path) as f:
        prefix = f.read(16)
    if not prefix:
        raise UnidentifiedImageError("the file is empty (0 bytes)")
    for init in (Image.preinit, Image.init):
        init()
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            try:
                ok = not accept or accept(prefix)
                if isinstance(ok, str) or not ok:
                    continue
                return factory(os.fspath(path))
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError("not an image file any installed decoder can read")


def _decode_limit(im: Image.Image, max_pixels: int) -> tuple[int, str]:
    """How many pixels ``im`` may have, and the name of the kind it is limited as."""
    fmt = im.format or "this"
    if fmt == "JPEG" and not im.info.get("progressive"):
        return max(JPEG_DECODE_LIMIT, max_pixels), "baseline JPEG"
    # a progressive JPEG keeps every coefficient of the whole image while it decodes
    kind = "progressive JPEG" if fmt == "JPEG" else fmt
    return max(FULL_DECODE_LIMIT, max_pixels), kind


def _check_decodable(path: Path, im: Image.Image, max_pixels: int) -> None:
    w, h = im.size
    limit, kind = _decode_limit(im, max_pixels)
    if w * h > limit:
        hint = ("they decode at full size before being reduced; save it as a baseline JPEG "
                "or downscale it" if kind != "baseline JPEG" else "downscale it")
        raise MediaError(f"image {path} is {w}×{h} ({_mp(w * h)}); the limit is {_mp(limit)} "
                         f"for {kind} images ({hint})")


# EXIF orientation (tag 274): how the stored raster must be turned to stand as the camera
# held it. 1 (and any value outside 1-8) needs nothing.
_ORIENTATION_TAG = 274
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> int:
    """The image's EXIF orientation (1-8; 1 when absent or unreadable), from the header
    alone. Pillow's ``getexif`` would decode a whole PNG to look for a late eXIf chunk and
    costs four times the header read of a JPEG; a frame folder is scanned frame by frame,
    so only the metadata read with the header counts (the same at scan and at decode)."""
    try:
        if im.format == "TIFF":
            value = im.tag_v2.get(_ORIENTATION_TAG)  # type: ignore[attr-defined]
        else:
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - malformed metadata: the raster as stored
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _oriented(size: tuple[int, int], turn: int) -> tuple[int, int]:
    """``size`` after orientation ``turn`` (5-8 swap the sides)."""
    return (size[1], size[0]) if turn >= 5 else size


def _white_under(im: Image.Image) -> Image.Image:
    """An image with transparency laid on white, as ``qwen_vl_utils.fetch_image`` prepares
    the published models' RGBA inputs (and as a page shows it); dropping the alpha instead
    would show whatever colour the transparent pixels happen to hold."""
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _deep_grey(im: Image.Image) -> Image.Image:
    """8-bit grey from a 16-bit, 32-bit integer or float channel, scaled by what the values
    mean; Pillow's own conversion clips at 255 instead, so a 16-bit scan shows white.

    - 16-bit (``I;16*``, or ``I`` from a file declaring at most 16 bits, or ``I`` whose
      values fit 0-65535): the high byte, as Pillow and OpenCV reduce 16-bit colour.
    - Float in 0-1: × 255 (the usual normalised convention).
    - Anything else (signed data, 32-bit counts, floats outside 0-1): stretched from its
      smallest to its largest finite value, as an image viewer's auto-contrast shows it.
    Non-finite floats become 0. A transparent grey value (PNG ``tRNS``) is laid on white.
    Memory: the decoded raster, one float32 copy at most and the 8-bit result (under 1 GB
    at the full-decode limit)."""
    a = np.asarray(im)
    if im.mode == "F":
        finite = np.isfinite(a)
        every = bool(finite.all())
        lo = float(np.min(a, where=finite, initial=np.inf)) if finite.any() else 0.0
        hi = float(np.max(a, where=finite, initial=-np.inf)) if finite.any() else 0.0
        grey = _scaled(a, 0.0, 255.0) if lo >= 0.0 and hi <= 1.0 else _stretched(a, lo, hi)
        if not every:
            grey[~finite] = 0
    else:
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        bits = _declared_bits(im)
        if bits is None and lo >= 0 and hi <= 0xFFFF:
            bits = 16
        if bits is not None and lo >= 0:
            shifted = a >> (bits - 8)
            np.minimum(shifted, 255, out=shifted)
            grey = shifted.astype(np.uint8)
        else:
            grey = _stretched(a, lo, hi)
    out = Image.fromarray(grey, "L")
    transparent = im.info.get("transparency")
    if isinstance(transparent, int) and not isinstance(transparent, bool):
        alpha = Image.fromarray(np.where(a == transparent, 0, 255).astype(np.uint8), "L")
        return _white_under(Image.merge("LA", (out, alpha)))
    return out.convert("RGB")


def _scaled(a: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """``(a - lo) × scale`` rounded into 0-255, through one float32 copy."""
    f = a.astype(np.float32)
    f -= np.float32(lo)
    f *= np.float32(scale)
    np.nan_to_num(f, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(f, 0.0, 255.0, out=f)
    np.rint(f, out=f)
    return f.astype(np.uint8)


def _stretched(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``a`` from its smallest to its largest value onto 0-255 (all 0 when it is flat)."""
    if not hi > lo:
        return np.zeros(a.shape, np.uint8)
    return _scaled(a, lo, 255.0 / (hi - lo))


def _declared_bits(im: Image.Image) -> int | None:
    """Bits per sample the file declares for an ``I``/``I;16`` image (8 < bits ≤ 16), or
    None when it declares none or more (then the values say how to scale)."""
    if im.mode.startswith("I;16"):
        return 16
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return bits if isinstance(bits, int) and 8 < bits <= 16 else None


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB showing what the file means: high-depth grey (16-bit, 32-bit,
    float) scaled rather than clipped (``_deep_grey``), transparency (RGBA, LA, PA, a
    palette's or a grey/colour ``tRNS``) laid on white, and every other mode (CMYK, YCbCr,
    LAB, 1-bit, palettes) through Pillow's conversion. 16-bit RGB(A) files already open as
    8-bit RGB(A) from their high bytes. An RGB image is returned as it is."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _deep_grey(im)
    if mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info:
        return _white_under(im)
    return im.convert("RGB")


def _open_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image as RGB at its working size (``fit_size``), stood up by its EXIF orientation
    and converted by ``to_rgb``. Under the cap these are exactly Pillow's pixels for an
    8-bit RGB or grey file, as they always were; over it, a JPEG is decoded by libjpeg at a
    reduced scale so that the full-size raster never exists, and the rest is an exact
    resize. Orientation is applied last, to the smallest raster."""
    try:
        with _pil_open(path) as im:
            turn = _orientation(im)
            if im.width * im.height <= max_pixels:
                im.load()
                rgb = to_rgb(im)
                if rgb is im:  # a raster of its own, not one Pillow may have mapped from the file
                    rgb = im.copy()
            else:
                _check_decodable(path, im, max_pixels)
                size = _oriented(fit_size(*_oriented(im.size, turn), max_pixels), turn)
                if im.format == "JPEG":
                    # the decoder's own scaling: the smallest of 1/1..1/8 still at least `size`
                    im.draft("RGB", size)
                im.load()
                rgb = to_rgb(im).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            return rgb.transpose(_TRANSPOSE[turn]) if turn != 1 else rgb
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(f"frame file disappeared: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as e:
        # ValueError: Pillow's answer to some malformed headers (a tile outside the image)
        raise MediaError(f"cannot read image {path}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    """The first line of an error, or its kind when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, verify: bool = True) -> tuple[int, int]:
    """The image's size as it stands (EXIF orientation applied), from its header (nothing
    is decoded), after checking that it can be decoded within the limits. ``verify``:
    also run the format's own integrity check (it reads the whole of a PNG). Callers have
    checked the file's kind; ``_pil_open`` checks it again on the open handle."""
    try:
        with _pil_open(path) as im:
            if im.width * im.height > max_pixels:
                _check_decodable(path, im, max_pixels)
            size = _oriented(im.size, _orientation(im))
            if verify:
                im.verify()
            return size
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as e:
        raise MediaError(f"cannot read image {path}: {_reason(e)}") from None


def _shown(path: Path, kind: str) -> str:
    """A frame's name as messages give it: its file name within a folder, else its path."""
    return path.name if kind == "folder" else str(path)


def _check_names(source: str, kind: str, paths: Sequence[Path]) -> None:
    """Refuse frames that would write one mask file: masks are named after the frame's file
    stem (``00045.jpg`` → ``00045.png``, as the datasets' annotations are), so ``a.jpg``
    and ``a.png`` (or ``A.jpg`` and ``a.jpg``: the same file where names ignore case) would
    overwrite each other's mask, and a frame listed twice is two frames with one mask."""
    seen: dict[str, Path] = {}
    for p in paths:
        key = p.stem.casefold()
        other = seen.get(key)
        if other is None:
            seen[key] = p
            continue
        if other == p:
            raise MediaError(f"frame {p} is listed twice in the media; list each frame once")
        where = f" in {source}" if kind == "folder" else ""
        raise MediaError(
            f"frames {_shown(other, kind)} and {_shown(p, kind)}{where} share the name "
            f"{p.stem!r}, and masks are named after it ({p.stem}.png); rename or remove one")


def _check_sizes(source: str, kind: str, paths: Sequence[Path], first: tuple[int, int],
                 max_pixels: int) -> None:
    """Refuse frames of different sizes. SAM 2 tracks an object through frames of one size:
    its inference state holds one video size, prompts are normalised by it and masks come
    back at it, so a frame of another shape would be squashed into it and masked at the
    wrong size (its own loader silently takes one frame's size for all). Every header is
    read (about 0.13 ms a frame: 4 s for 30,000 JPEG frames, once per folder version),
    which also finds an empty or unreadable frame before a run starts rather than when it
    reaches that frame."""
    odd: list[tuple[Path, tuple[int, int]]] = []
    for p in paths[1:]:
        size = _image_size(p, max_pixels, verify=False)
        if size != first:
            odd.append((p, size))
    if odd:
        (p, (w, h)), fw, fh = odd[0], *first
        more = f" (and {len(odd) - 1} more of other sizes)" if len(odd) > 1 else ""
        where = f" in {source}" if kind == "folder" else ""
        raise MediaError(
            f"frames{where} differ in size: {_shown(paths[0], kind)} is {fw}×{fh}, "
            f"{_shown(p, kind)} is {w}×{h}{more}; a video's frames must share one size "
            "(SAM 2 tracks at one size): resize them alike, or give each image on its own")


def _from_paths(source: str, kind: str, paths: list[Path], max_pixels: int) -> Media:
    if not paths:
        raise MediaError(f"no image frames in {source}")
    _check_names(source, kind, paths)
    src = _image_size(paths[0], max_pixels)
    _check_sizes(source, kind, paths, src, max_pixels)
    w, h = fit_size(*src, max_pixels)
    ids = [0] if kind == "image" else frame_ids_for(paths)
    return Media(source=source, kind=kind, frame_ids=ids, width=w, height=h, paths=paths,
                 source_size=src, note=_reduced_note(src, (w, h), max_pixels),
                 max_pixels=max_pixels)


@dataclass(frozen=True)
class _VideoIndex:
    """What opening a video learnt about it: frames that decode, their timestamps, sizes."""

    count: int
    width: int
    height: int
    fps: float | None
    header_count: int
    msec: array | None
    seekable: bool


_VIDEO_INDEX: LoadOnce[_VideoIndex] = LoadOnce(maxsize=64, name="media.video_index")


def _packet_times(path: Path) -> list[float]:
    """Presentation times of the video packets in stream order, from one pass of the demuxer
    without decoding (a few ms for a 300-frame clip); empty when OpenCV cannot read packets
    raw."""
    import cv2  # heavy: cv2 takes ~0.25 s to import; only videos and resizes need it

    cap = cv2.VideoCapture(str(path))
    times = []
    try:
        if cap.isOpened() and cap.set(cv2.CAP_PROP_FORMAT, -1):
            while cap.grab():
                times.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    finally:
        cap.release()
    return times


def _increasing(times: Sequence[float]) -> bool:
    """Whether timestamps tell frames apart (they are missing or repeated in some streams)."""
    return all(b - a >= 1e-3 for a, b in zip(times, times[1:], strict=False))


def _decode_times(path: Path) -> list[float]:
    """Timestamps of every frame that decodes, in order: the frames a damaged file has."""
    import cv2  # heavy: cv2 takes ~0.25 s to import; only videos and resizes need it

    cap = cv2.VideoCapture(str(path))
    times = []
    try:
        while cap.grab():
            times.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    finally:
        cap.release()
    return times


def _index_video(path: Path, max_pixels: int) -> _VideoIndex:
    """Counts the frames that decode. Cheap for a sound file: the demuxer lists the packets
    (as many as the header promises), and decoding the last one (through a seek, checked by
    its timestamp) shows the list is true. Otherwise (a file cut short, a stream without
    timestamps) every frame is decoded once, in order. Either way the first frame is decoded,
    and the frame size checked before that."""
    import cv2  # heavy: cv2 takes ~0.25 s to import; only videos and resizes need it

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise MediaError(f"cannot open video {path} (unsupported codec or corrupt file)")
        fw, fh = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        _check_video_size(path, fw, fh, max_pixels)
        header = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        header = int(header) if math.isfinite(header) and header > 0 else 0
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or None
        ok, first = cap.read()
        if not ok or first is None:
            raise MediaError(f"video {path} has no decodable frames")
        h, w = first.shape[:2]
        _check_video_size(path, w, h, max_pixels)
        del first
        first_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        packets = _packet_times(path)
        times = sorted(packets)
        # Sound: every frame the header announces has its packet, the timestamps tell them
        # apart, and the last one decodes where a seek says it is.
        sound = (bool(times) and len(times) >= header and _increasing(times)
                 and math.isclose(times[0], first_ms, abs_tol=1e-3))
        if sound and (len(times) == 1 or _lands_on(cap, len(times) - 1, times[-1])):
            msec, seekable = array("d", times), True
        else:
            decoded = _decode_times(path)
            if (packets and len(decoded) > 1 and len(decoded) < max(header, len(packets))
                    and math.isclose(decoded[-1], packets[-1], abs_tol=1e-3)):
                # The file ends inside this frame's packet: the decoder made a frame of what
                # was there and filled the rest from the frame before (or grey). It is not
                # the frame its label would claim.
                decoded.pop()
            msec = array("d", decoded) if _increasing(decoded) else None
            # every packet decodes, in order, yet the seek to the last one missed: this file's
            # seeks are not to be trusted, and frames are decoded in order instead
            seekable = msec is not None and decoded != times
            times = decoded
    finally:
        cap.release()
    if not times:
        raise MediaError(f"video {path} has no decodable frames")
    return _VideoIndex(count=len(times), width=w, height=h, fps=fps, header_count=header,
                       msec=msec, seekable=seekable)


def _lands_on(cap: Any, pos: int, msec: float) -> bool:
    """Whether seeking to frame ``pos`` decodes the frame with timestamp ``msec``."""
    import cv2  # heavy: cv2 takes ~0.25 s to import; only videos and resizes need it

    cap.set(cv2.CAP_PROP_POS_FRAMES, pos)
    return bool(cap.grab()) and math.isclose(
        cap.get(cv2.CAP_PROP_POS_MSEC), msec, abs_tol=1e-3)


def _check_video_size(path: Path, w: int, h: int, max_pixels: int) -> None:
    limit = max(FULL_DECODE_LIMIT, max_pixels)
    if w * h > limit:
        raise MediaError(f"video {path} has {w}×{h} frames ({_mp(w * h)}); the limit is "
                         f"{_mp(limit)} (each frame decodes at full size before being reduced)")


def _video_index(path: Path, max_pixels: int) -> _VideoIndex:
    """``_index_video``, once per file version (path, modification time, size)."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError as e:
        raise MediaError(f"cannot read video {path}: {e.strerror}") from None
    idx = _VIDEO_INDEX.get(key, lambda: _index_video(path, max_pixels))
    # Indexed under another caller's pixel limit (the key does not hold it): check ours.
    _check_video_size(path, idx.width, idx.height, max_pixels)
    return idx


def _open_video(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Media:
    idx = _video_index(path, max_pixels)
    w, h = fit_size(idx.width, idx.height, max_pixels)
    notes = []
    if idx.header_count and idx.header_count != idx.count:
        notes.append(f"video header says {idx.header_count} frames; {idx.count} decode")
    reduced = _reduced_note((idx.width, idx.height), (w, h), max_pixels)
    if reduced:
        notes.append(reduced)
    return Media(source=str(path), kind="video", frame_ids=list(range(idx.count)), width=w,
                 height=h, fps=idx.fps, source_size=(idx.width, idx.height),
                 note="; ".join(notes) or None, max_pixels=max_pixels, _msec=idx.msec,
                 _seekable=idx.seekable)


def _frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder in natural order. An entry with an image's name
    that is not a file (a named pipe, a device, a broken link) is refused here, by its
    ``stat``, rather than skipped (the video would silently lose a frame) or opened (a
    FIFO would block the run); sub-folders are not frames and are passed over. The
    listing's own file types answer for most entries, so a folder of 30,000 frames costs
    no ``stat`` per frame."""
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            p = Path(entry.path)
            if p.suffix.lower() not in IMAGE_EXTS or entry.is_dir():
                continue
            if not entry.is_file():  # not a regular file, nor a link to one
                problem = file_kind_problem(p) or "is not a regular file"
                raise MediaError(f"frame {p.name} in {folder} {problem}; remove it or "
                                 "replace it with the image file")
            files.append(p)
    files.sort(key=lambda p: _natural_key(p.name))
    return files


def _open_uncached(
    media: str | Sequence[str], roots: Sequence[Path] | None, max_pixels: int | None = None
) -> Media:
    if max_pixels is None:
        max_pixels = working_max_pixels()
    if not isinstance(media, (str, os.PathLike)):
        paths = [check_allowed(p, roots) for p in media]
        if not paths:
            raise MediaError("empty list of frame paths")
        for p in paths:
            problem = file_kind_problem(p)
            if problem == "does not exist":
                raise MediaError(f"frame file not found: {p}")
            if problem:
                raise MediaError(f"frame {p} {problem}; list image files")
        return _from_paths(f"list of {len(paths)} frames", "list", paths, max_pixels)
    path = check_allowed(media, roots)
    if not path.exists():
        raise MediaError(f"media not found: {path}")
    if path.is_dir():
        files = _frame_files(path)
        if roots is not None:  # a frame may be a symlink out of the allowed roots
            files = [check_allowed(p, roots) for p in files]
        return _from_paths(str(path), "folder", files, max_pixels)
    problem = file_kind_problem(path)
    if problem:
        raise MediaError(f"media {path} {problem}; give a video file, an image or a folder "
                         "of frames (save a stream to a file first)")
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return _from_paths(str(path), "image", [path], max_pixels)
    if ext in VIDEO_EXTS:
        if path.stat().st_size == 0:  # OpenCV would only say it cannot open it
            raise MediaError(f"cannot read video {path}: the file is empty (0 bytes)")
        return _open_video(path, max_pixels)
    raise MediaError(f"unsupported media type {ext or '(no extension)'}: {path}")


def _confined(media: str | Sequence[str], roots: Sequence[Path] | None) -> str | list[str]:
    """``media`` with every path as it will be opened (``check_allowed``); done on every
    call, cache hit or not, so a policy set after a file was cached still applies."""
    if isinstance(media, str):
        return str(check_allowed(media, roots))
    if not isinstance(media, Sequence) or not all(isinstance(p, (str, os.PathLike)) for p in media):
        raise MediaError("media must be a path or a list of paths")
    return [str(check_allowed(p, roots)) for p in media]


# An evicted handle is closed (its decoder released); a cleared one is left to its users.
_HANDLES: LoadOnce[Media] = LoadOnce(maxsize=16, name="media.handles",
                                     on_evict=lambda m: m.close())


def _cache_key(media: str | Sequence[str], max_pixels: int) -> tuple | None:
    """Path and version of the media; for a list of frames, the identity and version of
    every frame (an RL dataset row is one, opened by every sample of its group and again
    for the keyframe; a stat per frame, where resolving each path cost more than the rest)."""
    try:
        if isinstance(media, (str, os.PathLike)):
            p = Path(media).expanduser()
            st = p.stat()
            return (str(p.resolve()), st.st_mtime_ns, st.st_size, max_pixels)
        stats = [os.stat(os.path.expanduser(p)) for p in media]
    except (OSError, TypeError, ValueError):
        return None  # missing or malformed: the uncached path says what is wrong
    if not stats:
        return None
    # The paths as given stay in the key: the cached handle reads frames by them.
    return ("list", tuple((os.fspath(p), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
                          for p, st in zip(media, stats, strict=True)), max_pixels)


def open_media(media: str | os.PathLike | Sequence[str], roots: Sequence[Path] | None = ...) -> Media:
    """Open media (folder of frames, video file, single image, or list of frame paths).

    ``roots`` restricts where paths may point; by default it comes from
    ``SEGRESEARCH_MEDIA_ROOTS`` (unset: unrestricted). Handles are cached by path and
    modification time (and the working size, ``SEGRESEARCH_MAX_PIXELS``), so the keyframe
    step of a run reuses the handle its first step opened.
    """
    if roots is ...:
        roots = allowed_roots()
    if isinstance(media, os.PathLike):
        media = os.fspath(media)
    if isinstance(media, str) and not media.strip():  # Path("") would be the current directory
        raise MediaError("empty media path")
    media = _confined(media, roots)
    max_pixels = working_max_pixels()
    key = _cache_key(media, max_pixels)
    if key is None:
        return _open_uncached(media, roots, max_pixels)
    return _HANDLES.get(key, lambda: _open_uncached(media, roots, max_pixels))


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


@dataclass(frozen=True)
class SquareResize:
    """How one tool makes the images it shows: squashed to ``side``² with ``resample``.

    The published tools differ in their resampling filter, and the pixels a policy was trained
    on are the pixels it should see, so each tool names one of these next to its default size
    (``FRAME_RESIZE`` here; ``KEYFRAME_RESIZE`` in ``tools/keyframe.py``;
    ``SEARCH_IMAGE_RESIZE`` in ``tools/search/tools.py``): one place says both. ``method``
    names it wherever made images are keyed or persisted, so images made one way are never
    taken for images made another way."""

    side: int
    resample: Image.Resampling

    @property
    def method(self) -> str:
        return resize_method(self.resample)

    def __call__(self, img: Image.Image, side: int | None = None) -> Image.Image:
        """``img`` at ``side``² (default: this tool's size) with this tool's filter."""
        return resize_square(img, self.side if side is None else side, self.resample)


def resize_method(resample: Image.Resampling) -> str:
    """The name a square resize with ``resample`` is recorded under, e.g. ``square-lanczos``."""
    return f"square-{Image.Resampling(resample).name.lower()}"


# Sampled frames: the published data go through qwen_vl_utils.fetch_image, whose
# ``image.resize((w, h))`` takes PIL's default filter for RGB images, BICUBIC.
FRAME_RESIZE = SquareResize(448, Image.Resampling.BICUBIC)


def resize_square(img: Image.Image, side: int, resample: Image.Resampling | None = None) -> Image.Image:
    """Resize to ``side``×``side`` (the published preprocessing squashes, not pads) with
    ``resample`` (default: the sampled frames' filter, ``FRAME_RESIZE``)."""
    if img.size == (side, side):
        return img
    return img.resize((side, side), FRAME_RESIZE.resample if resample is None else resample)


def as_uint8_rgb(img: Image.Image) -> np.ndarray:
    # convert() copies even an RGB image: at 16 MP that copy is 48 MB for nothing
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
