"""How to remake an image the store no longer holds, and what the store and its disk
budget share.

Frames and keyframes say how to remake them from the source media (``FrameRecipe``): in
memory, so an evicted frame of a long RL job is recomputed rather than lost, and on disk as
a small JSON sidecar next to the PNG (``<aa>/<digest>.json``), so any process can remake it.
A remade image is checked against its digest (``remake``): other pixels, or a vanished or
changed source, give a clear ``ImageUnavailable``, never wrong pixels.

Also here, as both ``media_store`` and ``media_budget`` need them: the digest that names an
image (``digest_of``, ``DIGEST_RE``) and write-once atomic files (``_atomic_write``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from segresearch.core.files import created_mode
from segresearch.core.media import (
    FRAME_RESIZE,
    MediaError,
    open_media,
    resize_method,
    resize_square,
)

DIGEST_RE = re.compile(r"[0-9a-f]{64}")
# The sidecar's layout is unchanged since version 1: each recipe has always named its resize
# in "resize", and a reader that does not know a method treats the image as having no recipe
# (so an older process never remakes a LANCZOS keyframe with BICUBIC).
RECIPE_VERSION = 1
# The sampled frames' method (resize_square's default): squashed to side², PIL BICUBIC.
RESIZE_METHOD = FRAME_RESIZE.method


class ImageUnavailable(KeyError):
    """An image no tier holds and none can remake (evicted, no recipe; source gone or
    changed). A KeyError, as callers already expect for unknown digests; ``str`` is the
    plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "image unavailable"


def digest_of(img: Image.Image) -> str:
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class FrameRecipe:
    """How to remake a shown frame (sampled or keyframe): decode ``frame`` of ``source`` and
    squash it to ``size``² with ``resample`` (the filter of the tool that showed it: frames
    and keyframes differ). Persisted as JSON beside the PNG, so that a PNG can be evicted
    and remade in any process. ``spec`` (the run's media spec) stays in memory only: in the
    process that made the frame the remake goes through the same cached media handle."""

    source: str  # real path of the file the frame is decoded from (a video or one image)
    video: bool
    frame: int  # frame id (= position) in a video; the id in the run's media otherwise
    size: int
    source_mtime_ns: int
    source_bytes: int
    max_pixels: int
    resample: Image.Resampling = FRAME_RESIZE.resample
    spec: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def for_frame(cls, media: Any, spec: Any, fid: int, size: int,
                  resample: Image.Resampling = FRAME_RESIZE.resample) -> FrameRecipe:
        """The recipe of frame ``fid`` of ``media`` (opened from ``spec``) at ``size``."""
        path, mtime_ns, nbytes, _ = media.frame_key(fid)
        return cls(os.path.realpath(path), media.kind == "video", fid, size, mtime_ns, nbytes,
                   int(getattr(media, "max_pixels", 0) or 0), Image.Resampling(resample), spec=spec)

    def __call__(self) -> Image.Image:
        if self.spec is not None:
            return resize_square(open_media(self.spec).frame(self.frame), self.size, self.resample)
        media = open_media(self.source)  # the media roots apply, as for any run
        fid = self.frame if self.video else media.frame_ids[0]
        return resize_square(media.frame(fid), self.size, self.resample)

    @property
    def resize(self) -> str:
        """The recorded method name, e.g. ``square-bicubic``."""
        return resize_method(self.resample)

    def to_json(self) -> dict[str, Any]:
        return {"v": RECIPE_VERSION, "recipe": "frame", "resize": self.resize,
                "source": self.source, "video": self.video, "frame": self.frame,
                "size": self.size, "source_mtime_ns": self.source_mtime_ns,
                "source_bytes": self.source_bytes, "max_pixels": self.max_pixels}

    @classmethod
    def from_json(cls, data: Any) -> FrameRecipe | None:
        """None for anything this version cannot remake exactly (another resize, a newer
        format, a damaged file): such an image is then treated as having no recipe."""
        try:
            resample = _RESAMPLE_BY_METHOD.get(data.get("resize"))
            if data.get("v") != RECIPE_VERSION or data.get("recipe") != "frame" or resample is None:
                return None
            return cls(str(data["source"]), bool(data["video"]), int(data["frame"]),
                       int(data["size"]), int(data["source_mtime_ns"]), int(data["source_bytes"]),
                       int(data.get("max_pixels") or 0), resample)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def source_state(self) -> str | None:
        """None when the source is there as it was; otherwise why it is not."""
        try:
            st = os.stat(self.source)
        except OSError:
            return f"its source {self.source} is gone"
        if (st.st_mtime_ns, st.st_size) != (self.source_mtime_ns, self.source_bytes):
            return f"its source {self.source} changed since the image was made"
        return None


# Every PIL filter by its recorded name ("square-lanczos" → LANCZOS).
_RESAMPLE_BY_METHOD = {resize_method(r): r for r in Image.Resampling}


def _read_recipe(path: Path) -> FrameRecipe | None:
    try:
        return FrameRecipe.from_json(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return None


def remake(digest: str, recipe: Callable[[], Image.Image]) -> Image.Image:
    """Run ``recipe`` and return its image only if it has exactly the pixels of ``digest``."""
    if isinstance(recipe, FrameRecipe):
        try:
            made = recipe()
        except (MediaError, OSError, IndexError) as e:
            why = recipe.source_state() or f"remaking it from {recipe.source} failed: {e}"
            raise ImageUnavailable(f"image {digest[:12]} is unavailable: {why}") from None
    else:
        made = recipe()
    img = made if made.mode == "RGB" else made.convert("RGB")
    if digest_of(img) != digest:
        why = "its source changed since the image was made"
        if isinstance(recipe, FrameRecipe):
            why = recipe.source_state() or (f"remaking it from {recipe.source} gave other pixels "
                                            f"(made with max_pixels {recipe.max_pixels})")
        raise ImageUnavailable(f"image {digest[:12]} is unavailable: {why}")
    return img


# ---------------------------------------------------------------------- files


def _atomic_write(path: Path, write: Callable[[Any], None]) -> int:
    """Write through a temporary file renamed into place (a reader, or a ``kill -9``,
    never leaves half a file under the real name); returns the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix + ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            size = f.tell()
        os.chmod(tmp, created_mode())  # readable like any file, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return size

