"""A persistent cache of search results (SQLite), and a backend wrapper that uses it.

RL rollouts and evaluations ask the same questions over and over: the rollouts of one
prompt usually search for the same thing, and reruns of an evaluation should see exactly
the results of the first run. Caching by (backend, tool, query, top-k) makes a repeated
query cost one call and makes reruns reproducible; a TTL keeps results from going stale
forever and a size bound keeps the file from growing without limit.

Failures are never cached: a rate limit or outage must not become the permanent answer.
The cache is an optimisation, so its own trouble (a locked or full disk) never fails a
search; the result is just not stored.

Concurrent identical queries in one process make one backend call ("single flight"): the
rollouts of a GRPO group tend to search for the same thing at the same moment. Across
processes SQLite's locking (WAL, busy timeout) keeps the file consistent.

Everything a caller gets back is decoded from the stored bytes, also on a miss, so the
first answer and every later one are identical objects-wise and value-wise.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from segresearch.core.envvars import setting
from segresearch.core.shared_cache import LoadOnce
from segresearch.tools.search.base import ImageHit, SearchBackend, TextHit

log = logging.getLogger(__name__)

BYPASS_ENV = "SEGRESEARCH_SEARCH_CACHE_BYPASS"
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}
_FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS search_cache (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    tool TEXT NOT NULL,
    query TEXT NOT NULL,
    topk INTEGER NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS search_cache_created ON search_cache (created);
"""


def cache_key(backend: str, tool: str, query: str, topk: int) -> str:
    raw = json.dumps([_FORMAT, backend, tool, query, int(topk)], ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class SearchCacheError(ValueError):
    """The cache file cannot be used at all (a folder, not SQLite, not writable): the
    user's setting is wrong, which is said once, up front, naming the file."""


def _open_problem(path: Path, e: BaseException) -> SearchCacheError:
    why = str(e) or type(e).__name__
    if path.is_dir():
        return SearchCacheError(f"search cache {path} is a folder; give a file name, e.g. "
                                f"{path / 'search_cache.db'} (or 'off')")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return SearchCacheError(f"search cache {path}: {blocker} is a file, not a folder; give "
                                "a path in a folder (or 'off')")
    if isinstance(e, sqlite3.DatabaseError) and "not a database" in why:
        return SearchCacheError(f"search cache {path} is not a SQLite database ({why}); give "
                                "another file name (or 'off'), or delete the file")
    if isinstance(e, OSError):
        why = e.strerror or why
    return SearchCacheError(f"search cache {path} cannot be opened for writing ({why}); give a "
                            "file in a folder you can write to (or 'off')")


class _Counters:
    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class SearchCache:
    """Search results in one SQLite file; safe across threads and processes.

    ``ttl``: seconds an entry stays valid (``math.inf``: forever). ``max_entries``: past
    this many rows, the oldest are evicted. ``clock`` gives the current time in seconds
    (tests inject one to expire entries without waiting).
    """

    def __init__(
        self,
        path: str | Path,
        ttl: float,
        max_entries: int = 100_000,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 30.0,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.path = Path(path).expanduser()
        self.ttl = float(ttl)
        self.max_entries = int(max_entries)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # Concurrent identical queries share one backend call; the payloads themselves live
        # in the file, so this keeps none in memory.
        self.flights: LoadOnce[bytes] = LoadOnce(0, name="search.flights")
        self._counters = _Counters("hits", "misses", "writes", "errors")
        try:  # proves the file is SQLite and writable, so a search never finds out later
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            try:  # a write that is rolled back: a read-only file fails here
                conn.execute("INSERT OR REPLACE INTO search_cache VALUES ('', '', '', '', 0, 0, x'')")
            finally:
                conn.execute("ROLLBACK")
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise _open_problem(self.path, e) from None

    def __repr__(self) -> str:
        return f"SearchCache({str(self.path)!r}, ttl={self.ttl:g}, max_entries={self.max_entries})"

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread: WAL lets them read concurrently, and no connection
        is ever used by two threads at once."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def get(self, key: str, *, count: bool = True) -> bytes | None:
        """The stored payload under ``key`` if present and younger than the TTL
        (``count=False``: a second look that should not show in :meth:`stats`)."""
        try:
            row = self._conn().execute(
                "SELECT created, payload FROM search_cache WHERE key = ?", (key,)
            ).fetchone()
        except sqlite3.Error as e:
            log.warning("search cache %s: read failed: %s", self.path, e)
            self._counters.add("errors")
            row = None
        if row is None or not (self._clock() - row[0] < self.ttl):
            if count:
                self._counters.add("misses")
            return None
        if count:
            self._counters.add("hits")
        return bytes(row[1])

    def put(
        self, key: str, payload: bytes, *, backend: str = "", tool: str = "", query: str = "",
        topk: int = 0,
    ) -> None:
        """Store (or refresh) an entry, then evict the oldest past ``max_entries``."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO search_cache "
                    "(key, backend, tool, query, topk, created, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, backend, tool, query, int(topk), self._clock(), sqlite3.Binary(payload)),
                )
                (count,) = conn.execute("SELECT COUNT(*) FROM search_cache").fetchone()
                if count > self.max_entries:
                    conn.execute(
                        "DELETE FROM search_cache WHERE rowid IN (SELECT rowid FROM search_cache "
                        "ORDER BY created, rowid LIMIT ?)",
                        (count - self.max_entries,),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            log.warning("search cache %s: write failed: %s", self.path, e)
            self._counters.add("errors")
            return
        self._counters.add("writes")

    def __len__(self) -> int:
        (n,) = self._conn().execute("SELECT COUNT(*) FROM search_cache").fetchone()
        return int(n)

    def clear(self) -> None:
        self._conn().execute("DELETE FROM search_cache")

    def stats(self) -> dict[str, int]:
        """Lookups answered (hits) and not (misses), writes and swallowed SQLite errors."""
        return self._counters.snapshot()

    def close(self) -> None:
        """Close every thread's connection; for shutdown and tests, not while in use."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


_CACHES: LoadOnce[SearchCache] = LoadOnce(name="search.caches")


def get_cache(path: str | Path, ttl: float, max_entries: int = 100_000) -> SearchCache:
    """The process-wide cache object for this file (and TTL and size bound);
    ``SearchCacheError`` when the file cannot serve as one."""
    resolved = str(Path(path).expanduser().resolve())
    key = (resolved, float(ttl), int(max_entries))
    return _CACHES.get(key, lambda: SearchCache(resolved, ttl, max_entries))


# ------------------------------------------------------------------ payloads


def encode_text(hits: list[TextHit]) -> bytes:
    rows = [[h.title, h.text, float(h.score)] for h in hits]
    return json.dumps(rows, ensure_ascii=False).encode("utf-8")


def decode_text(payload: bytes) -> list[TextHit]:
    return [TextHit(str(t), str(x), float(s)) for t, x, s in json.loads(payload.decode("utf-8"))]


def encode_images(hits: list[ImageHit]) -> bytes:
    """A JSON header line (names, scores, byte lengths), then the PNGs back to back: PNG
    is lossless, so a cached picture is pixel for pixel the one first fetched."""
    blobs = []
    for h in hits:
        buf = io.BytesIO()
        image = h.image if h.image.mode in _PNG_MODES else h.image.convert("RGB")
        image.save(buf, format="PNG", compress_level=3)
        blobs.append(buf.getvalue())
    header = [
        {"name": h.name, "score": float(h.score), "size": len(b)}
        for h, b in zip(hits, blobs, strict=True)
    ]
    return json.dumps(header, ensure_ascii=False).encode("utf-8") + b"\n" + b"".join(blobs)


def decode_images(payload: bytes) -> list[ImageHit]:
    head, _, body = payload.partition(b"\n")
    hits, pos = [], 0
    for entry in json.loads(head.decode("utf-8")):
        size = int(entry["size"])
        chunk = body[pos : pos + size]
        if len(chunk) != size:
            raise ValueError("truncated image payload")
        pos += size
        with Image.open(io.BytesIO(chunk)) as im:
            im.load()
            image = im.copy()
        hits.append(ImageHit(str(entry["name"]), image, float(entry["score"])))
    return hits


_CODECS: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    "text": (encode_text, decode_text),
    "image": (encode_images, decode_images),
}


# ------------------------------------------------------------------ backend


class CachedBackend(SearchBackend):
    """``inner`` behind ``cache``. ``bypass`` (or ``SEGRESEARCH_SEARCH_CACHE_BYPASS=1``)
    skips reading the cache but still stores fresh results, to refresh entries."""

    def __init__(self, inner: SearchBackend, cache: SearchCache, bypass: bool = False) -> None:
        self.inner = inner
        self.cache = cache
        self.bypass = bypass
        self.name = inner.name
        self._counters = _Counters("hits", "misses", "shared")

    def __repr__(self) -> str:
        return f"CachedBackend({self.inner!r}, {self.cache!r})"

    @property
    def cache_key(self) -> str:
        return self.inner.cache_key

    def _bypassing(self) -> bool:
        return self.bypass or bool(setting(BYPASS_ENV))

    def stats(self) -> dict[str, int]:
        """hits: served from the file; misses: asked the backend; shared: waited for an
        identical query another thread was already asking."""
        return self._counters.snapshot()

    def _lookup(
        self, key: str, decode: Callable[[bytes], Any], count: bool = True
    ) -> tuple[bytes, Any] | None:
        payload = self.cache.get(key, count=count)
        if payload is None:
            return None
        try:
            return payload, decode(payload)
        except Exception as e:  # noqa: BLE001 - a damaged entry is just a miss
            log.warning("search cache %s: unreadable entry (%s); asking again", self.cache.path, e)
            return None

    def _one(self, tool: str, query: str, k: int, compute: Callable[[], Any]) -> Any:
        encode, decode = _CODECS[tool]
        backend = self.inner.cache_key
        key = cache_key(backend, tool, query, k)
        bypass = self._bypassing()
        if not bypass and (found := self._lookup(key, decode)) is not None:
            self._counters.add("hits")
            return found[1]
        answered: list[str] = []  # how this thread's load got the payload; empty: shared

        def load() -> bytes:
            # Stored while we were looking: another thread has just finished this query.
            if not bypass and (found := self._lookup(key, decode, False)) is not None:
                answered.append("hits")
                return found[0]
            payload = encode(compute())
            answered.append("misses")
            self.cache.put(key, payload, backend=backend, tool=tool, query=query, topk=k)
            return payload

        payload = self.cache.flights.get(key, load)
        self._counters.add(answered[0] if answered else "shared")
        return decode(payload)

    def search_text(self, query: str, k: int) -> list[TextHit]:
        return self._one("text", query, k, lambda: self.inner.search_text(query, k))

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        return self._one("image", query, k, lambda: self.inner.search_images(query, k))

    def search_text_batch(self, queries: list[str], k: int) -> list[list[TextHit]]:
        """Hits come from the file; all misses go to the backend in one batch."""
        backend = self.inner.cache_key
        keys = [cache_key(backend, "text", q, k) for q in queries]
        query_of = dict(zip(keys, queries, strict=True))
        bypass = self._bypassing()
        payloads: dict[str, bytes] = {}
        missing: list[str] = []
        for key in dict.fromkeys(keys):  # unique, in order
            found = None if bypass else self._lookup(key, decode_text)
            if found is None:
                missing.append(key)
            else:
                payloads[key] = found[0]
                self._counters.add("hits")
        mine: dict[str, cf.Future[bytes]] = {}
        theirs: dict[str, cf.Future[bytes]] = {}
        for key in missing:
            fut, owned = self.cache.flights.claim(key)
            if not owned:
                theirs[key] = fut
            elif not bypass and (found := self._lookup(key, decode_text, False)) is not None:
                self.cache.flights.settle(key, fut, found[0])  # another thread just finished it
                payloads[key] = found[0]
                self._counters.add("hits")
            else:
                mine[key] = fut
        if mine:
            todo = list(mine)
            try:
                results = self.inner.search_text_batch([query_of[key] for key in todo], k)
                if len(results) != len(todo):
                    raise RuntimeError(
                        f"{self.inner.name}: answered {len(results)} result lists for "
                        f"{len(todo)} queries"
                    )
                encoded = [encode_text(hits) for hits in results]
            except BaseException as e:
                for key, fut in mine.items():
                    self.cache.flights.settle(key, fut, error=e)
                raise
            self._counters.add("misses", len(todo))
            for key, payload in zip(todo, encoded, strict=True):
                self.cache.put(key, payload, backend=backend, tool="text", query=query_of[key], topk=k)
                self.cache.flights.settle(key, mine[key], payload)
                payloads[key] = payload
        for key, fut in theirs.items():
            payloads[key] = fut.result()
            self._counters.add("shared")
        return [decode_text(payloads[key]) for key in keys]


__all__ = [
    "BYPASS_ENV",
    "CachedBackend",
    "SearchCache",
    "SearchCacheError",
    "cache_key",
    "get_cache",
]
