"""Images the model sees, kept out of the graph state.

Messages carry ``media-ref:<sha256>`` URLs instead of base64 pixels: a checkpoint then
holds a few hundred bytes per image instead of tens of kilobytes, and nothing is encoded
or decoded again on every turn. The reference names the exact pixels (the hash of the
RGB bytes), so a backend resolving it gets the image as it was made, with no lossy step;
only the OpenAI-compatible backend encodes, once per image, for the wire.

Images live in a memory cache bounded by bytes; when ``SEGRESEARCH_MEDIA_STORE`` names a
folder they are also written there as PNG (write-once, atomic), which lets a resumed run
in another process, another server replica sharing the folder, or a client (through the
server's ``/segresearch/media/<sha256>`` route) get every image back. Frames and keyframes
also register how to remake them from the source media, so an evicted frame of a long RL
job is recomputed rather than lost.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from segresearch.tools.segmenters.writers import created_mode

MEDIA_SCHEME = "media-ref:"
STORE_ENV = "SEGRESEARCH_MEDIA_STORE"
CACHE_MB_ENV = "SEGRESEARCH_MEDIA_CACHE_MB"
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
JPEG_QUALITY = 90  # what the OpenAI-compatible backend sends (as before references existed)


def digest_of(img: Image.Image) -> str:
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


class MediaStore:
    """Content-addressed images: memory (LRU by bytes), then an optional folder, then a
    recipe that remakes the image."""

    def __init__(self, directory: str | os.PathLike | None = None, max_bytes: int = 1 << 30,
                 max_recipes: int = 1 << 16, max_url_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory).expanduser() if directory else None
        self.max_bytes = max_bytes
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._bytes = 0
        self._recipes: OrderedDict[str, Callable[[], Image.Image]] = OrderedDict()
        self._max_recipes = max_recipes
        self._urls: OrderedDict[str, str] = OrderedDict()
        self._url_bytes = 0
        self._max_url_bytes = max_url_bytes
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writing

    def put(self, img: Image.Image, recipe: Callable[[], Image.Image] | None = None) -> str:
        """Keep ``img`` (as RGB) and return its digest."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        digest = digest_of(img)
        with self._lock:
            if digest in self._images:
                self._images.move_to_end(digest)
            else:
                self._remember(digest, img)
            if recipe is not None:
                self._recipes[digest] = recipe
                self._recipes.move_to_end(digest)
                while len(self._recipes) > self._max_recipes:
                    self._recipes.popitem(last=False)
        if self.directory is not None:
            self._write(digest, img)
        return digest

    def _remember(self, digest: str, img: Image.Image) -> None:
        self._images[digest] = img
        self._bytes += _size(img)
        while self._bytes > self.max_bytes and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            self._bytes -= _size(old)

    def _path(self, digest: str) -> Path:
        assert self.directory is not None
        return self.directory / digest[:2] / f"{digest}.png"

    def _write(self, digest: str, img: Image.Image) -> None:
        path = self._path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                img.save(f, format="PNG", compress_level=1)
            os.chmod(tmp, created_mode())  # readable like any file, not mkstemp's 0600
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # ------------------------------------------------------------------ reading

    def get(self, digest: str) -> Image.Image:
        """The image for ``digest``; KeyError when no tier has it and it cannot be remade."""
        with self._lock:
            hit = self._images.get(digest)
            if hit is not None:
                self._images.move_to_end(digest)
                return hit
            recipe = self._recipes.get(digest)
        img = None
        if self.directory is not None and DIGEST_RE.fullmatch(digest):
            try:
                with Image.open(self._path(digest)) as f:
                    img = f.convert("RGB")
            except (OSError, ValueError):
                img = None
        if img is None and recipe is not None:
            made = recipe()
            img = made if made.mode == "RGB" else made.convert("RGB")
            if digest_of(img) != digest:  # the source changed since the run began
                raise KeyError(f"image {digest[:12]} changed at its source")
        if img is None:
            raise KeyError(f"image {digest[:12]} is no longer available (set {STORE_ENV} "
                           "to keep the images of runs that are resumed or inspected later)")
        with self._lock:
            if digest not in self._images:
                self._remember(digest, img)
        return img

    def resident(self, digest: str) -> bool:
        """Whether ``get(digest)`` answers from memory (no file read, no recipe to run)."""
        with self._lock:
            return digest in self._images

    def png_bytes(self, digest: str) -> bytes:
        if not DIGEST_RE.fullmatch(digest):
            raise KeyError(digest)
        if self.directory is not None:
            try:
                return self._path(digest).read_bytes()
            except OSError:
                pass
        buf = io.BytesIO()
        self.get(digest).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def data_url(self, digest: str) -> str:
        """A JPEG data URL for backends that take images inline, made once per image."""
        with self._lock:
            hit = self._urls.get(digest)
            if hit is not None:
                self._urls.move_to_end(digest)
                return hit
        buf = io.BytesIO()
        self.get(digest).save(buf, format="JPEG", quality=JPEG_QUALITY)
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        with self._lock:
            if digest not in self._urls:
                self._urls[digest] = url
                self._url_bytes += len(url)
                while self._url_bytes > self._max_url_bytes and len(self._urls) > 1:
                    _, old = self._urls.popitem(last=False)
                    self._url_bytes -= len(old)
        return url

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"images": len(self._images), "bytes": self._bytes,
                    "recipes": len(self._recipes), "urls": len(self._urls)}


def _size(img: Image.Image) -> int:
    return img.width * img.height * len(img.getbands())


_STORE: MediaStore | None = None
_STORE_LOCK = threading.Lock()


def get_store() -> MediaStore:
    """The process-wide store, configured from the environment on first use."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            mb = float(os.environ.get(CACHE_MB_ENV, "") or 1024)
            _STORE = MediaStore(os.environ.get(STORE_ENV) or None, max_bytes=int(mb * (1 << 20)))
        return _STORE


def configure_store(directory: str | os.PathLike | None = None,
                    max_mb: float | None = None) -> MediaStore:
    """Point the process-wide store at a folder (e.g. the CLI keeps images beside its
    checkpoint database so a resumed run finds them); images already held stay."""
    store = get_store()
    with store._lock:
        store.directory = Path(directory).expanduser() if directory else None
        if max_mb is not None:
            store.max_bytes = int(max_mb * (1 << 20))
    return store
