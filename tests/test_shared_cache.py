"""LoadOnce: one load per key however many callers arrive at once; bounded when asked."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from segresearch.shared_cache import LoadOnce


def test_concurrent_callers_share_one_load_per_key():
    cache: LoadOnce[tuple[str, int]] = LoadOnce(maxsize=8)
    loads: list[str] = []
    lock = threading.Lock()

    def load(key: str):
        def run():
            with lock:
                loads.append(key)
            time.sleep(0.05)
            return (key, len(loads))
        return run

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda i: cache.get(f"k{i % 3}", load(f"k{i % 3}")), range(12)))
    assert sorted(loads) == ["k0", "k1", "k2"]
    for i, v in enumerate(got):
        assert v[0] == f"k{i % 3}" and v is cache.get(v[0], lambda: pytest.fail("reloaded"))


def test_bounded_cache_evicts_least_recently_used_and_keeps_no_locks():
    cache: LoadOnce[int] = LoadOnce(maxsize=3)
    for k in range(3):
        cache.get(k, lambda k=k: k * 10)
    cache.get(0, lambda: pytest.fail("0 is cached"))  # 0 is now the most recent
    cache.get(3, lambda: 30)  # evicts 1, the least recently used
    assert [cache.has(k) for k in range(4)] == [True, False, True, True]
    assert cache.get(1, lambda: 11) == 11  # loaded again after eviction
    assert not cache._loading  # no lock left behind per key


def test_a_failed_load_is_not_cached_and_can_be_retried():
    cache: LoadOnce[int] = LoadOnce(maxsize=2)

    def boom() -> int:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get("x", boom)
    assert not cache.has("x") and cache.get("x", lambda: 5) == 5
