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
also say how to remake them from the source media (``FrameRecipe``): in memory, so an
evicted frame of a long RL job is recomputed rather than lost, and on disk as a small JSON
sidecar next to the PNG (``<aa>/<digest>.json``), so any process can remake it.

The media folder and the server's upload folder are kept under ``SEGRESEARCH_MEDIA_MAX_GB``
by ``DiskBudget``: what may be evicted, and what never is, is told in ``media_budget``.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from segresearch.core.envvars import env_str, setting
from segresearch.core.media import UPLOAD_ROOT_ENV
from segresearch.core.media_budget import (
    DEAD_RETRY_SECONDS,
    LOCK_NAME,
    LOW_WATER,
    MAX_GB_ENV,
    MIN_AGE_SECONDS,
    REPORT_MAX_AGE,
    RESCAN_SECONDS,
    RETRY_SECONDS,
    STALE_TMP_SECONDS,
    TOUCH_SECONDS,
    UPLOAD_META_DIR,
    DiskBudget,
    _touch_if_stale,
    max_disk_bytes,
    stamp_upload,
    upload_meta,
)
from segresearch.core.media_budget import (
    _exclusive as _exclusive,  # re-exported (tests lock the budget through it)
)
from segresearch.core.media_recipes import (
    DIGEST_RE,
    RECIPE_VERSION,
    RESIZE_METHOD,
    FrameRecipe,
    ImageUnavailable,
    _atomic_write,
    _read_recipe,
    digest_of,
    remake,
)
from segresearch.core.shared_cache import LoadOnce

MEDIA_SCHEME = "media-ref:"
STORE_ENV = "SEGRESEARCH_MEDIA_STORE"
CACHE_MB_ENV = "SEGRESEARCH_MEDIA_CACHE_MB"
JPEG_QUALITY = 90  # what the OpenAI-compatible backend sends (as before references existed)

# What importers have always found here; the names of media_recipes and media_budget stay
# importable from this module.
__all__ = [
    "CACHE_MB_ENV",
    "DEAD_RETRY_SECONDS",
    "DIGEST_RE",
    "JPEG_QUALITY",
    "LOCK_NAME",
    "LOW_WATER",
    "MAX_GB_ENV",
    "MEDIA_SCHEME",
    "MIN_AGE_SECONDS",
    "RECIPE_VERSION",
    "REPORT_MAX_AGE",
    "RESCAN_SECONDS",
    "RESIZE_METHOD",
    "RETRY_SECONDS",
    "STALE_TMP_SECONDS",
    "STORE_ENV",
    "TOUCH_SECONDS",
    "UPLOAD_META_DIR",
    "DiskBudget",
    "FrameRecipe",
    "ImageUnavailable",
    "MediaStore",
    "configure_store",
    "digest_of",
    "get_store",
    "max_disk_bytes",
    "note_upload",
    "remake",
    "stamp_upload",
    "storage_info",
    "upload_meta",
]


# ---------------------------------------------------------------------- the store


_SERIALS = itertools.count(1)


class MediaStore:
    """Content-addressed images: memory (LRU by bytes), then an optional folder, then a
    recipe (in memory, or its JSON sidecar in the folder) that remakes the image.

    ``disk_max_bytes`` bounds the folder plus ``upload_root`` (see ``DiskBudget``); None:
    unlimited (the folders are still measured for ``storage()``)."""

    def __init__(self, directory: str | os.PathLike | None = None, max_bytes: int = 1 << 30,
                 max_recipes: int = 1 << 16, max_url_bytes: int = 64 << 20,
                 disk_max_bytes: int | None = None,
                 upload_root: str | os.PathLike | None = None) -> None:
        # Which store made a reference: a cache of image blocks keys on it, so a block whose
        # image lives in a store that has since been replaced is never handed out.
        self.serial = next(_SERIALS)
        self.directory = Path(directory).expanduser() if directory else None
        # Registered under shared names (one set per store), so that tests and benchmarks
        # count and empty them like every other cache. The newest image and URL always stay:
        # a digest ``put`` returns must resolve, however small the budget.
        self._images: LoadOnce[Image.Image] = LoadOnce(name="media.images", max_weight=max_bytes,
                                                       weigh=_size, keep_newest=True)
        self._recipes: LoadOnce[Callable[[], Image.Image]] = LoadOnce(max_recipes, name="media.recipes")
        self._urls: LoadOnce[str] = LoadOnce(name="media.data_urls", max_weight=max_url_bytes,
                                             weigh=len, keep_newest=True)
        self._lock = threading.Lock()  # configure_store's changes of folder and budget
        self._sidecars: set[str] = set()  # digests known to have a recipe on disk
        self._stamped: dict[str, float] = {}  # upload -> when this process last stamped it
        self.upload_root = Path(upload_root).expanduser().resolve() if upload_root else None
        self.disk_max_bytes = disk_max_bytes
        self.budget = self._make_budget()

    @property
    def max_bytes(self) -> int:
        """The memory budget of the images (``configure_store`` changes it; it applies from
        the next image kept)."""
        return self._images.max_weight or 0

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._images.max_weight = value

    def _make_budget(self) -> DiskBudget | None:
        if self.directory is None and self.upload_root is None:
            return None
        return DiskBudget(self.directory, self.upload_root, self.disk_max_bytes)

    # ------------------------------------------------------------------ writing

    def put(self, img: Image.Image, recipe: Callable[[], Image.Image] | None = None) -> str:
        """Keep ``img`` (as RGB) and return its digest."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        digest = digest_of(img)
        self._images.put(digest, img)
        if recipe is not None:
            self._recipes.put(digest, recipe, replace=True)
        if self.directory is not None:
            self._persist(digest, img, recipe)
        return digest

    def _path(self, digest: str) -> Path:
        assert self.directory is not None
        return self.directory / digest[:2] / f"{digest}.png"

    def _persist(self, digest: str, img: Image.Image, recipe: Any) -> None:
        """The PNG (once), its recipe sidecar (once) and the use of an uploaded source."""
        written = self._write(digest, img)
        if isinstance(recipe, FrameRecipe):
            written += self._write_recipe(digest, recipe)
            self._stamp_source(recipe)
        if written and self.budget is not None:
            self.budget.note_write(written)

    def _write(self, digest: str, img: Image.Image) -> int:
        path = self._path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return _atomic_write(path, lambda f: img.save(f, format="PNG", compress_level=1))
        _touch_if_stale(path, st.st_mtime)
        return 0

    def _write_recipe(self, digest: str, recipe: FrameRecipe) -> int:
        """The sidecar that lets any process remake the frame; written once per digest (a
        PNG already on disk without one, from an older version, becomes evictable)."""
        if digest in self._sidecars:
            return 0
        side = self._path(digest).with_suffix(".json")
        size = 0
        if not side.exists():
            data = json.dumps({**recipe.to_json(), "digest": digest}).encode()
            size = _atomic_write(side, lambda f: f.write(data))
        if len(self._sidecars) >= (self._recipes.maxsize or 0):
            self._sidecars.clear()
        self._sidecars.add(digest)
        return size

    def _stamp_source(self, recipe: FrameRecipe) -> None:
        """A run making frames from an upload uses it: stamp it (once a minute per process)."""
        root = self.upload_root
        if root is None or not recipe.source.startswith(f"{root}{os.sep}"):
            return
        now = time.monotonic()
        if now - self._stamped.get(recipe.source, -TOUCH_SECONDS) < TOUCH_SECONDS:
            return
        if len(self._stamped) > 4096:
            self._stamped.clear()
        self._stamped[recipe.source] = now
        stamp_upload(Path(recipe.source))

    # ------------------------------------------------------------------ reading

    def get(self, digest: str) -> Image.Image:
        """The image for ``digest``; ImageUnavailable (a KeyError) when no tier has it and
        it cannot be remade exactly. Concurrent callers for one evicted image read or
        remake it once."""
        return self._images.get(digest, lambda: self._load(digest))

    def _load(self, digest: str) -> Image.Image:
        """The image from the folder, or remade from its recipe (memory has none)."""
        recipe = self._recipes.peek(digest)
        img = None
        on_disk = self.directory is not None and DIGEST_RE.fullmatch(digest) is not None
        if on_disk:
            img = self._read(digest)
            if img is None and recipe is None:
                recipe = _read_recipe(self._path(digest).with_suffix(".json"))
        if img is None and recipe is not None:
            img = remake(digest, recipe)
            if on_disk and isinstance(recipe, FrameRecipe):  # evicted: in use again
                self._persist(digest, img, recipe)
        if img is None:
            raise ImageUnavailable(f"image {digest[:12]} is no longer available (set {STORE_ENV} "
                                   "to keep the images of runs that are resumed or inspected later)")
        return img

    def _read(self, digest: str) -> Image.Image | None:
        path = self._path(digest)
        try:
            st = os.stat(path)
            with Image.open(path) as f:
                img = f.convert("RGB")
        except (OSError, ValueError):
            return None
        _touch_if_stale(path, st.st_mtime)
        return img

    def resident(self, digest: str) -> bool:
        """Whether ``get(digest)`` answers from memory (no file read, no recipe to run)."""
        return self._images.has(digest)

    def png_bytes(self, digest: str) -> bytes:
        if not DIGEST_RE.fullmatch(digest):
            raise KeyError(digest)
        if self.directory is not None:
            path = self._path(digest)
            try:
                st = os.stat(path)
                data = path.read_bytes()
            except OSError:
                pass
            else:
                _touch_if_stale(path, st.st_mtime)
                return data
        buf = io.BytesIO()
        self.get(digest).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def data_url(self, digest: str) -> str:
        """A JPEG data URL for backends that take images inline, made once per image."""
        return self._urls.get(digest, lambda: self._jpeg_url(digest))

    def _jpeg_url(self, digest: str) -> str:
        buf = io.BytesIO()
        self.get(digest).save(buf, format="JPEG", quality=JPEG_QUALITY)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def stats(self) -> dict[str, int]:
        return {"images": len(self._images), "bytes": self._images.stats().weight,
                "recipes": len(self._recipes), "urls": len(self._urls)}

    def storage(self, max_age: float = REPORT_MAX_AGE) -> dict[str, Any]:
        """What the folders hold, for operators (see ``DiskBudget.report``)."""
        if self.budget is None:
            return {"budget_bytes": self.disk_max_bytes, "used_bytes": 0, "media_folder": None,
                    "upload_folder": None, "note": f"no folder ({STORE_ENV} unset): memory only"}
        return self.budget.report(max_age)


def _size(img: Image.Image) -> int:
    return img.width * img.height * len(img.getbands())


# ---------------------------------------------------------------------- the process-wide store


# One store per process, under one key; clearing the "media.store" cache makes the next use
# read the environment again (tests and benchmarks that change it).
_STORE: LoadOnce[MediaStore] = LoadOnce(name="media.store")


def get_store() -> MediaStore:
    """The process-wide store, configured from the environment on first use."""
    return _STORE.get(None, _store_from_env)


def _store_from_env() -> MediaStore:
    mb = setting(CACHE_MB_ENV)
    return MediaStore(env_str(STORE_ENV) or None, max_bytes=int(mb * (1 << 20)),
                      disk_max_bytes=max_disk_bytes(),
                      upload_root=env_str(UPLOAD_ROOT_ENV) or None)


def configure_store(directory: str | os.PathLike | None = None,
                    max_mb: float | None = None) -> MediaStore:
    """Point the process-wide store at a folder (e.g. the CLI keeps images beside its
    checkpoint database so a resumed run finds them); images already held stay."""
    store = get_store()
    with store._lock:
        # absolute now: the store outlives the caller's working folder (a server moves into
        # its state folder; a relative --db named the folder it was given in)
        store.directory = Path(directory).expanduser().absolute() if directory else None
        if max_mb is not None:
            store.max_bytes = int(max_mb * (1 << 20))
        store.budget = store._make_budget()
    return store


def storage_info() -> dict[str, Any]:
    """What the media and upload folders hold, for operators (``/segresearch/info``):
    bytes used, the budget, evictable and pinned bytes, whether pinned bytes alone are over."""
    try:
        return get_store().storage()
    except OSError as e:
        return {"error": f"cannot measure the media storage: {e}"}


def note_upload(path: Path, nbytes: int, *, new: bool) -> None:
    """The upload route kept ``path`` (``new``) or found the same bytes already there: stamp
    its use and, for a new file, count it against the budget (may evict older files)."""
    stamp_upload(path)
    store = get_store()
    if new and store.budget is not None and store.upload_root == path.parent.resolve():
        store.budget.note_write(nbytes)
