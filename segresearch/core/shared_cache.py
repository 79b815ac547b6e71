"""Every process-wide cache and thread pool of the package, made and found in one place.

Many graph runs start at once and ask for the same checkpoint, index, video handle or
rendered prompt: the first caller loads it, concurrent callers for that key wait for the
same copy (threads through :meth:`LoadOnce.get`, coroutines of one event loop through
:meth:`LoadOnce.aget`), and callers for other keys are not held up while it loads. With
``maxsize`` a cache is a bounded LRU for many small values (resized frames, query vectors):
the samples of an RL group start together and would otherwise all miss a plain cache and
compute the same value at once.

A cache given a ``name`` is registered under it, so that tests and benchmarks can empty,
count or inspect every cache (:func:`clear_all`, :func:`clear`, :func:`stats`) without
knowing which module keeps it or what its private variable is called; before, each
hand-made LRU had its own lock and eviction loop and callers cleared them by matching
substrings of private names. Caches an object owns (a knowledge base's query vectors) are
registered under one shared name and held weakly, so the registry never keeps an object
alive.

Thread pools are made here too (:func:`thread_pool`), lazily and once per name, with their
sizes from the settings in :mod:`segresearch.core.envvars`, so a deployment sizes them without
code and no module starts threads merely by being imported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from segresearch.core.envvars import setting

T = TypeVar("T")


@dataclass(frozen=True)
class CacheStats:
    """What a cache (or, for a shared name, all caches under it) holds and has done."""

    name: str
    size: int
    maxsize: int | None
    hits: int
    misses: int
    evictions: int
    weight: int = 0  # total weight (bytes) of a cache bounded by weight
    locks: int = 0  # per-key locks held: loads under way (a bounded cache keeps no others)
    instances: int = 1


class LoadOnce(Generic[T]):
    """A single-flight cache: one load per key, however many callers arrive at once.

    ``maxsize`` bounds the number of entries and ``max_weight`` their total ``weigh`` (bytes,
    say); least recently used first out, and a value heavier than the whole budget is
    returned but not kept (it would evict everything else and still not fit). Both None:
    unbounded, for a few large objects such as models. ``on_evict`` releases what an evicted
    value holds (a video handle's decoder); it is not called by :meth:`clear`, since a
    cleared value may still be in use by whoever got it. ``name`` registers the cache (see
    the module docstring).
    """

    def __init__(self, maxsize: int | None = None, *, name: str | None = None,
                 on_evict: Callable[[T], None] | None = None, max_weight: int | None = None,
                 weigh: Callable[[T], int] | None = None) -> None:
        if (max_weight is None) != (weigh is None):
            raise ValueError("max_weight and weigh go together")
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._weights: dict[Hashable, int] = {}
        self._weight = 0
        self.max_weight = max_weight
        self._weigh = weigh
        self._loading: dict[Hashable, threading.Lock] = {}
        self._pending: dict[Hashable, asyncio.Future[T]] = {}
        self._lock = threading.Lock()
        self.maxsize = maxsize
        self.name = name
        self._on_evict = on_evict
        self._hits = self._misses = self._evictions = 0
        if name is not None:
            _register(name, self)

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                return self._hit(key)
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._hit(key)
                self._misses += 1
            try:
                value = load()
            finally:
                if self.maxsize is not None or self.max_weight is not None:
                    # Bounded caches see many keys: keep no lock per key once it is loaded
                    # (a waiter still holds the old lock and then finds the value).
                    with self._lock:
                        if self._loading.get(key) is key_lock:
                            del self._loading[key]
            self._store(key, value)
            return value

    async def aget(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """:meth:`get` for coroutines: a load already under way in this event loop is
        awaited rather than repeated (one in another loop cannot be awaited here, so this
        loop loads its own). A failed or cancelled load is not cached; its waiters see the
        same error."""
        running = asyncio.get_running_loop()
        with self._lock:
            if key in self._items:
                return self._hit(key)
            pending = self._pending.get(key)
            if pending is not None and pending.get_loop() is running:
                self._hits += 1
            else:
                pending = None
                self._misses += 1
                fut: asyncio.Future[T] = running.create_future()
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved"
                self._pending[key] = fut
        if pending is not None:
            return await asyncio.shield(pending)
        try:
            value = await load()
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            with self._lock:
                if self._pending.get(key) is fut:
                    del self._pending[key]
        fut.set_result(value)
        self._store(key, value)
        return value

    def _hit(self, key: Hashable) -> T:
        """The cached value (the caller holds ``_lock``), marked as most recently used."""
        self._hits += 1
        if self.maxsize is not None or self.max_weight is not None:
            self._items.move_to_end(key)
        return self._items[key]

    def _store(self, key: Hashable, value: T) -> None:
        weight = self._weigh(value) if self._weigh is not None else 0
        if self.max_weight is not None and weight > self.max_weight:
            return
        evicted: list[T] = []
        with self._lock:
            if key in self._items:
                self._weight -= self._weights.pop(key, 0)
            self._items[key] = value
            self._items.move_to_end(key)
            if self._weigh is not None:
                self._weights[key] = weight
                self._weight += weight
            while self._items and ((self.maxsize is not None and len(self._items) > self.maxsize)
                                   or (self.max_weight is not None and self._weight > self.max_weight)):
                old_key, old = self._items.popitem(last=False)
                self._weight -= self._weights.pop(old_key, 0)
                evicted.append(old)
                self._evictions += 1
        if self._on_evict is not None:
            for old in evicted:
                self._on_evict(old)

    def peek(self, key: Hashable) -> T | None:
        """The cached value (marked as used) or None, loading nothing: for callers that
        compute several missing values in one call and :meth:`put` them."""
        with self._lock:
            if key in self._items:
                return self._hit(key)
            self._misses += 1
            return None

    def put(self, key: Hashable, value: T) -> None:
        """Keep ``value`` (computed by the caller) unless ``key`` is already held."""
        with self._lock:
            if key in self._items:
                return
        self._store(key, value)

    def has(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def values(self) -> list[T]:
        """A snapshot of the cached values (e.g. the loaded knowledge bases)."""
        with self._lock:
            return list(self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def key_lock(self, key: Hashable) -> threading.Lock:
        """A lock for other once-per-key work on the same keys (e.g. building an index)."""
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weights.clear()
            self._weight = 0
            self._loading.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.name or "", len(self._items), self.maxsize, self._hits,
                              self._misses, self._evictions, self._weight,
                              len(self._loading) + len(self._pending))


# ------------------------------------------------------------------------ the registry

# A name maps to the caches registered under it: one for a module's cache, one per owner for
# a cache an object owns. Weak, so a dropped owner's cache goes with it.
_REGISTRY: dict[str, weakref.WeakSet[LoadOnce]] = {}
_REGISTRY_LOCK = threading.Lock()


def _register(name: str, cache: LoadOnce) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.setdefault(name, weakref.WeakSet()).add(cache)


def _members(name: str) -> list[LoadOnce]:
    with _REGISTRY_LOCK:
        if name not in _REGISTRY:
            raise KeyError(f"no cache is registered as {name!r}; registered: "
                           + ", ".join(sorted(_REGISTRY)))
        return list(_REGISTRY[name])


def registered() -> list[str]:
    """The names of the registered caches (those of modules not yet imported are absent)."""
    with _REGISTRY_LOCK:
        return sorted(_REGISTRY)


def clear(name: str) -> None:
    """Empty every cache registered as ``name``; KeyError names the registered ones."""
    for cache in _members(name):
        cache.clear()


def clear_all(keep: tuple[str, ...] = ()) -> None:
    """Empty every registered cache but those named in ``keep`` (a benchmark keeps the
    loaded models and indexes and measures the per-run caches cold)."""
    for name in registered():
        if name not in keep:
            clear(name)


def stats(name: str) -> CacheStats:
    """The counts of ``name``'s caches, summed over the instances of a shared name."""
    parts = [c.stats() for c in _members(name)]
    sizes = [p.maxsize for p in parts]
    return CacheStats(name, sum(p.size for p in parts),
                      sizes[0] if len(set(sizes)) == 1 else None,
                      sum(p.hits for p in parts), sum(p.misses for p in parts),
                      sum(p.evictions for p in parts), sum(p.weight for p in parts),
                      sum(p.locks for p in parts), len(parts))


# ------------------------------------------------------------------------ thread pools

# Pool name -> (the setting that sizes it, the size when that setting is 0: automatic).
POOLS: dict[str, tuple[str, Callable[[], int]]] = {
    "frames": ("SEGRESEARCH_FRAME_THREADS", lambda: min(8, os.cpu_count() or 1)),
    "search": ("SEGRESEARCH_SEARCH_THREADS", lambda: 16),
    "imgfetch": ("SEGRESEARCH_IMAGE_FETCH_THREADS", lambda: 16),
}
_POOLS: dict[str, cf.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def pool_size(name: str) -> int:
    """The number of threads pool ``name`` has (or will have): its setting, or when that is
    0 the pool's automatic size."""
    var, automatic = POOLS[name]
    return int(setting(var)) or automatic()


def thread_pool(name: str) -> cf.ThreadPoolExecutor:
    """The process-wide pool ``name`` (one of :data:`POOLS`), made on first use; its threads
    are named ``segresearch-<name>`` so a stack dump says whose they are."""
    with _POOLS_LOCK:
        pool = _POOLS.get(name)
        if pool is None:
            pool = _POOLS[name] = cf.ThreadPoolExecutor(pool_size(name),
                                                        thread_name_prefix=f"segresearch-{name}")
        return pool


__all__ = [
    "POOLS",
    "CacheStats",
    "LoadOnce",
    "clear",
    "clear_all",
    "pool_size",
    "registered",
    "stats",
    "thread_pool",
]
