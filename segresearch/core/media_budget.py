"""Keeping the media store's folder and the server's upload folder under a disk budget.

Disk budget (``SEGRESEARCH_MEDIA_MAX_GB``; unset or 0: unlimited). The media folder and the
server's upload folder together are kept under the budget by ``DiskBudget``, which deletes
least-recently-used files. The rule is that **no stored thread loses an image it refers
to**; as the store cannot know which threads still exist, what may go is only what can come
back:

- a PNG with a recipe sidecar whose source file is still there, unchanged (same size and
  modification time as when the frame was made): it is remade on demand in any process
  and checked against its digest (other pixels, or a vanished source, give a clear
  ``ImageUnavailable``, never wrong pixels);
- an upload: before it goes, every frame derived from it whose PNG was evicted is remade
  and written back, so those frames stay on disk (pinned from then on, their source being
  gone). Which frames came from which upload is recorded by the evictor itself, under its
  lock, in ``<uploads>/.meta/<name>.refs`` before it deletes such a frame.

Everything else is **pinned**, never deleted automatically: PNGs without a recipe (web image
search hits, review pictures, images of older versions), recipe sidecars, frames whose
source is gone or changed. When pinned bytes alone exceed the budget a warning is logged
and ``media_store.storage_info()`` (shown in ``/segresearch/info``) says ``pinned_over_budget``.

Use is tracked with file modification times (no shared index that a ``kill -9`` could
corrupt): a PNG read from disk or put again is touched at most once a minute; an upload's
use (uploaded again, a run making frames from it) is stamped on ``.meta/<name>.used``, not
on the upload itself, whose modification time keys the media readers' caches. Reads from
the memory tier touch nothing: the in-memory path does no file system call.

Limits an operator should know: the folders may exceed the budget by the pinned bytes, by
files used within the last minute (``MIN_AGE_SECONDS``: an upload a person just made, a
frame being written) and by what other processes wrote since they last scanned (at most
``RESCAN_SECONDS``). A frame made from media outside the upload folder is remade from that
file: if it is changed or removed after the frame's PNG was evicted, the frame is
unavailable (said plainly). An upload is source media, not an image a thread shows: once
evicted, a thread's images stay, but a new run, or a run resumed into segmentation, on
that upload needs it uploaded again (the same bytes get the same path back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segresearch.core.envvars import setting
from segresearch.core.media_recipes import (
    DIGEST_RE,
    FrameRecipe,
    ImageUnavailable,
    _atomic_write,
    _read_recipe,
    remake,
)

try:  # POSIX; elsewhere eviction is coordinated within one process only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MAX_GB_ENV = "SEGRESEARCH_MEDIA_MAX_GB"
UPLOAD_META_DIR = ".meta"  # per upload: <name>.refs, <name>.used, <name>.names.json
LOCK_NAME = ".budget.lock"
TOUCH_SECONDS = 60.0  # a file's use is recorded at most this often
RESCAN_SECONDS = 300.0  # a writer rescans at least this often (other processes write too)
RETRY_SECONDS = 30.0  # after a pass that could not get under the budget
MIN_AGE_SECONDS = 60.0  # nothing used more recently is evicted (in-flight writes, fresh uploads)
STALE_TMP_SECONDS = 3600.0  # temporary files a killed writer left behind
DEAD_RETRY_SECONDS = 3600.0  # frames whose source was missing are looked at again after this
LOW_WATER = 0.9  # a pass evicts down to this share of the budget, so passes are rare
REPORT_MAX_AGE = 60.0

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- use and locking


def _touch_if_stale(path: Path | str, mtime: float, now: float | None = None) -> None:
    """Record a use on the file's modification time, at most once per TOUCH_SECONDS."""
    if (now or time.time()) - mtime > TOUCH_SECONDS:
        with contextlib.suppress(OSError):
            os.utime(path)


def upload_meta(upload: Path, kind: str) -> Path:
    """``<uploads>/.meta/<name>.<kind>``: what the store and the page keep about an upload
    (``refs``, ``used``, ``names.json``); hidden, so the library never lists it."""
    return upload.parent / UPLOAD_META_DIR / f"{upload.name}.{kind}"


def stamp_upload(upload: Path) -> None:
    """Record that ``upload`` was used now (the LRU clock of uploads)."""
    stamp = upload_meta(upload, "used")
    try:
        os.utime(stamp)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
    except OSError:
        pass


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """A non-blocking exclusive lock across processes (released by the kernel when its
    holder dies, so a ``kill -9`` never leaves the store locked). Yields whether it is held."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
        yield True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- the budget


@dataclass(frozen=True)
class _Candidate:
    last_use: float
    nbytes: int
    path: Path
    upload: bool


@dataclass
class _Usage:
    at: float = 0.0
    media: int = 0
    uploads: int = 0
    candidates: list[_Candidate] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.media + self.uploads

    @property
    def evictable(self) -> int:
        return sum(c.nbytes for c in self.candidates)


def _stat(entry: os.DirEntry) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False) if entry.is_file(follow_symlinks=False) else None
    except OSError:
        return None


class DiskBudget:
    """Keeps the media folder plus the upload folder under ``max_bytes`` (None: unlimited).

    Cheap on the write path: each process keeps a running total, adds what it writes, and
    only scans the folders (``os.scandir``) when that total crosses the budget, when it has
    not scanned for RESCAN_SECONDS (other processes write too: the budget may be overshot by
    what they wrote since), or on its first write. Eviction runs in the thread that
    crossed the budget, never waits for a lock (another thread or process already evicting
    is enough) and evicts down to LOW_WATER of the budget, so a pass happens once per tenth
    of the budget written. Only one process evicts at a time (``flock`` on
    ``.budget.lock``): that is what keeps "remake the frames of an upload before deleting
    it" and "record an upload's frames before deleting them" consistent across processes.
    """

    def __init__(self, media_dir: Path | None, upload_root: Path | None, max_bytes: int | None,
                 min_age_s: float = MIN_AGE_SECONDS) -> None:
        self.media_dir = media_dir
        self.upload_root = upload_root
        self.max_bytes = max_bytes if max_bytes and max_bytes > 0 else None
        self.min_age_s = min_age_s
        self.evicted_files = 0
        self.evicted_bytes = 0
        self._total: int | None = None
        self._scanned = -RESCAN_SECONDS
        self._next_try = 0.0
        self._lock = threading.Lock()  # the running total
        self._pass = threading.Lock()  # one eviction pass per process at a time
        self._dead: set[Path] = set()  # candidates found not evictable (source gone/changed)
        self._dead_since = time.monotonic()
        self._usage: _Usage | None = None
        self._pinned_over = False

    @property
    def lock_path(self) -> Path:
        return (self.media_dir or self.upload_root or Path(".")) / LOCK_NAME

    # ------------------------------------------------------------------ the write path

    def note_write(self, nbytes: int) -> None:
        """Called after a file is written to either folder; may run an eviction pass."""
        if self.max_bytes is None:
            return
        now = time.monotonic()
        with self._lock:
            if self._total is not None:
                self._total += nbytes
            due = (self._total is None or self._total > self.max_bytes
                   or now - self._scanned > RESCAN_SECONDS) and now >= self._next_try
        if due:
            self.enforce()

    def enforce(self) -> bool:
        """One pass: scan, delete stale temporary files, evict LRU files down to LOW_WATER
        if over the budget. False when another thread or process is already at it."""
        if not self._pass.acquire(blocking=False):
            return False
        try:
            with _exclusive(self.lock_path) as held:
                if not held:
                    with self._lock:
                        self._next_try = time.monotonic() + 1.0
                    return False
                try:
                    self._enforce_locked()
                except Exception:  # a failed pass must never fail the write that ran it
                    _log.exception("media storage: eviction pass failed")
                    with self._lock:
                        self._next_try = time.monotonic() + RETRY_SECONDS
            return True
        finally:
            self._pass.release()

    def _enforce_locked(self) -> None:
        now_mono = time.monotonic()
        if now_mono - self._dead_since > DEAD_RETRY_SECONDS:  # a source may have come back
            self._dead.clear()
            self._dead_since = now_mono
        usage = self.scan()
        for tmp in usage.stale:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        total = usage.total
        if self.max_bytes is not None and total > self.max_bytes:
            total, left = self._evict(usage)
            self._usage = None  # what the scan saw is gone now: a report rescans
            self._warn_if_pinned(total - left)
        else:
            self._pinned_over = False
        retry = RETRY_SECONDS if self.max_bytes is not None and total > self.max_bytes else 0.0
        with self._lock:
            self._total = total
            self._scanned = now_mono
            self._next_try = now_mono + retry

    def _warn_if_pinned(self, pinned: int) -> None:
        """Say so once (not on every pass) when pinned bytes alone are over the budget."""
        assert self.max_bytes is not None
        over = pinned > self.max_bytes
        if over and not self._pinned_over:
            _log.warning("media storage: %.2f GB pinned (images without a recipe, frames whose "
                         "source is gone) exceeds the budget of %.2f GB (%s); nothing more can "
                         "be evicted automatically", pinned / (1 << 30), self.max_bytes / (1 << 30),
                         MAX_GB_ENV)
        self._pinned_over = over

    # ------------------------------------------------------------------ scanning

    def scan(self) -> _Usage:
        """Bytes on disk in both folders and the evictable files with their last use."""
        usage = _Usage(at=time.time())
        if self.media_dir is not None:
            self._scan_media(usage)
        if self.upload_root is not None:
            self._scan_uploads(usage)
        self._usage = usage
        return usage

    def _scan_media(self, usage: _Usage) -> None:
        assert self.media_dir is not None
        try:
            top = os.scandir(self.media_dir)
        except OSError:
            return
        with top:
            for entry in top:
                if entry.is_dir(follow_symlinks=False):
                    self._scan_shard(Path(entry.path), usage)
                elif (st := _stat(entry)) is not None:
                    usage.media += st.st_size

    def _scan_shard(self, shard: Path, usage: _Usage) -> None:
        pngs: dict[str, tuple[float, int]] = {}
        recipes: set[str] = set()
        try:
            entries = list(os.scandir(shard))
        except OSError:
            return
        for entry in entries:
            st = _stat(entry)
            if st is None:
                continue
            usage.media += st.st_size
            stem, ext = os.path.splitext(entry.name)
            if ext == ".tmp":
                if usage.at - st.st_mtime > STALE_TMP_SECONDS:
                    usage.stale.append(Path(entry.path))
            elif ext == ".png" and DIGEST_RE.fullmatch(stem):
                pngs[stem] = (st.st_mtime, st.st_size)
            elif ext == ".json":
                recipes.add(stem)
        for digest, (mtime, size) in pngs.items():
            path = shard / f"{digest}.png"
            if digest in recipes and path not in self._dead:
                usage.candidates.append(_Candidate(mtime, size, path, upload=False))

    def _scan_uploads(self, usage: _Usage) -> None:
        assert self.upload_root is not None
        used: dict[str, float] = {}
        meta = self.upload_root / UPLOAD_META_DIR
        try:
            for entry in os.scandir(meta):
                if (st := _stat(entry)) is not None:
                    usage.uploads += st.st_size
                    if entry.name.endswith(".used"):
                        used[entry.name[:-5]] = st.st_mtime
                    elif entry.name.endswith(".tmp") and usage.at - st.st_mtime > STALE_TMP_SECONDS:
                        usage.stale.append(Path(entry.path))
        except OSError:
            pass
        try:
            entries = list(os.scandir(self.upload_root))
        except OSError:
            return
        for entry in entries:
            st = _stat(entry)
            if st is None:
                continue
            usage.uploads += st.st_size
            if entry.name.startswith(".part-"):
                if usage.at - st.st_mtime > STALE_TMP_SECONDS:
                    usage.stale.append(Path(entry.path))
            elif not entry.name.startswith(".") and Path(entry.path) not in self._dead:
                last = max(st.st_mtime, used.get(entry.name, 0.0))
                usage.candidates.append(_Candidate(last, st.st_size, Path(entry.path), upload=True))

    # ------------------------------------------------------------------ evicting

    def _evict(self, usage: _Usage) -> tuple[int, int]:
        """Delete candidates, least recently used first, until under LOW_WATER; returns the
        total left and the evictable bytes left. A candidate that cannot go safely is
        skipped (and remembered); one used within ``min_age_s`` ends the pass."""
        assert self.max_bytes is not None
        target = int(self.max_bytes * LOW_WATER)
        total = usage.total
        left = usage.evictable
        files = before = 0
        for cand in sorted(usage.candidates, key=lambda c: c.last_use):
            if total <= target or usage.at - cand.last_use < self.min_age_s:
                break
            freed = self._evict_upload(cand) if cand.upload else self._evict_frame(cand)
            if freed is not None or cand.path in self._dead:
                left -= cand.nbytes
            if freed is not None:
                total -= freed
                files += 1
                before += cand.nbytes
        if files:
            self.evicted_files += files
            self.evicted_bytes += before
            _log.info("media storage: evicted %d least recently used files (%.1f MB); %.2f of "
                      "%.2f GB used", files, before / (1 << 20), total / (1 << 30),
                      self.max_bytes / (1 << 30))
        return total, left

    def _evict_frame(self, cand: _Candidate) -> int | None:
        """Delete a frame's PNG when its sidecar can remake it; None if it must stay."""
        side = cand.path.with_suffix(".json")
        recipe = _read_recipe(side)
        why = recipe.source_state() if recipe is not None else "no recipe this version reads"
        if why is not None:
            if recipe is not None and self._for_good(recipe, why):
                with contextlib.suppress(OSError):  # it can never remake: plainly pinned now
                    os.unlink(side)
            self._dead.add(cand.path)
            return None
        if not self._record_upload_ref(recipe, cand.path.stem):
            self._dead.add(cand.path)
            return None
        try:
            st = os.stat(cand.path)
            if st.st_mtime > cand.last_use + 1:  # read or written since the scan: in use
                return None
            os.unlink(cand.path)
        except OSError:
            return None
        return st.st_size

    def _from_upload(self, recipe: FrameRecipe) -> bool:
        root = self.upload_root
        return root is not None and recipe.source.startswith(f"{root}{os.sep}")

    def _for_good(self, recipe: FrameRecipe, why: str) -> bool:
        """Whether a recipe can never work again: its source changed (a modification time
        does not go back), or it was an upload (only the evictor deletes those). A source
        that is merely missing elsewhere may be a disk that comes back: its recipe stays."""
        return "changed" in why or self._from_upload(recipe)

    def _record_upload_ref(self, recipe: FrameRecipe, digest: str) -> bool:
        """Before a frame made from an upload is deleted, note it in the upload's ``.refs``
        (only the evictor, holding the lock, writes refs or deletes uploads)."""
        if not self._from_upload(recipe):
            return True
        refs = upload_meta(Path(recipe.source), "refs")
        if digest in _read_refs(refs):
            return True
        try:
            refs.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(refs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{digest}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            return False
        return True

    def _evict_upload(self, cand: _Candidate) -> int | None:
        """Delete an upload after writing back every evicted frame made from it, so that
        those frames stay available; None (and the upload stays) if one cannot be remade."""
        try:  # uploaded again, or a run started on it, since the scan: in use
            if os.stat(upload_meta(cand.path, "used")).st_mtime > cand.last_use + 1:
                return None
        except OSError:
            pass
        refs = upload_meta(cand.path, "refs")
        digests = _read_refs(refs)
        added = 0
        for digest in digests:
            added_one = self._restore_frame(digest, str(cand.path))
            if added_one is None:
                self._dead.add(cand.path)
                return None
            added += added_one
        try:
            size = os.stat(cand.path).st_size
            os.unlink(cand.path)
        except OSError:
            return None
        for digest in digests:  # their source is gone: the written-back PNGs are pinned
            side = self.media_dir / digest[:2] / f"{digest}.json" if self.media_dir else None
            recipe = _read_recipe(side) if side is not None else None
            if side is not None and recipe is not None and recipe.source == str(cand.path):
                with contextlib.suppress(OSError):
                    added -= side.stat().st_size
                    side.unlink()
        meta_bytes = 0
        for kind in ("refs", "used", "names.json"):
            meta = upload_meta(cand.path, kind)
            with contextlib.suppress(OSError):
                meta_bytes += meta.stat().st_size
                meta.unlink()
        return size + meta_bytes - added

    def _restore_frame(self, digest: str, upload: str) -> int | None:
        """Write back the PNG of a frame made from ``upload``; bytes added, None on failure."""
        if self.media_dir is None or not DIGEST_RE.fullmatch(digest):
            return 0
        png = self.media_dir / digest[:2] / f"{digest}.png"
        recipe = _read_recipe(png.with_suffix(".json"))
        if png.exists() or recipe is None or recipe.source != upload:
            return 0
        try:
            img = remake(digest, recipe)
            return _atomic_write(png, lambda f: img.save(f, format="PNG", compress_level=1))
        except (ImageUnavailable, OSError) as e:
            _log.warning("media storage: keeping upload %s: %s", upload, e)
            return None

    # ------------------------------------------------------------------ reporting

    def report(self, max_age: float = REPORT_MAX_AGE) -> dict[str, Any]:
        """Bytes used (both folders, every file), the budget (None: unlimited), evictable
        bytes (frames with a usable recipe, uploads) and pinned bytes (the rest), from a scan
        at most ``max_age`` seconds old (scanning only reads); ``evicted_*`` count this
        process's evictions since it started."""
        usage = self._usage
        if usage is None or time.time() - usage.at > max_age:
            usage = self.scan()
        evictable = sum(c.nbytes for c in usage.candidates if c.path not in self._dead)
        pinned = usage.total - evictable
        budget = self.max_bytes
        return {
            "budget_bytes": budget,
            "used_bytes": usage.total,
            "media_bytes": usage.media,
            "upload_bytes": usage.uploads,
            "evictable_bytes": evictable,
            "pinned_bytes": pinned,
            "over_budget": budget is not None and usage.total > budget,
            "pinned_over_budget": budget is not None and pinned > budget,
            "evicted_files": self.evicted_files,
            "evicted_bytes": self.evicted_bytes,
            "scanned_at": usage.at,
            "media_folder": str(self.media_dir) if self.media_dir else None,
            "upload_folder": str(self.upload_root) if self.upload_root else None,
        }


def _read_refs(path: Path) -> list[str]:
    """The digests recorded for an upload (a line cut short by a kill is skipped)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return list(dict.fromkeys(ln for ln in lines if DIGEST_RE.fullmatch(ln)))


def max_disk_bytes() -> int | None:
    """``SEGRESEARCH_MEDIA_MAX_GB`` in bytes (GB = 2**30, like the other size settings);
    None when unset, 0, negative or malformed: an unreadable budget deletes nothing."""
    gb = setting(MAX_GB_ENV)  # lenient: a malformed value is logged and reads as unlimited
    return int(gb * (1 << 30)) if gb > 0 else None
