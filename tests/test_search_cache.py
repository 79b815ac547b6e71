"""The persistent search cache and the backend wrapper over it."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from segresearch.tools.search import ImageHit, SearchBackend, TextHit, cached_backend
from segresearch.tools.search.cache import (
    CachedBackend,
    SearchCache,
    cache_key,
    decode_images,
    encode_images,
    get_cache,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingBackend(SearchBackend):
    """Answers with the query and a version number; counts every call it gets."""

    name = "counting"

    def __init__(self, key: str = "counting:v1", delay: float = 0.0) -> None:
        self.key = key
        self.delay = delay
        self.version = 1
        self.fail: Exception | None = None
        self.text_calls: list[str] = []
        self.batches: list[list[str]] = []
        self.image_calls: list[str] = []
        self._lock = threading.Lock()

    @property
    def cache_key(self) -> str:
        return self.key

    def _hits(self, query: str, k: int) -> list[TextHit]:
        return [TextHit(f"{query} #{i}", f"v{self.version} body {i}", 1.0 / (i + 1)) for i in range(k)]

    def search_text(self, query: str, k: int) -> list[TextHit]:
        with self._lock:
            self.text_calls.append(query)
        time.sleep(self.delay)
        if self.fail:
            raise self.fail
        return self._hits(query, k)

    def search_text_batch(self, queries: list[str], k: int) -> list[list[TextHit]]:
        with self._lock:
            self.batches.append(list(queries))
        if self.fail:
            raise self.fail
        return [self._hits(q, k) for q in queries]

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        self.image_calls.append(query)
        if self.fail:
            raise self.fail
        return [ImageHit(f"{query} picture", Image.new("RGB", (9, 7), (1, 2, self.version)), 0.5)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(tmp_path, clock):
    c = SearchCache(tmp_path / "cache.sqlite", ttl=3600, clock=clock)
    yield c
    c.close()


def titles(hits: list[TextHit]) -> list[str]:
    return [h.title for h in hits]


def test_miss_then_hit(cache):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    first = backend.search_text("zephyr prize", 3)
    second = backend.search_text("zephyr prize", 3)
    assert first == second == inner._hits("zephyr prize", 3)
    assert inner.text_calls == ["zephyr prize"]
    assert backend.stats() == {"hits": 1, "misses": 1, "shared": 0}
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1
    assert backend.name == "counting" and backend.cache_key == "counting:v1"


def test_key_covers_backend_tool_query_and_topk(cache):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    backend.search_text("q", 3)
    backend.search_text("q", 2)
    backend.search_text("q ", 3)
    backend.search_images("q", 3)
    CachedBackend(CountingBackend(key="counting:v2"), cache).search_text("q", 3)
    assert len(cache) == 5
    assert len({cache_key("b", t, q, k) for t, q, k in [("text", "q", 1), ("image", "q", 1), ("text", "q", 2)]}) == 3


def test_ttl_expiry(cache, clock):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    backend.search_text("q", 1)
    clock.now += 3599
    backend.search_text("q", 1)
    assert len(inner.text_calls) == 1
    clock.now += 2
    inner.version = 2
    assert backend.search_text("q", 1)[0].text == "v2 body 0"
    assert len(inner.text_calls) == 2


def test_size_bound_evicts_oldest(tmp_path, clock):
    cache = SearchCache(tmp_path / "c.sqlite", ttl=3600, max_entries=3, clock=clock)
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    for q in "abcde":
        clock.now += 1
        backend.search_text(q, 1)
    assert len(cache) == 3
    for q in "cde":
        backend.search_text(q, 1)
    assert inner.text_calls == list("abcde")  # c, d, e still cached
    backend.search_text("a", 1)
    assert inner.text_calls[-1] == "a"  # a was evicted
    cache.close()


def test_failures_are_not_cached(cache):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    inner.fail = RuntimeError("serper: rate limited")
    with pytest.raises(RuntimeError, match="rate limited"):
        backend.search_text("q", 2)
    with pytest.raises(RuntimeError, match="rate limited"):
        backend.search_images("q", 1)
    assert len(cache) == 0
    inner.fail = None
    assert titles(backend.search_text("q", 2)) == ["q #0", "q #1"]
    assert len(inner.text_calls) == 2


def test_bypass_skips_reads_but_writes(cache, monkeypatch):
    inner = CountingBackend()
    CachedBackend(inner, cache).search_text("q", 1)
    inner.version = 2
    fresh = CachedBackend(inner, cache, bypass=True).search_text("q", 1)
    assert fresh[0].text == "v2 body 0" and len(inner.text_calls) == 2
    assert CachedBackend(inner, cache).search_text("q", 1)[0].text == "v2 body 0"  # refreshed
    assert len(inner.text_calls) == 2
    monkeypatch.setenv("SEGRESEARCH_SEARCH_CACHE_BYPASS", "1")
    inner.version = 3
    assert CachedBackend(inner, cache).search_text("q", 1)[0].text == "v3 body 0"
    assert len(inner.text_calls) == 3


def test_batch_sends_only_misses_in_one_call(cache):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    backend.search_text("a", 2)
    backend.search_text("c", 2)
    out = backend.search_text_batch(["a", "b", "c", "d", "b"], 2)
    assert inner.batches == [["b", "d"]]
    assert [titles(h) for h in out] == [[f"{q} #0", f"{q} #1"] for q in "abcdb"]
    assert backend.stats()["hits"] == 2
    again = backend.search_text_batch(["d", "b"], 2)
    assert inner.batches == [["b", "d"]] and [titles(h)[0] for h in again] == ["d #0", "b #0"]
    assert backend.search_text_batch([], 2) == [] and len(inner.batches) == 1


def test_batch_failure_not_cached(cache):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    inner.fail = TimeoutError("retriever: no answer within 3 s")
    with pytest.raises(TimeoutError):
        backend.search_text_batch(["a", "b"], 1)
    inner.fail = None
    backend.search_text_batch(["a", "b"], 1)
    assert inner.batches == [["a", "b"], ["a", "b"]]


def test_images_round_trip_exactly(cache):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    first = backend.search_images("logo", 1)
    second = backend.search_images("logo", 1)
    assert inner.image_calls == ["logo"]
    for hits in (first, second):
        (hit,) = hits
        assert (hit.name, hit.score, hit.image.size) == ("logo picture", 0.5, (9, 7))
        assert hit.image.getpixel((3, 3)) == (1, 2, 1)
    assert first[0].image is not second[0].image
    payload = encode_images(first + second)
    assert [h.name for h in decode_images(payload)] == ["logo picture"] * 2


def test_concurrent_identical_queries_make_one_call(cache):
    inner = CountingBackend(delay=0.2)
    backend = CachedBackend(inner, cache)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: backend.search_text("same", 2), range(16)))
    assert inner.text_calls == ["same"]
    assert all(r == results[0] for r in results)
    stats = backend.stats()
    assert stats["misses"] == 1 and stats["hits"] + stats["shared"] == 15


def test_concurrent_distinct_queries_and_two_cache_objects(tmp_path):
    path = tmp_path / "shared.sqlite"
    a, b = SearchCache(path, ttl=3600), SearchCache(path, ttl=3600)
    inner = CountingBackend()
    ba, bb = CachedBackend(inner, a), CachedBackend(inner, b)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: (ba if i % 2 else bb).search_text(f"q{i}", 1), range(40)))
    assert len(a) == len(b) == 40
    assert a.stats()["errors"] == b.stats()["errors"] == 0
    before = len(inner.text_calls)
    assert titles(bb.search_text("q1", 1)) == ["q1 #0"]  # written through `a`
    assert len(inner.text_calls) == before
    a.close()
    b.close()


def test_second_object_on_same_file_sees_entries(tmp_path):
    path = tmp_path / "c.sqlite"
    first = SearchCache(path, ttl=3600)
    inner = CountingBackend()
    CachedBackend(inner, first).search_text("persisted", 2)
    first.close()
    second = SearchCache(path, ttl=3600)
    assert titles(CachedBackend(inner, second).search_text("persisted", 2)) == ["persisted #0", "persisted #1"]
    assert inner.text_calls == ["persisted"]
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    second.close()


def test_damaged_entry_is_a_miss(cache):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    backend.search_text("q", 1)
    cache._conn().execute("UPDATE search_cache SET payload = ?", (b"\xffnot json",))
    assert titles(backend.search_text("q", 1)) == ["q #0"]
    assert len(inner.text_calls) == 2


def test_unwritable_cache_does_not_fail_searches(cache):
    inner = CountingBackend()
    backend = CachedBackend(inner, cache)
    cache._conn().execute("DROP TABLE search_cache")
    assert titles(backend.search_text("q", 1)) == ["q #0"]
    assert cache.stats()["errors"] >= 1


def test_get_cache_shares_per_path(tmp_path):
    p = tmp_path / "x.sqlite"
    assert get_cache(p, 60) is get_cache(str(p), 60)
    assert get_cache(p, 60) is not get_cache(tmp_path / "y.sqlite", 60)
    wrapped = cached_backend(CountingBackend(), str(tmp_path / "z.sqlite"), 60)
    assert isinstance(wrapped, CachedBackend) and wrapped.cache.ttl == 60
